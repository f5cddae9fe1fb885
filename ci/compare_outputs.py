"""Compare two qsm-bids output folders: every image and table must be identical.

    python ci/compare_outputs.py REFERENCE OTHER [--only GLOB ...] [--close GLOB ...]

Images (.nii, .nii.gz) are compared voxel for voxel (data, shape, affine), tables
(.tsv) cell for cell, ITK .mat transforms byte for byte and .h5 transforms by
content (every dataset and attribute; HDF5 stamps its object headers with write
times). Files matching a ``--close`` glob are held to a weaker test instead, for
runs that are not expected to be bitwise equal (ANTs registrations with more than
one thread): same shape and affine, and a correlation of at least 0.98 between the
two images' voxels, or between each numeric column of the two tables; their
transforms are not compared. Logs, HTML pages and JSON
sidecars are left out: they hold timings, host names and paths. Exits 1
(listing the differences) when a file differs or exists on one side only, or when
nothing was compared.
"""

from __future__ import annotations

import argparse
import fnmatch
import sys
from pathlib import Path

import numpy as np

_SKIP_DIRS = {"logs"}


def _files(root: Path, only) -> dict:
    out = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if not path.is_file() or _SKIP_DIRS & set(rel.parts):
            continue
        name = path.name
        if not (name.endswith((".nii", ".nii.gz", ".tsv", ".mat", ".h5"))):
            continue
        if only and not any(fnmatch.fnmatch(str(rel), g) for g in only):
            continue
        out[str(rel)] = path
    return out


def _same(a: Path, b: Path) -> str | None:
    name = a.name
    if name.endswith((".nii", ".nii.gz")):
        import nibabel as nib

        ia, ib = nib.load(a), nib.load(b)
        if ia.shape != ib.shape:
            return f"shape {ia.shape} vs {ib.shape}"
        if not np.array_equal(ia.affine, ib.affine):
            return "affine differs"
        da, db = np.asarray(ia.dataobj), np.asarray(ib.dataobj)
        if not np.array_equal(da, db, equal_nan=np.issubdtype(da.dtype, np.floating)):
            diff = np.abs(da.astype(np.float64) - db.astype(np.float64))
            return f"data differ in {int(np.count_nonzero(diff > 0))} voxel(s), max |diff| {np.nanmax(diff):.3g}"
        return None
    if name.endswith(".tsv"):
        import pandas as pd

        ta = pd.read_csv(a, sep="\t", keep_default_na=False)
        tb = pd.read_csv(b, sep="\t", keep_default_na=False)
        if not ta.equals(tb):
            return "table differs"
        return None
    if name.endswith(".h5"):
        from qsm_bids.verify import hdf5_content

        return None if hdf5_content(a) == hdf5_content(b) else "transform content differs"
    return None if a.read_bytes() == b.read_bytes() else "bytes differ"


def _close(a: Path, b: Path, r_min: float = 0.98) -> str | None:
    name = a.name
    if name.endswith((".mat", ".h5")):
        return None
    if name.endswith((".nii", ".nii.gz")):
        import nibabel as nib

        ia, ib = nib.load(a), nib.load(b)
        if ia.shape != ib.shape or not np.allclose(ia.affine, ib.affine):
            return f"grid {ia.shape} vs {ib.shape}"
        pairs = [(np.asarray(ia.dataobj, dtype=np.float64).ravel(), np.asarray(ib.dataobj, dtype=np.float64).ravel())]
    else:
        import pandas as pd

        ta, tb = (pd.read_csv(x, sep="\t") for x in (a, b))
        if list(ta.columns) != list(tb.columns) or len(ta) != len(tb):
            return "table shape or columns differ"
        pairs = [(ta[c].to_numpy(float), tb[c].to_numpy(float)) for c in ta.columns
                 if pd.api.types.is_numeric_dtype(ta[c]) and ta[c].notna().sum() > 2]
    for x, y in pairs:
        ok = np.isfinite(x) & np.isfinite(y)
        if np.array_equal(x[ok], y[ok]):
            continue
        r = np.corrcoef(x[ok], y[ok])[0, 1]
        if not r >= r_min:
            return f"correlation {r:.4f} < {r_min}"
    return None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("reference", type=Path)
    p.add_argument("other", type=Path)
    p.add_argument("--only", nargs="*", default=None, help="relative-path globs to compare (default: all)")
    p.add_argument("--close", nargs="*", default=(), help="relative-path globs held to the correlation test")
    p.add_argument("--close-warn", action="store_true",
                   help="report --close files that fail the correlation test without failing")
    args = p.parse_args(argv)
    ref, other = _files(args.reference, args.only), _files(args.other, args.only)
    problems = [f"only in {args.reference}: {k}" for k in sorted(set(ref) - set(other))]
    problems += [f"only in {args.other}: {k}" for k in sorted(set(other) - set(ref))]
    compared = close = 0
    warnings = []
    for key in sorted(set(ref) & set(other)):
        if any(fnmatch.fnmatch(key, g) for g in args.close):
            why = _close(ref[key], other[key])
            close += 1
            if why and args.close_warn:
                warnings.append(f"{key}: {why}")
                continue
        else:
            why = _same(ref[key], other[key])
            compared += 1
        if why:
            problems.append(f"{key}: {why}")
    for line in problems:
        print(f"compare_outputs: {line}", file=sys.stderr)
    for line in warnings:
        print(f"compare_outputs: warning (registration not reproducible): {line}", file=sys.stderr)
    if compared == 0:
        print("compare_outputs: nothing to compare", file=sys.stderr)
        return 1
    print(f"compare_outputs: {compared} file(s) required identical, {close} registration-dependent file(s) "
          f"required close, {len(problems)} difference(s), {len(warnings)} warning(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
