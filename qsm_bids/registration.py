"""ANTs (antspyx) normalisation: GRE -> T1w -> template, and the maps carried through.

Chain (participant step 6; see docs/atlas_registration.md):

* GRE magnitude (first echo) -> T1w: rigid (``from-GRE_to-T1w`` ANTs affine ``.mat``);
* T1w -> template: rigid, affine, SyN (``from-T1w_to-<template>`` composite ``.h5``
  and its inverse ``from-<template>_to-T1w`` ``.h5``);
* a subject without T1w: the magnitude is registered to the template directly
  (rigid, affine, SyN); the result says so (``direct_to_template``) and the caller
  names the files ``from-GRE_to-<template>``.

Everything that leaves native space is resampled once: ANTs composes the
transform list before interpolating. Images go in and out as nibabel images;
ANTs images are built in memory (RAS <-> LPS handled here).

Reproducibility: ANTs' random sampling is seeded (``--random-seed``) and the
ITK thread count is fixed through ``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS``
(set by :func:`set_threads` before the first registration of the process).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .config import RegistrationConfig
from .io import atomic_path
from .templates import TEMPLATE_NAME, template_image
from .verify import verify_output

logger = logging.getLogger(__name__)

__all__ = [
    "PRESETS",
    "RegistrationResult",
    "set_threads",
    "ants_seed",
    "itk_seed",
    "to_ants",
    "to_nibabel",
    "brain_template",
    "register_subject",
    "gre_to_template",
    "t1w_to_template",
    "atlas_to_native",
    "normalise_participant",
]

#: Quality presets. ``fixed_resolution_mm`` is the template grid the SyN field lives on (the
#: outputs are written at 2 mm, so a 2 mm field loses nothing there). ``fast`` stops SyN at
#: 4 mm (shrink 2 of the 2 mm grid); ``standard`` runs more iterations and refines at 2 mm.
#: ``init_pitches_deg``: the head pitches the rigid stage to the template starts from (0 is ANTs'
#: centre-of-mass start); another start's result replaces the 0-degree one only when its masked
#: mutual-information cost is lower by more than ``init_pitch_min_gain`` (starts that converge to
#: the same pose differ by < 0.005; a wrong pose costs 0.1-0.45 more).
PRESETS: dict[str, dict] = {
    "fast": {
        "fixed_resolution_mm": 2.0,
        "rigid_iterations": (200, 100, 0),
        "rigid_shrink": (4, 2, 1),
        "rigid_smoothing": (2, 1, 0),
        "init_rigid_iterations": (200, 200, 100, 0),
        "init_rigid_shrink": (8, 4, 2, 1),
        "init_rigid_smoothing": (3, 2, 1, 0),
        "init_pitches_deg": (0.0, -20.0, 20.0),
        "init_pitch_min_gain": 0.02,
        "aff_iterations": (500, 250, 0),
        "aff_shrink": (4, 2, 1),
        "aff_smoothing": (2, 1, 0),
        "reg_iterations": (40, 20, 0),
        "sampling_rate": 0.25,
    },
    "standard": {
        "fixed_resolution_mm": 2.0,
        "rigid_iterations": (500, 250, 0),
        "rigid_shrink": (4, 2, 1),
        "rigid_smoothing": (2, 1, 0),
        "init_rigid_iterations": (200, 200, 100, 0),
        "init_rigid_shrink": (8, 4, 2, 1),
        "init_rigid_smoothing": (3, 2, 1, 0),
        "init_pitches_deg": (0.0, -20.0, 20.0),
        "init_pitch_min_gain": 0.02,
        "aff_iterations": (1000, 500, 250, 50),
        "aff_shrink": (8, 4, 2, 1),
        "aff_smoothing": (3, 2, 1, 0),
        "reg_iterations": (100, 70, 20),
        "sampling_rate": 0.25,
    },
}


@dataclass
class RegistrationResult:
    """Transforms of one subject (paths of the saved files) and how they were made.

    ``gre_to_t1w`` is None when there is no T1w; then ``to_template`` and
    ``from_template`` map the GRE magnitude directly (``direct_to_template``).
    """

    to_template: Path
    from_template: Path
    gre_to_t1w: Path | None
    direct_to_template: bool
    preset: str
    seed: int
    template: str = TEMPLATE_NAME
    timings_s: dict = field(default_factory=dict)
    #: The rigid start kept (head pitch, degrees) and each start's masked mutual-information cost.
    rigid_start: dict = field(default_factory=dict)
    #: The SyN stage's metric (a key of :data:`SYN_METRICS`).
    syn_metric: str = RegistrationConfig.syn_metric

    def sidecar(self) -> dict:
        """Provenance for the JSON sidecars."""
        return {
            "Software": "ANTs (antspyx)",
            "Template": self.template,
            "Preset": self.preset,
            "RandomSeed": self.seed,
            "GREToT1w": "rigid" if self.gre_to_t1w else None,
            "ToTemplate": "rigid+affine+SyN",
            "DirectGREToTemplate": self.direct_to_template,
            "Parameters": PRESETS[self.preset],
            "SyNMetric": {"name": self.syn_metric, **SYN_METRICS[self.syn_metric]},
            "TimingsSeconds": self.timings_s,
            "RigidStart": self.rigid_start,
        }


def set_threads(n: int) -> None:
    """Fix the ITK thread count (effective for registrations started after the call)."""
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(int(n))


# ---------------------------------------------------------------------------
# nibabel <-> ANTs
# ---------------------------------------------------------------------------

_LPS = np.diag([-1.0, -1.0, 1.0])


def to_ants(img, dtype=np.float32):
    """A 3D nibabel image as an ANTsImage (RAS affine -> LPS origin/direction)."""
    import ants

    data = np.asarray(img.dataobj, dtype=dtype)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ValueError(f"expected a 3D image, got shape {data.shape}")
    aff = np.asarray(img.affine, dtype=float)
    spacing = np.linalg.norm(aff[:3, :3], axis=0)
    direction = _LPS @ aff[:3, :3] / spacing
    # ITK accepts only orthonormal direction cosines: take the nearest rotation (polar factor),
    # which leaves an orthonormal affine unchanged and drops a (rare) shear.
    u, _, vt = np.linalg.svd(direction)
    direction = u @ vt
    origin = _LPS @ aff[:3, 3]
    return ants.from_numpy(np.ascontiguousarray(data), origin=tuple(origin), spacing=tuple(spacing),
                           direction=direction)


def to_nibabel(aimg, dtype=np.float32):
    """An ANTsImage as a nibabel image (LPS -> RAS)."""
    import nibabel as nib

    direction = np.asarray(aimg.direction, dtype=float)
    spacing = np.asarray(aimg.spacing, dtype=float)
    aff = np.eye(4)
    aff[:3, :3] = _LPS @ direction * spacing
    aff[:3, 3] = _LPS @ np.asarray(aimg.origin, dtype=float)
    out = nib.Nifti1Image(np.asarray(aimg.numpy(), dtype=dtype), aff)
    out.set_data_dtype(dtype)
    return out


def brain_template(resolution_mm: float = 1.0):
    """The template T1w at ``resolution_mm`` (nibabel, float32); nilearn's file is brain-extracted."""
    return template_image(resolution_mm, "T1w")


# ---------------------------------------------------------------------------
# Registration
# ---------------------------------------------------------------------------

def itk_seed(seed: int) -> int:
    """The ``--random-seed`` handed to ANTs for the app's ``--seed``: never 0.

    antsRegistration reads ``--random-seed 0`` as "no seed" and seeds its metric sampler from the
    clock, so the default ``--seed 0`` gave different transforms in every process (issue 11);
    seeds map one to one onto 1 .. 2**31 - 1.
    """
    return int(seed) % (2**31 - 1) + 1


@contextlib.contextmanager
def ants_seed(seed: int):
    """Within this block, every ``ants.registration`` call gets ``--random-seed seed``.

    The one adapter over antspyx's seed (0.6.3 reads the module global ``ants.config._random_seed``;
    its public ``set_ants_deterministic`` would also force one ITK thread and reseed numpy's global
    generator). Every registration of qsm-bids runs inside it; the global is restored afterwards.
    """
    import ants.config

    old = ants.config._random_seed  # noqa: SLF001 - the adapter (see above)
    ants.config._random_seed = itk_seed(seed)  # noqa: SLF001
    try:
        yield
    finally:
        ants.config._random_seed = old  # noqa: SLF001


def _ants_rigid(fixed, moving, outprefix: str, p: dict, seed: int, moving_mask=None, schedule: str = "rigid",
                initial_transform=None):
    """Rigid antsRegistration with the preset's ``<schedule>_iterations/_shrink/_smoothing``, from
    ``initial_transform`` (a transform file; None: ANTs' centre-of-mass start)."""
    import ants

    with ants_seed(seed):
        return ants.registration(fixed=fixed, moving=moving, outprefix=outprefix, type_of_transform="Rigid",
                                 initial_transform=initial_transform,
                                 aff_iterations=p[f"{schedule}_iterations"],
                                 aff_shrink_factors=p[f"{schedule}_shrink"],
                                 aff_smoothing_sigmas=p[f"{schedule}_smoothing"],
                                 aff_random_sampling_rate=p["sampling_rate"],
                                 moving_mask=moving_mask, mask_all_stages=moving_mask is not None)


def pitch_start_matrix(pitch_deg: float) -> np.ndarray:
    """The rotation by ``pitch_deg`` about the left-right (x) axis, as a 3x3 matrix (RAS/LPS alike:
    both keep x as the left-right axis, and a rotation about x is the same matrix in either)."""
    a = np.deg2rad(float(pitch_deg))
    return np.array([[1.0, 0.0, 0.0], [0.0, np.cos(a), -np.sin(a)], [0.0, np.sin(a), np.cos(a)]])


def _pitch_start(fixed, moving, pitch_deg: float, path: str) -> str:
    """A rigid start (fixed -> moving points, ANTs' convention): the intensity centres of mass aligned,
    as ANTs' own ``[fixed,moving,1]`` start, and the head turned by ``pitch_deg`` about the template
    centre's left-right axis."""
    import ants

    c_fixed = np.asarray(ants.get_center_of_mass(fixed), dtype=float)
    c_moving = np.asarray(ants.get_center_of_mass(moving), dtype=float)
    tx = ants.create_ants_transform(transform_type="AffineTransform", dimension=3,
                                    matrix=pitch_start_matrix(pitch_deg), center=c_fixed.tolist(),
                                    translation=(c_moving - c_fixed).tolist())
    ants.write_transform(tx, path)
    return path


def _multistart_rigid(fixed, moving, outprefix: str, p: dict, seed: int, moving_mask=None):
    """The rigid stage to the template, from the best of several head pitches.

    One start converges to a wrong pitch now and then (a simulated, thinned T1w with an 18-degree pitch:
    precentral Dice 0.45-0.57 from the centre-of-mass start, 0.90-0.92 from +20 degrees); head tilt in
    the scanner is mostly about the left-right axis. Each start runs the full ``init_rigid`` schedule and
    is scored by Mattes mutual information over the template's brain, with the moving head masked.
    """
    import ants

    fixed_mask = ants.threshold_image(fixed, 1e-6, 1e9)  # the template is brain-extracted
    scored = moving * moving_mask if moving_mask is not None else moving
    # Start files live apart from the registration prefixes: antspyx collects every file matching
    # "<outprefix>*[0-9]*" as an output transform, so "<outprefix>start_p20.mat" would be taken for one.
    start_dir = tempfile.mkdtemp(prefix="pitch-starts-", dir=os.path.dirname(outprefix) or None)
    best, costs = None, {}
    for pitch in p["init_pitches_deg"]:
        # file names without signs: ANTs reads "[name,...]" arguments and misreads a "+"
        tag = f"{'m' if pitch < 0 else 'p'}{abs(pitch):.0f}"
        start = None if pitch == 0 else _pitch_start(fixed, moving, pitch, os.path.join(start_dir, f"{tag}.mat"))
        reg = _ants_rigid(fixed, moving, f"{outprefix}{tag}_", p, seed, moving_mask, schedule="init_rigid",
                          initial_transform=start)
        # the collapsed output holds the start too: one affine file
        if len(reg["fwdtransforms"]) != 1:
            raise RuntimeError(f"rigid start {tag}: expected one transform, got {reg['fwdtransforms']}")
        warped = ants.apply_transforms(fixed, scored, reg["fwdtransforms"])
        cost = float(ants.image_similarity(fixed, warped, metric_type="MattesMutualInformation",
                                           fixed_mask=fixed_mask))
        logger.debug("rigid start at pitch %+.0f deg: mutual information cost %.4f", pitch, cost)
        costs[f"{pitch:+.0f}"] = round(cost, 4)
        if best is None or cost < best[0] - (p["init_pitch_min_gain"] if best[1] == 0 else 0.0):
            best = (cost, pitch, reg)
    if best[1] != 0:
        logger.info("rigid start at %+.0f degrees pitch fits the template best (mutual information %.3f)",
                    best[1], best[0])
    best[2]["rigid_start"] = {"PitchDeg": best[1], "MutualInformationCost": costs}
    return best[2]


#: The SyN stage's similarity metrics (``registration.syn_metric``): antspyx's ``syn_metric`` and its
#: ``syn_sampling`` (histogram bins for Mattes, the neighbourhood radius in voxels for CC).
SYN_METRICS: dict[str, dict] = {
    "mattes": {"syn_metric": "mattes", "syn_sampling": 32},
    "cc": {"syn_metric": "CC", "syn_sampling": 2},
}
#: The SyN metric of a GRE magnitude registered without a T1w, whatever ``syn_metric`` says: a
#: T2*-weighted image against the T1w template needs mutual information, not correlation.
GRE_ONLY_SYN_METRIC = "mattes"


def _ants_syn(fixed, moving, outprefix, p, seed, *, syn_metric: str, moving_mask=None):
    """Rigid, then affine, then SyN, each stage starting from the last (antsRegistrationSyN's order).

    An affine started from the image centres alone can settle with a tilted head's vertex
    unaligned (measured: a simulated 18-25 degree pitch left the precentral gyrus at Dice
    0.05-0.39, deep nuclei fine); the rigid stage first takes out the rotation. antspyx's "SyN"
    hard-codes its own affine stage, so the stages run explicitly and the composite holds all three.
    """
    import ants

    # the rigid stage starts at 8x shrink (16 mm voxels on the 2 mm template), a wider capture range:
    # a synthetic 25-degree pitch registered with all 7 seeds tried; starting at 4x, 1 seed of 4 failed
    rig = _multistart_rigid(fixed, moving, outprefix + "rig_", p, seed, moving_mask)
    with ants_seed(seed):
        aff = ants.registration(fixed=fixed, moving=moving, outprefix=outprefix + "aff_",
                                type_of_transform="Affine", initial_transform=rig["fwdtransforms"],
                                aff_iterations=p["aff_iterations"], aff_shrink_factors=p["aff_shrink"],
                                aff_smoothing_sigmas=p["aff_smoothing"],
                                aff_random_sampling_rate=p["sampling_rate"],
                                moving_mask=moving_mask, mask_all_stages=moving_mask is not None)
        syn = ants.registration(fixed=fixed, moving=moving, outprefix=outprefix,
                                type_of_transform="SyNOnly", initial_transform=aff["fwdtransforms"],
                                reg_iterations=p["reg_iterations"], moving_mask=moving_mask,
                                write_composite_transform=True, **SYN_METRICS[syn_metric])
    syn["rigid_start"] = rig["rigid_start"]
    return syn


def _copy_atomic(src: str | Path, dest: Path) -> Path:
    # ANTs/ITK do not always fail when a write fails (a full scratch disk leaves a truncated or empty
    # transform and a normal return): read the scratch file back before it becomes an output
    verify_output(src)
    with atomic_path(dest) as tmp:
        shutil.copyfile(src, tmp)
    return Path(dest)


def _normalise_intensity(aimg, mask=None):
    """Scale to the 1-99th percentile of the brain so metrics see comparable ranges."""
    arr = aimg.numpy()
    sel = arr[mask.numpy() > 0] if mask is not None else arr[arr > 0]
    if sel.size == 0:
        return aimg
    lo, hi = np.percentile(sel, [1, 99])
    return aimg.new_image_like(np.clip((arr - lo) / max(hi - lo, 1e-6), 0, None).astype(np.float32))


def register_subject(magnitude, t1w, out_to_template, out_from_template, out_gre_to_t1w=None,
                     preset: str = RegistrationConfig.preset, seed: int = 0, gre_mask=None,
                     work_dir=None, syn_metric: str = RegistrationConfig.syn_metric) -> RegistrationResult:
    """Register one subject: magnitude -> T1w (rigid), T1w -> template (rigid, affine, SyN).

    Parameters
    ----------
    magnitude : nibabel image
        GRE magnitude of the first echo (native GRE grid).
    t1w : nibabel image or None
        The T1w; None registers the magnitude to the template directly.
    out_to_template, out_from_template : path
        Where to write the composite ``.h5`` (T1w -> template and its inverse;
        GRE -> template when there is no T1w).
    out_gre_to_t1w : path or None
        Where to write the rigid GRE -> T1w ANTs affine ``.mat`` (required with a T1w).
    preset : {"fast", "standard"}
    seed : int
        Random seed of ANTs' metric sampling.
    gre_mask : nibabel image or None
        Brain mask on the GRE grid; used as the moving mask (dilated) so the
        skull of a non-extracted T1w/magnitude does not drive the fit.
    work_dir : path or None
        Scratch folder for ANTs' intermediate files (default: a temporary folder).
    syn_metric : {"mattes", "cc"}
        The T1w -> template SyN stage's metric (:data:`SYN_METRICS`); the rigid and affine stages use
        Mattes, and so does a GRE magnitude registered directly (no T1w): a T2*-weighted image against
        the T1w template needs mutual information, not correlation.

    Returns
    -------
    RegistrationResult
    """
    import ants

    if preset not in PRESETS:
        raise ValueError(f"registration preset must be one of {sorted(PRESETS)}, not {preset!r}")
    if syn_metric not in SYN_METRICS:
        raise ValueError(f"registration syn_metric must be one of {sorted(SYN_METRICS)}, not {syn_metric!r}")
    p = PRESETS[preset]
    timings = {}
    fixed = _normalise_intensity(to_ants(brain_template(p["fixed_resolution_mm"])))
    mag = to_ants(magnitude)
    mag_mask = None
    if gre_mask is not None:
        mag_mask = to_ants(gre_mask).threshold_image(0.5, 1e9)
        mag_mask = ants.iMath(mag_mask, "MD", 2)
    mag = _normalise_intensity(mag, mag_mask)

    with tempfile.TemporaryDirectory(dir=work_dir, prefix="qsmbids-reg-") as tmp:
        tmp = str(tmp) + os.sep
        if t1w is None:
            logger.warning("no T1w: registering the GRE magnitude directly to the template (%s)", preset)
            t0 = time.perf_counter()
            syn = _ants_syn(fixed, mag, tmp + "gre2tpl_", p, seed, moving_mask=mag_mask,
                            syn_metric=GRE_ONLY_SYN_METRIC)
            timings["gre_to_template"] = round(time.perf_counter() - t0, 2)
            _copy_atomic(syn["fwdtransforms"], Path(out_to_template))
            _copy_atomic(syn["invtransforms"], Path(out_from_template))
            return RegistrationResult(Path(out_to_template), Path(out_from_template), None, True,
                                      preset, int(seed), timings_s=timings, rigid_start=syn["rigid_start"],
                                      syn_metric=GRE_ONLY_SYN_METRIC)

        if out_gre_to_t1w is None:
            raise ValueError("out_gre_to_t1w is required when a T1w is given")
        t1 = to_ants(t1w)
        t0 = time.perf_counter()
        rig = _ants_rigid(_normalise_intensity(t1), mag, tmp + "gre2t1_", p, seed, moving_mask=mag_mask)
        timings["gre_to_t1w"] = round(time.perf_counter() - t0, 2)
        rigid_mat = rig["fwdtransforms"][0]
        t1_mask = None
        if mag_mask is not None:
            # The GRE brain mask carried onto the T1w masks the skull out of the T1w -> template fit.
            t1_mask = ants.apply_transforms(t1, mag_mask, [rigid_mat], interpolator="nearestNeighbor")
            t1_mask = ants.iMath(t1_mask, "MD", 2)
        t1n = _normalise_intensity(t1, t1_mask)
        t0 = time.perf_counter()
        syn = _ants_syn(fixed, t1n, tmp + "t12tpl_", p, seed, moving_mask=t1_mask, syn_metric=syn_metric)
        timings["t1w_to_template"] = round(time.perf_counter() - t0, 2)
        _copy_atomic(rigid_mat, Path(out_gre_to_t1w))
        _copy_atomic(syn["fwdtransforms"], Path(out_to_template))
        _copy_atomic(syn["invtransforms"], Path(out_from_template))
    logger.info("registration (%s) done in %.1f s", preset, sum(timings.values()))
    return RegistrationResult(Path(out_to_template), Path(out_from_template), Path(out_gre_to_t1w),
                              False, preset, int(seed), timings_s=timings, rigid_start=syn["rigid_start"],
                              syn_metric=syn_metric)


# ---------------------------------------------------------------------------
# Applying transforms
# ---------------------------------------------------------------------------

def _template_reference(resolution_mm: float):
    return to_ants(brain_template(resolution_mm))


def gre_to_template(img, xfm_t1w_template, xfm_gre_t1w=None, resolution_mm: float = 2.0,
                    interpolation: str = "linear", dtype=np.float32):
    """A native-GRE map (Chimap, mask, magnitude) on the template grid, resampled once.

    The transform list [T1w -> template, GRE -> T1w] is composed by ANTs before
    interpolating. ``interpolation``: "linear" for maps, "nearestNeighbor" or
    "genericLabel" for masks and labels.
    """
    import ants

    tx = [str(xfm_t1w_template)] + ([str(xfm_gre_t1w)] if xfm_gre_t1w else [])
    out = ants.apply_transforms(_template_reference(resolution_mm), to_ants(img), tx,
                                interpolator=interpolation, defaultvalue=0)
    return to_nibabel(out, dtype)


def t1w_to_template(img, xfm_t1w_template, resolution_mm: float = 2.0, dtype=np.float32):
    """The T1w on the template grid (linear)."""
    import ants

    out = ants.apply_transforms(_template_reference(resolution_mm), to_ants(img),
                                [str(xfm_t1w_template)], interpolator="linear", defaultvalue=0)
    return to_nibabel(out, dtype)


def atlas_to_native(atlas_img, reference, xfm_gre_t1w, xfm_template_t1w,
                    interpolation: str = "nearestNeighbor"):
    """Template-space labels on the native GRE grid, through the inverse transforms.

    Parameters
    ----------
    atlas_img : nibabel image
        Integer labels in template space (any resolution).
    reference : nibabel image
        Defines the native GRE grid (e.g. the Chimap).
    xfm_gre_t1w : path or None
        The rigid GRE -> T1w ``.mat`` (inverted here); None skips it.
    xfm_template_t1w : path
        The inverse composite template -> T1w ``.h5``.
    interpolation : {"nearestNeighbor", "genericLabel"}

    Returns
    -------
    nibabel.Nifti1Image, int16 labels on the reference grid.
    """
    import nibabel as nib

    warped = template_to_native(atlas_img, reference, xfm_gre_t1w, xfm_template_t1w, interpolation)
    labels = np.rint(warped.get_fdata(dtype=np.float32)).astype(np.int16)
    img = nib.Nifti1Image(labels, np.asarray(reference.affine, dtype=float))
    img.set_data_dtype(np.int16)
    return img


# ---------------------------------------------------------------------------
# The participant workflow's entry point
# ---------------------------------------------------------------------------

def _write_identity(path: Path) -> None:
    import ants

    tx = ants.create_ants_transform(transform_type="AffineTransform", dimension=3)
    with atomic_path(path) as tmp:
        ants.write_transform(tx, str(tmp))


def template_to_native(img, reference, xfm_gre_t1w, xfm_template_t1w, interpolation: str = "linear"):
    """A template-space map (e.g. the template brain mask) on the native GRE grid, float32.

    Through the inverse transforms (template -> T1w composite, then the inverted rigid GRE -> T1w),
    composed by ANTs and resampled once; zero outside the template's field of view.
    """
    import ants
    import nibabel as nib

    if xfm_gre_t1w:
        tx, inv = [str(xfm_gre_t1w), str(xfm_template_t1w)], [True, False]
    else:
        tx, inv = [str(xfm_template_t1w)], [False]
    out = ants.apply_transforms(to_ants(reference), to_ants(img, np.float32), tx, whichtoinvert=inv,
                                interpolator=interpolation, defaultvalue=0)
    return nib.Nifti1Image(out.numpy().astype(np.float32), np.asarray(reference.affine, dtype=float))


def register_participant(magnitude, t1w_path, gre_mask, outputs: dict, template_brain_out=None,
                         template: str = TEMPLATE_NAME, preset: str = RegistrationConfig.preset, seed: int | None = 0,
                         n_threads: int = 1, work_dir=None, sidecar: dict | None = None,
                         syn_metric: str = RegistrationConfig.syn_metric) -> dict:
    """Register one GRE run before its reconstruction (with a T1w) and write the transforms.

    ``magnitude`` and ``gre_mask`` are nibabel images on the GRE grid (first-echo magnitude, a
    magnitude brain mask used as the moving mask). Writes ``outputs['xfm_gre_t1w']``,
    ``['xfm_t1w_template']``, ``['xfm_template_t1w']`` with sidecars (read back by
    :func:`normalise_participant` with ``registered=True``) and, when ``template_brain_out`` is given,
    the template's brain mask on the GRE grid (linear, values in [0, 1]). Returns ``timings``.
    """
    from .errors import DataError, UsageError
    from .io import write_nifti, write_sidecar
    from .templates import template_brain_mask

    if template != TEMPLATE_NAME:
        raise UsageError(f"registration template {template!r} is not available; only {TEMPLATE_NAME} is shipped")
    set_threads(n_threads)
    seed = 0 if seed is None else int(seed)
    try:
        t1w = nib_load_checked(t1w_path)
    except Exception as exc:  # noqa: BLE001 - any reader error is a data error naming the file
        raise DataError(f"{t1w_path}: cannot read the T1w for registration ({exc})") from None
    if len(t1w.shape) == 4 and t1w.shape[3] > 1:
        raise DataError(f"{t1w_path}: T1w must be a 3D image, got shape {t1w.shape}")
    out = {k: Path(v) for k, v in outputs.items()}
    reg = register_subject(magnitude, t1w, out["xfm_t1w_template"], out["xfm_template_t1w"],
                           out["xfm_gre_t1w"], preset=preset, seed=seed, gre_mask=gre_mask,
                           work_dir=work_dir, syn_metric=syn_metric)
    info = {**(sidecar or {}), **reg.sidecar()}
    for key, desc in (("xfm_gre_t1w", "rigid, ANTs affine"),
                      ("xfm_t1w_template", "rigid + affine + SyN, ANTs composite (HDF5)"),
                      ("xfm_template_t1w", "inverse of rigid + affine + SyN, ANTs composite (HDF5)")):
        write_sidecar(out[key], {**info, "Transform": desc})
    if template_brain_out is not None:
        t0 = time.perf_counter()
        tb = template_to_native(template_brain_mask(), magnitude, out["xfm_gre_t1w"], out["xfm_template_t1w"])
        reg.timings_s["template_brain_to_gre"] = round(time.perf_counter() - t0, 2)
        write_nifti(template_brain_out, np.clip(np.asarray(tb.dataobj), 0, 1), tb.affine,
                    sidecar={**info, "Description": f"{TEMPLATE_NAME} brain mask (the template's own brain "
                             "extraction, holes filled) on the GRE grid through the inverse T1w -> template "
                             "and GRE -> T1w transforms (linear, values in [0, 1])"})
    return {"timings": dict(reg.timings_s)}


def nib_load_checked(path):
    """nibabel image read completely now (a truncated file fails here)."""
    import nibabel as nib

    img = nib.load(str(path))
    img.get_fdata(dtype=np.float32)
    return img


def normalise_participant(magnitude_path, t1w_path, chi_path, mask_path, outputs: dict,
                          template: str = TEMPLATE_NAME, resolution_mm: float = 2.0,
                          preset: str = RegistrationConfig.preset, seed: int | None = 0, n_threads: int = 1,
                          work_dir=None, sidecar: dict | None = None, registered: bool = False,
                          syn_metric: str = RegistrationConfig.syn_metric) -> dict:
    """Register one GRE run and write every normalisation output.

    Parameters
    ----------
    magnitude_path, chi_path, mask_path : path
        First-echo magnitude, Chimap (ppm) and brain mask on the native GRE grid.
    t1w_path : path or None
        The subject's T1w; None registers the magnitude to the template directly.
    outputs : dict
        Paths to write, keys ``xfm_gre_t1w`` (.mat), ``xfm_t1w_template`` (.h5),
        ``xfm_template_t1w`` (.h5), ``chi_template``, ``t1w_template``,
        ``mask_template`` (NIfTI, on the template grid at ``resolution_mm``).
        Without a T1w, ``xfm_gre_t1w`` is the identity (the GRE stands in for
        the T1w), the ``.h5`` files map GRE <-> template, and ``t1w_template``
        holds the warped magnitude; the sidecars say ``DirectGREToTemplate``.
    template : str
        Only the shipped ``MNI152NLin2009aSym`` is supported.
    preset, seed, n_threads, work_dir, syn_metric
        Registration preset, ANTs random seed (None: 0), ITK threads, scratch folder, the SyN
        stage's metric (:data:`SYN_METRICS`).
    sidecar : dict or None
        Common sidecar content (software, parameters) merged into every JSON written.
    registered : bool
        The transforms were written by :func:`register_participant` (before the reconstruction):
        they are read, not recomputed, and their sidecars kept.

    Returns
    -------
    dict with ``timings`` (s per registration and for resampling), ``warnings``
    (list of str) and ``direct_to_template`` (bool).
    """
    import nibabel as nib

    from .errors import DataError, UsageError
    from .io import write_nifti, write_sidecar

    if template != TEMPLATE_NAME:
        raise UsageError(f"registration template {template!r} is not available; only {TEMPLATE_NAME} is shipped")
    set_threads(n_threads)
    seed = 0 if seed is None else int(seed)
    def _read(path, what):
        try:
            img = nib.load(str(path))
            img.get_fdata(dtype=np.float32)  # read now: a truncated file fails here, named
            return img
        except Exception as exc:  # noqa: BLE001 - any reader error is a data error naming the file
            raise DataError(f"{path}: cannot read the {what} for registration ({exc})") from None

    mag, mask, chi = _read(magnitude_path, "magnitude"), _read(mask_path, "mask"), _read(chi_path, "Chimap")
    t1w = _read(t1w_path, "T1w") if t1w_path else None
    if t1w is not None and len(t1w.shape) == 4 and t1w.shape[3] > 1:
        raise DataError(f"{t1w_path}: T1w must be a 3D image, got shape {t1w.shape}")
    warnings = []
    out = {k: Path(v) for k, v in outputs.items()}
    if registered:
        import json

        from .io import sidecar_of

        if t1w is None:
            raise ValueError("registered=True needs the T1w the transforms were made with")
        try:
            prior = json.loads(sidecar_of(out["xfm_t1w_template"]).read_text())
        except (OSError, ValueError) as exc:
            raise DataError(f"{out['xfm_t1w_template']}: its sidecar cannot be read ({exc}); rerun the "
                            "registration") from None
        reg = RegistrationResult(out["xfm_t1w_template"], out["xfm_template_t1w"], out["xfm_gre_t1w"],
                                 False, prior.get("Preset", preset), int(prior.get("RandomSeed", seed)),
                                 timings_s={}, rigid_start=prior.get("RigidStart", {}),
                                 syn_metric=prior.get("SyNMetric", {}).get("name", syn_metric))
    else:
        reg = register_subject(mag, t1w, out["xfm_t1w_template"], out["xfm_template_t1w"],
                               out["xfm_gre_t1w"] if t1w is not None else None, preset=preset, seed=seed,
                               gre_mask=mask, work_dir=work_dir, syn_metric=syn_metric)
    if reg.direct_to_template:
        _write_identity(out["xfm_gre_t1w"])
        warnings.append("no T1w: the GRE magnitude was registered to the template directly")
    info = {**(sidecar or {}), **reg.sidecar()}
    if registered:
        info["TimingsSeconds"] = prior.get("TimingsSeconds", {})
        info["RegisteredBeforeReconstruction"] = True
    t0 = time.perf_counter()
    chi_t = gre_to_template(chi, out["xfm_t1w_template"], out["xfm_gre_t1w"], resolution_mm, "linear")
    mask_t = gre_to_template(mask, out["xfm_t1w_template"], out["xfm_gre_t1w"], resolution_mm,
                             "nearestNeighbor")
    if t1w is not None:
        t1_t = t1w_to_template(t1w, out["xfm_t1w_template"], resolution_mm)
    else:
        t1_t = gre_to_template(mag, out["xfm_t1w_template"], out["xfm_gre_t1w"], resolution_mm, "linear")
    reg.timings_s["resample"] = round(time.perf_counter() - t0, 2)
    res = {"Resolution": f"{resolution_mm:g} mm template grid (nilearn MNI152 2009 sym bounding box)"}
    write_nifti(out["chi_template"], np.asarray(chi_t.dataobj), chi_t.affine,
                sidecar={**info, **res, "Units": "ppm", "Interpolation": "linear (transforms composed, one resampling)"})
    write_nifti(out["mask_template"], np.asarray(mask_t.dataobj) > 0.5, mask_t.affine, dtype=np.uint8,
                sidecar={**info, **res, "Type": "Brain", "Interpolation": "nearest neighbour"})
    write_nifti(out["t1w_template"], np.asarray(t1_t.dataobj), t1_t.affine,
                sidecar={**info, **res, "Interpolation": "linear",
                         "Source": "GRE magnitude (no T1w)" if reg.direct_to_template else "T1w"})
    for key, desc in (("xfm_gre_t1w", "identity (no T1w)" if reg.direct_to_template else "rigid, ANTs affine"),
                      ("xfm_t1w_template", "rigid + affine + SyN, ANTs composite (HDF5)"),
                      ("xfm_template_t1w", "inverse of rigid + affine + SyN, ANTs composite (HDF5)")):
        if not registered:
            write_sidecar(out[key], {**info, "Transform": desc})
    return {"timings": dict(reg.timings_s), "warnings": warnings, "direct_to_template": reg.direct_to_template}
