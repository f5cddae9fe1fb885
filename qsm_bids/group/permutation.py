"""Freedman-Lane permutation inference with TFCE and max-statistic FWE control.

Model and scheme
----------------
For a t contrast ``c`` of a full design ``X`` the reduced model is
``Z = X null(c')``. Freedman-Lane permutes the residuals of the reduced model,
adds back the reduced fit and refits the full model::

    Y* = P Rz Y + Hz Y,    t* = t(Y*, X, c)

``Hz Y`` lies in the column space of ``X`` with zero contrast, so it changes
neither ``c'b`` nor the residuals: ``t(Y*) = t(P Rz Y)`` exactly. With ``Qx`` an
orthonormal basis of ``X`` and ``w = pinv(X)' c`` (which lies in ``X``'s
column space), one permutation costs one small GEMM ``U = (P' Qx)' E`` of
shape (rank x voxels) on the reduced residuals ``E = Rz Y``::

    c'b = (Qx'w)' U,  RSS = ||E||^2 - ||U||^2,  t = c'b / sqrt(RSS/df * ||w||^2)

The permuted data set is never formed.

Inference
---------
TFCE (exact, max-tree, from the ``tfce`` package, or this module's faster
max-only kernel for the null distribution) is computed two-sided on each
permuted t map, so one set of permutations serves both contrasts ``t`` and
``-t``. Each permutation records the maximum of t, of -t, of TFCE and of
-TFCE; FWE-corrected p at a voxel is the fraction of permutations whose
maximum reaches the observed value. The observed labelling is permutation 0.

Determinism and chunks
----------------------
Permutation ``k`` is drawn from its own generator,
``SeedSequence(seed, spawn_key=(k,))`` (identical to the ``k``-th child of
``SeedSequence(seed).spawn``), and each statistic depends only on its own
permutation. Any split into chunks, run in any process or cluster job, merges
(by concatenation in ``k`` order) into exactly the result of one run. Memory
is bounded by the chunk's batch, never by the number of permutations.

Execution
---------
``backend="processes"`` (the default) runs the chunks here or in a fork pool
of ``n_jobs`` workers. ``backend="dask"`` sends them to a ``dask.distributed``
cluster (:class:`DaskSpec`: a running scheduler's address, an existing client,
or a ``dask-jobqueue`` cluster such as ``SLURMCluster`` whose workers are
batch jobs): the model (reduced residuals and design factors) and the
neighbourhood are scattered to the workers once, each task runs one chunk
with its per-permutation seeds, and the maxima come back to be merged, so the
result is bit-identical to one process with the same seed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
from dataclasses import dataclass

import numpy as np

from .glm import reduced_model_basis

__all__ = [
    "FreedmanLane",
    "Neighbourhood",
    "NullChunk",
    "voxel_adjacency",
    "tfce_values",
    "tfce_max",
    "permutation_for",
    "chunk_ranges",
    "run_chunk",
    "merge_chunks",
    "fwe_p",
    "permutation_test",
    "DaskSpec",
    "dask_client",
]

logger = logging.getLogger(__name__)

_TFCE_BATCH = 16  # permutations per GEMM and per TFCE kernel call


# --------------------------------------------------------------------------- GLM


@dataclass
class FreedmanLane:
    """Everything a permutation of one t contrast needs, computed once.

    Build with :meth:`from_data`. ``residuals`` is the reduced-model residual
    matrix ``E = Rz Y`` (subjects x voxels, float32, C order).
    """

    residuals: np.ndarray
    Qx: np.ndarray          # (n, r) orthonormal basis of the design (less the constant)
    a: np.ndarray           # (r,)  Qx' w, w = pinv(X)' c
    ss_residuals: np.ndarray  # (V,) ||E||^2 per voxel, float64
    df: int
    var_c: float            # c'(X'X)^-1 c = ||w||^2

    @classmethod
    def from_data(cls, Y, X, contrast, *, overwrite: bool = False,
                  block_voxels: int | None = None) -> "FreedmanLane":
        """Precompute the reduced residuals and the design factors.

        Parameters
        ----------
        Y : ndarray, shape (n_subjects, n_voxels)
            May be a memory map (e.g. the group level's subjects x voxels matrix
            in the work folder).
        X : ndarray, shape (n_subjects, n_regressors), full column rank
        contrast : ndarray, shape (n_regressors,)
        overwrite : bool
            Write the residuals into ``Y`` (float32, C order) instead of a new
            matrix, so that a large cohort holds one subjects x voxels matrix, not two.
        block_voxels : int
            Voxels per block of the float64 projection (the only temporaries); default: about
            16 MB of float64 per block whatever the number of subjects.
        """
        X = np.asarray(X, dtype=np.float64)
        c = np.asarray(contrast, dtype=np.float64)
        Z = reduced_model_basis(X, c)
        n, V = Y.shape
        if overwrite:
            if Y.dtype != np.float32 or not Y.flags.c_contiguous or not Y.flags.writeable:
                raise ValueError("overwrite needs a writeable C-ordered float32 matrix")
            E = Y
        else:
            E = np.empty((n, V), dtype=np.float32)
        ss = np.empty(V, dtype=np.float64)
        if block_voxels is None:
            block_voxels = max(256, (2 << 20) // max(n, 1))
        # column blocks: each voxel's projection involves only its own column
        for v0 in range(0, V, max(1, int(block_voxels))):
            sl = slice(v0, min(v0 + int(block_voxels), V))
            Yb = np.asarray(Y[:, sl], dtype=np.float64)
            Eb = Yb - Z @ (Z.T @ Yb) if Z.shape[1] else Yb
            ss[sl] = np.einsum("ij,ij->j", Eb, Eb)
            E[:, sl] = Eb
        w = np.linalg.pinv(X).T @ c
        rank = np.linalg.matrix_rank(X)
        ones = np.ones(X.shape[0])
        if Z.shape[1] and np.allclose(Z @ (Z.T @ ones), ones, atol=1e-8):
            # E is orthogonal to the constant, and so is any permutation of E:
            # the constant direction of the design adds nothing to the fit and
            # is left out of the GEMM (one row fewer per permutation)
            Xc = X - X.mean(axis=0)
            Qx = np.linalg.svd(Xc, full_matrices=False)[0][:, : rank - 1]
        else:
            Qx = np.linalg.qr(X)[0][:, :rank]
        return cls(
            residuals=E,
            Qx=Qx.astype(np.float32),
            a=(Qx.T @ w).astype(np.float32),
            ss_residuals=ss,
            df=X.shape[0] - rank,
            var_c=float(w @ w),
        )

    @property
    def n_subjects(self) -> int:
        return self.residuals.shape[0]

    @property
    def ss_residuals32(self) -> np.ndarray:
        if getattr(self, "_ss32", None) is None:
            self._ss32 = self.ss_residuals.astype(np.float32)
        return self._ss32

    @property
    def n_voxels(self) -> int:
        return self.residuals.shape[1]

    def t(self, perm=None) -> np.ndarray:
        """t map (float32, one value per voxel) under one permutation.

        ``perm[j]`` is the subject whose reduced residual goes to row ``j``
        (the permuted data are ``E[perm]``); ``None`` is the observed labelling.
        """
        return self.t_batch([perm])[0]

    def t_batch(self, perms) -> np.ndarray:
        """t maps of several permutations, shape (len(perms), n_voxels), float32.

        One GEMM ``(B*rank x n) @ (n x V)`` reads the residuals once for the
        whole batch (the per-permutation product is memory bound).
        """
        r = self.Qx.shape[1]
        # Qx' E[perm] = Qx[argsort(perm)]' E: the permutation moves onto Qx
        G = np.concatenate([(self.Qx if p is None else self.Qx[np.argsort(p)]).T for p in perms])
        U = (G @ self.residuals).reshape(len(perms), r, self.n_voxels)
        num = np.tensordot(self.a, U, axes=(0, 1))        # (B, V)
        ss_fit = np.square(U[:, 0])
        for j in range(1, r):
            ss_fit += np.square(U[:, j])
        rss = np.subtract(self.ss_residuals32, ss_fit, out=ss_fit)
        np.maximum(rss, 0.0, out=rss)
        rss *= np.float32(self.var_c / self.df)
        se = np.sqrt(rss, out=rss)
        out = np.zeros(num.shape, dtype=np.float32)
        np.divide(num, se, out=out, where=se > 0)
        return out


# --------------------------------------------------------------------------- TFCE


class Neighbourhood(tuple):
    """``(indptr, indices)`` CSR neighbour lists of the mask voxels, with the grid.

    A tuple, so it goes straight to the ``tfce`` package as ``adjacency``; it
    also carries what the compiled kernel needs: ``grid_shape`` (the mask's
    bounding box padded by one voxel), ``grid_index`` (each mask voxel's C-order
    index in it) and ``connectivity``.
    """

    def __new__(cls, indptr, indices, grid_shape, grid_index, connectivity):
        self = super().__new__(cls, (indptr, indices))
        self.grid_shape = tuple(int(s) for s in grid_shape)
        self.grid_index = grid_index
        self.connectivity = int(connectivity)
        # runs of consecutive grid indices: (start, length) pairs
        gi = np.asarray(grid_index, dtype=np.int64)
        if gi.size:
            breaks = np.flatnonzero(np.diff(gi) != 1) + 1
            starts = np.r_[0, breaks]
            lengths = np.diff(np.r_[starts, gi.size])
            self.runs = np.column_stack([gi[starts], lengths]).astype(np.int32)
        else:
            self.runs = np.zeros((0, 2), np.int32)
        return self

    def __reduce__(self):
        return (Neighbourhood, (self[0], self[1], self.grid_shape, self.grid_index, self.connectivity))


def voxel_adjacency(mask: np.ndarray, connectivity: int = 26) -> Neighbourhood:
    """Neighbours of the in-mask voxels (CSR over ``mask``'s C-order voxels).

    Returns a :class:`Neighbourhood`, i.e. ``(indptr, indices)`` int32 arrays
    plus the padded grid; voxel ``i`` is the ``i``-th True voxel of ``mask``
    in C order (``mask[mask]`` order).
    """
    if connectivity not in (6, 18, 26):
        raise ValueError(f"connectivity must be 6, 18 or 26, got {connectivity}")
    mask = np.asarray(mask, dtype=bool)
    n = int(mask.sum())
    index = np.full(mask.shape, -1, dtype=np.int64)
    index[mask] = np.arange(n)
    coords = np.argwhere(mask)
    limit = {6: 1, 18: 2, 26: 3}[connectivity]
    offsets = [(i, j, k) for i in (-1, 0, 1) for j in (-1, 0, 1) for k in (-1, 0, 1)
               if 0 < abs(i) + abs(j) + abs(k) <= limit]
    rows, cols = [], []
    shape = np.array(mask.shape)
    for off in offsets:
        q = coords + np.array(off)
        inside = np.all((q >= 0) & (q < shape), axis=1)
        nb = np.full(n, -1, dtype=np.int64)
        nb[inside] = index[tuple(q[inside].T)]
        ok = nb >= 0
        rows.append(np.flatnonzero(ok))
        cols.append(nb[ok])
    rows = np.concatenate(rows)
    cols = np.concatenate(cols)
    order = np.lexsort((cols, rows))
    rows, cols = rows[order], cols[order]
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=n), out=indptr[1:])
    if n:
        lo = coords.min(axis=0) - 1
        grid_shape = coords.max(axis=0) - lo + 2
        grid_index = np.ravel_multi_index(tuple((coords - lo).T), tuple(grid_shape)).astype(np.int32)
    else:
        grid_shape, grid_index = (1, 1, 1), np.zeros(0, np.int32)
    return Neighbourhood(indptr.astype(np.int32), cols.astype(np.int32), grid_shape, grid_index,
                         connectivity)


def tfce_values(stat, adjacency, E: float = 0.5, H: float = 2.0, n_jobs: int = 1) -> np.ndarray:
    """Exact two-sided TFCE of in-mask statistics (``tfce`` package, max-tree).

    Parameters
    ----------
    stat : ndarray, shape (n_voxels,) or (n_voxels, B)
    adjacency : :class:`Neighbourhood` from :func:`voxel_adjacency` (or ``(indptr, indices)``)

    Returns
    -------
    ndarray, float32, same shape: positive TFCE where ``stat > 0``, negative
    TFCE (of ``-stat``) where ``stat < 0``.
    """
    import tfce as tfce_pkg

    return tfce_pkg.tfce(np.asarray(stat, dtype=np.float32), adjacency=adjacency,
                         E=E, H=H, two_sided=True, n_jobs=n_jobs)


def tfce_max(stats, adjacency, E: float = 0.5, H: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    """Maximum TFCE of ``stat`` and of ``-stat`` for each column of ``stats``.

    Uses the compiled max-only kernel (:mod:`qsm_bids.group._tfce_kernel`) when
    it is available, the ``tfce`` package otherwise; both are exact.

    Returns
    -------
    (max_pos, max_neg) : float64 arrays of length B (0 where a sign is absent).
    """
    stats = np.asarray(stats, dtype=np.float32)
    if stats.ndim == 1:
        stats = stats[:, None]
    from . import _tfce_kernel

    if isinstance(adjacency, Neighbourhood) and _tfce_kernel.available():
        return _tfce_kernel.tfce_max(stats, adjacency, E, H)
    out = tfce_values(stats, adjacency, E, H)
    return (np.maximum(out.max(axis=0), 0.0).astype(np.float64),
            np.maximum(-out.min(axis=0), 0.0).astype(np.float64))


# --------------------------------------------------------------------------- permutations


def permutation_for(seed: int, k: int, n_subjects: int) -> np.ndarray | None:
    """Permutation ``k`` of ``n_subjects`` (``None``, the identity, for ``k = 0``).

    Each ``k`` has its own generator, so the set does not depend on chunking.
    """
    if k == 0:
        return None
    ss = np.random.SeedSequence(int(seed), spawn_key=(int(k),))
    return np.random.Generator(np.random.PCG64(ss)).permutation(n_subjects)


def chunk_ranges(n_permutations: int, chunk_size: int) -> list[tuple[int, int]]:
    """``[(start, stop), ...]`` covering permutations ``0 .. n_permutations-1``."""
    if n_permutations < 1 or chunk_size < 1:
        raise ValueError("n_permutations and chunk_size must be positive")
    return [(s, min(s + chunk_size, n_permutations)) for s in range(0, n_permutations, chunk_size)]


@dataclass
class NullChunk:
    """Per-permutation maxima of permutations ``start .. stop-1``."""

    start: int
    stop: int
    max_t: np.ndarray        # max of t          (contrast c)
    max_neg_t: np.ndarray    # max of -t         (contrast -c)
    max_tfce: np.ndarray     # max TFCE of t
    max_neg_tfce: np.ndarray  # max TFCE of -t
    seconds: float = 0.0

    def to_dict(self) -> dict:
        """Plain arrays (e.g. for ``numpy.savez`` by a cluster job)."""
        return {"start": self.start, "stop": self.stop, "max_t": self.max_t,
                "max_neg_t": self.max_neg_t, "max_tfce": self.max_tfce,
                "max_neg_tfce": self.max_neg_tfce, "seconds": self.seconds}

    @classmethod
    def from_dict(cls, d) -> "NullChunk":
        """Inverse of :meth:`to_dict` (accepts a loaded ``.npz`` too)."""
        return cls(int(d["start"]), int(d["stop"]), np.asarray(d["max_t"]), np.asarray(d["max_neg_t"]),
                   np.asarray(d["max_tfce"]), np.asarray(d["max_neg_tfce"]), float(d["seconds"]))


def run_chunk(model: FreedmanLane, adjacency, start: int, stop: int, seed: int, *,
              E: float = 0.5, H: float = 2.0, use_tfce: bool = True) -> NullChunk:
    """Run permutations ``start .. stop-1`` and keep their maxima.

    Permutations are computed in globally aligned blocks of ``_TFCE_BATCH``
    (``[16j, 16j+16)``), whatever the chunk boundaries, so each t map comes out
    of the same GEMM and chunked runs are bitwise identical to one run.
    Memory: one block of t maps.
    """
    t0 = time.perf_counter()
    n = stop - start
    max_t = np.empty(n)
    max_neg_t = np.empty(n)
    max_tfce = np.zeros(n)
    max_neg_tfce = np.zeros(n)
    for block in range(start // _TFCE_BATCH, (stop - 1) // _TFCE_BATCH + 1):
        k0 = block * _TFCE_BATCH
        ks = range(k0, k0 + _TFCE_BATCH)
        T = model.t_batch([permutation_for(seed, k, model.n_subjects) for k in ks])
        keep = [i for i, k in enumerate(ks) if start <= k < stop]
        T = T[keep]
        dest = slice(k0 + keep[0] - start, k0 + keep[-1] + 1 - start)
        max_t[dest] = T.max(axis=1)
        max_neg_t[dest] = -T.min(axis=1)
        if use_tfce:
            # (B, V) C order is (V, B) Fortran order: one map per column, no copy
            mp, mn = tfce_max(T.T, adjacency, E, H)
            max_tfce[dest] = mp
            max_neg_tfce[dest] = mn
    seconds = time.perf_counter() - t0
    logger.debug("permutations %d-%d done in %.1f s", start, stop - 1, seconds)
    return NullChunk(start, stop, max_t, max_neg_t, max_tfce, max_neg_tfce, seconds)


def merge_chunks(chunks) -> NullChunk:
    """Concatenate chunks (any order in, ``k`` order out); they must tile 0..N-1."""
    chunks = sorted(chunks, key=lambda c: c.start)
    pos = 0
    for c in chunks:
        if c.start != pos:
            raise ValueError(f"permutation chunks do not tile: expected start {pos}, got {c.start}")
        pos = c.stop
    cat = lambda name: np.concatenate([getattr(c, name) for c in chunks])  # noqa: E731
    return NullChunk(0, pos, cat("max_t"), cat("max_neg_t"), cat("max_tfce"),
                     cat("max_neg_tfce"), float(sum(c.seconds for c in chunks)))


def fwe_p(observed: np.ndarray, null_max: np.ndarray) -> np.ndarray:
    """FWE-corrected p: fraction of permutation maxima >= the observed value.

    ``null_max[0]`` is the observed labelling's maximum, which reaches every
    observed value by definition, so it counts 1 whatever its stored value
    (robust to rounding between kernels) and p >= 1/len(null_max).
    """
    null_max = np.asarray(null_max, dtype=np.float64)
    srt = np.sort(null_max[1:])
    obs = np.asarray(observed, dtype=np.float64)
    count = 1 + srt.size - np.searchsorted(srt, obs, side="left")
    return count / null_max.size


# worker-process state for parallel chunks
_WORKER: dict = {}


def _init_worker(model, adjacency, params):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
    except ImportError:  # pragma: no cover - threadpoolctl ships with scikit-learn/nilearn
        pass
    _WORKER.update(model=model, adjacency=adjacency, params=params)


def _worker_chunk(start, stop):
    return run_chunk(_WORKER["model"], _WORKER["adjacency"], start, stop, **_WORKER["params"])


def _run_chunks(model, adjacency, ranges, params, n_jobs, dask=None):
    total = sum(e - s for s, e in ranges)
    done = 0
    t0 = time.perf_counter()
    results = []

    def progress(chunk):
        nonlocal done
        done += chunk.stop - chunk.start
        rate = done / max(time.perf_counter() - t0, 1e-9)
        logger.info("permutations %d/%d (%.1f per second, about %.0f s left)",
                    done, total, rate, (total - done) / rate if rate else float("nan"))

    if dask is not None:
        with dask_client(dask) as client:
            return _run_chunks_dask(client, model, adjacency, ranges, params, progress)
    if n_jobs <= 1 or len(ranges) == 1:
        for s, e in ranges:
            chunk = run_chunk(model, adjacency, s, e, **params)
            progress(chunk)
            results.append(chunk)
        return results
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    # fork where there is one: the workers inherit the residual matrix instead of
    # receiving a pickled copy, and a script without a __main__ guard cannot
    # re-run itself in them (spawn's failure mode)
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    with ProcessPoolExecutor(max_workers=n_jobs, mp_context=ctx, initializer=_init_worker,
                             initargs=(model, adjacency, params)) as pool:
        futures = [pool.submit(_worker_chunk, s, e) for s, e in ranges]
        for fut in futures:
            chunk = fut.result()
            progress(chunk)
            results.append(chunk)
    return results


# --------------------------------------------------------------------------- Dask


@dataclass
class DaskSpec:
    """Where the permutation chunks go with ``backend="dask"``.

    Exactly one of:

    address : str
        A running scheduler, e.g. ``tcp://10.0.0.5:8786`` (``dask scheduler``
        plus ``dask worker`` processes started by the user or the site).
    client : distributed.Client
        An existing client (the caller owns it; it is not closed).
    jobqueue : dict
        A ``dask-jobqueue`` cluster started for this run and closed after it:
        ``{"cluster": "SLURMCluster", "n_workers": 4, "options": {...}}`` where
        ``options`` are the cluster class's keyword arguments (``cores``,
        ``memory``, ``walltime``, ``queue``, ``job_extra_directives``, ...).
        ``"local": {...}`` instead of ``jobqueue`` starts a
        ``distributed.LocalCluster`` with those arguments.

    timeout_s : float
        How long to wait for the first worker (batch jobs may queue).
    """

    address: str | None = None
    client: object = None
    jobqueue: dict | None = None
    local: dict | None = None
    timeout_s: float = 600.0

    @classmethod
    def from_config(cls, value) -> "DaskSpec":
        """From a config value: a scheduler address string or a dict of this class's fields."""
        if isinstance(value, DaskSpec):
            return value
        if isinstance(value, str):
            return cls(address=value)
        if isinstance(value, dict):
            unknown = set(value) - {"address", "jobqueue", "local", "timeout_s"}
            if unknown:
                raise ValueError(f"unknown dask option(s) {', '.join(sorted(unknown))}; expected address, "
                                 "jobqueue, local or timeout_s")
            return cls(**value)
        raise ValueError(f"dask: expected a scheduler address or a mapping, got {value!r}")

    def describe(self) -> str:
        if self.client is not None:
            return "an existing Dask client"
        if self.address:
            return f"the Dask scheduler at {self.address}"
        if self.jobqueue:
            return (f"a dask-jobqueue {self.jobqueue.get('cluster', 'SLURMCluster')} of "
                    f"{self.jobqueue.get('n_workers', 1)} worker job(s)")
        return f"a local Dask cluster ({self.local or {}})"


_JOBQUEUE = ("SLURMCluster", "PBSCluster", "SGECluster", "LSFCluster", "OARCluster", "HTCondorCluster",
             "MoabCluster")


@contextlib.contextmanager
def dask_client(spec: DaskSpec):
    """A ``distributed.Client`` for ``spec`` (a cluster it starts is closed on exit)."""
    from distributed import Client, LocalCluster

    spec = DaskSpec.from_config(spec)
    if spec.client is not None:
        yield spec.client
        return
    n_sources = sum(x is not None and x != {} for x in (spec.address, spec.jobqueue, spec.local))
    if n_sources > 1:
        raise ValueError("dask: give one of address, jobqueue or local")
    cluster = None
    try:
        if spec.address:
            client = Client(spec.address, timeout=spec.timeout_s)
        else:
            if spec.jobqueue:
                import dask_jobqueue

                name = spec.jobqueue.get("cluster", "SLURMCluster")
                if name not in _JOBQUEUE:
                    raise ValueError(f"dask jobqueue cluster {name!r} is not one of {', '.join(_JOBQUEUE)}")
                cluster = getattr(dask_jobqueue, name)(**dict(spec.jobqueue.get("options", {})))
                n_workers = int(spec.jobqueue.get("n_workers", 1))
                cluster.scale(n_workers)
                logger.info("dask-jobqueue: %s submitted %d worker job(s)", name, n_workers)
            else:
                cluster = LocalCluster(**dict(spec.local or {}))
            client = Client(cluster)
        try:
            client.wait_for_workers(1, timeout=spec.timeout_s)
            yield client
        finally:
            client.close()
    finally:
        if cluster is not None:
            cluster.close()


def _dask_chunk(model, adjacency, start, stop, params):
    # a worker's threads run several tasks at once: one BLAS thread each, as in the fork pool
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        return run_chunk(model, adjacency, start, stop, **params)


def _run_chunks_dask(client, model, adjacency, ranges, params, progress):
    from distributed import as_completed

    n_workers = len(client.scheduler_info().get("workers", {}))
    logger.info("permutation chunks on Dask (%s, %d worker(s)): sending the data (%.1f MB) once",
                client.scheduler.address, n_workers, model.residuals.nbytes / 1e6)
    # a memory-mapped matrix travels as its data (workers may be on other machines)
    model = dataclasses.replace(model, residuals=np.asarray(model.residuals))
    # broadcast: every worker holds one copy; each task then names it instead of carrying it
    model_f, adj_f = client.scatter([model, adjacency], broadcast=True, hash=False)
    futures = [client.submit(_dask_chunk, model_f, adj_f, s, e, params, pure=False,
                             key=f"qsm-bids-permutations-{s}-{e}-{id(model)}") for s, e in ranges]
    results = []
    try:
        for fut in as_completed(futures):
            chunk = fut.result()
            progress(chunk)
            results.append(chunk)
    finally:
        client.cancel([model_f, adj_f, *futures])
    return sorted(results, key=lambda c: c.start)


def permutation_test(Y, X, contrast, adjacency, *, n_permutations: int = 20000,
                     chunk_size: int = 500, seed: int = 0, tfce_E: float = 0.5,
                     tfce_H: float = 2.0, n_jobs: int = 1, chunks=None,
                     use_tfce: bool = True, backend: str = "processes",
                     dask: "DaskSpec | dict | str | None" = None, overwrite_data: bool = False) -> dict:
    """Freedman-Lane permutation test of contrast ``c`` and of ``-c`` at once.

    Parameters
    ----------
    Y : ndarray, shape (n_subjects, n_voxels)
        In-mask data (voxel order of ``adjacency``).
    X, contrast : design and t contrast (see :mod:`qsm_bids.group.glm`).
    adjacency : (indptr, indices) from :func:`voxel_adjacency`.
    n_permutations : int
        Total, the observed labelling included (permutation 0).
    chunk_size : int
        Permutations per chunk (one task of a worker process).
    seed : int
        Seed of every permutation.
    n_jobs : int
        Worker processes for the chunks (1 runs them here); ``backend="processes"``.
    backend : "processes" or "dask"
        Where the chunks run (see the module docstring).
    dask : :class:`DaskSpec`, scheduler address or dict
        The Dask cluster for ``backend="dask"``.
    overwrite_data : bool
        Turn ``Y`` (C-ordered float32) into the reduced residuals in place (no second copy).
    chunks : list of (start, stop), optional
        Run only these chunks; the result then has ``"null"`` for those only
        and no p-values (merge chunk results with :func:`merge_chunks` and
        :func:`inference_from_null`).

    Returns
    -------
    dict with ``t``, ``tfce`` (observed, two-sided: negative values belong to
    ``-c``), ``p_tfce``/``p_t`` (FWE p for ``c``), ``p_tfce_neg``/``p_t_neg``
    (FWE p for ``-c``), and ``null`` (the merged :class:`NullChunk`).
    """
    model = FreedmanLane.from_data(Y, X, contrast, overwrite=overwrite_data)
    params = dict(seed=int(seed), E=float(tfce_E), H=float(tfce_H), use_tfce=use_tfce)
    ranges = list(chunks) if chunks is not None else chunk_ranges(n_permutations, chunk_size)
    if backend not in ("processes", "dask"):
        raise ValueError(f"permutation backend must be 'processes' or 'dask', got {backend!r}")
    spec = None
    if backend == "dask":
        if dask is None:
            raise ValueError("backend 'dask' needs a scheduler address, a client or a cluster spec")
        spec = DaskSpec.from_config(dask)
    logger.info("Freedman-Lane: %d subjects, %d voxels, %d permutations in %d chunk(s), on %s",
                model.n_subjects, model.n_voxels, sum(e - s for s, e in ranges), len(ranges),
                spec.describe() if spec else f"{n_jobs} process(es)")
    results = _run_chunks(model, adjacency, ranges, params, int(n_jobs), dask=spec)
    t_obs = model.t(None)
    tfce_obs = tfce_values(t_obs, adjacency, tfce_E, tfce_H) if use_tfce else np.zeros_like(t_obs)
    out = {"t": t_obs, "tfce": tfce_obs}
    if chunks is not None:
        out["chunks"] = results
        return out
    null = merge_chunks(results)
    out.update(inference_from_null(t_obs, tfce_obs, null))
    return out


def inference_from_null(t_obs, tfce_obs, null: NullChunk) -> dict:
    """FWE p-values of both contrasts from the observed maps and the merged null."""
    return {
        "null": null,
        "p_t": fwe_p(t_obs, null.max_t),
        "p_t_neg": fwe_p(-t_obs, null.max_neg_t),
        "p_tfce": fwe_p(tfce_obs, null.max_tfce),
        "p_tfce_neg": fwe_p(-tfce_obs, null.max_neg_tfce),
    }
