"""Faults and bad inputs (issue 11): each case the right exit code and one line naming the file and the fix.

Written against the command line (return codes and stderr) so they hold across refactors. The
participant runs here stop before any registration (they fail at discovery, loading or the
geometry check), so the module stays fast; full runs live in tests/test_reproducible.py.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from qsm_bids.cli import main

from conftest import make_gre_subject

BIN = Path(sys.executable).parent


def _participant(bids, out, *extra):
    return main([str(bids), str(out), "participant", "--skip-bids-validation", *extra])


def _group(bids, out, *extra):
    return main([str(bids), str(out), "group", *extra])


def _one_error_line(err: str) -> str:
    """The one line that says what went wrong (a run-level error, or the failing subject's line)."""
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if "qsm-bids: error:" in ln
             or (" ERROR " in ln and "finished with" not in ln)]
    assert len(lines) == 1, err
    return lines[0]


# --- exit codes of the execution specification ---------------------------------------------------

def test_unknown_analysis_level_is_17(tiny_bids, tmp_path, capsys):
    assert main([str(tiny_bids), str(tmp_path / "out"), "sessionlevel"]) == 17
    line = _one_error_line(capsys.readouterr().err)
    assert "sessionlevel" in line and "participant" in line and "group" in line


def test_exit_codes_exist():
    from qsm_bids import errors

    codes = {cls.exit_code for cls in vars(errors).values()
             if isinstance(cls, type) and issubclass(cls, errors.QSMBidsError)}
    assert {1, 16, 17, 18, 64, 65, 66, 73, 74, 75} <= codes


def test_storage_errors_map_to_74(tmp_path):
    """A real ENOSPC (writing to /dev/full) becomes exit 74 with the folder named."""
    from qsm_bids.errors import StorageError
    from qsm_bids.verify import storage_error

    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full")
    try:
        with open("/dev/full", "wb") as fh:
            fh.write(b"x" * 65536)
            fh.flush()
    except OSError as exc:
        err = storage_error(exc, tmp_path)
    assert isinstance(err, StorageError) and err.exit_code == 74
    assert str(tmp_path) in str(err) and "space" in str(err)
    assert storage_error(OSError(errno.EINVAL, "x"), tmp_path) is None


# --- defect 1: implausible geometry ----------------------------------------------------------------

def _rescale_affine(anat: Path, voxel_mm: float):
    for p in anat.glob("*_MEGRE.nii.gz"):
        img = nib.load(str(p))
        nib.Nifti1Image(np.asarray(img.dataobj), np.diag([voxel_mm] * 3 + [1.0])).to_filename(str(p))


def test_ten_mm_voxels_are_65_before_reconstruction(tmp_path, capsys):
    root = tmp_path / "b"
    anat = make_gre_subject(root, "01", shape=(24, 24, 20))
    _rescale_affine(anat, 10.0)
    out = tmp_path / "out"
    assert _participant(root, out) == 65
    line = _one_error_line(capsys.readouterr().err)
    assert "sub-01_echo-1_part-mag_MEGRE.nii.gz" in line
    assert "10x10x10" in line and "voxel" in line
    assert not list(out.rglob("*Chimap*")) and not list(out.rglob("*fieldmap*"))
    assert not list((out / "logs" / "steps").glob("*.json")) if (out / "logs" / "steps").exists() else True


def test_kernel_smaller_than_voxels_is_65(tmp_path, capsys):
    root = tmp_path / "b"
    make_gre_subject(root, "01", shape=(24, 24, 20))
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"recon": {"sharp_radius_mm": 1.0}}))
    assert _participant(root, tmp_path / "out", "--config", str(cfg)) == 65
    line = _one_error_line(capsys.readouterr().err)
    assert "sharp_radius_mm" in line and "2x2x2" in line


def test_geometry_check_is_a_pure_function():
    from qsm_bids.config import ReconConfig
    from qsm_bids.recon.pipeline import check_geometry

    check_geometry((1.0, 1.0, 2.0), (256, 224, 80), ReconConfig())
    for bad in ((10.0, 10.0, 10.0), (0.01, 1.0, 1.0), (1.0, 1.0, 8.0)):
        with pytest.raises(Exception) as info:
            check_geometry(bad, (64, 64, 40), ReconConfig())
        assert getattr(info.value, "exit_code", None) == 65


def test_postcondition_rejects_all_zero_and_nonfinite_chimap():
    from qsm_bids.recon.pipeline import check_map

    mask = np.zeros((8, 8, 8), bool)
    mask[2:6, 2:6, 2:6] = True
    good = np.where(mask, np.linspace(-0.1, 0.1, 512).reshape(8, 8, 8), 0).astype(np.float32)
    check_map(good, mask, "Chimap", 10.0)
    for bad in (np.zeros_like(good), np.where(mask, np.nan, 0), good * 1e4):
        with pytest.raises(Exception) as info:
            check_map(bad, mask, "Chimap", 10.0)
        assert getattr(info.value, "exit_code", None) == 65


# --- defect 3 mechanism: steps verify their outputs --------------------------------------------------

def _truncated_nifti(path: Path):
    nib.Nifti1Image(np.ones((20, 20, 20), np.float32), np.eye(4)).to_filename(str(path))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_step_with_truncated_output_is_not_recorded(tmp_path):
    from qsm_bids.steps import Step, StepRunner

    runner = StepRunner(tmp_path / "records", "sub-x")
    target = tmp_path / "sub-x_Chimap.nii.gz"
    step = Step("qsm", [], {}, {"chi": target}, lambda out: _truncated_nifti(out["chi"]))
    with pytest.raises(Exception) as info:
        runner.run(step)
    assert "sub-x_Chimap.nii.gz" in str(info.value)
    assert not list((tmp_path / "records").glob("*.json"))
    assert not runner.is_current(step)


def test_record_reused_only_while_outputs_verify(tmp_path):
    from qsm_bids.steps import Step, StepRunner

    target = tmp_path / "sub-x_Chimap.nii.gz"

    def write(out):
        nib.Nifti1Image(np.ones((20, 20, 20), np.float32), np.eye(4)).to_filename(str(out["chi"]))

    step = Step("qsm", [], {}, {"chi": target}, write)
    runner = StepRunner(tmp_path / "records", "sub-x")
    runner.run(step)
    assert runner.is_current(step)
    # corrupt the bytes but keep size and mtime: the fingerprint alone would call it current
    st = target.stat()
    data = bytearray(target.read_bytes())
    data[len(data) // 2:] = bytes(len(data) - len(data) // 2)
    target.write_bytes(bytes(data))
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert not StepRunner(tmp_path / "records", "sub-x").is_current(step)


# --- defect 4: one broken sidecar fails only its subject -------------------------------------------

def test_broken_sidecar_fails_only_its_subject(tiny_bids, tmp_path, capsys):
    from qsm_bids.bids import discover

    side = tiny_bids / "sub-01/anat/sub-01_echo-1_part-phase_MEGRE.json"
    side.write_text('{"EchoTime": 0.015,\n "Units": "rad",,\n}')
    found = {s.subject: s for s in discover(tiny_bids)}
    assert not found["02"].errors and found["02"].gre_runs
    code, msg = found["01"].errors[0]
    assert code == 65 and "sub-01_echo-1_part-phase_MEGRE.json" in msg and "line 2" in msg
    assert discover(tiny_bids, ["02"])[0].gre_runs  # selecting the other subject is unaffected
    assert _participant(tiny_bids, tmp_path / "out", "--participant-label", "01") == 65
    line = _one_error_line(capsys.readouterr().err)
    assert "sub-01_echo-1_part-phase_MEGRE.json" in line and "column" in line


def test_broken_root_sidecar_names_the_file(tiny_bids, tmp_path, capsys):
    (tiny_bids / "part-phase_MEGRE.json").write_text("{oops")
    assert _participant(tiny_bids, tmp_path / "out", "--participant-label", "02") == 65
    line = _one_error_line(capsys.readouterr().err)
    assert "part-phase_MEGRE.json" in line and "line 1" in line


# --- smaller findings: inputs -----------------------------------------------------------------------

def test_phase_in_degrees_without_units_is_65(tmp_path, capsys):
    root = tmp_path / "b"
    anat = make_gre_subject(root, "01")
    for p in anat.glob("*part-phase_MEGRE.nii.gz"):
        img = nib.load(str(p))
        deg = np.degrees(np.asarray(img.dataobj, dtype=np.float32))
        nib.Nifti1Image(deg.astype(np.float32), img.affine).to_filename(str(p))
        side = p.with_name(p.name.replace(".nii.gz", ".json"))
        meta = json.loads(side.read_text())
        meta.pop("Units")
        side.write_text(json.dumps(meta))
    assert _participant(root, tmp_path / "out") == 65
    line = _one_error_line(capsys.readouterr().err)
    assert "part-phase_MEGRE.nii.gz" in line and "Units" in line and "--phase-units" in line


def test_integer_scanner_phase_is_still_inferred():
    from qsm_bids.bids import phase_to_radians

    raw = np.arange(-4096, 4096, 7).astype(np.float32)
    rad, note = phase_to_radians(raw, None, "p.nii.gz")
    assert "inferred 'arbitrary'" in note and np.abs(rad).max() <= np.pi


def test_echo_time_as_string_is_accepted_with_a_warning(tiny_bids, caplog):
    from qsm_bids.bids import discover

    for part in ("mag", "phase"):
        side = tiny_bids / f"sub-01/anat/sub-01_echo-1_part-{part}_MEGRE.json"
        meta = json.loads(side.read_text())
        meta["EchoTime"] = str(meta["EchoTime"])
        side.write_text(json.dumps(meta))
    with caplog.at_level("WARNING"):
        subj = discover(tiny_bids, ["01"])[0]
    assert not subj.errors and subj.gre_runs[0].echo_times[0] == pytest.approx(0.015)
    assert any("EchoTime" in r.getMessage() and "string" in r.getMessage() for r in caplog.records)


def test_validator_summary_one_entry_per_file_and_code_with_the_key():
    from qsm_bids.bids import summarise_validator_errors

    loc = "/sub-01/anat/sub-01_echo-1_part-mag_MEGRE.json"
    # the validator's own records for EchoTime "0.02" and MagneticFieldStrength "3" (bids-validator-deno)
    errors = [{"code": "JSON_SCHEMA_VALIDATION_ERROR", "subCode": key, "severity": "error", "location": loc,
               "issueMessage": f"{msg}\n\nField description: ...", "rule": "x"}
              for key, msg in (("EchoTime", "must be number"), ("EchoTime", "must be array"),
                               ("EchoTime", "must match a schema in anyOf"),
                               ("MagneticFieldStrength", "must be number"))]
    errors.append(dict(errors[0], location=loc.replace("mag", "phase")))
    text = summarise_validator_errors(errors, "/data")
    assert text.count("sub-01_echo-1_part-mag_MEGRE.json") == 1
    assert text.count("sub-01_echo-1_part-phase_MEGRE.json") == 1
    assert "EchoTime must be number" in text and "MagneticFieldStrength must be number" in text


# --- group level: participants.tsv and covariates -----------------------------------------------------

def _group_dataset(tmp_path, rows, header="participant_id\tgroup\tage\tsex"):
    root = tmp_path / "bids"
    root.mkdir()
    (root / "dataset_description.json").write_text(json.dumps({"Name": "g", "BIDSVersion": "1.10.0"}))
    (root / "participants.tsv").write_text(header + "\n" + "\n".join(rows) + "\n")
    out = tmp_path / "out"
    for r in rows:
        (out / r.split("\t")[0]).mkdir(parents=True, exist_ok=True)
    return root, out


def _cohort_rows(n=12, age=None):
    rows = []
    for i in range(1, n + 1):
        rows.append(f"sub-{i:02d}\t{'ALS' if i % 2 else 'control'}\t{50 + i}\t{'F' if i % 3 else 'M'}")
    if age is not None:
        parts = rows[2].split("\t")
        parts[2] = age
        rows[2] = "\t".join(parts)
    return rows


@pytest.mark.parametrize("n", [4, 12])
def test_non_numeric_covariate_is_65_naming_participant_column_value(tmp_path, capsys, n):
    root, out = _group_dataset(tmp_path, _cohort_rows(n, age="sixty"))
    assert _group(root, out) == 65
    line = _one_error_line(capsys.readouterr().err)
    assert "sub-03" in line and "'age'" in line and "sixty" in line and "participants.tsv" in line


def test_missing_covariate_excludes_with_a_warning_listing_them(tmp_path, capsys):
    rows = _cohort_rows(12)
    rows[2] = rows[2].replace("\t53\t", "\tn/a\t")
    rows[4] = rows[4].replace("\t55\t", "\t\t")
    root, out = _group_dataset(tmp_path, rows)
    _group(root, out)  # fails later (no participant results here); the exclusion comes first
    err = capsys.readouterr().err
    warn = [ln for ln in err.splitlines() if "WARNING" in ln and "age" in ln]
    assert any("sub-03" in ln and "sub-05" in ln for ln in warn), err


def test_categorical_covariate_declared_in_config(tmp_path):
    import pandas as pd

    from qsm_bids.errors import DataError
    from qsm_bids.group.glm import covariate_columns

    frame = pd.DataFrame({"participant_id": ["01", "02", "03", "04"], "age": ["60", "61", "sixty", "70"],
                          "sex": ["F", "M", "F", "M"], "site": [1, 2, 1, 2]})
    cols = covariate_columns(frame.assign(age=[60, 61, 62, 70]), ["age", "sex", "site"],
                             categorical=("sex", "site"))
    assert list(cols.columns) == ["age", "sex[M]", "site[2]"]
    with pytest.raises(DataError, match=r"sub-03.*'age'.*sixty"):
        covariate_columns(frame, ["age"], categorical=("sex",))


def test_tab_inside_a_value_names_the_line(tmp_path, capsys):
    rows = _cohort_rows(6)
    rows[3] = rows[3].replace("\tcontrol\t", "\tcontrol\textra\t")
    root, out = _group_dataset(tmp_path, rows)
    assert _group(root, out) == 65
    line = _one_error_line(capsys.readouterr().err)
    assert "participants.tsv" in line and "line 5" in line and "5 columns" in line and "4" in line
    assert "duplicated" not in line


def test_outputs_without_a_participants_row_are_listed(tmp_path, capsys):
    root, out = _group_dataset(tmp_path, _cohort_rows(4))
    (out / "sub-77").mkdir()
    (out / "sub-78").mkdir()
    _group(root, out)
    err = capsys.readouterr().err
    assert any("sub-77" in ln and "sub-78" in ln and "participants.tsv" in ln
               for ln in err.splitlines() if "WARNING" in ln), err


# --- scratch folders ------------------------------------------------------------------------------------

def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_scratch_of_dead_runs_is_removed_and_own_scratch_cleaned(tiny_bids, tmp_path):
    import socket

    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    stale = tmpdir / f"qsm-bids-work-{os.getuid()}-{socket.gethostname()}-{_dead_pid()}"
    (stale / "qsmbids-reg-x").mkdir(parents=True)
    (stale / "qsmbids-reg-x" / "big.nii.gz").write_bytes(b"0" * 1000)
    alive = tmpdir / f"qsm-bids-work-{os.getuid()}-{socket.gethostname()}-{os.getpid()}"
    alive.mkdir()
    env = dict(os.environ, TMPDIR=str(tmpdir))
    proc = subprocess.run([str(BIN / "qsm-bids"), str(tiny_bids), str(tmp_path / "out"), "participant",
                           "--skip-bids-validation", "--participant-label", "99"],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 18, proc.stderr
    assert not stale.exists() and alive.exists()
    assert sorted(p.name for p in tmpdir.iterdir()) == [alive.name]


def test_unwritable_work_dir_is_73(tiny_bids, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert _participant(tiny_bids, tmp_path / "out", "-w", str(blocker / "work")) == 73
    line = _one_error_line(capsys.readouterr().err)
    assert str(blocker / "work") in line


def test_one_subjects_lock_is_a_temporary_failure_75(tiny_bids, tmp_path, capsys):
    """A second job on the same subject and OUTPUT_DIR waits for nobody: 75, retry later."""
    import fcntl

    from qsm_bids.steps import subject_lock_path

    out = tmp_path / "out"
    lock = subject_lock_path(out, "sub-01")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        code = subprocess.run([str(BIN / "qsm-bids"), str(tiny_bids), str(out), "participant",
                               "--skip-bids-validation", "--participant-label", "01"],
                              capture_output=True, text=True)
    assert code.returncode == 75, code.stderr
    assert "sub-01" in code.stderr and "Traceback" not in code.stderr



# --- native library output -------------------------------------------------------------------------

def test_native_output_goes_to_the_log_not_the_console(capfd, caplog):
    """What ITK/ANTs print on descriptor 2 lands in the debug log; Python's console log still shows."""
    import logging

    from qsm_bids.native import native_output_to_log

    console = logging.StreamHandler(sys.stderr)
    console.setLevel(logging.INFO)
    logging.getLogger().addHandler(console)
    try:
        with caplog.at_level("DEBUG"), native_output_to_log("[sub-x] step normalise"):
            os.write(2, b"itk::ExceptionObject (0x1) HDF5 dump\n")
            os.write(1, b"ANTs progress line\n")
            logging.getLogger("qsm_bids.test").warning("still on the console")
    finally:
        logging.getLogger().removeHandler(console)
    captured = capfd.readouterr()
    assert "itk::" not in captured.err and "ANTs progress" not in captured.out
    assert "still on the console" in captured.err
    logged = [r.getMessage() for r in caplog.records if r.name == "qsm_bids.native"]
    assert any("[sub-x] step normalise" in m and "itk::ExceptionObject" in m and "ANTs progress" in m
               for m in logged)


def test_failed_step_removes_its_outputs_and_their_sidecars(tmp_path):
    from qsm_bids.io import write_nifti
    from qsm_bids.steps import Step, StepRunner

    target = tmp_path / "sub-x_Chimap.nii.gz"

    def write_then_fail(out):
        write_nifti(out["chi"], np.ones((4, 4, 4), np.float32), np.eye(4), sidecar={"Units": "ppm"})
        raise RuntimeError("the inversion diverged")

    with pytest.raises(RuntimeError):
        StepRunner(tmp_path / "records", "sub-x").run(Step("qsm", [], {}, {"chi": target}, write_then_fail))
    assert not target.exists() and not (tmp_path / "sub-x_Chimap.json").exists()
