"""The digital head: tissue maps, susceptibility and MR parameters in template space.

Everything here lives on an *extended template grid*: nilearn's shipped 1 mm
MNI152 2009 symmetric grid (``MNI152NLin2009aSym``) with 48 mm added below
it, so the neck continues under the brainstem and the background field of
the head is not cut at the bottom of the brain. Built once per process
(:func:`head_model`), then warped per subject by :mod:`.forward`.

Compartments
------------
- intracranial space: the template's non-zero T1 (brain + CSF), with GM/WM
  probabilities from nilearn's maps and CSF = the rest;
- skull: 0-7 mm outside it (cortical bone, -2.2 ppm relative to water);
- scalp and soft tissue: 7-13 mm, a face block and a neck (0 ppm vs water);
- large veins (superior sagittal, straight, transverse/sigmoid sinuses,
  internal cerebral veins; +0.35 ppm, deoxygenated blood), part of the
  brain's own (local) sources;
- air cavities inside the head (+9.4 ppm relative to tissue): frontal,
  ethmoid, sphenoid and maxillary sinuses, the nasal cavity, ear canals and
  mastoid air cells, kept at least 2 mm away from the brain;
- air outside.

Susceptibility of the forward model is expressed relative to air (outside
the head = 0), which makes zero padding exact: tissue is ``-9.4 + chi_water``.
The brain's own susceptibility (relative to water) is kept apart so the true
local field can be computed separately.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

logger = logging.getLogger(__name__)

__all__ = [
    "AIR_MINUS_TISSUE_PPM",
    "BONE_PPM",
    "GM_PPM",
    "WM_PPM",
    "EXTRA_BOTTOM_MM",
    "Tissue",
    "TISSUES",
    "HeadModel",
    "head_model",
    "spoiled_gre_amplitude",
    "air_cavities",
    "VEIN_PPM",
    "venous_sinuses",
]

#: Susceptibility of air relative to water/tissue (ppm): 0.36 - (-9.05).
AIR_MINUS_TISSUE_PPM = 9.4
#: Cortical bone relative to water (ppm), e.g. Buch et al. 2015 (~ -2.2).
BONE_PPM = -2.2
#: Generic cortical grey and white matter relative to water (ppm), unreferenced,
#: giving a GM/WM contrast of ~0.035 ppm (WM negative) as in QSM of adults.
GM_PPM = 0.010
WM_PPM = -0.025
#: Deoxygenated venous blood relative to water (ppm): Hct 0.4, Y 0.6, 4 pi 0.27 ppm -> ~0.35.
VEIN_PPM = 0.35
#: Millimetres added below the template grid for the neck.
EXTRA_BOTTOM_MM = 48

# R2* gain of iron-rich tissue per ppm of (positive) susceptibility, s^-1/ppm at 3 T
# (deep grey matter R2* vs chi slopes are ~100-150 s^-1/ppm in the literature).
R2STAR_PER_PPM = 120.0


@dataclass(frozen=True)
class Tissue:
    """MR properties of a compartment at 3 T (proton density, T1 in s, R2* in 1/s)."""

    pd: float
    t1: float
    r2star: float
    t1w: float  # MPRAGE-like T1-weighted brightness (0-1) outside the brain


TISSUES = {
    "gm": Tissue(pd=0.80, t1=1.60, r2star=20.0, t1w=0.45),
    "wm": Tissue(pd=0.70, t1=0.90, r2star=22.0, t1w=0.80),
    "csf": Tissue(pd=1.00, t1=4.00, r2star=4.0, t1w=0.10),
    "bone": Tissue(pd=0.08, t1=0.30, r2star=400.0, t1w=0.04),
    "soft": Tissue(pd=0.90, t1=0.50, r2star=35.0, t1w=0.70),
}


def spoiled_gre_amplitude(pd, t1, repetition_time, flip_angle_deg):
    """Steady-state spoiled GRE amplitude ``PD sin(a)(1-E1)/(1-cos(a)E1)`` (Ernst equation)."""
    a = np.deg2rad(flip_angle_deg)
    e1 = np.exp(-repetition_time / np.asarray(t1, dtype=float))
    return pd * np.sin(a) * (1 - e1) / (1 - np.cos(a) * e1)


# Air cavities: (name, centre mm (x, y, z), semi-axes mm) in MNI space; "bilateral" mirrors x.
_CAVITIES = (
    ("frontal_sinus", (0.0, 76.0, 2.0), (14.0, 7.0, 11.0), False),
    ("ethmoid_cells", (0.0, 50.0, -30.0), (11.0, 14.0, 9.0), False),
    ("sphenoid_sinus", (0.0, 18.0, -40.0), (12.0, 11.0, 9.0), False),
    ("maxillary_sinus", (29.0, 50.0, -60.0), (12.0, 15.0, 15.0), True),
    ("nasal_cavity", (0.0, 70.0, -55.0), (7.0, 24.0, 18.0), False),
    ("mastoid_cells", (50.0, -36.0, -48.0), (9.0, 11.0, 10.0), True),
)
# Ear canals: cylinders along x from |x| = 58 mm outwards at (y, z), radius mm.
_EAR_CANAL = (-22.0, -44.0, 4.0)


def air_cavities(world_xyz, brain_distance_mm, min_distance_mm=2.0):
    """Boolean mask of the air cavities of the head at the given world points.

    Parameters
    ----------
    world_xyz : tuple of 3 broadcastable arrays
        MNI coordinates (mm).
    brain_distance_mm : ndarray
        Distance to the intracranial space (mm); cavities are kept at least
        ``min_distance_mm`` away from it (there is always bone in between).
    """
    x, y, z = world_xyz
    air = np.zeros(np.broadcast_shapes(x.shape, y.shape, z.shape), dtype=bool)
    for _name, (cx, cy, cz), (ax, ay, az), bilateral in _CAVITIES:
        for sign in ((-1.0, 1.0) if bilateral else (1.0,)):
            air |= (((x - sign * cx) / ax) ** 2 + ((y - cy) / ay) ** 2 + ((z - cz) / az) ** 2) <= 1.0
    cy, cz, r = _EAR_CANAL
    air |= ((y - cy) ** 2 + (z - cz) ** 2 <= r * r) & (np.abs(x) >= 58.0)
    return air & (brain_distance_mm >= min_distance_mm)


# Dural sinuses as tubes along polylines (MNI mm), radius mm; "bilateral" mirrors x.
_SINUS_TUBES = (
    ("straight_sinus", ((0.0, -48.0, 12.0), (0.0, -75.0, 8.0), (0.0, -100.0, 4.0)), 2.5, False),
    ("transverse_sigmoid_sinus", ((2.0, -103.0, 3.0), (28.0, -97.0, -2.0), (46.0, -78.0, -10.0),
                                  (50.0, -55.0, -25.0), (42.0, -38.0, -42.0)), 3.5, True),
    ("internal_cerebral_vein", ((2.5, -8.0, 18.0), (1.5, -30.0, 16.0), (0.0, -48.0, 12.0)), 1.2, True),
)


def venous_sinuses(shape, affine, intracranial, inside_distance_mm):
    """Large veins of the brain (boolean, 1 mm grid): superior sagittal, straight,
    transverse/sigmoid sinuses and the internal cerebral veins.

    The superior sagittal sinus follows the template's own inner skull surface
    along the midline (a triangle 9 mm wide at the skull, 6 mm deep) from the
    frontal lobe over the vertex to the confluence; the others are tubes along
    polylines at their usual MNI positions. All stay inside the intracranial space.
    """
    idx = [np.arange(n, dtype=np.float32) for n in shape]
    x = (idx[0] * affine[0, 0] + affine[0, 3]).reshape(-1, 1, 1)
    y = (idx[1] * affine[1, 1] + affine[1, 3]).reshape(1, -1, 1)
    z = (idx[2] * affine[2, 2] + affine[2, 3]).reshape(1, 1, -1)
    theta = np.degrees(np.arctan2(z - 8.0, y + 17.0))
    theta = np.where(theta < -90, theta + 360, theta)
    sss = intracranial & (inside_distance_mm <= 6.0) & (np.abs(x) <= 4.5 - 0.6 * inside_distance_mm)
    sss &= (theta >= 15.0) & (theta <= 190.0)
    centre = np.zeros(shape, dtype=bool)
    inv = np.linalg.inv(affine)
    radius = np.zeros(shape, dtype=np.float32)
    for _name, points, r, bilateral in _SINUS_TUBES:
        for sign in ((-1.0, 1.0) if bilateral else (1.0,)):
            pts = np.array(points) * np.array([sign, 1.0, 1.0])
            for a, b in zip(pts[:-1], pts[1:]):
                n = int(np.ceil(np.linalg.norm(b - a) / 0.5)) + 1
                seg = a + np.linspace(0, 1, n)[:, None] * (b - a)
                vox = np.rint(seg @ inv[:3, :3].T + inv[:3, 3]).astype(int)
                ok = np.all((vox >= 0) & (vox < np.array(shape)), axis=1)
                centre[tuple(vox[ok].T)] = True
                radius[tuple(vox[ok].T)] = r
    # distance to the centre lines, computed in their bounding box only
    pts = np.argwhere(centre)
    lo = np.maximum(pts.min(axis=0) - 6, 0)
    hi = np.minimum(pts.max(axis=0) + 7, shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    dist, nearest = ndi.distance_transform_edt(~centre[box], return_indices=True)
    tubes = np.zeros(shape, dtype=bool)
    tubes[box] = dist <= radius[box][tuple(nearest)]
    return (sss | tubes) & intracranial


@dataclass
class HeadModel:
    """Template-space volumes of the digital head (extended 1 mm template grid).

    Attributes
    ----------
    affine : (4, 4) array
        Voxel -> MNI mm of the extended grid.
    crop : tuple of slices
        The original template grid inside the extended one.
    gm, wm, csf : float32 arrays
        Intracranial tissue fractions (sum to 1 inside, 0 outside).
    intracranial : bool array
    bone, soft, air_in_head : bool arrays
        Extracranial compartments (air_in_head = sinuses, canals).
    head : bool array
        Everything that is not outside air.
    t1w_brain : float32 array
        The template T1w intensity inside the brain (0-1).
    labels : int16 array
        The atlas labels on the extended grid (0 outside regions).
    veins : bool array
        Large veins (dural sinuses, internal cerebral veins), outside the labels.
    label_table : pandas.DataFrame
        ``index``, ``region``, ``hemisphere``.
    """

    affine: np.ndarray
    crop: tuple
    gm: np.ndarray
    wm: np.ndarray
    csf: np.ndarray
    intracranial: np.ndarray
    bone: np.ndarray
    soft: np.ndarray
    air_in_head: np.ndarray
    head: np.ndarray
    t1w_brain: np.ndarray
    labels: np.ndarray
    label_table: object
    veins: np.ndarray

    @property
    def shape(self):
        return self.gm.shape

    def chi_background_rel_air(self) -> np.ndarray:
        """Susceptibility (ppm, relative to air) of everything but the brain's own contrast.

        Intracranial space counts as water (-9.4 vs air); its own chi (relative to
        water) is the local source added separately.
        """
        chi = np.zeros(self.shape, dtype=np.float32)
        tissue = self.intracranial | self.bone | self.soft
        chi[tissue] = -AIR_MINUS_TISSUE_PPM
        chi[self.bone] += BONE_PPM
        return chi

    def gre_amplitude(self, repetition_time, flip_angle_deg) -> np.ndarray:
        """Spoiled-GRE amplitude (no T2* decay) of every compartment, partial volumes mixed."""
        amp = {k: float(spoiled_gre_amplitude(t.pd, t.t1, repetition_time, flip_angle_deg))
               for k, t in TISSUES.items()}
        out = amp["gm"] * self.gm + amp["wm"] * self.wm + amp["csf"] * self.csf
        out = out + amp["bone"] * self.bone + amp["soft"] * self.soft
        return out.astype(np.float32)

    def r2star_base(self) -> np.ndarray:
        """R2* (1/s) without the iron term."""
        r = {k: t.r2star for k, t in TISSUES.items()}
        out = r["gm"] * self.gm + r["wm"] * self.wm + r["csf"] * self.csf
        out = out + r["bone"] * self.bone + r["soft"] * self.soft
        out[self.air_in_head] = 0.0
        return out.astype(np.float32)

    def t1w_intensity(self) -> np.ndarray:
        """MPRAGE-like intensity (0-1): the template inside the brain, tissue values outside."""
        out = self.t1w_brain.copy()
        out += TISSUES["bone"].t1w * self.bone + TISSUES["soft"].t1w * self.soft
        return out.astype(np.float32)


def _load_template():
    import nibabel as nib

    from ..templates import template_path

    t1 = nib.load(str(template_path("T1w")))
    data = {k: np.asarray(nib.load(str(template_path(k))).dataobj, dtype=np.float32) / 255.0
            for k in ("T1w", "GM", "WM")}
    return t1.affine.copy(), data


@functools.lru_cache(maxsize=1)
def head_model() -> HeadModel:
    """Build (once per process) the digital head on the extended template grid.

    The regions are the pipeline's own default atlas, so region truth and region measure share it.
    """
    from ..atlas import default_atlas

    affine0, tpl = _load_template()
    atlas_img, label_table = default_atlas()
    if not np.allclose(atlas_img.affine, affine0) or atlas_img.shape[:3] != tpl["T1w"].shape:
        raise ValueError("the default atlas is not on the template grid")
    pad = EXTRA_BOTTOM_MM
    nx, ny, nz = tpl["T1w"].shape
    shape = (nx, ny, nz + pad)
    crop = (slice(0, nx), slice(0, ny), slice(pad, pad + nz))
    affine = affine0.copy()
    affine[2, 3] -= pad

    def extend(a, extrude):
        out = np.zeros(shape, dtype=a.dtype)
        out[crop] = a
        if extrude:  # the spinal cord/brainstem continues below the template
            out[:, :, :pad] = a[:, :, :1]
        return out

    t1 = extend(tpl["T1w"], True)
    gm = extend(tpl["GM"], True)
    wm = extend(tpl["WM"], True)
    intracranial = ndi.binary_fill_holes(t1 > 0.02)
    # Below the template the cord runs down a narrowing canal: keep the brainstem's
    # white matter core only.
    low = np.zeros(shape, dtype=bool)
    low[:, :, :pad] = True
    intracranial &= ~low | (wm > 0.5)
    gm = np.where(intracranial, gm, 0.0)
    wm = np.where(intracranial, wm, 0.0)
    s = gm + wm
    over = s > 1.0
    gm[over] /= s[over]
    wm[over] /= s[over]
    csf = np.where(intracranial, 1.0 - gm - wm, 0.0)

    logger.info("head model: distance map outside the intracranial space")
    dist = ndi.distance_transform_edt(~intracranial).astype(np.float32)
    idx = [np.arange(n, dtype=np.float32) for n in shape]
    x = (idx[0] + affine[0, 3]).reshape(-1, 1, 1)
    y = (idx[1] + affine[1, 3]).reshape(1, -1, 1)
    z = (idx[2] + affine[2, 3]).reshape(1, 1, -1)

    head = dist <= 13.0
    # Face block (orbits, nose, maxilla) and neck: soft tissue below and in front of the brain.
    face = ((x / 52.0) ** 2 + ((y - 52.0) / 42.0) ** 2 + ((z + 50.0) / 36.0) ** 2) <= 1.0
    neck = (((x / 56.0) ** 2 + ((y + 18.0) / 58.0) ** 2) <= 1.0) & (z <= -40.0)
    head |= face | neck
    bone = head & (dist > 0) & (dist <= 7.0)
    # The skull base and maxilla: bone in the face block near the brain.
    bone |= face & (dist > 0) & (dist <= 12.0)
    air_in_head = air_cavities((x, y, z), dist) & head
    bone &= ~air_in_head
    soft = head & ~intracranial & ~bone & ~air_in_head
    t1w_brain = np.where(intracranial, t1, 0.0).astype(np.float32)
    labels = np.zeros(shape, dtype=np.int16)
    labels[crop] = np.asarray(atlas_img.dataobj, dtype=np.int16)
    inside_dist = ndi.distance_transform_edt(intracranial).astype(np.float32)
    veins = venous_sinuses(shape, affine, intracranial, inside_dist) & (labels == 0)
    logger.info("head model ready: %d intracranial, %d bone, %d soft tissue, %d air-cavity, %d vein voxels",
                intracranial.sum(), bone.sum(), soft.sum(), air_in_head.sum(), veins.sum())
    return HeadModel(affine=affine, crop=crop, gm=gm.astype(np.float32), wm=wm.astype(np.float32),
                     csf=csf.astype(np.float32), intracranial=intracranial, bone=bone, soft=soft,
                     air_in_head=air_in_head, head=head, t1w_brain=t1w_brain, labels=labels,
                     label_table=label_table.copy(), veins=veins)
