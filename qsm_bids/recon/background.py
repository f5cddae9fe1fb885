"""Background field removal: SHARP (paper), V-SHARP and PDF.

All functions take the total field (any unit; ppm in the pipeline) inside a
brain mask and return ``(local_field, eroded_mask)`` in the same unit.

SHARP (Schweser et al. 2011): a background field is harmonic inside the brain,
so it equals its spherical mean value (SMV). ``(delta - S) * field`` removes it
wherever the sphere lies entirely inside the mask (the mask eroded by the
kernel: ``SMV(mask) > 0.999``, as the MEDI toolbox does); the local field is
recovered by deconvolving ``delta - S`` with the spectrum truncated where
``|1 - S(k)| <= threshold``. The sphere is defined in mm on the anisotropic
grid. Cost: 2 + 2 real FFTs for the filter and 2 for the deconvolution.

V-SHARP (Wu et al. 2012): the same with radii shrinking towards the brain
edge; each voxel takes the filtered value of the largest sphere that fits,
and the deconvolution uses the largest kernel (as in STI Suite).

PDF (Liu et al. 2011): the background field is fitted as the field of dipoles
outside the mask by weighted least squares (conjugate gradients on the
normal equations, magnitude weights), on a zero-padded grid.
"""

from __future__ import annotations

import logging

import numpy as np

from . import fft
from ._ops import block_dot, pad_to, smv, sphere_kernel_rfft
from .dipole import dipole_kernel

__all__ = ["sharp", "vsharp", "pdf", "erode_by_sphere"]

logger = logging.getLogger(__name__)


def _work_shape(shape):
    return fft.next_fast_shape(shape)


def erode_by_sphere(mask, voxel_size, radius_mm):
    """Mask eroded by the spherical kernel: voxels whose sphere lies inside ``mask``."""
    mask = np.asarray(mask, dtype=bool)
    shape = _work_shape(mask.shape)
    S = sphere_kernel_rfft(shape, voxel_size, radius_mm)
    sl = tuple(slice(0, n) for n in mask.shape)
    return smv(pad_to(mask.astype(np.float32), shape), S)[sl] > 0.999


def sharp(field, mask, voxel_size, radius_mm=5.0, threshold=0.05):
    """SHARP background removal.

    Parameters
    ----------
    field : ndarray (x, y, z)
        Total (unwrapped) field; values outside ``mask`` are ignored.
    mask : ndarray of bool
        Brain mask.
    voxel_size : sequence of 3 float
        Voxel size in mm.
    radius_mm : float
        Radius of the spherical kernel in mm (paper: 5).
    threshold : float
        Truncation threshold of ``1 - S(k)`` in the deconvolution.

    Returns
    -------
    local_field : ndarray (float32), zero outside ``eroded_mask``
    eroded_mask : ndarray of bool
    """
    field = np.asarray(field, dtype=np.float32)
    mask = np.asarray(mask, dtype=bool)
    shape = _work_shape(field.shape)
    sl = tuple(slice(0, n) for n in field.shape)
    S = sphere_kernel_rfft(shape, voxel_size, radius_mm)
    eroded = smv(pad_to(mask.astype(np.float32), shape), S)[sl] > 0.999
    hp = (1.0 - S).astype(np.float32)
    f = pad_to(np.where(mask, field, 0).astype(np.float32), shape)
    filtered = fft.irfftn(fft.rfftn(f) * hp, shape)[sl] * eroded
    filtered = pad_to(filtered.astype(np.float32, copy=False), shape)
    with np.errstate(divide="ignore"):
        inv = np.where(np.abs(hp) > threshold, 1.0 / hp, 0.0).astype(np.float32)
    local = fft.irfftn(fft.rfftn(filtered) * inv, shape)[sl] * eroded
    return np.ascontiguousarray(local, dtype=np.float32), eroded


def vsharp(field, mask, voxel_size, radii_mm=(12.0, 10.0, 8.0, 6.0, 4.0, 2.0), threshold=0.05):
    """V-SHARP: SHARP with radii decreasing towards the mask edge.

    Returns ``(local_field, eroded_mask)`` where ``eroded_mask`` is the mask
    eroded by the smallest sphere.
    """
    radii = sorted((float(r) for r in radii_mm), reverse=True)
    field = np.asarray(field, dtype=np.float32)
    mask = np.asarray(mask, dtype=bool)
    shape = _work_shape(field.shape)
    sl = tuple(slice(0, n) for n in field.shape)
    F = fft.rfftn(pad_to(np.where(mask, field, 0).astype(np.float32), shape))
    M = fft.rfftn(pad_to(mask.astype(np.float32), shape))
    combined = np.zeros(field.shape, dtype=np.float32)
    done = np.zeros(field.shape, dtype=bool)
    hp_large = None
    for r in radii:
        S = sphere_kernel_rfft(shape, voxel_size, r)
        inside = fft.irfftn(M * S, shape)[sl] > 0.999
        new = inside & ~done
        if new.any():
            filtered = fft.irfftn(F * (1.0 - S), shape)[sl]
            combined[new] = filtered[new]
            done |= new
        if hp_large is None:
            hp_large = (1.0 - S).astype(np.float32)
        logger.debug("V-SHARP radius %.1f mm: %d voxels", r, int(new.sum()))
    eroded = done
    with np.errstate(divide="ignore"):
        inv = np.where(np.abs(hp_large) > threshold, 1.0 / hp_large, 0.0).astype(np.float32)
    local = fft.irfftn(fft.rfftn(pad_to(combined, shape)) * inv, shape)[sl] * eroded
    return np.ascontiguousarray(local, dtype=np.float32), eroded


def pdf(field, mask, voxel_size, b0_dir=(0.0, 0.0, 1.0), weight=None, max_iter=100, tol=0.01,
        pad=16):
    """Projection onto dipole fields.

    Fits the field inside ``mask`` with dipoles outside it (weighted least
    squares, CG on the normal equations) and subtracts their field.

    Returns ``(local_field, mask)``.
    """
    field = np.asarray(field, dtype=np.float32)
    mask = np.asarray(mask, dtype=bool)
    shape = fft.next_fast_shape(field.shape, 2 * int(pad))
    sl = tuple(slice(0, n) for n in field.shape)
    D = dipole_kernel(shape, voxel_size, b0_dir)
    Dh = np.ascontiguousarray(D[:, :, : shape[2] // 2 + 1])
    M = pad_to(mask.astype(np.float32), shape)
    out = 1.0 - M
    if weight is None:
        W2 = M
    else:
        w = np.where(mask, np.asarray(weight, dtype=np.float32), 0)
        mean = w[mask].mean() if mask.any() else 1.0
        W2 = pad_to((w / (mean if mean > 0 else 1.0)) ** 2, shape)

    def conv(x):
        return fft.irfftn(fft.rfftn(x) * Dh, shape)

    def A(x):
        return out * conv(W2 * conv(out * x))

    b = out * conv(W2 * pad_to(np.where(mask, field, 0), shape))
    x = np.zeros(shape, dtype=np.float32)
    r = b.copy()
    p = r.copy()
    rr = block_dot(r, r)
    bnorm = np.sqrt(rr)
    it = 0
    while it < max_iter and bnorm > 0 and np.sqrt(rr) > tol * bnorm:
        Ap = A(p)
        alpha = rr / block_dot(p, Ap)
        x += alpha * p
        r -= alpha * Ap
        rr_new = block_dot(r, r)
        p = r + (rr_new / rr) * p
        rr = rr_new
        it += 1
    logger.info("PDF: %d CG iterations, relative residual %.3g", it, np.sqrt(rr) / max(bnorm, 1e-30))
    background = conv(out * x)[sl]
    local = (field - background) * mask
    return np.ascontiguousarray(local, dtype=np.float32), mask
