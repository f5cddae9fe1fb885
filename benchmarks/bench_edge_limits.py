"""What limits QSM at the brain's edge: the background field's harmonicity by depth, and oracles.

    .venv/bin/python benchmarks/bench_edge_limits.py --seed 1 --snr 35

On a simulated paper-protocol subject (``qsm_bids.simulate.simulate_subject``:
256x224x80, 1x1x2 mm, TE 20 ms, oblique head with skull, sinuses and ear canals;
the field computed on a grid twice as fine and the complex signal averaged to the
voxel), with the simulator's true local and total fields:

1. Harmonicity. Every spherical-mean method (SHARP, V-SHARP, MEDI's SMV form and
   its rim shells) rests on ``(1 - S_r) * background = 0`` inside the brain. For
   each sphere radius ``r`` and depth below the true brain surface it prints
   ``rms((1 - S_r) background) / rms((1 - S_r) local)``: the true background
   (simulator total - local) and, beside it, the background the chain sees
   (Laplacian-unwrapped total - true local, which adds noise and the unwrapping's
   harmonic offset). Above ~1 the sphere measures the background, not the brain.
2. Oracles, scored like ``bench_cortex.py`` (the community scorer over the whole
   true mask; tissue NRMSE by depth with the sinuses excluded): MEDI on the true
   local field over the whole true mask (perfect background removal), and on the
   true local field inside the mask eroded by 5 mm with the rim filled by the
   regulariser (perfect removal, data only where SHARP has any).
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
from scipy import ndimage

from qsm_bids.recon import fft
from qsm_bids.recon._ops import binary_dilate_mm, crop_box, pad_to, smv, sphere_kernel_rfft
from qsm_bids.recon.background import erode_by_sphere
from qsm_bids.recon.echoes import field_noise_std, fit_field
from qsm_bids.recon.inversion import medi
from qsm_bids.recon.mask import refine_with_phase
from qsm_bids.recon.unwrap import laplacian_unwrap

DEPTHS_MM = ((0.0, 2.0), (2.0, 3.0), (3.0, 5.0), (5.0, 8.0), (8.0, 100.0))


def simulate(seed, snr):
    from qsm_bids.simulate.subject import PAPER_MATRIX, PAPER_VOXEL_SIZE, simulate_subject

    s = simulate_subject(seed=seed, snr=snr, voxel_size=PAPER_VOXEL_SIZE, matrix=PAPER_MATRIX,
                         echo_times=(0.020,), with_t1w=False)
    truth = s["brain_mask"].astype(bool)
    box = crop_box(truth, [int(np.ceil(16.0 / v)) for v in s["voxel_size"]])
    out = {k: s[k][box] for k in ("chi_ppm", "local_field_ppm", "total_field_ppm", "brain_mask")}
    out["magnitude"] = s["magnitude"][box][..., None] if s["magnitude"].ndim == 3 else s["magnitude"][box]
    out["phase"] = s["phase"][box][..., None] if s["phase"].ndim == 3 else s["phase"][box]
    out.update(voxel_size=tuple(float(v) for v in s["voxel_size"]), b0_dir=np.asarray(s["b0_dir"], float),
               te=np.asarray(s["echo_times"], float), field_strength=float(s["field_strength"]))
    return out


def harmonicity(s, radii=(1.0, 2.0, 3.0, 5.0)):
    """Rows (radius, [(true ratio, seen ratio) per depth band]); None where no sphere fits."""
    vox, brain = s["voxel_size"], s["brain_mask"].astype(bool)
    depth = ndimage.distance_transform_edt(brain, sampling=vox)
    trusted = refine_with_phase(brain, s["phase"][..., 0], vox, 0.5)
    unwrapped = laplacian_unwrap(s["phase"], vox) * brain[..., None]
    total = fit_field(unwrapped, s["magnitude"], s["te"], s["field_strength"]) * brain
    local = s["local_field_ppm"]
    shape = fft.next_fast_shape(brain.shape)
    sl = tuple(slice(0, n) for n in brain.shape)
    rows = []
    for r in radii:
        S = sphere_kernel_rfft(shape, vox, r)
        fits = smv(pad_to(brain.astype(np.float32), shape), S)[sl] > 0.999

        def high_pass(x):
            xp = pad_to((x * brain).astype(np.float32), shape)
            return (xp - smv(xp, S))[sl]

        hl = high_pass(local)
        hb_true = high_pass(s["total_field_ppm"] - local)
        hb_seen = high_pass(total - local)
        cells = []
        for lo, hi in DEPTHS_MM:
            sel = fits & trusted & (depth > lo + 1e-3) & (depth <= hi + 1e-3)
            if not sel.any():
                cells.append(None)
                continue
            ref = np.sqrt(np.mean(hl[sel] ** 2))
            cells.append((np.sqrt(np.mean(hb_true[sel] ** 2)) / ref, np.sqrt(np.mean(hb_seen[sel] ** 2)) / ref))
        rows.append((r, cells))
    return rows


def score(chi, s):
    """Community-scorer NRMSE and coverage over the whole true mask; tissue NRMSE by depth (sinuses out)."""
    from qsm_ci.qsm_eval import score_arrays

    vox, brain = s["voxel_size"], s["brain_mask"].astype(bool)
    truth = s["chi_ppm"].astype(np.float64)
    metrics, _ = score_arrays(chi.astype(np.float64), truth, brain.astype(np.uint8))
    depth = ndimage.distance_transform_edt(brain, sampling=vox)
    veins = binary_dilate_mm(truth > 0.2, 1.0, vox)
    c = np.where(brain, chi, 0.0)
    cm, tm = c[brain].mean(), truth[brain].mean()
    bands = []
    for lo, hi in ((0.0, 1.0), (1.0, 3.0), (3.0, 5.0), (5.0, 100.0)):
        sel = brain & ~veins & (depth > lo + 1e-3) & (depth <= hi + 1e-3)
        t = truth[sel] - tm
        bands.append(100 * np.linalg.norm((c[sel] - cm) - t) / np.linalg.norm(t))
    return metrics["coverage"], metrics["nrmse"], bands


def oracles(s):
    vox, brain = s["voxel_size"], s["brain_mask"].astype(bool)
    mag = np.sqrt(np.sum(s["magnitude"] ** 2, axis=3)).astype(np.float32)
    common = dict(field_strength_t=s["field_strength"], delta_te_s=float(s["te"][0]),
                  noise_std=field_noise_std(s["magnitude"], s["te"]), output_mask=np.ones(brain.shape, bool))
    e5 = erode_by_sphere(brain, vox, 5.0)
    out = []
    for name, data_mask in (("true local field, whole mask", brain), ("true local field, 5 mm-eroded mask, rim filled", e5)):
        t0 = time.perf_counter()
        chi = medi(s["local_field_ppm"] * data_mask, mag, data_mask, vox, s["b0_dir"], **common)
        out.append((name, score(chi * brain, s), time.perf_counter() - t0))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--snr", type=float, default=35.0)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args(argv)
    fft.set_workers(args.workers)
    s = simulate(args.seed, args.snr)
    bands = " | ".join(f"{lo:g}-{hi:g} mm" if hi < 100 else f"> {lo:g} mm" for lo, hi in DEPTHS_MM)
    print(f"seed {args.seed}, SNR {args.snr:g}: rms((1 - S_r) background) / rms((1 - S_r) local), "
          "true background / the background the chain sees, by depth below the brain surface")
    print(f"| sphere radius | {bands} |")
    print("|---" * (len(DEPTHS_MM) + 1) + "|")
    for r, cells in harmonicity(s):
        print(f"| {r:g} mm | " + " | ".join("-" if c is None else f"{c[0]:.2f} / {c[1]:.2f}" for c in cells) + " |")
    print("\n| MEDI oracle | coverage | NRMSE (scorer) | tissue NRMSE 0-1 / 1-3 / 3-5 / > 5 mm | time s |")
    print("|---|---|---|---|---|")
    for name, (cov, nrmse, b), t in oracles(s):
        print(f"| {name} | {cov:.3f} | {nrmse:.1f} | " + " / ".join(f"{v:.0f}" for v in b) + f" | {t:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
