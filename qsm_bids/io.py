"""Atomic file writers and the one place that names derivative files.

Every output is written under a temporary name in the destination folder and
renamed into place, so a crash or a kill never leaves a file that looks
finished. Participant runs of different subjects may share OUTPUT_DIR.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import os
import tempfile
from pathlib import Path

import numpy as np

__all__ = [
    "atomic_path",
    "provenance",
    "sidecar_of",
    "write_json",
    "write_sidecar",
    "write_text",
    "write_nifti",
    "write_tsv",
    "derivative_name",
    "derivative_path",
]


_PROVENANCE: contextvars.ContextVar = contextvars.ContextVar("qsm_bids_provenance", default=None)


@contextlib.contextmanager
def provenance(**fields):
    """Within this block, every image/TSV sidecar also records ``fields`` (e.g. GeneratedBy, Parameters).

    Keys the writer already set win; workflows open it once, so no writer has to repeat them.
    """
    token = _PROVENANCE.set(fields)
    try:
        yield
    finally:
        _PROVENANCE.reset(token)


def _stamped(sidecar: dict) -> dict:
    fields = _PROVENANCE.get()
    return {**fields, **sidecar} if fields else sidecar


@contextlib.contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path beside ``path``; rename it onto ``path`` on success.

    The temporary name keeps the final suffixes (``.nii.gz``) so writers that
    look at the extension behave. On error the temporary file is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes[-2:]) if path.name.endswith(".nii.gz") else path.suffix
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    # mkstemp makes 0600; outputs get the mode of any new file (0644 under umask 022)
    os.fchmod(fd, 0o666 & ~_umask())
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    """The process umask (read by setting it and putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def write_json(path, data: dict) -> Path:
    """Write ``data`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=_json_default, allow_nan=True) + "\n")
    return Path(path)


def write_text(path, text: str) -> Path:
    """Write text atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_nifti(path, data, affine, header=None, dtype=np.float32, sidecar: dict | None = None) -> Path:
    """Write an array as NIfTI atomically, with an optional JSON sidecar.

    The sidecar is written first, so an image that exists always has its sidecar.
    """
    import nibabel as nib

    path = Path(path)
    if sidecar is not None:
        write_sidecar(path, sidecar)
    arr = np.asarray(data)
    if dtype is not None:
        arr = arr.astype(dtype, copy=False)
    img = nib.Nifti1Image(arr, np.asarray(affine, dtype=float), header=header)
    img.set_data_dtype(arr.dtype)
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(img.affine, code=1)
    img.set_sform(img.affine, code=1)
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))
    return path


def write_tsv(path, frame, sidecar: dict | None = None) -> Path:
    """Write a pandas DataFrame as BIDS TSV ("n/a" for missing), atomically."""
    path = Path(path)
    if sidecar is not None:
        write_sidecar(path, sidecar)
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, sep="\t", index=False, na_rep="n/a", float_format="%.6g")
    return path


def write_sidecar(data_path, sidecar: dict) -> Path:
    """The JSON sidecar of a data file (image, table, transform), with the provenance of the block."""
    return write_json(sidecar_of(Path(data_path)), _stamped(sidecar))


def sidecar_of(path) -> Path:
    """The JSON sidecar path of a data file (``x.nii.gz`` -> ``x.json``)."""
    path = Path(path)
    name = path.name
    for ext in (".nii.gz", ".nii", ".tsv", ".h5", ".mat", ".html"):
        if name.endswith(ext):
            return path.with_name(name[: -len(ext)] + ".json")
    return path.with_suffix(".json")


# BIDS derivative entity order (the BIDS specification's entity table).
_ENTITY_ORDER = ("sub", "ses", "acq", "run", "echo", "part", "space", "res", "atlas",
                 "from", "to", "mode", "label", "desc", "stat", "contrast")


def derivative_name(entities: dict, suffix: str, extension: str) -> str:
    """BIDS file name from entities, in the specification's order.

    >>> derivative_name({"sub": "01", "desc": "brain"}, "mask", ".nii.gz")
    'sub-01_desc-brain_mask.nii.gz'
    """
    unknown = set(entities) - set(_ENTITY_ORDER)
    if unknown:
        raise ValueError(f"unknown BIDS entities {sorted(unknown)}")
    parts = [f"{k}-{entities[k]}" for k in _ENTITY_ORDER if entities.get(k) not in (None, "")]
    return "_".join(parts + [suffix]) + extension


def derivative_path(output_dir, entities: dict, suffix: str, extension: str,
                    datatype: str = "anat") -> Path:
    """``OUTPUT_DIR/sub-<l>/[ses-<s>/]<datatype>/<name>`` for a participant derivative."""
    folder = Path(output_dir) / f"sub-{entities['sub']}"
    if entities.get("ses"):
        folder = folder / f"ses-{entities['ses']}"
    return folder / datatype / derivative_name(entities, suffix, extension)
