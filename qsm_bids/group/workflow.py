"""The group workflow: participant derivatives + participants.tsv -> statistics -> report.

It reads only ``OUTPUT_DIR``'s participant results and the dataset's
``participants.tsv`` (never the raw images), so it runs on a machine that
has only the derivatives. Steps, each resumable:

``template``   study template from the participants' template-space T1w (or MNI)
``voxelwise``  smoothing, GLM, Freedman-Lane permutations with TFCE, FWE p
``regions``    region statistics, correlations, demographics
``structural`` with T1w results: subcortical volumes, VBM, cortical thickness (group/vbm/, group/thickness/)
``dti``        with DTI results: QSM-DTI Spearman correlations in the CST
``report``     ``group/report.html``
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .. import __version__
from ..bids import read_participants, strip_prefix
from ..derivatives import (
    STUDY_TEMPLATE_KEYS,
    find_participant_derivatives,
    generated_by,
    group_paths,
    run_log,
    step_records_dir,
    write_dataset_description,
)
from ..errors import DataError, NoInputError
from ..io import provenance, write_json, write_nifti
from ..steps import Step, StepRunner

logger = logging.getLogger(__name__)

__all__ = ["GroupInputs", "GroupWorkflow", "collect_group_inputs", "run_group_level"]


@dataclass
class GroupInputs:
    """The participants that enter the group analysis and their derivative files."""

    participants: pd.DataFrame  # selected rows, participant_id without "sub-"
    files: dict  # participant_id -> {key: Path}
    excluded: list = field(default_factory=list)  # human-readable reasons
    warnings: list = field(default_factory=list)
    left_out: list = field(default_factory=list)  # (participant_id, reason) of every participants.tsv row left out


#: Participant derivatives the group level reads, and those without which a participant is excluded.
_KEYS = ("chi_template", "t1w_template", "mask_template", "regions", "chi", "xfm_gre_t1w", "xfm_t1w_template",
         "dti_regions", "volumes", "gm_modulated_template", "thickness_template")
_REQUIRED = ("chi_template", "t1w_template", "mask_template", "regions")


def collect_group_inputs(bids_dir, output_dir, cfg, participant_labels=None) -> GroupInputs:
    """Select participants and find their derivatives; exclusions are listed, not silent."""
    output_dir = Path(output_dir)
    g = cfg.group
    frame = read_participants(bids_dir)
    tsv = Path(bids_dir) / "participants.tsv"
    left_out, warnings = [], []
    unlisted = sorted(d.name for d in output_dir.glob("sub-*") if d.is_dir()
                      and strip_prefix(d.name, "sub") not in set(frame["participant_id"]))
    if unlisted:
        warnings.append(f"participant results without a row in {tsv} are not analysed: {', '.join(unlisted)} "
                        "(add them to participants.tsv to include them)")
        logger.warning("%s", warnings[-1])
    if participant_labels:
        wanted = {strip_prefix(x, "sub") for x in participant_labels}
        left_out += [(p, "not in --participant-label") for p in frame["participant_id"] if p not in wanted]
        frame = frame[frame["participant_id"].isin(wanted)]
    from .selection import select_participants

    chosen = select_participants(frame, g.restrict, g.exclude, source=str(Path(bids_dir) / "participants.tsv"))
    for w in chosen.warnings:
        logger.warning("%s", w)
    left_out += list(zip(chosen.left_out["participant_id"], chosen.left_out["reason"]))
    frame = chosen.participants
    for column in (g.group_column, *g.covariates):
        if column not in frame.columns:
            raise DataError(f"{Path(bids_dir) / 'participants.tsv'}: no column '{column}' "
                            f"(columns: {', '.join(frame.columns)}); see --group-column/--covariates")
    excluded = []
    frame = frame.copy()
    frame[g.group_column] = frame[g.group_column].astype("string")
    others = frame[~frame[g.group_column].isin(g.groups) & frame[g.group_column].notna()]
    if len(others):
        logger.info("%d participant(s) in other groups (%s) are not analysed", len(others),
                    ", ".join(sorted(set(others[g.group_column].astype(str)))))
    left_out += [(p, f"{g.group_column}={v} (not one of the compared groups {', '.join(g.groups)})")
                 for p, v in zip(others["participant_id"], others[g.group_column])]
    frame = frame[frame[g.group_column].isin(g.groups) | frame[g.group_column].isna()]
    from .glm import check_numeric_covariate

    for column in g.covariates:
        if column not in g.categorical_covariates:
            check_numeric_covariate(frame, column, source=str(tsv))
    missing_cols = [c for c in (g.group_column, *g.covariates)]
    missing = frame[frame[missing_cols].isna().any(axis=1)]
    by_columns: dict = {}
    for _, row in missing.iterrows():
        cols = ", ".join(c for c in missing_cols if pd.isna(row[c]))
        excluded.append(f"sub-{row['participant_id']}: no value for {cols} in participants.tsv")
        left_out.append((row["participant_id"], f"no value for {cols} in participants.tsv"))
        by_columns.setdefault(cols, []).append(f"sub-{row['participant_id']}")
    for cols, who in by_columns.items():
        logger.warning("excluded %d participant(s) with no value (n/a or empty) for %s in %s: %s", len(who), cols,
                       tsv, ", ".join(who))
    frame = frame.drop(missing.index)
    n_no_value = len(excluded)

    files: dict = {}
    keep = []
    for label in frame["participant_id"]:
        found, notes = find_participant_derivatives(output_dir, label, cfg.registration.template,
                                                    cfg.atlas.name, keys=_KEYS)
        warnings += notes
        lacking = [k for k in _REQUIRED if k not in found]
        if lacking:
            excluded.append(f"sub-{label}: participant results missing ({', '.join(lacking)}); run the "
                            "participant level for it")
            left_out.append((label, f"participant results missing ({', '.join(lacking)})"))
            continue
        files[label] = found
        keep.append(label)
    frame = frame[frame["participant_id"].isin(keep)].reset_index(drop=True)
    for reason in excluded[n_no_value:]:
        logger.warning("excluded %s", reason)
    counts = frame[g.group_column].value_counts()
    for level in g.groups:
        if counts.get(level, 0) < 2:
            raise DataError(
                f"group '{level}' of column '{g.group_column}' has {counts.get(level, 0)} usable "
                f"participant(s); at least 2 per group are needed (levels found: "
                f"{', '.join(f'{k}={v}' for k, v in counts.items()) or 'none'})")
    return GroupInputs(participants=frame, files=files, excluded=excluded,
                       warnings=warnings + list(chosen.warnings), left_out=left_out)


def run_group_level(bids_dir, output_dir, cfg, *, participant_labels=None, work_dir=None, n_cpus=1,
                    mem_gb=None, validate=True, report_only=False, analysis: str = "") -> int:
    """Run the group level (or, with ``report_only``, re-render its report from the files); exit code."""
    bids_dir, output_dir = Path(bids_dir), Path(output_dir)
    if report_only:
        from ..report.group import write_group_report_from_files

        path = write_group_report_from_files(output_dir, bids_dir, analysis=analysis)
        logger.info("group report re-rendered from %s: %s", path.parent, path)
        return 0
    if not any(output_dir.glob("sub-*")):
        raise NoInputError(f"{output_dir}: no sub-* participant results; run the participant level first")
    if validate:
        logger.info("group level reads only participant derivatives and participants.tsv; the raw "
                    "dataset is not validated again")
    write_dataset_description(output_dir, bids_dir)
    with run_log(output_dir, f"group-{analysis}" if analysis else "group", "group"):
        t0 = time.perf_counter()
        inputs = collect_group_inputs(bids_dir, output_dir, cfg, participant_labels)
        g = cfg.group
        counts = inputs.participants[g.group_column].value_counts().to_dict()
        logger.info("group level: %s (covariates: %s), %d permutations, template %s",
                    " vs ".join(f"{k} (n={counts.get(k, 0)})" for k in g.groups),
                    ", ".join(g.covariates) or "none", g.n_permutations, g.template)
        if analysis:
            logger.info("analysis '%s': written to %s", analysis, output_dir / "group" / analysis)
        workflow = GroupWorkflow(inputs, output_dir, cfg, bids_dir=bids_dir, work_dir=work_dir, n_cpus=n_cpus,
                                 mem_gb=mem_gb, analysis=analysis)
        workflow.run()
        logger.info("group level finished in %.0f s: %s", time.perf_counter() - t0, workflow.paths["report"])
    return 0


def write_region_coverage(path, values: pd.DataFrame) -> None:
    """Per region and hemisphere: how much of it the participants' QSM masks cover (region values are
    medians over the covered voxels only). Participant tables written before the coverage column
    give NaN."""
    from ..io import write_tsv

    v = values.copy()
    if "coverage" not in v.columns:
        v["coverage"] = np.nan
    rows = []
    for (region, hemi), sel in v.groupby(["region", "hemisphere"], sort=False):
        c = pd.to_numeric(sel["coverage"], errors="coerce")
        rows.append({"region": region, "hemisphere": hemi, "n": int(c.notna().sum()),
                     "coverage_median": float(c.median()) if c.notna().any() else np.nan,
                     "coverage_min": float(c.min()) if c.notna().any() else np.nan,
                     "n_below_0.5": int((c < 0.5).sum())})
    frame = pd.DataFrame(rows, columns=["region", "hemisphere", "n", "coverage_median", "coverage_min",
                                        "n_below_0.5"])
    write_tsv(path, frame, sidecar={
        "Description": "fraction of each eroded atlas region inside the participants' QSM masks (native space)",
        "n": {"Description": "participants with a coverage value"},
        "coverage_median": {"Description": "median over participants"},
        "coverage_min": {"Description": "lowest participant"},
        "n_below_0.5": {"Description": "participants covering less than half of the region"},
        "GeneratedBy": generated_by(Step="regions")})


class GroupWorkflow:
    """The steps of the group level (as :class:`qsm_bids.participant.ParticipantWorkflow` for one run)."""

    def __init__(self, inputs: GroupInputs, output_dir: Path, cfg, *, bids_dir, work_dir=None, n_cpus=1,
                 mem_gb=None, analysis: str = ""):
        self.cfg = cfg
        self.inputs = inputs
        self.output_dir = Path(output_dir)
        # a subgroup or exclusion analysis lives in its own folder, never over the main one
        self.analysis = analysis
        self.group_dir = self.output_dir / "group" / analysis if analysis else self.output_dir / "group"
        self.work_dir = Path(work_dir) if work_dir else self.group_dir
        self.n_cpus = n_cpus
        self.mem_gb = mem_gb
        self.bids_dir = Path(bids_dir)
        self.selection = {"participants": list(inputs.participants["participant_id"]),
                          "groups": inputs.participants[cfg.group.group_column].astype(str).tolist()}
        self.paths = {k: self.group_dir / p.relative_to(self.output_dir / "group")
                      for k, p in group_paths(output_dir, cfg.registration.template).items()}
        self.template_outputs = {k: self.paths[k] for k in STUDY_TEMPLATE_KEYS}
        self.runner = StepRunner(step_records_dir(output_dir), f"group-{analysis}" if analysis else "group")

    def run(self) -> dict:
        """Run every step (reusing finished ones), write ``group.json`` and render the report from the files."""
        infos = {}
        with provenance(GeneratedBy=generated_by(Level="group"), Parameters=self.cfg.to_dict()):
            self.write_selection()
            for step in self.steps():
                infos[step.name] = self.runner.run(step)
            self.write_summary(infos)
            self.report()
        return dict(self.runner.timings)

    def _files(self, key: str) -> list:
        return [str(self.inputs.files[p][key]) for p in self.selection["participants"]]

    def steps(self) -> list:
        cfg = self.cfg
        base_params = {"selection": self.selection, "seed": cfg.seed}
        steps = []
        if cfg.group.template == "study":
            steps.append(Step(
                "template", self._files("t1w_template") + self._files("chi_template") + self._files("mask_template")
            + [str(v) for p in self.selection["participants"] for k, v in self.inputs.files[p].items()
               if k in ("chi", "xfm_gre_t1w", "xfm_t1w_template")],
                {**base_params, "template_iterations": cfg.group.template_iterations,
                 "template_resolution_mm": cfg.group.template_resolution_mm,
                 "template_subset_size": cfg.group.template_subset_size,
                 "template_chi_weight": cfg.group.template_chi_weight},
                dict(self.template_outputs), self._template, "study template from template-space T1w"))
        tpl_inputs = [str(p) for p in self.template_outputs.values()] if cfg.group.template == "study" else []
        steps.append(Step(
            "voxelwise", self._files("chi_template") + self._files("mask_template") + tpl_inputs,
            {**base_params, "group": dataclasses.asdict(cfg.group)},
            {"summary": self.paths["voxelwise_summary"]}, self._voxelwise,
            "smoothing, GLM, Freedman-Lane permutations, TFCE, FWE"))
        steps.append(Step(
            "regions", self._files("regions") + [str(Path(self.bids_dir) / "participants.tsv")],
            {**base_params, "roi_stats": dataclasses.asdict(cfg.roi_stats),
             "group": {k: getattr(cfg.group, k) for k in ("group_column", "groups", "covariates")}},
            {k: self.paths[k] for k in ("roi_stats", "correlations", "demographics", "regions_summary",
                                        "region_coverage")},
            self._regions, "region statistics, correlations, demographics"))
        with_dti = [p for p in self.selection["participants"] if "dti_regions" in self.inputs.files[p]]
        if with_dti:
            steps.append(Step(
                "dti", [str(self.inputs.files[p][k]) for p in with_dti
                        for k in ("dti_regions", "chi_template", "mask_template")]
                + tpl_inputs + [str(Path(self.bids_dir) / "participants.tsv")]
                + [f for f in (cfg.atlas.atlas_file, cfg.atlas.atlas_labels) if f],
                {**base_params, "with_dti": with_dti, "group": {k: getattr(cfg.group, k) for k in
                                                                ("group_column", "groups", "template",
                                                                 "cst_centreline_tolerance_voxels")},
                 "atlas": {k: getattr(cfg.atlas, k) for k in ("atlas_file", "atlas_labels", "min_voxels")},
                 "regions": list(cfg.diffusion.regions)},
                {k: self.paths[k] for k in ("dti_correlations", "dti_values", "dti_scatter", "dti_cst_centreline")},
                lambda out: self._dti(out, with_dti), "QSM-DTI Spearman correlations in the CST"))
        with_structural = [p for p in self.selection["participants"] if "volumes" in self.inputs.files[p]]
        if with_structural:
            steps.append(Step(
                "structural", [str(v) for p in with_structural for k, v in self.inputs.files[p].items()
                               if k in ("volumes", "gm_modulated_template", "thickness_template")]
                + [str(Path(self.bids_dir) / "participants.tsv")],
                {**base_params, "with_structural": with_structural, "group": dataclasses.asdict(cfg.group),
                 "roi_stats": {k: getattr(cfg.roi_stats, k) for k in ("laterality_alpha", "rank_sum_continuity")},
                 "structural": {k: getattr(cfg.structural, k) for k in ("volume_regions", "vbm_gm_threshold")}},
                {"structural_summary": self.paths["structural_summary"]},
                lambda out: self._structural(out, with_structural),
                "subcortical volumes (ICV- and age-adjusted rank-sum), VBM and thickness (GLM, TFCE, FWE)"))
        else:  # a summary of an earlier run must not describe participants that are not here
            self.paths["structural_summary"].unlink(missing_ok=True)
        return steps

    def _structural(self, out: dict, with_structural: list) -> dict:
        from .structural import run_structural_group

        summary = run_structural_group(
            {p: self.inputs.files[p] for p in with_structural}, self.inputs.participants,
            {**{k: self.paths[k] for k in ("volumes_stats", "volumes_values", "vbm", "thickness")}, **out},
            group=self.cfg.group, roi_stats=self.cfg.roi_stats, structural=self.cfg.structural, seed=self.cfg.seed,
            n_jobs=self.n_cpus, work_dir=self.work_dir, parameters=self.cfg.to_dict(),
            sidecar={"GeneratedBy": generated_by(Level="group", Step="structural")})
        return {"warnings": summary["warnings"]
                + [f"{k}: not computed: {summary[k]['reason']}" for k in ("volumes", "vbm", "thickness")
                   if not summary[k]["computed"]]}

    def _dti(self, out: dict, with_dti: list) -> dict:
        from .dti import cst_values, dti_correlations, read_dti_tables, write_dti_outputs

        g = self.cfg.group
        qsm = self._cst_centreline_medians(with_dti, out["dti_cst_centreline"])
        dti = read_dti_tables({p: self.inputs.files[p]["dti_regions"] for p in with_dti})
        values = cst_values(qsm, dti, self.inputs.participants, g.group_column)
        corr = dti_correlations(values, g.groups[0])
        write_dti_outputs(values, corr, out, g.groups, {"GeneratedBy": generated_by(Level="group", Step="dti")})
        n_without = len(self.selection["participants"]) - len(with_dti)
        warnings = [f"{n_without} participant(s) have no DTI results (no DWI)"] if n_without else []
        if qsm.empty:
            warnings.append("the atlas has no 'corticospinal_tract' region: no CST QSM for the QSM-DTI correlations")
        return {"warnings": warnings + [f"QSM-{r.y}: {r.note}" for r in corr.itertuples() if r.note]}

    def _cst_centreline_medians(self, with_dti: list, dseg_path: Path) -> pd.DataFrame:
        """CST QSM per participant: median over the atlas CST's centre line in the analysis space (the study
        template, else the MNI grid of the template-space Chimaps); the centre line is written as a dseg."""
        import ants
        import nibabel as nib

        from ..atlas import configured_atlas
        from .dti import centreline_labels, centreline_medians
        from .template import _to_ants, study_space_maps

        chi_paths = [str(self.inputs.files[p]["chi_template"]) for p in with_dti]
        mask_paths = [str(self.inputs.files[p]["mask_template"]) for p in with_dti]
        atlas_img, table = configured_atlas(self.cfg.atlas)
        if self.cfg.group.template == "study":
            chi_images, mask_images, warp = study_space_maps(self.template_outputs, chi_paths, mask_paths)
            reference = nib.load(str(self.template_outputs["template_t1w"]))
            labels = ants.apply_transforms(_to_ants(reference), _to_ants(atlas_img), [warp.xfm_mni_to_study],
                                           interpolator="genericLabel", defaultvalue=0).numpy()
        else:
            from nilearn.image import resample_to_img

            chi_images = [nib.load(p) for p in chi_paths]
            mask_images = [nib.load(p) for p in mask_paths]
            reference = chi_images[0]  # the template-space maps share one grid
            labels = np.asarray(resample_to_img(atlas_img, reference, interpolation="nearest", force_resample=True,
                                                copy_header=True).dataobj)
        centreline = centreline_labels(np.rint(labels).astype(np.int32), table, "corticospinal_tract",
                                       self.cfg.group.cst_centreline_tolerance_voxels)
        write_nifti(dseg_path, centreline, reference.affine, dtype=np.int16, sidecar={
            "GeneratedBy": generated_by(Level="group", Step="dti"),
            "Description": "atlas CST centre line (centre of each axial cross-section) the CST QSM medians "
                           "are taken over", "Atlas": self.cfg.atlas.atlas_file or self.cfg.atlas.name,
            "ToleranceVoxels": self.cfg.group.cst_centreline_tolerance_voxels,
            "Labels": {str(int(r.index)): f"corticospinal_tract {r.hemisphere}"
                       for r in table[table["region"] == "corticospinal_tract"].itertuples()}})
        return centreline_medians(chi_images, mask_images, with_dti, centreline, table, "corticospinal_tract",
                                  self.cfg.atlas.min_voxels)

    # -- step bodies -------------------------------------------------------------------------------
    def _template(self, out: dict) -> dict:
        from .template import build_study_template

        return build_study_template(
            t1w_paths=self._files("t1w_template"), chi_paths=self._files("chi_template"),
            mask_paths=self._files("mask_template"), outputs=out,
            iterations=self.cfg.group.template_iterations,
            resolution_mm=self.cfg.group.template_resolution_mm, seed=self.cfg.seed,
            n_threads=self.n_cpus, work_dir=self.work_dir, subset_size=self.cfg.group.template_subset_size,
            chi_weight=self.cfg.group.template_chi_weight,
            groups=self.inputs.participants[self.cfg.group.group_column].astype(str).tolist(),
            ages=(self.inputs.participants["age"].tolist() if "age" in self.inputs.participants else None),
            **self._native_chain()) or {}

    def _native_chain(self) -> dict:
        """Native Chimaps and their transforms, so each map is resampled once into the study template."""
        keys = ("chi", "xfm_gre_t1w", "xfm_t1w_template")
        if not all(k in self.inputs.files[p] for p in self.selection["participants"] for k in keys):
            logger.info("native maps or transforms missing for some participants: the template-space "
                        "Chimaps are resampled into the study template instead")
            return {}
        return {"native_chi_paths": self._files("chi"), "gre_to_t1w_paths": self._files("xfm_gre_t1w"),
                "t1w_to_mni_paths": self._files("xfm_t1w_template")}

    def _voxelwise(self, out: dict) -> dict:
        from .voxelwise import run_voxelwise

        g = self.cfg.group
        study = g.template == "study"
        result = run_voxelwise(
            chi_paths=self._files("chi_template"), mask_paths=self._files("mask_template"),
            design=self.inputs.participants, params=g, out_dir=self.group_dir,
            study_template=self.template_outputs if study else None, seed=self.cfg.seed, n_jobs=self.n_cpus,
            mem_gb=self.mem_gb, parameters=self.cfg.to_dict(), work_dir=self.work_dir)
        write_json(out["summary"], {"GeneratedBy": generated_by(),
                                    "Outputs": result})
        return {"outputs": result}

    def _regions(self, out: dict) -> dict:
        from .demographics import compute_demographics, demographics_sidecar
        from .roi_stats import compute_roi_stats, read_region_tables, write_roi_outputs

        g, r = self.cfg.group, self.cfg.roi_stats
        values = read_region_tables({p: self.inputs.files[p]["regions"] for p in self.selection["participants"]})
        result = compute_roi_stats(values, self.inputs.participants, g, r, min_voxels=self.cfg.atlas.min_voxels,
                                   seed=self.cfg.seed)
        demo = compute_demographics(self.inputs.participants, group_column=g.group_column, groups=g.groups,
                                    yates=r.chi_square_yates, include=result.values["participant_id"].unique())
        write_roi_outputs(self.group_dir, result, demographics=demo,
                          demographics_sidecar=demographics_sidecar(g.groups, yates=r.chi_square_yates))
        write_region_coverage(out["region_coverage"], values)
        write_json(out["regions_summary"], {"GeneratedBy": generated_by(), "Groups": list(result.groups),
                                            "Covariates": list(result.covariates), "Parameters": result.parameters,
                                            "Warnings": list(result.warnings)})
        return {"warnings": list(result.warnings)}

    def write_selection(self) -> None:
        """``selection.tsv``: every participants.tsv row, whether it entered and why not."""
        from ..io import write_tsv
        from .selection import SELECTION_SIDECAR, selection_table

        g = self.cfg.group
        table = selection_table(read_participants(self.bids_dir), self.selection["participants"],
                                self.inputs.left_out, g.group_column)
        write_tsv(self.paths["selection"], table, sidecar={
            **SELECTION_SIDECAR, "Analysis": self.analysis or "main",
            "Selection": {"group_column": g.group_column, "groups": list(g.groups), "restrict": list(g.restrict),
                          "exclude": list(g.exclude)}})

    def write_summary(self, infos: dict) -> None:
        """``group/group.json``: what the report needs beyond the step outputs (selection, warnings, versions)."""
        from ..report.group import package_versions
        from .glm import contrast_names

        warnings = list(self.inputs.excluded) + list(self.inputs.warnings)
        for name, info in infos.items():
            warnings += [f"{name}: {w}" for w in (info or {}).get("warnings", [])]
        subjects = [{"participant_id": p, "group": grp, "chimap": str(self.inputs.files[p]["chi_template"])}
                    for p, grp in zip(self.selection["participants"], self.selection["groups"])]
        write_json(self.paths["summary"], {
            "GeneratedBy": generated_by(Level="group"), "Parameters": self.cfg.to_dict(),
            "Versions": {"qsm-bids": __version__, **package_versions()},
            "Contrasts": contrast_names(self.cfg.group.groups), "Participants": subjects, "Warnings": warnings,
            "Analysis": self.analysis,
            "Timings": dict(self.runner.timings)})

    def report(self) -> None:
        """Render ``group/report.html`` from the files on disk (as ``qsm-bids ... group --report-only``)."""
        from ..report.group import write_group_report_from_files

        write_group_report_from_files(self.output_dir, self.bids_dir, analysis=self.analysis)
