"""The group workflow: participant derivatives + participants.tsv -> statistics -> report.

It reads only ``OUTPUT_DIR``'s participant results and the dataset's
``participants.tsv`` (never the raw images), so it runs on a machine that
has only the derivatives. Steps, each resumable:

``template``   study template from the participants' template-space T1w (or MNI)
``voxelwise``  smoothing, GLM, Freedman-Lane permutations with TFCE, FWE p
``regions``    region statistics, correlations, demographics
``report``     ``group/report.html``
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from .. import __version__
from ..bids import read_participants, strip_prefix
from ..derivatives import (
    STUDY_TEMPLATE_KEYS,
    clusters_table_name,
    find_participant_derivatives,
    generated_by,
    group_paths,
    run_log,
    statmap_name,
    step_records_dir,
    write_dataset_description,
)
from ..errors import DataError, NoInputError
from ..io import provenance, write_json
from ..steps import Step, StepRunner

logger = logging.getLogger(__name__)

__all__ = ["GroupInputs", "collect_group_inputs", "run_group_level"]


@dataclass
class GroupInputs:
    """The participants that enter the group analysis and their derivative files."""

    participants: pd.DataFrame  # selected rows, participant_id without "sub-"
    files: dict  # participant_id -> {key: Path}
    excluded: list = field(default_factory=list)  # human-readable reasons
    warnings: list = field(default_factory=list)


#: Participant derivatives the group level reads, and those without which a participant is excluded.
_KEYS = ("chi_template", "t1w_template", "mask_template", "regions", "chi", "xfm_gre_t1w", "xfm_t1w_template")
_REQUIRED = ("chi_template", "t1w_template", "mask_template", "regions")


def collect_group_inputs(bids_dir, output_dir, cfg, participant_labels=None) -> GroupInputs:
    """Select participants and find their derivatives; exclusions are listed, not silent."""
    output_dir = Path(output_dir)
    g = cfg.group
    frame = read_participants(bids_dir)
    if participant_labels:
        wanted = {strip_prefix(x, "sub") for x in participant_labels}
        frame = frame[frame["participant_id"].isin(wanted)]
    for column in (g.group_column, *g.covariates):
        if column not in frame.columns:
            raise DataError(f"{Path(bids_dir) / 'participants.tsv'}: no column '{column}' "
                            f"(columns: {', '.join(frame.columns)}); see --group-column/--covariates")
    excluded, warnings = [], []
    frame = frame.copy()
    frame[g.group_column] = frame[g.group_column].astype("string")
    others = frame[~frame[g.group_column].isin(g.groups) & frame[g.group_column].notna()]
    if len(others):
        logger.info("%d participant(s) in other groups (%s) are not analysed", len(others),
                    ", ".join(sorted(set(others[g.group_column].astype(str)))))
    frame = frame[frame[g.group_column].isin(g.groups) | frame[g.group_column].isna()]
    missing_cols = [c for c in (g.group_column, *g.covariates)]
    missing = frame[frame[missing_cols].isna().any(axis=1)]
    for _, row in missing.iterrows():
        cols = [c for c in missing_cols if pd.isna(row[c])]
        excluded.append(f"sub-{row['participant_id']}: no value for {', '.join(cols)} in participants.tsv")
    frame = frame.drop(missing.index)

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
            continue
        files[label] = found
        keep.append(label)
    frame = frame[frame["participant_id"].isin(keep)].reset_index(drop=True)
    for reason in excluded:
        logger.warning("excluded %s", reason)
    counts = frame[g.group_column].value_counts()
    for level in g.groups:
        if counts.get(level, 0) < 2:
            raise DataError(
                f"group '{level}' of column '{g.group_column}' has {counts.get(level, 0)} usable "
                f"participant(s); at least 2 per group are needed (levels found: "
                f"{', '.join(f'{k}={v}' for k, v in counts.items()) or 'none'})")
    return GroupInputs(participants=frame, files=files, excluded=excluded, warnings=warnings)


def run_group_level(bids_dir, output_dir, cfg, *, participant_labels=None, work_dir=None, n_cpus=1,
                    mem_gb=None, validate=True) -> int:
    """Run the group level; returns the exit code."""
    bids_dir, output_dir = Path(bids_dir), Path(output_dir)
    if not any(output_dir.glob("sub-*")):
        raise NoInputError(f"{output_dir}: no sub-* participant results; run the participant level first")
    if validate:
        logger.info("group level reads only participant derivatives and participants.tsv; the raw "
                    "dataset is not validated again")
    write_dataset_description(output_dir, bids_dir)
    group_dir = output_dir / "group"
    with run_log(output_dir, "group", "group"):
        t0 = time.perf_counter()
        inputs = collect_group_inputs(bids_dir, output_dir, cfg, participant_labels)
        g = cfg.group
        counts = inputs.participants[g.group_column].value_counts().to_dict()
        logger.info("group level: %s (covariates: %s), %d permutations, template %s",
                    " vs ".join(f"{k} (n={counts.get(k, 0)})" for k in g.groups),
                    ", ".join(g.covariates) or "none", g.n_permutations, g.template)
        runner = StepRunner(step_records_dir(output_dir), "group")
        ctx = _GroupContext(cfg, inputs, group_dir, work_dir=Path(work_dir) if work_dir else group_dir,
                            n_cpus=n_cpus, mem_gb=mem_gb, output_dir=output_dir, bids_dir=bids_dir)
        infos = {}
        with provenance(GeneratedBy=generated_by(Level="group"),
                        Parameters=cfg.to_dict()):
            for step in ctx.steps():
                infos[step.name] = runner.run(step)
            ctx.report(infos, runner.timings)
        logger.info("group level finished in %.0f s: %s", time.perf_counter() - t0, ctx.paths["report"])
    return 0


class _GroupContext:
    """Step bodies of the group level."""

    def __init__(self, cfg, inputs: GroupInputs, group_dir: Path, *, work_dir, n_cpus, mem_gb, output_dir,
                 bids_dir):
        self.cfg = cfg
        self.inputs = inputs
        self.group_dir = group_dir
        self.work_dir = work_dir
        self.n_cpus = n_cpus
        self.mem_gb = mem_gb
        self.output_dir = output_dir
        self._roi = None  # (result, demographics) once computed
        self.bids_dir = bids_dir
        self.selection = {"participants": list(inputs.participants["participant_id"]),
                          "groups": inputs.participants[cfg.group.group_column].astype(str).tolist()}
        self.paths = group_paths(output_dir, cfg.registration.template)
        self.template_outputs = {k: self.paths[k] for k in STUDY_TEMPLATE_KEYS}

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
                 "template_resolution_mm": cfg.group.template_resolution_mm},
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
            {k: self.paths[k] for k in ("roi_stats", "correlations", "demographics")},
            self._regions, "region statistics, correlations, demographics"))
        return steps

    # -- step bodies -------------------------------------------------------------------------------
    def _template(self, out: dict) -> dict:
        from .template import build_study_template

        return build_study_template(
            t1w_paths=self._files("t1w_template"), chi_paths=self._files("chi_template"),
            mask_paths=self._files("mask_template"), outputs=out,
            iterations=self.cfg.group.template_iterations,
            resolution_mm=self.cfg.group.template_resolution_mm, seed=self.cfg.seed,
            n_threads=self.n_cpus, work_dir=self.work_dir, **self._native_chain()) or {}

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
            mem_gb=self.mem_gb, parameters=self.cfg.to_dict())
        write_json(out["summary"], {"GeneratedBy": generated_by(),
                                    "Outputs": result})
        return {"outputs": result}

    def _regions(self, out: dict) -> dict:
        from .demographics import demographics_sidecar
        from .roi_stats import write_roi_outputs

        result, demo = self._roi_result()
        write_roi_outputs(self.group_dir, result, demographics=demo,
                          demographics_sidecar=demographics_sidecar(self.cfg.group.groups,
                                                                    yates=self.cfg.roi_stats.chi_square_yates))
        return {"warnings": list(result.warnings)}

    def _roi_result(self, quiet: bool = False):
        """Region statistics and demographics, computed once per run.

        The report needs the result objects even when the ``regions`` step was reused from an
        earlier run; then they are recomputed (cheap, deterministic), ``quiet`` keeping the
        step's warnings from being logged a second time.
        """
        if self._roi is None:
            stats_logger = logging.getLogger("qsm_bids.group.roi_stats")
            previous = stats_logger.level
            if quiet:
                stats_logger.setLevel(logging.ERROR)
            try:
                self._roi = self._compute_roi()
            finally:
                stats_logger.setLevel(previous)
        return self._roi

    def _compute_roi(self):
        from .demographics import compute_demographics
        from .roi_stats import compute_roi_stats, read_region_tables

        g, r = self.cfg.group, self.cfg.roi_stats
        values = read_region_tables({p: self.inputs.files[p]["regions"] for p in self.selection["participants"]})
        result = compute_roi_stats(values, self.inputs.participants, g, r, min_voxels=self.cfg.atlas.min_voxels)
        demo = compute_demographics(self.inputs.participants, group_column=g.group_column, groups=g.groups,
                                    yates=r.chi_square_yates, include=result.values["participant_id"].unique())
        return result, demo

    def report(self, infos: dict, timings: dict) -> None:
        from ..report.group import package_versions, write_group_report
        from .glm import contrast_names

        g = self.cfg.group
        tpl = self.cfg.registration.template
        roi_result, demo = self._roi_result(quiet=True)
        contrasts = []
        for name in contrast_names(g.groups):
            def f(kind):
                return self.group_dir / statmap_name(name, kind, space=tpl)

            clusters = self.group_dir / clusters_table_name(name)
            contrasts.append({"name": name, "stat": f("tfce"), "pfwe": f("pfwe"),
                              "clusters": clusters, "stat_label": "TFCE"})
        subjects = [{"participant_id": p, "group": grp, "chimap": self.inputs.files[p]["chi_template"]}
                    for p, grp in zip(self.selection["participants"], self.selection["groups"])]
        warnings = list(self.inputs.excluded) + list(self.inputs.warnings)
        for name, info in infos.items():
            warnings += [f"{name}: {w}" for w in (info or {}).get("warnings", [])]
        versions = {"qsm-bids": __version__, **package_versions()}
        write_group_report(
            self.paths["report"], groups=g.groups, config=self.cfg.to_dict(), versions=versions,
            roi_result=roi_result, demographics=demo, participants=self.inputs.participants,
            contrasts=contrasts, template=None, subjects=subjects, warnings=warnings, alpha=g.alpha)
