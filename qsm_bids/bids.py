"""Input discovery (pybids), BIDS validation, and reading the GRE inputs.

Discovery finds, per subject/session/acquisition/run, multi-echo ``MEGRE`` or
single-echo ``T2starw`` GRE stored as ``part-mag``/``part-phase`` (or
``part-real``/``part-imag``), the T1w and DWI. Everything that can be checked
without reading voxels (pairs, echo counts, echo times, headers) is checked
here, so a bad subject fails before any work with one line that names the
file and the problem.

Coil convention: BIDS has no coil entity yet, so coil-resolved data use the
same file names with a 4th dimension of coils (one file per echo and part).
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import DataError, NoInputError, NoMatchError, ValidationError

logger = logging.getLogger(__name__)

__all__ = [
    "GREEcho",
    "GRERun",
    "SubjectInputs",
    "GREData",
    "strip_prefix",
    "discover",
    "validate_dataset",
    "load_gre",
    "phase_to_radians",
    "read_participants",
]

_NII = [".nii", ".nii.gz"]
_PARTS = {"mag", "phase", "real", "imag"}


def strip_prefix(label: str, prefix: str) -> str:
    """``sub-01`` or ``01`` -> ``01``."""
    label = str(label).strip()
    return label[len(prefix) + 1:] if label.startswith(prefix + "-") else label


def with_prefix(label, prefix: str = "sub") -> str:
    """``01`` or ``sub-01`` -> ``sub-01`` (the participant_id convention of participants.tsv)."""
    label = str(label).strip()
    return label if label.startswith(prefix + "-") else f"{prefix}-{label}"


@dataclass
class GREEcho:
    """One echo: its number, time (s) and the two part files."""

    number: int
    echo_time: float
    files: dict  # part -> Path


@dataclass
class GRERun:
    """One GRE acquisition (all echoes) of a subject/session."""

    subject: str
    session: str | None
    acquisition: str | None
    run: str | None
    suffix: str
    parts: tuple  # ("mag", "phase") or ("real", "imag")
    echoes: list
    metadata: dict  # of the first echo's first part (field strength, units, B0_dir...)
    phase_metadata: dict = field(default_factory=dict)

    @property
    def entities(self) -> dict:
        """Entities copied to the derivatives."""
        return {"sub": self.subject, "ses": self.session, "acq": self.acquisition, "run": self.run}

    @property
    def label(self) -> str:
        return "_".join(f"{k}-{v}" for k, v in self.entities.items() if v)

    @property
    def echo_times(self) -> list:
        return [e.echo_time for e in self.echoes]

    def files(self) -> list:
        return [p for e in self.echoes for p in e.files.values()]


@dataclass
class SubjectInputs:
    """What discovery found for one subject/session."""

    subject: str
    session: str | None
    gre_runs: list
    t1w: Path | None
    dwi: Path | None = None
    errors: list = field(default_factory=list)  # (exit code, message) found at discovery

    @property
    def label(self) -> str:
        return f"sub-{self.subject}" + (f"_ses-{self.session}" if self.session else "")


@dataclass
class GREData:
    """GRE voxels ready for reconstruction (arrays indexed like the NIfTI grid)."""

    magnitude: np.ndarray  # float32 (x, y, z, echo[, coil])
    phase: np.ndarray  # float32 radians in [-pi, pi), same shape
    affine: np.ndarray
    voxel_size: tuple
    echo_times: list
    field_strength: float
    b0_dir: np.ndarray
    coil_resolved: bool
    notes: list = field(default_factory=list)  # what was inferred, for log and sidecar


_NOT_INDEXED = ("code", "models", "sourcedata", "stimuli", "derivatives")


def broken_sidecars(bids_dir) -> dict:
    """JSON files of the dataset that do not parse: {path: one-line message with line and column}.

    pybids indexes every sidecar at once, so one syntax error would stop every subject; these
    files are left out of the index and fail only the subject they belong to.
    """
    import os

    bids_dir = Path(bids_dir)
    broken = {}
    for folder, dirs, names in os.walk(bids_dir):
        here = Path(folder)
        top = here == bids_dir
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and not (top and d in _NOT_INDEXED))
        for name in sorted(names):
            if not name.endswith(".json") or name.startswith("."):
                continue
            path = here / name
            try:
                json.loads(path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as exc:
                broken[path] = (f"{path}: JSON syntax error at line {exc.lineno} column {exc.colno} "
                                f"({exc.msg}); fix the sidecar")
            except (OSError, UnicodeDecodeError) as exc:
                broken[path] = f"{path}: cannot read the sidecar ({exc}); fix or replace the file"
    return broken


def _layout(bids_dir: Path, ignore=()):
    import bids
    from bids.layout.index import BIDSLayoutIndexer
    from bids.layout.validation import DEFAULT_LOCATIONS_TO_IGNORE

    try:
        indexer = BIDSLayoutIndexer(validate=False,
                                    ignore=list(DEFAULT_LOCATIONS_TO_IGNORE) + [Path(p) for p in ignore])
        return bids.BIDSLayout(str(bids_dir), validate=False, derivatives=False, indexer=indexer)
    except Exception as exc:  # noqa: BLE001 - pybids raises many types for a broken dataset
        raise DataError(f"{bids_dir}: cannot index the dataset with pybids: {exc}") from None


def discover(bids_dir, participant_labels=None, session_labels=None) -> list:
    """Find the inputs of every selected subject/session.

    Raises
    ------
    NoMatchError
        A requested label matches no subject (exit 18).
    NoInputError
        The dataset has no subjects at all.
    """
    bids_dir = Path(bids_dir)
    broken = broken_sidecars(bids_dir)
    if bids_dir / "dataset_description.json" in broken:
        raise DataError(broken[bids_dir / "dataset_description.json"])
    layout = _layout(bids_dir, ignore=broken)
    subjects = sorted(layout.get_subjects())
    if not subjects:
        raise NoInputError(f"{bids_dir}: no sub-<label> folders found; is this a BIDS dataset?")
    if participant_labels:
        wanted = [strip_prefix(label, "sub") for label in participant_labels]
        missing = [w for w in wanted if w not in subjects]
        if missing:
            raise NoMatchError(
                f"--participant-label {' '.join(missing)} matches no subject in {bids_dir} "
                f"(found: {', '.join(subjects[:10])}{' ...' if len(subjects) > 10 else ''})")
        subjects = [s for s in subjects if s in wanted]
    wanted_ses = [strip_prefix(s, "ses") for s in session_labels] if session_labels else None

    found = []
    for sub in subjects:
        sessions = layout.get_sessions(subject=sub) or [None]
        if wanted_ses is not None:
            sessions = [s for s in sessions if s in wanted_ses]
        for ses in sessions:
            found.append(_discover_one(layout, bids_dir, sub, ses))
    for inputs in found:
        # a broken sidecar fails its own subject (or session); one at the top level fails everyone
        mine = [msg for path, msg in broken.items()
                if path.parent == bids_dir or _owned_by(path.relative_to(bids_dir), inputs)]
        if mine:
            inputs.errors = [(65, msg) for msg in mine]
            inputs.gre_runs = []
    if not found:
        raise NoMatchError(f"--session-label {' '.join(session_labels)} matches no session in {bids_dir}")
    return found


def _owned_by(rel: Path, inputs: SubjectInputs) -> bool:
    parts = rel.parts
    if not parts or parts[0] != f"sub-{inputs.subject}":
        return False
    return not (len(parts) > 2 and parts[1].startswith("ses-") and parts[1] != f"ses-{inputs.session}")


def _discover_one(layout, bids_dir: Path, sub: str, ses: str | None) -> SubjectInputs:
    query = {"subject": sub, "extension": _NII, "datatype": "anat"}
    if ses:
        query["session"] = ses
    else:
        query["session"] = None  # pybids: files without a session entity
    files = layout.get(suffix=["MEGRE", "T2starw"], **query)
    inputs = SubjectInputs(subject=sub, session=ses, gre_runs=[], t1w=None)
    t1w = layout.get(suffix="T1w", **query)
    if t1w:
        inputs.t1w = Path(sorted(f.path for f in t1w)[0])
        if len(t1w) > 1:
            logger.warning("sub-%s: %d T1w images; using %s", sub, len(t1w), inputs.t1w.name)
    dwi_query = dict(query, datatype="dwi")
    dwi = layout.get(suffix="dwi", **dwi_query)
    if dwi:
        inputs.dwi = Path(sorted(f.path for f in dwi)[0])

    groups: dict = {}
    metadata: dict = {}  # path -> sidecar fields, BIDS inheritance resolved by pybids
    for f in files:
        ent = f.get_entities()
        part = ent.get("part")
        if part not in _PARTS:
            inputs.errors.append((65, f"{f.path}: GRE file without a part-mag/phase/real/imag entity; "
                                      "rename it with part-<mag|phase>"))
            continue
        key = (ent.get("acquisition"), ent.get("run"), ent["suffix"])
        echo = int(ent.get("echo", 1))
        groups.setdefault(key, {}).setdefault(echo, {})[part] = Path(f.path)
        metadata[Path(f.path)] = f.get_metadata()

    if not groups and not inputs.errors:
        inputs.errors.append((66, f"{inputs.label}: no GRE images (expected anat/{inputs.label}_echo-<n>_part-"
                                  "<mag|phase>_MEGRE.nii[.gz] or _part-<mag|phase>_T2starw.nii[.gz])"))
    for (acq, run, suffix), echoes in sorted(groups.items(), key=lambda kv: str(kv[0])):
        try:
            inputs.gre_runs.append(_make_run(sub, ses, acq, run, suffix, echoes, metadata))
        except DataError as exc:
            inputs.errors.append((exc.exit_code, str(exc)))
    return inputs


def _make_run(sub, ses, acq, run, suffix, echoes: dict, metadata: dict) -> GRERun:
    parts_found = set().union(*[set(p) for p in echoes.values()])
    if parts_found & {"real", "imag"} and parts_found & {"mag", "phase"}:
        raise DataError(f"sub-{sub}: GRE mixes part-mag/phase with part-real/imag; keep one pair")
    parts = ("real", "imag") if parts_found & {"real", "imag"} else ("mag", "phase")
    run_echoes = []
    for number in sorted(echoes):
        have = echoes[number]
        for part in parts:
            if part not in have:
                other = next(iter(have.values()))
                raise DataError(f"{other}: no matching part-{part} file for echo {number}; "
                                f"each echo needs both part-{parts[0]} and part-{parts[1]}")
        te_values = []
        for part in parts:
            meta = metadata[have[part]]
            te = meta.get("EchoTime")
            if te is None:
                raise DataError(f"{have[part]}: sidecar has no EchoTime (seconds); add it to the JSON")
            if isinstance(te, list):
                raise DataError(f"{have[part]}: EchoTime is a list: echoes stacked in one file are not "
                                "supported; write one file per echo (echo-<n>) and use the 4th dimension "
                                "only for coils")
            as_text = isinstance(te, str)
            try:
                te = float(te)
            except (TypeError, ValueError):
                raise DataError(f"{have[part]}: EchoTime {te!r} is not a number (seconds)") from None
            if as_text:
                # BIDS says number; a quoted one is unambiguous, so read it and say so
                logger.warning("%s: EchoTime is the string %r, read as the number %g s; BIDS wants a JSON number",
                            have[part], meta.get("EchoTime"), te)
            if not (math.isfinite(te) and te > 0):
                raise DataError(f"{have[part]}: EchoTime {te!r} must be a positive number of seconds")
            if te > 1.0:
                raise DataError(f"{have[part]}: EchoTime {te} looks like milliseconds; BIDS uses seconds")
            te_values.append(te)
        if abs(te_values[0] - te_values[1]) > 1e-6:
            raise DataError(f"{have[parts[1]]}: EchoTime {te_values[1]} differs from its part-{parts[0]} "
                            f"file ({te_values[0]})")
        run_echoes.append(GREEcho(number=number, echo_time=te_values[0], files={p: have[p] for p in parts}))
    tes = [e.echo_time for e in run_echoes]
    if any(b <= a for a, b in zip(tes, tes[1:])):
        raise DataError(f"{run_echoes[0].files[parts[0]].parent}/sub-{sub}: echo times {tes} do not "
                        "increase with the echo number; check the echo-<n> entities and EchoTime")
    first = run_echoes[0].files[parts[0]]
    return GRERun(subject=sub, session=ses, acquisition=acq, run=run, suffix=suffix, parts=parts,
                  echoes=run_echoes, metadata=metadata[first],
                  phase_metadata=metadata[run_echoes[0].files[parts[1]]])


def validate_dataset(bids_dir, timeout_s: int = 600) -> None:
    """Run the BIDS validator (bids-validator-deno, offline); raise ValidationError on errors."""
    exe = shutil.which("bids-validator-deno")
    if exe is None:
        venv_exe = Path(__import__("sys").executable).parent / "bids-validator-deno"
        exe = str(venv_exe) if venv_exe.exists() else None
    if exe is None:
        raise ValidationError("the BIDS validator (bids-validator-deno) is not installed; install it "
                              "(pip install bids-validator-deno) or pass --skip-bids-validation")
    try:
        proc = subprocess.run([exe, "--format", "json", "--ignoreWarnings", str(bids_dir)],
                              capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise ValidationError(f"the BIDS validator took more than {timeout_s} s on {bids_dir}; "
                              "pass --skip-bids-validation to skip it") from None
    try:
        report = json.loads(proc.stdout)
    except ValueError:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise ValidationError(f"the BIDS validator failed to run on {bids_dir}: {' | '.join(tail)}") from None
    issues = report.get("issues", {}).get("issues", [])
    errors = [i for i in issues if i.get("severity") == "error"]
    if errors:
        raise ValidationError(summarise_validator_errors(errors, bids_dir))
    logger.info("BIDS validation passed (%s)", bids_dir)


def summarise_validator_errors(errors: list, bids_dir) -> str:
    """One readable block: each error code once, with a count and a few files.

    The validator reports one JSON-schema failure several times (``must be number``, ``must be
    array``, ``must match a schema in anyOf``); each file is listed once per code, with the
    keys and the first message for each key.
    """
    by_code: dict = {}
    for err in errors:
        by_code.setdefault(err.get("code", "ERROR"), []).append(err)
    lines = [f"BIDS validation of {bids_dir} failed with {len(errors)} error(s) "
             "(fix them, or pass --skip-bids-validation):"]
    for code, errs in by_code.items():
        per_file: dict = {}
        for err in errs:
            keys = per_file.setdefault(err.get("location") or "", {})
            text = (err.get("issueMessage") or err.get("rule") or "").strip().splitlines()
            keys.setdefault(err.get("subCode") or "", text[0] if text else "")
        first = next(iter(next(iter(per_file.values())).values()))
        lines.append(f"  {code} ({len(per_file)} file(s)){': ' + first if first and len(per_file) == 1 else ''}")
        for where, keys in list(per_file.items())[:3]:
            what = "; ".join(f"{key} {msg}".strip() for key, msg in keys.items() if key or msg)
            lines.append(f"      {where}" + (f": {what}" if what else ""))
        if len(per_file) > 3:
            lines.append(f"      ... and {len(per_file) - 3} more file(s)")
    return "\n".join(lines)


def phase_to_radians(phase: np.ndarray, units: str | None, path) -> tuple:
    """Phase in radians in [-pi, pi); returns (phase, note on what was done).

    ``units`` is the sidecar's ``Units`` ("rad" or "arbitrary") or None to infer
    from the value range. Integer scanner phase (e.g. Siemens -4096..4095) is
    mapped by the smallest power-of-two range that holds the data.
    """
    finite = phase[np.isfinite(phase)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    note = None
    if units is None:
        if max(abs(lo), abs(hi)) <= np.pi * 1.01:
            units = "rad"
        elif finite.size and np.all(finite == np.round(finite)):
            units = "arbitrary"  # integer scanner phase (e.g. -4096..4095)
        else:
            # non-integer values beyond pi: degrees? scaled radians? no unit fits unambiguously
            raise DataError(f"{path}: phase has no Units and its range [{lo:.4g}, {hi:.4g}] fits no unit "
                            "unambiguously (not radians, not integer scanner phase; degrees are not "
                            "supported): add \"Units\" to the sidecar or pass --phase-units, after "
                            "converting degrees to radians")
        note = (f"{Path(path).name}: phase Units missing; inferred '{units}' from the value range "
                f"[{lo:.4g}, {hi:.4g}]")
    if units == "rad":
        if max(abs(lo), abs(hi)) > np.pi * 1.01:
            raise DataError(f"{path}: phase in radians spans [{lo:.3g}, {hi:.3g}], beyond [-pi, pi]: it "
                            "looks already unwrapped or scaled; give the wrapped phase (or Units "
                            "'arbitrary' for integer scanner phase)")
        return phase.astype(np.float32, copy=False), note
    if units != "arbitrary":
        raise DataError(f"{path}: phase Units '{units}' is not supported; use 'rad' or 'arbitrary'")
    if lo < 0:
        half = 2.0 ** math.ceil(math.log2(max(-lo, hi + 1.0, 1.0)))
        rad = phase * (np.pi / half)
        rng = f"[-{half:g}, {half - 1:g}]"
    else:
        full = 2.0 ** math.ceil(math.log2(max(hi + 1.0, 2.0)))
        rad = phase * (2.0 * np.pi / full) - np.pi
        rng = f"[0, {full - 1:g}]"
    msg = f"{Path(path).name}: integer phase {rng} rescaled to radians"
    return rad.astype(np.float32), (note + "; " + msg) if note else msg


def _load_image(path: Path):
    import nibabel as nib

    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
    except Exception as exc:  # noqa: BLE001 - nibabel/gzip/zlib raise many types on bad files
        raise DataError(f"{path}: cannot read the image ({type(exc).__name__}: {exc}); "
                        "the file is truncated or not NIfTI") from None
    return img, data


def load_gre(run: GRERun, field_strength: float | None = None, phase_units: str | None = None) -> GREData:
    """Read every echo of a GRE run into float32 arrays, checking consistency.

    ``field_strength`` and ``phase_units`` come from the configuration and
    override the sidecars when given.
    """
    from .recon.dipole import b0_direction_from_affine

    mags, phases = [], []
    ref_img = None
    notes = []
    for echo in run.echoes:
        a_path, b_path = (echo.files[p] for p in run.parts)
        a_img, a = _load_image(a_path)
        b_img, b = _load_image(b_path)
        if ref_img is None:
            ref_img = a_img
        for path, img, arr in ((a_path, a_img, a), (b_path, b_img, b)):
            if arr.ndim not in (3, 4):
                raise DataError(f"{path}: {arr.ndim}-D image; GRE must be 3-D, or 4-D with coils on the "
                                "4th dimension (one file per echo)")
            if img.shape != ref_img.shape:
                raise DataError(f"{path}: shape {img.shape} differs from {run.echoes[0].files[run.parts[0]].name} "
                                f"{ref_img.shape}")
            if not np.allclose(img.affine, ref_img.affine, atol=1e-3):
                raise DataError(f"{path}: affine differs from {run.echoes[0].files[run.parts[0]].name}; "
                                "magnitude and phase must share one grid")
            if not np.all(np.isfinite(arr)):
                raise DataError(f"{path}: contains NaN or infinite values")
            if not np.any(arr):
                raise DataError(f"{path}: all voxels are zero")
        if run.parts == ("mag", "phase"):
            units = phase_units or run.phase_metadata.get("Units")
            if units is not None and units not in ("rad", "arbitrary"):
                raise DataError(f"{b_path}: phase Units '{units}' is not supported; use 'rad' or 'arbitrary'")
            ph, note = phase_to_radians(np.asarray(b, dtype=np.float32), units, b_path)
            if note and note not in notes:
                notes.append(note)
            if np.any(np.asarray(a) < 0):
                raise DataError(f"{a_path}: magnitude has negative values; is it a phase or real image?")
            mags.append(np.asarray(a, dtype=np.float32))
            phases.append(ph)
        else:
            z = np.asarray(a, dtype=np.float32) + 1j * np.asarray(b, dtype=np.float32)
            mags.append(np.abs(z).astype(np.float32))
            phases.append(np.angle(z).astype(np.float32))
    magnitude = np.stack(mags, axis=3)
    phase = np.stack(phases, axis=3)
    coil_resolved = magnitude.ndim == 5
    if coil_resolved and magnitude.shape[4] < 2:
        magnitude, phase, coil_resolved = magnitude[..., 0], phase[..., 0], False

    b0 = field_strength if field_strength is not None else run.metadata.get("MagneticFieldStrength")
    if b0 is None:
        raise DataError(f"{run.echoes[0].files[run.parts[0]]}: sidecar has no MagneticFieldStrength; add it "
                        "(tesla) or pass --field-strength")
    try:
        b0 = float(b0)
    except (TypeError, ValueError):
        raise DataError(f"{run.echoes[0].files[run.parts[0]]}: MagneticFieldStrength {b0!r} is not a number") from None
    if not b0 > 0:
        raise DataError(f"{run.echoes[0].files[run.parts[0]]}: MagneticFieldStrength {b0} must be positive")

    affine = ref_img.affine
    if "B0_dir" in run.metadata:
        b0_dir = np.asarray(run.metadata["B0_dir"], dtype=float)
        if b0_dir.shape != (3,) or not np.linalg.norm(b0_dir) > 0:
            raise DataError(f"{run.echoes[0].files[run.parts[0]]}: B0_dir must be 3 numbers")
        b0_dir = b0_dir / np.linalg.norm(b0_dir)
        notes.append("B0 direction from the B0_dir sidecar key")
    else:
        b0_dir = b0_direction_from_affine(affine)
    voxel_size = tuple(float(v) for v in ref_img.header.get_zooms()[:3])
    return GREData(magnitude=magnitude, phase=phase, affine=affine, voxel_size=voxel_size,
                   echo_times=run.echo_times, field_strength=b0, b0_dir=b0_dir,
                   coil_resolved=coil_resolved, notes=notes)


def check_tsv_columns(path) -> None:
    """Raise DataError naming the first line whose number of tab-separated fields differs from the header's.

    A tab typed inside a value shifts every later field, which pandas would report as a confusing
    tokenising error or, worse, as duplicated or misplaced values.
    """
    try:
        lines = Path(path).read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read the table ({exc}); it must be UTF-8 text") from None
    if not lines:
        raise DataError(f"{path}: the table is empty; it needs a header line")
    n_header = len(lines[0].split("\t"))
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        n = len(line.split("\t"))
        if n != n_header:
            raise DataError(f"{path}: line {number} has {n} columns but the header has {n_header}; a value "
                            "holds a tab or a field is missing (write n/a for a missing value)")


def read_participants(bids_dir):
    """participants.tsv as a DataFrame with ``participant_id`` stripped of ``sub-``."""
    import pandas as pd

    path = Path(bids_dir) / "participants.tsv"
    if not path.exists():
        raise NoInputError(f"{path}: not found; the group level needs participants.tsv with "
                           "participant_id and the group column")
    check_tsv_columns(path)
    try:
        frame = pd.read_csv(path, sep="\t", na_values=["n/a", "N/A", ""], keep_default_na=False,
                            dtype={"participant_id": str})
    except Exception as exc:  # noqa: BLE001
        raise DataError(f"{path}: cannot read as TSV ({exc})") from None
    if "participant_id" not in frame.columns:
        raise DataError(f"{path}: no participant_id column")
    frame["participant_id"] = frame["participant_id"].map(lambda s: strip_prefix(s, "sub"))
    if frame["participant_id"].duplicated().any():
        dup = frame.loc[frame["participant_id"].duplicated(), "participant_id"].tolist()
        raise DataError(f"{path}: duplicated participant_id {dup}")
    return frame
