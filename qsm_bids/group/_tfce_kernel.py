"""ctypes loader of the max-only exact TFCE kernel (``_tfce_max.c``).

The permutation null distribution needs only each map's maximum TFCE, which
``_tfce_max.c`` computes exactly without building the component tree or a
per-voxel output. The shared library is looked up in this order:

1. ``$QSM_BIDS_TFCE_LIB`` (a path to a built library);
2. ``_tfce_max_<source hash>.so`` beside this file (built at install/image
   time with ``python -P -m qsm_bids.group._tfce_kernel``; without ``-P``, run
   from a source checkout, ``-m`` imports the checkout in the working folder
   and the library lands there instead of beside the installed package, which
   is how the image once shipped without it);
3. the package cache (``$QSM_BIDS_CACHE``, else ``$XDG_CACHE_HOME/qsm-bids``,
   else ``$TMPDIR/qsm-bids-cache``), compiled there with the system C compiler
   on first use.

``$QSM_BIDS_TFCE_KERNEL`` chooses: ``package`` (or ``0``/``off``) uses the
``tfce`` package (also exact, about 4x slower); ``compiled`` requires the
library and makes its absence an error (exit 1) -- the container image sets
this, because there the library is part of the image and a missing one means
a broken build, not a machine without a compiler. Unset: use the library when
it can be found or built, else warn and use the package.
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

from ..errors import QSMBidsError

logger = logging.getLogger(__name__)

_SOURCE = Path(__file__).with_name("_tfce_max.c")
_LIB = None
_LIB_PATH: Path | None = None
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
        # mkstemp made it 0600: every user of the install (an image run as any uid) must load it
        os.chmod(tmp, 0o755)
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


def _mode() -> str:
    mode = os.environ.get("QSM_BIDS_TFCE_KERNEL", "").strip().lower()
    if mode in ("0", "off", "package"):
        return "package"
    if mode in ("compiled", "required", "1", "on"):
        return "compiled"
    return "auto"


def get_lib():
    """The loaded library, or None when the ``tfce`` package is to be used.

    Raises :class:`~qsm_bids.errors.QSMBidsError` when ``$QSM_BIDS_TFCE_KERNEL``
    is ``compiled`` and no library can be loaded.
    """
    global _LIB, _LIB_PATH, _TRIED
    if _TRIED:
        return _LIB
    _TRIED = True
    mode = _mode()
    if mode == "package":
        logger.info("TFCE max kernel: the tfce package ($QSM_BIDS_TFCE_KERNEL=package)")
        return None
    reasons = []
    try:
        candidates = list(_candidates())
    except OSError as exc:  # the C source is not installed
        reasons.append(f"source {_SOURCE}: {exc}")
        candidates = []
    for path, may_build in candidates:
        try:
            if not path.exists() and may_build:
                build(path)
            if path.exists():
                _LIB = _load(path)
                _LIB_PATH = path
                logger.info("TFCE max kernel: compiled exact kernel %s", path)
                return _LIB
            reasons.append(f"{path}: not found")
        except (OSError, subprocess.CalledProcessError) as exc:
            reasons.append(f"{path}: {exc}")
    if mode == "compiled":
        raise QSMBidsError(
            "the compiled TFCE max kernel is required ($QSM_BIDS_TFCE_KERNEL=compiled) but none "
            f"loads ({'; '.join(reasons) or 'no candidate'}); rebuild the image, or set "
            "QSM_BIDS_TFCE_KERNEL=package to use the tfce package (exact, about 4x slower)")
    logger.warning("compiled TFCE max kernel unavailable (%s); using the tfce package (exact, about "
                   "4x slower): build it with python -P -m qsm_bids.group._tfce_kernel",
                   "; ".join(reasons) or "no candidate")
    return None


def kernel_used() -> str:
    """What computes the max TFCE, for logs and provenance: the library path or ``tfce package``."""
    get_lib()
    return str(_LIB_PATH) if _LIB is not None else "tfce package"


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


def _self_check() -> Path:
    """Load the library beside this file (no cache, no compiler) and compare it with the package."""
    global _LIB, _LIB_PATH, _TRIED
    here = _SOURCE.parent / f"_tfce_max_{_source_tag()}.so"
    if not here.exists():
        raise SystemExit(f"no compiled TFCE max kernel at {here}")
    _LIB, _LIB_PATH, _TRIED = _load(here), here, True
    from .permutation import tfce_values, voxel_adjacency

    rng = np.random.default_rng(0)
    mask = np.ones((9, 8, 7), bool)
    adj = voxel_adjacency(mask, 26)
    maps = rng.standard_normal((int(mask.sum()), 3)).astype(np.float32)
    mp, mn = tfce_max(maps, adj, 0.5, 2.0)
    ref = tfce_values(maps, adj)
    if not (np.allclose(mp, np.maximum(ref.max(axis=0), 0), rtol=1e-5)
            and np.allclose(mn, np.maximum(-ref.min(axis=0), 0), rtol=1e-5)):
        raise SystemExit(f"the compiled TFCE max kernel {here} disagrees with the tfce package")
    return here


if __name__ == "__main__":
    # python -P -m qsm_bids.group._tfce_kernel          build beside the installed package
    # python -P -m qsm_bids.group._tfce_kernel --check  load that library and compare with tfce
    if sys.argv[1:] == ["--check"]:
        print(_self_check())
    else:
        print(build(_SOURCE.parent / f"_tfce_max_{_source_tag()}.so"))
    sys.exit(0)
