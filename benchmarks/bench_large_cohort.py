"""The voxelwise group level at cohort scale: 1,000 participants vs 67, side by side.

Synthetic participants' susceptibility maps in MNI space (2 mm MNI152 grid,
about 235,000 brain voxels): smooth Gaussian noise (0.02 ppm, 4 mm FWHM-ish),
an age slope, and a planted patient > control effect (+0.01 ppm in a 10 x 10 x 10
voxel block); half patients, half controls. Each size runs in its own process
through the group workflow's file-level voxelwise step
(:func:`qsm_bids.group.voxelwise.run_voxelwise` with no study template, i.e.
``--template mni``), one process for the permutations, and reports:

- the data matrix (subjects x voxels, float32) and the process's peak memory
  (peak RSS from the kernel, and the peak proportional set size sampled by the
  app's memory guard), with the ratio peak / data matrix (goal: at most 2);
- seconds per permutation, and the cost ratio 1,000 vs 67 against the subject
  ratio (goal: no worse than linear).

    .venv/bin/python benchmarks/bench_large_cohort.py --data-dir /tmp/bench-cohort \\
        [--n-large 1000] [--n-small 67] [--n-permutations 48]

The maps are written once to --data-dir (uncompressed NIfTI, about 4.4 MB each)
and reused by later runs.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def _mask_img():
    from nilearn.datasets import load_mni152_brain_mask

    return load_mni152_brain_mask(resolution=2)


def make_cohort(data_dir: Path, n: int, seed: int = 0) -> Path:
    """Write ``n`` maps (and one shared mask) plus ``design.tsv``; existing files are kept."""
    import nibabel as nib
    import pandas as pd
    from scipy.ndimage import gaussian_filter

    data_dir.mkdir(parents=True, exist_ok=True)
    mask_img = _mask_img()
    mask = np.asarray(mask_img.dataobj) > 0
    mask_path = data_dir / "mask.nii"
    if not mask_path.exists():
        nib.save(nib.Nifti1Image(mask.astype(np.uint8), mask_img.affine), mask_path)
    rng = np.random.default_rng(seed)
    age = np.round(rng.uniform(45, 80, n), 1)
    group = np.where(np.arange(n) % 2 == 0, "ALS", "control")
    design = pd.DataFrame({"participant_id": [f"{i:04d}" for i in range(n)], "group": group, "age": age})
    design.to_csv(data_dir / "design.tsv", sep="\t", index=False)
    effect = np.zeros(mask.shape, np.float32)
    effect[40:50, 60:70, 30:40] = 0.01
    t0 = time.perf_counter()
    made = 0
    for i in range(n):
        path = data_dir / f"sub-{i:04d}_space-MNI152NLin2009aSym_Chimap.nii"
        if path.exists():
            continue
        noise = gaussian_filter(np.random.default_rng((seed, i)).standard_normal(mask.shape).astype(np.float32), 1.0)
        chi = 0.02 * noise / 0.2 + 0.0004 * (age[i] - 60) + (effect if group[i] == "ALS" else 0)
        chi = np.where(mask, chi, 0).astype(np.float32)
        nib.save(nib.Nifti1Image(chi, mask_img.affine), path)
        made += 1
        if made % 100 == 0:
            print(f"  {made} maps written ({time.perf_counter() - t0:.0f} s)", flush=True)
    return data_dir


def run_one(data_dir: Path, n: int, n_permutations: int, mem_gb: float | None, out_dir: Path) -> dict:
    """One cohort size, in this process (called in a child process by :func:`main`)."""
    import pandas as pd

    from qsm_bids import resources
    from qsm_bids.config import GroupConfig
    from qsm_bids.group import voxelwise

    resources.apply_cpu_limit(1)
    design = pd.read_csv(data_dir / "design.tsv", sep="\t", dtype={"participant_id": str}).iloc[:n]
    chi = [data_dir / f"sub-{i:04d}_space-MNI152NLin2009aSym_Chimap.nii" for i in range(n)]
    masks = [data_dir / "mask.nii"] * n
    out_dir.mkdir(parents=True, exist_ok=True)
    params = GroupConfig(template="mni", n_permutations=n_permutations, permutation_chunk_size=16)
    guard = resources.set_memory_guard(resources.MemoryGuard(mem_gb, interval_s=0.2, sample_always=True))
    t0 = time.perf_counter()
    with guard.watch(f"voxelwise group level, {n} participants"):
        out = voxelwise.run_voxelwise(chi, masks, design, params, out_dir=out_dir, seed=0, n_jobs=1,
                                      mem_gb=mem_gb, label_lookup=None, work_dir=out_dir / "work")
    wall = time.perf_counter() - t0
    n_vox = int(np.count_nonzero(np.asarray(_mask_img().dataobj)))
    timings = out.get("timings_s", {})
    return {"n_subjects": n, "n_voxels_mask": n_vox, "data_matrix_gb": n * n_vox * 4 / 1e9,
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9,
            "peak_pss_gb": guard.peak_bytes / 1e9, "wall_s": wall, "timings_s": timings,
            "s_per_permutation": timings.get("permutations", float("nan")) / n_permutations}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", type=Path, required=True)
    p.add_argument("--out-dir", type=Path, default=None, help="default: DATA_DIR/out")
    p.add_argument("--n-large", type=int, default=1000)
    p.add_argument("--n-small", type=int, default=67)
    p.add_argument("--n-permutations", type=int, default=48)
    p.add_argument("--mem-gb", type=float, default=None, help="--mem-gb of the runs (default: none)")
    p.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    out_dir = args.out_dir or args.data_dir / "out"
    if args.child is not None:
        res = run_one(args.data_dir, args.child, args.n_permutations, args.mem_gb, out_dir / f"n{args.child}")
        print("RESULT " + json.dumps(res), flush=True)
        return 0
    print(f"writing up to {args.n_large} maps to {args.data_dir}", flush=True)
    make_cohort(args.data_dir, max(args.n_large, args.n_small))
    rows = []
    for n in (args.n_small, args.n_large):
        cmd = [sys.executable, __file__, "--data-dir", str(args.data_dir), "--out-dir", str(out_dir),
               "--n-permutations", str(args.n_permutations), "--child", str(n)]
        if args.mem_gb:
            cmd += ["--mem-gb", str(args.mem_gb)]
        print(f"running {n} participants ...", flush=True)
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        if proc.returncode != 0:
            print(proc.stderr[-3000:], file=sys.stderr)
            return proc.returncode
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
        rows.append(json.loads(line[7:]))
    print()
    print("| participants | data matrix (GB) | peak RSS (GB) | peak PSS (GB) | peak RSS / matrix | "
          "s per permutation | wall (s) |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['n_subjects']} | {r['data_matrix_gb']:.3f} | {r['peak_rss_gb']:.2f} | {r['peak_pss_gb']:.2f} | "
              f"{r['peak_rss_gb'] / r['data_matrix_gb']:.2f} | {r['s_per_permutation']:.3f} | {r['wall_s']:.0f} |")
    small, large = rows
    cost = large["s_per_permutation"] / small["s_per_permutation"]
    subj = large["n_subjects"] / small["n_subjects"]
    print(f"\ncost per permutation x{cost:.1f} for x{subj:.1f} participants "
          f"({'no worse than' if cost <= subj else 'worse than'} linear); "
          f"{args.n_permutations} permutations each, one process")
    print(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
