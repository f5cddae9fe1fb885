"""Study template from the T1w alone against a multi-channel one (T1w + Chimap): are the deep nuclei aligned better?

Issue 16 asks whether a multi-channel SyN (the T1w and the susceptibility map, as QSM template work does)
registers the small iron-rich nuclei across participants better than the T1w alone. On a simulated cohort
the true labels of every participant are known on the GRE grid (``derivatives/groundtruth/sub-X/anat/
sub-X_atlas-qsmbids_dseg.nii.gz``), so the question has a direct answer: build the study template with each
``--weights`` value (0: the T1w alone, the default; w > 0: the Chimap channel with that weight), carry each
participant's true labels into the study template through the same transforms as its map (``[study <- MNI,
MNI <- T1w, T1w <- GRE]``, nearest label) and measure, per nucleus:

- the mean pairwise Dice of the participants' true labels in the study template (how well the nucleus of one
  participant lands on another's; 1 is perfect alignment);
- the between-participant SD of the true susceptibility averaged over the consensus label (the voxels that
  at least half of the participants' true labels cover), each participant's truth being its planted map
  carried the same way -- the spread that misregistration adds to the group comparison.

Usage (participant level already run on a simulated dataset)::

    .venv/bin/python benchmarks/bench_template_channels.py BIDS DERIV [--weights 0 1] [--iterations 3]

Prints one table row per nucleus and weight, and the template time of each.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from qsm_bids.config import Config
from qsm_bids.derivatives import find_participant_derivatives
from qsm_bids.group.template import build_study_template

NUCLEI = ("red_nucleus", "substantia_nigra_dorsal", "substantia_nigra_ventral", "dentate_nucleus",
          "globus_pallidus", "putamen", "caudate")


def _labels(gt_dir: Path, label: str):
    import pandas as pd

    anat = gt_dir / f"sub-{label}" / "anat"
    table = pd.read_csv(anat / f"sub-{label}_atlas-qsmbids_dseg.tsv", sep="\t")
    return anat / f"sub-{label}_atlas-qsmbids_dseg.nii.gz", anat / f"sub-{label}_Chimap.nii.gz", table


def _to_study(img_path, template_path, transforms, interpolator):
    import ants

    from qsm_bids.registration import to_ants

    moving = to_ants(nib.load(str(img_path)))
    fixed = ants.image_read(str(template_path))
    return ants.apply_transforms(fixed, moving, [str(t) for t in transforms], interpolator=interpolator,
                                 defaultvalue=0).numpy()


def dice(a, b) -> float:
    s = a.sum() + b.sum()
    return float(2.0 * np.logical_and(a, b).sum() / s) if s else float("nan")


def evaluate(written: dict, files: dict, gt_dir: Path, labels: list) -> dict:
    """Per nucleus: mean pairwise Dice of the true labels in the study template, and the SD over
    participants of the true chi averaged over the consensus label."""
    template = written["template_t1w"]
    by_label = {s["label"]: s for s in written["subjects"]}
    true_labels, true_chi, table = [], [], None
    for lab in labels:
        f = files[lab]
        dseg, chi_true, table = _labels(gt_dir, lab)
        chain = [by_label[f"sub-{lab}"]["xfm_mni_to_study"], f["xfm_t1w_template"], f["xfm_gre_t1w"]]
        true_labels.append(np.rint(_to_study(dseg, template, chain, "genericLabel")).astype(np.int16))
        true_chi.append(_to_study(chi_true, template, chain, "linear"))
    out = {}
    for region in NUCLEI:
        idx = table.loc[table["region"] == region, "index"].astype(int).tolist()
        if not idx:
            continue
        masks = [np.isin(t, idx) for t in true_labels]
        pair = [dice(a, b) for a, b in itertools.combinations(masks, 2)]
        consensus = np.mean(masks, axis=0) >= 0.5
        means = [float(c[consensus].mean()) if consensus.any() else float("nan") for c in true_chi]
        out[region] = {"dice": float(np.mean(pair)), "dice_min": float(np.min(pair)),
                       "consensus_voxels": int(consensus.sum()), "true_chi_sd_ppm": float(np.std(means, ddof=1))}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bids", type=Path)
    ap.add_argument("deriv", type=Path)
    ap.add_argument("--weights", type=float, nargs="+", default=[0.0, 1.0])
    ap.add_argument("--iterations", type=int, default=Config().group.template_iterations)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    cfg = Config()
    gt_dir = args.bids / "derivatives" / "groundtruth"
    keys = ("t1w_template", "chi_template", "mask_template", "chi", "xfm_gre_t1w", "xfm_t1w_template")
    files = {}
    for d in sorted(args.deriv.glob("sub-*")):
        if not d.is_dir():
            continue
        lab = d.name[4:]
        found, _ = find_participant_derivatives(args.deriv, lab, cfg.registration.template, cfg.atlas.name,
                                                keys=keys)
        if all(k in found for k in keys) and (gt_dir / f"sub-{lab}").exists():
            files[lab] = found
    labels = sorted(files)
    if len(labels) < 2:
        print(f"{args.deriv}: fewer than 2 participants with maps, transforms and ground truth", file=sys.stderr)
        return 1
    print(f"{len(labels)} participants; template iterations {args.iterations}, resolution "
          f"{cfg.group.template_resolution_mm:g} mm, ITK threads {args.threads}")
    rows = []
    for w in args.weights:
        with tempfile.TemporaryDirectory(prefix="tplch_") as tmp:
            group = Path(tmp) / "group"
            out = {"template_t1w": group / "tpl-study_T1w.nii.gz",
                   "template_chi": group / "tpl-study_desc-mean_Chimap.nii.gz",
                   "template_mask": group / "tpl-study_desc-brain_mask.nii.gz",
                   "xfm_study_to_mni": group / "from-study_to-MNI152NLin2009aSym_mode-image_xfm.h5"}
            t0 = time.perf_counter()
            written = build_study_template(
                [files[lab]["t1w_template"] for lab in labels], [files[lab]["chi_template"] for lab in labels],
                [files[lab]["mask_template"] for lab in labels], out, iterations=args.iterations,
                resolution_mm=cfg.group.template_resolution_mm, seed=cfg.seed, n_threads=args.threads,
                work_dir=tmp, native_chi_paths=[files[lab]["chi"] for lab in labels],
                gre_to_t1w_paths=[files[lab]["xfm_gre_t1w"] for lab in labels],
                t1w_to_mni_paths=[files[lab]["xfm_t1w_template"] for lab in labels], chi_weight=w)
            elapsed = time.perf_counter() - t0
            res = evaluate(written, files, gt_dir, labels)
        print(f"chi weight {w:g}: template built in {elapsed:.0f} s")
        for region, r in res.items():
            rows.append((region, w, r))
    print("\n| nucleus | chi weight | mean pairwise Dice | min Dice | consensus voxels | SD of true chi over "
          "consensus (ppm) |")
    print("|---|---:|---:|---:|---:|---:|")
    for region, w, r in sorted(rows, key=lambda t: (NUCLEI.index(t[0]), t[1])):
        print(f"| {region} | {w:g} | {r['dice']:.3f} | {r['dice_min']:.3f} | {r['consensus_voxels']} | "
              f"{r['true_chi_sd_ppm']:.4f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
