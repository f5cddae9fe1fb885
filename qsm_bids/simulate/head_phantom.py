"""An analytic head phantom for the reconstruction tests and benchmark.

Not the cohort's digital brain (:mod:`qsm_bids.simulate.phantom`): a fast, self-contained
geometric head (ellipsoids) with a brain, grey/white contrast, deep grey
nuclei with paper-like susceptibilities, a vein, ventricles, a skull, scalp
and a sinus-like air cavity, from which complex multi-echo GRE data are made
with the package's forward model (``dipole.forward_field`` on a padded grid).
Noise is complex Gaussian with ``sigma = mean brain magnitude / snr``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ..recon.dipole import GAMMA_HZ_PER_T, forward_field

__all__ = ["HeadPhantom", "head_phantom", "NUCLEI"]

#: name: (centre as fraction of the brain semi-axes (x, y, z), semi-axes mm, chi ppm, magnitude)
NUCLEI = {
    "caudate_L": ((-0.15, 0.20, 0.15), (5, 9, 8), 0.060, 0.80),
    "caudate_R": ((0.15, 0.20, 0.15), (5, 9, 8), 0.060, 0.80),
    "putamen_L": ((-0.33, 0.05, 0.05), (6, 12, 9), 0.050, 0.75),
    "putamen_R": ((0.33, 0.05, 0.05), (6, 12, 9), 0.050, 0.75),
    "globus_pallidus_L": ((-0.23, 0.0, 0.0), (4, 7, 6), 0.130, 0.55),
    "globus_pallidus_R": ((0.23, 0.0, 0.0), (4, 7, 6), 0.130, 0.55),
    "thalamus_L": ((-0.12, -0.18, 0.08), (8, 12, 9), 0.010, 0.85),
    "thalamus_R": ((0.12, -0.18, 0.08), (8, 12, 9), 0.010, 0.85),
    "red_nucleus_L": ((-0.06, -0.25, -0.25), (3, 3.5, 3.5), 0.110, 0.60),
    "red_nucleus_R": ((0.06, -0.25, -0.25), (3, 3.5, 3.5), 0.110, 0.60),
    "substantia_nigra_L": ((-0.11, -0.22, -0.33), (3, 7, 3), 0.130, 0.55),
    "substantia_nigra_R": ((0.11, -0.22, -0.33), (3, 7, 3), 0.130, 0.55),
    "dentate_L": ((-0.22, -0.70, -0.55), (6, 6, 5), 0.090, 0.65),
    "dentate_R": ((0.22, -0.70, -0.55), (6, 6, 5), 0.090, 0.65),
}


@dataclass
class HeadPhantom:
    """Complex GRE data and truth."""

    magnitude: np.ndarray  # (x, y, z, echo) float32
    phase: np.ndarray  # (x, y, z, echo) float32, wrapped
    chi_ppm: np.ndarray  # (x, y, z) truth (brain tissue, relative)
    brain: np.ndarray  # bool
    labels: dict  # name -> bool mask
    echo_times_s: tuple
    voxel_size: tuple
    b0_dir: np.ndarray
    field_strength_t: float
    snr: float
    total_field_ppm: np.ndarray = None  # (x, y, z) truth incl. background


def _rot(deg_x, deg_y):
    ax, ay = np.deg2rad(deg_x), np.deg2rad(deg_y)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    return ry @ rx


def head_phantom(shape=(256, 224, 80), voxel_size=(1.0, 1.0, 2.0), echo_times_s=(0.02,),
                 field_strength_t=3.0, snr=35.0, oblique_deg=(0.0, 0.0), seed=0,
                 brain_semi_axes_mm=(68.0, 85.0, 60.0), background=True, dtype=np.float32):
    """Make the phantom (see module docstring).

    ``shape`` and ``voxel_size`` set the grid; the head is scaled to fit;
    ``oblique_deg`` tilts B0 about x then y (the slices are oblique to B0).
    """
    rng = np.random.default_rng(seed)
    vs = np.asarray(voxel_size, dtype=float)
    fov = np.asarray(shape) * vs
    scale = min(1.0, *(0.40 * fov / np.asarray(brain_semi_axes_mm) / 1.15))
    a = np.asarray(brain_semi_axes_mm) * scale
    coords = [((np.arange(n) - (n - 1) / 2.0) * d).astype(dtype) for n, d in zip(shape, vs)]
    X, Y, Z = np.meshgrid(*coords, indexing="ij", sparse=True)

    def ell(c, s):
        return ((X - c[0]) / s[0]) ** 2 + ((Y - c[1]) / s[1]) ** 2 + ((Z - c[2]) / s[2]) ** 2

    r_brain = ell((0, 0, 0), a)
    brain = r_brain <= 1.0
    skull_in = ell((0, 0, 0), a * 1.07) <= 1.0
    skull_out = ell((0, 0, 0), a * 1.12) <= 1.0
    head = ell((0, 0, 0), a * 1.17) <= 1.0
    chi = np.zeros(shape, dtype=dtype)
    mag = np.zeros(shape, dtype=dtype)
    # cortex-like shell and white matter with a slow spatial pattern
    wm = r_brain <= 0.80**2
    pattern = (np.sin(X / (9.0 * scale)) * np.cos(Y / (11.0 * scale)) * np.sin(Z / (7.0 * scale) + 0.5))
    chi[brain] = 0.015
    mag[brain] = 0.9
    chi = np.where(wm, -0.025 + 0.01 * pattern, chi)
    mag = np.where(wm, 1.0, mag)
    labels = {}
    for name, (cf, sa, value, m) in NUCLEI.items():
        c = np.asarray(cf) * a
        lab = (ell(c, np.asarray(sa) * scale) <= 1.0) & brain
        labels[name] = lab
        chi[lab] = value
        mag[lab] = m
    # ventricles: CSF (bright, chi ~ 0 relative)
    for sx in (-1, 1):
        v = (ell((sx * 0.08 * a[0], 0.05 * a[1], 0.25 * a[2]), np.array([4, 18, 5]) * scale) <= 1)
        chi[v] = -0.005
        mag[v] = 1.15
    # a vein along y near the midline (paramagnetic)
    vein = (((X - 0.0) / 1.5) ** 2 + ((Z - 0.55 * a[2]) / 1.5) ** 2 <= 1.0) & brain & (np.abs(Y) < 0.6 * a[1])
    chi[vein] = 0.35
    mag[vein] = 0.4
    truth = np.where(brain, chi, 0).astype(dtype)
    # outside the brain: CSF rim, skull, scalp, sinus air; chi relative to water-like tissue
    full = truth.copy()
    csf_rim = skull_in & ~brain
    mag = np.where(csf_rim, 1.1, mag)
    skull = skull_out & ~skull_in
    full[skull] = -2.0
    mag = np.where(skull, 0.05, mag)
    scalp = head & ~skull_out
    mag = np.where(scalp, 0.8, mag)
    if background:
        sinus = ell((0, 1.05 * a[1], -0.75 * a[2]), np.array([14, 10, 9]) * scale) <= 1.0
        sinus &= ~brain
        full[sinus] = 9.4
        mag = np.where(sinus, 0.0, mag)
        full[~head] = 9.4
    b0 = _rot(*oblique_deg) @ np.array([0.0, 0.0, 1.0])
    # the brain's own field from the sharp truth; the background from the outside sources
    # smoothed by 1.5 mm first, so the FFT forward model's Gibbs ringing of a voxelised
    # 9.4 ppm air region does not put a non-harmonic artefact into the brain
    outside = ndimage.gaussian_filter((full - truth).astype(dtype), 1.5 / vs)
    field = forward_field(truth, vs, b0, pad=16) + forward_field(outside, vs, b0, pad=16)
    te = np.asarray(echo_times_s, dtype=float)
    # T2* decay: brain ~ 40 ms, nuclei faster
    r2s = np.where(mag < 0.7, 45.0, 25.0).astype(dtype)
    mags, phases = [], []
    sigma = 0.95 / float(snr) if snr else 0.0
    cf = 2 * np.pi * GAMMA_HZ_PER_T * field_strength_t * 1e-6
    for t in te:
        m = mag * np.exp(-r2s * t) / np.exp(-25.0 * te[0])
        s = m * np.exp(1j * cf * field * t)
        if sigma:
            s = s + sigma * (rng.standard_normal(shape) + 1j * rng.standard_normal(shape))
        mags.append(np.abs(s).astype(dtype))
        phases.append(np.angle(s).astype(dtype))
    return HeadPhantom(
        magnitude=np.stack(mags, -1), phase=np.stack(phases, -1), chi_ppm=truth, brain=brain,
        labels=labels, echo_times_s=tuple(te.tolist()), voxel_size=tuple(vs.tolist()), b0_dir=b0,
        field_strength_t=field_strength_t, snr=float(snr),
        total_field_ppm=field.astype(dtype))
