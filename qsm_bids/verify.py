"""Is a written output complete? One reader per file type, used before a step is recorded and before
a record is reused (a truncated transform or image must never look finished).

:func:`verify_output` reads the whole file (NIfTI voxels, every HDF5 dataset, the ITK ``.mat``, JSON,
TSV) and raises :class:`IncompleteOutputError` naming it; :func:`storage_error` turns an
out-of-space/I/O failure into exit 74 naming the folder that filled up.
"""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import numpy as np

from .errors import QSMBidsError, StorageError

__all__ = ["IncompleteOutputError", "verify_output", "hdf5_content", "low_space", "storage_error"]

#: Below this many free bytes a folder counts as full (ANTs/ITK writers fail silently near it).
LOW_SPACE_BYTES = 64 * 1024 * 1024


class IncompleteOutputError(QSMBidsError):
    """An output that a step wrote is missing, truncated or unreadable."""

    exit_code = 1


def _nifti(path: Path) -> None:
    import nibabel as nib

    img = nib.load(str(path))
    data = np.asanyarray(img.dataobj)  # decompresses every byte: a truncated gzip fails here
    if data.size == 0:
        raise ValueError("no voxels")


def _h5(path: Path) -> None:
    import h5py

    with h5py.File(str(path), "r") as fh:
        n = []

        def read(name, obj):
            if isinstance(obj, h5py.Dataset):
                obj[()]
                n.append(name)

        fh.visititems(read)
    if not n:
        raise ValueError("no datasets")


def hdf5_content(path) -> dict:
    """Every dataset and attribute of an HDF5 file, for comparing two files by content.

    Byte comparison does not work: HDF5 stamps its object headers with write times.
    """
    import h5py

    content = {}
    with h5py.File(str(path), "r") as fh:
        def read(name, obj):
            content[name + "@attrs"] = {k: np.asarray(v).tolist() for k, v in obj.attrs.items()}
            if isinstance(obj, h5py.Dataset):
                value = np.asarray(obj[()])
                content[name] = value.tolist() if value.dtype == object else value.tobytes()

        fh.visititems(read)
    return content


def _mat(path: Path) -> None:
    from scipy.io import loadmat

    content = loadmat(str(path))
    keys = [k for k in content if not k.startswith("__")]
    if not any("Transform" in k for k in keys) or "fixed" not in keys:
        raise ValueError(f"not an ITK transform (keys {keys})")


def _tsv(path: Path) -> None:
    import pandas as pd

    frame = pd.read_csv(path, sep="\t", keep_default_na=False)
    if frame.empty:
        raise ValueError("no rows")


def _html(path: Path) -> None:
    if b"</html>" not in path.read_bytes()[-4096:].lower():
        raise ValueError("no closing </html>")


_READERS = {".nii.gz": _nifti, ".nii": _nifti, ".h5": _h5, ".mat": _mat, ".tsv": _tsv, ".html": _html,
            ".json": lambda p: json.loads(p.read_text())}


def verify_output(path) -> None:
    """Read ``path`` completely; raise IncompleteOutputError (or StorageError when its disk is full)."""
    path = Path(path)
    reader = next((fn for ext, fn in _READERS.items() if path.name.endswith(ext)), None)
    try:
        if not path.is_file() or path.stat().st_size == 0:
            raise ValueError("missing or empty")
        if reader is not None:
            reader(path)
    except Exception as exc:  # noqa: BLE001 - every reader raises its own types on a damaged file
        full = low_space(path.parent)
        if full:
            raise full from None
        raise IncompleteOutputError(f"{path}: output is incomplete or unreadable ({type(exc).__name__}: "
                                    f"{exc}); it is not recorded as finished, rerun to make it again") from None


def low_space(folder, need: int = LOW_SPACE_BYTES) -> StorageError | None:
    """A StorageError naming ``folder`` when its file system has less than ``need`` bytes free."""
    folder = Path(folder)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return None
    if free < need:
        return StorageError(f"{folder}: no space left ({free / 2**20:.1f} MB free); free space there or "
                            "point TMPDIR/--work-dir/OUTPUT_DIR at a larger disk, then rerun")
    return None


_STORAGE_ERRNOS = {errno.ENOSPC: "no space left", errno.EDQUOT: "disk quota exceeded", errno.EIO: "I/O error",
                   errno.EROFS: "read-only file system"}


def storage_error(exc: BaseException, folder=None) -> StorageError | None:
    """StorageError (exit 74) for an out-of-space/I/O OSError, naming the folder; None for other errors."""
    if not isinstance(exc, OSError) or exc.errno not in _STORAGE_ERRNOS:
        return None
    where = Path(exc.filename).parent if getattr(exc, "filename", None) else folder
    return StorageError(f"{where}: {_STORAGE_ERRNOS[exc.errno]} while writing; free space there (or point "
                        "TMPDIR/--work-dir/OUTPUT_DIR elsewhere) and rerun")
