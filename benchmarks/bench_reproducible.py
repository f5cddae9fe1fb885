"""Run-to-run spread of the participant level: the same inputs and seed, twice, at 1 and at N threads.

Issue 11 (defect 5): with the same ``--seed`` and ``--n-cpus 1`` every participant output must be
bit-identical (``tests/test_reproducible.py`` asserts it); with more threads ITK's multi-threaded
metric sums change the order of floating-point additions, so registrations differ slightly. This
prints, for each thread count, the largest difference between two runs of one simulated subject:
the GRE -> T1w rigid (max |parameter| difference), the template-space Chimap (max |d chi| in ppm,
and the 99th percentile inside the brain), and the region medians (max |d median| in ppm, voxel counts).

    .venv/bin/python benchmarks/bench_reproducible.py --threads 1 2

(about 1-2 min per run on the 3 mm subject; two runs per thread count)
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

BIN = Path(sys.executable).parent


def run(bids: Path, out: Path, threads: int) -> None:
    proc = subprocess.run([str(BIN / "qsm-bids"), str(bids), str(out), "participant", "--registration", "fast",
                           "--n-cpus", str(threads), "--skip-bids-validation", "--participant-label", "01",
                           "-w", str(out.parent / f"{out.name}-work")], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"participant run into {out} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")


def one(out: Path, pattern: str) -> Path:
    found = sorted(out.rglob(pattern))
    if len(found) != 1:
        raise SystemExit(f"{out}: expected one {pattern}, found {[p.name for p in found]}")
    return found[0]


def compare(a: Path, b: Path) -> dict:
    from scipy.io import loadmat

    def params(p):
        m = loadmat(str(p))
        return np.concatenate([np.ravel(v) for k, v in sorted(m.items()) if not k.startswith("__")])

    rigid = float(np.abs(params(one(a, "*from-GRE*_xfm.mat")) - params(one(b, "*from-GRE*_xfm.mat"))).max())
    chi_a = nib.load(str(one(a, "*space-MNI*_Chimap.nii.gz"))).get_fdata()
    chi_b = nib.load(str(one(b, "*space-MNI*_Chimap.nii.gz"))).get_fdata()
    inside = (chi_a != 0) | (chi_b != 0)
    diff = np.abs(chi_a - chi_b)[inside]
    ra = pd.read_csv(one(a, "*stat-median_Chimap.tsv"), sep="\t")
    rb = pd.read_csv(one(b, "*stat-median_Chimap.tsv"), sep="\t")
    value = [c for c in ra.columns if c.startswith("median")][0]
    count = [c for c in ra.columns if "voxel" in c or c.startswith("n_")]
    return {
        "rigid_max_abs": rigid,
        "chi_mni_max_ppm": float(diff.max()) if diff.size else 0.0,
        "chi_mni_p99_ppm": float(np.percentile(diff, 99)) if diff.size else 0.0,
        "region_median_max_ppm": float(np.nanmax(np.abs(ra[value].to_numpy(float) - rb[value].to_numpy(float)))),
        "region_voxels_max": (int(np.nanmax(np.abs(ra[count[0]].to_numpy(float) - rb[count[0]].to_numpy(float))))
                              if count else None),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--seed", type=int, default=3, help="the simulated cohort's seed")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-repro-") as tmp:
        root = Path(tmp)
        subprocess.run([str(BIN / "qsm-bids-simulate"), str(root / "bids"), "--n-patients", "1", "--n-controls",
                        "1", "--matrix", "52", "60", "44", "--voxel-size", "3", "3", "3", "--seed",
                        str(args.seed), "--n-jobs", "1"], check=True, capture_output=True)
        for n in args.threads:
            a, b = root / f"t{n}a", root / f"t{n}b"
            run(root / "bids", a, n)
            run(root / "bids", b, n)
            figures = compare(a, b)
            print(f"--n-cpus {n}: " + ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}"
                                                for k, v in figures.items()), flush=True)


if __name__ == "__main__":
    main()
