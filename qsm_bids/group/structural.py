"""Group structural comparators (issue 13): subcortical volumes, VBM and cortical thickness.

The paper tested conventional structural measures beside QSM and found no
difference. Here:

- Subcortical volumes (native T1w, mm^3) go through the region statistics of
  the QSM values (:mod:`qsm_bids.group.roi_stats`): left/right signed-rank in
  the first group (hemispheres kept apart below ``laterality_alpha``, else
  averaged), covariance-method adjustment in the reference group on the
  intracranial volume and the group covariates (age), two-tailed rank-sum,
  Bonferroni over the region units tested.
- VBM: the participants' modulated GM in template space through the voxelwise
  engine of the QSM analysis (:func:`qsm_bids.group.voxelwise.voxelwise_inference`:
  smoothing, GLM, Freedman-Lane permutations, TFCE, FWE), covariates the group
  covariates and the ICV. The maps are smoothed over the whole grid (a GM
  density is defined everywhere) and tested inside the voxels whose mean
  modulated GM reaches ``structural.vbm_gm_threshold``.
- Cortical thickness (when the participant level computed it): the template-space
  thickness maps through the same engine, covariates the group covariates, each
  participant's mask its measured cortex (thickness > 0), the analysis mask by
  ``group.coverage_fraction`` as for QSM.

The maps stay in the participants' template space (MNI152 2009): modulation by a
second (study-template) Jacobian is not done, so the study template is not used.

:func:`read_volume_tables`, :func:`volume_statistics` and :func:`vbm_mask` are
pure or read one kind of file; :func:`run_structural_group` does the file I/O.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd

from ..bids import with_prefix
from ..config import GroupConfig, RoiStatsConfig
from ..errors import DataError
from .glm import covariate_columns
from .nonparametric import mean_sem, significance_marks
from .roi_stats import (
    combine_hemispheres,
    compare_groups,
    covariance_adjust,
    laterality_tests,
    normalise_hemisphere,
    read_participant_tables,
)

logger = logging.getLogger(__name__)

__all__ = ["ICV_COLUMN", "read_volume_tables", "volume_statistics", "vbm_mask", "run_structural_group"]

#: The ICV covariate's name in the designs (millilitres keep it on the scale of the other covariates).
ICV_COLUMN = "icv_ml"


def read_volume_tables(paths: Mapping[str, str | Path]) -> pd.DataFrame:
    """The participants' ``_desc-volumes_morph.tsv`` tables as one long table.

    Returns columns ``participant_id`` (``sub-`` prefixed), ``region``, ``hemisphere``
    (L, R or bilateral), ``measure``, ``value``.
    """
    # unlike the region tables, only "n/a" reads as missing
    out = read_participant_tables(paths, ("region", "hemisphere", "measure", "value"), name="volumes table",
                                  extra_columns=False, keep_default_na=False)
    if not paths:
        return out  # nothing read: the empty table keeps its untyped columns
    out["hemisphere"] = out["hemisphere"].map(normalise_hemisphere)
    out["value"] = pd.to_numeric(out["value"], errors="coerce")
    return out


def icv_ml(tables: pd.DataFrame) -> pd.Series:
    """Each participant's intracranial volume (ml) from the long volumes table."""
    icv = tables[tables["measure"] == "icv_mm3"].groupby("participant_id")["value"].first()
    return (icv / 1000.0).rename(ICV_COLUMN)


def volume_statistics(tables: pd.DataFrame, participants: pd.DataFrame, group: GroupConfig | None = None,
                      params: RoiStatsConfig | None = None, regions=None) -> tuple[pd.DataFrame, pd.DataFrame, list]:
    """Group comparison of the region volumes, ICV- and covariate-adjusted (the QSM region method).

    Parameters
    ----------
    tables : :func:`read_volume_tables`.
    participants : participants.tsv rows (participant_id, the group column, covariates).
    group : ``Config.group``: ``group_column``, ``groups`` (first = patient side), ``covariates``,
        ``categorical_covariates``.
    params : ``Config.roi_stats``: ``laterality_alpha``, ``rank_sum_continuity``.
    regions : region names tested (None: every region with a ``volume_mm3`` row).

    Returns
    -------
    stats : one row per region unit: region, hemisphere, n/mean/SEM of the adjusted volume per group
        (mm^3), raw means, U, Z, p, Bonferroni p over the units, the laterality test, the slopes.
    values : long table participant_id, group, region, hemisphere, volume_mm3, adjusted_mm3.
    warnings : list of str
    """
    group = group if group is not None else GroupConfig()
    params = params if params is not None else RoiStatsConfig()
    group_a, group_b = (str(g) for g in group.groups)
    messages: list = []
    parts = participants.copy()
    parts["participant_id"] = parts["participant_id"].map(with_prefix)
    parts = parts.set_index("participant_id")
    vol = tables[tables["measure"] == "volume_mm3"]
    if regions is not None:
        vol = vol[vol["region"].isin(list(regions))]
    grp = parts[group.group_column].astype("string")
    cov = covariate_columns(parts, tuple(group.covariates), group.categorical_covariates)
    cov = cov.join(icv_ml(tables), how="left")
    in_groups = grp.isin([group_a, group_b]).fillna(False).astype(bool)
    with_values = set(vol["participant_id"])
    keep = [p for p in parts.index if in_groups[p] and p in with_values and not cov.loc[p].isna().any()]
    dropped = sorted(set(vol["participant_id"]) & set(parts.index) - set(keep))
    if dropped:
        messages.append(f"volumes: participant(s) outside the two groups or missing a covariate or the ICV left "
                        f"out: {', '.join(dropped)}")
    wide = vol[vol["participant_id"].isin(keep)].pivot(index="participant_id", columns=["region", "hemisphere"],
                                                        values="value").reindex(keep)
    in_a = grp.loc[keep] == group_a
    in_b = grp.loc[keep] == group_b
    for g, m in ((group_a, in_a), (group_b, in_b)):
        if m.sum() < 2:
            raise DataError(f"volumes: group '{g}' has {int(m.sum())} participant(s) with structural results; "
                            "at least 2 per group are needed")
    # 1. laterality in the first group (paired, so unadjusted), as for QSM
    lat = laterality_tests(wide, in_a)
    keep_apart = [r.region for r in lat.itertuples(index=False)
                  if np.isfinite(r.laterality_p) and r.laterality_p < params.laterality_alpha]
    units = combine_hemispheres(wide, keep_apart)
    # 2. covariance method in the reference group: ICV and the group covariates
    adjusted, slopes, adj_msgs = covariance_adjust(units, cov.loc[keep], in_b)
    messages += [f"volumes: {m}" for m in adj_msgs]
    # 3. rank-sum, Bonferroni over the units tested
    comp = compare_groups(adjusted, in_a, in_b, continuity=params.rank_sum_continuity)
    lat_by_region = lat.set_index("region")
    rows = []
    for r in comp.itertuples(index=False):
        region, hemi = r.unit
        raw_a, raw_b = mean_sem(units.loc[in_a, r.unit]), mean_sem(units.loc[in_b, r.unit])
        row = {"region": region, "hemisphere": hemi,
               f"n_{group_a}": r.n_a, f"mean_{group_a}": r.mean_a, f"sem_{group_a}": r.sem_a,
               f"n_{group_b}": r.n_b, f"mean_{group_b}": r.mean_b, f"sem_{group_b}": r.sem_b,
               "u": r.u, "z": r.z, "p": r.p, "p_bonferroni": r.p_bonferroni,
               "significance": significance_marks(r.p, r.p_bonferroni),
               f"raw_mean_{group_a}": raw_a[1], f"raw_mean_{group_b}": raw_b[1]}
        if region in lat_by_region.index:
            row.update({"laterality_p": float(lat_by_region.loc[region, "laterality_p"]),
                        "laterality": "separate" if region in keep_apart else "averaged"})
        else:
            row.update({"laterality_p": np.nan, "laterality": "not tested"})
        for c in cov.columns:
            row[f"slope_{c}"] = slopes.loc[(region, hemi), c]
        rows.append(row)
    stats = pd.DataFrame(rows)
    long_raw = units.stack(["region", "hemisphere"], future_stack=True).rename("volume_mm3")
    long_adj = adjusted.stack(["region", "hemisphere"], future_stack=True).rename("adjusted_mm3")
    values = pd.concat([long_raw, long_adj], axis=1).reset_index()
    values.insert(1, "group", values["participant_id"].map(grp.astype(str)))
    return stats, values, messages


def vbm_mask(gm_maps, threshold: float) -> np.ndarray:
    """Voxels whose mean modulated GM over the participants is at least ``threshold``."""
    mean = np.mean([np.asarray(m, dtype=np.float64) for m in gm_maps], axis=0)
    return np.isfinite(mean) & (mean >= float(threshold))


def vbm_inputs(images, group: GroupConfig, gm_threshold: float):
    """The VBM's analysis mask, smoothing masks and parameters for :func:`.voxelwise.voxelwise_inference`.

    ``images``: the participants' modulated GM maps (nibabel, one grid). Returns ``(analysis_mask,
    masks, params)``: the voxels whose mean modulated GM is at least ``gm_threshold``, the whole grid
    as every image's smoothing mask, and ``group`` with the ICV added to the covariates (the design
    needs an ``ICV_COLUMN`` column) and every participant counted.
    """
    import nibabel as nib

    mask = vbm_mask([np.asarray(i.dataobj) for i in images], gm_threshold)
    # a GM density is data everywhere on the grid (0 in WM and CSF is a value, not a gap): it is
    # smoothed over the whole grid, as FSL-VBM and SPM do, and only the GM voxels are tested.
    # Smoothed within the GM mask, a voxel would leave out its neighbours' partial-volume GM below
    # the threshold: the edges of the cortex and the nuclei, where an atrophy shows.
    grid = nib.Nifti1Image(np.ones(mask.shape, np.uint8), images[0].affine)
    params = dataclasses.replace(group, covariates=(*group.covariates, ICV_COLUMN), coverage_fraction=1.0)
    return mask, [grid] * len(images), params


_VOLUME_SIDECAR = {
    "Description": "Subcortical volumes (native T1w, atlas labels brought by the inverse T1w -> template "
                   "transform) compared between the groups: left/right Wilcoxon signed-rank in the first group "
                   "(hemispheres averaged unless p < roi_stats.laterality_alpha), covariance-method adjustment "
                   "on the ICV (ml) and the group covariates in the reference group, two-tailed Wilcoxon "
                   "rank-sum, Bonferroni over the region units tested",
    "Units": "mm^3 (means and SEM of the adjusted volumes; raw_mean_* unadjusted)",
}


def _voxelwise(images, masks, design, g: GroupConfig, out_dir: Path, *, measure: str, mask_rule: str, seed: int,
               n_jobs: int, work_dir, parameters: dict, analysis_mask=None) -> dict:
    from .voxelwise import voxelwise_inference, write_voxelwise

    out_dir.mkdir(parents=True, exist_ok=True)
    result = voxelwise_inference(images, masks, design, g, seed=seed, n_jobs=n_jobs, work_dir=work_dir,
                                 analysis_mask=analysis_mask)
    written = write_voxelwise(result, out_dir, alpha=g.alpha, tfce_connectivity=g.tfce_connectivity,
                              to_mni=None, parameters={"voxelwise": {
                                  "measure": measure, "covariates": list(g.covariates),
                                  "smoothing_sigma_mm": g.smoothing_sigma_mm, "n_permutations": g.n_permutations,
                                  "seed": seed, "space": "participants' template (MNI152 2009)"},
                                  "config": parameters}, measure=measure, mask_rule=mask_rule)
    summary = {}
    for cname, maps in result.contrasts.items():
        sig = result.mask & (maps["pfwe"] < g.alpha)
        summary[cname] = {"n_significant_voxels": int(sig.sum()),
                          "min_pfwe": float(maps["pfwe"][result.mask].min()) if result.mask.any() else 1.0}
    return {"computed": True, "n_participants": int(result.n_subjects), "n_voxels": int(result.mask.sum()),
            "covariates": list(g.covariates), "contrasts": summary,
            "files": {k: str(Path(v).relative_to(out_dir.parent)) for k, v in written.items()}}


def run_structural_group(files: Mapping[str, Mapping], participants: pd.DataFrame, outputs: Mapping, *,
                         group: GroupConfig, roi_stats: RoiStatsConfig, structural, seed: int = 0, n_jobs: int = 1,
                         work_dir=None, parameters: dict | None = None, sidecar: dict | None = None) -> dict:
    """Volumes, VBM and thickness from the participants' structural outputs; writes every group file.

    Parameters
    ----------
    files : participant_id -> {derivative key: Path} (``volumes``, ``gm_modulated_template``,
        ``thickness_template`` where present).
    participants : the selected participants.tsv rows.
    outputs : ``volumes_stats``, ``volumes_values`` (TSVs), ``vbm`` and ``thickness`` (folders),
        ``structural_summary`` (JSON: what was computed, and why not).
    group, roi_stats : ``Config.group`` and ``Config.roi_stats``.
    structural : ``Config.structural`` (``vbm_gm_threshold``, ``volume_regions``).

    Returns
    -------
    dict: the summary (also written) with ``warnings``.
    """
    import nibabel as nib

    from ..io import write_json, write_tsv

    sidecar = dict(sidecar or {})
    parameters = dict(parameters or {})
    summary: dict = {"alpha": float(group.alpha), "warnings": []}
    parts = participants.copy()
    parts["participant_id"] = parts["participant_id"].astype(str)
    with_volumes = [p for p in parts["participant_id"] if "volumes" in files.get(p, {})]
    tables = read_volume_tables({p: files[p]["volumes"] for p in with_volumes})
    icv = icv_ml(tables)

    # subcortical volumes
    try:
        stats, values, msgs = volume_statistics(tables, parts, group, roi_stats, regions=structural.volume_regions)
        write_tsv(outputs["volumes_stats"], stats, sidecar={**sidecar, **_VOLUME_SIDECAR,
                                                             "Covariates": [*group.covariates, ICV_COLUMN]})
        write_tsv(outputs["volumes_values"], values, sidecar={
            **sidecar, "Description": "Every participant's volume per region unit, raw and adjusted (mm^3)"})
        summary["volumes"] = {"computed": True, "n_participants": int(values["participant_id"].nunique())}
        summary["warnings"] += msgs
    except DataError as exc:
        summary["volumes"] = {"computed": False, "reason": str(exc)}

    # VBM: modulated GM, covariates + ICV, mask from the mean GM
    with_gm = [p for p in with_volumes if "gm_modulated_template" in files[p] and with_prefix(p) in icv.index]
    design = parts.set_index("participant_id").loc[with_gm].reset_index()
    design[ICV_COLUMN] = [float(icv[with_prefix(p)]) for p in with_gm]
    try:
        if not with_gm:
            raise DataError("no participant has a modulated GM map")
        images = [nib.load(str(files[p]["gm_modulated_template"])) for p in with_gm]
        mask, grids, g_vbm = vbm_inputs(images, group, structural.vbm_gm_threshold)
        summary["vbm"] = _voxelwise(
            images, grids, design, g_vbm, Path(outputs["vbm"]),
            measure="modulated GM probability (VBM)", seed=seed, n_jobs=n_jobs, work_dir=work_dir,
            parameters=parameters, analysis_mask=mask,
            mask_rule=f"voxels whose mean modulated GM over the {len(with_gm)} participants is at least "
                      f"{structural.vbm_gm_threshold:g} (structural.vbm_gm_threshold); the maps smoothed "
                      "over the whole grid before")
    except DataError as exc:
        summary["vbm"] = {"computed": False, "reason": str(exc)}

    # cortical thickness, when the participant level computed it
    with_th = [p for p in with_volumes if "thickness_template" in files[p]]
    if not with_th:
        summary["thickness"] = {"computed": False, "reason": "no participant has a thickness map "
                                "(structural.thickness was false at the participant level)"}
    else:
        try:
            images = [nib.load(str(files[p]["thickness_template"])) for p in with_th]
            masks = [nib.Nifti1Image((np.asarray(i.dataobj) > 0).astype(np.uint8), i.affine) for i in images]
            design = parts.set_index("participant_id").loc[with_th].reset_index()
            summary["thickness"] = _voxelwise(
                images, masks, design, group, Path(outputs["thickness"]), measure="cortical thickness (mm, DiReCT)",
                seed=seed, n_jobs=n_jobs, work_dir=work_dir, parameters=parameters,
                mask_rule=f"voxels where at least a fraction {group.coverage_fraction:g} of the {len(with_th)} "
                          "participants have a thickness (group.coverage_fraction)")
        except DataError as exc:
            summary["thickness"] = {"computed": False, "reason": str(exc)}
    n_all = len(parts)
    summary["n_participants"] = n_all
    summary["n_with_structural"] = len(with_volumes)
    if len(with_volumes) < n_all:
        summary["warnings"].append(f"{n_all - len(with_volumes)} participant(s) have no structural results "
                                   "(no T1w, or structural.enabled was false)")
    for name in ("volumes", "vbm", "thickness"):
        if not summary[name]["computed"]:
            logger.warning("structural %s not computed: %s", name, summary[name]["reason"])
    write_json(outputs["structural_summary"], {**sidecar, **summary})
    return summary
