"""Optional referencing of susceptibility maps.

- ``"none"`` (paper default): the map is returned as is.
- ``"brain"``: the mean over the mask is subtracted.
- ``"csf"``: the mean over the lateral ventricles is subtracted. The ventricles
  are found without an atlas as the largest connected region, inside the
  central part of the brain (farther than 25 mm from the mask edge), whose
  magnitude is bright (CSF has a long T2*, so it is among the brightest
  tissue at the GRE echo times: above the 85th percentile of that central
  region) and locally uniform (low magnitude gradient: below the median
  gradient there). If fewer than 20 voxels qualify, the brain mean is used and
  a warning is logged.
"""

from __future__ import annotations

import logging

import numpy as np
from scipy import ndimage

from .mask import largest_component

__all__ = ["csf_mask", "apply_reference"]

logger = logging.getLogger(__name__)


def csf_mask(magnitude, mask, voxel_size, depth_mm=25.0):
    """Ventricular CSF mask from the magnitude (see module docstring)."""
    mag = np.asarray(magnitude, dtype=np.float32)
    if mag.ndim == 4:
        mag = np.sqrt(np.sum(mag**2, axis=3))
    mask = np.asarray(mask, dtype=bool)
    depth = ndimage.distance_transform_edt(mask, sampling=voxel_size)
    central = depth > depth_mm
    if central.sum() < 20:
        return np.zeros_like(mask)
    sm = ndimage.gaussian_filter(mag, [1.0 / float(d) for d in voxel_size])
    g = np.sqrt(sum(ndimage.sobel(sm, axis=a) ** 2 for a in range(3)))
    bright = sm > np.percentile(sm[central], 85)
    flat = g < np.median(g[central])
    return largest_component(central & bright & flat)


def apply_reference(chi_ppm, mask, method="none", magnitude=None, voxel_size=(1.0, 1.0, 1.0)):
    """Reference ``chi_ppm``; returns ``(chi_ppm, reference_value_ppm)``."""
    chi = np.asarray(chi_ppm, dtype=np.float32)
    mask = np.asarray(mask, dtype=bool)
    if method == "none":
        return chi, 0.0
    if method == "csf":
        if magnitude is None:
            raise ValueError("CSF referencing needs the magnitude")
        region = csf_mask(magnitude, mask, voxel_size) & mask
        if region.sum() < 20:
            logger.warning("CSF referencing: no ventricles found (%d voxels); using the brain mean",
                           int(region.sum()))
            region = mask
    elif method == "brain":
        region = mask
    else:
        raise ValueError(f"unknown reference {method!r}")
    ref = float(chi[region].mean()) if region.any() else 0.0
    return np.where(mask, chi - ref, 0).astype(np.float32), ref
