"""``qsm-bids-simulate OUT_DIR``: write the digital brain demo cohort as BIDS."""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys

from .. import __version__
from ..errors import QSMBidsError, UsageError

__all__ = ["build_parser", "main"]


def _positive_float(text):
    v = float(text)
    if not v > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return v


def _positive_int(text):
    v = int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return v


def _count(text):
    v = int(text)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return v


def _atrophy(text):
    region, sep, loss = text.partition("=")
    try:
        v = float(loss)
    except ValueError:
        v = None
    if not sep or not region or v is None or not 0 < v < 0.5:
        raise argparse.ArgumentTypeError(f"expected REGION=LOSS with 0 < LOSS < 0.5, got {text!r}")
    return region, v


def build_parser() -> argparse.ArgumentParser:
    from .subject import DEFAULT_MATRIX, DEFAULT_SNR, DEFAULT_VOXEL_SIZE

    p = argparse.ArgumentParser(
        prog="qsm-bids-simulate",
        description="Write a simulated ALS/control QSM cohort (digital brain phantom with known "
                    "susceptibility) as a BIDS dataset, with its ground truth under "
                    "OUT_DIR/derivatives/groundtruth/. Deterministic for a given --seed.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("out_dir", metavar="OUT_DIR", help="new (or empty) folder for the BIDS dataset")
    g = p.add_argument_group("cohort")
    g.add_argument("--n-patients", type=_count, default=6, help="number of ALS patients")
    g.add_argument("--n-controls", type=_count, default=6, help="number of controls")
    g.add_argument("--seed", type=int, default=0, help="random seed (same seed, identical files)")
    g.add_argument("--effect-scale", type=float, default=1.0,
                   help="multiplier of the paper's ALS-control differences (0: no group effect)")
    g.add_argument("--effects", nargs="+", default=None, metavar="REGION[:L|R]=PPM",
                   help="ALS - control differences of your choosing instead of the paper's, e.g. "
                        "putamen:L=0.03 red_nucleus:R=0.04 (no hemisphere: both); every region not named "
                        "gets none; --effect-scale still multiplies them")
    g.add_argument("--atrophy", nargs="+", default=[], metavar="REGION=LOSS", type=_atrophy,
                   help="planted atrophy in the patients: the atlas region (both hemispheres) loses the "
                        "fraction LOSS of its volume, e.g. caudate=0.1, or for a cortical region "
                        "(precentral_gyrus, pars_opercularis) of its cortical thickness (the white-matter "
                        "surface stays); true volumes in the ground truth")
    g.add_argument("--no-t1w", nargs="+", default=[], metavar="LABEL",
                   help="participant labels written without a T1w image")
    a = p.add_argument_group("GRE protocol")
    a.add_argument("--voxel-size", type=_positive_float, nargs=3, metavar="MM", default=list(DEFAULT_VOXEL_SIZE),
                   help="GRE voxel size in mm")
    a.add_argument("--matrix", type=_positive_int, nargs=3, metavar="N", default=list(DEFAULT_MATRIX),
                   help="GRE matrix")
    a.add_argument("--paper-protocol", action="store_true",
                   help="the paper's 256 x 224 x 80 matrix at 1 x 1 x 2 mm (overrides --voxel-size/--matrix)")
    a.add_argument("--echo-times", type=_positive_float, nargs="+", metavar="S", default=[0.020],
                   help="echo times in seconds")
    a.add_argument("--field-strength", type=_positive_float, default=3.0, help="B0 in tesla")
    a.add_argument("--repetition-time", type=_positive_float, default=0.028, help="TR in seconds")
    a.add_argument("--flip-angle", type=_positive_float, default=15.0, help="flip angle in degrees")
    a.add_argument("--snr", type=_positive_float, default=DEFAULT_SNR,
                   help="mean brain magnitude at the first echo over the noise SD ('inf' for no noise)")
    a.add_argument("--coils", type=_positive_int, default=1,
                   help="receive coils; > 1 writes coil-resolved data (4th dimension = coils)")
    a.add_argument("--phase-units", choices=("rad", "arbitrary"), default="rad",
                   help="phase in radians (float) or scanner integers -4096..4095")
    a.add_argument("--no-oblique", dest="oblique", action="store_false",
                   help="slab along the scanner axes instead of following the head's pitch")
    a.add_argument("--oversample", type=_positive_int, nargs=3, metavar="K", default=None,
                   help="forward-model sub-voxels per acquisition voxel (default: >= 2 per axis, sub-voxels <= 1 mm)")
    d = p.add_argument_group("DWI protocol")
    d.add_argument("--dwi", nargs="*", default=None, metavar="LABEL",
                   help="also write DWI (b=1000, 30 directions + 2 b0, 2 mm; about 25 s per subject): for "
                        "every subject, or only for the labels given")
    d.add_argument("--dwi-snr", type=_positive_float, default=None, help="b=0 SNR of the DWI (default 30)")
    d.add_argument("--dwi-fa-per-ppm", type=float, default=None,
                   help="patients' CST FA change per ppm of their CST susceptibility change (default 6; "
                        "0 plants no DTI effect)")
    r = p.add_argument_group("run")
    r.add_argument("--n-jobs", type=_positive_int, default=min(2, os.cpu_count() or 1),
                   help="subjects simulated at the same time (processes; ~1.5 GB each)")
    r.add_argument("--overwrite", action="store_true",
                   help="replace a dataset previously written by qsm-bids-simulate in OUT_DIR")
    r.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    r.add_argument("--version", action="version", version=f"qsm-bids-simulate {__version__}")
    return p


def main(argv=None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: 2 on bad usage; BIDS-App convention is 64
        return 0 if exc.code == 0 else UsageError.exit_code
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log = logging.getLogger("qsm_bids.simulate")
    try:
        from .subject import PAPER_MATRIX, PAPER_VOXEL_SIZE
        from .writer import write_cohort

        if args.n_patients + args.n_controls < 1:
            raise UsageError("--n-patients and --n-controls are both 0: nothing to simulate")
        if list(args.echo_times) != sorted(set(args.echo_times)):
            raise UsageError(f"--echo-times must increase strictly, got {args.echo_times}")
        if args.atrophy:
            from .subject import atrophy_sites

            try:
                atrophy_sites(dict(args.atrophy))
            except ValueError as exc:
                raise UsageError(f"--atrophy: {exc}") from None
        effects = None
        if args.effects is not None:
            from .cohort import parse_effects

            try:
                effects = parse_effects(args.effects)
            except ValueError as exc:
                raise UsageError(f"--effects: {exc}") from None
        voxel, matrix = (PAPER_VOXEL_SIZE, PAPER_MATRIX) if args.paper_protocol else (args.voxel_size, args.matrix)
        if not math.isfinite(args.snr):
            log.info("no noise (--snr inf)")
        write_cohort(args.out_dir, n_patients=args.n_patients, n_controls=args.n_controls, seed=args.seed,
                     voxel_size=voxel, matrix=matrix, echo_times=args.echo_times, coils=args.coils,
                     phase_units=args.phase_units, effect_scale=args.effect_scale, snr=args.snr,
                     field_strength=args.field_strength, repetition_time=args.repetition_time,
                     flip_angle=args.flip_angle, no_t1w=args.no_t1w, oblique=args.oblique,
                     oversample=args.oversample, n_jobs=args.n_jobs, overwrite=args.overwrite, dwi=False if args.dwi is None else (args.dwi or True),
                     dwi_snr=args.dwi_snr, dwi_fa_per_ppm=args.dwi_fa_per_ppm, atrophy=dict(args.atrophy), effects=effects)
    except QSMBidsError as exc:
        print(f"qsm-bids-simulate: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
