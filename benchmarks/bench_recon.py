"""Benchmark and accuracy check of participant steps 1-5 at the paper's protocol.

Speed (default): one simulated subject at 256x224x80, 1x1x2 mm, single echo
TE 20 ms (qsm_bids.simulate.simulate_subject), run through
qsm_bids.recon.pipeline.reconstruct; prints per-step wall time, FFT counts,
peak memory (tracemalloc peak of numpy allocations and the process's max RSS),
the time of one real FFT pair of the inversion's working size measured in
the same run, and MEDI's time against (its FFT count x one FFT's time).

Accuracy (``--accuracy``): NRMSE of chi against the truth inside the
simulator's brain mask eroded by the SHARP sphere (5 mm) after removing
each map's mean, and deep-grey nuclei means (demeaned) as a fraction of the
truth's, for MEDI and TKD (and any ``--methods``), at the given SNRs. The
simulator's SNR is printed beside every figure.

    .venv/bin/python benchmarks/bench_recon.py                 # speed, SNR 35: magnitude / T1w
                                                               # mask x plain / preconditioned CG
    .venv/bin/python benchmarks/bench_recon.py --accuracy --snr 35 300
    .venv/bin/python benchmarks/bench_recon.py --own-phantom   # no simulator
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import sys
import time
import tracemalloc

import numpy as np

from qsm_bids.config import ReconConfig
from qsm_bids.recon import fft, inversion
from qsm_bids.recon.background import erode_by_sphere
from qsm_bids.recon.pipeline import reconstruct

NUCLEI = ["caudate", "putamen", "globus_pallidus", "red_nucleus", "substantia_nigra_dorsal",
          "substantia_nigra_ventral", "dentate_nucleus", "thalamus"]


def load_subject(snr, seed, own_phantom=False, echo_times=(0.020,)):
    """The paper-protocol subject as a dict of arrays (simulator, or the recon phantom)."""
    if own_phantom:
        from qsm_bids.simulate.head_phantom import head_phantom

        ph = head_phantom((256, 224, 80), (1.0, 1.0, 2.0), echo_times_s=echo_times, snr=snr,
                          oblique_deg=(12.0, 4.0), seed=seed)
        labels = np.zeros(ph.brain.shape, np.int16)
        table = []
        for i, (name, lab) in enumerate(ph.labels.items(), start=1):
            labels[lab] = i
            table.append((i, name.rsplit("_", 1)[0].replace("dentate", "dentate_nucleus")
                          .replace("substantia_nigra", "substantia_nigra_dorsal")))
        return dict(magnitude=ph.magnitude, phase=ph.phase, voxel_size=ph.voxel_size,
                    echo_times=ph.echo_times_s, field_strength=ph.field_strength_t,
                    b0_dir=ph.b0_dir, chi_ppm=ph.chi_ppm, brain_mask=ph.brain, labels=labels,
                    label_index={n: [i for i, m in table if m == n] for _, n in table},
                    source="qsm_bids.simulate.head_phantom.head_phantom")
    from qsm_bids.simulate.subject import (
        PAPER_MATRIX,
        PAPER_VOXEL_SIZE,
        simulate_subject,
    )

    s = simulate_subject(seed=seed, snr=snr, voxel_size=PAPER_VOXEL_SIZE, matrix=PAPER_MATRIX,
                         echo_times=echo_times, with_t1w=False)
    lt = s["label_table"]
    s["label_index"] = {n: lt.loc[lt["region"] == n, "index"].tolist() for n in NUCLEI}
    s["source"] = "qsm_bids.simulate.simulate_subject"
    return s


def fft_pair_time(shape, repeats=5):
    """Seconds of one rfftn + irfftn pair (float32) at ``shape``, median of ``repeats``."""
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    times = []
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        fft.irfftn(fft.rfftn(x), shape)
        times.append(time.perf_counter() - t0)
    return float(np.median(times[1:]))


def scores(result, subj):
    ev = erode_by_sphere(subj["brain_mask"], subj["voxel_size"], 5.0)
    chi, truth = result.chi_ppm, subj["chi_ppm"]
    e = chi[ev] - chi[ev].mean()
    t = truth[ev] - truth[ev].mean()
    nrmse = float(np.linalg.norm(e - t) / np.linalg.norm(t))
    nuclei = {}
    for name, idx in subj["label_index"].items():
        sel = np.isin(subj["labels"], idx) & ev
        if sel.sum() == 0:
            continue
        nuclei[name] = float((chi[sel].mean() - chi[ev].mean()) / (truth[sel].mean() - truth[ev].mean()))
    return nrmse, nuclei


def run_once(subj, **params):
    return reconstruct(subj["magnitude"], subj["phase"], subj["echo_times"], subj["voxel_size"],
                       subj["b0_dir"], subj["field_strength"], ReconConfig(**params))


@contextlib.contextmanager
def _elementwise(mode):
    """``threads``: MEDI's element-wise work on slabs in the FFT's threads (the package's behaviour);
    ``serial``: the same code in the caller's thread alone (what it did before), for a side-by-side ratio."""
    if mode == "threads":
        yield
        return
    saved = inversion.in_slabs
    inversion.in_slabs = lambda fn, n0, workers=None: saved(fn, n0, workers=1)
    try:
        yield
    finally:
        inversion.in_slabs = saved


def speed(args):
    subj = load_subject(args.snr[0], args.seed, args.own_phantom)
    print(f"input: {subj['source']}, matrix {subj['magnitude'].shape}, voxel {subj['voxel_size']} mm, "
          f"TE {subj['echo_times']} s, SNR {args.snr[0]}, FFT workers {fft.get_workers()}")
    rows = []
    runs = [(m, p_, e, q) for m in args.masks for p_ in args.preconditioners for e in args.elementwise
            for q in args.phase_quality]
    for mask, pre, ew, quality in runs:
        with _elementwise(ew):
            t1w = subj["brain_mask"] if mask == "t1w" else None
            tracemalloc.start()
            t0 = time.perf_counter()
            res = reconstruct(subj["magnitude"], subj["phase"], subj["echo_times"], subj["voxel_size"],
                              subj["b0_dir"], subj["field_strength"],
                              ReconConfig(inversion="medi", medi_cg_preconditioner=pre,
                                          mask_phase_quality_single_echo=quality), t1w_mask=t1w)
            wall = time.perf_counter() - t0
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            box = res.parameters["crop_box"]
            work = fft.next_fast_shape([b - a for a, b in box])
            t_pair = fft_pair_time(work)  # measured beside each run: the ratio survives a loaded machine
            print(f"\n== mask {mask}, CG preconditioner {pre}, element-wise work {ew}, single-echo phase quality "
                  f"{quality:g} ==")
            print("step               time_s   n_fft")
            for k, v in res.timings_s.items():
                print(f"{k:<18} {v:7.2f} {res.fft_counts.get(k, ''):>7}")
            n_inv = res.fft_counts["inversion"]
            ideal = n_inv / 2 * t_pair
            nrmse, nuclei = scores(res, subj)
            print(f"steps 1-5 wall time {wall:.1f} s; peak numpy memory {peak / 1024**3:.2f} GiB; inversion grid "
                  f"{tuple(work)}, one rfftn+irfftn pair {t_pair * 1e3:.1f} ms")
            print(f"MEDI: {res.parameters['medi_outer_iterations']} Gauss-Newton, "
                  f"{res.parameters['medi_cg_iterations']} CG iterations, {n_inv} FFTs; "
                  f"time {res.timings_s['inversion']:.1f} s = {res.timings_s['inversion'] / ideal:.2f} x "
                  f"(FFT count x one FFT time = {ideal:.1f} s)")
            print(f"accuracy (SNR {args.snr[0]}): interior NRMSE {nrmse * 100:.1f} %; nuclei "
                  + ", ".join(f"{k} {v * 100:.0f} %" for k, v in nuclei.items()), flush=True)
            rows.append((f"{mask} | {pre} | {ew} | {quality:g}", wall, res.timings_s["inversion"], res.parameters["medi_cg_iterations"],
                         res.fft_counts["total"], res.timings_s["inversion"] / ideal, t_pair, nrmse))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    print(f"\nprocess max RSS (includes the simulator): {rss:.2f} GiB (goal <= 6 GB)")
    print("| mask | CG preconditioner | element-wise | single-echo phase quality | steps 1-5 s | MEDI s "
          "| CG iterations | FFTs | MEDI / (FFTs x one FFT) | one FFT pair ms | interior NRMSE |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for label, wall, t_inv, n_cg, n_fft, ratio, t_pair, nrmse in rows:
        print(f"| {label} | {wall:.1f} | {t_inv:.1f} | {n_cg} | {n_fft} | {ratio:.2f} | {t_pair * 1e3:.1f} "
              f"| {nrmse * 100:.1f} % |")


def accuracy(args):
    methods = args.methods
    print("| SNR | method | NRMSE % | " + " | ".join(NUCLEI) + " |")
    print("|---|---|---|" + "---|" * len(NUCLEI))
    for snr in args.snr:
        subj = load_subject(snr, args.seed, args.own_phantom)
        for method in methods:
            name, _, opt = method.partition(":")
            params = dict(inversion=name)
            for kv in filter(None, opt.split(",")):
                k, v = kv.split("=")
                params[k] = type(v)(v) if k not in ("medi_merit", "medi_smv") else v == "1"
                if k in ("medi_lambda", "mask_phase_quality", "mask_phase_quality_single_echo", "sharp_threshold",
                         "tkd_threshold"):
                    params[k] = float(v)
                if k == "background":
                    params[k] = v
            t0 = time.perf_counter()
            res = run_once(subj, **params)
            nrmse, nuclei = scores(res, subj)
            print(f"| {snr:g} | {method} | {nrmse * 100:.1f} | "
                  + " | ".join(f"{nuclei.get(n, float('nan')) * 100:.0f}" for n in NUCLEI)
                  + f" |   ({time.perf_counter() - t0:.0f} s)", flush=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--accuracy", action="store_true")
    p.add_argument("--snr", type=float, nargs="+", default=[35.0])
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--methods", nargs="+", default=["medi", "tkd"],
                   help="inversion[:key=value,...], e.g. medi:medi_merit=1 tkd")
    p.add_argument("--own-phantom", action="store_true",
                   help="use qsm_bids.simulate.head_phantom instead of the cohort simulator")
    p.add_argument("--masks", nargs="+", choices=("magnitude", "t1w"), default=["magnitude", "t1w"],
                   help="speed: the brain mask from the magnitude (no T1w) and/or the simulator's brain mask "
                        "given as the T1w mask (a perfect T1w mask: the default chain then adds its rim shells)")
    p.add_argument("--preconditioners", nargs="+", choices=("none", "circulant"), default=["none", "circulant"],
                   help="speed: recon.medi_cg_preconditioner values run side by side")
    p.add_argument("--elementwise", nargs="+", choices=("threads", "serial"), default=["threads"],
                   help="speed: MEDI's element-wise work in the FFT's threads (the package) or serial (before), "
                        "side by side")
    p.add_argument("--phase-quality", type=float, nargs="+",
                   default=[ReconConfig().mask_phase_quality_single_echo],
                   help="speed: recon.mask_phase_quality_single_echo values run side by side")
    p.add_argument("--workers", type=int, default=int(os.environ.get("QSM_BIDS_FFT_WORKERS", 2)))
    args = p.parse_args(argv)
    fft.set_workers(args.workers)
    (accuracy if args.accuracy else speed)(args)


if __name__ == "__main__":
    sys.exit(main())
