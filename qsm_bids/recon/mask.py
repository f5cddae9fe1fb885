"""Brain mask from the GRE magnitude (no FSL), optionally refined with a T1w mask.

How it is made (:func:`brain_mask`):

1. The magnitude (root sum of squares over echoes) is smoothed (Gaussian,
   FWHM 2 mm) and scaled by its robust maximum (99.5th percentile of the
   non-zero voxels).
2. Signal: voxels above ``threshold`` (default 0.15) of that maximum. Air,
   bone and the signal voids near the sinuses fall below it.
3. The signal mask is eroded by a ball of ``opening_mm`` (default 4 mm) and the
   largest connected component is kept: the erosion cuts the thin bridges
   between brain and scalp through the dark skull, so the scalp, eyes and
   neck are dropped; the component is dilated back by the same ball within
   the signal mask (a morphological opening by reconstruction-lite).
4. Holes are filled (3-D, then slice by slice along each axis) and the mask
   is closed with a 2 mm ball, so dark veins, iron-rich nuclei and
   ventricles inside the brain stay in.
5. A final erosion by ``erode_mm`` (default 1 mm) removes the rim of
   partial-volume voxels at the skull.

With a T1w brain mask already resampled to the GRE grid, the result is the
T1w mask intersected with the magnitude's signal mask (step 2, dilated by
2 mm to tolerate registration error), then steps 3-5.
"""

from __future__ import annotations

import logging

import numpy as np
from scipy import ndimage

from ._ops import ball

__all__ = ["brain_mask", "largest_component"]

logger = logging.getLogger(__name__)


def largest_component(mask):
    """The largest 6-connected component of a boolean mask (empty stays empty)."""
    lab, n = ndimage.label(mask)
    if n == 0:
        return np.zeros_like(mask, dtype=bool)
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    return lab == int(np.argmax(sizes))


def _fill_holes(mask):
    out = ndimage.binary_fill_holes(mask)
    for axis in range(3):
        moved = np.moveaxis(out, axis, 0)
        for i in range(moved.shape[0]):
            if moved[i].any():
                moved[i] = ndimage.binary_fill_holes(moved[i])
    return out


def brain_mask(magnitude, voxel_size, *, threshold=0.15, opening_mm=4.0, erode_mm=1.0,
               t1w_mask=None):
    """Brain mask from the GRE magnitude.

    Parameters
    ----------
    magnitude : ndarray (x, y, z) or (x, y, z, echo)
        GRE magnitude (any scale).
    voxel_size : sequence of 3 float
        Voxel size in mm.
    threshold : float
        Fraction of the robust maximum that counts as signal.
    opening_mm : float
        Radius (mm) of the erosion that detaches the brain from the scalp.
    erode_mm : float
        Final erosion radius (mm) of the partial-volume rim (0: none).
    t1w_mask : ndarray of bool or None
        A T1w brain mask on the GRE grid.

    Returns
    -------
    mask : ndarray of bool
    """
    mag = np.asarray(magnitude, dtype=np.float32)
    if mag.ndim == 4:
        mag = np.sqrt(np.sum(mag.astype(np.float32) ** 2, axis=3))
    nz = mag[mag > 0]
    if nz.size == 0:
        return np.zeros(mag.shape, dtype=bool)
    sigma = [2.0 / 2.3548 / float(d) for d in voxel_size]
    smooth = ndimage.gaussian_filter(mag, sigma)
    top = float(np.percentile(smooth[smooth > 0], 99.5))
    signal = smooth > threshold * top
    if t1w_mask is not None:
        t1 = np.asarray(t1w_mask, dtype=bool)
        if t1.shape != mag.shape:
            raise ValueError(f"T1w mask shape {t1.shape} differs from the magnitude {mag.shape}")
        signal = t1 & ndimage.binary_dilation(signal, structure=ball(2.0, voxel_size))
    core = ndimage.binary_erosion(signal, structure=ball(opening_mm, voxel_size))
    core = largest_component(core)
    if not core.any():
        core = largest_component(signal)
    mask = ndimage.binary_dilation(core, structure=ball(opening_mm, voxel_size)) & signal
    mask = largest_component(mask)
    mask = ndimage.binary_closing(mask, structure=ball(2.0, voxel_size), border_value=0)
    mask = _fill_holes(mask)
    if erode_mm and erode_mm > 0:
        mask = ndimage.binary_erosion(mask, structure=ball(erode_mm, voxel_size))
    logger.info("brain mask: %d voxels (threshold %.2f of %.4g)", int(mask.sum()), threshold, top)
    return mask
