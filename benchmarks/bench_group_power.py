"""Where a planted group effect's t is lost, stage by stage, on a simulated cohort run through qsm-bids.

    .venv/bin/python benchmarks/bench_group_power.py BIDS_DIR DERIVATIVES_DIR red_nucleus:R putamen:L

For each region (``REGION:HEMISPHERE``) it prints the two-sample t (first group of
``participants.tsv`` minus the second, pooled variance) of:

1. the planted values (``derivatives/groundtruth/sub-*/anat/*_desc-planted_Chimap.tsv``);
2. the true chi in the true native labels (mean in the region minus the mean in the QSM mask);
3. the reconstructed Chimap in the same labels and mask;
4. the participant's template-space Chimap averaged over the atlas region (minus its brain mean);
5. the largest voxel t of the group analysis inside the atlas region (``group/space-MNI..._stat-t``);

then the voxelwise FWE threshold of the group analysis (95th percentile of the permutations' maximum t,
``group/desc-permutation_null.tsv``) and the per-subject error of stage 3 against stage 2. Stages 2-3 need
the simulator's ground truth; the group level must have run.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from nilearn.image import resample_to_img
from scipy import stats

from qsm_bids.atlas import default_atlas


def _t(values: pd.Series, groups: pd.Series, order) -> float:
    a, b = values[groups == order[0]], values[groups == order[1]]
    return float(stats.ttest_ind(a, b).statistic)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bids", type=Path)
    ap.add_argument("derivatives", type=Path)
    ap.add_argument("regions", nargs="+", help="REGION:HEMISPHERE, e.g. red_nucleus:R")
    ap.add_argument("--group-column", default="group")
    args = ap.parse_args(argv)
    part = pd.read_csv(args.bids / "participants.tsv", sep="\t")
    order = list(dict.fromkeys(part[args.group_column].astype(str)))
    if len(order) != 2:
        raise SystemExit(f"need two groups in {args.group_column}, found {order}")
    atlas, table = default_atlas()
    gt_root = args.bids / "derivatives" / "groundtruth"
    group = args.derivatives / "group"
    contrast = f"{order[0]}gt{order[1]}"
    timg = nib.load(group / f"space-MNI152NLin2009aSym_contrast-{contrast}_stat-t_statmap.nii.gz")
    tmap = np.asarray(timg.dataobj)
    atlas_t = np.asarray(resample_to_img(atlas, timg, interpolation="nearest").dataobj)
    wanted = []
    for item in args.regions:
        region, _, hemi = item.partition(":")
        sel = table[(table.region == region) & (table.hemisphere == hemi)]
        if sel.empty:
            raise SystemExit(f"no atlas region {item!r}")
        wanted.append((region, hemi, int(sel["index"].iloc[0])))
    rows = []
    atlas_tpl = None
    for pid, g in zip(part.participant_id, part[args.group_column].astype(str)):
        gt = gt_root / pid / "anat" / pid
        lab = np.asarray(nib.load(f"{gt}_atlas-qsmbids_dseg.nii.gz").dataobj)
        truth = np.asarray(nib.load(f"{gt}_Chimap.nii.gz").dataobj)
        anat = args.derivatives / pid / "anat" / pid
        chi = np.asarray(nib.load(f"{anat}_Chimap.nii.gz").dataobj)
        qmask = np.asarray(nib.load(f"{anat}_desc-qsm_mask.nii.gz").dataobj) > 0
        cimg = nib.load(f"{anat}_space-MNI152NLin2009aSym_Chimap.nii.gz")
        chi_tpl = np.asarray(cimg.dataobj)
        if atlas_tpl is None:
            atlas_tpl = np.asarray(resample_to_img(atlas, cimg, interpolation="nearest").dataobj)
        planted = pd.read_csv(f"{gt}_atlas-qsmbids_desc-planted_Chimap.tsv", sep="\t")
        row = {"participant_id": pid, "group": g}
        for region, hemi, idx in wanted:
            key = f"{region}:{hemi}"
            sel = (lab == idx) & qmask
            row[(key, "planted")] = float(planted[(planted.region == region)
                                                  & (planted.hemisphere == hemi)]["planted_ppm"].iloc[0])
            row[(key, "true")] = float(truth[sel].mean() - truth[qmask].mean())
            row[(key, "native")] = float(chi[sel].mean() - chi[qmask].mean())
            row[(key, "template")] = float(chi_tpl[atlas_tpl == idx].mean() - chi_tpl[chi_tpl != 0].mean())
        rows.append(row)
    df = pd.DataFrame(rows)
    null = pd.read_csv(group / "desc-permutation_null.tsv", sep="\t")
    threshold = float(np.quantile(null[f"{contrast}_max_t"], 0.95))
    print(f"{contrast}: {len(df)} participants; voxelwise t FWE threshold (95th percentile of the maximum t "
          f"over {len(null)} permutations): {threshold:.2f}")
    print("| region | planted | true chi, native | reconstructed, native | template, atlas mean "
          "| largest voxel t | error SD (ppm) | worst error (ppm) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for region, hemi, idx in wanted:
        key = f"{region}:{hemi}"
        ts = [_t(df[(key, s)], df["group"], order) for s in ("planted", "true", "native", "template")]
        vox = tmap[(atlas_t == idx) & np.isfinite(tmap)]
        err = df[(key, "native")] - df[(key, "true")]
        print(f"| {key} | " + " | ".join(f"{t:.2f}" for t in ts)
              + f" | {vox.max():.2f} | {err.std():.4f} | {err.abs().max():.4f} |")


if __name__ == "__main__":
    main()
