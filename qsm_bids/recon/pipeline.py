"""Participant steps 1-5 on arrays: one entry point for the participant workflow.

:func:`reconstruct` takes the GRE magnitude and phase (already read and in
radians), the echo times, the voxel size, the B0 direction in voxel axes and
the field strength, and a :class:`qsm_bids.config.ReconConfig` (``cfg.recon``). It
validates the input (raising :class:`qsm_bids.errors.DataError` with one
line), runs coil combination, masking, phase unwrapping, the echo fit,
background removal, dipole inversion and the optional referencing, and
returns a :class:`ReconResult` with every intermediate the derivatives need,
the time and number of FFTs of each step, and the parameters used.

Work after masking is done on the bounding box of the mask grown by a margin
(``max(10 mm, kernel radius + 2 voxels)``), padded to a fast FFT size; maps
are put back on the full grid at the end (zero outside the box).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..config import ReconConfig
from ..errors import DataError
from . import fft
from ._ops import crop_box
from .checks import check_geometry, check_map
from .background import erode_by_sphere, pdf, sharp, vsharp
from .coils import adaptive_combine
from .dipole import GAMMA_HZ_PER_T
from .echoes import field_noise_std, fit_field, remove_phase_offset
from .inversion import medi, tikhonov, tkd, usable_rim_radii
from .mask import brain_mask, brain_mask_from_template, drop_outer_incoherent, phase_coherence, refine_with_phase
from .reference import apply_reference
from .unwrap import UNWRAP_METHODS

__all__ = ["ReconResult", "reconstruct", "check_geometry", "check_map", "MIN_MASK_VOXELS", "BACKGROUND_METHODS", "INVERSION_METHODS",
           "BackgroundMethod", "InversionMethod"]

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
    measured_mask : bool (x, y, z)
        Where chi is backed by measured field: ``eroded_mask``; with MEDI's rim shells
        (``medi_edge_radii_mm``) every trusted-phase voxel of the brain mask: the shells, and the
        outer voxels where no shell's sphere fits, constrained by the fields they produce in the shells
        (the outermost voxel layer with the default shells, the outer two layers, 4 mm, with the 4 mm
        shell of a 2 mm grid that ``medi_rim_min_radius_voxels: 2`` makes). Region values and group coverage use it.
    chi_mask : bool (x, y, z)
        Where ``chi_ppm`` is defined: ``eroded_mask`` for TKD/Tikhonov; for
        MEDI the brain mask eroded by the sphere, including the
        incoherent-phase voxels (no trusted data there: MEDI's regulariser
        fills them from their neighbours).
    unwrapped_phase : float32 (x, y, z, echo)
        unwrapped phase of each echo in rad (after the phase offset
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
    measured_mask: np.ndarray | None = None
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


@dataclass(frozen=True)
class BackgroundMethod:
    """A background-field removal method of :data:`BACKGROUND_METHODS`.

    ``remove(field, inp)`` returns ``(local_field_ppm, eroded_mask)`` on the cropped grid; ``margin_mm(p)``
    is its largest kernel radius (the crop margin); ``chi_erosion_mm(p)`` the sphere radius by which MEDI's
    output region is eroded (None: not eroded); ``smv`` whether MEDI may invert the SMV-filtered total
    field instead (the MEDI toolbox's 'smv' option, with ``p.sharp_radius_mm``).
    """

    remove: Callable
    margin_mm: Callable
    chi_erosion_mm: Callable
    smv: bool = False


@dataclass(frozen=True)
class InversionMethod:
    """A dipole inversion of :data:`INVERSION_METHODS`.

    ``region(inp)`` is where chi is returned (computed outside the timed step); ``invert(inp, region)``
    returns chi on the cropped grid.
    """

    invert: Callable
    region: Callable


@dataclass
class _Inputs:
    """What the background-removal and inversion methods see (cropped to the mask's box)."""

    p: ReconConfig
    voxel_size: tuple
    b0: np.ndarray
    te: np.ndarray
    field_strength_t: float
    fit_weights: np.ndarray
    magnitude_rss: np.ndarray
    brain: np.ndarray       # the brain mask
    trusted: np.ndarray     # the brain mask without incoherent-phase voxels
    edge_radii_mm: tuple = ()  # MEDI's rim shells in use (:func:`_medi_edges`)
    total: np.ndarray | None = None
    local: np.ndarray | None = None
    eroded: np.ndarray | None = None
    progress: Callable | None = None
    stats: dict = field(default_factory=dict)


def _pdf(total, inp: _Inputs):
    p = inp.p
    weight = 1.0 / field_noise_std(inp.fit_weights, inp.te)
    return pdf(total, inp.trusted, inp.voxel_size, inp.b0, weight, p.pdf_max_iter, p.pdf_tol)


#: Background removal: config name (``ReconConfig.background``) -> method.
BACKGROUND_METHODS: dict[str, BackgroundMethod] = {
    "sharp": BackgroundMethod(
        remove=lambda total, inp: sharp(total, inp.trusted, inp.voxel_size, inp.p.sharp_radius_mm,
                                        inp.p.sharp_threshold),
        margin_mm=lambda p: p.sharp_radius_mm, chi_erosion_mm=lambda p: p.sharp_radius_mm, smv=True),
    "vsharp": BackgroundMethod(
        remove=lambda total, inp: vsharp(total, inp.trusted, inp.voxel_size, inp.p.vsharp_radii_mm,
                                         inp.p.sharp_threshold),
        margin_mm=lambda p: max(p.vsharp_radii_mm), chi_erosion_mm=lambda p: min(p.vsharp_radii_mm)),
    "pdf": BackgroundMethod(remove=_pdf, margin_mm=lambda p: 0.0, chi_erosion_mm=lambda p: None),
}


#: Brain masks whose rim MEDI's rim shells may measure: the T1w/template mask and a user mask reach the
#: brain's surface; the magnitude mask's rim is the partial-volume and signal-void edge it was thresholded
#: at (measured: rim shells on it took a simulated head's interior NRMSE from 49 % to 129 %).
RIM_SHELL_MASKS = ("t1w", "user")


def _medi_edges(p, voxel_size, mask_source) -> tuple:
    """The rim radii MEDI uses: only in the SMV form, on a mask of :data:`RIM_SHELL_MASKS`, those of
    :func:`~qsm_bids.recon.inversion.usable_rim_radii` for the SHARP sphere."""
    use_smv = (bool(p.medi_smv) and BACKGROUND_METHODS[p.background].smv and p.inversion == "medi"
               and mask_source in RIM_SHELL_MASKS)
    return (usable_rim_radii(p.medi_edge_radii_mm, voxel_size, p.sharp_radius_mm, p.medi_rim_min_radius_voxels)
            if use_smv else ())


def _medi_region(inp: _Inputs):
    # MEDI solves for chi everywhere: it fills the incoherent-phase voxels from their neighbours, so chi
    # is returned on the whole mask eroded by the background kernel (with rim shells: the whole mask)
    if inp.edge_radii_mm:
        return inp.brain
    radius = BACKGROUND_METHODS[inp.p.background].chi_erosion_mm(inp.p)
    if radius is None:
        return inp.brain
    return erode_by_sphere(inp.brain, inp.voxel_size, radius) | inp.eroded


def _medi(inp: _Inputs, region):
    p = inp.p
    delta_te = float(inp.te[1] - inp.te[0]) if inp.te.size > 1 else float(inp.te[0])
    noise = field_noise_std(inp.fit_weights, inp.te)
    use_smv = bool(p.medi_smv) and BACKGROUND_METHODS[p.background].smv
    return medi(
        inp.total if use_smv else inp.local, inp.magnitude_rss, inp.trusted if use_smv else inp.eroded,
        inp.voxel_size, inp.b0, smv_radius_mm=p.sharp_radius_mm if use_smv else None,
        field_strength_t=inp.field_strength_t, delta_te_s=delta_te, noise_std=noise, lam=p.medi_lambda,
        percentage=p.medi_percentage, max_iter=p.medi_max_iter, tol_norm_ratio=p.medi_tol_norm_ratio,
        cg_max_iter=p.medi_cg_max_iter, cg_tol=p.medi_cg_tol, beta=p.medi_beta, merit=p.medi_merit,
        output_mask=region, progress=inp.progress, stats=inp.stats, edge_radii_mm=inp.edge_radii_mm or None,
        cg_preconditioner=None if p.medi_cg_preconditioner == "none" else p.medi_cg_preconditioner,
        rim_data_weight=p.medi_rim_data_weight, bregman_steps=p.medi_bregman_steps)


#: Dipole inversion: config name (``ReconConfig.inversion``) -> method.
INVERSION_METHODS: dict[str, InversionMethod] = {
    "medi": InversionMethod(invert=_medi, region=_medi_region),
    "tkd": InversionMethod(
        invert=lambda inp, region: tkd(inp.local, inp.eroded, inp.voxel_size, inp.b0, inp.p.tkd_threshold),
        region=lambda inp: inp.eroded),
    "tikhonov": InversionMethod(
        invert=lambda inp, region: tikhonov(inp.local, inp.eroded, inp.voxel_size, inp.b0,
                                            inp.p.tikhonov_lambda),
        region=lambda inp: inp.eroded),
}


def _method(table: dict, kind: str, name: str):
    try:
        return table[name]
    except KeyError:
        raise ValueError(f"unknown {kind} {name!r} (known: {', '.join(table)})") from None


def reconstruct(magnitude, phase, echo_times_s, voxel_size_mm, b0_dir, field_strength_t,
                params: ReconConfig | None = None, *, mask=None, t1w_mask=None, progress=None) -> ReconResult:
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
    params : ReconConfig
        Every reconstruction parameter (None: the defaults). ``background`` and ``inversion`` name
        entries of :data:`BACKGROUND_METHODS` and :data:`INVERSION_METHODS`. With ``background="sharp"``
        and ``medi_smv``, MEDI inverts the total field high-passed by the SHARP sphere (kernel
        ``(1 - S) D``, as the MEDI toolbox's ``'smv'`` option) instead of the truncated SHARP
        deconvolution, which loses the low spatial frequencies (deep-grey nuclei contrast);
        ``local_field_ppm`` is the SHARP result either way.
    mask : bool ndarray or None
        A user brain mask on the GRE grid (skips the automatic mask).
    t1w_mask : bool ndarray or None
        A T1w brain mask resampled to the GRE grid; intersected with the magnitude mask when
        ``params.mask_method == "auto"``.
    progress : callable or None
        ``progress(step_name, fraction_done)``.

    Returns
    -------
    ReconResult
    """
    p = params if params is not None else ReconConfig()
    background = _method(BACKGROUND_METHODS, "background method", p.background)
    inversion = _method(INVERSION_METHODS, "inversion", p.inversion)
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
    check_geometry(voxel_size, magnitude.shape[:3], p, MIN_MASK_VOXELS)
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

    # 1. coil combination (coil-resolved data; it removes each coil's TE = 0 offset)
    coil_resolved = magnitude.ndim == 5
    if coil_resolved:
        cplx = magnitude * np.exp(1j * phase).astype(np.complex64)
        del magnitude, phase
        mag, ph = run("coil_combination", lambda: adaptive_combine(cplx, te, voxel_size,
                                                                   p.coil_smoothing_mm,
                                                                   p.phase_offset_method))
        del cplx
    else:
        mag = magnitude if magnitude.ndim == 4 else magnitude[..., None]
        ph = phase if phase.ndim == 4 else phase[..., None]
        # combined multi-echo data: the TE = 0 offset is removed once the brain mask is known (below)
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
        if p.mask_method not in ("auto", "magnitude"):
            raise ValueError(f"unknown mask method {p.mask_method!r}")
        t1 = t1w_mask if p.mask_method == "auto" else None
        if t1 is not None and np.shape(t1) != shape:
            raise DataError(f"T1w brain mask shape {np.shape(t1)} differs from the GRE grid {shape}; "
                            "resample it to the GRE grid first")
        if t1 is not None:
            # the template brain mask on the GRE grid reaches the cortical surface: refined on the
            # magnitude's support, no erosion (the rim is the background step's business)
            brain = run("mask", lambda: brain_mask_from_template(t1, mag_rss, voxel_size))
            if not brain.any():
                raise DataError("the T1w brain mask does not overlap the GRE magnitude's signal: check the "
                                "GRE -> T1w registration (orientation, field of view)")
        else:
            brain = run("mask", lambda: brain_mask(mag_rss, voxel_size, threshold=p.mask_threshold,
                                                   erode_mm=p.mask_erode_mm))
    if not coil_resolved and mag.shape[3] >= 2 and p.remove_phase_offset_multiecho:
        # estimated over the brain only, so that the signal voids and noise around it stay out
        def offset():
            c = mag * np.exp(1j * ph).astype(np.complex64)
            c, _ = remove_phase_offset(c, te, voxel_size, p.phase_offset_smoothing_mm, p.phase_offset_method,
                                       mask=brain, robust_passes=p.phase_offset_robust_passes)
            return np.angle(c).astype(np.float32)
        ph = run("phase_offset", offset)
    else:
        timings["phase_offset"], counts["phase_offset"] = 0.0, 0
    # voxels with trusted phase (the mask without incoherent-phase voxels); the user mask as is
    if mask is not None:
        trusted = brain
    else:
        t0 = time.perf_counter()
        quality = p.mask_phase_quality if ph.shape[3] > 1 else p.mask_phase_quality_single_echo
        trusted = refine_with_phase(brain, ph[..., 0], voxel_size, quality)
        if p.mask_outer_layer_every_echo and ph.shape[3] > 1 and p.mask_phase_quality > 0:
            trusted = drop_outer_incoherent(trusted, ph, p.mask_phase_quality)
        timings["mask"] += time.perf_counter() - t0
    if mask is not None:
        mask_used = "user"
    elif p.mask_method == "auto" and t1w_mask is not None:
        mask_used = "t1w"
    else:
        mask_used = "magnitude"
    edge_radii = _medi_edges(p, voxel_size, mask_used)
    n_mask = int(brain.sum())
    if n_mask < MIN_MASK_VOXELS:
        raise DataError(f"brain mask has {n_mask} voxels (fewer than {MIN_MASK_VOXELS}): the "
                        "magnitude has too little signal or the given mask is empty")

    # crop to the mask's bounding box (the SHARP radius always counts: it sets the MEDI 'smv' sphere)
    margin_mm = max(10.0, float(p.sharp_radius_mm) + 2 * max(voxel_size),
                    float(background.margin_mm(p)) + 2 * max(voxel_size))
    box = crop_box(brain, [int(np.ceil(margin_mm / d)) for d in voxel_size])
    bmask = trusted[box]
    bbrain = brain[box]
    bmag = mag[box]
    bmag_rss = mag_rss[box]

    # 3. unwrapping
    unwrapped = run("unwrap", lambda: UNWRAP_METHODS[p.unwrap_method](ph[box], te, voxel_size,
                                                                bmag * bmask[..., None]))
    unwrapped *= bmask[..., None]

    # multi-echo fit -> total field in ppm
    fit_weights = bmag
    if bmag.shape[3] > 1 and p.mask_phase_quality and p.mask_phase_quality > 0:
        good = np.stack([phase_coherence(ph[box][..., e]) > p.mask_phase_quality
                         for e in range(bmag.shape[3])], axis=-1)
        good[..., 0] = True  # the first echo always counts (the mask is built on it)
        fit_weights = bmag * good

    def echo_fit():
        return fit_field(unwrapped, fit_weights, te, field_strength_t, p.echo_combination) * bmask

    total = run("echo_fit", echo_fit)
    inp = _Inputs(p=p, voxel_size=voxel_size, b0=b0, te=te, field_strength_t=field_strength_t,
                  fit_weights=fit_weights, magnitude_rss=bmag_rss, brain=bbrain, trusted=bmask, edge_radii_mm=edge_radii,
                  total=total,
                  progress=lambda i, n: report("inversion", i / n))

    # 4. background removal
    local, eroded = run("background", lambda: background.remove(total, inp))
    inp.local, inp.eroded = local, eroded
    n_eroded = int(eroded.sum())
    if n_eroded < MIN_MASK_VOXELS:
        raise DataError(f"brain mask eroded by the {p.sharp_radius_mm} mm background kernel has "
                        f"{n_eroded} voxels: the mask ({n_mask} voxels) is too small for the kernel")

    # 5. inversion
    delta_te = float(te[1] - te[0]) if te.size > 1 else float(te[0])
    chi_region = inversion.region(inp)
    chi = run("inversion", lambda: inversion.invert(inp, chi_region))
    chi = chi * chi_region
    chi, ref_value = run("reference", lambda: apply_reference(chi, chi_region, p.reference, bmag_rss,
                                                              voxel_size))

    def full(a, dtype):
        out = np.zeros(shape + a.shape[3:], dtype=dtype)
        out[box] = a
        return out

    timings["total"] = time.perf_counter() - t_all
    counts["total"] = sum(v for k, v in counts.items())
    if edge_radii:
        # the rim shells measure the field down to the smallest sphere; the outer voxels where no sphere
        # fits are constrained by the fields they produce in the shells: chi is kept wherever the phase
        # was trusted (the incoherent-phase voxels, filled by the regulariser alone, stay out)
        measured = chi_region & bmask
    else:
        measured = eroded
    params_used = {**dataclasses.asdict(p), "mask_method": mask_used, "mask_method_requested": p.mask_method,
                   "vsharp_radii_mm": list(p.vsharp_radii_mm),
                   "medi_edge_radii_mm": list(edge_radii),
                   "medi_edge_radii_mm_requested": list(p.medi_edge_radii_mm)}
    params_used.update(
        reference_value_ppm=ref_value,
        echo_times_s=te.tolist(), voxel_size_mm=list(voxel_size), b0_dir=b0.tolist(),
        field_strength_t=field_strength_t, medi_delta_te_s=delta_te,
        gyromagnetic_ratio_hz_per_t=GAMMA_HZ_PER_T,
        medi_outer_iterations=inp.stats.get("outer_iterations"),
        medi_cg_iterations=inp.stats.get("cg_iterations"),
        mask_voxels=n_mask, eroded_mask_voxels=n_eroded, measured_mask_voxels=int(measured.sum()),
        crop_box=[[s.start, s.stop] for s in box],
    )
    return ReconResult(
        mask=brain,
        eroded_mask=full(eroded, bool),
        chi_mask=full(chi_region, bool),
        measured_mask=full(measured, bool),
        unwrapped_phase=full(unwrapped, np.float32),
        total_field_ppm=full(total, np.float32),
        local_field_ppm=full(local, np.float32),
        chi_ppm=full(chi, np.float32),
        magnitude=mag.astype(np.float32, copy=False),
        timings_s=timings,
        fft_counts=counts,
        parameters=params_used,
    )
