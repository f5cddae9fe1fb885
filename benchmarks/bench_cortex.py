"""Edge-keeping reconstruction chains at the paper protocol: coverage and whole-brain accuracy.

Each chain (mask -> Laplacian unwrapping -> field -> background removal ->
dipole inversion) is run by calling the array kernels of ``qsm_bids.recon``
directly on a simulated subject (``qsm_bids.simulate.simulate_subject``,
256x224x80, 1x1x2 mm, TE 20 ms, oblique head with sinuses) and scored
against the simulator's truth:

- ``coverage``, ``nrmse``: the community scorer
  ``qsm_ci.qsm_eval.score_arrays(chi, truth, true_brain_mask)`` (the whole
  true brain mask; voxels a chain does not return count as chi = 0);
- ``nrmse_int``: NRMSE inside the true mask eroded by the 5 mm sphere (the
  metric of ``benchmarks/bench_recon.py``, each map's mean removed there);
- ``nrmse_rim``: NRMSE over the outer 5 mm of the true mask (the cortex and
  the sinuses), the voxels a chain does not return counted as 0, means
  removed over the whole true mask;
- ``precentral``: coverage of the precentral-gyrus labels and the error (ppb) of their mean
  over the covered voxels (both maps demeaned over the true mask): what the motor-cortex
  statistics see;
- nuclei: (mean in the nucleus - map mean) / (the same for the truth) in the
  eroded interior, left and right pooled (as ``bench_recon.py``);
- FFTs and time of mask-to-chi, and one rfftn+irfftn pair at the working
  grid timed in the same run (time / (FFT count x one FFT) is the ratio
  that stays meaningful on a loaded machine).

Chains (``--chains``): ``<mask>+<background>+<inversion>``, e.g.

- ``magnitude+sharp5+medi_smv``: today's default (magnitude mask eroded by
  1 mm, phase-coherence refinement, SHARP 5 mm, MEDI in the toolbox's SMV
  form, chi on the brain mask eroded by the sphere);
- masks: ``magnitude`` (erode 1 mm), ``magnitude0`` (no final erosion),
  ``truth`` (the simulator's brain mask: what a perfect T1w mask would
  give), ``truth-1`` / ``truth+1`` (the same eroded / dilated by 1 mm: a
  registration error);
- background: ``sharpR`` (SHARP, radius R mm; ``sharp5`` is the paper's), ``vsharp`` (radii 12..2 mm, today's V-SHARP),
  ``vsharpR`` with ``R`` the smallest radius in mm (radii 12, 10, 8, 6, 4,
  3, 2, R), ``pdf``;
- inversion: ``medi_smv`` (SMV form with the SHARP radius; needs sharpR), ``medi`` (on the local
  field, chi on the background step's mask), ``medifill`` (on the local
  field, chi returned on the whole brain mask: the regulariser fills the
  voxels without trusted data), ``medi_edge[_r1_r2...]`` (SMV form with the SHARP sphere in
  the interior and smaller spheres, default 2 and 1 mm, in the shells it erodes: each voxel
  high-passed by the largest sphere that fits; chi on the whole brain mask), ``tkd``.

    .venv/bin/python benchmarks/bench_cortex.py --snr 35 --seed 1 \
        --chains magnitude+sharp5+medi_smv truth+vsharp1+medifill
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

from qsm_bids.recon import fft
from qsm_bids.recon._ops import binary_dilate_mm, binary_erode_mm, crop_box
from qsm_bids.recon.background import erode_by_sphere, pdf, sharp, vsharp
from qsm_bids.recon.echoes import field_noise_std, fit_field
from qsm_bids.recon.inversion import medi, tkd
from qsm_bids.recon.mask import brain_mask, refine_with_phase
from qsm_bids.recon.unwrap import laplacian_unwrap

NUCLEI = ["caudate", "putamen", "globus_pallidus", "red_nucleus", "substantia_nigra_dorsal",
          "substantia_nigra_ventral", "dentate_nucleus"]
VSHARP_RADII = (12.0, 10.0, 8.0, 6.0, 4.0, 3.0, 2.0)


def load_subject(seed, snr, cache_dir=None):
    """A paper-protocol subject (cached as .npz under ``cache_dir`` when given)."""
    path = None
    if cache_dir:
        path = os.path.join(cache_dir, f"sub{seed}_snr{snr:g}.npz")
        if os.path.exists(path):
            d = dict(np.load(path))
            d["voxel_size"] = tuple(float(v) for v in d["voxel_size"])
            d["field_strength"] = float(d["field_strength"])
            return d
    from qsm_bids.simulate.subject import (
        PAPER_MATRIX,
        PAPER_VOXEL_SIZE,
        simulate_subject,
    )

    s = simulate_subject(seed=seed, snr=snr, voxel_size=PAPER_VOXEL_SIZE, matrix=PAPER_MATRIX,
                         echo_times=(0.020,), with_t1w=False)
    keep = {k: s[k] for k in ("magnitude", "phase", "affine", "voxel_size", "echo_times",
                              "field_strength", "b0_dir", "chi_ppm", "brain_mask", "labels")}
    if path:
        os.makedirs(cache_dir, exist_ok=True)
        np.savez(path, **keep)
    return keep


def label_indices():
    from qsm_bids.simulate.phantom import head_model

    lt = head_model().label_table
    return {n: lt.loc[lt["region"] == n, "index"].tolist() for n in NUCLEI + ["precentral_gyrus"]}


def fft_pair_time(shape, repeats=5):
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    times = []
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        fft.irfftn(fft.rfftn(x), shape)
        times.append(time.perf_counter() - t0)
    return float(np.median(times[1:]))


def make_mask(kind, subj):
    vox = subj["voxel_size"]
    mag = subj["magnitude"][..., 0] if subj["magnitude"].ndim == 4 else subj["magnitude"]
    truth = subj["brain_mask"].astype(bool)
    if kind == "magnitude":
        return brain_mask(mag, vox, erode_mm=1.0)
    if kind == "magnitude0":
        return brain_mask(mag, vox, erode_mm=0.0)
    if kind == "truth":
        return truth
    if kind == "truth-1":
        return binary_erode_mm(truth, 1.0, vox)
    if kind == "truth+1":
        return binary_dilate_mm(truth, 1.0, vox)
    raise ValueError(f"unknown mask {kind!r}")


def run_chain(chain, subj):
    """Mask to chi for one chain; returns (chi on the full grid, info dict)."""
    mask_kind, bg, inv = chain.rsplit("+", 2)  # the mask may be "truth+1"
    vox = subj["voxel_size"]
    te = np.asarray(subj["echo_times"], dtype=float)
    b0 = np.asarray(subj["b0_dir"], dtype=float)
    mag = subj["magnitude"] if subj["magnitude"].ndim == 4 else subj["magnitude"][..., None]
    ph = subj["phase"] if subj["phase"].ndim == 4 else subj["phase"][..., None]
    info = {}
    t_all = time.perf_counter()
    with fft.counting_ffts() as n_all:
        brain = make_mask(mask_kind, subj)
        trusted = refine_with_phase(brain, ph[..., 0], vox, 0.5)
        radius = float(bg[5:]) if bg.startswith("sharp") else 5.0
        radii = None
        if bg.startswith("vsharp"):
            rmin = float(bg[6:]) if len(bg) > 6 else 2.0
            radii = tuple(sorted(set(VSHARP_RADII) | {rmin}, reverse=True))
            radii = tuple(r for r in radii if r >= rmin)
        margin_mm = max(10.0, (max(radii) if radii else radius) + 2 * max(vox))
        box = crop_box(brain, [int(np.ceil(margin_mm / d)) for d in vox])
        bbrain, bmask = brain[box], trusted[box]
        bmag = mag[box]
        mag_rss = np.sqrt(np.sum(bmag**2, axis=3)).astype(np.float32)
        unwrapped = laplacian_unwrap(ph[box], vox) * bmask[..., None]
        total = fit_field(unwrapped, bmag, te, subj["field_strength"]) * bmask
        noise = field_noise_std(bmag, te)
        t0 = time.perf_counter()
        with fft.counting_ffts() as n_bg:
            if bg.startswith("sharp"):
                local, eroded = sharp(total, bmask, vox, radius, 0.05)
            elif radii:
                local, eroded = vsharp(total, bmask, vox, radii, 0.05)
            elif bg == "pdf":
                local, eroded = pdf(total, bmask, vox, b0, 1.0 / noise)
            else:
                raise ValueError(f"unknown background {bg!r}")
        info["t_bg"], info["fft_bg"] = time.perf_counter() - t0, n_bg()
        delta_te = float(te[1] - te[0]) if te.size > 1 else float(te[0])
        common = dict(field_strength_t=subj["field_strength"], delta_te_s=delta_te, noise_std=noise)
        st = {}
        everywhere = np.ones(bbrain.shape, bool)
        t0 = time.perf_counter()
        with fft.counting_ffts() as n_inv:
            if inv == "medi_smv":
                if not bg.startswith("sharp"):
                    raise ValueError("medi_smv needs sharpR")
                region = erode_by_sphere(bbrain, vox, radius) | eroded
                chi = medi(total, mag_rss, bmask, vox, b0, smv_radius_mm=radius, output_mask=everywhere,
                           stats=st, **common)
            elif inv.startswith("medi_edge"):
                if not bg.startswith("sharp"):
                    raise ValueError("medi_edge needs sharpR")
                edge = tuple(float(r) for r in inv[len("medi_edge"):].split("_") if r) or (2.0, 1.0)
                region = bbrain
                chi = medi(total, mag_rss, bmask, vox, b0, smv_radius_mm=radius, output_mask=everywhere,
                           edge_radii_mm=edge, stats=st, **common)
            elif inv in ("medi", "medifill"):
                region = bbrain if inv == "medifill" else eroded
                chi = medi(local, mag_rss, eroded, vox, b0, output_mask=everywhere, stats=st, **common)
            elif inv == "tkd":
                region = eroded
                chi = tkd(local, eroded, vox, b0, 0.19)
            else:
                raise ValueError(f"unknown inversion {inv!r}")
        info["t_inv"], info["fft_inv"] = time.perf_counter() - t0, n_inv()
        info["cg"] = st.get("cg_iterations")
        info["gn"] = st.get("outer_iterations")
    info["t_all"], info["fft_all"] = time.perf_counter() - t_all, n_all()
    info["work_shape"] = fft.next_fast_shape(bbrain.shape)
    out = np.zeros(brain.shape, np.float32)
    out[box] = chi * region
    info["chi_everywhere"] = np.zeros(brain.shape, np.float32)
    info["chi_everywhere"][box] = chi
    info["region"] = np.zeros(brain.shape, bool)
    info["region"][box] = region
    return out, info


def score(chi, subj, idx):
    from qsm_ci.qsm_eval import score_arrays

    truth = subj["chi_ppm"].astype(np.float64)
    tm = subj["brain_mask"].astype(bool)
    vox = subj["voxel_size"]
    metrics, _ = score_arrays(chi.astype(np.float64), truth, tm.astype(np.uint8))
    ev = erode_by_sphere(tm, vox, 5.0)
    e = chi[ev] - chi[ev].mean()
    t = truth[ev] - truth[ev].mean()
    out = dict(coverage=metrics["coverage"], nrmse=metrics["nrmse"],
               nrmse_int=100 * float(np.linalg.norm(e - t) / np.linalg.norm(t)))
    rim = tm & ~ev
    c = np.where(tm, chi, 0.0)
    er = c[rim] - c[tm].mean()
    tr = truth[rim] - truth[tm].mean()
    out["nrmse_rim"] = 100 * float(np.linalg.norm(er - tr) / np.linalg.norm(tr))
    # the cortex without the venous sinuses (truth > 0.2 ppm, grown by 1 mm), which carry most
    # of the rim's variance in this simulator
    veins = binary_dilate_mm(truth > 0.2, 1.0, vox)
    rt = rim & ~veins
    er = c[rt] - c[tm & ~veins].mean()
    tr = truth[rt] - truth[tm & ~veins].mean()
    out["nrmse_rim_tissue"] = 100 * float(np.linalg.norm(er - tr) / np.linalg.norm(tr))
    me, _ = score_arrays(np.where(veins, 0.0, chi).astype(np.float64), np.where(veins, 0.0, truth),
                         (tm & ~veins).astype(np.uint8))
    out["nrmse_noveins"] = me["nrmse"]
    # motor cortex: coverage of the precentral-gyrus labels (native grid) and the error of its
    # mean over the covered voxels, both maps demeaned over the true brain mask (ppb)
    pre = np.isin(subj["labels"], idx["precentral_gyrus"]) & tm
    cov = pre & (chi != 0)
    out["precentral_coverage"] = float(cov.sum() / max(pre.sum(), 1))
    out["precentral_bias_ppb"] = 1e3 * float((chi[cov].mean() - c[tm].mean())
                                             - (truth[cov].mean() - truth[tm].mean())) if cov.any() else float("nan")
    for name, ids in idx.items():
        if name not in NUCLEI:
            continue
        sel = np.isin(subj["labels"], ids) & ev
        if sel.any():
            out[name] = float((chi[sel].mean() - chi[ev].mean()) / (truth[sel].mean() - truth[ev].mean()))
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--snr", type=float, nargs="+", default=[35.0])
    p.add_argument("--seed", type=int, nargs="+", default=[1])
    p.add_argument("--chains", nargs="+", default=["magnitude+sharp5+medi_smv", "truth+vsharp1+medifill"])
    p.add_argument("--cache-dir", default=None, help="cache simulated subjects here (.npz)")
    p.add_argument("--save-dir", default=None, help="save each chain's chi (everywhere) and region")
    p.add_argument("--workers", type=int, default=int(os.environ.get("QSM_BIDS_FFT_WORKERS", 2)))
    args = p.parse_args(argv)
    fft.set_workers(args.workers)
    idx = label_indices()
    short = {"caudate": "CN", "putamen": "Put", "globus_pallidus": "GP", "red_nucleus": "RN",
             "substantia_nigra_dorsal": "SNd", "substantia_nigra_ventral": "SNv", "dentate_nucleus": "DN"}
    print(f"FFT workers {fft.get_workers()}; machine shared with other jobs (rely on the ratios)")
    print("| seed | SNR | chain | coverage | NRMSE (scorer) | NRMSE interior | NRMSE rim | rim tissue | "
          "scorer w/o veins | precentral coverage | precentral bias ppb | "
          + " | ".join(short[n] for n in NUCLEI) + " | GN/CG | FFTs | time s | t/(FFTs x 1 FFT) |")
    print("|---" * (14 + len(NUCLEI)) + "|")
    for seed in args.seed:
        for snr in args.snr:
            subj = load_subject(seed, snr, args.cache_dir)
            for chain in args.chains:
                chi, info = run_chain(chain, subj)
                if args.save_dir:
                    os.makedirs(args.save_dir, exist_ok=True)
                    np.savez_compressed(os.path.join(args.save_dir, f"sub{seed}_snr{snr:g}_{chain}.npz"),
                                        chi_everywhere=info["chi_everywhere"], region=info["region"])
                s = score(chi, subj, idx)
                t_fft = fft_pair_time(info["work_shape"]) / 2
                ratio = info["t_all"] / max(info["fft_all"] * t_fft, 1e-9)
                print(f"| {seed} | {snr:g} | {chain} | {s['coverage']:.3f} | {s['nrmse']:.1f} | "
                      f"{s['nrmse_int']:.1f} | {s['nrmse_rim']:.1f} | {s['nrmse_rim_tissue']:.1f} | "
                      f"{s['nrmse_noveins']:.1f} | {s['precentral_coverage']:.3f} | {s['precentral_bias_ppb']:+.1f} | "
                      + " | ".join(f"{100 * s.get(n, float('nan')):.0f}" for n in NUCLEI)
                      + f" | {info['gn']}/{info['cg']} | {info['fft_all']} | {info['t_all']:.1f} | "
                      f"{ratio:.2f} (1 FFT {t_fft * 1e3:.1f} ms at {info['work_shape']}) |", flush=True)


if __name__ == "__main__":
    sys.exit(main())
