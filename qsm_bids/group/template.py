"""Study-wise template built with ANTs, and maps brought into it (and back to MNI).

The participants' T1w images are already in MNI space (participant level, step
6), so the template starts from their mean and is refined by SyN-only
registrations, ANTs ``build_template`` style: register every image to the
current template, average the warped images, move the average against the mean
warp (``gradient_step``) and sharpen. The last iteration keeps the plain
average, so the saved per-subject transforms map exactly into the saved
template. The template is then registered to MNI (affine + SyN).

Each participant's QSM map is resampled once: from the native GRE grid with
the composed list ``[study <- MNI (subject), MNI <- T1w (.h5), T1w <- GRE
(.mat)]`` when the native map and its transforms are given, otherwise from
its MNI-space map with ``[study <- MNI (subject)]``.

Files (in ``OUTPUT_DIR/group/``): the T1w template, the mean QSM template, the
template mask, ``from-study_to-MNI152NLin2009aSym`` (and inverse) composites,
and per subject ``studyspace/sub-<l>_from-MNI152NLin2009aSym_to-study_mode-
image_xfm.h5``, ``..._space-study_Chimap.nii.gz``, ``..._space-study_desc-
brain_mask.nii.gz``. The template's JSON sidecar lists them (the manifest that
:func:`study_space_maps` reads).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from ..derivatives import GROUP_OUTPUTS
from ..errors import DataError
from ..io import atomic_path, write_nifti
from ..templates import TEMPLATE_NAME

__all__ = ["build_study_template", "study_space_maps", "MniWarp", "subject_label"]

logger = logging.getLogger(__name__)

MNI = TEMPLATE_NAME


def subject_label(path) -> str:
    """``sub-<l>[_ses-<s>]`` from a derivative file name (or the file stem)."""
    name = Path(path).name
    m = re.match(r"(sub-[A-Za-z0-9]+(?:_ses-[A-Za-z0-9]+)?)", name)
    return m.group(1) if m else name.split(".")[0]


def _to_ants(img):
    from ..registration import to_ants

    return to_ants(img)


def _to_nib(aimg, dtype=np.float32):
    from ..registration import to_nibabel

    return to_nibabel(aimg, dtype)


def _reference(resolution_mm: float):
    from ..registration import brain_template

    return brain_template(resolution_mm)


def _normalise(aimg):
    arr = aimg.numpy()
    sel = arr[arr > 0]
    scale = np.percentile(sel, 99) if sel.size else 1.0
    return aimg / float(scale if scale > 0 else 1.0)


def _mean(images, members):
    """The voxelwise mean of ``images[k]`` over ``members`` (ANTs images on one grid)."""
    out = images[members[0]] * 0.0
    for k in members:
        out = out + images[k] / len(members)
    return out


def _copy(src, dest: Path) -> Path:
    with atomic_path(dest) as tmp:
        shutil.copyfile(src, tmp)
    return dest


def build_study_template(t1w_paths, chi_paths, mask_paths, outputs: dict, *, iterations: int = 3,
                         resolution_mm: float = 2.0, seed: int = 0, n_threads: int = 1, work_dir=None,
                         native_chi_paths=None, gre_to_t1w_paths=None, t1w_to_mni_paths=None,
                         reg_iterations=(40, 20, 0), gradient_step: float = 0.2,
                         blending_weight: float = 0.75, subset_size: int = 0, groups=None,
                         ages=None, chi_weight: float = 0.0, chi_radius: int = 2) -> dict:
    """Build the study template and bring every participant's map into it.

    Parameters
    ----------
    t1w_paths, chi_paths, mask_paths : lists of paths, one per participant
        MNI-space T1w (``_space-MNI152NLin2009aSym_desc-preproc_T1w``), Chimap
        and brain mask from the participant level.
    outputs : dict
        ``template_t1w``, ``template_chi``, ``template_mask``, ``xfm_study_to_mni``
        paths (the per-subject files go to ``studyspace/`` beside them).
    iterations : template iterations (each: one SyN per participant).
    resolution_mm : grid of the template (the MNI bounding box at this spacing).
    seed, n_threads : ANTs random seed and ITK threads.
    native_chi_paths, gre_to_t1w_paths, t1w_to_mni_paths : optional lists
        The native Chimap and its participant transforms; when given, maps are
        resampled once from native space.
    reg_iterations : SyN iterations per level (antspyx ``reg_iterations``).
    gradient_step, blending_weight : template shape update and sharpening
        (ANTs ``build_template`` defaults).
    subset_size, groups, ages : build the template from ``subset_size`` participants only (0: all),
        a balanced seeded subset by group and age (:func:`qsm_bids.group.subset.balanced_subset`,
        seeded with ``seed``); everyone else is then registered once to the finished template.
        The subset is recorded in the template's sidecar (``TemplateSubset``).
    chi_weight, chi_radius : with ``chi_weight`` > 0 every SyN is multi-channel: beside the T1w's metric
        (weight 1) a cross-correlation (radius ``chi_radius`` voxels, weight ``chi_weight``) between each
        participant's MNI-space Chimap and the current mean Chimap, which is updated with the T1w
        template (warped average, moved against the mean warp, not sharpened). The deep nuclei, flat in
        the T1w, then steer the warp too, as QSM template work does.

    Returns
    -------
    dict with the written paths, per-subject files and timings (JSON-ready).
    """
    import ants
    import nibabel as nib

    from ..registration import ants_seed, set_threads

    t_start = time.perf_counter()
    set_threads(max(int(n_threads), 1))
    n = len(t1w_paths)
    if n < 2 or len(chi_paths) != n or len(mask_paths) != n:
        raise DataError(f"study template: {n} T1w, {len(chi_paths)} Chimap and {len(mask_paths)} mask "
                        "files; at least 2 participants with all three are needed")
    outputs = {k: Path(v) for k, v in outputs.items()}
    out_dir = outputs["template_t1w"].parent
    subj_dir = out_dir / GROUP_OUTPUTS["studyspace"]
    work = Path(tempfile.mkdtemp(prefix="studytemplate_", dir=work_dir))
    try:
        ref = _to_ants(_reference(resolution_mm))
        images = []
        for p in t1w_paths:
            img = ants.resample_image_to_target(_to_ants(nib.load(str(p))), ref, interp_type="linear")
            images.append(_normalise(img))
        chi_images = chi_template = None
        if chi_weight > 0:
            chi_images = [ants.resample_image_to_target(_to_ants(nib.load(str(p))), ref, interp_type="linear")
                          for p in chi_paths]
        labels = [subject_label(p) for p in t1w_paths]
        xfms: list = [None] * n
        members = list(range(n))
        subset_info = None
        if subset_size and 0 < int(subset_size) < n:
            from .subset import balanced_subset

            if groups is None or ages is None:
                raise DataError("study template subset: the participants' groups and ages are needed")
            members = [int(k) for k in balanced_subset(groups, ages, int(subset_size), seed=seed)]
            subset_info = {"Size": len(members), "Of": n, "Seed": int(seed),
                           "Method": "balanced by group, one participant per age stratum within each group",
                           "Participants": [labels[k] for k in members]}
            logger.info("study template from a balanced subset of %d of %d participants", len(members), n)
        template = _mean(images, members)
        if chi_images is not None:
            chi_template = _mean(chi_images, members)

        def extras(k):
            if chi_images is None:
                return None
            return [("CC", chi_template, chi_images[k], float(chi_weight), int(chi_radius))]
        timings = {"registrations_s": []}
        for it in range(int(iterations)):
            last = it == int(iterations) - 1
            warped_sum = None
            warp_sum = None
            chi_sum_it = None
            t_it = time.perf_counter()
            m = len(members)
            for k in members:
                img = images[k]
                t0 = time.perf_counter()
                with ants_seed(seed + k):
                    reg = ants.registration(template, img, type_of_transform="SyNOnly",
                                            reg_iterations=tuple(reg_iterations),
                                            outprefix=str(work / f"it{it}_s{k}_"),
                                            write_composite_transform=last, multivariate_extras=extras(k))
                timings["registrations_s"].append(round(time.perf_counter() - t0, 2))
                w = reg["warpedmovout"]
                warped_sum = w / m if warped_sum is None else warped_sum + w / m
                if chi_images is not None:
                    wc = ants.apply_transforms(template, chi_images[k], reg["fwdtransforms"])
                    chi_sum_it = wc / m if chi_sum_it is None else chi_sum_it + wc / m
                if last:
                    xfms[k] = reg["fwdtransforms"]
                else:
                    field = ants.image_read(reg["fwdtransforms"][0])
                    warp_sum = field / m if warp_sum is None else warp_sum + field / m
            if last or warp_sum is None:
                template = warped_sum
                chi_template = chi_sum_it
            else:
                # move the average against the mean warp, then sharpen (ANTs build_template)
                wfn = str(work / f"avgwarp_{it}.nii.gz")
                ants.image_write(warp_sum * (-gradient_step), wfn)
                template = ants.apply_transforms(warped_sum, warped_sum, [wfn])
                template = template * blending_weight + ants.iMath(template, "Sharpen") * (1 - blending_weight)
                if chi_sum_it is not None:
                    chi_template = ants.apply_transforms(chi_sum_it, chi_sum_it, [wfn])
            logger.info("study template: iteration %d/%d done in %.0f s (%d registrations)", it + 1,
                        int(iterations), time.perf_counter() - t_it, m)
        if int(iterations) >= 1 and len(members) < n:
            # everyone outside the subset: one registration into the finished template
            t_rest = time.perf_counter()
            for k in sorted(set(range(n)) - set(members)):
                t0 = time.perf_counter()
                with ants_seed(seed + k):
                    reg = ants.registration(template, images[k], type_of_transform="SyNOnly",
                                            reg_iterations=tuple(reg_iterations),
                                            outprefix=str(work / f"final_s{k}_"), write_composite_transform=True,
                                            multivariate_extras=extras(k))
                timings["registrations_s"].append(round(time.perf_counter() - t0, 2))
                xfms[k] = reg["fwdtransforms"]
            timings["others_into_template_s"] = round(time.perf_counter() - t_rest, 2)
            logger.info("study template: %d other participant(s) registered into it in %.0f s",
                        n - len(members), time.perf_counter() - t_rest)
        if int(iterations) < 1:  # the mean of the MNI-space images; identity transforms
            for k in range(n):
                tx = ants.create_ants_transform(transform_type="AffineTransform", dimension=3)
                fn = str(work / f"identity_{k}.mat")
                ants.write_transform(tx, fn)
                xfms[k] = fn

        # study template -> MNI
        t0 = time.perf_counter()
        mni = _normalise(ref)
        with ants_seed(seed):
            reg = ants.registration(mni, template, type_of_transform="SyN",
                                    reg_iterations=tuple(reg_iterations),
                                    outprefix=str(work / "tomni_"), write_composite_transform=True)
        timings["to_mni_s"] = round(time.perf_counter() - t0, 2)
        xfm_to_mni = _copy(reg["fwdtransforms"], outputs["xfm_study_to_mni"])
        xfm_from_mni = _copy(reg["invtransforms"], out_dir / GROUP_OUTPUTS["xfm_mni_to_study"].format(template=MNI))

        template_nib = _to_nib(template)
        affine = template_nib.affine
        common = {"Software": f"ANTs (antspyx {getattr(ants, '__version__', '')})", "Iterations": int(iterations),
                  "ResolutionMM": float(resolution_mm), "RegIterations": list(reg_iterations),
                  "GradientStep": gradient_step, "BlendingWeight": blending_weight, "RandomSeed": int(seed),
                  "Channels": (["T1w (Mattes MI, weight 1)", f"Chimap (CC radius {int(chi_radius)}, weight "
                               f"{float(chi_weight):g})"] if chi_images is not None else ["T1w (Mattes MI)"])}

        # every participant's map and mask into the study template, resampled once
        t0 = time.perf_counter()
        subjects = []
        chi_sum = np.zeros(template.shape, np.float64)
        mask_count = np.zeros(template.shape, np.float64)
        for k in range(n):
            label = labels[k]
            src = xfms[k] if isinstance(xfms[k], str) else xfms[k][0]
            ext = ".h5" if src.endswith(".h5") else ".mat"
            sub_xfm = _copy(src, subj_dir / f"{label}_from-{MNI}_to-study_mode-image_xfm{ext}")
            if native_chi_paths and gre_to_t1w_paths and t1w_to_mni_paths:
                moving = _to_ants(nib.load(str(native_chi_paths[k])))
                tx = [str(sub_xfm), str(t1w_to_mni_paths[k]), str(gre_to_t1w_paths[k])]
                source = "native GRE grid, transforms composed [study<-MNI, MNI<-T1w, T1w<-GRE]"
            else:
                moving = _to_ants(nib.load(str(chi_paths[k])))
                tx = [str(sub_xfm)]
                source = f"{MNI} map, transform [study<-MNI]"
            chi = ants.apply_transforms(template, moving, tx, interpolator="linear", defaultvalue=0)
            mask_src = _to_ants(nib.load(str(mask_paths[k])))
            mask = ants.apply_transforms(template, mask_src, [str(sub_xfm)], interpolator="nearestNeighbor",
                                         defaultvalue=0)
            chi_arr = chi.numpy().astype(np.float32)
            mask_arr = mask.numpy() > 0.5
            chi_path = subj_dir / f"{label}_space-study_Chimap.nii.gz"
            mask_path = subj_dir / f"{label}_space-study_desc-brain_mask.nii.gz"
            write_nifti(chi_path, chi_arr, affine, sidecar={**common, "Source": source, "Units": "ppm"})
            write_nifti(mask_path, mask_arr.astype(np.uint8), affine, dtype=np.uint8,
                        sidecar={**common, "Source": str(mask_paths[k])})
            chi_sum += np.where(mask_arr, chi_arr, 0)
            mask_count += mask_arr
            subjects.append({"label": label, "chi_template": str(chi_paths[k]), "mask_template": str(mask_paths[k]),
                             "xfm_mni_to_study": str(sub_xfm), "chi_study": str(chi_path),
                             "mask_study": str(mask_path), "source": source})
        timings["warp_maps_s"] = round(time.perf_counter() - t0, 2)
        mean_chi = np.where(mask_count > 0, chi_sum / np.maximum(mask_count, 1), 0).astype(np.float32)
        tpl_mask = mask_count >= 0.5 * n
        manifest = {**common, "Description": "Study-wise T1w template (ANTs, SyN-only refinement of the "
                    "participants' MNI-space T1w)", "Participants": subjects,
                    "TemplateSubset": subset_info,
                    "xfm_study_to_mni": str(xfm_to_mni), "xfm_mni_to_study": str(xfm_from_mni),
                    "TimingsSeconds": {**{k: v for k, v in timings.items() if k != "registrations_s"},
                                       "registrations_total": round(sum(timings["registrations_s"]), 2),
                                       "per_registration_mean": round(float(np.mean(timings["registrations_s"]))
                                                                      if timings["registrations_s"] else 0.0, 2),
                                       "total": round(time.perf_counter() - t_start, 2)}}
        write_nifti(outputs["template_chi"], mean_chi, affine,
                    sidecar={**common, "Description": "Mean QSM (ppm) in the study template", "Units": "ppm"})
        write_nifti(outputs["template_mask"], tpl_mask.astype(np.uint8), affine, dtype=np.uint8,
                    sidecar={**common, "Description": "Voxels inside at least half of the participants' masks"})
        write_nifti(outputs["template_t1w"], template.numpy(), affine, sidecar=manifest)
        # the templates in MNI as well
        warp = MniWarp(xfm_to_mni, xfm_from_mni, resolution_mm)
        written = {k: str(v) for k, v in outputs.items()}
        for key, name, interp in (("template_t1w", GROUP_OUTPUTS["template_t1w_mni"].format(template=MNI), "linear"),
                                  ("template_chi", GROUP_OUTPUTS["template_chi_mni"].format(template=MNI),
                                   "linear")):
            img = warp.image(nib.load(str(outputs[key])), interp)
            path = out_dir / name
            write_nifti(path, np.asarray(img.dataobj), img.affine, sidecar={**common, "Space": MNI})
            written[f"{key}_mni"] = str(path)
        written["xfm_mni_to_study"] = str(xfm_from_mni)
        written["subjects"] = subjects
        written["timings_s"] = manifest["TimingsSeconds"]
        logger.info("study template of %d participants in %.0f s", n, time.perf_counter() - t_start)
        return written
    finally:
        shutil.rmtree(work, ignore_errors=True)


class MniWarp:
    """Study template -> MNI for images (``image``) and mm points (``points``)."""

    def __init__(self, xfm_study_to_mni, xfm_mni_to_study, resolution_mm: float = 2.0):
        self.xfm_study_to_mni = str(xfm_study_to_mni)
        self.xfm_mni_to_study = str(xfm_mni_to_study)
        self.resolution_mm = float(resolution_mm)

    def image(self, img, interpolation: str = "linear"):
        """Resample a study-space image onto the MNI grid."""
        import ants

        ref = _to_ants(_reference(self.resolution_mm))
        out = ants.apply_transforms(ref, _to_ants(img), [self.xfm_study_to_mni], interpolator=interpolation,
                                    defaultvalue=0)
        return _to_nib(out)

    def points(self, xyz_mm):
        """Study-space RAS mm points (n, 3) to MNI RAS mm.

        ANTs moves points with the transform that pulls images the other way,
        so study -> MNI points use the MNI -> study composite; ITK works in LPS.
        """
        import ants
        import pandas as pd

        pts = np.atleast_2d(np.asarray(xyz_mm, dtype=float))
        if pts.size == 0:
            return pts
        lps = pd.DataFrame({"x": -pts[:, 0], "y": -pts[:, 1], "z": pts[:, 2]})
        out = ants.apply_transforms_to_points(3, lps, [self.xfm_mni_to_study])
        return np.column_stack([-out["x"].to_numpy(), -out["y"].to_numpy(), out["z"].to_numpy()])


def study_space_maps(study_template: dict, chi_paths, mask_paths):
    """The participants' study-space maps and masks, and the warp to MNI.

    Reads the manifest (the T1w template's sidecar) written by
    :func:`build_study_template`; ``chi_paths`` (MNI-space Chimaps, in design
    order) pick and order the participants.

    Returns
    -------
    (chi_images, mask_images, MniWarp)
    """
    import nibabel as nib

    tpl = Path(study_template["template_t1w"])
    side = tpl.with_name(tpl.name[: -len(".nii.gz")] + ".json")
    try:
        manifest = json.loads(side.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"{side}: study template manifest unreadable ({exc}); rerun the template step") from None
    by_chi = {os.path.normpath(s["chi_template"]): s for s in manifest.get("Participants", [])}
    chi_images, mask_images = [], []
    for p in chi_paths:
        s = by_chi.get(os.path.normpath(str(p)))
        if s is None:
            raise DataError(f"{p}: not in the study template ({side}); rerun the template step")
        chi_images.append(nib.load(s["chi_study"]))
        mask_images.append(nib.load(s["mask_study"]))
    warp = MniWarp(manifest["xfm_study_to_mni"], manifest["xfm_mni_to_study"], manifest.get("ResolutionMM", 2.0))
    return chi_images, mask_images, warp
