"""Structural comparators of the T1w: tissue segmentation, VBM input, cortical thickness, volumes.

Pure parts (arrays in, arrays out): :func:`tissue_priors`, :func:`normalise_priors`,
:func:`modulate`, :func:`region_volumes`, :func:`intracranial_volume_mm3`,
:func:`region_mean_thickness`. ANTs wrappers: :func:`n4`, :func:`segment`
(``ants.atropos`` three tissues, priors from the template), :func:`thickness`
(DiReCT, ``ants.kelly_kapowski``) and :func:`jacobian_determinant` (of the
T1w -> template warp). :func:`process_structural` is the participant step.

Class order everywhere: 1 CSF, 2 GM, 3 WM (the Atropos labels, and the order
of the probability maps).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import DataError

logger = logging.getLogger(__name__)

__all__ = [
    "TISSUES",
    "intracranial_volume_mm3",
    "jacobian_determinant",
    "modulate",
    "n4",
    "normalise_priors",
    "process_structural",
    "region_mean_thickness",
    "refine_labels_locally",
    "region_volumes",
    "segment",
    "thickness",
    "tissue_bounding_box",
    "tissue_priors",
]

TISSUES = ("CSF", "GM", "WM")


# ---------------------------------------------------------------------------
# Pure functions
# ---------------------------------------------------------------------------

def tissue_priors(gm, wm, intracranial) -> np.ndarray:
    """Template priors (3, ...) CSF, GM, WM: GM/WM probabilities, CSF = the rest of the intracranial space."""
    gm = np.clip(np.asarray(gm, dtype=np.float32), 0, 1)
    wm = np.clip(np.asarray(wm, dtype=np.float32), 0, 1)
    inside = np.asarray(intracranial, dtype=bool)
    return normalise_priors(np.stack([np.where(inside, np.clip(1 - gm - wm, 0, 1), 0), gm * inside,
                                      wm * inside]))


def normalise_priors(priors) -> np.ndarray:
    """Clip to [0, 1] and rescale voxels whose classes sum above 1 (interpolation overshoot)."""
    p = np.clip(np.asarray(priors, dtype=np.float32), 0, 1)
    s = p.sum(axis=0)
    over = s > 1
    p[:, over] /= s[over]
    return p


def modulate(gm_template, jacobian) -> np.ndarray:
    """Modulated GM (VBM): the warped GM probability times the Jacobian determinant of the
    template -> T1w mapping, so the template image integrates to the native GM volume."""
    return (np.asarray(gm_template, dtype=np.float32) * np.clip(np.asarray(jacobian, dtype=np.float32), 0, None))


def region_volumes(labels, label_table: pd.DataFrame, voxel_volume_mm3: float, regions,
                   gm_probability=None) -> pd.DataFrame:
    """Volume of each atlas region (mm^3): voxel count times voxel volume, and the GM within it.

    Returns columns ``region``, ``hemisphere``, ``volume_mm3``, ``gm_volume_mm3``
    (sum of the GM probability over the region times the voxel volume; NaN
    without ``gm_probability``), ``n_voxels``.
    """
    labels = np.asarray(labels)
    gm = None if gm_probability is None else np.asarray(gm_probability, dtype=np.float64)
    counts = np.bincount(labels.ravel().astype(np.int64), minlength=int(label_table["index"].max()) + 1)
    gm_sums = (np.bincount(labels.ravel().astype(np.int64), weights=gm.ravel(), minlength=len(counts))
               if gm is not None else None)
    rows = []
    for r in label_table.itertuples(index=False):
        if r.region not in regions:
            continue
        n = int(counts[int(r.index)]) if int(r.index) < len(counts) else 0
        rows.append({"region": r.region, "hemisphere": r.hemisphere, "volume_mm3": n * voxel_volume_mm3,
                     "gm_volume_mm3": float(gm_sums[int(r.index)]) * voxel_volume_mm3
                     if gm_sums is not None else float("nan"), "n_voxels": n})
    return pd.DataFrame(rows, columns=["region", "hemisphere", "volume_mm3", "gm_volume_mm3", "n_voxels"])


def intracranial_volume_mm3(probabilities, mask, voxel_volume_mm3: float) -> float:
    """ICV: the sum of the three tissue probabilities over the intracranial mask (mm^3)."""
    p = np.asarray(probabilities, dtype=np.float64)
    m = np.asarray(mask, dtype=bool)
    return float(p[:, m].sum() * voxel_volume_mm3)


def region_mean_thickness(thickness_mm, labels, label_table: pd.DataFrame, regions,
                          min_voxels: int = 10) -> pd.DataFrame:
    """Mean cortical thickness (mm) over the voxels of each region where DiReCT measured one (> 0)."""
    t = np.asarray(thickness_mm, dtype=np.float64)
    labels = np.asarray(labels)
    rows = []
    for r in label_table.itertuples(index=False):
        if r.region not in regions:
            continue
        sel = (labels == int(r.index)) & (t > 0)
        n = int(sel.sum())
        rows.append({"region": r.region, "hemisphere": r.hemisphere,
                     "thickness_mm": float(t[sel].mean()) if n >= min_voxels else float("nan"), "n_voxels": n})
    return pd.DataFrame(rows, columns=["region", "hemisphere", "thickness_mm", "n_voxels"])


# ---------------------------------------------------------------------------
# ANTs wrappers
# ---------------------------------------------------------------------------

def n4(t1w, mask=None, shrink_factor: int = 4, iterations=(50, 50, 30)):
    """N4 bias correction of an ANTsImage (the mask restricts the fit)."""
    import ants

    return ants.n4_bias_field_correction(t1w, mask=mask, shrink_factor=int(shrink_factor),
                                         convergence={"iters": list(iterations), "tol": 1e-7})


def segment(t1w, mask, priors, *, prior_weight: float = 0.25, iterations: int = 5, mrf: float = 0.1):
    """Three-tissue Atropos segmentation with prior probability images (CSF, GM, WM ANTsImages).

    Returns ``(labels, [p_csf, p_gm, p_wm])`` as ANTsImages (labels 1 CSF, 2 GM, 3 WM).
    """
    import ants

    radius = "x".join(["1"] * t1w.dimension)
    res = ants.atropos(a=t1w, x=mask, i=list(priors), m=f"[{mrf},{radius}]", c=f"[{int(iterations)},0]",
                       priorweight=float(prior_weight))
    return res["segmentation"], list(res["probabilityimages"])


def tissue_bounding_box(labels, margin: int = 3, tissue=(2, 3)) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Lower (inclusive) and upper (exclusive) voxel indices of the box around ``tissue`` labels, grown by
    ``margin`` voxels and clipped to the grid; the whole grid when no voxel carries those labels."""
    from .recon._ops import crop_box

    box = crop_box(np.isin(np.asarray(labels), tissue), margin)
    return tuple(s.start for s in box), tuple(s.stop for s in box)


def thickness(labels, p_gm, p_wm, *, iterations: int = 45, gradient_step: float = 0.025,
              smoothing: float = 1.5, resolution_mm: float = 0.0):
    """Cortical thickness (mm) by DiReCT (Das et al. 2009; ``ants.kelly_kapowski``), on the grid of ``labels``.

    DiReCT's cost grows with the voxel count, so it runs on the box around GM and WM
    (:func:`tissue_bounding_box`; the rest of a head's field of view is about 30 % of the voxels and
    carries no thickness) and, with ``resolution_mm`` > 0, on an isotropic grid of that spacing, the
    thickness brought back by nearest neighbour. Zero outside the box.
    """
    import ants

    lower, upper = tissue_bounding_box(labels.numpy())
    seg, gm, wm = (ants.crop_indices(im, lower, upper) for im in (labels, p_gm, p_wm))
    box = seg
    r = float(resolution_mm)
    if r > 0 and not np.allclose(seg.spacing, r):
        seg = ants.resample_image(box, (r,) * box.dimension, use_voxels=False, interp_type=1)
        gm = ants.resample_image_to_target(gm, seg, interp_type="linear")
        wm = ants.resample_image_to_target(wm, seg, interp_type="linear")
    th = ants.kelly_kapowski(s=seg, g=gm, w=wm, its=int(iterations), r=float(gradient_step),
                             m=float(smoothing), gm_label=2, wm_label=3)
    if th.shape != box.shape:
        th = ants.resample_image_to_target(th, box, interp_type="nearestNeighbor")
    out = np.zeros(labels.shape, np.float32)
    out[tuple(slice(a, b) for a, b in zip(lower, upper))] = th.numpy()
    return labels.new_image_like(out)


def jacobian_determinant(reference, transforms, work_dir=None):
    """Jacobian determinant on ``reference``'s grid of the mapping that ``transforms`` (the
    list given to ``ants.apply_transforms`` to bring the T1w onto ``reference``) applies.

    The list is composed into one displacement field (affine included), whose
    Jacobian is the local volume ratio T1w / template.
    """
    import tempfile

    import ants

    with tempfile.TemporaryDirectory(dir=work_dir, prefix="qsmbids-jac-") as tmp:
        field = ants.apply_transforms(reference, reference, [str(t) for t in transforms],
                                      compose=str(Path(tmp) / "composed_"))
        return ants.create_jacobian_determinant_image(reference, field, do_log=False, geom=False)


def refine_labels_locally(t1w, template_native, labels, region_indices, *, margin_mm: float = 12.0,
                          iterations=(30, 15, 5), radius: int = 2, seed: int = 0):
    """Refine atlas labels in native T1w space by a local SyN around some regions.

    The whole-brain T1w -> template warp lives on a 2-4 mm grid, too coarse to
    follow a nucleus' own size; here the template already brought to the T1w
    (``template_native``) is registered again to the T1w (SyNOnly, CC of the
    given radius, no affine) inside the box around ``region_indices`` plus
    ``margin_mm``, at the T1w's resolution, and the labels follow.

    Parameters
    ----------
    t1w, template_native : ANTsImage on the same grid (the bias-corrected T1w; the template there).
    labels : ANTsImage of integer atlas labels on that grid.
    region_indices : label values that define the box.

    Returns
    -------
    numpy int16 array of the labels, refined inside the box, unchanged outside; and the box
    (tuple of slices), or None when none of the regions is present (labels unchanged).
    """
    import ants

    from .registration import ants_seed

    lab = np.rint(labels.numpy()).astype(np.int16)
    present = np.isin(lab, list(region_indices))
    if not present.any():
        return lab, None
    spacing = np.asarray(t1w.spacing, dtype=float)
    pad = np.ceil(float(margin_mm) / spacing).astype(int)
    nz = np.nonzero(present)
    lo = [max(int(a.min()) - p, 0) for a, p in zip(nz, pad)]
    hi = [min(int(a.max()) + p + 1, n) for a, p, n in zip(nz, pad, lab.shape)]  # exclusive, as crop_indices
    fixed = ants.iMath(ants.crop_indices(t1w, lo, hi), "Normalize")
    moving = ants.iMath(ants.crop_indices(template_native, lo, hi), "Normalize")
    lab_box = ants.crop_indices(labels, lo, hi)
    with ants_seed(seed):
        reg = ants.registration(fixed=fixed, moving=moving, type_of_transform="SyNOnly", syn_metric="CC",
                                syn_sampling=int(radius), reg_iterations=tuple(int(n) for n in iterations),
                                initial_transform="identity")
    refined = ants.apply_transforms(fixed, lab_box, reg["fwdtransforms"], interpolator="genericLabel",
                                    defaultvalue=0)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    lab[box] = np.rint(refined.numpy()).astype(np.int16)
    return lab, box


# ---------------------------------------------------------------------------
# The participant step
# ---------------------------------------------------------------------------

def _template_intracranial(resolution_mm: float):
    from scipy import ndimage as ndi

    from .atlas import template_image

    t1 = template_image(resolution_mm, "T1w")
    arr = np.asarray(t1.dataobj)
    return ndi.binary_fill_holes(arr > 0.02 * arr.max()), t1


def _template_probability(kind: str) -> np.ndarray:
    from .atlas import template_image

    arr = np.asarray(template_image(1.0, kind).dataobj, dtype=np.float32)
    return arr / 255.0 if arr.max() > 1.5 else arr  # nilearn ships 0..255


def process_structural(t1w_path, xfm_t1w_template, xfm_template_t1w, outputs: dict, *, atlas_img, label_table,
                       params, resolution_mm: float = 2.0, min_voxels: int = 10, work_dir=None,
                       sidecar: dict | None = None, seed: int = 0) -> dict:
    """Segment one T1w, measure thickness and volumes, and write every structural output.

    Parameters
    ----------
    t1w_path : path
    xfm_t1w_template, xfm_template_t1w : path
        The registration step's composite transforms (T1w -> template, inverse).
    outputs : dict
        Paths: ``probseg_csf``, ``probseg_gm``, ``probseg_wm``, ``tissue_dseg`` (native T1w),
        ``gm_modulated_template``, ``jacobian_template``, ``volumes`` (TSV), and with
        ``params.thickness`` ``thickness`` (native) and ``thickness_template``.
    atlas_img, label_table : the atlas in template space and its table.
    params : ``Config.structural``
        ``n4_shrink``, ``prior_weight``, ``atropos_iterations``, ``mrf`` (N4 + Atropos),
        ``thickness`` (run DiReCT at all), ``thickness_resolution_mm`` (the grid DiReCT runs on; 0: the T1w
        grid), ``thickness_iterations``, ``thickness_gradient_step``, ``thickness_smoothing`` (DiReCT),
        ``volume_regions``, ``thickness_regions`` (atlas region names), ``volume_refinement`` and its
        ``_iterations``, ``_radius``, ``_margin_mm`` (:func:`refine_labels_locally`).
    resolution_mm : the template grid of the template-space outputs.
    min_voxels : a region's mean thickness from fewer voxels is NaN.
    seed : the ANTs random seed of the local refinement (the app's ``--seed``).

    Returns
    -------
    dict with ``timings`` (s per stage), ``icv_mm3`` and ``warnings``.
    """
    import ants
    import nibabel as nib

    from .io import write_nifti, write_tsv
    from .registration import to_ants, to_nibabel

    timings = {}
    out = {k: Path(v) for k, v in outputs.items()}
    info = dict(sidecar or {})
    try:
        t1_nib = nib.load(str(t1w_path))
        t1_nib.get_fdata(dtype=np.float32)
    except Exception as exc:  # noqa: BLE001 - any read failure is the file's fault: name it
        raise DataError(f"{t1w_path}: cannot read the T1w for segmentation ({exc})") from None
    if len(t1_nib.shape) != 3:
        raise DataError(f"{t1w_path}: T1w must be a 3D image, got shape {t1_nib.shape}")
    t1 = to_ants(t1_nib)
    spacing = np.asarray(t1.spacing, dtype=float)
    voxel_volume = float(np.prod(spacing))

    # template priors and intracranial mask, carried to the T1w
    t0 = time.perf_counter()
    intracranial_t, tpl = _template_intracranial(1.0)
    priors_t = tissue_priors(_template_probability("GM"), _template_probability("WM"), intracranial_t)
    tx_inv = [str(xfm_template_t1w)]
    aff = tpl.affine

    def to_native(arr, interp):
        img = to_ants(nib.Nifti1Image(np.asarray(arr, dtype=np.float32), aff))
        return ants.apply_transforms(t1, img, tx_inv, interpolator=interp, defaultvalue=0)

    mask = to_native(intracranial_t.astype(np.float32), "linear").numpy() >= 0.5
    if mask.sum() < 1000:
        raise DataError(f"{t1w_path}: the template brain mask covers {int(mask.sum())} voxels of the T1w; "
                        "the T1w -> template registration failed")
    priors = normalise_priors(np.stack([to_native(p, "linear").numpy() for p in priors_t]))
    priors[:, ~mask] = 0
    mask_a = t1.new_image_like(mask.astype(np.float32))
    priors_a = [t1.new_image_like(p.astype(np.float32)) for p in priors]
    timings["priors"] = round(time.perf_counter() - t0, 2)

    t0 = time.perf_counter()
    t1c = n4(t1, mask_a, shrink_factor=params.n4_shrink)
    timings["n4"] = round(time.perf_counter() - t0, 2)
    t0 = time.perf_counter()
    seg, probs = segment(t1c, mask_a, priors_a, prior_weight=params.prior_weight,
                         iterations=params.atropos_iterations, mrf=params.mrf)
    timings["atropos"] = round(time.perf_counter() - t0, 2)
    prob_arr = np.stack([p.numpy() for p in probs]).astype(np.float32)
    prob_arr[:, ~mask] = 0
    icv = intracranial_volume_mm3(prob_arr, mask, voxel_volume)

    r = float(params.thickness_resolution_mm)
    thick = thick_arr = None
    if params.thickness:
        t0 = time.perf_counter()
        thick = thickness(seg, probs[1], probs[2], iterations=params.thickness_iterations,
                          gradient_step=params.thickness_gradient_step, smoothing=params.thickness_smoothing,
                          resolution_mm=params.thickness_resolution_mm)
        timings["direct"] = round(time.perf_counter() - t0, 2)
        # thickness is defined in grey matter only
        thick_arr = (thick.numpy() * (seg.numpy() == 2)).astype(np.float32)
        thick = t1.new_image_like(thick_arr)

    # atlas labels in native T1w space: volumes and regional thickness
    t0 = time.perf_counter()
    lab = ants.apply_transforms(t1, to_ants(atlas_img, np.float32), tx_inv, interpolator="genericLabel",
                                defaultvalue=0)
    refinement = "off (structural.volume_refinement is false)"
    if params.volume_refinement:
        tpl_native = to_native(np.asarray(tpl.dataobj), "linear")  # the template T1w, as for the priors
        idx = label_table.loc[label_table["region"].isin(list(params.volume_regions)), "index"].astype(int)
        labels, box = refine_labels_locally(
            t1c, tpl_native, lab, idx.tolist(), margin_mm=params.volume_refinement_margin_mm,
            iterations=params.volume_refinement_iterations, radius=params.volume_refinement_radius, seed=seed)
        timings["volume_refinement"] = round(time.perf_counter() - t0, 2)
        t0 = time.perf_counter()
        refinement = ("off: none of the volume regions is in the native labels" if box is None else
                      f"local SyN (CC radius {params.volume_refinement_radius}, iterations "
                      f"{list(params.volume_refinement_iterations)}) of the template to the T1w in a box of "
                      f"{[b.stop - b.start for b in box]} voxels around the volume regions "
                      f"(+{params.volume_refinement_margin_mm:g} mm)")
    else:
        labels = np.rint(lab.numpy()).astype(np.int16)
    labels[~mask] = 0
    vols = region_volumes(labels, label_table, voxel_volume, tuple(params.volume_regions),
                          gm_probability=prob_arr[1])
    thick_tab = (region_mean_thickness(thick_arr, labels, label_table, tuple(params.thickness_regions),
                                       min_voxels=min_voxels) if thick_arr is not None else None)

    # template space: modulated GM (VBM) and thickness
    from .registration import brain_template

    ref = to_ants(brain_template(resolution_mm))
    fwd = [str(xfm_t1w_template)]
    gm_t = ants.apply_transforms(ref, probs[1], fwd, interpolator="linear", defaultvalue=0)
    jac = jacobian_determinant(ref, fwd, work_dir=work_dir)
    gm_mod = modulate(gm_t.numpy(), jac.numpy())
    thick_t = (ants.apply_transforms(ref, thick, fwd, interpolator="linear", defaultvalue=0)
               if thick is not None else None)
    timings["template_space"] = round(time.perf_counter() - t0, 2)

    A = to_nibabel(t1).affine
    A_t = to_nibabel(ref).affine
    seg_info = {**info, "Software": "ANTs (antspyx): N4BiasFieldCorrection, Atropos",
                "Priors": "template GM/WM (nilearn MNI152 2009 sym) and CSF = intracranial rest, "
                          "brought by the from-template_to-T1w transform", "Classes": list(TISSUES)}
    for k, name in enumerate(TISSUES):
        write_nifti(out[f"probseg_{name.lower()}"], prob_arr[k], A, sidecar={**seg_info, "Label": name})
    write_nifti(out["tissue_dseg"], seg.numpy().astype(np.uint8) * mask, A, dtype=np.uint8,
                sidecar={**seg_info, "Labels": {"1": "CSF", "2": "GM", "3": "WM"}})
    res = {"Resolution": f"{resolution_mm:g} mm template grid"}
    if thick is not None:
        th_info = {**info, "Software": "ANTs (antspyx): KellyKapowski (DiReCT)", "Units": "mm",
                   "ThicknessGrid": (f"{r:g} mm isotropic, nearest back to the T1w grid" if r > 0 else "T1w grid")
                   + ", on the box around GM and WM (3-voxel margin)"}
        write_nifti(out["thickness"], thick_arr, A, sidecar=th_info)
        write_nifti(out["thickness_template"], thick_t.numpy(), A_t,
                    sidecar={**th_info, **res, "Interpolation": "linear"})
    write_nifti(out["jacobian_template"], jac.numpy(), A_t,
                sidecar={**info, **res, "Description": "Jacobian determinant of the template -> T1w mapping "
                         "(T1w volume per template volume), affine included"})
    write_nifti(out["gm_modulated_template"], gm_mod, A_t,
                sidecar={**info, **res, "Description": "GM probability warped to the template and multiplied "
                         "by the Jacobian determinant (modulated GM, VBM input)", "Label": "GM"})
    long = pd.concat([
        vols[["region", "hemisphere", "n_voxels"]].assign(measure="volume_mm3", value=vols["volume_mm3"]),
        vols[["region", "hemisphere", "n_voxels"]].assign(measure="gm_volume_mm3", value=vols["gm_volume_mm3"]),
        *([thick_tab[["region", "hemisphere", "n_voxels"]].assign(measure="thickness_mm",
                                                                  value=thick_tab["thickness_mm"])]
          if thick_tab is not None else []),
        pd.DataFrame([{"region": "intracranial", "hemisphere": "n/a", "n_voxels": int(mask.sum()),
                       "measure": "icv_mm3", "value": icv}]),
    ], ignore_index=True)[["region", "hemisphere", "measure", "value", "n_voxels"]]
    write_tsv(out["volumes"], long, sidecar={
        **info, "LabelRefinement": refinement, "Thickness": "DiReCT thickness_mm rows included" if thick is not None
        else "not computed (structural.thickness is false)",
        "region": {"Description": "Atlas region (or 'intracranial' for the ICV)"},
        "hemisphere": {"Description": "L, R, or n/a"},
        "measure": {"Description": "volume_mm3: atlas label voxels in native T1w space x voxel volume; "
                                   "gm_volume_mm3: GM probability summed over the label; thickness_mm: mean "
                                   "DiReCT thickness over the label's voxels with a thickness; icv_mm3: sum "
                                   "of the three tissue probabilities in the intracranial mask",
                    "Levels": {"volume_mm3": "mm^3", "gm_volume_mm3": "mm^3", "thickness_mm": "mm",
                               "icv_mm3": "mm^3"}},
        "value": {"Description": "The measure's value (units per measure)"},
        "n_voxels": {"Description": "Native T1w voxels behind the value"},
    })
    known = set(label_table["region"].astype(str))
    wanted = list(params.volume_regions) + (list(params.thickness_regions) if params.thickness else [])
    warnings = [f"structural: region '{name}' is not in the atlas's label table; no value written"
                for name in dict.fromkeys(wanted) if name not in known]
    logger.info("structural: ICV %.0f ml, %s", icv / 1000, timings)
    return {"timings": timings, "icv_mm3": icv, "thickness": bool(params.thickness), "warnings": warnings}
