"""Laplacian phase unwrapping (Schofield & Zhu 2003), FFT-based.

The Laplacian of the true phase is computed from the wrapped phase alone.
Schofield & Zhu write it as

    lap(phi) = cos(phi) lap(sin phi) - sin(phi) lap(cos phi),

which in the continuum is ``div(wrap(grad phi))``. We discretise it in that
form: forward differences of the phase wrapped to (-pi, pi], then their
backward-difference divergence, each divided by the voxel size in mm
(anisotropic voxels honoured). This is the 7-point Laplacian of the true
phase wherever neighbours differ by less than pi (the sin/cos form with the
same stencil gives ``sum sin(d)`` instead, 16 % low at d = 1 rad), and it is
local, so the random phase of air outside the head does not leak into the
brain (the spectral ``|k|^2`` Laplacian does, by Gibbs ringing: 0.3 rad of
error inside a noise-free phantom brain, measured). The Poisson equation is
inverted with the symbol of the same stencil,
``sum_a (2 cos(2 pi k_a / N_a) - 2) / h_a^2``, on the grid zero-padded to a
fast FFT size (any matrix size, odd included).

What comes back: the phase up to what the Laplacian cannot see. On the
periodic grid that is the mean (k = 0 term, set to 0); in general it is a
harmonic function, and noise or phase singularities leave a smooth error
that background-field removal (SHARP) discards with the harmonic background.
The result is therefore NOT the truth plus an integer multiple of 2 pi voxel
by voxel. For a smooth phase that vanishes at the border of the field of
view it equals the truth minus its mean (tested to 1e-3 rad with 2+ wraps,
anisotropic voxels and odd sizes).

Cost: 2 real FFTs per echo.
"""

from __future__ import annotations

import logging

import numpy as np

from . import fft
from ._ops import block_dot

__all__ = [
    "UNWRAP_METHODS",
    "guided_unwrap",
    "laplacian_unwrap",
    "masked_ls_unwrap",
    "temporal_unwrap",
    "unwrap_to_reference",
]

logger = logging.getLogger(__name__)


def _lap_symbol_half(shape, voxel_size):
    """Symbol of the 7-point Laplacian on the rfft half grid (<= 0)."""
    out = None
    for axis, (n, h) in enumerate(zip(shape, voxel_size)):
        k = np.arange(n // 2 + 1) if axis == 2 else np.arange(n)
        e = (2.0 * np.cos(2.0 * np.pi * k / n) - 2.0) / float(h) ** 2
        view = [1, 1, 1]
        view[axis] = len(k)
        e = e.reshape(view)
        out = e if out is None else out + e
    return out


def _wrapped_laplacian(z, voxel_size):
    """Divergence of the wrapped forward differences of angle(z), periodic, per mm^2."""
    lap = np.zeros(z.shape, dtype=z.real.dtype)
    for axis, h in enumerate(voxel_size):
        d = np.angle(np.roll(z, -1, axis=axis) * np.conj(z)).astype(lap.dtype, copy=False)
        d *= np.float32(1.0 / float(h) ** 2)
        lap += d
        lap -= np.roll(d, 1, axis=axis)
    return lap


def laplacian_unwrap(wrapped_phase, voxel_size, dtype=np.float32):
    """Unwrap phase (rad) with the Laplacian method.

    Parameters
    ----------
    wrapped_phase : ndarray (x, y, z) or (x, y, z, echo)
        Wrapped phase in radians. A 4-D array is unwrapped echo by echo.
    voxel_size : sequence of 3 float
        Voxel size in mm along the array axes.
    dtype : numpy dtype
        Working and output precision.

    Returns
    -------
    ndarray
        Unwrapped phase (rad), same shape as the input, zero mean over the
        (padded) grid.
    """
    phase = np.asarray(wrapped_phase)
    if phase.ndim == 4:
        return np.stack([laplacian_unwrap(phase[..., e], voxel_size, dtype)
                         for e in range(phase.shape[3])], axis=-1)
    if phase.ndim != 3:
        raise ValueError(f"phase must be 3-D or 4-D, got shape {phase.shape}")
    shape = phase.shape
    work_shape = fft.next_fast_shape(shape)
    sl = tuple(slice(0, n) for n in shape)
    cdtype = np.complex64 if np.dtype(dtype) == np.float32 else np.complex128
    z = np.zeros(work_shape, dtype=cdtype)
    z[sl] = np.exp(1j * phase.astype(dtype, copy=False))
    lap_phi = _wrapped_laplacian(z, voxel_size).astype(dtype, copy=False)
    del z
    sym = _lap_symbol_half(work_shape, voxel_size)
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = np.where(sym < 0, 1.0 / sym, 0.0).astype(dtype)
    out = fft.irfftn(fft.rfftn(lap_phi) * inv, work_shape)[sl]
    logger.debug("laplacian unwrap of %s done", shape)
    return np.ascontiguousarray(out, dtype=dtype)


def unwrap_to_reference(wrapped, reference):
    """``wrapped + 2 pi k`` with the integer ``k`` that brings it closest to ``reference`` (rad).

    ``reference`` may have trailing axes fewer than ``wrapped`` (broadcast, e.g. one
    reference for every coil). Exact (the true phase to float precision) wherever
    ``reference`` is within pi of the true phase.
    """
    wrapped = np.asarray(wrapped, dtype=np.float32)
    k = np.round((np.asarray(reference, dtype=np.float32) - wrapped) / np.float32(2 * np.pi))
    return (wrapped + np.float32(2 * np.pi) * k).astype(np.float32)


def _masked_neg_laplacian(phi, edges, voxel_size, outside):
    """``sum_a D_a^T (e_a D_a phi) / h_a^2`` (+ ``phi`` outside the mask): the masked -Laplacian."""
    out = outside * phi
    for axis, (e, h) in enumerate(zip(edges, voxel_size)):
        f = e * (np.roll(phi, -1, axis=axis) - phi) * np.float32(1.0 / float(h) ** 2)
        out += np.roll(f, 1, axis=axis) - f
    return out


def masked_ls_unwrap(wrapped_phase, mask, voxel_size, tol=1e-4, max_iter=200):
    """Least-squares unwrapping inside ``mask`` (Ghiglia & Romero 1994, preconditioned CG).

    Minimises ``sum_a sum_edges (D_a phi - wrap(D_a psi))^2 / h_a^2`` over the edges with both
    voxels in the mask (Neumann conditions at the mask's edge), so, unlike the Laplacian solution on
    the whole grid, the noise of the air outside does not enter and no harmonic function is added:
    where the wrapped differences are the true ones (no phase residues) the solution is the true
    phase up to one constant per connected component. Preconditioner: the inverse of the 7-point
    Laplacian on the periodic (fast-size padded) grid. Zero outside the mask.
    """
    psi = np.asarray(wrapped_phase, dtype=np.float32)
    m = np.asarray(mask, dtype=bool)
    mf = m.astype(np.float32)
    edges, b = [], np.zeros(psi.shape, np.float32)
    for axis, h in enumerate(voxel_size):
        e = mf * np.roll(mf, -1, axis=axis)
        idx = [slice(None)] * 3
        idx[axis] = -1
        e[tuple(idx)] = 0.0  # no edge across the (non-periodic) border of the box
        edges.append(e)
        g = e * np.angle(np.exp(1j * (np.roll(psi, -1, axis=axis) - psi))).astype(np.float32)
        g *= np.float32(1.0 / float(h) ** 2)
        b += np.roll(g, 1, axis=axis) - g
    outside = (~m).astype(np.float32)
    work = fft.next_fast_shape(psi.shape)
    sl = tuple(slice(0, n) for n in psi.shape)
    sym = -_lap_symbol_half(work, voxel_size)
    sym.flat[0] = sym[sym > 0].min()
    inv = (1.0 / sym).astype(np.float32)

    def precond(r):
        pad = np.zeros(work, np.float32)
        pad[sl] = r
        return np.ascontiguousarray(fft.irfftn(fft.rfftn(pad) * inv, work)[sl], dtype=np.float32)

    x = np.zeros(psi.shape, np.float32)
    r = b.copy()
    bnorm = float(np.sqrt(block_dot(b, b))) or 1.0
    z = precond(r)
    d = z.copy()
    rz = block_dot(r, z)
    for _ in range(int(max_iter)):
        q = _masked_neg_laplacian(d, edges, voxel_size, outside)
        alpha = rz / block_dot(d, q)
        x += np.float32(alpha) * d
        r -= np.float32(alpha) * q
        if np.sqrt(block_dot(r, r)) < tol * bnorm:
            break
        z = precond(r)
        rz_new = block_dot(r, z)
        d = z + np.float32(rz_new / rz) * d
        rz = rz_new
    return x * mf


def guided_unwrap(wrapped_phase, voxel_size, weights):
    """Exact unwrapping inside a mask: the wrapped phase + ``2 pi k`` nearest a least-squares guide.

    The guide is :func:`masked_ls_unwrap` on the voxels with ``weights > 0`` (e.g. the magnitude in
    the brain mask), its free constant aligned to the data (the ``weights``-weighted circular mean of
    wrapped - guide); each voxel then takes the ``2 pi`` multiple that brings its wrapped value
    closest to the guide (:func:`unwrap_to_reference`). The result is the true phase to float
    precision (up to one global ``2 pi k``) wherever the guide is within pi of it, i.e. everywhere
    except near phase residues; the Laplacian solution on the whole grid (:func:`laplacian_unwrap`)
    is not: it differs from the truth by a harmonic function set by the air outside, of several
    radians on a head, and rounding to it fails where that exceeds pi. Zero outside the mask.

    Parameters
    ----------
    wrapped_phase : ndarray (x, y, z)
        Wrapped phase (rad).
    voxel_size : sequence of 3 float
        Voxel size in mm.
    weights : ndarray (x, y, z)
        Non-negative; > 0 marks the voxels to unwrap.

    Returns
    -------
    ndarray float32 (x, y, z)
    """
    d = np.asarray(wrapped_phase, dtype=np.float32)
    if d.ndim != 3:
        raise ValueError(f"phase must be 3-D, got shape {d.shape}")
    w = np.asarray(weights, dtype=np.float32)
    m = w > 0
    est = masked_ls_unwrap(d, m, voxel_size)
    est += np.float32(np.angle(np.sum(w * np.exp(1j * (d - est)))))
    return unwrap_to_reference(d, est) * m


def temporal_unwrap(wrapped_phase, echo_times_s, voxel_size, weights):
    """Exact multi-echo unwrapping: echo 1 guided (:func:`guided_unwrap`), later echoes in time.

    Echo ``n`` takes the ``2 pi`` multiple closest to the phase predicted from the echoes before
    it, ``TE_n`` times their ``weights^2``-weighted frequency through zero (for echo 2:
    ``phi_1 TE_2 / TE_1``). The phase offset at TE = 0 must be removed first. Every echo is the
    wrapped phase plus ``2 pi`` times an integer; exact wherever echo 1 is and the prediction
    is within pi (phase noise ``TE_n / TE_1`` times echo 1's).

    Parameters
    ----------
    wrapped_phase : ndarray (x, y, z, echo)
    echo_times_s : sequence of float, increasing
    voxel_size : sequence of 3 float
    weights : ndarray (x, y, z, echo): echo 1's > 0 marks the voxels to unwrap

    Returns
    -------
    ndarray float32 (x, y, z, echo)
    """
    ph = np.asarray(wrapped_phase, dtype=np.float32)
    if ph.ndim == 3:
        ph = ph[..., None]
    te = np.asarray(echo_times_s, dtype=np.float64).ravel()
    w = np.asarray(weights, dtype=np.float32)
    if w.ndim == 3:
        w = w[..., None]
    out = np.empty(ph.shape, np.float32)
    out[..., 0] = guided_unwrap(ph[..., 0], voxel_size, w[..., 0])
    num = np.zeros(ph.shape[:3], np.float64)
    den = np.zeros(ph.shape[:3], np.float64)
    for n in range(1, ph.shape[3]):
        w2 = w[..., n - 1].astype(np.float64) ** 2
        num += w2 * te[n - 1] * out[..., n - 1]
        den += w2 * te[n - 1] ** 2
        with np.errstate(divide="ignore", invalid="ignore"):
            omega = np.where(den > 0, num / den, out[..., n - 1] / te[n - 1])
        out[..., n] = unwrap_to_reference(ph[..., n], (omega * te[n]).astype(np.float32))
    return out * (w[..., :1] > 0)


def _laplacian_method(wrapped_phase, echo_times_s, voxel_size, weights=None):
    return laplacian_unwrap(wrapped_phase, voxel_size)


def _guided_method(wrapped_phase, echo_times_s, voxel_size, weights=None):
    ph = np.asarray(wrapped_phase)
    if ph.ndim == 3:
        return guided_unwrap(ph, voxel_size, weights)
    return np.stack([guided_unwrap(ph[..., e], voxel_size, weights[..., e])
                     for e in range(ph.shape[3])], axis=-1)


def _auto_method(wrapped_phase, echo_times_s, voxel_size, weights=None):
    # Measured (README, issue 16): temporal halves the nuclei's error on 6/13/20 ms echoes, but on
    # one long echo its guided first step is worse than the Laplacian solution.
    ph = np.asarray(wrapped_phase)
    if ph.ndim == 4 and ph.shape[3] > 1:
        logger.info("unwrapping: temporal (%d echoes)", ph.shape[3])
        return temporal_unwrap(ph, echo_times_s, voxel_size, weights)
    logger.info("unwrapping: Laplacian (one echo)")
    return _laplacian_method(ph, echo_times_s, voxel_size, weights)


#: ``recon.unwrap_method`` -> function ``(wrapped (x,y,z[,echo]), echo_times_s, voxel_size, weights)``:
#: "laplacian" the Laplacian solution itself (Schofield & Zhu 2003; the paper's); "guided" each echo
#: restored to its wrapped value + 2 pi k nearest a masked least-squares unwrapping; "temporal" echo 1
#: guided, later echoes by the frequency of the earlier ones; "auto" temporal for multi-echo data,
#: Laplacian for one echo.
UNWRAP_METHODS = {
    "auto": _auto_method,
    "laplacian": _laplacian_method,
    "guided": _guided_method,
    "temporal": temporal_unwrap,
}
