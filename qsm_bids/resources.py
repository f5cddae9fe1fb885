"""Obeying ``--n-cpus`` and ``--mem-gb``: thread limits and a memory guard.

Threads
-------
:func:`apply_cpu_limit` is the one place that turns ``--n-cpus`` into the
limits of every thread pool the app uses: ANTs/ITK
(``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS``, read when a registration starts),
BLAS and OpenMP (threadpoolctl on the libraries already loaded, the usual
environment variables for those loaded later and for child processes), the
FFT backend's workers, and the size of process pools
(:func:`pool_size`; each pool worker runs single-threaded, see
:func:`single_thread_worker`). Without ``--n-cpus`` the app uses the CPUs it
was given: ``SLURM_CPUS_PER_TASK`` inside a SLURM allocation, else the
process's CPU affinity.

Memory
------
:class:`MemoryGuard` holds ``--mem-gb``. A step that knows its large
allocations calls :meth:`MemoryGuard.require` first and stops with a
:class:`MemoryLimitError` naming the step, the estimate and the limit. While
the guard watches (:meth:`MemoryGuard.watch`), a thread samples the memory of
this process and its children (proportional set size, so pages shared by
forked workers count once); when it passes the limit the step is interrupted
with the same clear error, and if the step cannot be interrupted (inside a
long native call) the process exits with that message after a short grace,
well before the kernel's OOM killer, which acts only at the machine's or the
job's real limit.
"""

from __future__ import annotations

import _thread
import contextlib
import logging
import os
import sys
import threading
import time

from .errors import QSMBidsError

__all__ = [
    "MemoryLimitError",
    "MemoryGuard",
    "available_cpus",
    "apply_cpu_limit",
    "cpu_limits",
    "pool_size",
    "single_thread_worker",
    "process_memory_bytes",
    "THREAD_ENV_VARS",
    "set_memory_guard",
    "memory_guard",
]

logger = logging.getLogger(__name__)

# BLAS/OpenMP/numexpr/numba thread counts for libraries loaded after the call and for child processes
THREAD_ENV_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS",
                   "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS", "NUMBA_NUM_THREADS")
ITK_ENV_VAR = "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"

_GB = 1e9
_state: dict = {"n_cpus": None, "limiter": None}


class MemoryLimitError(QSMBidsError):
    """A step would need (or has reached) more memory than ``--mem-gb`` allows."""

    exit_code = 1


# --------------------------------------------------------------------------- CPUs


def available_cpus() -> int:
    """CPUs this process was given: the SLURM allocation, else the CPU affinity."""
    slurm = os.environ.get("SLURM_CPUS_PER_TASK", "")
    if slurm.isdigit() and int(slurm) > 0:
        return int(slurm)
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def apply_cpu_limit(n_cpus: int | None = None) -> int:
    """Limit every thread pool of the app to ``n_cpus`` threads (default: :func:`available_cpus`).

    Returns the number applied. Safe to call again (the last call wins).
    """
    n = int(n_cpus) if n_cpus else available_cpus()
    if n < 1:
        raise ValueError(f"n_cpus must be at least 1, got {n_cpus}")
    for var in THREAD_ENV_VARS:
        os.environ[var] = str(n)
    os.environ[ITK_ENV_VAR] = str(n)
    os.environ["QSM_BIDS_FFT_WORKERS"] = str(n)
    from .recon import fft

    fft.set_workers(n)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn/nilearn
        logger.debug("threadpoolctl missing: BLAS threads set through the environment only")
    else:
        # kept referenced: the limits stay on BLAS/OpenMP libraries already loaded
        _state["limiter"] = threadpool_limits(limits=n)
    _state["n_cpus"] = n
    return n


def cpu_limits() -> dict:
    """The thread limits in force (for logs, sidecars and tests)."""
    from .recon import fft

    out = {"n_cpus": _state["n_cpus"], "fft_workers": fft.get_workers(),
           "itk_threads": os.environ.get(ITK_ENV_VAR), "blas": []}
    try:
        from threadpoolctl import threadpool_info
    except ImportError:  # pragma: no cover
        return out
    out["blas"] = [{"api": i.get("user_api"), "library": i.get("internal_api"),
                    "num_threads": i.get("num_threads")} for i in threadpool_info()]
    return out


def pool_size(n_tasks: int, n_cpus: int | None = None) -> int:
    """Worker processes for ``n_tasks`` independent tasks: at most ``n_cpus``, at least 1."""
    n = int(n_cpus) if n_cpus else (_state["n_cpus"] or available_cpus())
    return max(1, min(n, int(n_tasks)))


def single_thread_worker() -> None:
    """Initializer of a pool worker: one BLAS/OpenMP/FFT/ITK thread (the pool supplies the parallelism)."""
    for var in THREAD_ENV_VARS:
        os.environ[var] = "1"
    os.environ[ITK_ENV_VAR] = "1"
    from .recon import fft

    fft.set_workers(1)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover
        return
    _state["limiter"] = threadpool_limits(limits=1)


# --------------------------------------------------------------------------- memory


def _pss_bytes(pid: int) -> int | None:
    """Proportional set size of one process (Linux), None when unreadable."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        with open(f"/proc/{pid}/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return None


def _children(pid: int) -> list:
    try:
        import psutil

        return [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except Exception:  # noqa: BLE001 - psutil missing or the process is gone
        return []


def process_memory_bytes(pid: int | None = None, children: bool = True) -> int:
    """Memory in use by ``pid`` (default: this process) and, optionally, its children (PSS)."""
    pid = os.getpid() if pid is None else pid
    total = _pss_bytes(pid) or 0
    if children:
        for c in _children(pid):
            total += _pss_bytes(c) or 0
    return total


class MemoryGuard:
    """``--mem-gb`` for the steps of one run.

    Parameters
    ----------
    mem_gb : float or None
        The limit in GB (1e9 bytes); None disables the guard (estimates are
        still logged at debug level).
    interval_s : float
        Sampling period of the watching thread.
    grace_s : float
        How long an interrupted step may take to stop before the process exits.
    """

    def __init__(self, mem_gb: float | None, *, interval_s: float = 0.1, grace_s: float = 3.0,
                 sample_always: bool = False):
        self.mem_gb = float(mem_gb) if mem_gb else None
        self.sample_always = bool(sample_always)  # measure the peak even without a limit (benchmarks)
        self.interval_s = float(interval_s)
        self.grace_s = float(grace_s)
        self.peak_bytes = 0
        self._step = None
        self._exceeded: str | None = None

    @property
    def limit_bytes(self) -> float | None:
        return None if self.mem_gb is None else self.mem_gb * _GB

    # -- estimates ------------------------------------------------------------------------------
    def require(self, nbytes: float, what: str, fix: str = "") -> None:
        """Stop before a step allocates ``nbytes`` more than the limit leaves."""
        in_use = process_memory_bytes()
        logger.debug("%s: needs about %.2f GB (%.2f GB in use, limit %s)", what, nbytes / _GB,
                     in_use / _GB, f"{self.mem_gb:g} GB" if self.mem_gb else "none")
        if self.limit_bytes is None or nbytes + in_use <= self.limit_bytes:
            return
        raise MemoryLimitError(
            f"{what}: needs about {nbytes / _GB:.2f} GB on top of {in_use / _GB:.2f} GB in use, more than "
            f"--mem-gb {self.mem_gb:g}; {fix or 'raise --mem-gb (and the job allocation) to continue'}")

    # -- watching -------------------------------------------------------------------------------
    def _message(self, used: int) -> str:
        step = self._step or "this step"
        return (f"{step}: memory in use reached {used / _GB:.2f} GB, more than --mem-gb {self.mem_gb:g}; "
                "stopped before the system's out-of-memory killer. Raise --mem-gb (and the job's memory "
                "request), or lower the group level's permutation_chunk_size")

    def _watch(self, stop: threading.Event) -> None:
        while not stop.wait(self.interval_s):
            used = process_memory_bytes()
            self.peak_bytes = max(self.peak_bytes, used)
            if self.limit_bytes is None or used <= self.limit_bytes:
                continue
            self._exceeded = self._message(used)
            logger.error("%s", self._exceeded)
            _thread.interrupt_main()
            if stop.wait(self.grace_s):
                return
            # still running: a native call that cannot be interrupted; end it now rather than
            # let the OOM killer end it (and maybe another job) with no message
            print(f"qsm-bids: error: {self._exceeded}", file=sys.stderr, flush=True)
            for pid in _children(os.getpid()):
                with contextlib.suppress(OSError):
                    os.kill(pid, 9)
            os._exit(MemoryLimitError.exit_code)

    @contextlib.contextmanager
    def watch(self, step: str | None = None):
        """Watch memory while the block runs; exceeding the limit raises :class:`MemoryLimitError`."""
        previous, self._step = self._step, step or self._step
        stop = threading.Event()
        thread = None
        if self.limit_bytes is not None or self.sample_always:
            thread = threading.Thread(target=self._watch, args=(stop,), name="qsm-bids-memory-guard",
                                      daemon=True)
            thread.start()
        t0 = time.perf_counter()
        try:
            yield self
        except KeyboardInterrupt:
            if self._exceeded:
                raise MemoryLimitError(self._exceeded) from None
            raise
        finally:
            stop.set()
            if thread is not None:
                thread.join()
            self._step = previous
            logger.debug("%s: peak memory %.2f GB in %.1f s", step or "run", self.peak_bytes / _GB,
                         time.perf_counter() - t0)

    @contextlib.contextmanager
    def step(self, name: str):
        """Name the step reported by a limit hit inside the block (the watch may be opened outside)."""
        previous, self._step = self._step, name
        try:
            yield self
        finally:
            self._step = previous


_guard = {"current": MemoryGuard(None)}


def set_memory_guard(guard: MemoryGuard) -> MemoryGuard:
    """Make ``guard`` the run's guard (the command line does this from ``--mem-gb``)."""
    _guard["current"] = guard
    return guard


def memory_guard() -> MemoryGuard:
    """The run's guard (a disabled one when ``--mem-gb`` was not given)."""
    return _guard["current"]

