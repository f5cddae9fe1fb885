"""Preconditioned total field inversion (TFI) against today's default chain, same subject, same run.

    .venv/bin/python benchmarks/bench_tfi.py --protocol demo --seed 1 --snr 35 --lam 1000 --precond 30
    .venv/bin/python benchmarks/bench_tfi.py --protocol paper --seed 1 --snr 35 --lam 1000 --precond 30

On a simulated subject (``qsm_bids.simulate.subject.simulate_subject``; ``demo``:
2 mm isotropic 96x112x80; ``paper``: 1x1x2 mm 256x224x80, TE 20 ms), it runs

- ``default``: the true brain mask, SHARP 5 mm and MEDI in the toolbox's SMV form
  with rim shells of 3 and 2 mm (``bench_cortex.py``'s ``truth+sharp5+medi_edge_3_2``);
- ``tfi``: :func:`tfi_prototype.tfi` (benchmarks/tfi_prototype.py) on the total field: tissue mask from the
  magnitude (smoothed magnitude above ``--signal`` of its robust maximum, largest
  component, phase coherence > 0.5 as ``refine_with_phase``), Laplacian
  unwrapping of the box around it, ``fit_field``, ``field_noise_std``; the true
  brain mask as the region of interest; chi unknown over the box and its zero
  padding;
- ``tfi-oracle``: the same with the simulator's true (voxel-averaged) total field
  instead of the unwrapped one (an oracle for the unwrapping);

and scores each with ``bench_cortex.score`` (community scorer NRMSE and coverage
over the whole true mask, NRMSE in the 5 mm-eroded interior, over the outer 5 mm
(rim), the rim without the venous sinuses, nuclei contrast %), with the FFT count
and the time from the masks to chi. Subjects are cached under ``--cache-dir``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
from scipy import ndimage

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_cortex import NUCLEI, label_indices, run_chain, score  # noqa: E402

from qsm_bids.recon import fft  # noqa: E402
from qsm_bids.recon._ops import crop_box  # noqa: E402
from qsm_bids.recon.echoes import field_noise_std, fit_field  # noqa: E402
from qsm_bids.recon.mask import phase_coherence  # noqa: E402
from tfi_prototype import tfi  # noqa: E402
from qsm_bids.recon.unwrap import laplacian_unwrap  # noqa: E402

KEYS = ("magnitude", "phase", "voxel_size", "echo_times", "field_strength", "b0_dir", "chi_ppm",
        "local_field_ppm", "total_field_ppm", "brain_mask", "labels")


def load(protocol, seed, snr, cache_dir):
    path = os.path.join(cache_dir, f"{protocol}_sub{seed}_snr{snr:g}.npz") if cache_dir else None
    if path and os.path.exists(path):
        d = dict(np.load(path))
    else:
        from qsm_bids.simulate.subject import PAPER_MATRIX, PAPER_VOXEL_SIZE, simulate_subject

        kw = dict(voxel_size=PAPER_VOXEL_SIZE, matrix=PAPER_MATRIX, echo_times=(0.020,)) \
            if protocol == "paper" else {}
        s = simulate_subject(seed=seed, snr=snr, with_t1w=False, **kw)
        d = {k: s[k] for k in KEYS}
        if path:
            os.makedirs(cache_dir, exist_ok=True)
            np.savez(path, **d)
    d["voxel_size"] = tuple(float(v) for v in d["voxel_size"])
    d["field_strength"] = float(d["field_strength"])
    for k in ("magnitude", "phase"):
        if d[k].ndim == 3:
            d[k] = d[k][..., None]
    return d


def tissue_mask(mag_rss, phase, voxel_size, signal=0.1, phase_quality=0.5):
    """Voxels with signal and coherent phase: brain and non-brain tissue (scalp, muscle, eyes).

    The smoothed magnitude (FWHM 2 mm) above ``signal`` times its robust maximum
    (99.5th percentile), phase coherence above ``phase_quality``
    (:func:`qsm_bids.recon.mask.phase_coherence`), and the connected components
    of at least 1 % of the largest one (not only the largest: the scalp is
    separated from the brain by the dark skull).
    """
    sigma = [2.0 / 2.3548 / float(v) for v in voxel_size]
    smooth = ndimage.gaussian_filter(mag_rss, sigma)
    top = float(np.percentile(smooth[smooth > 0], 99.5))
    keep = (smooth > signal * top) & (phase_coherence(phase) > phase_quality)
    lab, n = ndimage.label(keep)
    if n == 0:
        return keep
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    return np.isin(lab, np.nonzero(sizes >= 0.01 * sizes.max())[0])


def run_tfi(subj, args, oracle=False):
    vox = subj["voxel_size"]
    te = np.asarray(subj["echo_times"], float)
    mag4, ph4 = subj["magnitude"], subj["phase"]
    brain = subj["brain_mask"].astype(bool)
    info = {}
    t_all = time.perf_counter()
    with fft.counting_ffts() as n_all:
        mag_rss = np.sqrt(np.sum(mag4**2, axis=3)).astype(np.float32)
        data = tissue_mask(mag_rss, ph4[..., 0], vox, args.signal)
        box = crop_box(data | brain, [int(np.ceil(args.margin_mm / d)) for d in vox])
        if oracle:
            total = subj["total_field_ppm"][box] * data[box]
        else:
            unwrapped = laplacian_unwrap(ph4[box], vox) * data[box][..., None]
            total = fit_field(unwrapped, mag4[box], te, subj["field_strength"]) * data[box]
        noise = field_noise_std(mag4[box], te)
        st = {}
        chi = tfi(total, mag_rss[box], brain[box], data[box],
                  vox, subj["b0_dir"], field_strength_t=subj["field_strength"],
                  delta_te_s=float(te[1] - te[0]) if te.size > 1 else float(te[0]), noise_std=noise,
                  lam=args.lam, precond_outside=args.precond, max_iter=args.max_iter, tol_norm_ratio=args.tol_norm_ratio,
                  cg_max_iter=args.cg_max_iter, cg_tol=args.cg_tol, pad=int(np.ceil(args.pad_mm / min(vox))),
                  pad_support=not args.no_pad_support, fit_offset=not args.no_offset, stats=st)
    info.update(t_all=time.perf_counter() - t_all, fft_all=n_all(), gn=st["outer_iterations"],
                cg=st["cg_iterations"], grid=st["grid_shape"], offset=st["offset_ppm"],
                data_rms=st["data_rms_ppm"], n_data=int(data.sum()))
    out = np.zeros(brain.shape, np.float32)
    out[box] = chi
    return out * brain, info


def row(name, s, info):
    nuc = " | ".join(f"{100 * s.get(n, float('nan')):.0f}" for n in NUCLEI)
    return (f"| {name} | {s['coverage']:.3f} | {s['nrmse']:.1f} | {s['nrmse_int']:.1f} | {s['nrmse_rim']:.1f} | "
            f"{s['nrmse_rim_tissue']:.1f} | {s['nrmse_noveins']:.1f} | {nuc} | {info.get('gn')}/{info.get('cg')} | "
            f"{info['fft_all']} | {info['t_all']:.1f} |")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--protocol", choices=("demo", "paper"), default="demo")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--snr", type=float, default=35.0)
    p.add_argument("--lam", type=float, nargs="+", default=[1000.0])
    p.add_argument("--precond", type=float, nargs="+", default=[30.0])
    p.add_argument("--max-iter", type=int, default=10)
    p.add_argument("--tol-norm-ratio", type=float, default=0.1, help="Gauss-Newton stop (toolbox 0.1)")
    p.add_argument("--cg-max-iter", type=int, default=100)
    p.add_argument("--cg-tol", type=float, default=0.01)
    p.add_argument("--pad-mm", type=float, default=32.0, help="zero padding per side (mm)")
    p.add_argument("--margin-mm", type=float, default=8.0, help="box margin around the tissue mask (mm)")
    p.add_argument("--signal", type=float, default=0.1, help="tissue threshold (fraction of robust max)")
    p.add_argument("--no-pad-support", action="store_true", help="chi = 0 in the zero padding")
    p.add_argument("--no-offset", action="store_true", help="do not fit a constant field offset")
    p.add_argument("--runs", nargs="+", default=["default", "tfi", "tfi-oracle"],
                   choices=("default", "tfi", "tfi-oracle"))
    p.add_argument("--cache-dir", default="/tmp/tfi_cache")
    p.add_argument("--workers", type=int, default=1)
    args = p.parse_args(argv)
    fft.set_workers(args.workers)
    subj = load(args.protocol, args.seed, args.snr, args.cache_dir)
    idx = label_indices()
    short = {"caudate": "CN", "putamen": "Put", "globus_pallidus": "GP", "red_nucleus": "RN",
             "substantia_nigra_dorsal": "SNd", "substantia_nigra_ventral": "SNv", "dentate_nucleus": "DN"}
    print(f"{args.protocol} seed {args.seed} SNR {args.snr:g}, grid {subj['brain_mask'].shape} at "
          f"{subj['voxel_size']} mm, FFT workers {fft.get_workers()}")
    print("| run | coverage | NRMSE (scorer) | interior | rim | rim tissue | scorer w/o veins | "
          + " | ".join(short[n] for n in NUCLEI) + " | GN/CG | FFTs | time s |")
    print("|---" * (10 + len(NUCLEI)) + "|", flush=True)
    if "default" in args.runs:
        chi, info = run_chain("truth+sharp5+medi_edge_3_2", subj)
        print(row("default truth+sharp5+medi_edge_3_2", score(chi, subj, idx), info), flush=True)
    for lam in args.lam:
        for pb in args.precond:
            a = argparse.Namespace(**{**vars(args), "lam": lam, "precond": pb})
            for name in ("tfi", "tfi-oracle"):
                if name not in args.runs:
                    continue
                chi, info = run_tfi(subj, a, oracle=name == "tfi-oracle")
                print(row(f"{name} lam {lam:g} P_B {pb:g}", score(chi, subj, idx), info)
                      + f" grid {info['grid']}, offset {info['offset']:+.3f} ppm, data rms "
                      f"{info['data_rms']:.4f} ppm, {info['n_data']} data voxels", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
