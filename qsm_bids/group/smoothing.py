"""Gaussian smoothing compensated for the brain boundary.

Smoothing a masked map with a plain Gaussian mixes in the zeros outside the
brain and drags boundary values towards zero. Dividing by the equally smoothed
mask (a normalised convolution) gives each voxel the Gaussian-weighted mean of
the in-mask values only, so a constant map stays constant up to the edge.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter

__all__ = ["voxel_sizes", "sigma_mm_to_voxels", "smooth_within_mask"]


def voxel_sizes(affine) -> np.ndarray:
    """Voxel size (mm) along each array axis of an image affine."""
    affine = np.asarray(affine, dtype=float)
    return np.sqrt((affine[:3, :3] ** 2).sum(axis=0))


def sigma_mm_to_voxels(sigma_mm: float, voxel_size) -> tuple[float, ...]:
    """Gaussian sigma in voxels along each axis, from a sigma in mm."""
    return tuple(float(sigma_mm) / np.asarray(voxel_size, dtype=float))


def smooth_within_mask(image, mask, sigma_mm: float, voxel_size, *, truncate: float = 4.0,
                       min_weight: float = 1e-3) -> np.ndarray:
    """``G*(image x mask) / G*mask`` inside the mask, 0 outside.

    Parameters
    ----------
    image : ndarray, 3D
        The map (e.g. chi_ppm); values outside ``mask`` are ignored.
    mask : ndarray of bool, 3D
    sigma_mm : float
        Gaussian standard deviation in mm (0 returns the masked image).
    voxel_size : sequence of 3 float
        Voxel size in mm along each array axis.
    truncate : float
        Kernel half-width in sigmas.
    min_weight : float
        In-mask voxels whose smoothed mask is below this are set to 0 (only
        isolated specks of mask can be that small).

    Returns
    -------
    ndarray, float32
    """
    mask = np.asarray(mask, dtype=bool)
    data = np.where(mask, np.nan_to_num(np.asarray(image, dtype=np.float32)), 0.0).astype(np.float32)
    if sigma_mm <= 0:
        return data
    sigma = sigma_mm_to_voxels(sigma_mm, voxel_size)
    num = gaussian_filter(data, sigma, mode="constant", cval=0.0, truncate=truncate)
    den = gaussian_filter(mask.astype(np.float32), sigma, mode="constant", cval=0.0,
                          truncate=truncate)
    out = np.zeros_like(data)
    ok = mask & (den > min_weight)
    out[ok] = num[ok] / den[ok]
    return out
