"""Modified adaptive (Walsh-type) coil combination.

Walsh et al. 2000: at each voxel the combination weights are the dominant
eigenvector of the coil covariance ``R = sum s s^H`` averaged over a
neighbourhood (here a box of ``smoothing_mm``), which gives the SNR-optimal
combined magnitude without coil sensitivity maps. The weights vary smoothly,
so they are computed on a grid of boxes of that size (block averages of
``s s^H``, summed over echoes) and interpolated linearly to every voxel:
that is the box-smoothed covariance sampled at the box centres, and it keeps
the cost at one batched eigen-decomposition of a few tens of thousands of
``ncoil x ncoil`` matrices.

The "modified" part makes the phase consistent across echoes:

- multi-echo: each coil's phase offset at TE = 0 is estimated from its first
  two echoes (``angle(s1) - TE1/(TE2-TE1) angle(s2 conj(s1))``, smoothed as a
  complex field) and removed before combination, so every coil carries only
  ``omega TE`` and the combined phase extrapolates to 0 at TE = 0;
- the eigenvector's arbitrary per-voxel phase is fixed by referencing it to
  the coil with the largest mean signal, so the weights (and the combined
  phase) are spatially smooth; the same weights are used for every echo.

With a single echo the coil offsets cannot be separated from the field; the
combined phase then carries the smooth offset of the reference coil (removed
with the harmonic background where it is harmonic).
"""

from __future__ import annotations

import logging

import numpy as np

from ._ops import fwhm_to_sigma_voxels, gaussian_smooth_complex
from .echoes import OFFSET_METHODS, unwrap_echo_difference, unwrap_to_reference

__all__ = ["adaptive_combine"]

logger = logging.getLogger(__name__)


def _remove_coil_offsets(data, te, voxel_size, smoothing_mm, offset_method="wrapped"):
    s1 = data[..., 0, :]
    s2 = data[..., 1, :]
    sigma = fwhm_to_sigma_voxels(smoothing_mm, voxel_size) + [0.0]
    dphi = np.angle(s2 * np.conj(s1))
    if offset_method == "unwrapped":
        # the echo difference carries no coil offset: unwrap the coils' Hermitian sum once
        # and give every coil the 2 pi multiple that brings it next to that reference
        ref = unwrap_echo_difference(np.ones(s1.shape[:3], np.float32), np.sum(s2 * np.conj(s1), axis=-1),
                                     voxel_size)
        dphi = unwrap_to_reference(dphi, ref[..., None])
    elif offset_method != "wrapped":
        raise ValueError(f"unknown phase-offset method {offset_method!r}; choose from {OFFSET_METHODS}")
    z = np.abs(s1) * np.exp(1j * (np.angle(s1) - te[0] / (te[1] - te[0]) * dphi))
    zs = gaussian_smooth_complex(z, sigma)
    off = np.exp(-1j * np.angle(zs)).astype(np.complex64)
    return data * off[..., None, :]


def adaptive_combine(coil_data, echo_times_s, voxel_size, smoothing_mm=6.0, offset_method="wrapped"):
    """Combine coil-resolved complex data (x, y, z, echo, coil).

    Parameters
    ----------
    coil_data : complex ndarray (x, y, z, echo, coil)
    echo_times_s : sequence of float
    voxel_size : sequence of 3 float (mm)
    smoothing_mm : float
        Box width (mm) of the covariance smoothing (one weight per box,
        interpolated).
    offset_method : {"wrapped", "unwrapped"}
        How each coil's echo-1-to-2 phase change is taken for its TE = 0
        offset (:data:`qsm_bids.recon.echoes.OFFSET_METHODS`): "unwrapped"
        avoids the wrong offset wherever that change exceeds pi.

    Returns
    -------
    magnitude : float32 (x, y, z, echo)
    phase : float32 (x, y, z, echo), wrapped, rad
    """
    data = np.asarray(coil_data)
    if data.ndim != 5:
        raise ValueError(f"coil data must be (x, y, z, echo, coil), got shape {data.shape}")
    data = data.astype(np.complex64, copy=False)
    te = np.asarray(echo_times_s, dtype=float).ravel()
    nx, ny, nz, ne, nc = data.shape
    if ne >= 2:
        data = _remove_coil_offsets(data, te, voxel_size, smoothing_mm, offset_method)
    if nc == 1:
        return np.abs(data[..., 0]).astype(np.float32), np.angle(data[..., 0]).astype(np.float32)
    block = [max(1, round(smoothing_mm / float(d))) for d in voxel_size]
    nb = [int(np.ceil(n / b)) for n, b in zip((nx, ny, nz), block)]
    # block-averaged covariance summed over echoes
    padded = [b * m for b, m in zip(block, nb)]
    R = np.zeros(tuple(nb) + (nc, nc), dtype=np.complex64)
    for e in range(ne):
        s = np.zeros(tuple(padded) + (nc,), dtype=np.complex64)
        s[:nx, :ny, :nz] = data[..., e, :]
        s = s.reshape(nb[0], block[0], nb[1], block[1], nb[2], block[2], nc)
        R += _block_cov(s)
    _evals, evecs = np.linalg.eigh(R)
    v = evecs[..., -1]  # dominant eigenvector, (bx, by, bz, nc)
    ref = int(np.argmax(np.abs(data[..., 0, :]).reshape(-1, nc).mean(axis=0)))
    v = v * np.exp(-1j * np.angle(v[..., ref]))[..., None]
    # interpolate the (smooth) weights to the voxel grid; block centres at (b-1)/2 + b*i
    comb = np.zeros((nx, ny, nz, ne), dtype=np.complex64)
    norm = np.zeros((nx, ny, nz), dtype=np.float32)
    chunk = 8
    for c0 in range(0, nc, chunk):
        w = v[..., c0:c0 + chunk].astype(np.complex64)
        for axis, (n, b) in enumerate(zip((nx, ny, nz), block)):
            w = _interp_axis(w, axis, n, b)
        for j in range(w.shape[-1]):
            wc = w[..., j]
            norm += wc.real**2 + wc.imag**2
            comb += np.conj(wc)[..., None] * data[..., c0 + j]
        del w
    comb /= np.sqrt(np.maximum(norm, 1e-30))[..., None]
    logger.info("adaptive coil combination: %d coils, %d echoes, blocks %s, reference coil %d",
                nc, ne, nb, ref)
    return np.abs(comb).astype(np.float32), np.angle(comb).astype(np.float32)


def _interp_axis(w, axis, n, b):
    """Linear interpolation along ``axis`` from block centres to ``n`` voxels (edges held)."""
    pos = (np.arange(n) - (b - 1) / 2.0) / b
    nb = w.shape[axis]
    pos = np.clip(pos, 0, nb - 1)
    i0 = np.floor(pos).astype(int)
    i1 = np.minimum(i0 + 1, nb - 1)
    f = (pos - i0).astype(np.float32)
    view = [1] * w.ndim
    view[axis] = n
    f = f.reshape(view)
    return np.take(w, i0, axis=axis) * (1 - f) + np.take(w, i1, axis=axis) * f


def _block_cov(s):
    """Sum over each block of s s^H: s is (bx, px, by, py, bz, pz, nc)."""
    nb0, p0, nb1, p1, nb2, p2, nc = s.shape
    t = s.transpose(0, 2, 4, 1, 3, 5, 6).reshape(nb0 * nb1 * nb2, p0 * p1 * p2, nc)
    # R_lk = sum s_l conj(s_k), as one batched matrix product
    R = np.matmul(t.transpose(0, 2, 1), np.conj(t))
    return R.reshape(nb0, nb1, nb2, nc, nc)
