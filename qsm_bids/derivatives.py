"""Every derivative qsm-bids writes, named in one place (participant and group level).

The participant level writes ``OUTPUT_DIR/sub-<l>/[ses-<s>/]anat/<name>``; the
names come from :data:`PARTICIPANT_OUTPUTS`, one entry per output. The group
level finds a participant's files by building the same paths from the
entities of the files on disk (:func:`find_participant_derivatives`), never by
a separate pattern table. The group outputs live in ``OUTPUT_DIR/group/``
(:func:`group_paths`, :func:`statmap_name`). This module also writes
``dataset_description.json`` and opens the per-run log file.

Adding a participant output (e.g. a segmentation) is one entry in
:data:`PARTICIPANT_OUTPUTS`: ``"key": Output(suffix, extension, {entities})``;
``"{template}"`` and ``"{atlas}"`` in an entity value are filled from the
configuration. Adding a group output is one entry in :data:`GROUP_OUTPUTS`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import __version__
from .io import derivative_name, derivative_path, write_json

__all__ = [
    "Output",
    "PARTICIPANT_OUTPUTS",
    "GROUP_OUTPUTS",
    "participant_paths",
    "participant_report_path",
    "group_paths",
    "statmap_name",
    "clusters_table_name",
    "find_participant_derivatives",
    "generated_by",
    "container",
    "write_dataset_description",
    "run_log",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Output:
    """One derivative file of a GRE run: BIDS suffix, extension and the entities added to the run's."""

    suffix: str
    extension: str = ".nii.gz"
    entities: dict = field(default_factory=dict)
    datatype: str = "anat"


#: Every participant derivative of one GRE run (entities of the run are prepended).
PARTICIPANT_OUTPUTS: dict[str, Output] = {
    "magnitude": Output("MEGRE", ".nii.gz", {"part": "mag", "desc": "firstecho"}),
    "mask": Output("mask", ".nii.gz", {"desc": "brain"}),
    "qsm_mask": Output("mask", ".nii.gz", {"desc": "qsm"}),
    # the template's brain mask on the GRE grid (with a T1w and recon.mask_method "auto")
    "template_brain": Output("probseg", ".nii.gz", {"desc": "templatebrain"}),
    "unwrapped_phase": Output("phase", ".nii.gz", {"desc": "unwrapped"}),
    "local_field": Output("fieldmap", ".nii.gz", {"desc": "local"}),
    "chi": Output("Chimap"),
    "xfm_gre_t1w": Output("xfm", ".mat", {"from": "GRE", "to": "T1w", "mode": "image"}),
    "xfm_t1w_template": Output("xfm", ".h5", {"from": "T1w", "to": "{template}", "mode": "image"}),
    "xfm_template_t1w": Output("xfm", ".h5", {"from": "{template}", "to": "T1w", "mode": "image"}),
    "chi_template": Output("Chimap", ".nii.gz", {"space": "{template}"}),
    "t1w_template": Output("T1w", ".nii.gz", {"space": "{template}", "desc": "preproc"}),
    "mask_template": Output("mask", ".nii.gz", {"space": "{template}", "desc": "qsm"}),
    "atlas_native": Output("dseg", ".nii.gz", {"atlas": "{atlas}"}),
    "regions": Output("Chimap", ".tsv", {"atlas": "{atlas}", "stat": "median"}),
    # DTI, when the subject has DWI (sub-<l>/[ses-<s>/]dwi/)
    "dwi_mask": Output("mask", ".nii.gz", {"desc": "brain"}, "dwi"),
    "dwi_b0": Output("dwiref", ".nii.gz", {"desc": "meanb0"}, "dwi"),
    "dti_fa": Output("dwimap", ".nii.gz", {"desc": "FA"}, "dwi"),
    "dti_md": Output("dwimap", ".nii.gz", {"desc": "MD"}, "dwi"),
    "dti_rd": Output("dwimap", ".nii.gz", {"desc": "RD"}, "dwi"),
    "dti_ad": Output("dwimap", ".nii.gz", {"desc": "AD"}, "dwi"),
    "xfm_dwi_t1w": Output("xfm", ".mat", {"from": "dwi", "to": "T1w", "mode": "image"}, "dwi"),
    "atlas_dwi": Output("dseg", ".nii.gz", {"atlas": "{atlas}"}, "dwi"),
    "dti_regions": Output("dwimap", ".tsv", {"atlas": "{atlas}", "stat": "median"}, "dwi"),
    # T1w structural comparators, when the subject has a T1w (issue 13): tissues in native T1w space, thickness
    # (structural.thickness), the VBM input and the Jacobian in template space, the volumes table
    "probseg_csf": Output("probseg", ".nii.gz", {"label": "CSF"}),
    "probseg_gm": Output("probseg", ".nii.gz", {"label": "GM"}),
    "probseg_wm": Output("probseg", ".nii.gz", {"label": "WM"}),
    "tissue_dseg": Output("dseg", ".nii.gz", {"desc": "tissue"}),
    "thickness": Output("thickness"),
    "thickness_template": Output("thickness", ".nii.gz", {"space": "{template}"}),
    "gm_modulated_template": Output("probseg", ".nii.gz", {"space": "{template}", "label": "GM",
                                                           "desc": "modulated"}),
    "jacobian_template": Output("jacobian", ".nii.gz", {"space": "{template}"}),
    "volumes": Output("morph", ".tsv", {"atlas": "{atlas}", "desc": "volumes"}),
}

#: Entities that identify a GRE run (copied from the input); the rest come from the output's entry.
RUN_ENTITIES = ("sub", "ses", "acq", "run")


def _filled(output: Output, template: str, atlas: str) -> dict:
    return {k: v.format(template=template, atlas=atlas) for k, v in output.entities.items()}


def participant_report_path(output_dir, entities: dict) -> Path:
    """The participant QC page ``OUTPUT_DIR/sub-<l>[_ses-<s>]....html``."""
    e = {k: v for k, v in entities.items() if v}
    return Path(output_dir) / ("_".join(f"{k}-{v}" for k, v in e.items()) + ".html")


def participant_paths(output_dir, entities: dict, template: str, atlas: str) -> dict:
    """Every derivative of one GRE run (``key -> Path``), plus its ``report`` page."""
    e = {k: v for k, v in entities.items() if v}
    paths = {key: derivative_path(output_dir, {**e, **_filled(o, template, atlas)}, o.suffix, o.extension,
                                  datatype=o.datatype)
             for key, o in PARTICIPANT_OUTPUTS.items()}
    paths["report"] = participant_report_path(output_dir, e)
    return paths


_ENTITY = re.compile(r"^([a-zA-Z]+)-([a-zA-Z0-9]+)$")


def _run_entities(name: str) -> dict | None:
    """The run entities of a derivative file name, or None when it is not a BIDS name."""
    stem = name.split(".", 1)[0]
    parts = stem.split("_")[:-1]
    entities = {}
    for part in parts:
        m = _ENTITY.match(part)
        if m is None:
            return None
        entities[m.group(1)] = m.group(2)
    if "sub" not in entities:
        return None
    return {k: entities[k] for k in RUN_ENTITIES if k in entities}


def find_participant_derivatives(output_dir, label: str, template: str, atlas: str,
                                 keys=None) -> tuple[dict, list]:
    """A participant's derivatives that exist, found by building the participant level's paths.

    The GRE runs (sessions, acquisitions, runs) are read from the names of the files in
    ``sub-<label>/[ses-*/]anat/``; for each run the paths of :func:`participant_paths` are built
    and the existing ones kept. With several runs the first (sorted) that has most of ``keys`` is
    used and a warning says so. Returns ``({key: Path}, warnings)``.
    """
    output_dir = Path(output_dir)
    keys = tuple(keys or PARTICIPANT_OUTPUTS)
    runs = []
    for anat in sorted((output_dir / f"sub-{label}").glob("**/anat")):
        for path in sorted(anat.iterdir()):
            ent = _run_entities(path.name)
            if ent is None or ent.get("sub") != label:
                continue
            built = participant_paths(output_dir, ent, template, atlas)
            if path in built.values() and ent not in runs:
                runs.append(ent)
    found_per_run = []
    for ent in runs:
        built = participant_paths(output_dir, ent, template, atlas)
        found_per_run.append({k: built[k] for k in keys if built[k].exists()})
    warnings = []
    if not found_per_run:
        return {}, warnings
    best = max(range(len(runs)), key=lambda i: (len(found_per_run[i]), -i))
    if len(runs) > 1:
        names = ", ".join("_".join(f"{k}-{v}" for k, v in r.items()) for r in runs)
        warnings.append(f"sub-{label}: {len(runs)} GRE runs have derivatives ({names}); using "
                        + "_".join(f"{k}-{v}" for k, v in runs[best].items()))
    return found_per_run[best], warnings


# -- group level ----------------------------------------------------------------------------------

#: Group outputs, relative to ``OUTPUT_DIR/group`` (``{template}`` filled from the configuration).
GROUP_OUTPUTS: dict[str, str] = {
    "template_t1w": "tpl-study_T1w.nii.gz",
    "template_chi": "tpl-study_desc-mean_Chimap.nii.gz",
    "template_mask": "tpl-study_desc-brain_mask.nii.gz",
    "xfm_study_to_mni": "from-study_to-{template}_mode-image_xfm.h5",
    "xfm_mni_to_study": "from-{template}_to-study_mode-image_xfm.h5",
    "template_t1w_mni": "tpl-study_space-{template}_T1w.nii.gz",
    "template_chi_mni": "tpl-study_space-{template}_desc-mean_Chimap.nii.gz",
    "studyspace": "studyspace",
    "analysis_mask": "desc-analysis_mask.nii.gz",
    "coverage_map": "desc-coverage_map.nii.gz",
    "region_coverage": "desc-coverage_regions.tsv",
    "summary": "group.json",
    "regions_summary": "regions.json",
    "permutation_null": "desc-permutation_null.tsv",
    "voxelwise_summary": "voxelwise.json",
    "roi_stats": "roi_stats.tsv",
    "correlations": "correlations.tsv",
    "roi_subgroups": "roi_subgroups.tsv",
    "roi_values": "roi_values.tsv",
    "demographics": "demographics.tsv",
    "selection": "selection.tsv",
    "dti_correlations": "desc-dti_correlations.tsv",
    "dti_values": "desc-dti_values.tsv",
    "dti_scatter": "desc-dti_scatter.png",
    "dti_cst_centreline": "desc-cstcentreline_dseg.nii.gz",
    "volumes_stats": "desc-volumes_stats.tsv",
    "volumes_values": "desc-volumes_values.tsv",
    "structural_summary": "structural.json",
    "vbm": "vbm",
    "thickness": "thickness",
    "report": "report.html",
}

#: The template step's outputs (the inputs of the study-space resampling).
STUDY_TEMPLATE_KEYS = ("template_t1w", "template_chi", "template_mask", "xfm_study_to_mni")


def group_paths(output_dir, template: str) -> dict:
    """Every fixed-name group output (``key -> Path``) in ``OUTPUT_DIR/group``."""
    group_dir = Path(output_dir) / "group"
    return {k: group_dir / v.format(template=template) for k, v in GROUP_OUTPUTS.items()}


def statmap_name(contrast: str, stat: str, space: str | None = None, desc: str | None = None) -> str:
    """``[space-<s>_]contrast-<c>[_desc-<d>]_stat-<stat>_statmap.nii.gz``."""
    parts = ([f"space-{space}"] if space else []) + [f"contrast-{contrast}"]
    parts += ([f"desc-{desc}"] if desc else []) + [f"stat-{stat}", "statmap.nii.gz"]
    return "_".join(parts)


def clusters_table_name(contrast: str) -> str:
    """``contrast-<c>_desc-clusters_table.tsv``."""
    return f"contrast-{contrast}_desc-clusters_table.tsv"


def studyspace_name(label: str, suffix: str, extension: str = ".nii.gz", **entities) -> str:
    """A participant's file in the study template (``group/studyspace/``)."""
    return derivative_name({"sub": label.removeprefix("sub-"), **entities}, suffix, extension)


# -- dataset description, provenance, logs --------------------------------------------------------

def generated_by(**extra) -> dict:
    """The ``GeneratedBy`` block of sidecars (name and version; ``extra`` e.g. ``Step``, ``Level``)."""
    return {"Name": "qsm-bids", "Version": __version__, **extra}


def container() -> dict | None:
    """The container this run is in (Docker via ``QSM_BIDS_CONTAINER``, Singularity/Apptainer), or None."""
    if os.environ.get("QSM_BIDS_CONTAINER"):
        return {"Type": os.environ["QSM_BIDS_CONTAINER"], "Tag": f"bids/qsm-bids:{__version__}"}
    if os.environ.get("SINGULARITY_CONTAINER") or os.environ.get("APPTAINER_CONTAINER"):
        return {"Type": "singularity",
                "URI": os.environ.get("SINGULARITY_CONTAINER") or os.environ.get("APPTAINER_CONTAINER")}
    return None


def write_dataset_description(output_dir, source) -> Path:
    """The derivative dataset_description.json (same content from every run)."""
    generated = {**generated_by(),
                 "Description": "Whole-brain QSM group study (Acosta-Cabronero et al. 2018 on open tools)",
                 "CodeURL": "https://github.com/qsm-bids/qsm-bids"}
    box = container()
    if box:
        generated["Container"] = box
    desc = {
        "Name": "qsm-bids derivatives",
        "BIDSVersion": "1.10.0",
        "DatasetType": "derivative",
        "GeneratedBy": [generated],
        "SourceDatasets": [{"URL": Path(source).resolve().as_uri()}],
    }
    return write_json(Path(output_dir) / "dataset_description.json", desc)


@contextlib.contextmanager
def run_log(output_dir, label: str, level: str):
    """Send every log record of this block to ``logs/<label>_<level>_<time>_<pid>.log`` too.

    ``label`` names the run: a subject/session at the participant level, ``group`` at the group level.
    """
    logs = Path(output_dir) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = logs / f"{label}_{level}_{stamp}_{os.getpid()}.log"
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    handler.setLevel(logging.DEBUG)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield path
    finally:
        root.removeHandler(handler)
        handler.close()


def step_records_dir(output_dir) -> Path:
    """Where the step records (resume) are kept."""
    return Path(output_dir) / "logs" / "steps"
