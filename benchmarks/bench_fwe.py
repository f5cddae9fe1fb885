"""Family-wise error rate of the voxelwise inference on pure-noise studies.

Each null study: two groups, an age covariate (with a real age effect in the
data, which Freedman-Lane must absorb), smooth Gaussian noise inside a
spherical "brain", boundary-compensated smoothing (sigma 3 mm at 2 mm voxels),
Freedman-Lane permutations with exact TFCE (26-connectivity). A study is a
false positive for a contrast when any voxel has FWE p < alpha; both contrasts
count. Prints the rates for TFCE and for voxelwise t with a binomial 95%
interval; they should cover alpha (the exact level with N permutations is
floor(alpha N - 1e-9)/N for p < alpha, e.g. 0.049 for 1000).

    .venv/bin/python benchmarks/bench_fwe.py [--n-studies 1000] [--n-perm 1000]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd
from scipy import ndimage, stats


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-studies", type=int, default=1000)
    ap.add_argument("--n-perm", type=int, default=1000)
    ap.add_argument("--n-a", type=int, default=12)
    ap.add_argument("--n-b", type=int, default=15)
    ap.add_argument("--size", type=int, default=24, help="grid edge (voxels, 2 mm)")
    ap.add_argument("--alpha", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from qsm_bids.group.glm import design_matrix
    from qsm_bids.group.permutation import permutation_test, voxel_adjacency
    from qsm_bids.group.smoothing import smooth_within_mask

    shape = (args.size,) * 3
    grid = np.indices(shape) - (args.size - 1) / 2
    mask = (grid**2).sum(axis=0) <= (args.size / 2 - 1) ** 2
    adj = voxel_adjacency(mask, 26)
    n = args.n_a + args.n_b
    hits = {"tfce": 0, "t": 0}
    t0 = time.perf_counter()
    for s in range(args.n_studies):
        rng = np.random.default_rng([args.seed, s])
        frame = pd.DataFrame({"g": ["A"] * args.n_a + ["B"] * args.n_b, "age": rng.uniform(40, 80, n)})
        Y = np.empty((n, int(mask.sum())), np.float32)
        for i in range(n):
            chi = ndimage.gaussian_filter(rng.standard_normal(shape), 1.0) + 0.02 * frame.age[i]
            Y[i] = smooth_within_mask(chi, mask, 3.0, (2.0, 2.0, 2.0))[mask]
        des = design_matrix(frame, "g", ("A", "B"), ("age",))
        res = permutation_test(Y, des.X, des.contrasts["AgtB"], adj, n_permutations=args.n_perm,
                               chunk_size=args.n_perm, seed=s)
        hits["tfce"] += int(res["p_tfce"].min() < args.alpha) + int(res["p_tfce_neg"].min() < args.alpha)
        hits["t"] += int(res["p_t"].min() < args.alpha) + int(res["p_t_neg"].min() < args.alpha)
        if (s + 1) % max(args.n_studies // 10, 1) == 0:
            print(f"{s + 1}/{args.n_studies} studies, {time.perf_counter() - t0:.0f} s", flush=True)
    tests = 2 * args.n_studies
    exact = np.floor(args.alpha * args.n_perm - 1e-9) / args.n_perm
    print(f"{args.n_studies} null studies x 2 contrasts, {n} subjects, {int(mask.sum())} voxels, "
          f"{args.n_perm} permutations; nominal level {exact:.4f}")
    for name, count in hits.items():
        lo, hi = stats.binomtest(count, tests).proportion_ci(0.95)
        print(f"FWE rate ({name}): {count / tests:.4f}  95% CI [{lo:.4f}, {hi:.4f}]")


if __name__ == "__main__":
    main()
