"""The participant workflow: per subject, GRE -> QSM -> template -> region values.

Steps, each resumable (see :mod:`qsm_bids.steps`):

``register``   with a T1w and ``recon.mask_method = auto`` (no ``--mask-dir``): GRE magnitude -> T1w
               (rigid), T1w -> template (rigid, affine, SyN) before the reconstruction, and the template's
               brain mask brought onto the GRE grid for the brain mask
``qsm``        coil combination, brain mask, phase unwrapping, echo
               combination, background removal, dipole inversion (docs/reconstruction.md)
``normalise``  GRE magnitude -> T1w (rigid), T1w -> template (rigid, affine, SyN) unless ``register`` ran,
               Chimap, mask and T1w resampled to the template (docs/atlas_registration.md)
``regions``    atlas to native GRE space, eroded region medians (docs/atlas_registration.md)
``structural`` with a T1w and ``structural.enabled``: N4, Atropos tissues (template priors), volumes, modulated
               GM and the Jacobian in template space, DiReCT thickness with ``structural.thickness``
``dti``        with DWI: gradient checks, tensor fit, FA/MD/RD/AD, CST medians
``report``     the participant QC page ``OUTPUT_DIR/sub-<l>.html``

Subjects are independent: one that fails is logged with one line naming the
file and the problem, and the others go on. Runs for different subjects may
share OUTPUT_DIR (cluster job arrays): every file is written atomically and
``dataset_description.json`` has the same content from every run.
"""

from __future__ import annotations

import dataclasses
import logging
import platform
import time
import traceback
from pathlib import Path

import numpy as np

from . import __version__
from .bids import GRERun, SubjectInputs, discover, load_gre, validate_dataset
from .derivatives import (
    generated_by,
    participant_paths,
    run_log,
    step_records_dir,
    write_dataset_description,
)
from .errors import DataError, QSMBidsError
from .io import provenance, write_nifti, write_text, write_tsv
from .recon.checks import check_geometry, check_map
from .steps import Step, StepRunner, subject_lock
from .verify import storage_error

logger = logging.getLogger(__name__)

__all__ = ["run_participant_level", "ParticipantWorkflow"]


#: What each brain-mask method is (the brain mask's sidecar ``Description``).
_MASK_DESCRIPTIONS = {
    "t1w": "the template's (MNI152) brain mask brought to the GRE grid through the inverse T1w -> template "
           "and GRE -> T1w transforms, intersected with the magnitude's support, holes filled, no erosion",
    "magnitude": "from the GRE magnitude (threshold, opening, hole filling, recon.mask_erode_mm erosion)",
    "user": "given with --mask-dir",
}


def _sidecar(step: str, **extra) -> dict:
    """Sidecar content naming the step; every parameter is added by the workflow's provenance block."""
    return {"GeneratedBy": generated_by(Step=step), **extra}


class ParticipantWorkflow:
    """The steps of one GRE run of one subject/session."""

    def __init__(self, subject: SubjectInputs, run: GRERun, output_dir: Path, cfg, *, work_dir: Path,
                 n_cpus: int, mask_dir: Path | None = None):
        self.subject = subject
        self.run_ = run
        self.output_dir = Path(output_dir)
        self.cfg = cfg
        self.work_dir = Path(work_dir)
        self.n_cpus = n_cpus
        self.mask_dir = mask_dir
        self.prefix = run.label
        self.paths = participant_paths(output_dir, run.entities, cfg.registration.template, cfg.atlas.name)
        self.runner = StepRunner(step_records_dir(self.output_dir), self.prefix)
        self.warnings: list = []
        self._gre = None

    # -- inputs ------------------------------------------------------------------------------------
    def gre(self):
        if self._gre is None:
            self._gre = load_gre(self.run_, self.cfg.inputs.field_strength, self.cfg.inputs.phase_units)
            for note in self._gre.notes:
                logger.info("[%s] %s", self.prefix, note)
        return self._gre

    def _user_mask(self) -> Path | None:
        if self.mask_dir is None:
            return None
        stem = self.subject.label + "_desc-brain_mask"
        for ext in (".nii.gz", ".nii"):
            cand = Path(self.mask_dir) / (stem + ext)
            if cand.exists():
                return cand
        raise DataError(f"--mask-dir {self.mask_dir}: no {stem}.nii[.gz] for {self.subject.label}")

    def uses_t1w_mask(self) -> bool:
        """With a T1w, ``auto`` masks and no user mask, registration runs first (the T1w brain mask)."""
        return bool(self.subject.t1w) and self.cfg.recon.mask_method == "auto" and self.mask_dir is None

    # -- steps -------------------------------------------------------------------------------------
    def steps(self) -> list:
        cfg = self.cfg
        gre_files = [str(p) for p in self.run_.files()]
        user_mask = self._user_mask()
        qsm_inputs = gre_files + ([str(user_mask)] if user_mask else [])
        q = self.paths
        t1w = [str(self.subject.t1w)] if self.subject.t1w else []
        xfms = ("xfm_gre_t1w", "xfm_t1w_template", "xfm_template_t1w")
        reg_params = {"registration": dataclasses.asdict(cfg.registration), "seed": cfg.seed}
        early = self.uses_t1w_mask()
        steps = []
        if early:
            steps.append(Step(
                "register", gre_files + t1w,
                {**reg_params, "inputs": dataclasses.asdict(cfg.inputs),
                 "mask": {k: getattr(cfg.recon, k) for k in ("mask_threshold", "mask_erode_mm")}},
                {k: q[k] for k in xfms + ("template_brain",)}, self._register,
                "ANTs: GRE -> T1w rigid, T1w -> template rigid, affine, SyN; template brain mask to the GRE grid"))
            qsm_inputs = qsm_inputs + [str(q["template_brain"])]
        steps += [
            Step("qsm", qsm_inputs, {"inputs": dataclasses.asdict(cfg.inputs),
                                     "recon": dataclasses.asdict(cfg.recon)},
                 {k: q[k] for k in ("magnitude", "mask", "qsm_mask", "unwrapped_phase", "local_field", "chi")},
                 lambda out: self._qsm(out, user_mask),
                 "coil combination, mask, unwrapping, background removal, dipole inversion",
                 check=self._check_qsm),
            Step("normalise", [str(q["magnitude"]), str(q["chi"]), str(q["qsm_mask"])] + t1w
                 + ([str(q[k]) for k in xfms] if early else []),
                 reg_params,
                 {k: q[k] for k in (() if early else xfms) + ("chi_template", "t1w_template", "mask_template")},
                 self._normalise,
                 "ANTs: " + ("resampling through the transforms of 'register'" if early
                             else "GRE -> T1w rigid, T1w -> template rigid, affine, SyN"),
                 check=self._check_normalise),
            Step("regions", [str(q["chi"]), str(q["qsm_mask"]), str(q["xfm_gre_t1w"]),
                             str(q["xfm_template_t1w"])],
                 {"atlas": dataclasses.asdict(cfg.atlas)},
                 {k: q[k] for k in ("atlas_native", "regions")}, self._regions,
                 "atlas to native space, eroded region medians"),
        ]
        steps += self._structural_steps()
        steps += self._dti_steps()
        return steps

    #: The structural step's outputs; the thickness ones only with ``structural.thickness``.
    _STRUCTURAL_KEYS = ("probseg_csf", "probseg_gm", "probseg_wm", "tissue_dseg", "gm_modulated_template",
                        "jacobian_template", "volumes")
    _THICKNESS_KEYS = ("thickness", "thickness_template")

    def _atlas(self):
        """The configured atlas (a user atlas file, else the package's) in template space and its label table."""
        from .atlas import configured_atlas

        return configured_atlas(self.cfg.atlas)

    def _structural_steps(self) -> list:
        """The ``structural`` step when the subject has a T1w and ``structural.enabled`` (issue 13)."""
        cfg = self.cfg
        if not self.subject.t1w:
            return []
        if not cfg.structural.enabled:
            logger.info("[%s] structural step off (structural.enabled is false)", self.prefix)
            return []
        q = self.paths
        keys = self._STRUCTURAL_KEYS + (self._THICKNESS_KEYS if cfg.structural.thickness else ())
        atlas_files = [f for f in (cfg.atlas.atlas_file, cfg.atlas.atlas_labels) if f]
        return [Step("structural", [str(self.subject.t1w), str(q["xfm_t1w_template"]), str(q["xfm_template_t1w"])]
                     + atlas_files,
                     {"structural": dataclasses.asdict(cfg.structural),
                      "atlas": {k: getattr(cfg.atlas, k) for k in ("name", "atlas_file", "atlas_labels", "min_voxels")},
                      "template": cfg.registration.template,
                      "template_resolution_mm": cfg.registration.template_resolution_mm, "seed": cfg.seed},
                     {k: q[k] for k in keys}, self._structural,
                     "N4, Atropos tissues with template priors, volumes"
                     + (" (local SyN refinement)" if cfg.structural.volume_refinement else "") + ", modulated GM"
                     + (", DiReCT thickness" if cfg.structural.thickness else " (thickness off)"))]

    def _structural(self, out: dict) -> dict:
        import contextlib

        from .io import sidecar_of
        from .registration import set_threads
        from .structural import process_structural

        st = self.cfg.structural
        if not st.thickness:  # maps of an earlier run with thickness on must not reach the group level
            for key in self._THICKNESS_KEYS:
                for path in (self.paths[key], sidecar_of(self.paths[key])):
                    with contextlib.suppress(FileNotFoundError):
                        Path(path).unlink()
        atlas_img, table = self._atlas()
        set_threads(self.n_cpus)
        info = process_structural(
            self.subject.t1w, self.paths["xfm_t1w_template"], self.paths["xfm_template_t1w"], out,
            atlas_img=atlas_img, label_table=table, params=st,
            resolution_mm=self.cfg.registration.template_resolution_mm, min_voxels=self.cfg.atlas.min_voxels,
            work_dir=self.work_dir, sidecar=_sidecar("structural"), seed=self.cfg.seed)
        logger.info("[%s] structural: ICV %.0f ml; stages %s", self.prefix, info["icv_mm3"] / 1000,
                    ", ".join(f"{k} {v:.0f} s" for k, v in info["timings"].items()))
        for w in info["warnings"]:
            logger.warning("[%s] %s", self.prefix, w)
        return info

    def _dti_steps(self) -> list:
        """The ``dti`` step when the subject has DWI (issue 13): none otherwise."""
        if not self.subject.dwi:
            return []
        from .diffusion import dwi_files

        q, cfg = self.paths, self.cfg
        reference = self.subject.t1w or q["magnitude"]
        try:
            files = [str(p) for p in dwi_files(self.subject.dwi)]
        except DataError:  # reported by the step itself, after the QSM steps
            files = [str(self.subject.dwi)]
        return [Step("dti", files + [str(reference),
                                                                            str(q["xfm_template_t1w"])],
                     {"diffusion": dataclasses.asdict(cfg.diffusion),
                      "atlas": {k: getattr(cfg.atlas, k) for k in ("name", "atlas_file", "atlas_labels", "min_voxels")},
                      "preset": cfg.registration.preset, "seed": cfg.seed},
                     {k: q[k] for k in ("dwi_mask", "dwi_b0", "dti_fa", "dti_md", "dti_rd", "dti_ad",
                                        "xfm_dwi_t1w", "atlas_dwi", "dti_regions")},
                     lambda out: self._dti(out, reference),
                     "DWI checks, b0 mask, DIPY tensor fit, FA/MD/RD/AD, b0 -> T1w rigid, atlas medians")]

    def _dti(self, out: dict, reference) -> dict:
        from .diffusion import process_dwi

        atlas_img, table = self._atlas()
        info = process_dwi(self.subject.dwi, reference, self.paths["xfm_template_t1w"], out,
                           params=self.cfg.diffusion, atlas_img=atlas_img, label_table=table,
                           preset=self.cfg.registration.preset, seed=self.cfg.seed,
                           min_voxels=self.cfg.atlas.min_voxels, work_dir=self.work_dir, sidecar=_sidecar("dti"))
        for note in info["notes"]:
            logger.info("[%s] %s", self.prefix, note)
        return info

    def _register(self, out: dict) -> dict:
        """Registration before the reconstruction: the first-echo magnitude (root sum of squares over
        coils for coil-resolved data) and its magnitude brain mask as the moving mask."""
        import nibabel as nib

        from . import registration
        from .recon.mask import brain_mask

        gre = self.gre()
        try:  # a header the reconstruction would refuse is refused before the registration
            check_geometry(gre.voxel_size, gre.magnitude.shape[:3], self.cfg.recon)
        except DataError as exc:
            raise DataError(f"{self.run_.files()[0]}: {exc}") from None
        mag = np.asarray(gre.magnitude, dtype=np.float32)
        if gre.coil_resolved:
            mag = np.sqrt(np.sum(mag**2, axis=4))
        mag1 = mag[..., 0] if mag.ndim == 4 else mag
        mask = brain_mask(mag1, gre.voxel_size, threshold=self.cfg.recon.mask_threshold,
                          erode_mm=self.cfg.recon.mask_erode_mm)
        return registration.register_participant(
            nib.Nifti1Image(mag1, gre.affine), self.subject.t1w,
            nib.Nifti1Image(mask.astype(np.float32), gre.affine), out, template_brain_out=out["template_brain"],
            template=self.cfg.registration.template, preset=self.cfg.registration.preset, seed=self.cfg.seed,
            n_threads=self.n_cpus, work_dir=self.work_dir, sidecar=_sidecar("register"),
            syn_metric=self.cfg.registration.syn_metric)

    def run(self) -> dict:
        """Run every step (reusing finished ones); then the QC page. Returns timings."""
        infos = {}
        with provenance(GeneratedBy=generated_by(),
                        Parameters=self.cfg.to_dict()):
            for step in self.steps():
                infos[step.name] = self.runner.run(step)
        self._report(infos)
        return dict(self.runner.timings)

    # -- post-conditions (run on the written files, before a step is recorded or reused) --------------
    @staticmethod
    def _check_qsm(out: dict) -> None:
        import nibabel as nib

        mask = np.asarray(nib.load(str(out["qsm_mask"])).dataobj) > 0
        for key, what in (("local_field", "local field"), ("chi", "Chimap")):
            try:
                check_map(np.asarray(nib.load(str(out[key])).dataobj, dtype=np.float32), mask, what)
            except DataError as exc:
                raise DataError(f"{out[key]}: {exc}") from None

    @staticmethod
    def _check_normalise(out: dict) -> None:
        import nibabel as nib

        mask = np.asarray(nib.load(str(out["mask_template"])).dataobj) > 0
        if not mask.any():
            raise DataError(f"{out['mask_template']}: the QSM mask is empty in template space: the "
                            "registration failed; check the GRE and T1w headers (orientation, voxel size)")
        try:
            check_map(np.asarray(nib.load(str(out["chi_template"])).dataobj, dtype=np.float32), mask,
                      "template-space Chimap")
        except DataError as exc:
            raise DataError(f"{out['chi_template']}: {exc}") from None

    # -- step bodies -------------------------------------------------------------------------------
    def _qsm(self, out: dict, user_mask: Path | None) -> dict:
        import nibabel as nib

        from .recon.pipeline import reconstruct

        gre = self.gre()
        mask = None
        template_brain = None
        if self.uses_t1w_mask():
            tb = nib.load(str(self.paths["template_brain"]))
            if tb.shape[:3] != gre.magnitude.shape[:3]:
                raise DataError(f"{self.paths['template_brain']}: shape {tb.shape} differs from the GRE grid "
                                f"{gre.magnitude.shape[:3]}")
            template_brain = np.asarray(tb.dataobj, dtype=np.float32)
        if user_mask is not None:
            m_img = nib.load(str(user_mask))
            if m_img.shape[:3] != gre.magnitude.shape[:3]:
                raise DataError(f"{user_mask}: shape {m_img.shape} differs from the GRE grid "
                                f"{gre.magnitude.shape[:3]}")
            mask = np.asarray(m_img.dataobj) > 0
        logger.info("[%s] GRE %s, %d echo(es) TE=%s ms, %.1f T, voxel %s mm%s", self.prefix,
                    "x".join(map(str, gre.magnitude.shape[:3])), len(gre.echo_times),
                    ",".join(f"{te * 1e3:g}" for te in gre.echo_times), gre.field_strength,
                    "x".join(f"{v:g}" for v in gre.voxel_size),
                    f", {gre.magnitude.shape[4]} coils" if gre.coil_resolved else "")
        source = self.run_.files()[0]
        try:
            check_geometry(gre.voxel_size, gre.magnitude.shape[:3], self.cfg.recon)
            result = reconstruct(gre.magnitude, gre.phase, gre.echo_times, gre.voxel_size, gre.b0_dir,
                                 gre.field_strength, self.cfg.recon, mask=mask, t1w_mask=template_brain)
            # post-conditions before anything is written: a map that is all zero, non-finite or far
            # outside tissue values (a header or units error) must never look like a finished QSM
            check_map(result.local_field_ppm, result.eroded_mask, "local field")
            check_map(result.chi_ppm, result.measured_mask, "Chimap")
        except DataError as exc:
            raise DataError(f"{source}: {exc}") from None
        aff = gre.affine
        common = {"EchoTime": gre.echo_times, "MagneticFieldStrength": gre.field_strength,
                  "B0Direction": [float(v) for v in gre.b0_dir], "InputNotes": gre.notes,
                  "Sources": [str(p) for p in self.run_.files()]}
        write_nifti(out["magnitude"], result.magnitude[..., 0], aff,
                    sidecar=_sidecar("qsm", Description="combined magnitude of the first echo",
                                     **common))
        method = result.parameters.get("mask_method")
        write_nifti(out["mask"], result.mask, aff, dtype=np.uint8,
                    sidecar=_sidecar("qsm", Type="Brain",
                                     Method="user mask" if user_mask else method,
                                     Description=_MASK_DESCRIPTIONS.get("user" if user_mask else method, ""),
                                     **common))
        # Region values and group coverage use the voxels where the local field was measured: MEDI also
        # fills voxels dropped by the phase-quality check from their neighbours, but those values are
        # extrapolated (on the demo cohort they pull the SN medians down by ~0.05 ppm).
        write_nifti(out["qsm_mask"], result.measured_mask, aff, dtype=np.uint8,
                    sidecar=_sidecar("qsm", Type="Brain", BrainMaskMethod=method,
                                     Description="where the local field was measured (brain mask after the "
                                                 "phase-quality check, eroded by the background kernel, plus "
                                                 "MEDI's rim shells when recon.medi_edge_radii_mm is set and the "
                                                 "brain mask came from the T1w or the user); "
                                                 "region values and the group coverage use it",
                                     ChiDefinedVoxels=int(result.chi_mask.sum()), **common))
        write_nifti(out["unwrapped_phase"], result.unwrapped_phase, aff,
                    sidecar=_sidecar("qsm", Units="rad", Method="Laplacian (Schofield & Zhu 2003)",
                                     Description="unwrapped phase of each echo (4th dimension)",
                                     **common))
        write_nifti(out["local_field"], result.local_field_ppm, aff,
                    sidecar=_sidecar("qsm", Units="ppm", Method=self.cfg.recon.background,
                                     Description="local field; zero outside the brain mask eroded by the "
                                                 "background-removal kernel", **common))
        write_nifti(out["chi"], result.chi_ppm, aff,
                    sidecar=_sidecar("qsm", Units="ppm", Algorithm=self.cfg.recon.inversion,
                                     BrainMaskMethod=method,
                                     Reference=self.cfg.recon.reference,
                                     ReconParameters=result.parameters, Timings=result.timings_s,
                                     FFTCount=result.fft_counts, **common))
        return {"timings": result.timings_s, "fft_counts": result.fft_counts}

    def _normalise(self, out: dict) -> dict:
        from . import registration

        info = registration.normalise_participant(
            magnitude_path=self.paths["magnitude"], t1w_path=self.subject.t1w,
            chi_path=self.paths["chi"], mask_path=self.paths["qsm_mask"],
            outputs={**{k: self.paths[k] for k in ("xfm_gre_t1w", "xfm_t1w_template", "xfm_template_t1w")}, **out},
            template=self.cfg.registration.template,
            resolution_mm=self.cfg.registration.template_resolution_mm,
            preset=self.cfg.registration.preset, seed=self.cfg.seed, n_threads=self.n_cpus,
            work_dir=self.work_dir, sidecar=_sidecar("normalise"), registered=self.uses_t1w_mask(),
            syn_metric=self.cfg.registration.syn_metric)
        if not self.subject.t1w:
            logger.warning("[%s] no T1w: the GRE magnitude is registered to the template directly", self.prefix)
        return info

    def _regions(self, out: dict) -> dict:
        import nibabel as nib

        from . import atlas as atlas_mod
        from . import registration

        atlas_img, table = self._atlas()
        chi_img = nib.load(str(self.paths["chi"]))
        labels_native = registration.atlas_to_native(
            atlas_img, reference=chi_img, xfm_gre_t1w=self.paths["xfm_gre_t1w"],
            xfm_template_t1w=self.paths["xfm_template_t1w"])
        chi = np.asarray(chi_img.dataobj, dtype=np.float32)
        mask = np.asarray(nib.load(str(self.paths["qsm_mask"])).dataobj) > 0
        labels = np.asarray(labels_native.dataobj).astype(np.int16)
        frame, warnings = atlas_mod.region_medians(
            chi, mask, labels, table, chi_img.header.get_zooms()[:3],
            erosion_radius_mm=self.cfg.atlas.erosion_radius_mm, min_voxels=self.cfg.atlas.min_voxels)
        for w in warnings:
            logger.warning("[%s] %s", self.prefix, w)
        self.warnings.extend(warnings)
        write_nifti(out["atlas_native"], labels, chi_img.affine, dtype=np.int16,
                    sidecar=_sidecar("regions", Description="atlas in native GRE space (nearest)"))
        write_tsv(out["regions"], frame, sidecar={
            "region": {"Description": "region of the atlas"},
            "hemisphere": {"Description": "L or R"},
            "median_ppm": {"Description": "median susceptibility in the eroded region", "Units": "ppm"},
            "n_voxels": {"Description": "voxels in the eroded region inside the QSM mask"},
            **_sidecar("regions"),
        })
        return {"warnings": warnings}

    def _report(self, infos: dict) -> None:
        from .report.participant import render_participant_report

        html = render_participant_report(
            label=self.prefix, paths={**self.paths, "t1w": self.subject.t1w}, parameters=self.cfg.to_dict(),
            timings=dict(self.runner.timings), warnings=self.warnings
            + [w for i in infos.values() for w in (i or {}).get("warnings", [])],
            version=__version__)
        write_text(self.paths["report"], html)


def run_participant_level(bids_dir, output_dir, cfg, *, participant_labels=None, session_labels=None,
                          work_dir=None, n_cpus=1, mask_dir=None, validate=True) -> int:
    """Run the participant level; returns the exit code (0, or the first failure's)."""
    bids_dir, output_dir = Path(bids_dir), Path(output_dir)
    if validate:
        validate_dataset(bids_dir)
    subjects = discover(bids_dir, participant_labels, session_labels)
    write_dataset_description(output_dir, bids_dir)
    logger.info("participant level: %d subject/session(s), qsm-bids %s, python %s, %d cpu(s)",
                len(subjects), __version__, platform.python_version(), n_cpus)
    failures: list = []
    t0 = time.perf_counter()
    for i, subject in enumerate(subjects, 1):
        with run_log(output_dir, subject.label, "participant") as log_path:
            logger.info("[%s] subject %d/%d (log: %s)", subject.label, i, len(subjects), log_path.name)
            for code, message in subject.errors:
                logger.error("[%s] %s", subject.label, message)
                failures.append((subject.label, code))
            for run in subject.gre_runs:
                try:
                    with subject_lock(output_dir, run.label):
                        timings = ParticipantWorkflow(subject, run, output_dir, cfg, work_dir=work_dir,
                                                      n_cpus=n_cpus, mask_dir=mask_dir).run()
                    logger.info("[%s] done (%s)", run.label,
                                ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))
                except QSMBidsError as exc:
                    logger.error("[%s] %s", run.label, exc)
                    failures.append((run.label, exc.exit_code))
                except OSError as exc:
                    logger.debug("[%s] %s", run.label, traceback.format_exc())
                    err = storage_error(exc, output_dir)
                    if err is None:
                        logger.error("[%s] %s: %s (traceback in %s)", run.label, type(exc).__name__, exc,
                                     log_path)
                        failures.append((run.label, 1))
                    else:
                        logger.error("[%s] %s", run.label, err)
                        failures.append((run.label, err.exit_code))
                except Exception as exc:  # noqa: BLE001 - one subject's bug must not stop the others
                    logger.debug("[%s] %s", run.label, traceback.format_exc())
                    logger.error("[%s] unexpected %s: %s (traceback in %s)", run.label,
                                 type(exc).__name__, exc, log_path)
                    failures.append((run.label, 1))
        elapsed = time.perf_counter() - t0
        if i < len(subjects):
            logger.info("progress: %d/%d subject(s) in %.0f s, about %.0f s left", i, len(subjects), elapsed,
                        elapsed / i * (len(subjects) - i))
    if failures:
        logger.error("participant level finished with %d failure(s): %s", len(failures),
                     ", ".join(label for label, _ in failures))
        return failures[0][1]
    logger.info("participant level finished: %d subject/session(s) in %.0f s", len(subjects),
                time.perf_counter() - t0)
    return 0
