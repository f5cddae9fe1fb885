"""Speed of the voxelwise permutation inference, side by side with nilearn.

67 subjects (28 vs 39), the 2 mm MNI152 brain (about 235,000 voxels), age as
covariate, both contrasts, exact TFCE. Measures permutations per second (one
process and ``--n-jobs`` processes), extrapolates to 20,000 permutations, and
runs ``nilearn.mass_univariate.permuted_ols(..., tfce=True)`` on the same data
in the same run: same observed t, TFCE equal up to nilearn's 100-step
approximation (nilearn sums without the step dh: its values are compared after
multiplying by dh, at nilearn's 6-connectivity), and the per-permutation ratio.

    .venv/bin/python benchmarks/bench_permutation.py [--n-perm 64] [--nilearn-perm 3]
"""

from __future__ import annotations

import argparse
import os
import time
import warnings

import numpy as np


def make_data(n_a, n_b, seed):
    from nilearn.datasets import load_mni152_brain_mask
    from scipy.ndimage import gaussian_filter

    from qsm_bids.group.smoothing import smooth_within_mask, voxel_sizes

    mask_img = load_mni152_brain_mask(resolution=2)
    mask = np.asarray(mask_img.dataobj) > 0
    rng = np.random.default_rng(seed)
    n = n_a + n_b
    age = rng.uniform(45, 80, n)
    group = np.r_[np.ones(n_a), np.zeros(n_b)]
    effect = np.zeros(mask.shape, np.float32)
    effect[40:50, 60:70, 30:40] = 0.01          # a planted patient > control region
    vox = voxel_sizes(mask_img.affine)
    t0 = time.perf_counter()
    Y = np.empty((n, int(mask.sum())), np.float32)
    for i in range(n):
        chi = gaussian_filter(rng.standard_normal(mask.shape).astype(np.float32), 1.0) * 0.02
        chi += 0.0002 * age[i] + group[i] * effect
        Y[i] = smooth_within_mask(chi, mask, 3.0, vox)[mask]
    smooth_s = time.perf_counter() - t0
    return mask_img, mask, Y, group, age, smooth_s


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-a", type=int, default=28)
    ap.add_argument("--n-b", type=int, default=39)
    ap.add_argument("--n-perm", type=int, default=64, help="permutations timed for qsm-bids")
    ap.add_argument("--nilearn-perm", type=int, default=3, help="permutations timed for nilearn")
    ap.add_argument("--n-jobs", type=int, default=2)
    ap.add_argument("--connectivity", type=int, default=26)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--target", type=int, default=20000)
    args = ap.parse_args()

    import pandas as pd

    from qsm_bids.group import _tfce_kernel
    from qsm_bids.group.glm import design_matrix
    from qsm_bids.group.permutation import (
        FreedmanLane,
        _run_chunks,
        chunk_ranges,
        run_chunk,
        tfce_values,
        voxel_adjacency,
    )

    print(f"machine: {os.cpu_count()} CPUs visible; load average {os.getloadavg()[0]:.2f}")
    mask_img, mask, Y, group, age, smooth_s = make_data(args.n_a, args.n_b, args.seed)
    n, V = Y.shape
    print(f"data: {n} subjects ({args.n_a} vs {args.n_b}), {V} voxels (2 mm MNI152 brain), covariate age; "
          f"smoothing of {n} maps {smooth_s:.1f} s")
    frame = pd.DataFrame({"group": np.where(group > 0, "A", "B"), "age": age})
    des = design_matrix(frame, "group", ("A", "B"), ("age",))
    c = des.contrasts["AgtB"]

    t0 = time.perf_counter()
    model = FreedmanLane.from_data(Y, des.X, c)
    adj = voxel_adjacency(mask, args.connectivity)
    setup_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    t_obs = model.t(None)
    tfce_values(t_obs, adj)  # timed: the observed TFCE
    obs_s = time.perf_counter() - t0
    print(f"setup (reduced residuals, adjacency) {setup_s:.2f} s; observed t + TFCE map {obs_s:.2f} s")
    print(f"TFCE max kernel: {'compiled C' if _tfce_kernel.available() else 'tfce package fallback'}; "
          f"connectivity {args.connectivity}, E 0.5, H 2, both contrasts from one two-sided pass")

    # one process (BLAS may use both cores for the GEMM; TFCE is single-threaded)
    t0, c0 = time.perf_counter(), time.process_time()
    run_chunk(model, adj, 16, 16 + args.n_perm, seed=args.seed)
    one_s, one_cpu = time.perf_counter() - t0, time.process_time() - c0
    rate1 = args.n_perm / one_s
    perms = [np.random.default_rng(k).permutation(n) for k in range(16)]
    t0 = time.perf_counter()
    model.t_batch(perms)
    glm_ms = (time.perf_counter() - t0) / 16 * 1000
    print(f"qsm-bids, 1 process: {args.n_perm} permutations in {one_s:.2f} s wall ({one_cpu:.2f} s CPU) = "
          f"{rate1:.2f}/s; {1000 / rate1:.1f} ms per permutation (GLM {glm_ms:.1f} ms of it, the rest TFCE)")

    # n_jobs processes, wall clock including process start-up
    params = dict(seed=args.seed, E=0.5, H=2.0, use_tfce=True)
    n_par = 2 * args.n_perm * args.n_jobs
    ranges = [(16 + s, 16 + e) for s, e in chunk_ranges(n_par, args.n_perm)]
    t0 = time.perf_counter()
    chunks = _run_chunks(model, adj, ranges, params, args.n_jobs)
    par_s = time.perf_counter() - t0
    rate_par = n_par / par_s
    est = args.target / rate_par
    est_cpu = args.target * (one_cpu / args.n_perm) / args.n_jobs
    print(f"qsm-bids, {args.n_jobs} processes: {n_par} permutations in {par_s:.2f} s = {rate_par:.2f}/s "
          f"(wall clock, process start-up included; chunks computed in "
          f"{sum(c.seconds for c in chunks):.1f} process-seconds)")
    print(f"extrapolated: {args.target} permutations in {est / 60:.1f} min wall at this load on {args.n_jobs} "
          f"processes (goal <= 15 min: {'met' if est <= 900 else 'NOT met'}); from CPU time with "
          f"{args.n_jobs} cores to ourselves: {est_cpu / 60:.1f} min")

    # nilearn on the same data
    from nilearn.maskers import NiftiMasker
    from nilearn.mass_univariate import permuted_ols

    masker = NiftiMasker(mask_img=mask_img).fit()
    kw = dict(tested_vars=group[:, None], target_vars=Y.astype(np.float64),
              confounding_vars=(age - age.mean())[:, None], model_intercept=True, two_sided_test=True,
              random_state=args.seed, n_jobs=1, masker=masker, tfce=True, output_type="dict", verbose=0)
    times, cpu = {}, {}
    out = None
    for n_perm in (1, 1 + args.nilearn_perm):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t0, c0 = time.perf_counter(), time.process_time()
            res = permuted_ols(n_perm=n_perm, **kw)
            times[n_perm], cpu[n_perm] = time.perf_counter() - t0, time.process_time() - c0
        out = out or res
    nl_cpu = (cpu[1 + args.nilearn_perm] - cpu[1]) / args.nilearn_perm
    nl_per_perm = (times[1 + args.nilearn_perm] - times[1]) / args.nilearn_perm
    print(f"nilearn permuted_ols(tfce=True): {times[1]:.1f} s with 1 permutation, "
          f"{times[1 + args.nilearn_perm]:.1f} s with {1 + args.nilearn_perm}: {nl_per_perm:.2f} s per permutation")

    # agreement: observed t, and TFCE at nilearn's connectivity (6) up to its step size
    t_nl = np.asarray(out["t"]).ravel()
    print(f"observed t: max |qsm-bids - nilearn| = {np.abs(t_nl - t_obs).max():.2e} "
          f"(max |t| {np.abs(t_obs).max():.2f})")
    adj6 = voxel_adjacency(mask, 6)
    tfce6 = tfce_values(t_obs, adj6)
    dh = np.abs(t_nl).max() / 100
    tfce_nl = np.asarray(out["tfce"]).ravel() * dh
    big = np.abs(tfce6) > 0.05 * np.abs(tfce6).max()
    rel = np.abs(tfce_nl[big] - tfce6[big]) / np.abs(tfce6[big])
    print(f"observed TFCE (6-connectivity): nilearn x dh vs exact: median relative difference "
          f"{np.median(rel):.2%}, max {rel.max():.2%} (voxels above 5% of the peak); peak "
          f"{tfce6.max():.1f} exact vs {tfce_nl.max():.1f} nilearn")
    ratio = nl_per_perm / (1 / rate1)
    ratio_cpu = nl_cpu / (one_cpu / args.n_perm)
    print(f"RATIO per permutation, one process each, same run: nilearn {nl_per_perm * 1000:.0f} ms / qsm-bids "
          f"{1000 / rate1:.0f} ms = {ratio:.0f}x faster wall clock (goal >= 100x: "
          f"{'met' if ratio >= 100 else 'NOT met'}); CPU time {nl_cpu * 1000:.0f} ms / "
          f"{one_cpu / args.n_perm * 1000:.0f} ms = {ratio_cpu:.0f}x")
    print(f"(qsm-bids at {args.connectivity}-connectivity does both contrasts per permutation; nilearn "
          f"uses 6-connectivity, 100 steps)")


if __name__ == "__main__":
    main()
