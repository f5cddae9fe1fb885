"""Score qsm-bids participant outputs against the simulator's ground truth.

    python benchmarks/evaluate_demo.py BIDS_DIR OUTPUT_DIR [--subjects 01 02 ...]

For each subject it prints, beside the simulator's SNR:
- NRMSE of the Chimap against the true chi inside the QSM mask (the brain mask
  eroded by the background kernel), each map's mean removed first;
- the deep grey nuclei: reconstructed mean / true mean (demeaned, as a %);
- Dice between the atlas brought to native space and the true labels;
- the region medians of the whole chain against the truth medians of the same
  regions (true chi, true labels), in ppm;
- coverage (issue 17): the share of the true brain mask and of the true
  precentral-gyrus labels inside the QSM mask (native grid), and of the atlas's
  precentral gyrus inside the template-space QSM mask, all of it and its grey matter
  (template GM probability > 0.5, the issue's definition).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from qsm_bids.atlas import default_label_table, region_medians

NUCLEI = ("caudate", "putamen", "globus_pallidus", "thalamus", "red_nucleus",
          "substantia_nigra_dorsal", "substantia_nigra_ventral", "dentate_nucleus")
DICE_REGIONS = ("putamen", "globus_pallidus", "thalamus", "caudate")


def _load(path):
    img = nib.load(str(path))
    return np.asarray(img.dataobj), img


def nrmse(chi, truth, mask) -> float:
    """100 * ||(x - mean x) - (t - mean t)|| / ||t - mean t|| inside mask."""
    x = chi[mask] - chi[mask].mean()
    t = truth[mask] - truth[mask].mean()
    return float(100 * np.linalg.norm(x - t) / np.linalg.norm(t))


def dice(a, b) -> float:
    return float(2 * np.logical_and(a, b).sum() / max(a.sum() + b.sum(), 1))


def evaluate_subject(bids_dir: Path, out_dir: Path, label: str) -> dict:
    truth_dir = bids_dir / "derivatives" / "groundtruth" / f"sub-{label}" / "anat"
    anat = out_dir / f"sub-{label}" / "anat"
    chi, chi_img = _load(anat / f"sub-{label}_Chimap.nii.gz")
    qmask = _load(anat / f"sub-{label}_desc-qsm_mask.nii.gz")[0] > 0
    truth = _load(truth_dir / f"sub-{label}_Chimap.nii.gz")[0].astype(np.float32)
    true_labels = _load(truth_dir / f"sub-{label}_atlas-qsmbids_dseg.nii.gz")[0].astype(np.int16)
    labels = _load(anat / f"sub-{label}_atlas-qsmbids_dseg.nii.gz")[0].astype(np.int16)
    table = default_label_table()
    row = {"subject": label, "nrmse_pct": nrmse(chi, truth, qmask)}
    truth_meta = json.loads((truth_dir / f"sub-{label}_Chimap.json").read_text())
    row["snr"] = truth_meta.get("Parameters", {}).get("snr", "n/a")
    # nuclei: mean inside (qsm mask & true label), demeaned by each map's mean in the mask
    cm, tm = chi[qmask].mean(), truth[qmask].mean()
    for region in NUCLEI:
        idx = table.loc[table.region == region, "index"].to_numpy()
        sel = np.isin(true_labels, idx) & qmask
        if sel.sum():
            row[f"{region}_pct"] = float(100 * (chi[sel].mean() - cm) / (truth[sel].mean() - tm))
    for region in DICE_REGIONS:
        idx = table.loc[table.region == region, "index"].to_numpy()
        row[f"dice_{region}"] = dice(np.isin(labels, idx), np.isin(true_labels, idx))
    zooms = chi_img.header.get_zooms()[:3]
    est = pd.read_csv(anat / f"sub-{label}_atlas-qsmbids_stat-median_Chimap.tsv", sep="\t")
    true_med, _ = region_medians(truth, qmask, true_labels, table, zooms)
    merged = est.merge(true_med, on=["region", "hemisphere"], suffixes=("", "_true"))
    merged["error_ppm"] = merged["median_ppm"] - merged["median_ppm_true"]
    # demeaned: each map's mean inside the QSM mask removed (QSM is relative; no referencing by default)
    merged["error_demeaned_ppm"] = merged["error_ppm"] - (cm - tm)
    row["regions"] = merged[["region", "hemisphere", "median_ppm", "median_ppm_true", "error_ppm",
                             "error_demeaned_ppm"]]
    # the region pipeline alone: true chi through the estimated atlas
    alone, _ = region_medians(truth, qmask, labels, table, zooms)
    m2 = alone.merge(true_med, on=["region", "hemisphere"], suffixes=("", "_true"))
    m2["error"] = (m2["median_ppm"] - m2["median_ppm_true"]).abs()
    for region in ("caudate", "putamen", "globus_pallidus", "thalamus"):
        row[f"alone_err_{region}_ppm"] = float(m2.loc[m2.region == region, "error"].max())
    worst = m2.loc[m2["error"].idxmax()]
    row["alone_worst_region"] = f"{worst.region} {worst.hemisphere} {worst.error:.3f}"
    row.update(coverage(truth_dir, anat, label, qmask, true_labels, table))
    return row


def coverage(truth_dir, anat, label, qmask, true_labels, table) -> dict:
    """Shares of the true brain, the true precentral gyrus (native) and the atlas's precentral
    gyrus (template space) that the QSM mask covers."""
    brain = _load(truth_dir / f"sub-{label}_desc-brain_mask.nii.gz")[0] > 0
    pre_idx = table.loc[table.region == "precentral_gyrus", "index"].to_numpy()
    pre = np.isin(true_labels, pre_idx)
    out = {"coverage_brain": float((qmask & brain).sum() / max(brain.sum(), 1)),
           "coverage_precentral": float((qmask & pre).sum() / max(pre.sum(), 1))}
    tmask_path = next(anat.glob(f"sub-{label}_space-*_desc-qsm_mask.nii.gz"), None)
    if tmask_path is not None:
        from nilearn.image import resample_to_img

        from qsm_bids.atlas import default_atlas
        from qsm_bids.templates import template_path

        atlas_img, _ = default_atlas()
        tmask_img = nib.load(str(tmask_path))
        atlas_on = np.asarray(resample_to_img(atlas_img, tmask_img, interpolation="nearest").dataobj)
        pre_t = np.isin(atlas_on, pre_idx)
        tmask = np.asarray(tmask_img.dataobj) > 0
        out["coverage_precentral_template"] = float((tmask & pre_t).sum() / max(pre_t.sum(), 1))
        # the definition: the precentral grey matter, the atlas region where the template's GM
        # probability exceeds 0.5 (the atlas region also takes in the gyrus' white matter and CSF)
        gm_img = nib.load(str(template_path("GM")))
        gm_on = np.asarray(resample_to_img(gm_img, tmask_img, interpolation="linear").dataobj) / 255.0
        pre_gm = pre_t & (gm_on > 0.5)
        out["coverage_precentral_gm_template"] = float((tmask & pre_gm).sum() / max(pre_gm.sum(), 1))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bids_dir", type=Path)
    ap.add_argument("output_dir", type=Path)
    ap.add_argument("--subjects", nargs="*")
    ap.add_argument("--regions", action="store_true", help="print every region's error")
    args = ap.parse_args(argv)
    subjects = args.subjects or sorted(p.name[4:] for p in args.output_dir.glob("sub-*") if p.is_dir())
    rows = [evaluate_subject(args.bids_dir, args.output_dir, s) for s in subjects]
    summary = pd.DataFrame([{k: v for k, v in r.items() if k != "regions"} for r in rows])
    with pd.option_context("display.width", 250, "display.max_columns", 40, "display.precision", 3):
        print(summary.T.to_string())
        allreg = pd.concat([r["regions"].assign(subject=r["subject"]) for r in rows])
        per_region = allreg.groupby("region").agg(
            mean_error_ppm=("error_ppm", "mean"),
            max_abs_error_ppm=("error_ppm", lambda e: e.abs().max()),
            max_abs_error_demeaned_ppm=("error_demeaned_ppm", lambda e: e.abs().max()))
        print("\nwhole chain, region median error (reconstructed - truth), ppm:")
        print(per_region.to_string())
        if args.regions:
            print(allreg.to_string())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
