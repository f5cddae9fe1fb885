"""What the QSM mask leaves out, and whether those voxels carry information (simulated cohorts).

    .venv/bin/python benchmarks/evaluate_coverage.py BIDS_DIR DERIVATIVES_DIR [--participant-label 01 02]

The QSM mask (``desc-qsm_mask``) holds the voxels whose phase was trusted; MEDI also returns chi in the
others (the Chimap's support), filled by its regulariser from their neighbours. For each subject of a
cohort simulated by ``qsm-bids-simulate`` and run through ``qsm-bids participant``, in native space
against the simulator's ground truth (``BIDS_DIR/derivatives/groundtruth``), this prints the share of the
true brain that the QSM mask and the Chimap cover, then, by depth below the true brain surface (the
outer voxel layer, the next, deeper), the rms error of chi in the measured voxels and in the left-out
ones, beside the left-out voxels' own true rms (an error as large as that is "as good as returning
zero"). Each map is compared after removing its mean offset from the truth over the measured voxels.
The last lines summarise the ranges over subjects.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

#: Depth bands (mm) below the true brain surface; distances are between voxel centres, so on a 2 mm
#: grid the first band is the outermost voxel layer.
BANDS = ((0.0, 2.1), (2.1, 4.1), (4.1, np.inf))


def _rms(a):
    return float(np.sqrt(np.mean(a**2))) if a.size else float("nan")


def coverage_errors(chi, qsm_mask, truth, true_brain, voxel_size):
    """Coverage and the error in measured / left-out voxels per depth band (pure function on arrays).

    Returns ``(qsm_coverage, chimap_coverage, rows)`` with one row per :data:`BANDS` entry:
    ``(band, n_measured, rms_measured, n_left_out, rms_left_out, rms_true_left_out)``.
    """
    qsm_mask = qsm_mask & true_brain
    support = (chi != 0) & true_brain
    offset = float(chi[qsm_mask].mean() - truth[qsm_mask].mean())
    err = chi - offset - truth
    left_out = support & ~qsm_mask
    depth = ndimage.distance_transform_edt(true_brain, sampling=voxel_size)
    rows = []
    for lo, hi in BANDS:
        band = (depth > lo) & (depth <= hi)
        m, x = qsm_mask & band, left_out & band
        rows.append(((lo, hi), int(m.sum()), _rms(err[m]), int(x.sum()), _rms(err[x]), _rms(truth[x])))
    return float(qsm_mask.sum() / true_brain.sum()), float(support.sum() / true_brain.sum()), rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bids", type=Path)
    ap.add_argument("derivatives", type=Path)
    ap.add_argument("--participant-label", nargs="*")
    args = ap.parse_args(argv)
    gt_root = args.bids / "derivatives" / "groundtruth"
    subs = ([f"sub-{s.removeprefix('sub-')}" for s in args.participant_label] if args.participant_label
            else sorted(p.name for p in gt_root.glob("sub-*") if p.is_dir()))
    summary = {"qsm": [], "chimap": [], "bands": {b: [] for b in BANDS}}
    for sub in subs:
        a = args.derivatives / sub / "anat" / sub
        gt = gt_root / sub / "anat" / sub
        cimg = nib.load(f"{a}_Chimap.nii.gz")
        chi = np.asarray(cimg.dataobj, dtype=np.float32)
        qsm_mask = np.asarray(nib.load(f"{a}_desc-qsm_mask.nii.gz").dataobj) > 0
        truth = np.asarray(nib.load(f"{gt}_Chimap.nii.gz").dataobj, dtype=np.float32)
        brain = np.asarray(nib.load(f"{gt}_desc-brain_mask.nii.gz").dataobj) > 0
        cov_q, cov_c, rows = coverage_errors(chi, qsm_mask, truth, brain, cimg.header.get_zooms()[:3])
        summary["qsm"].append(cov_q)
        summary["chimap"].append(cov_c)
        print(f"{sub}: QSM mask covers {cov_q:.3f} of the true brain, the Chimap {cov_c:.3f}")
        for (lo, hi), n_m, e_m, n_x, e_x, t_x in rows:
            summary["bands"][(lo, hi)].append((e_m, e_x, t_x))
            print(f"   depth {lo:g}-{hi:g} mm: measured {n_m} voxels, rms error {e_m:.4f} ppm; left out {n_x}, "
                  f"rms error {e_x:.4f} ppm vs their true rms {t_x:.4f} ppm")
    print(f"\n{len(subs)} subjects: QSM mask covers {min(summary['qsm']):.3f}-{max(summary['qsm']):.3f} of the "
          f"true brain, the Chimap {min(summary['chimap']):.3f}-{max(summary['chimap']):.3f}")
    for (lo, hi), vals in summary["bands"].items():
        v = np.asarray([x for x in vals if np.isfinite(x[1])])
        if not v.size:
            continue
        print(f"depth {lo:g}-{hi:g} mm: measured rms error {v[:, 0].min():.4f}-{v[:, 0].max():.4f} ppm; left out "
              f"{v[:, 1].min():.4f}-{v[:, 1].max():.4f} ppm = {(v[:, 1] / v[:, 2]).min() * 100:.0f}-"
              f"{(v[:, 1] / v[:, 2]).max() * 100:.0f} % of their own true rms")


if __name__ == "__main__":
    main()
