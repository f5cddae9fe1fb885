"""Pre- and post-conditions of the reconstruction, on arrays (no file I/O).

:func:`check_geometry` runs before any work: a header that says 10 mm voxels
(or 0.01 mm) is an error, and so is a background kernel that covers fewer
than a few voxels (SHARP with a sphere inside one voxel returns exactly zero).
:func:`check_map` runs on every map a step is about to record: all zero,
non-finite or physically implausible values inside the mask stop the step.
Both raise :class:`qsm_bids.errors.DataError` (exit 65) with one line; the
workflow prefixes the file it read.
"""

from __future__ import annotations

import numpy as np

from ..errors import DataError

__all__ = ["VOXEL_RANGE_MM", "MIN_KERNEL_VOXELS", "MAX_ABS_PPM", "check_geometry", "check_map",
           "kernel_radii_mm"]

#: Voxel edge lengths plausible for QSM (gradient-echo brain imaging at 1.5-11.7 T).
VOXEL_RANGE_MM = (0.1, 4.0)
#: The background kernel's radius must span at least this many voxels along every axis.
MIN_KERNEL_VOXELS = 1.5
#: Inside the mask, |chi| and |local field| beyond this (ppm, 99.9th percentile) are not tissue.
MAX_ABS_PPM = 5.0


def _fmt(voxel_size) -> str:
    return "x".join(f"{float(v):g}" for v in voxel_size)


def kernel_radii_mm(params) -> list:
    """(name, radius in mm) of every spherical kernel the background method uses."""
    if params.background == "sharp":
        return [("recon.sharp_radius_mm", float(params.sharp_radius_mm))]
    if params.background == "vsharp":
        return [("recon.vsharp_radii_mm", float(min(params.vsharp_radii_mm)))]
    return []


def check_geometry(voxel_size, shape, params, min_mask_voxels: int = 100) -> None:
    """Refuse voxel sizes and kernels that cannot give a meaningful QSM.

    Parameters
    ----------
    voxel_size : 3 floats, mm (from the NIfTI header)
    shape : the GRE grid (3 ints)
    params : ReconConfig
    min_mask_voxels : the fewest voxels a brain mask may keep after the kernel's erosion
    """
    vs = [float(v) for v in voxel_size]
    lo, hi = VOXEL_RANGE_MM
    if len(vs) != 3 or not all(np.isfinite(vs)) or min(vs) < lo or max(vs) > hi:
        raise DataError(f"voxel size {_fmt(vs)} mm is implausible for QSM (each edge {lo:g}-{hi:g} mm): the "
                        "header's pixdim/affine is probably wrong; fix the header (e.g. 1x1x2 mm for the "
                        "paper's protocol)")
    for name, radius in kernel_radii_mm(params):
        if radius / max(vs) < MIN_KERNEL_VOXELS:
            raise DataError(f"the {radius:g} mm background kernel ({name}) spans {radius / max(vs):.2g} "
                            f"voxel(s) of {_fmt(vs)} mm (at least {MIN_KERNEL_VOXELS:g} are needed): set "
                            f"{name} to at least {MIN_KERNEL_VOXELS * max(vs):g} mm or check the voxel size "
                            "in the header")
        # the brain cannot keep enough voxels once eroded by the kernel if the grid is tiny
        inner = [max(int(n) - 2 * int(np.ceil(radius / d)), 0) for n, d in zip(shape, vs)]
        if int(np.prod(inner)) < min_mask_voxels:
            raise DataError(f"the grid {'x'.join(map(str, shape))} at {_fmt(vs)} mm leaves "
                            f"{int(np.prod(inner))} voxels inside the {radius:g} mm kernel's erosion "
                            f"(fewer than {min_mask_voxels}): check the header's voxel size, or use a "
                            f"smaller {name}")


def check_map(values, mask, what: str, max_abs_ppm: float = MAX_ABS_PPM) -> None:
    """A map (ppm) about to be recorded: finite, not all zero and plausible inside ``mask``."""
    mask = np.asarray(mask, bool)
    inside = np.asarray(values)[mask] if mask.any() else np.asarray(values).ravel()
    if inside.size == 0:
        raise DataError(f"the {what} has an empty mask")
    bad = ~np.isfinite(inside)
    if bad.any():
        raise DataError(f"the {what} has {int(bad.sum())} non-finite voxel(s) inside the mask")
    if not np.any(inside):
        raise DataError(f"the {what} is exactly zero inside the mask ({inside.size} voxels): check the voxel "
                        "size in the header, the phase units and the background kernel")
    high = float(np.percentile(np.abs(inside), 99.9))
    if high > max_abs_ppm:
        raise DataError(f"the {what} reaches {high:.3g} ppm inside the mask (99.9th percentile of |value|; "
                        f"tissue stays within {max_abs_ppm:g}): check the phase units (Units, "
                        "--phase-units), the echo times and MagneticFieldStrength")
