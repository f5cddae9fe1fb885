"""Participant steps 1-5 on arrays: one entry point for the participant workflow.

:func:`reconstruct` takes the GRE magnitude and phase (already read and in
radians), the echo times, the voxel size, the B0 direction in voxel axes and
the field strength, and the parameters of :class:`qsm_bids.config.ReconConfig`
by the same names (call it with ``**dataclasses.asdict(cfg.recon)``). It
validates the input (raising :class:`qsm_bids.errors.DataError` with one
line), runs coil combination, masking, Laplacian unwrapping, the echo fit,
background removal, dipole inversion and the optional referencing, and
returns a :class:`ReconResult` with every intermediate the derivatives need,
the time and number of FFTs of each step, and the parameters used.

Work after masking is done on the bounding box of the mask grown by a margin
(``max(10 mm, kernel radius + 2 voxels)``), padded to a fast FFT size; maps
are put back on the full grid at the end (zero outside the box).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np

from ..errors import DataError
from . import fft
from ._ops import crop_box
from .background import erode_by_sphere, pdf, sharp, vsharp
from .coils import adaptive_combine
from .dipole import GAMMA_HZ_PER_T
from .echoes import field_noise_std, fit_field, remove_phase_offset
from .inversion import medi, tikhonov, tkd
from .mask import brain_mask, phase_coherence, refine_with_phase
from .reference import apply_reference
from .unwrap import laplacian_unwrap

__all__ = ["ReconResult", "reconstruct", "MIN_MASK_VOXELS"]

logger = logging.getLogger(__name__)

#: A brain mask (or its SHARP erosion) with fewer voxels than this is refused.
MIN_MASK_VOXELS = 100


@dataclass
class ReconResult:
    """Everything steps 1-5 produce, on the full input grid.

    Attributes
    ----------
    mask : bool (x, y, z)
        The brain mask (before erosion by the background kernel and before
        the incoherent-phase voxels are dropped).
    eroded_mask : bool (x, y, z)
        Where the local field is defined: the trusted-phase mask eroded by the
        SHARP sphere (the mask itself for PDF).
    chi_mask : bool (x, y, z)
        Where ``chi_ppm`` is defined: ``eroded_mask`` for TKD/Tikhonov; for
        MEDI the brain mask eroded by the sphere, including the
        incoherent-phase voxels (no trusted data there: MEDI's regulariser
        fills them from their neighbours).
    unwrapped_phase : float32 (x, y, z, echo)
        Laplacian-unwrapped phase of each echo in rad (after the phase offset
        at TE = 0 is removed for multi-echo data), zero outside ``mask``.
    total_field_ppm : float32 (x, y, z)
        Echo-combined field in ppm before background removal, inside ``mask``.
    local_field_ppm : float32 (x, y, z)
        Local field in ppm, zero outside ``eroded_mask``.
    chi_ppm : float32 (x, y, z)
        Susceptibility in ppm, zero outside ``eroded_mask``.
    magnitude : float32 (x, y, z, echo)
        Magnitude of each echo (coil-combined when coil data were given).
    timings_s : dict
        Wall time of each step.
    fft_counts : dict
        Number of n-D FFTs of each step.
    parameters : dict
        Every parameter used (for the sidecars), with derived values
        (``medi_delta_te_s``, ``reference_value_ppm``, MEDI iteration counts).
    """

    mask: np.ndarray
    eroded_mask: np.ndarray
    chi_mask: np.ndarray
    unwrapped_phase: np.ndarray
    total_field_ppm: np.ndarray
    local_field_ppm: np.ndarray
    chi_ppm: np.ndarray
    magnitude: np.ndarray
    timings_s: dict = field(default_factory=dict)
    fft_counts: dict = field(default_factory=dict)
    parameters: dict = field(default_factory=dict)


def _check_inputs(magnitude, phase, te, voxel_size, field_strength_t):
    if magnitude.shape != phase.shape:
        raise DataError(f"GRE magnitude shape {magnitude.shape} differs from phase shape {phase.shape}")
    if magnitude.ndim not in (3, 4, 5):
        raise DataError(f"GRE data must be 3-D, 4-D (echoes) or 5-D (echoes, coils); got shape "
                        f"{magnitude.shape}")
    n_echo = 1 if magnitude.ndim == 3 else magnitude.shape[3]
    if te.size != n_echo:
        raise DataError(f"{te.size} echo times given for {n_echo} echoes")
    if not np.all(np.isfinite(te)) or np.any(te <= 0):
        raise DataError(f"echo times must be positive seconds, got {te.tolist()}")
    if te.size > 1 and np.any(np.diff(te) <= 0):
        raise DataError(f"echo times do not increase: {te.tolist()} s; order the echoes by EchoTime")
    if len(voxel_size) != 3 or not all(float(v) > 0 for v in voxel_size):
        raise DataError(f"voxel size must be 3 positive mm values, got {tuple(voxel_size)}")
    if field_strength_t is None or not float(field_strength_t) > 0:
        raise DataError("MagneticFieldStrength is missing or not positive: set it in the sidecar "
                        "or pass --field-strength")
    if not np.any(magnitude):
        raise DataError("GRE magnitude is all zero: no signal to reconstruct")
    finite = phase[np.isfinite(phase)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    if hi - lo > 2 * np.pi * 1.001 or hi > 2 * np.pi * 1.001 or lo < -2 * np.pi * 1.001:
        raise DataError(f"GRE phase spans [{lo:.3g}, {hi:.3g}] rad, beyond one 2*pi cycle: it looks "
                        "already unwrapped or not in radians; give the wrapped phase (Units rad or "
                        "arbitrary)")


def reconstruct(magnitude, phase, echo_times_s, voxel_size_mm, b0_dir, field_strength_t, *,
                coil_combination="adaptive", coil_smoothing_mm=6.0, mask_method="auto",
                mask_threshold=0.15, unwrap="laplacian", echo_combination="weighted_fit",
                background="sharp", sharp_radius_mm=5.0, sharp_threshold=0.05,
                vsharp_radii_mm=(12.0, 10.0, 8.0, 6.0, 4.0, 2.0), pdf_max_iter=100, pdf_tol=0.01,
                inversion="medi", medi_lambda=1000.0, medi_percentage=0.9, medi_max_iter=10,
                medi_tol_norm_ratio=0.1, medi_cg_max_iter=100, medi_cg_tol=0.01, medi_beta=1e-6,
                medi_merit=False, medi_smv=True, tkd_threshold=0.19, tikhonov_lambda=0.05, reference="none",
                remove_phase_offset_multiecho=True, mask_erode_mm=1.0, mask_phase_quality=0.5,
                mask=None, t1w_mask=None, progress=None) -> ReconResult:
    """Run steps 1-5 (coils, mask, unwrapping, background removal, inversion).

    Parameters
    ----------
    magnitude, phase : ndarray
        (x, y, z), (x, y, z, echo) or coil-resolved (x, y, z, echo, coil);
        phase wrapped, in rad.
    echo_times_s : sequence of float
        Echo times (s), increasing.
    voxel_size_mm : sequence of 3 float
    b0_dir : sequence of 3 float
        B0 in voxel axes (:func:`qsm_bids.recon.dipole.b0_direction_from_affine`).
    field_strength_t : float
        B0 in tesla.
    coil_combination ... reference
        As :class:`qsm_bids.config.ReconConfig` (same names and meanings).
    medi_merit : bool
        MERIT model-error reweighting in MEDI (not in the paper; default off).
    medi_smv : bool
        With ``background="sharp"``: invert inside MEDI as the toolbox's
        ``'smv'`` option does (the total field high-passed by the SHARP sphere,
        kernel ``(1 - S) D``, mask eroded by the sphere) instead of the
        truncated SHARP deconvolution, which loses the low spatial
        frequencies (deep-grey nuclei contrast). ``local_field_ppm`` is the
        SHARP result either way.
    remove_phase_offset_multiecho : bool
        Remove the TE = 0 phase of combined multi-echo data before the fit
        through zero (coil-resolved data have it removed per coil).
    mask_erode_mm : float
        Final erosion of the automatic mask (mm).
    mask_phase_quality : float
        Automatic mask only: drop voxels whose phase coherence with their
        neighbours (first echo) is below this (0 disables); for multi-echo
        data, echoes whose coherence is below it get zero weight in the fit
        at that voxel.
    mask : bool ndarray or None
        A user brain mask on the GRE grid (skips the automatic mask).
    t1w_mask : bool ndarray or None
        A T1w brain mask resampled to the GRE grid (used when
        ``mask_method == "auto"``).
    progress : callable or None
        ``progress(step_name, fraction_done)``.

    Returns
    -------
    ReconResult
    """
    t_all = time.perf_counter()
    magnitude = np.nan_to_num(np.asarray(magnitude, dtype=np.float32))
    phase = np.nan_to_num(np.asarray(phase, dtype=np.float32))
    te = np.asarray(echo_times_s, dtype=np.float64).ravel()
    voxel_size = tuple(float(v) for v in voxel_size_mm)
    b0 = np.asarray(b0_dir, dtype=float)
    if b0.shape != (3,) or not np.linalg.norm(b0) > 0:
        raise DataError(f"B0 direction must be a non-zero 3-vector, got {b0_dir!r}")
    b0 = b0 / np.linalg.norm(b0)
    _check_inputs(magnitude, phase, te, voxel_size, field_strength_t)
    field_strength_t = float(field_strength_t)
    timings, counts = {}, {}

    def report(step, frac):
        if progress is not None:
            progress(step, frac)

    def run(step, fn):
        t0 = time.perf_counter()
        with fft.counting_ffts() as n:
            out = fn()
        timings[step] = time.perf_counter() - t0
        counts[step] = n()
        logger.info("%s: %.2f s, %d FFTs", step, timings[step], counts[step])
        report(step, 1.0)
        return out

    # 1. coil combination / phase offset
    if magnitude.ndim == 5:
        if coil_combination != "adaptive":
            raise ValueError(f"unknown coil combination {coil_combination!r}")
        cplx = magnitude * np.exp(1j * phase).astype(np.complex64)
        del magnitude, phase
        mag, ph = run("coil_combination", lambda: adaptive_combine(cplx, te, voxel_size,
                                                                   coil_smoothing_mm))
        del cplx
    else:
        mag = magnitude if magnitude.ndim == 4 else magnitude[..., None]
        ph = phase if phase.ndim == 4 else phase[..., None]
        if mag.shape[3] >= 2 and remove_phase_offset_multiecho:
            def offset():
                c = mag * np.exp(1j * ph).astype(np.complex64)
                c, _ = remove_phase_offset(c, te, voxel_size, coil_smoothing_mm)
                return np.angle(c).astype(np.float32)
            ph = run("coil_combination", offset)
        else:
            timings["coil_combination"] = 0.0
            counts["coil_combination"] = 0
    shape = mag.shape[:3]
    mag_rss = np.sqrt(np.sum(mag**2, axis=3)).astype(np.float32)

    # 2. mask
    if mask is not None:
        brain = np.asarray(mask).astype(bool)
        if brain.shape != shape:
            raise DataError(f"brain mask shape {brain.shape} differs from the GRE grid {shape}")
        timings["mask"], counts["mask"] = 0.0, 0
    else:
        if mask_method not in ("auto", "magnitude"):
            raise ValueError(f"unknown mask method {mask_method!r}")
        t1 = t1w_mask if mask_method == "auto" else None
        if t1 is not None and np.shape(t1) != shape:
            raise DataError(f"T1w brain mask shape {np.shape(t1)} differs from the GRE grid {shape}; "
                            "resample it to the GRE grid first")
        brain = run("mask", lambda: brain_mask(mag_rss, voxel_size, threshold=mask_threshold,
                                               erode_mm=mask_erode_mm, t1w_mask=t1))
    # voxels with trusted phase (the mask without incoherent-phase voxels); the user mask as is
    if mask is not None:
        trusted = brain
    else:
        t0 = time.perf_counter()
        trusted = refine_with_phase(brain, ph[..., 0], voxel_size, mask_phase_quality)
        timings["mask"] += time.perf_counter() - t0
    n_mask = int(brain.sum())
    if n_mask < MIN_MASK_VOXELS:
        raise DataError(f"brain mask has {n_mask} voxels (fewer than {MIN_MASK_VOXELS}): the "
                        "magnitude has too little signal or the given mask is empty")

    # crop to the mask's bounding box
    margin_mm = max(10.0, float(sharp_radius_mm) + 2 * max(voxel_size))
    if background == "vsharp":
        margin_mm = max(margin_mm, max(vsharp_radii_mm) + 2 * max(voxel_size))
    box = crop_box(brain, [int(np.ceil(margin_mm / d)) for d in voxel_size])
    bmask = trusted[box]
    bbrain = brain[box]
    bmag = mag[box]
    bmag_rss = mag_rss[box]

    # 3. unwrapping
    if unwrap != "laplacian":
        raise ValueError(f"unknown unwrapping {unwrap!r}")
    unwrapped = run("unwrap", lambda: laplacian_unwrap(ph[box], voxel_size))
    unwrapped *= bmask[..., None]

    # multi-echo fit -> total field in ppm
    fit_weights = bmag
    if bmag.shape[3] > 1 and mask_phase_quality and mask_phase_quality > 0:
        good = np.stack([phase_coherence(ph[box][..., e]) > mask_phase_quality
                         for e in range(bmag.shape[3])], axis=-1)
        good[..., 0] = True  # the first echo always counts (the mask is built on it)
        fit_weights = bmag * good

    def echo_fit():
        return fit_field(unwrapped, fit_weights, te, field_strength_t, echo_combination) * bmask

    total = run("echo_fit", echo_fit)

    # 4. background removal
    if background == "sharp":
        local, eroded = run("background", lambda: sharp(total, bmask, voxel_size, sharp_radius_mm,
                                                         sharp_threshold))
    elif background == "vsharp":
        local, eroded = run("background", lambda: vsharp(total, bmask, voxel_size, vsharp_radii_mm,
                                                          sharp_threshold))
    elif background == "pdf":
        weight = 1.0 / field_noise_std(fit_weights, te)
        local, eroded = run("background", lambda: pdf(total, bmask, voxel_size, b0, weight,
                                                       pdf_max_iter, pdf_tol))
    else:
        raise ValueError(f"unknown background method {background!r}")
    n_eroded = int(eroded.sum())
    if n_eroded < MIN_MASK_VOXELS:
        raise DataError(f"brain mask eroded by the {sharp_radius_mm} mm background kernel has "
                        f"{n_eroded} voxels: the mask ({n_mask} voxels) is too small for the kernel")

    # 5. inversion
    delta_te = float(te[1] - te[0]) if te.size > 1 else float(te[0])
    medi_stats = {}
    if inversion == "medi":
        noise = field_noise_std(fit_weights, te)
        use_smv = bool(medi_smv) and background == "sharp"
        # MEDI solves for chi everywhere: it fills the incoherent-phase voxels from their
        # neighbours, so chi is returned on the whole mask eroded by the sphere
        if background == "sharp":
            chi_region = erode_by_sphere(bbrain, voxel_size, sharp_radius_mm) | eroded
        elif background == "vsharp":
            chi_region = erode_by_sphere(bbrain, voxel_size, min(vsharp_radii_mm)) | eroded
        else:
            chi_region = bbrain
        chi = run("inversion", lambda: medi(
            total if use_smv else local, bmag_rss, bmask if use_smv else eroded, voxel_size, b0,
            smv_radius_mm=sharp_radius_mm if use_smv else None, field_strength_t=field_strength_t,
            delta_te_s=delta_te, noise_std=noise, lam=medi_lambda, percentage=medi_percentage,
            max_iter=medi_max_iter, tol_norm_ratio=medi_tol_norm_ratio,
            cg_max_iter=medi_cg_max_iter, cg_tol=medi_cg_tol, beta=medi_beta, merit=medi_merit,
            output_mask=chi_region, progress=lambda i, n: report("inversion", i / n),
            stats=medi_stats))
    elif inversion == "tkd":
        chi_region = eroded
        chi = run("inversion", lambda: tkd(local, eroded, voxel_size, b0, tkd_threshold))
    elif inversion == "tikhonov":
        chi_region = eroded
        chi = run("inversion", lambda: tikhonov(local, eroded, voxel_size, b0, tikhonov_lambda))
    else:
        raise ValueError(f"unknown inversion {inversion!r}")
    chi = chi * chi_region
    chi, ref_value = run("reference", lambda: apply_reference(chi, chi_region, reference, bmag_rss,
                                                              voxel_size))

    def full(a, dtype):
        out = np.zeros(shape + a.shape[3:], dtype=dtype)
        out[box] = a
        return out

    timings["total"] = time.perf_counter() - t_all
    counts["total"] = sum(v for k, v in counts.items())
    params = dict(
        coil_combination=coil_combination, coil_smoothing_mm=coil_smoothing_mm,
        mask_method="user" if mask is not None else mask_method, mask_threshold=mask_threshold,
        mask_erode_mm=mask_erode_mm, mask_phase_quality=mask_phase_quality, unwrap=unwrap, echo_combination=echo_combination,
        remove_phase_offset_multiecho=remove_phase_offset_multiecho, background=background,
        sharp_radius_mm=sharp_radius_mm, sharp_threshold=sharp_threshold,
        vsharp_radii_mm=list(vsharp_radii_mm), pdf_max_iter=pdf_max_iter, pdf_tol=pdf_tol,
        inversion=inversion, medi_lambda=medi_lambda, medi_percentage=medi_percentage,
        medi_max_iter=medi_max_iter, medi_tol_norm_ratio=medi_tol_norm_ratio,
        medi_cg_max_iter=medi_cg_max_iter, medi_cg_tol=medi_cg_tol, medi_beta=medi_beta,
        medi_merit=medi_merit, medi_smv=medi_smv, tkd_threshold=tkd_threshold, tikhonov_lambda=tikhonov_lambda,
        reference=reference, reference_value_ppm=ref_value,
        echo_times_s=te.tolist(), voxel_size_mm=list(voxel_size), b0_dir=b0.tolist(),
        field_strength_t=field_strength_t, medi_delta_te_s=delta_te,
        gyromagnetic_ratio_hz_per_t=GAMMA_HZ_PER_T,
        medi_outer_iterations=medi_stats.get("outer_iterations"),
        medi_cg_iterations=medi_stats.get("cg_iterations"),
        mask_voxels=n_mask, eroded_mask_voxels=n_eroded,
        crop_box=[[s.start, s.stop] for s in box],
    )
    return ReconResult(
        mask=brain,
        eroded_mask=full(eroded, bool),
        chi_mask=full(chi_region, bool),
        unwrapped_phase=full(unwrapped, np.float32),
        total_field_ppm=full(total, np.float32),
        local_field_ppm=full(local, np.float32),
        chi_ppm=full(chi, np.float32),
        magnitude=mag.astype(np.float32, copy=False),
        timings_s=timings,
        fft_counts=counts,
        parameters=params,
    )
