"""Same inputs and seed give identical outputs; faults and kills leave nothing that looks finished (issue 11).

One tiny simulated cohort (3 mm, 52x60x44) and a few full participant runs, shared by the
module: an uninterrupted run (A) with two broken subjects beside a good one, a run whose scratch
folder fills up and is then rerun (B), and a run killed during registration and then rerun (C).
B and C must end identical to A, file by file.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from qsm_bids.verify import hdf5_content

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
TIMING_KEYS = {"Timings", "TimingsSeconds", "timings", "seconds", "finished"}


def _no_structural(bids) -> str:
    """A config that switches the T1w structural step off (3 min per T1w, not what these tests are about)."""
    path = Path(bids).parent / "no-structural.json"
    if not path.exists():
        path.write_text(json.dumps({"structural": {"enabled": False}}))
    return str(path)


def _cli(bids, out, *extra, env=None):
    return subprocess.run([str(BIN / "qsm-bids"), str(bids), str(out), "participant", "--registration", "fast",
                           "--n-cpus", "1", "--skip-bids-validation", "--config", _no_structural(bids),
                           *map(str, extra)],
                          capture_output=True, text=True, env=env, preexec_fn=lambda: os.umask(0o022))


def _strip(obj):
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if k not in TIMING_KEYS}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


def _differences(a: Path, b: Path, sub="sub-02") -> list:
    """Files of one subject that differ (JSON compared without wall-clock timings, HDF5 by content)."""
    files_a = sorted(p.relative_to(a) for p in (a / sub).rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(b) for p in (b / sub).rglob("*") if p.is_file())
    if files_a != files_b:
        return [f"file lists differ: {sorted(set(map(str, files_a)) ^ set(map(str, files_b)))}"]
    diffs = []
    for rel in files_a:
        pa, pb = a / rel, b / rel
        if rel.suffix == ".json":
            if _strip(json.loads(pa.read_text())) != _strip(json.loads(pb.read_text())):
                diffs.append(str(rel))
        elif rel.suffix == ".h5":
            if hdf5_content(pa) != hdf5_content(pb):
                diffs.append(str(rel))
        elif pa.read_bytes() != pb.read_bytes():
            diffs.append(str(rel))
    return diffs


def _can_mount_tmpfs(path: Path) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    if shutil.which("mount") is None or os.geteuid() != 0:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("repro")
    bids = root / "bids"
    subprocess.run([str(BIN / "qsm-bids-simulate"), str(bids), "--n-patients", "1", "--n-controls", "1",
                    "--matrix", "52", "60", "44", "--voxel-size", "3", "3", "3", "--seed", "3", "--n-jobs", "1"],
                   check=True, capture_output=True)
    # sub-03: sub-01 with a JSON syntax error in a phase sidecar; sub-04: sub-01 with a 10 mm header
    for label in ("03", "04"):
        anat = bids / f"sub-{label}" / "anat"
        anat.mkdir(parents=True)
        for f in (bids / "sub-01" / "anat").iterdir():
            shutil.copyfile(f, anat / f.name.replace("sub-01", f"sub-{label}"))
    (bids / "sub-03/anat/sub-03_echo-1_part-phase_MEGRE.json").write_text('{"EchoTime": 0.02\n "Units": "rad"}')
    for p in (bids / "sub-04/anat").glob("*_MEGRE.nii.gz"):
        img = nib.load(str(p))
        nib.Nifti1Image(np.asarray(img.dataobj), np.diag([10.0, 10.0, 10.0, 1.0])).to_filename(str(p))
    with open(bids / "participants.tsv", "a") as fh:
        fh.write("sub-03\tALS\t60\tF\tn/a\tn/a\tn/a\nsub-04\tcontrol\t61\tM\tn/a\tn/a\tn/a\n")
    out_a = root / "outA"
    run_a = _cli(bids, out_a, "--participant-label", "02", "03", "04", "-w", root / "workA")
    return {"root": root, "bids": bids, "outA": out_a, "runA": run_a}


def test_bad_subjects_fail_alone_with_one_line_each(cohort):
    run = cohort["runA"]
    assert run.returncode == 65, run.stderr[-3000:]
    assert "Traceback" not in run.stderr
    err_lines = [ln for ln in run.stderr.splitlines() if " ERROR " in ln]
    assert any("sub-03_echo-1_part-phase_MEGRE.json" in ln and "line 2" in ln for ln in err_lines), err_lines
    assert any("sub-04_echo-1_part-mag_MEGRE.nii.gz" in ln and "10x10x10" in ln for ln in err_lines), err_lines
    out = cohort["outA"]
    assert (out / "sub-02/anat/sub-02_atlas-qsmbids_stat-median_Chimap.tsv").exists()
    assert not (out / "sub-04").exists() or not list((out / "sub-04").rglob("*Chimap*"))


def test_outputs_are_readable_by_the_group(cohort):
    """Under umask 022 every output is 0644 and every folder 0755 (colleagues can read them)."""
    out = cohort["outA"]
    for p in [out, *out.rglob("*")]:
        mode = p.stat().st_mode & 0o777
        assert mode == (0o755 if p.is_dir() else 0o644), (p, oct(mode))


def test_full_scratch_is_74_then_rerun_matches_uninterrupted(cohort):
    root = cohort["root"]
    tiny = root / "tiny-scratch"
    if not _can_mount_tmpfs(tiny):
        pytest.skip("cannot mount a 2 MB tmpfs here (needs root)")
    try:
        out = root / "outB"
        env = dict(os.environ, TMPDIR=str(tiny))
        run = _cli(cohort["bids"], out, "--participant-label", "02", "-w", tiny / "work", env=env)
        assert run.returncode == 74, run.stderr[-3000:]
        assert "Traceback" not in run.stderr and "itk::" not in run.stderr.lower()
        line = [ln for ln in run.stderr.splitlines() if "qsm-bids: error:" in ln or " ERROR " in ln]
        assert any(str(tiny) in ln and "space" in ln for ln in line), run.stderr[-3000:]
        assert len(run.stderr) < 4000  # the ITK dump went to the subject's log
        steps = out / "logs" / "steps"
        assert not any((steps / f"sub-02_{name}.json").exists() for name in ("register", "normalise"))
        assert not list(out.rglob("*_xfm.h5")) and not list(out.rglob("*_xfm.mat"))
        assert list(out.glob("logs/sub-02_participant_*.log"))
    finally:
        subprocess.run(["umount", str(tiny)], capture_output=True)
    rerun = _cli(cohort["bids"], out, "--participant-label", "02", "-w", root / "workB")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    finished_before = [name for name in ("register", "qsm") if f"step {name:<12} done" in run.stderr]
    for name in finished_before:  # what finished before the disk filled up is reused, not redone
        assert f"step {name:<12} reused" in rerun.stderr, name
    assert _differences(cohort["outA"], out) == []


def test_kill_during_registration_then_rerun_matches_uninterrupted(cohort):
    root = cohort["root"]
    out, tmpdir = root / "outC", root / "tmpC"
    tmpdir.mkdir()
    env = dict(os.environ, TMPDIR=str(tmpdir))
    cmd = [str(BIN / "qsm-bids"), str(cohort["bids"]), str(out), "participant", "--registration", "fast",
           "--n-cpus", "1", "--skip-bids-validation", "--participant-label", "02",
           "--config", _no_structural(cohort["bids"])]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=lambda: os.umask(0o022))
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None:
        logs = list(out.glob("logs/sub-02_participant_*.log"))
        if logs and "step register     started" in logs[0].read_text():  # ANTs runs in 'register'
            time.sleep(5)
            break
        time.sleep(0.5)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    assert not (out / "logs/steps/sub-02_register.json").exists()
    rerun = subprocess.run(cmd, capture_output=True, text=True, env=env, preexec_fn=lambda: os.umask(0o022))
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert not list(tmpdir.glob("qsm-bids-work-*"))  # the watcher (or the next start) removed the killed run's folder
    assert _differences(cohort["outA"], out) == []


def test_sigterm_cleans_the_scratch_folder(cohort):
    root = cohort["root"]
    out, tmpdir = root / "outD", root / "tmpD"
    tmpdir.mkdir()
    env = dict(os.environ, TMPDIR=str(tmpdir))
    proc = subprocess.Popen([str(BIN / "qsm-bids"), str(cohort["bids"]), str(out), "participant",
                             "--registration", "fast", "--n-cpus", "1", "--skip-bids-validation",
                             "--participant-label", "02"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, env=env)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not list(tmpdir.glob("qsm-bids-work-*/qsmbids-reg-*")):
        if proc.poll() is not None:
            break
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode in (-signal.SIGTERM, 128 + signal.SIGTERM), err[-2000:]
    assert "Traceback" not in err
    for _ in range(60):  # the scratch watcher notices the run has gone (it polls every second)
        if not list(tmpdir.iterdir()):
            break
        time.sleep(0.5)
    assert not list(tmpdir.iterdir())


def test_rigid_registration_is_bit_identical_across_processes(tmp_path):
    """The default seed (0) too: ANTs reads --random-seed 0 as 'seed from the clock'."""
    script = tmp_path / "rigid.py"
    script.write_text(
        "import sys\n"
        "import ants\n"
        "from qsm_bids import registration as R\n"
        "from qsm_bids.simulate.registration_subject import synthetic_subject\n"
        "import nibabel as nib\n"
        "aff, t1, _ = synthetic_subject((40, 48, 40), (4.0, 4.0, 4.0))\n"
        "aff_g, mag, _ = synthetic_subject((40, 48, 20), (4.0, 4.0, 8.0))\n"
        "fixed, moving = R.to_ants(nib.Nifti1Image(t1, aff)), R.to_ants(nib.Nifti1Image(mag, aff_g))\n"
        "reg = R._ants_rigid(fixed, moving, sys.argv[1], R.PRESETS['fast'], seed=0)\n"
        "print(open(reg['fwdtransforms'][0], 'rb').read().hex())\n")
    env = dict(os.environ, ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS="1")
    outs = [subprocess.run([sys.executable, str(script), str(tmp_path / f"r{k}_")], capture_output=True, text=True,
                           env=env, check=True).stdout.strip().splitlines()[-1] for k in range(2)]
    assert outs[0] == outs[1]
