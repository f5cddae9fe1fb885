"""Command line of the qsm-bids BIDS App: parser, dispatch and exit codes.

    qsm-bids BIDS_DIR OUTPUT_DIR {participant,group} [options]

Exit codes follow the BIDS execution specification: 0 success, 1 failure,
16 BIDS validation failed, 18 the filters selected no data, 64 usage error,
65 data error, 66 no usable input, 73 output cannot be created.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

from . import __version__
from .config import PRESETS, SECTIONS, Config, ConfigError, choices, load_config
from .errors import AnalysisLevelError, NoInputError, OutputError, QSMBidsError, UsageError
from .scratch import run_scratch
from .verify import storage_error

logger = logging.getLogger("qsm_bids")

__all__ = ["build_parser", "main"]


class _Parser(argparse.ArgumentParser):
    """argparse that raises UsageError (exit 64) instead of exiting with 2."""

    def error(self, message):
        if "argument analysis_level" in message:
            raise AnalysisLevelError(f"{message}: the analysis levels are participant and group "
                                     "(see qsm-bids --help)")
        raise UsageError(f"{message} (see qsm-bids --help)")


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


def _positive_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be positive")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (also used to document the options in the README).

    Choices come from the ``Literal`` types of :mod:`qsm_bids.config` and the defaults shown from ``Config()``.
    """
    d = Config()
    p = _Parser(
        prog="qsm-bids",
        description="Whole-brain quantitative susceptibility mapping (QSM) group study of a BIDS dataset "
                    "of gradient-echo and T1w images (Acosta-Cabronero et al., Radiology 2018, on open tools).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("bids_dir", type=Path, help="the root of the BIDS dataset (read only)")
    p.add_argument("output_dir", type=Path, help="where the derivatives are written (not inside bids_dir)")
    p.add_argument("analysis_level", choices=["participant", "group"],
                   help="participant: per-subject QSM, normalisation and region values; group: study "
                        "template, voxelwise and region statistics, report (reads only output_dir and "
                        "participants.tsv)")
    p.add_argument("--version", action="version", version=__version__)

    g = p.add_argument_group("selection")
    g.add_argument("--participant-label", "--participant_label", dest="participant_label", nargs="+",
                   metavar="LABEL", help="subjects to process, with or without 'sub-' (default: all)")
    g.add_argument("--session-label", "--session_label", dest="session_label", nargs="+", metavar="LABEL",
                   help="sessions to process, with or without 'ses-' (default: all)")

    g = p.add_argument_group("run")
    g.add_argument("-w", "--work-dir", type=Path, default=None,
                   help="scratch folder (default: a folder under $TMPDIR)")
    g.add_argument("--n-cpus", "--nprocs", dest="n_cpus", type=_positive_int, default=None,
                   help="threads for FFTs, ANTs and permutations (default: all available)")
    g.add_argument("--mem-gb", type=_positive_float, default=None,
                   help="memory available, GB; bounds the permutation chunk size")
    g.add_argument("--seed", type=int, default=None,
                   help=f"random seed (registration, permutations); default {d.seed}")
    g.add_argument("--config", type=Path, default=None,
                   help=f"YAML or JSON file overriding any parameter (sections: {', '.join(SECTIONS)}); see the "
                        "README for every key")
    g.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="a named parameter set, applied under --config and the other options: 'paper' is the "
                        "paper's chain exactly (magnitude mask, SHARP 5 mm, MEDI lambda 1000 on the toolbox "
                        "scaling, no rim shells, intersection of the participants' masks); 'nuclei' is for "
                        "per-subject values of small iron-rich nuclei from multi-echo data (README)")
    g.add_argument("--skip-bids-validation", "--skip_bids_validation", dest="skip_bids_validation",
                   action="store_true", help="do not run the BIDS validator on bids_dir")
    g.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")

    g = p.add_argument_group("participant level")
    g.add_argument("--field-strength", type=_positive_float, default=None, metavar="TESLA",
                   help="B0 in tesla when sidecars lack MagneticFieldStrength")
    g.add_argument("--phase-units", choices=choices("inputs", "phase_units"), default=None,
                   help="override the phase sidecar's Units (default: read it, or infer from the range)")
    g.add_argument("--mask-dir", type=Path, default=None,
                   help="folder with user brain masks on the GRE grid named "
                        "sub-<l>[_ses-<s>]_desc-brain_mask.nii[.gz] (default: computed)")
    g.add_argument("--background", choices=choices("recon", "background"), default=None,
                   help=f"background field removal (default, the paper's: {d.recon.background}, "
                        f"{d.recon.sharp_radius_mm:g} mm)")
    g.add_argument("--inversion", choices=choices("recon", "inversion"), default=None,
                   help=f"dipole inversion (default, the paper's: {d.recon.inversion}, lambda "
                        f"{d.recon.medi_lambda:g})")
    g.add_argument("--reference", choices=choices("recon", "reference"), default=None,
                   help=f"QSM referencing (default, the paper's: {d.recon.reference})")
    g.add_argument("--registration", choices=choices("registration", "preset"), default=None,
                   help=f"registration quality preset (default: {d.registration.preset})")
    g.add_argument("--atlas", type=Path, default=None,
                   help="user atlas (integer labels) in the template space, with --atlas-labels")
    g.add_argument("--atlas-labels", type=Path, default=None,
                   help="TSV with columns index, region, hemisphere (L/R) for --atlas")

    g = p.add_argument_group("group level")
    g.add_argument("--group-column", default=None,
                   help=f"participants.tsv column with the groups (default: {d.group.group_column})")
    g.add_argument("--groups", nargs=2, metavar=("A", "B"), default=None,
                   help=f"the two levels compared; A is the patient side (default: {' '.join(d.group.groups)})")
    g.add_argument("--covariates", nargs="*", default=None, metavar="COLUMN",
                   help=f"nuisance covariates from participants.tsv (default: {' '.join(d.group.covariates) or 'none'})")
    g.add_argument("--restrict", nargs="+", default=None, metavar="COLUMN=VALUE",
                   help="analyse only participants with these participants.tsv values (all must hold; "
                        "VALUE may be a comma list), e.g. group=ALS; written to its own folder under group/")
    g.add_argument("--exclude", nargs="+", default=None, metavar="COLUMN=VALUE",
                   help="leave out participants with these values, e.g. genetics=C9orf72; written to its own "
                        "folder under group/ (never over the main analysis)")
    g.add_argument("--n-permutations", type=_positive_int, default=None,
                   help=f"permutations for TFCE inference (default: {d.group.n_permutations})")
    g.add_argument("--dask-scheduler", default=None, metavar="ADDRESS",
                   help="send the permutation chunks to this Dask scheduler (e.g. tcp://host:8786); a "
                        "dask-jobqueue cluster (SLURM, PBS, SGE) goes in the config's group.dask_jobqueue")
    g.add_argument("--report-only", action="store_true",
                   help="re-render group/report.html from an existing OUTPUT_DIR's group results (no analysis)")
    g.add_argument("--template", choices=choices("group", "template"), default=None,
                   help="study: build a study template from the T1w images; mni: work in MNI space "
                        f"(default: {d.group.template})")
    return p


def _overrides(args) -> dict:
    """Command-line options that override configuration parameters."""
    pairs = {
        ("inputs", "field_strength"): args.field_strength,
        ("inputs", "phase_units"): args.phase_units,
        ("recon", "background"): args.background,
        ("recon", "inversion"): args.inversion,
        ("recon", "reference"): args.reference,
        ("registration", "preset"): args.registration,
        ("atlas", "atlas_file"): str(args.atlas) if args.atlas else None,
        ("atlas", "atlas_labels"): str(args.atlas_labels) if args.atlas_labels else None,
        ("group", "group_column"): args.group_column,
        ("group", "groups"): args.groups,
        ("group", "covariates"): args.covariates,
        ("group", "restrict"): args.restrict,
        ("group", "exclude"): args.exclude,
        ("group", "n_permutations"): args.n_permutations,
        ("group", "dask_scheduler"): args.dask_scheduler,
        ("group", "permutation_backend"): "dask" if args.dask_scheduler else None,
        ("group", "template"): args.template,
    }
    out: dict = {}
    for (section, key), value in pairs.items():
        if value is not None:
            out.setdefault(section, {})[key] = value
    if args.seed is not None:
        out["seed"] = args.seed
    if args.preset is not None:
        out["preset"] = args.preset
    return out


def _is_relative_to(path: Path, parent: Path) -> bool:
    try:
        path.relative_to(parent)
        return True
    except ValueError:
        return False


def _check_dirs(args) -> tuple:
    bids_dir = args.bids_dir.expanduser().resolve()
    output_dir = args.output_dir.expanduser().resolve()
    if not bids_dir.is_dir():
        raise NoInputError(f"{args.bids_dir}: BIDS_DIR does not exist or is not a folder")
    if _is_relative_to(output_dir, bids_dir):
        raise UsageError(f"OUTPUT_DIR {output_dir} is inside (or equal to) BIDS_DIR {bids_dir}; qsm-bids never "
                         "writes into the input dataset: choose an output folder outside it")
    if args.analysis_level == "group" and not output_dir.is_dir():
        raise NoInputError(f"{output_dir}: no participant results; run the participant level first")
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=output_dir, prefix=".qsm-bids-write-test-")
        probe.close()
    except OSError as exc:
        raise OutputError(f"{output_dir}: cannot create or write the output folder ({exc.strerror})") from None
    # the run's own scratch folder is made inside it (see qsm_bids.scratch)
    work_dir = args.work_dir
    if work_dir is None:
        work_dir = Path(tempfile.gettempdir())
    work_dir = work_dir.expanduser().resolve()
    if _is_relative_to(work_dir, bids_dir):
        raise UsageError(f"--work-dir {work_dir} is inside BIDS_DIR {bids_dir}; choose a folder outside it")
    try:
        work_dir.mkdir(parents=True, exist_ok=True)
        tempfile.NamedTemporaryFile(dir=work_dir, prefix=".qsm-bids-write-test-").close()
    except OSError as exc:
        raise OutputError(f"{work_dir}: cannot create or write the work folder ({exc.strerror}); pass "
                          "--work-dir (or set TMPDIR) to a writable folder") from None
    return bids_dir, output_dir, work_dir


def _remove_console_handler() -> None:
    """Take the console handler of an earlier ``main()`` call in this process off the root logger."""
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_qsm_bids_console", False):
            root.removeHandler(h)


def _setup_logging(verbose: int) -> None:
    level = logging.WARNING if verbose < 0 else logging.INFO if verbose < 2 else logging.DEBUG
    _remove_console_handler()
    root = logging.getLogger()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(message)s", "%H:%M:%S"))
    handler.setLevel(level)
    handler._qsm_bids_console = True  # noqa: SLF001 - lets repeated main() calls in tests replace it
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    for noisy in ("matplotlib", "PIL", "bids", "nibabel", "fontTools"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _apply_resources(n_cpus: int | None, mem_gb: float | None = None) -> int:
    # --n-cpus bounds ITK, BLAS/OpenMP, FFT and process pools; --mem-gb arms the memory guard
    from .resources import MemoryGuard, apply_cpu_limit, set_memory_guard

    set_memory_guard(MemoryGuard(mem_gb))
    return apply_cpu_limit(n_cpus)


def main(argv=None) -> int:
    """Entry point of ``qsm-bids`` and ``run.py``; returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except (UsageError, AnalysisLevelError) as exc:
        print(f"qsm-bids: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except SystemExit as exc:  # --help and --version
        return int(exc.code or 0)
    _setup_logging(args.verbose)
    try:
        if (args.atlas is None) != (args.atlas_labels is None):
            raise UsageError("--atlas and --atlas-labels must be given together")
        try:
            cfg = load_config(args.config, _overrides(args))
        except ConfigError as exc:
            raise UsageError(str(exc)) from None
        bids_dir, output_dir, work_base = _check_dirs(args)
        n_cpus = _apply_resources(args.n_cpus, args.mem_gb)
        from .resources import memory_guard

        with run_scratch(work_base) as work_dir, memory_guard().watch(f"the {args.analysis_level} level"):
            return _dispatch(args, cfg, bids_dir, output_dir, work_dir, n_cpus)
    except QSMBidsError as exc:
        logger.debug("exit %d", exc.exit_code, exc_info=True)
        print(f"qsm-bids: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:
        err = storage_error(exc)
        if err is None:
            raise
        logger.debug("exit %d", err.exit_code, exc_info=True)
        print(f"qsm-bids: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("qsm-bids: interrupted", file=sys.stderr)
        return 130


def _dispatch(args, cfg, bids_dir, output_dir, work_dir, n_cpus) -> int:
    """Run the analysis level; :func:`main` maps its exceptions to exit codes."""
    if args.analysis_level == "participant":
        from .participant import run_participant_level

        return run_participant_level(
            bids_dir, output_dir, cfg, participant_labels=args.participant_label,
            session_labels=args.session_label, work_dir=work_dir, n_cpus=n_cpus,
            mask_dir=args.mask_dir, validate=not args.skip_bids_validation)
    from .group.selection import analysis_name
    from .group.workflow import run_group_level

    # the study's design is the configuration's (file or defaults); another group column or
    # levels from the command line, or any selection, is a named analysis in its own folder
    design = load_config(args.config).group
    analysis = analysis_name(cfg.group.group_column, cfg.group.groups, cfg.group.restrict,
                             cfg.group.exclude, design.group_column, design.groups)

    return run_group_level(bids_dir, output_dir, cfg, participant_labels=args.participant_label,
                           work_dir=work_dir, n_cpus=n_cpus, mem_gb=args.mem_gb,
                           validate=not args.skip_bids_validation, report_only=args.report_only,
                           analysis=analysis)


def run() -> None:  # pragma: no cover - console-script shim
    sys.exit(main())
