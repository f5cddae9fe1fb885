"""ctypes loader of the max-only exact TFCE kernel (``_tfce_max.c``).

The permutation null distribution needs only each map's maximum TFCE, which
``_tfce_max.c`` computes exactly without building the component tree or a
per-voxel output. The shared library is looked up in this order:

1. ``$QSM_BIDS_TFCE_LIB`` (a path to a built library);
2. ``_tfce_max*.so`` beside this file (built at install/image time with
   ``python -m qsm_bids.group._tfce_kernel``);
3. the package cache (``$QSM_BIDS_CACHE``, else ``$XDG_CACHE_HOME/qsm-bids``,
   else ``$TMPDIR/qsm-bids-cache``), compiled there with the system C compiler
   on first use.

When none works the ``tfce`` package (also exact) is used instead; the answer is
the same, only slower.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

_SOURCE = Path(__file__).with_name("_tfce_max.c")
_LIB = None
_TRIED = False


def _source_tag() -> str:
    return hashlib.sha256(_SOURCE.read_bytes()).hexdigest()[:12]


def build(dest: Path) -> Path:
    """Compile ``_tfce_max.c`` into the shared library ``dest`` (atomic rename)."""
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise OSError("no C compiler (cc/gcc) found")
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tfce_max.", suffix=".so", dir=dest.parent)
    os.close(fd)
    try:
        subprocess.run([cc, "-O3", "-shared", "-fPIC", "-o", tmp, str(_SOURCE), "-lm"],
                       check=True, capture_output=True)
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return dest


def _load(path: Path):
    lib = ctypes.CDLL(str(path))
    fn = lib.tfce_max_grid
    fn.restype = ctypes.c_int
    fn.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_void_p,
                   ctypes.c_void_p, ctypes.c_int,
                   ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                   ctypes.c_double, ctypes.c_double, ctypes.c_void_p, ctypes.c_void_p]
    return lib


def _candidates():
    env = os.environ.get("QSM_BIDS_TFCE_LIB")
    if env:
        yield Path(env), False
    here = _SOURCE.parent
    built = sorted(here.glob("_tfce_max_*.so"))
    if not _SOURCE.exists():  # an installed build without the source: use what was built
        for path in built:
            yield path, False
        return
    tag = _source_tag()
    yield here / f"_tfce_max_{tag}.so", False
    yield _cache_dir() / f"_tfce_max_{tag}.so", True


def _cache_dir() -> Path:
    """The package cache (:func:`qsm_bids.atlas.cache_dir`)."""
    from ..atlas import cache_dir

    return cache_dir()


def get_lib():
    """The loaded library, or None when it cannot be found or built."""
    global _LIB, _TRIED
    if _TRIED:
        return _LIB
    _TRIED = True
    if os.environ.get("QSM_BIDS_TFCE_KERNEL", "").lower() in ("0", "off", "package"):
        return None
    try:
        candidates = list(_candidates())
    except OSError as exc:  # the C source is not installed
        logger.debug("TFCE max kernel source unavailable: %s", exc)
        candidates = []
    for path, may_build in candidates:
        try:
            if not path.exists() and may_build:
                build(path)
            if path.exists():
                _LIB = _load(path)
                logger.debug("TFCE max kernel loaded from %s", path)
                return _LIB
        except (OSError, subprocess.CalledProcessError) as exc:
            logger.debug("TFCE max kernel at %s unusable: %s", path, exc)
    logger.info("compiled TFCE max kernel unavailable; using the tfce package (exact, slower)")
    return None


def available() -> bool:
    return get_lib() is not None


def tfce_max(stats: np.ndarray, neighbourhood, E: float, H: float):
    """Max TFCE of each column of ``stats`` (n_voxels, B) and of its negation.

    ``neighbourhood`` is a :class:`qsm_bids.group.permutation.Neighbourhood`
    (mask voxels on a padded grid, and the connectivity).
    """
    lib = get_lib()
    if lib is None:
        raise RuntimeError("TFCE max kernel not available")
    stats = np.asfortranarray(stats, dtype=np.float32)
    gidx = np.ascontiguousarray(neighbourhood.grid_index, dtype=np.int32)
    n, b = stats.shape
    if gidx.size != n:
        raise ValueError(f"the neighbourhood has {gidx.size} voxels, the maps {n}")
    nx, ny, nz = (int(x) for x in neighbourhood.grid_shape)
    max_pos = np.zeros(b)
    max_neg = np.zeros(b)
    runs = np.ascontiguousarray(neighbourhood.runs, dtype=np.int32)
    rc = lib.tfce_max_grid(stats.ctypes.data, n, b, gidx.ctypes.data, runs.ctypes.data,
                           runs.shape[0], nx, ny, nz,
                           int(neighbourhood.connectivity), float(E), float(H),
                           max_pos.ctypes.data, max_neg.ctypes.data)
    if rc == -1:
        raise MemoryError("TFCE max kernel could not allocate its workspace")
    if rc != 0:
        raise ValueError(f"TFCE max kernel refused connectivity {neighbourhood.connectivity}")
    return max_pos, max_neg


if __name__ == "__main__":  # build beside the package: python -m qsm_bids.group._tfce_kernel
    out = build(_SOURCE.parent / f"_tfce_max_{_source_tag()}.so")
    print(out)
    sys.exit(0)
