"""T1w -> template warps against the simulator's truth: the Jacobian determinant (VBM's modulation).

A simulated subject's head is the template under a known pose: ``u = S^-1 R^T (w - t)`` takes a scanner
point ``w`` to head coordinates about the brain centre, ``v = u + d(u)`` to the template, with ``d`` a
sum of plane waves (``Pose.modes``). The true Jacobian determinant of the template -> T1w mapping at a
template point ``v`` is therefore ``det(S) / det(I + grad d(u))`` with ``u`` solved from ``v = u + d(u)``
(:func:`true_jacobian`). Atrophy changes it locally, so only controls are scored.

For each control and each SyN metric (``registration.syn_metric``) the subject is registered as the
participant level does (``registration.register_subject``: GRE -> T1w rigid, T1w -> template rigid,
affine, SyN, the magnitude brain mask as the moving mask) and the Jacobian is taken as the structural step
takes it (``structural.jacobian_determinant``, 2 mm template grid). Scores, over the template brain:
the SD of ``log(J_registered / J_true)`` voxel by voxel and after a 3 mm Gaussian (VBM's smoothing), over
the whole brain and over the frontal lobe (y > 40 mm), and the registration time.

    .venv/bin/python benchmarks/bench_registration_jacobian.py BIDS [--metrics mattes cc] \
        [--participants 02 04] [--preset standard] [--out table.tsv]

``BIDS`` is a ``qsm-bids-simulate`` dataset (its ``derivatives/groundtruth`` holds each pose).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from scipy import ndimage

from qsm_bids import registration as R
from qsm_bids.config import Config
from qsm_bids.recon.mask import brain_mask
from qsm_bids.simulate.forward import smooth_displacement
from qsm_bids.simulate.subject import _BRAIN_CENTRE_MM, Pose
from qsm_bids.structural import jacobian_determinant

FRONTAL_Y_MM = 40.0
SMOOTH_SIGMA_MM = 3.0


def true_jacobian(pose: dict, shape, affine, n_iter: int = 8) -> np.ndarray:
    """Jacobian determinant (T1w volume per template volume) of a simulated head's mapping, on a grid.

    ``pose`` is the ground truth's ``Pose`` (rotation, translation, ``scale``, ``modes``); ``shape`` and
    ``affine`` the template grid. ``u`` is solved from ``v = u + d(u)`` by fixed-point iteration (the
    modes are smooth: |grad d| << 1, so it contracts), ``d`` the simulator's own
    :func:`~qsm_bids.simulate.forward.smooth_displacement`.
    """
    pose = Pose.from_dict(pose)
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).reshape(-1, 3)
    v = idx @ np.asarray(affine)[:3, :3].T + np.asarray(affine)[:3, 3] - _BRAIN_CENTRE_MM
    u = v.copy()
    for _ in range(n_iter):
        u = v - np.stack(smooth_displacement(tuple(u.T), pose.modes), axis=1)
    grad = np.broadcast_to(np.eye(3), (len(u), 3, 3)).copy()
    for a, w, ph in pose.modes:
        k = 2 * np.pi * np.asarray(w, float)
        grad += np.outer(a, k)[None] * np.cos(u @ k + ph)[:, None, None]
    return (float(np.prod(pose.scale)) / np.linalg.det(grad)).reshape(shape)


def log_ratio_sd(jac, truth, mask, region, voxel_mm: float) -> dict:
    """SD of log(J / J_true) over ``region``, voxelwise and after VBM's Gaussian (within ``mask``)."""
    lr = np.log(np.clip(jac, 1e-3, None) / truth)
    s = SMOOTH_SIGMA_MM / voxel_mm
    smooth = ndimage.gaussian_filter(np.where(mask, lr, 0), s) / np.maximum(
        ndimage.gaussian_filter(mask.astype(float), s), 1e-3)
    return {"sd": float(lr[region].std()), "sd_smoothed": float(smooth[region].std())}


def score_subject(bids: Path, sub: str, metrics, preset: str, cfg: Config) -> list:
    """One row per metric for one control (the truth and the template regions computed once)."""
    mag_path = sorted((bids / sub / "anat").glob(f"{sub}_*echo-1_part-mag_*.nii.gz"))[0]
    mag = nib.load(mag_path)
    mask = brain_mask(np.asarray(mag.dataobj, np.float32), mag.header.get_zooms()[:3],
                      threshold=cfg.recon.mask_threshold, erode_mm=cfg.recon.mask_erode_mm)
    gre_mask = nib.Nifti1Image(mask.astype(np.float32), mag.affine)
    t1w = nib.load(bids / sub / "anat" / f"{sub}_T1w.nii.gz")
    ref_img = R.brain_template(2.0)
    ref = R.to_ants(ref_img)
    brain = np.asarray(ref_img.dataobj) > 0
    y = np.arange(ref_img.shape[1]) * ref_img.affine[1, 1] + ref_img.affine[1, 3]
    frontal = brain & (y[None, :, None] > FRONTAL_Y_MM)
    truth_json = bids / "derivatives" / "groundtruth" / sub / "anat" / f"{sub}_Chimap.json"
    truth = true_jacobian(json.loads(truth_json.read_text())["Pose"], ref_img.shape, ref_img.affine)
    rows = []
    for metric in metrics:
        with tempfile.TemporaryDirectory(prefix="bench-jac-") as tmp:
            tmp = Path(tmp)
            t0 = time.perf_counter()
            R.register_subject(mag, t1w, tmp / "to.h5", tmp / "from.h5", tmp / "rigid.mat", preset=preset,
                               seed=cfg.seed, gre_mask=gre_mask, work_dir=tmp, syn_metric=metric)
            seconds = time.perf_counter() - t0
            jac = jacobian_determinant(ref, [str(tmp / "to.h5")], work_dir=tmp).numpy()
        row = {"participant_id": sub, "metric": metric, "register_s": round(seconds, 1)}
        for name, region in (("brain", brain), ("frontal", frontal)):
            for k, v in log_ratio_sd(jac, truth, brain, region, 2.0).items():
                row[f"{name}_{k}"] = round(v, 4)
        rows.append(row)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bids", type=Path)
    ap.add_argument("--metrics", nargs="+", default=["mattes", "cc"], choices=sorted(R.SYN_METRICS))
    ap.add_argument("--participants", nargs="*", help="labels (default: every control)")
    ap.add_argument("--preset", default=Config().registration.preset, choices=sorted(R.PRESETS))
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    cfg = Config()
    R.set_threads(1)
    parts = pd.read_csv(args.bids / "participants.tsv", sep="\t")
    subs = ([f"sub-{p.removeprefix('sub-')}" for p in args.participants] if args.participants
            else list(parts.loc[parts.group == "control", "participant_id"]))
    rows = []
    for i, sub in enumerate(subs, 1):
        for row in score_subject(args.bids, sub, args.metrics, args.preset, cfg):
            rows.append(row)
            print(f"[{i}/{len(subs)}] {row}", file=sys.stderr, flush=True)
    table = pd.DataFrame(rows)
    if args.out:
        table.to_csv(args.out, sep="\t", index=False)
    print(table.groupby("metric").mean(numeric_only=True).round(3).to_string())
    return 0


if __name__ == "__main__":
    sys.exit(main())
