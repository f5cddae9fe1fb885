"""Voxelwise group inference: smoothing, GLM, Freedman-Lane TFCE permutations, FWE.

:func:`voxelwise_inference` works on images in memory (one common grid) and
returns arrays; :func:`write_voxelwise` writes the maps, cluster tables and
sidecars; :func:`run_voxelwise` is the file-level entry point of the group
workflow.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..config import GroupConfig
from ..derivatives import GROUP_OUTPUTS, clusters_table_name, statmap_name
from ..errors import DataError
from ..io import write_nifti, write_tsv
from ..resources import memory_guard
from ..templates import TEMPLATE_NAME
from .clusters import cluster_table, default_atlas_lookup
from .glm import design_matrix
from .permutation import permutation_test, voxel_adjacency
from .smoothing import smooth_within_mask, voxel_sizes

__all__ = [
    "VoxelwiseResult",
    "analysis_mask",
    "voxelwise_inference",
    "write_voxelwise",
    "run_voxelwise",
    "MNI_SPACE",
]

logger = logging.getLogger(__name__)

MNI_SPACE = TEMPLATE_NAME


@dataclass
class VoxelwiseResult:
    """Observed maps, FWE p-values and null maxima of both contrasts."""

    affine: np.ndarray
    mask: np.ndarray                 # analysis mask (3D bool)
    contrasts: dict                  # name -> {"t", "tfce", "pfwe", "pfwe_t"} 3D float32 arrays
    null: dict                       # name -> {"max_t", "max_tfce"} per permutation
    design_columns: list
    n_subjects: int
    n_permutations: int
    seconds: dict = field(default_factory=dict)
    coverage: np.ndarray | None = None   # participants covering each voxel (3D int)
    coverage_need: int = 0               # the fewest that make a voxel part of the analysis mask


def analysis_mask(masks, coverage_fraction: float = 1.0) -> np.ndarray:
    """Voxels covered by at least ``coverage_fraction`` of the participants' masks."""
    masks = [np.asarray(m) > 0 for m in masks]
    count = np.sum(masks, axis=0)
    need = int(np.ceil(coverage_fraction * len(masks) - 1e-9))
    return count >= max(need, 1)


def _check_grid(images, names):
    ref = images[0]
    for img, name in zip(images[1:], names[1:]):
        if img.shape[:3] != ref.shape[:3] or not np.allclose(img.affine, ref.affine, atol=1e-3):
            raise DataError(f"{name}: grid {img.shape[:3]} differs from {names[0]} {ref.shape[:3]}; "
                            "all maps must be on one common grid (rerun the participant level)")


def voxelwise_inference(chi_images, mask_images, design: pd.DataFrame, params: GroupConfig | None = None, *,
                        seed: int = 0, n_jobs: int = 1, names=None, work_dir=None,
                        analysis_mask=None) -> VoxelwiseResult:
    """Both contrasts of a two-group comparison at every voxel.

    Parameters
    ----------
    chi_images, mask_images : lists of nibabel images, one per row of ``design``
        Susceptibility maps (ppm) and the participants' brain masks, all on
        one grid (template space).
    design : pandas.DataFrame
        Rows in image order with ``params.group_column`` and ``params.covariates``.
    params : ``Config.group`` (None: the defaults). ``groups``: two levels, the patient side first;
        contrasts ``<A>gt<B>`` and ``<B>gt<A>``. ``smoothing_sigma_mm``: Gaussian sigma of the
        boundary-compensated smoothing. ``n_permutations``: total permutations, the observed labelling
        included. ``permutation_chunk_size``: permutations per chunk (memory bound, unit of parallel
        work). ``tfce_E``, ``tfce_H``, ``tfce_connectivity``: TFCE parameters (randomise -T: 0.5, 2, 26).
        ``coverage_fraction``: fraction of masks that must cover a voxel to analyse it.
    seed : permutation seed (identical results for identical seed).
    n_jobs : worker processes for the permutation chunks (``permutation_backend`` "processes").
    work_dir : folder for the memory-mapped subjects x voxels matrix (None: in memory).
    analysis_mask : 3D bool array on the maps' grid, optional
        Restricts the tests to these voxels (within the coverage rule) while each map is still
        smoothed within its own mask. VBM needs the two apart: its maps are GM densities, data
        everywhere on the grid, so they are smoothed over the grid, but only voxels with enough GM
        are tested.

    Memory: the images are read one at a time (twice: mask coverage, then data); the only
    cohort-sized array is one float32 subjects x voxels matrix, which the permutation model turns
    into the reduced residuals in place.
    """
    p = params if params is not None else GroupConfig()
    group_column, groups, covariates = p.group_column, p.groups, p.covariates
    smoothing_sigma_mm, n_permutations, chunk_size = p.smoothing_sigma_mm, p.n_permutations, p.permutation_chunk_size
    tfce_E, tfce_H, tfce_connectivity = p.tfce_E, p.tfce_H, p.tfce_connectivity
    coverage_fraction = p.coverage_fraction
    t0 = time.perf_counter()
    names = list(names) if names is not None else [f"image {i}" for i in range(len(chi_images))]
    if len(chi_images) != len(design) or len(mask_images) != len(design):
        raise DataError(f"{len(chi_images)} maps and {len(mask_images)} masks for {len(design)} "
                        "participants; they must match one to one")
    _check_grid(list(chi_images) + list(mask_images), names + [f"mask of {n}" for n in names])
    des = design_matrix(design.reset_index(drop=True), group_column, groups, covariates, p.categorical_covariates)
    affine = np.asarray(chi_images[0].affine, dtype=float)
    vox = voxel_sizes(affine)
    n_subjects = len(chi_images)

    def subject(i):
        # one participant's map and mask at a time: memory does not grow with the cohort
        data = np.asarray(chi_images[i].dataobj, dtype=np.float32)
        if data.ndim != 3:
            raise DataError(f"{names[i]}: a 3D map is needed, got shape {data.shape}")
        return data, (np.asarray(mask_images[i].dataobj) > 0) & np.isfinite(data)

    # pass 1: coverage of the masks
    count = np.zeros(chi_images[0].shape[:3], dtype=np.int32)
    for i in range(n_subjects):
        count += subject(i)[1]
    need = int(np.ceil(coverage_fraction * n_subjects - 1e-9))
    mask = count >= max(need, 1)
    if analysis_mask is not None:
        analysis_mask = np.asarray(analysis_mask, dtype=bool)
        if analysis_mask.shape != mask.shape:
            raise DataError(f"analysis mask shape {analysis_mask.shape} differs from the maps' {mask.shape}")
        mask &= analysis_mask
    coverage = count.astype(np.int16)
    del count
    if mask.sum() < 2:
        raise DataError(f"the participants' masks overlap in {int(mask.sum())} voxel(s) at coverage "
                        f"fraction {coverage_fraction}"
                        f"{' inside the analysis mask' if analysis_mask is not None else ''}; "
                        "check the template-space masks")
    n_vox = int(mask.sum())
    logger.info("voxelwise: %d subjects, %d voxels in the analysis mask (coverage >= %.2f), "
                "smoothing sigma %.1f mm", n_subjects, n_vox, coverage_fraction, smoothing_sigma_mm)
    # pass 2: the one subjects x voxels float32 matrix, memory-mapped in the work folder when there is
    # one; the permutation model then overwrites it with the reduced residuals (no second copy)
    nbytes = n_subjects * n_vox * 4
    memory_guard().require(nbytes, f"voxelwise: the {n_subjects} x {n_vox} data matrix",
                           fix=f"raise --mem-gb to at least {2 * nbytes / 1e9 + 1:.1f}")
    if work_dir is not None:
        Path(work_dir).mkdir(parents=True, exist_ok=True)
        matrix_file = Path(work_dir) / f"voxelwise_{os.getpid()}_subjects-x-voxels_float32.dat"
        Y = np.lib.format.open_memmap(matrix_file, mode="w+", dtype=np.float32, shape=(n_subjects, n_vox))
    else:
        matrix_file, Y = None, np.empty((n_subjects, n_vox), dtype=np.float32)
    for i in range(n_subjects):
        data, m = subject(i)
        Y[i] = smooth_within_mask(data, m, smoothing_sigma_mm, vox)[mask]
    t_smooth = time.perf_counter() - t0
    adjacency = voxel_adjacency(mask, tfce_connectivity)
    name_pos, name_neg = des.contrasts
    dask = None
    if p.permutation_backend == "dask":
        dask = p.dask_scheduler or {"jobqueue": dict(p.dask_jobqueue)}
    try:
        res = permutation_test(Y, des.X, des.contrasts[name_pos], adjacency,
                               n_permutations=n_permutations, chunk_size=chunk_size, seed=seed,
                               tfce_E=tfce_E, tfce_H=tfce_H, n_jobs=n_jobs, overwrite_data=True,
                               backend=p.permutation_backend, dask=dask)
    finally:
        del Y
        if matrix_file is not None:
            matrix_file.unlink(missing_ok=True)

    def vol(values):
        out = np.zeros(mask.shape, dtype=np.float32)
        out[mask] = values
        return out

    def pvol(values):
        out = np.ones(mask.shape, dtype=np.float32)
        out[mask] = values
        return out

    t, tfce_map = res["t"], res["tfce"]
    contrasts = {
        name_pos: {"t": vol(t), "tfce": vol(np.maximum(tfce_map, 0)), "pfwe": pvol(res["p_tfce"]),
                   "pfwe_t": pvol(res["p_t"])},
        name_neg: {"t": vol(-t), "tfce": vol(np.maximum(-tfce_map, 0)), "pfwe": pvol(res["p_tfce_neg"]),
                   "pfwe_t": pvol(res["p_t_neg"])},
    }
    null = res["null"]
    nulls = {name_pos: {"max_t": null.max_t, "max_tfce": null.max_tfce},
             name_neg: {"max_t": null.max_neg_t, "max_tfce": null.max_neg_tfce}}
    seconds = {"smoothing": t_smooth, "permutations": null.seconds,
               "total": time.perf_counter() - t0}
    logger.info("voxelwise inference done in %.0f s", seconds["total"])
    return VoxelwiseResult(affine=affine, mask=mask, contrasts=contrasts, null=nulls,
                           design_columns=des.columns, n_subjects=n_subjects,
                           n_permutations=int(n_permutations), seconds=seconds, coverage=coverage,
                           coverage_need=max(need, 1))


def write_voxelwise(result: VoxelwiseResult, out_dir, *, alpha: float = 0.05,
                    tfce_connectivity: int = 26, to_mni=None, label_lookup="default",
                    parameters: dict | None = None, measure: str = "absolute QSM (ppm)",
                    mask_rule: str | None = None) -> dict:
    """Write maps (analysis space and MNI), cluster tables and sidecars.

    Parameters
    ----------
    to_mni : object, optional
        Analysis space -> MNI with methods ``image(nib_img, interpolation)`` and
        ``points(mm (n, 3))``. None when the analysis space is MNI already: the
        ``space-MNI152NLin2009aSym_`` maps are then the same data.
    label_lookup : "default", callable or None
        Atlas names at the cluster peaks (MNI mm); "default" uses the
        package's default atlas.
    measure : what the maps are (the sidecars' description), e.g. "modulated GM probability (VBM)".
    mask_rule : how the analysis mask was made (default: the QSM masks' coverage rule).

    Returns
    -------
    dict of output name -> path (str).
    """
    import nibabel as nib

    out_dir = Path(out_dir)
    if label_lookup == "default":
        label_lookup = default_atlas_lookup()
    sidecar_base = {
        "Description": f"Voxelwise two-group comparison of {measure}: Gaussian smoothing "
                       "compensated at the brain boundary, GLM, Freedman-Lane permutations, exact "
                       "TFCE, FWE-corrected p from the maximum statistic.",
        "NumberOfSubjects": result.n_subjects,
        "DesignColumns": result.design_columns,
        "NumberOfPermutations": result.n_permutations,
        "Parameters": parameters or {},
    }
    written = {}
    mask_path = out_dir / GROUP_OUTPUTS["analysis_mask"]
    rule = mask_rule or (
        f"voxels covered by at least {result.coverage_need} of {result.n_subjects} participants' QSM masks "
        f"(group.coverage_fraction {(parameters or {}).get('group', {}).get('coverage_fraction', 'n/a')})")
    write_nifti(mask_path, result.mask.astype(np.uint8), result.affine, dtype=np.uint8,
                sidecar={**sidecar_base, "Description": f"Analysis mask: {rule}",
                         "MinimumCoverage": result.coverage_need})
    written["analysis_mask"] = str(mask_path)
    if result.coverage is not None:
        cov_path = out_dir / GROUP_OUTPUTS["coverage_map"]
        write_nifti(cov_path, result.coverage.astype(np.int16), result.affine, dtype=np.int16,
                    sidecar={**sidecar_base, "Description": "Coverage map: how many participants' masks "
                             f"cover each voxel; the analysis mask is {rule}",
                             "MinimumCoverage": result.coverage_need, "Units": "participants"})
        written["coverage_map"] = str(cov_path)
    stats_desc = {"t": ("t", None, "t statistic of the contrast"),
                  "tfce": ("tfce", None, "TFCE of the contrast's t (E, H, connectivity as in Parameters)"),
                  "pfwe": ("pfwe", None, "FWE-corrected p of TFCE (max-statistic, observed labelling "
                                         "counted), 1 outside the analysis mask"),
                  "pfwe_t": ("pfwe", "voxel", "FWE-corrected p of the voxelwise t (max-statistic)")}
    null_columns = {}
    for cname, maps in result.contrasts.items():
        for key, (stat, desc, text) in stats_desc.items():
            side = {**sidecar_base, "Contrast": cname, "Statistic": text}
            path = out_dir / statmap_name(cname, stat, desc=desc)
            write_nifti(path, maps[key], result.affine, sidecar=side)
            written[f"{cname}_{key}"] = str(path)
            mni_path = out_dir / statmap_name(cname, stat, space=MNI_SPACE, desc=desc)
            if to_mni is None:
                write_nifti(mni_path, maps[key], result.affine, sidecar={**side, "Space": MNI_SPACE})
            else:
                is_p = key.startswith("pfwe")
                # p maps are warped as 1 - p so that outside the brain they stay 1, not 0
                src = 1.0 - maps[key] if is_p else maps[key]
                warped = to_mni.image(nib.Nifti1Image(src, result.affine), "linear")
                data = np.asarray(warped.dataobj, dtype=np.float32)
                if is_p:
                    data = np.clip(1.0 - data, 0.0, 1.0)
                write_nifti(mni_path, data, warped.affine,
                            sidecar={**side, "Space": MNI_SPACE, "Resampling": "linear, from the study template"})
            written[f"{cname}_{key}_mni"] = str(mni_path)
        significant = result.mask & (maps["pfwe"] < alpha)
        table = cluster_table(significant, maps["t"], maps["tfce"], maps["pfwe"], result.affine,
                              connectivity=tfce_connectivity,
                              to_mni_points=None if to_mni is None else to_mni.points,
                              label_lookup=label_lookup)
        table_path = out_dir / clusters_table_name(cname)
        write_tsv(table_path, table, sidecar={
            **sidecar_base, "Contrast": cname,
            "Description": f"Clusters ({tfce_connectivity}-connected) of voxels with TFCE pfwe < {alpha}; "
                           f"coordinates in {MNI_SPACE} mm; peak = highest TFCE",
            "Alpha": alpha})
        written[f"{cname}_clusters"] = str(table_path)
        logger.info("contrast %s: %d significant voxel(s) in %d cluster(s) at pfwe < %g",
                    cname, int(significant.sum()), len(table), alpha)
        null_columns[f"{cname}_max_t"] = result.null[cname]["max_t"]
        null_columns[f"{cname}_max_tfce"] = result.null[cname]["max_tfce"]
    null_path = out_dir / GROUP_OUTPUTS["permutation_null"]
    frame = pd.DataFrame({"permutation": np.arange(result.n_permutations), **null_columns})
    write_tsv(null_path, frame, sidecar={
        **sidecar_base, "Description": "Maximum t and TFCE over the analysis mask per permutation "
                                       "(permutation 0 is the observed labelling)"})
    written["null"] = str(null_path)
    return written


def run_voxelwise(chi_paths, mask_paths, design: pd.DataFrame, params: GroupConfig | None = None,
                  out_dir=".", study_template=None, *, seed: int = 0, n_jobs: int = 1, mem_gb=None,
                  parameters: dict | None = None, label_lookup="default", work_dir=None) -> dict:
    """File-level entry point of the group workflow's voxelwise step.

    Parameters
    ----------
    chi_paths, mask_paths : template-space (MNI) Chimap and brain-mask files, one
        per row of ``design``.
    params : ``Config.group`` (see :func:`voxelwise_inference`; ``alpha`` sets the cluster tables).
    study_template : dict or None
        The template step's outputs (``template_t1w``, ``xfm_study_to_mni``, ...).
        When given, each participant's map is taken into the study template
        (see :func:`qsm_bids.group.template.study_space_maps`) and results are
        warped back to MNI; None analyses in MNI space.
    parameters : the whole configuration, for the sidecars.
    work_dir : folder of the memory-mapped subjects x voxels matrix (default: $TMPDIR).

    Returns
    -------
    dict of output name -> path (str), plus ``"timings_s"``.
    """
    import nibabel as nib

    p = params if params is not None else GroupConfig()
    chi_paths = [str(x) for x in chi_paths]
    mask_paths = [str(x) for x in mask_paths]
    n_jobs = max(1, int(n_jobs or 1))
    to_mni = None
    if study_template is not None:
        from .template import study_space_maps

        chi_images, mask_images, to_mni = study_space_maps(study_template, chi_paths, mask_paths)
    else:
        chi_images = [nib.load(x) for x in chi_paths]
        mask_images = [nib.load(x) for x in mask_paths]
    if mem_gb:
        logger.debug("memory limit %.1f GB (voxelwise holds one %.2f GB data matrix)", float(mem_gb),
                     len(chi_paths) * np.prod(chi_images[0].shape[:3]) * 4 / 1e9)
    if work_dir is None:
        import tempfile

        work_dir = tempfile.gettempdir()
    result = voxelwise_inference(chi_images, mask_images, design, p, seed=seed, n_jobs=n_jobs, names=chi_paths,
                                 work_dir=work_dir)
    voxelwise_params = {
        "smoothing_sigma_mm": p.smoothing_sigma_mm, "n_permutations": p.n_permutations,
        "permutation_chunk_size": p.permutation_chunk_size, "tfce_E": p.tfce_E, "tfce_H": p.tfce_H,
        "tfce_connectivity": p.tfce_connectivity, "coverage_fraction": p.coverage_fraction,
        "alpha": p.alpha, "seed": seed, "group_column": p.group_column, "groups": list(p.groups),
        "covariates": list(p.covariates), "space": "study" if study_template is not None else MNI_SPACE,
        "tfce": "exact (max-tree), two-sided", "permutation_scheme": "Freedman-Lane",
    }
    written = write_voxelwise(result, out_dir, alpha=p.alpha, tfce_connectivity=p.tfce_connectivity,
                              to_mni=to_mni, label_lookup=label_lookup,
                              parameters={"voxelwise": voxelwise_params, "config": dict(parameters or {})})
    written["timings_s"] = {k: round(float(v), 2) for k, v in result.seconds.items()}
    return written
