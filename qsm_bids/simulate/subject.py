"""One simulated subject, in memory: :func:`simulate_subject`.

Geometry. The digital head (:mod:`.phantom`, template space) is deformed by
a smooth nonlinear displacement and a per-axis scaling, rotated (pitch, roll,
yaw) and shifted into the scanner, whose z axis is B0. The GRE slab follows
the head's pitch (AC-PC-like planning) when ``oblique`` is true, so the image
affine is oblique and B0 is not along the slice axis; roll and yaw stay in
the image. The FOV is centred on the brain.

Forward model. The susceptibility (relative to air: air 0, tissue -9.4 ppm +
its own chi, bone -2.2 ppm more) is sampled on a *fine grid* that subdivides
every acquisition voxel into ``oversample`` sub-voxels (default: at least 2
per axis, and sub-voxels of at most 1 mm, the template's resolution) and extends beyond the FOV to
the whole head; the field is the dipole convolution in k-space on that grid
zero-padded by ``pad_mm``. The complex GRE signal (spoiled-GRE amplitude,
T2* decay, phase from the field) is formed on the fine grid and averaged to
the acquisition voxel, so intravoxel dephasing near the sinuses darkens the
magnitude as on a scanner. Receive coils (smooth sensitivities, per-coil
phase offsets) and complex Gaussian noise at the stated SNR come last.
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import asdict, dataclass, field, replace

import numpy as np
from scipy import ndimage as ndi

from ..recon._ops import crop_box
from ..recon.dipole import b0_direction_from_affine
from . import forward as fw
from .cohort import sample_region_values
from .phantom import GM_PPM, R2STAR_PER_PPM, VEIN_PPM, WM_PPM, head_model

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_VOXEL_SIZE",
    "DEFAULT_MATRIX",
    "PAPER_VOXEL_SIZE",
    "PAPER_MATRIX",
    "DEFAULT_SNR",
    "Pose",
    "sample_pose",
    "atrophy_sites",
    "thinning_sites",
    "CORTICAL_REGIONS",
    "simulate_subject",
]

#: Default demo protocol: 2 mm isotropic, FOV 192 x 224 x 160 mm (whole brain).
DEFAULT_VOXEL_SIZE = (2.0, 2.0, 2.0)
DEFAULT_MATRIX = (96, 112, 80)
#: The paper's protocol: 256 x 224 x 80 at 1 x 1 x 2 mm.
PAPER_VOXEL_SIZE = (1.0, 1.0, 2.0)
PAPER_MATRIX = (256, 224, 80)
#: Default brain magnitude SNR at the first echo (mean brain magnitude / noise SD per channel).
DEFAULT_SNR = 35.0
#: T1w: 1 mm isotropic, 176 x 216 x 176 (whole head above the neck).
DEFAULT_T1W_MATRIX = (176, 216, 176)
DEFAULT_T1W_SNR = 40.0

# Brain centre of the template (MNI mm): the head rotates about it and the FOV is centred on it.
_BRAIN_CENTRE_MM = np.array([0.0, -17.0, 8.0])
# Magnitude scale (arbitrary units): brain magnitude of a few hundred.
_MAGNITUDE_SCALE = 1.0e4
_T1W_SCALE = 1000.0
# Fine texture of the brain's susceptibility (ppm SD) and its correlation length (mm, Gaussian sigma).
_TEXTURE_PPM = 0.004
_TEXTURE_SIGMA_MM = 0.8


@dataclass
class Pose:
    """Head position and shape of one subject.

    ``rotation_deg`` (pitch, roll, yaw) and ``translation_mm`` place the head in
    the scanner; ``scale`` stretches it per axis; ``modes`` are the plane-wave
    modes of the nonlinear displacement (see :func:`.forward.smooth_displacement`);
    ``atrophy`` are local shrinkages (see :func:`atrophy_sites`), each
    ``(label_index, centre_mm, volume_loss)``; ``thinning`` are cortical thinnings (see
    :func:`thinning_sites`), each ``(label_index, thickness_loss)``.
    """

    rotation_deg: tuple = (0.0, 0.0, 0.0)
    translation_mm: tuple = (0.0, 0.0, 0.0)
    scale: tuple = (1.0, 1.0, 1.0)
    modes: list = field(default_factory=list)
    atrophy: list = field(default_factory=list)
    thinning: list = field(default_factory=list)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["modes"] = [{"amplitude_mm": list(map(float, a)), "wave_vector_per_mm": list(map(float, w)),
                       "phase_rad": float(p)} for a, w, p in self.modes]
        d["atrophy"] = [{"label_index": int(i), "centre_mm": list(map(float, c)), "volume_loss": float(f),
                         "edge_sigma_mm": _ATROPHY_EDGE_MM} for i, c, f in self.atrophy]
        d["thinning"] = [{"label_index": int(i), "thickness_loss": float(f), "grown_mm": _THIN_GROW_MM,
                          "edge_sigma_mm": _ATROPHY_EDGE_MM} for i, f in self.thinning]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Pose":
        """The pose written by :meth:`to_dict` (ground-truth sidecars)."""
        return cls(tuple(d["rotation_deg"]), tuple(d["translation_mm"]), tuple(d["scale"]),
                   [(tuple(m["amplitude_mm"]), tuple(m["wave_vector_per_mm"]), m["phase_rad"]) for m in d["modes"]],
                   [(int(a["label_index"]), tuple(a["centre_mm"]), float(a["volume_loss"]))
                    for a in d.get("atrophy", [])],
                   [(int(a["label_index"]), float(a["thickness_loss"])) for a in d.get("thinning", [])])


_ATROPHY_EDGE_MM = 3.0  # sigma (mm) of the fall-off of the shrinkage outside a region (the shell takes up the slack)


@functools.lru_cache(maxsize=8)
def _atrophy_weight(label_index: int, grow_mm: float = 0.0):
    """1 inside the region (grown by ``grow_mm``), a Gaussian of the distance to it outside (sigma
    ``_ATROPHY_EDGE_MM``, 0 beyond 3 sigma), on the template grid (float32): the region itself is
    scaled uniformly, so it loses exactly the planted volume, and the map is smooth (zero slope) at
    its edge."""
    h = head_model()
    inside = h.labels == label_index
    w = np.zeros(h.shape, np.float32)
    if not inside.any():
        return w
    spacing = np.abs(np.diag(h.affine)[:3])
    reach = 3.0 * _ATROPHY_EDGE_MM + grow_mm
    box = crop_box(inside, [int(np.ceil(reach / d)) + 1 for d in spacing])
    dist = ndi.distance_transform_edt(~inside[box], sampling=spacing)
    dist = np.maximum(dist - grow_mm, 0.0)
    wb = np.exp(-0.5 * (dist / _ATROPHY_EDGE_MM) ** 2).astype(np.float32)
    wb[dist > 3.0 * _ATROPHY_EDGE_MM] = 0
    w[box] = wb
    return w


def _atrophy_gain(loss):
    return (1.0 - loss) ** (-1.0 / 3.0) - 1.0


def atrophy_sites(volume_loss: dict) -> list:
    """Local shrinkages of atlas regions, for :attr:`Pose.atrophy`.

    ``volume_loss`` maps a region name (both hemispheres) to the fraction of
    volume it loses, e.g. ``{"putamen": 0.15}``. Each hemisphere's region
    shrinks about its centroid c: the subject's point at template offset d
    shows the template at ``d (1 + a w)``, where w is the region's mask
    smoothed by ``_ATROPHY_EDGE_MM`` (1 inside, 0 a few mm out) and
    ``(1 + a)^3 = 1 / (1 - loss)``. Inside, the map is a uniform scaling, so
    the region loses ``loss`` of its volume; the shell just outside is
    stretched (as CSF spaces widen around an atrophic nucleus) and the map
    is the identity beyond it, so neighbours change only where they touch
    the region. The true native volumes are in the ground truth.

    A region of ``CORTICAL_REGIONS`` is not shrunk: its loss is a cortical thinning
    (:func:`thinning_sites`), validated here and left out of the returned list.

    Raises ValueError for an unknown region, a loss outside [0, 0.5), or a
    loss so large for the region's extent that the map would fold.

    Returns
    -------
    list of ``(label_index, centre_mm (3,), volume_loss)``.
    """
    h = head_model()
    table = h.label_table
    sites = []
    for region, loss in volume_loss.items():
        loss = float(loss)
        if not 0.0 <= loss < 0.5:
            raise ValueError(f"atrophy of {region!r}: the volume loss must lie in [0, 0.5), got {loss}")
        rows = table[table["region"] == region]
        if rows.empty:
            raise ValueError(f"atrophy: no atlas region {region!r} (regions: {sorted(set(table['region']))})")
        if loss == 0.0:
            continue
        if region in CORTICAL_REGIONS:
            continue  # a thinning (thinning_sites): any loss in [0, 0.5) is a valid one
        a = _atrophy_gain(loss)
        for idx in rows["index"]:
            vox = np.argwhere(h.labels == int(idx))
            centre_vox = vox.mean(axis=0)
            w = _atrophy_weight(int(idx))
            # the radial stretch 1 + a (w + d . grad w) must stay positive (no fold); d and the
            # gradient both in voxels, so their product needs no voxel size
            near = np.argwhere(w > 1e-3)
            grads = [g[tuple(near.T)] for g in np.gradient(w)]
            d_dot_grad = sum(grads[c] * (near[:, c] - centre_vox[c]) for c in range(3))
            radial = 1.0 + a * (w[tuple(near.T)] + d_dot_grad)
            if radial.min() < 0.5:
                raise ValueError(f"atrophy of {region!r}: a volume loss of {loss} folds the map at the "
                                 f"region's edge; use at most about {loss * 0.5 / (1 - radial.min()):.2f}")
            sites.append((int(idx), tuple(float(v) for v in centre_vox @ h.affine[:3, :3].T + h.affine[:3, 3]),
                          loss))
    return sites


#: Regions whose planted atrophy is a cortical thinning (the white-matter surface stays, the pial
#: surface moves in) rather than a shrinkage about the centroid, which would shorten a long gyrus too.
CORTICAL_REGIONS = ("precentral_gyrus", "pars_opercularis")
_THIN_GROW_MM = 1.0  # the region's weight is 1 up to this far outside the label (its pial side)
_THIN_STEPS = 8  # voxels followed along a cortical column (beyond any cortex of the template)


@functools.lru_cache(maxsize=8)
def _thinning_removal(label_index: int, loss: float):
    """Grey-matter fraction that a cortical thinning turns into CSF: ``(box, removed)`` on the template
    grid (float32 over the box of slices).

    A cortical column is followed from the white matter (``wm > 0.5``, kept) outwards along the gradient
    of the distance from it, in steps of one voxel, while that distance keeps growing (it stops at the
    CSF and at the ridge where two banks of a sulcus touch in the template). Summing the grey-matter
    fraction along it gives the column's thickness ``T`` (mm of grey matter, partial volumes counted)
    and, for each voxel, the grey matter outside it ``B``. The outer ``loss w T`` of the column
    becomes CSF (``w``: the region's weight, 1 in the region grown by ``_THIN_GROW_MM``, a Gaussian
    fall-off outside): a voxel loses ``clip(loss w T - B, 0, gm)``. The crowns recede, sulci widen and
    the white matter is untouched; 0.12 removes 9.3 % of the precentral grey matter off the white-matter
    voxels (a ridge is shared by two banks, and its column stops there).
    """
    h = head_model()
    w_full = _atrophy_weight(int(label_index), _THIN_GROW_MM)
    spacing = np.abs(np.diag(h.affine)[:3])
    box = crop_box(w_full > 0, [_THIN_STEPS + 2] * 3)
    w = w_full[box]
    gm, wm = h.gm[box], h.wm[box]
    white = wm > 0.5
    depth = ndi.distance_transform_edt(~white, sampling=spacing).astype(np.float32)
    grads = np.gradient(depth, *spacing)
    norm = np.maximum(np.sqrt(sum(g * g for g in grads)), 1e-6)
    grid = np.indices(depth.shape, dtype=np.float32)
    step = [grads[c] / norm / spacing[c] for c in range(3)]  # one voxel outwards, in voxel units
    ahead = [grid[c] + step[c] for c in range(3)]
    behind = [grid[c] - step[c] for c in range(3)]

    def sample(v, at):
        return ndi.map_coordinates(v, at, order=1, mode="nearest").astype(np.float32)

    tissue = ~white
    out_ok = tissue & (sample(depth, ahead) > depth + 0.5)  # the next voxel out is in the same column
    in_ok = tissue & (sample(depth, behind) < depth - 0.5) & (sample(white.astype(np.float32), behind) < 0.5)
    grey = np.where(tissue, gm, 0.0).astype(np.float32)
    beyond = np.zeros_like(grey)
    within = np.zeros_like(grey)
    for _ in range(_THIN_STEPS):
        beyond = np.where(out_ok, sample(grey + beyond, ahead), 0.0).astype(np.float32)
        within = np.where(in_ok, sample(grey + within, behind), 0.0).astype(np.float32)
    column = within + grey + beyond  # the column's grey matter, in voxels
    removed = np.clip(np.float32(loss) * w * column - beyond, 0.0, grey)
    return box, removed.astype(np.float32)


@functools.lru_cache(maxsize=2)
def _thinned_head(thinning: tuple):
    """The head model with the thinned regions' outer grey matter turned to CSF (GM, CSF and the T1w
    intensity changed by the same fraction; labels, white matter and everything outside the brain kept)."""
    h = head_model()
    gm, csf, t1 = h.gm.copy(), h.csf.copy(), h.t1w_brain.copy()
    brain = h.intracranial
    i_gm = float(np.median(h.t1w_brain[brain & (h.gm > 0.9)]))
    i_csf = float(np.median(h.t1w_brain[brain & (h.csf > 0.9)]))
    removed = np.zeros_like(gm)
    for label_index, loss in thinning:
        box, r = _thinning_removal(int(label_index), float(loss))
        # where two regions' fall-offs overlap (the hemispheres' medial surfaces) the larger removal holds
        np.maximum(removed[box], r, out=removed[box])
    gm -= removed
    csf += removed
    t1 += removed * np.float32(i_csf - i_gm)
    return replace(h, gm=gm, csf=csf, t1w_brain=t1)


def _head(thinning=()):
    """The head model of a subject: :func:`.phantom.head_model`, thinned where ``thinning`` says."""
    return _thinned_head(tuple(sorted((int(i), float(f)) for i, f in thinning))) if thinning else head_model()


def thinning_sites(thickness_loss: dict) -> list:
    """Cortical thinnings for :attr:`Pose.thinning`: the entries of ``thickness_loss`` (region name ->
    fraction of its cortical thickness lost, both hemispheres) that name a region of
    ``CORTICAL_REGIONS``; the others are shrinkages (:func:`atrophy_sites`, which validates all).

    Returns
    -------
    list of ``(label_index, thickness_loss)``.
    """
    table = head_model().label_table
    sites = []
    for region, loss in thickness_loss.items():
        if region not in CORTICAL_REGIONS or float(loss) == 0.0:
            continue
        for idx in table.loc[table["region"] == region, "index"]:
            sites.append((int(idx), float(loss)))
    return sites


def sample_pose(rng, rotation_sd_deg=(7.0, 3.0, 3.0), translation_sd_mm=4.0, scale_sd=0.04,
                deformation_mm=1.5, n_modes=3) -> Pose:
    """A random head pose and shape (rotations clipped at 2.5 SD)."""
    sd = np.asarray(rotation_sd_deg, dtype=float)
    rot = np.clip(rng.normal(0.0, sd), -2.5 * sd, 2.5 * sd)
    trans = rng.normal(0.0, translation_sd_mm, size=3)
    scale = np.exp(rng.normal(0.0, scale_sd) + rng.normal(0.0, scale_sd / 2, size=3))
    modes = []
    for _ in range(int(n_modes)):
        amp = rng.normal(0.0, deformation_mm, size=3)
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        wavelength = rng.uniform(60.0, 140.0)
        modes.append((tuple(amp), tuple(direction / wavelength), float(rng.uniform(0, 2 * np.pi))))
    return Pose(tuple(map(float, rot)), tuple(map(float, trans)), tuple(map(float, scale)), modes)


@functools.lru_cache(maxsize=2)
def _shared_volumes(repetition_time, flip_angle, thinning=()):
    h = _head(thinning)
    return h.chi_background_rel_air(), h.gre_amplitude(repetition_time, flip_angle), h.r2star_base()


@functools.lru_cache(maxsize=2)
def _t1w_intensity(thinning=()):
    return _head(thinning).t1w_intensity()


@functools.lru_cache(maxsize=2)
def _texture(seed):
    """Unit-SD Gaussian-correlated noise on the extended template grid (shared by a cohort)."""
    h = head_model()
    rng = np.random.default_rng([int(seed), 7919])
    t = rng.standard_normal(h.shape, dtype=np.float32)
    t = ndi.gaussian_filter(t, _TEXTURE_SIGMA_MM, truncate=3.0)
    t /= np.float32(t.std())
    return t


def _chi_brain_template(values_by_label, texture_shift, texture_seed, thinning=()):
    """Brain susceptibility (ppm, relative to water) on the extended template grid."""
    h = _head(thinning)
    lut = np.zeros(int(h.labels.max()) + 1, dtype=np.float32)
    for idx, v in values_by_label.items():
        lut[int(idx)] = v
    tissue = h.gm + h.wm
    chi = h.gm * np.float32(GM_PPM) + h.wm * np.float32(WM_PPM)
    inside = h.labels > 0
    chi[inside] = lut[h.labels[inside]] * tissue[inside]
    tex = np.roll(_texture(texture_seed), texture_shift, axis=(0, 1, 2))
    chi += np.float32(_TEXTURE_PPM) * tex * tissue
    chi[h.veins] = np.float32(VEIN_PPM)
    return chi


def _template_coords(grid_affine, shape, pose: Pose, head_affine):
    """Template voxel coordinates (3, *shape), float64, of the points of a grid in the scanner.

    ``u = c + S^-1 R^T (w - t)`` takes scanner points to the subject's head
    coordinates, ``v = u + d(u - c)`` to the template (d: smooth displacement).
    Everything before the displacement is affine in the grid indices, so it
    is built by broadcasting; each displacement mode is a plane wave, whose
    phase is affine in the indices too.
    """
    R = fw.rotation_matrix(pose.rotation_deg)
    S_inv = np.diag(1.0 / np.asarray(pose.scale, dtype=float))
    M = S_inv @ R.T  # scanner offset -> head offset
    L = M @ grid_affine[:3, :3]  # index -> head offset from the brain centre
    r0 = M @ (grid_affine[:3, 3] - np.asarray(pose.translation_mm))
    inv = np.linalg.inv(head_affine)  # diagonal: voxel = mm * inv[c, c] + inv[c, 3]
    idx = [np.arange(n, dtype=np.float64) for n in shape]
    g = [idx[0].reshape(-1, 1, 1), idx[1].reshape(1, -1, 1), idx[2].reshape(1, 1, -1)]
    coords = np.empty((3,) + tuple(shape), dtype=np.float64)
    for c in range(3):
        s = inv[c, c]
        coords[c] = (L[c, 0] * s) * g[0] + (L[c, 1] * s) * g[1] + (L[c, 2] * s) * g[2] \
            + ((r0[c] + _BRAIN_CENTRE_MM[c]) * s + inv[c, 3])
    for amp, wave, phi in pose.modes:
        k = 2 * np.pi * np.asarray(wave, dtype=float)
        lin = k @ L  # phase per index step
        gf = [a.astype(np.float32) for a in g]
        arg = (np.float32(lin[0]) * gf[0] + np.float32(lin[1]) * gf[1]) + np.float32(lin[2]) * gf[2]
        arg += np.float32(phi + k @ r0)
        wave_value = np.sin(arg, out=arg)
        for c in range(3):
            coords[c] += (amp[c] * inv[c, c]) * wave_value
    for label_index, centre_mm, loss in pose.atrophy:
        # radial map about the centre, only where the region is: sampling farther out shrinks it
        gain = fw.warp(_atrophy_weight(label_index), coords)
        gain *= np.float32(_atrophy_gain(loss))
        for c in range(3):
            cv = centre_mm[c] * inv[c, c] + inv[c, 3]
            coords[c] += (coords[c] - cv) * gain
        del gain
    return coords


def _acquisition_affine(voxel_size, matrix, pose: Pose, oblique: bool, centre_offset=(0.0, 0.0, 0.0)):
    """Image affine of a slab centred on the brain, following the head's pitch if ``oblique``."""
    R_slab = fw.rotation_matrix((pose.rotation_deg[0], 0.0, 0.0)) if oblique else np.eye(3)
    vox = np.asarray(voxel_size, dtype=float)
    centre = np.asarray(pose.translation_mm, dtype=float) + np.asarray(centre_offset, dtype=float)
    A = np.eye(4)
    A[:3, :3] = R_slab @ np.diag(vox)
    A[:3, 3] = centre - A[:3, :3] @ ((np.asarray(matrix, dtype=float) - 1) / 2)
    return A


@functools.lru_cache(maxsize=1)
def _head_points():
    """A sparse sample of the head's voxels (MNI mm, relative to the brain centre)."""
    h = head_model()
    pts = np.argwhere(h.head[::3, ::3, ::3]) * 3
    return pts @ h.affine[:3, :3].T + h.affine[:3, 3] - _BRAIN_CENTRE_MM


def _fine_domain(A_acq, matrix, factors, pose: Pose, margin_mm=6.0):
    """Margins (acquisition voxels below/above the FOV) so the fine grid covers the whole head."""
    R = fw.rotation_matrix(pose.rotation_deg)
    S = np.diag(pose.scale)
    w = _head_points() @ (R @ S).T + np.asarray(pose.translation_mm)
    p = (w - A_acq[:3, 3]) @ np.linalg.inv(A_acq[:3, :3]).T
    vox = np.linalg.norm(A_acq[:3, :3], axis=0)
    m = margin_mm / vox
    lo = np.maximum(0, np.ceil(-(p.min(axis=0) - m))).astype(int)
    hi = np.maximum(0, np.ceil(p.max(axis=0) + m - (np.asarray(matrix) - 1))).astype(int)
    return lo, hi


def _default_oversample(voxel_size, fine_voxel_mm=1.0):
    """Sub-voxels per axis: at least 2 (a grid finer than the acquisition) and of at most
    ``fine_voxel_mm`` (the template's resolution); 1 for voxels under 0.6 mm."""
    return tuple(1 if v < 0.6 else max(2, int(np.ceil(v / fine_voxel_mm - 1e-6))) for v in voxel_size)


def simulate_subject(seed=0, *, voxel_size=DEFAULT_VOXEL_SIZE, matrix=DEFAULT_MATRIX, echo_times=(0.020,),
                     snr=DEFAULT_SNR, coils=1, field_strength=3.0, repetition_time=0.028, flip_angle=15.0,
                     group="control", age=60.0, effect_scale=1.0, region_values=None, pose="random",
                     oblique=True, oversample=None, pad_mm=32.0, with_t1w=True,
                     t1w_matrix=DEFAULT_T1W_MATRIX, t1w_snr=DEFAULT_T1W_SNR, texture_seed=0,
                     rotation_sd_deg=(7.0, 3.0, 3.0), deformation_mm=1.5, atrophy=None, effects=None):
    """Simulate one subject's GRE (and T1w) data with its ground truth, in memory.

    Parameters
    ----------
    seed : int or sequence of int
        Seed of this subject's random stream (pose, region values, texture
        offset, coils, noise). Same seed, same arrays, bit for bit.
    voxel_size, matrix : 3 floats (mm), 3 ints
        The GRE acquisition grid (default 2 mm isotropic, 96 x 112 x 80).
    echo_times : sequence of float, s
    snr : float
        Mean brain magnitude at the first echo over the noise SD (per real
        and imaginary channel; per coil for coil-resolved data, with the
        sensitivities normalised to a root-sum-of-squares of 1 on average in
        the brain). ``inf`` for no noise.
    coils : int
        1: already combined data (one channel, a constant receiver phase).
        > 1: coil-resolved data with smooth sensitivities and phase offsets.
    field_strength : float, T
    repetition_time, flip_angle : s, degrees (spoiled-GRE contrast).
    group, age, effect_scale : the subject's group ("ALS" or "control"), age
        (years) and the scale of the planted ALS effects; used when
        ``region_values`` is None.
    region_values : DataFrame, optional
        ``region``, ``hemisphere``, ``planted_ppm`` to plant instead of drawing.
    pose : "random", "identity" or :class:`Pose`
    oblique : bool
        Slab follows the head's pitch (oblique affine) or the scanner axes.
    oversample : 3 ints, optional
        Sub-voxels per acquisition voxel of the forward model (default: at
        least 2 per axis and sub-voxels of at most 1 mm).
    pad_mm : float
        Zero padding of the k-space convolution on each axis (mm).
    with_t1w : bool
        Also simulate a 1 mm T1w image (``t1w_matrix``, Rician noise of SNR
        ``t1w_snr`` in white matter, a smooth bias field).
    texture_seed : int
        Seed of the fine susceptibility texture shared by a cohort.
    atrophy : dict, optional
        Region name -> fraction of volume lost (both hemispheres; see
        :func:`atrophy_sites`), or of cortical thickness lost for a region of
        ``CORTICAL_REGIONS`` (:func:`thinning_sites`), added to the pose's
        deformation; draws no random numbers, so the rest of the subject is unchanged.

    Returns
    -------
    dict
        ``magnitude``, ``phase`` (float32, (X, Y, Z, echoes) or
        (X, Y, Z, echoes, coils); phase wrapped into [-pi, pi)), ``affine``,
        ``voxel_size``, ``echo_times``, ``field_strength``, ``b0_dir`` (voxel
        axes), ``chi_ppm`` (voxel-averaged truth, relative to water, brain
        only), ``local_field_ppm`` (field of the brain's own sources),
        ``total_field_ppm`` (local + background, voxel-averaged),
        ``brain_mask`` (bool), ``labels`` (int16 atlas labels, native grid),
        ``label_table``, ``chi_template_ppm`` + ``template_affine`` (truth on
        the 1 mm template grid), ``region_values`` (DataFrame: index, region,
        hemisphere, planted_ppm, truth_median_ppm, n_voxels), ``noise_sigma``,
        ``pose`` (dict), ``params`` (dict), and ``t1w`` + ``t1w_affine`` when
        ``with_t1w``, with ``t1w_region_volumes`` (DataFrame: index, region,
        hemisphere, volume_mm3: the atlas labels on the T1w grid, the true
        native volumes).
    """
    t_start = time.perf_counter()
    rng = np.random.default_rng(seed)
    h = head_model()
    voxel_size = tuple(float(v) for v in voxel_size)
    matrix = tuple(int(n) for n in matrix)
    echo_times = tuple(float(t) for t in echo_times)
    if not echo_times or any(t <= 0 for t in echo_times):
        raise ValueError("echo times must be positive (seconds)")
    if isinstance(pose, Pose):
        pose_ = pose
    elif pose == "identity":
        pose_ = Pose()
    elif pose == "random":
        pose_ = sample_pose(rng, rotation_sd_deg=rotation_sd_deg, deformation_mm=deformation_mm)
    else:
        raise ValueError(f"pose must be 'random', 'identity' or a Pose, not {pose!r}")
    if atrophy:
        pose_ = replace(pose_, atrophy=list(pose_.atrophy) + atrophy_sites(atrophy),
                        thinning=list(pose_.thinning) + thinning_sites(atrophy))
    if region_values is None:
        region_values = sample_region_values(group, age, rng, effect_scale=effect_scale, effects=effects)
    table = h.label_table.merge(region_values, on=["region", "hemisphere"], how="left")
    if table["planted_ppm"].isna().any():
        missing = table.loc[table["planted_ppm"].isna(), "region"].tolist()
        raise ValueError(f"no planted value for atlas regions {missing}")
    texture_shift = tuple(int(s) for s in rng.integers(-40, 41, size=3))
    thinning = tuple((int(i), float(f)) for i, f in pose_.thinning)
    chi_tpl = _chi_brain_template(dict(zip(table["index"], table["planted_ppm"])), texture_shift, texture_seed,
                                  thinning)
    chi_bg_tpl, amp_tpl, r2_tpl = _shared_volumes(float(repetition_time), float(flip_angle), thinning)

    # --- grids --------------------------------------------------------------
    A_acq = _acquisition_affine(voxel_size, matrix, pose_, oblique)
    b0_dir = b0_direction_from_affine(A_acq)
    f = tuple(int(v) for v in (oversample or _default_oversample(voxel_size)))
    lo, hi = _fine_domain(A_acq, matrix, f, pose_)
    n_ext = np.asarray(matrix) + lo + hi
    fine_shape = tuple(int(v) for v in n_ext * np.asarray(f))
    fine_vox = tuple(v / k for v, k in zip(voxel_size, f))
    T = np.eye(4)
    T[:3, :3] = np.diag(1.0 / np.asarray(f, dtype=float))
    T[:3, 3] = 0.5 / np.asarray(f) - 0.5 - lo
    A_fine = A_acq @ T
    logger.debug("fine grid %s at %s mm (FOV %s, margins %s/%s)", fine_shape, fine_vox, matrix, lo, hi)

    # --- susceptibility and MR parameters on the fine grid -----------------------
    coords = _template_coords(A_fine, fine_shape, pose_, h.affine)
    chi_brain = fw.warp(chi_tpl, coords)
    chi_bg = fw.warp(chi_bg_tpl, coords)
    amplitude = fw.warp(amp_tpl, coords)
    r2star = fw.warp(r2_tpl, coords)
    del coords
    r2star += np.float32(R2STAR_PER_PPM) * np.maximum(chi_brain, 0)

    # --- fields ----------------------------------------------------------------
    pad = tuple(int(np.ceil(pad_mm / v)) for v in fine_vox)
    field_local = fw.field_from_chi(chi_brain, fine_vox, b0_dir, pad)
    field_total = fw.field_from_chi(chi_bg, fine_vox, b0_dir, pad)
    del chi_bg
    field_total += field_local

    # the FOV's sub-voxels on the fine grid
    fov = tuple(slice(int(a) * k, (int(a) + n) * k) for a, n, k in zip(lo, matrix, f))

    def to_acq(x):
        return fw.block_average(x[fov], f)

    chi_native = to_acq(chi_brain)
    local_native = to_acq(field_local)
    total_native = to_acq(field_total)
    del chi_brain, field_local
    signals = []
    for te in echo_times:
        s = fw.gre_signal(amplitude, r2star, field_total, te, field_strength)
        signals.append(to_acq(s) * np.float32(_MAGNITUDE_SCALE))
    del amplitude, r2star, field_total
    signal = np.stack(signals, axis=-1)  # (X, Y, Z, E) complex64

    # --- truth on the acquisition grid ----------------------------------------------
    acq_coords = _template_coords(A_acq, matrix, pose_, h.affine)
    brain_mask = fw.warp(h.intracranial.astype(np.float32), acq_coords) >= 0.5
    labels = fw.warp(h.labels, acq_coords, order=0).astype(np.int16)
    labels[~brain_mask] = 0
    del acq_coords
    chi_native[~brain_mask] = 0.0

    # --- coils and noise --------------------------------------------------------------
    if int(coils) > 1:
        idx = np.indices(matrix, dtype=np.float32).reshape(3, -1)
        world = (A_acq[:3, :3] @ idx + A_acq[:3, 3:]).reshape((3,) + matrix)
        sens = fw.coil_sensitivities(world, np.asarray(pose_.translation_mm), int(coils), rng)
        rss = np.sqrt((np.abs(sens) ** 2).sum(axis=-1))
        sens /= np.float32(rss[brain_mask].mean())
        signal = signal[..., None] * sens[..., None, :]  # (X, Y, Z, E, C)
        ref = np.abs(signals[0])[brain_mask].mean()
    else:
        phase0 = rng.uniform(-np.pi, np.pi)
        signal = signal * np.complex64(np.exp(1j * phase0))
        ref = np.abs(signals[0])[brain_mask].mean()
    sigma = float(ref / snr) if np.isfinite(snr) and snr > 0 else 0.0
    if sigma > 0:
        signal = fw.add_complex_noise(signal, sigma, rng)
    magnitude = np.abs(signal).astype(np.float32)
    phase = fw.wrap_phase(np.angle(signal).astype(np.float32))
    del signal

    # --- region truth --------------------------------------------------------------------
    truth_median, n_vox = [], []
    for idx in table["index"]:
        sel = labels == idx
        n_vox.append(int(sel.sum()))
        truth_median.append(float(np.median(chi_native[sel])) if sel.any() else float("nan"))
    table = table.assign(truth_median_ppm=truth_median, n_voxels=n_vox)

    out = {
        "magnitude": magnitude,
        "phase": phase,
        "affine": A_acq,
        "voxel_size": voxel_size,
        "echo_times": echo_times,
        "field_strength": float(field_strength),
        "b0_dir": b0_dir,
        "chi_ppm": chi_native.astype(np.float32),
        "local_field_ppm": local_native.astype(np.float32),
        "total_field_ppm": total_native.astype(np.float32),
        "brain_mask": brain_mask,
        "labels": labels,
        "label_table": h.label_table.copy(),
        "chi_template_ppm": chi_tpl[h.crop].copy(),
        "template_affine": _template_affine(h),
        "region_values": table,
        "noise_sigma": sigma,
        "pose": pose_.to_dict(),
        "params": {
            "seed": seed if np.isscalar(seed) else list(map(int, seed)),
            "voxel_size_mm": voxel_size, "matrix": matrix, "echo_times_s": echo_times, "snr": snr,
            "coils": int(coils), "field_strength_T": float(field_strength),
            "repetition_time_s": float(repetition_time), "flip_angle_deg": float(flip_angle),
            "oblique": bool(oblique), "oversample": f, "fine_grid_shape": fine_shape, "pad_mm": float(pad_mm),
            "texture_seed": int(texture_seed), "noise_sigma": sigma,
        },
    }
    if with_t1w:
        out["t1w"], out["t1w_affine"], out["t1w_region_volumes"] = _simulate_t1w(
            pose_, oblique, t1w_matrix, t1w_snr, rng)
    logger.debug("subject simulated in %.1f s", time.perf_counter() - t_start)
    return out


def _template_affine(h):
    A = h.affine.copy()
    A[2, 3] += h.crop[2].start
    return A


def _simulate_t1w(pose: Pose, oblique, matrix, snr, rng):
    """A 1 mm MPRAGE-like image: template intensities, smooth bias field, Rician noise (int16)."""
    h = head_model()
    matrix = tuple(int(n) for n in matrix)
    A = _acquisition_affine((1.0, 1.0, 1.0), matrix, pose, oblique, centre_offset=(0.0, 0.0, 10.0))
    coords = _template_coords(A, matrix, pose, h.affine)
    thinning = tuple((int(i), float(f)) for i, f in pose.thinning)
    img = fw.warp(_t1w_intensity(thinning), coords)
    labels = fw.warp(h.labels, coords, order=0)
    gm = fw.warp(_head(thinning).gm, coords)
    del coords
    n_labels = int(h.labels.max()) + 1
    counts = np.bincount(labels.ravel(), minlength=n_labels)
    gm_in = np.bincount(labels.ravel(), weights=gm.ravel(), minlength=n_labels)
    volumes = h.label_table[["index", "region", "hemisphere"]].copy()
    volumes["volume_mm3"] = counts[volumes["index"].to_numpy()].astype(float)  # 1 mm voxels
    # the template's grey-matter fraction carried along: what a thinning or a shrinkage removes of GM
    volumes["gm_volume_mm3"] = gm_in[volumes["index"].to_numpy()].astype(float)
    del labels, gm
    # Bias field: exp of a random low-order polynomial over the FOV (+-20 %).
    axes = [np.linspace(-1, 1, n, dtype=np.float32) for n in matrix]
    g = [axes[0].reshape(-1, 1, 1), axes[1].reshape(1, -1, 1), axes[2].reshape(1, 1, -1)]
    c = rng.normal(0.0, 0.08, size=6).astype(np.float32)
    bias = np.exp(c[0] * g[0] + c[1] * g[1] + c[2] * g[2] + c[3] * g[0] * g[1] + c[4] * g[2] ** 2
                  + c[5] * g[0] ** 2)
    img = img * bias
    sigma = np.float32(0.8 / snr)
    noise = rng.standard_normal(matrix + (2,), dtype=np.float32) * sigma
    img = np.sqrt((img + noise[..., 0]) ** 2 + noise[..., 1] ** 2)
    t1w = np.clip(np.round(img * _T1W_SCALE), 0, 32767).astype(np.int16)
    return t1w, A, volumes
