"""The one FFT backend of qsm-bids.

Every FFT in the package (simulator, unwrapping, background removal, dipole
inversion, smoothing) goes through these functions, so the backend, the
number of threads and the FFT count reported by the benchmarks have a single
source. The backend is :mod:`scipy.fft` with ``workers`` threads; it keeps the
input precision (complex64 in, complex64 out), so float32 pipelines stay
float32 end to end.
"""

from __future__ import annotations

import contextlib
import os
import threading

import numpy as np
import scipy.fft as _sfft

__all__ = [
    "fftn",
    "ifftn",
    "rfftn",
    "irfftn",
    "fft_count",
    "counting_ffts",
    "set_workers",
    "get_workers",
    "next_fast_shape",
]

_state = threading.local()
_lock = threading.Lock()
_counter = {"n": 0}
_workers = {"n": max(1, int(os.environ.get("QSM_BIDS_FFT_WORKERS", os.cpu_count() or 1)))}


def set_workers(n: int) -> None:
    """Set the number of threads used by every FFT (``--n-cpus``)."""
    _workers["n"] = max(1, int(n))


def get_workers() -> int:
    """Number of threads used by every FFT."""
    return _workers["n"]


def _count() -> None:
    with _lock:
        _counter["n"] += 1


def fft_count() -> int:
    """Number of n-dimensional FFTs (forward or inverse) done so far."""
    return _counter["n"]


@contextlib.contextmanager
def counting_ffts():
    """Context manager yielding a callable that returns the FFTs done inside it.

    >>> with counting_ffts() as n:
    ...     _ = fftn(np.zeros((4, 4, 4)))
    >>> n()
    1
    """
    start = fft_count()
    end = {}

    def done() -> int:
        return end.get("n", fft_count()) - start

    try:
        yield done
    finally:
        end["n"] = fft_count()


def fftn(x: np.ndarray, axes=None) -> np.ndarray:
    """Forward n-D FFT over ``axes`` (all by default), multithreaded."""
    _count()
    return _sfft.fftn(x, axes=axes, workers=_workers["n"])


def ifftn(x: np.ndarray, axes=None) -> np.ndarray:
    """Inverse n-D FFT over ``axes`` (all by default), multithreaded."""
    _count()
    return _sfft.ifftn(x, axes=axes, workers=_workers["n"])


def rfftn(x: np.ndarray, axes=None) -> np.ndarray:
    """Forward n-D FFT of real data (half spectrum on the last axis)."""
    _count()
    return _sfft.rfftn(x, axes=axes, workers=_workers["n"])


def irfftn(x: np.ndarray, shape, axes=None) -> np.ndarray:
    """Inverse of :func:`rfftn`; ``shape`` is the real output shape."""
    _count()
    return _sfft.irfftn(x, s=shape, axes=axes, workers=_workers["n"])


def next_fast_shape(shape, min_pad=0) -> tuple[int, ...]:
    """Smallest shape >= ``shape + min_pad`` per axis that FFTs quickly."""
    if np.isscalar(min_pad):
        min_pad = [min_pad] * len(shape)
    return tuple(int(_sfft.next_fast_len(int(n) + int(p), real=False))
                 for n, p in zip(shape, min_pad))
