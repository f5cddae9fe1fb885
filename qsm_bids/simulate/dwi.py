"""Diffusion-weighted images of a simulated subject: :func:`simulate_dwi`.

Protocol (the paper's): single-shot EPI-like DWI, b = 1000 s/mm^2 along 30
directions spread by electrostatic repulsion (DIPY's ``disperse_charges``,
fixed seed: one scheme for the whole cohort) plus two b = 0 volumes, 2 mm
isotropic, Rician noise at a stated SNR (mean brain b = 0 signal over the
noise SD of each channel). No EPI distortion and no eddy currents.

Tissue model. Each compartment has a T2-weighted b = 0 signal (proton
density x exp(-TE/T2) at TE ~ 80 ms) and a diffusion tensor:

============================  ======  ===========================  ======
compartment                    S0      tensor                       FA
============================  ======  ===========================  ======
cortical/deep grey matter      0.33    isotropic, 0.80e-3 mm^2/s    0
CSF                            0.96    isotropic, 3.0e-3            0
corticospinal tract (atlas)    0.22    AD 1.6e-3, along the tract   0.70
corpus callosum (midline WM)   0.22    AD 1.7e-3, left-right        0.75
other white matter             0.22    AD 1.4e-3, anterior-post.    0.45
scalp (fat-suppressed)         0.08    isotropic, 1.0e-3            0
============================  ======  ===========================  ======

Principal directions come from the tract geometry on the template: along
the CST the direction is the tangent of its centre line (the centroid of the
atlas label per axial slice, per hemisphere, smoothed); the corpus callosum
(white matter within 8 mm of the midline between the frontal and occipital
horns, 0-35 mm above the AC) runs left-right; the rest of the white matter
is modelled as anterior-posterior association fibres. The directions are
carried into the scanner by the head's rotation and scaling (the smooth
nonlinear displacement's own rotation, under 2 degrees, is neglected).

The signal is formed on a grid of sub-voxels (default 1 mm, as the template)
as the fraction-weighted sum of the compartments' signals, then averaged to
the acquisition voxel, so partial volumes mix in signal space as on a
scanner. A planted change lowers the FA of a subject's CST (``cst_fa``).
"""

from __future__ import annotations

import functools
import logging

import numpy as np
from scipy import ndimage as ndi

from ..diffusion import METRICS, TensorModel, radial_diffusivity_for_fa, tensor_metrics
from . import forward as fw
from .phantom import head_model

logger = logging.getLogger(__name__)

__all__ = [
    "CST_AXIAL",
    "CST_FA",
    "DWI_B",
    "DWI_MATRIX",
    "DWI_SNR",
    "DWI_VOXEL_SIZE",
    "ECHO_TIME_S",
    "FA_PER_PPM",
    "TENSORS",
    "add_rician_noise",
    "compartment_tensors",
    "cst_fa_for_subject",
    "dwi_signal",
    "gradient_scheme",
    "simulate_dwi",
]

DWI_VOXEL_SIZE = (2.0, 2.0, 2.0)
DWI_MATRIX = (96, 112, 76)
#: b = 0 SNR in the brain (mean brain b = 0 signal / noise SD per channel).
DWI_SNR = 30.0
DWI_B = 1000.0
ECHO_TIME_S = 0.080
#: Planted FA of the healthy CST and its axial diffusivity (mm^2/s).
CST_FA = 0.70
CST_AXIAL = 1.6e-3
#: Patients' CST FA change per ppm of CST susceptibility change (FA falls as chi falls).
FA_PER_PPM = 6.0
#: Between-subject SD of the CST FA, independent of susceptibility.
CST_FA_SD = 0.015

# name: (S0, axial mm^2/s, FA); isotropic compartments have FA 0.
TENSORS = {
    "gm": (0.33, 0.80e-3, 0.0),
    "csf": (0.96, 3.0e-3, 0.0),
    "cst": (0.22, CST_AXIAL, CST_FA),
    "callosum": (0.22, 1.7e-3, 0.75),
    "wm": (0.22, 1.4e-3, 0.45),
    "soft": (0.08, 1.0e-3, 0.0),
}
# white-matter compartment codes on the template
_WM_OTHER, _CST_L, _CST_R, _CALLOSUM = 0, 1, 2, 3


def gradient_scheme(n_directions: int = 30, n_b0: int = 2, b: float = DWI_B, seed: int = 0):
    """``(bvals, bvecs)``: ``n_b0`` b = 0 volumes (first and middle) and ``n_directions`` unit vectors.

    Directions: DIPY's electrostatic repulsion on the hemisphere from a seeded
    random start, so the scheme is the same for every subject (computed once per process).
    """
    bvals, bvecs = _gradient_scheme(int(n_directions), int(n_b0), float(b), int(seed))
    return bvals.copy(), bvecs.copy()


@functools.lru_cache(maxsize=4)
def _gradient_scheme(n_directions: int, n_b0: int, b: float, seed: int):
    from dipy.core.sphere import HemiSphere, disperse_charges

    rng = np.random.default_rng(seed)
    theta = np.arccos(rng.uniform(0, 1, n_directions))
    phi = rng.uniform(0, 2 * np.pi, n_directions)
    hemi = HemiSphere(theta=theta, phi=phi)
    hemi, _ = disperse_charges(hemi, 5000)
    dirs = np.asarray(hemi.vertices, dtype=float)
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    n = n_directions + n_b0
    b0_at = [round(k * n / max(n_b0, 1)) for k in range(n_b0)]
    bvals = np.full(n, float(b))
    bvecs = np.zeros((n, 3))
    bvals[b0_at] = 0.0
    bvecs[[i for i in range(n) if i not in b0_at]] = dirs
    return bvals, bvecs


def cst_fa_for_subject(group: str, region_values, rng, *, patient_group: str = "ALS", fa=CST_FA,
                       fa_per_ppm=FA_PER_PPM, fa_sd=CST_FA_SD, control_ppm=None) -> dict:
    """Planted CST FA per hemisphere: ``FA + sd z`` for everyone, plus ``fa_per_ppm`` times the
    subject's CST susceptibility change (planted minus control value) for patients.

    ``region_values``: the subject's planted values (``region``, ``hemisphere``,
    ``planted_ppm``); ``control_ppm``: the control CST value per hemisphere
    (default: the cohort table's).
    """
    from .cohort import region_table

    if control_ppm is None:
        t = region_table()
        t = t[t["region"] == "corticospinal_tract"]
        control_ppm = dict(zip(t["hemisphere"], t["control_ppm"]))
    rv = region_values[region_values["region"] == "corticospinal_tract"]
    planted = dict(zip(rv["hemisphere"], rv["planted_ppm"]))
    out = {}
    for hemi in ("L", "R"):
        value = fa + fa_sd * rng.standard_normal()
        if group == patient_group:
            value += fa_per_ppm * (planted[hemi] - control_ppm[hemi])
        out[hemi] = float(np.clip(value, 0.3, 0.9))
    return out


def compartment_tensors(cst_fa: dict | None = None) -> dict:
    """Axial and radial diffusivity per white-matter code (``_WM_OTHER``, ``_CST_L``, ...)."""
    cst_fa = cst_fa or {"L": CST_FA, "R": CST_FA}
    out = {}
    for code, name, fa in ((_WM_OTHER, "wm", None), (_CST_L, "cst", cst_fa["L"]),
                           (_CST_R, "cst", cst_fa["R"]), (_CALLOSUM, "callosum", None)):
        _, axial, fa0 = TENSORS[name]
        f = fa0 if fa is None else fa
        out[code] = (axial, float(radial_diffusivity_for_fa(axial, f)))
    return out


def dwi_signal(fractions: dict, wm_direction, wm_axial, wm_radial, bval: float, bvec):
    """Noise-free signal of one volume: sum over compartments of ``f S0 exp(-b g^T D g)``.

    Parameters
    ----------
    fractions : dict name -> array
        ``gm``, ``csf``, ``wm``, ``soft`` volume fractions (same shape).
    wm_direction : (3, ...) array
        Unit principal direction of the white matter (voxel axes).
    wm_axial, wm_radial : arrays
        White-matter diffusivities (mm^2/s).
    bval, bvec : the volume's b-value and unit gradient (voxel axes).
    """
    g = np.asarray(bvec, dtype=np.float32)
    b = np.float32(bval)
    gv = g[0] * wm_direction[0] + g[1] * wm_direction[1] + g[2] * wm_direction[2]
    q = wm_radial + (wm_axial - wm_radial) * gv * gv
    s = np.float32(TENSORS["wm"][0]) * fractions["wm"] * np.exp(-b * q)
    for name in ("gm", "csf", "soft"):
        s0, d, _ = TENSORS[name]
        s += np.float32(s0 * np.exp(-float(b) * d)) * fractions[name]
    return s


def add_rician_noise(signal, sigma: float, rng):
    """``|S + n1 + i n2|`` with Gaussian n1, n2 of SD ``sigma`` (magnitude image)."""
    if sigma <= 0:
        return np.asarray(signal, dtype=np.float32).copy()
    n = rng.standard_normal((2,) + signal.shape, dtype=np.float32) * np.float32(sigma)
    return np.sqrt((signal + n[0]) ** 2 + n[1] ** 2)


@functools.lru_cache(maxsize=1)
def _template_tracts():
    """White-matter code per template voxel and the CST centre-line tangent per slice and side."""
    h = head_model()
    idx = {(r.region, r.hemisphere): int(r.index) for r in h.label_table.itertuples()}
    code = np.zeros(h.shape, dtype=np.int8)
    nx, ny, nz = h.shape
    x = (np.arange(nx) * h.affine[0, 0] + h.affine[0, 3]).reshape(-1, 1, 1)
    y = (np.arange(ny) * h.affine[1, 1] + h.affine[1, 3]).reshape(1, -1, 1)
    z = (np.arange(nz) * h.affine[2, 2] + h.affine[2, 3]).reshape(1, 1, -1)
    callosum = (np.abs(x) <= 8.0) & (y >= -40.0) & (y <= 35.0) & (z >= 0.0) & (z <= 35.0) & (h.wm >= 0.5)
    code[callosum] = _CALLOSUM
    tangents = {}
    for hemi, c in (("L", _CST_L), ("R", _CST_R)):
        m = h.labels == idx[("corticospinal_tract", hemi)]
        code[m] = c
        zs = np.flatnonzero(m.any(axis=(0, 1)))
        cx = np.array([np.argwhere(m[:, :, k])[:, 0].mean() for k in zs])
        cy = np.array([np.argwhere(m[:, :, k])[:, 1].mean() for k in zs])
        cx = ndi.gaussian_filter1d(cx, 4.0, mode="nearest")
        cy = ndi.gaussian_filter1d(cy, 4.0, mode="nearest")
        t = np.zeros((nz, 3))
        t[:, 2] = 1.0
        t[zs, 0] = np.gradient(cx) * abs(h.affine[0, 0])
        t[zs, 1] = np.gradient(cy) * abs(h.affine[1, 1])
        tangents[hemi] = t / np.linalg.norm(t, axis=1, keepdims=True)
    return code, tangents


def _wm_directions(code, z_index, tangents):
    """Template-axis unit directions (3, ...) of the white matter at each point."""
    d = np.zeros((3,) + code.shape, dtype=np.float32)
    d[1] = 1.0  # association fibres: anterior-posterior
    cc = code == _CALLOSUM
    d[:, cc] = np.array([1.0, 0.0, 0.0], dtype=np.float32)[:, None]
    for hemi, c in (("L", _CST_L), ("R", _CST_R)):
        sel = code == c
        if sel.any():
            d[:, sel] = tangents[hemi][z_index[sel]].T.astype(np.float32)
    return d


def simulate_dwi(pose, *, rng, cst_fa: dict | None = None, voxel_size=DWI_VOXEL_SIZE, matrix=DWI_MATRIX,
                 snr: float = DWI_SNR, n_directions: int = 30, n_b0: int = 2, b: float = DWI_B,
                 oblique: bool = True, oversample=None, with_truth: bool = True) -> dict:
    """Simulate one subject's DWI in the scanner (same head pose as its GRE and T1w).

    Parameters
    ----------
    pose : :class:`qsm_bids.simulate.subject.Pose`
    rng : numpy Generator (noise)
    cst_fa : {"L": fa, "R": fa} or None
        Planted CST FA per hemisphere (default: ``CST_FA``), axial diffusivity kept.
    voxel_size, matrix, snr, n_directions, n_b0, b, oblique : the protocol.
    oversample : 3 ints or None
        Sub-voxels per axis (default: sub-voxels of at most 1 mm).
    with_truth : bool
        Also fit the noise-free signal in the CST (the truth a perfect pipeline
        would measure, partial volumes included).

    Returns
    -------
    dict: ``dwi`` (X, Y, Z, N float32), ``affine``, ``bvals``, ``bvecs`` (voxel
    axes), ``labels`` (native atlas labels), ``brain_mask``, ``noise_sigma``,
    ``cst_truth`` (DataFrame: region, hemisphere, metric, planted, truth_median,
    n_voxels) and ``params``.
    """
    import pandas as pd

    from .subject import _acquisition_affine, _default_oversample, _template_coords

    h = head_model()
    code_tpl, tangents = _template_tracts()
    voxel_size = tuple(float(v) for v in voxel_size)
    matrix = tuple(int(n) for n in matrix)
    cst_fa = dict(cst_fa or {"L": CST_FA, "R": CST_FA})
    bvals, bvecs = gradient_scheme(n_directions, n_b0, b)

    A = _acquisition_affine(voxel_size, matrix, pose, oblique)
    f = tuple(int(v) for v in (oversample or _default_oversample(voxel_size)))
    fine_shape = tuple(n * k for n, k in zip(matrix, f))
    T = np.eye(4)
    T[:3, :3] = np.diag(1.0 / np.asarray(f, dtype=float))
    T[:3, 3] = 0.5 / np.asarray(f) - 0.5
    coords = _template_coords(A @ T, fine_shape, pose, h.affine)
    fractions = {"gm": fw.warp(h.gm, coords), "wm": fw.warp(h.wm, coords), "csf": fw.warp(h.csf, coords),
                 "soft": fw.warp(h.soft.astype(np.float32), coords)}
    code = fw.warp(code_tpl, coords, order=0)
    z_index = np.clip(np.rint(coords[2]).astype(np.int32), 0, h.shape[2] - 1)
    del coords
    d_tpl = _wm_directions(code, z_index, tangents)
    del z_index
    # template axes -> scanner (head rotation and scaling) -> the image's voxel axes
    from .forward import rotation_matrix

    RS = rotation_matrix(pose.rotation_deg) @ np.diag(pose.scale)
    Q = A[:3, :3] / np.linalg.norm(A[:3, :3], axis=0)
    M = (Q.T @ RS).astype(np.float32)
    d = np.einsum("ij,j...->i...", M, d_tpl)
    del d_tpl
    d /= np.maximum(np.sqrt((d * d).sum(axis=0)), np.float32(1e-6))
    ad_rd = compartment_tensors(cst_fa)
    lut_ad = np.array([ad_rd[c][0] for c in range(4)], dtype=np.float32)
    lut_rd = np.array([ad_rd[c][1] for c in range(4)], dtype=np.float32)
    axial, radial = lut_ad[code], lut_rd[code]
    del code

    clean = np.empty(matrix + (len(bvals),), dtype=np.float32)
    for k, (bv, g) in enumerate(zip(bvals, bvecs)):
        clean[..., k] = fw.block_average(dwi_signal(fractions, d, axial, radial, bv, g), f)
    del fractions, d, axial, radial

    acq_coords = _template_coords(A, matrix, pose, h.affine)
    brain_mask = fw.warp(h.intracranial.astype(np.float32), acq_coords) >= 0.5
    labels = fw.warp(h.labels, acq_coords, order=0).astype(np.int16)
    labels[~brain_mask] = 0
    del acq_coords
    b0 = clean[..., bvals == 0].mean(axis=-1)
    ref = float(b0[brain_mask].mean())
    sigma = ref / snr if np.isfinite(snr) and snr > 0 else 0.0
    dwi = add_rician_noise(clean, sigma, rng).astype(np.float32)

    rows = []
    idx = {(r.region, r.hemisphere): int(r.index) for r in h.label_table.itertuples()}
    truth_fit = None
    cst_mask = np.isin(labels, [idx[("corticospinal_tract", "L")], idx[("corticospinal_tract", "R")]])
    if with_truth and cst_mask.any():
        truth_fit = TensorModel(bvals, bvecs).fit(clean, mask=cst_mask).metrics(np.float64)
    for hemi in ("L", "R"):
        axial_p = CST_AXIAL
        radial_p = float(radial_diffusivity_for_fa(axial_p, cst_fa[hemi]))
        planted = tensor_metrics(np.array([axial_p, radial_p, radial_p]))
        sel = labels == idx[("corticospinal_tract", hemi)]
        for metric in METRICS:
            tm = float(np.median(truth_fit[metric][sel])) if truth_fit is not None and sel.any() else np.nan
            rows.append({"region": "corticospinal_tract", "hemisphere": hemi, "metric": metric,
                         "planted": float(planted[metric]), "truth_median": tm, "n_voxels": int(sel.sum())})
    return {
        "dwi": dwi,
        "affine": A,
        "bvals": bvals,
        "bvecs": bvecs,
        "labels": labels,
        "brain_mask": brain_mask,
        "noise_sigma": float(sigma),
        "cst_truth": pd.DataFrame(rows),
        "params": {"voxel_size_mm": voxel_size, "matrix": matrix, "snr": float(snr), "b": float(b),
                   "n_directions": int(n_directions), "n_b0": int(n_b0), "oblique": bool(oblique),
                   "oversample": f, "echo_time_s": ECHO_TIME_S, "cst_fa": cst_fa,
                   "noise_sigma": float(sigma)},
    }
