"""A synthetic registration subject: the template through a known affine and smooth warp.

Used by the registration tests and ``benchmarks/bench_registration.py``: the subject's T1-like image
and its true native labels are the template and the default atlas resampled through the same known
mapping, so a registration's label transfer can be scored against the truth. Region truth here
shares the pipeline's default atlas (:func:`qsm_bids.atlas.default_atlas`) by construction.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import map_coordinates

from ..atlas import default_atlas
from ..templates import template_image

__all__ = ["DEEP", "synthetic_subject", "dice", "rotation"]

#: Planted susceptibility (ppm) of the deep grey nuclei in the registration tests.
DEEP = {"caudate": 0.06, "putamen": 0.08, "globus_pallidus": 0.18, "thalamus": 0.03,
        "red_nucleus": 0.12, "substantia_nigra_dorsal": 0.15, "substantia_nigra_ventral": 0.13,
        "hippocampus": 0.01, "amygdala": 0.015, "dentate_nucleus": 0.1}


def rotation(ax: int, deg: float) -> np.ndarray:
    """Rotation matrix by ``deg`` degrees about voxel axis ``ax``."""
    c, s = np.cos(np.radians(deg)), np.sin(np.radians(deg))
    i, j = [k for k in range(3) if k != ax]
    m = np.eye(3)
    m[i, i] = m[j, j] = c
    m[i, j], m[j, i] = -s, s
    return m


def synthetic_subject(shape, voxel, amp_mm=3.0, seed=0, pitch_deg=0.0):
    """(affine, T1-like image, true labels) on a native grid mapped into the template by T(x).

    ``pitch_deg`` adds a head pitch (rotation about the left-right axis) on top of the small
    default tilt, for the registration's robustness to oblique heads.
    """
    rng = np.random.default_rng(seed)
    a = rotation(0, 6 + pitch_deg) @ rotation(2, -4) * 1.04
    t = np.array([3.0, -5.0, 4.0])
    aff = np.diag(list(voxel) + [1.0])
    aff[:3, 3] = -np.asarray(voxel) * (np.asarray(shape) - 1) / 2 + np.array([0, -18, 18])
    xyz = aff[:3, :3] @ np.indices(shape, dtype=np.float32).reshape(3, -1) + aff[:3, 3:4]
    ph = rng.uniform(0, 2 * np.pi, 3)
    warp = np.stack([amp_mm * np.sin(2 * np.pi * xyz[(k + 1) % 3] / 90 + ph[k]) for k in range(3)])
    tpl_xyz = a @ xyz + t[:, None] + warp

    def sample(img, order):
        inv = np.linalg.inv(img.affine)
        v = inv[:3, :3] @ tpl_xyz + inv[:3, 3:4]
        if order == 0:
            v = np.rint(v)
        return map_coordinates(np.asarray(img.dataobj, np.float32), v, order=order, mode="constant").reshape(shape)

    atlas, _ = default_atlas()
    return aff, sample(template_image(1.0), 1), sample(atlas, 0).astype(np.int16)


def dice(a, b):
    return 2 * np.logical_and(a, b).sum() / max(a.sum() + b.sum(), 1)
