"""Against a real SLURM (the single-node cluster of ci/slurm.sh); skipped when none is up.

    ci/slurm.sh start && .venv/bin/python -m pytest -q tests/test_slurm.py

The cluster is found through SLURM_CONF, else QSM_SLURM_DIR/slurm.conf, else
/tmp/qsm-bids-slurm/slurm.conf. ci/slurm_check.sh runs these tests and the full
job-array + group run on a simulated cohort.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "slurm"


def _slurm_env():
    conf = os.environ.get("SLURM_CONF") or str(
        Path(os.environ.get("QSM_SLURM_DIR", "/tmp/qsm-bids-slurm")) / "slurm.conf")
    if not Path(conf).is_file() or shutil.which("sbatch") is None:
        return None
    env = {**os.environ, "SLURM_CONF": conf}
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%T"], env=env, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    states = out.stdout.split()
    if out.returncode != 0 or not any(s.startswith(("idle", "mixed", "alloc")) for s in states):
        return None
    return env


ENV = _slurm_env()
pytestmark = pytest.mark.skipif(ENV is None, reason="no SLURM up (start one with ci/slurm.sh start)")


def _sbatch(args, env=None):
    out = subprocess.run(["sbatch", "--parsable", *args], env=env or ENV, capture_output=True, text=True,
                         timeout=30, check=True)
    return out.stdout.strip().split(";")[0]


def _wait(job_ids, timeout_s=600):
    """Until none of the jobs is pending or running (squeue no longer lists them)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        out = subprocess.run(["squeue", "-h", "-o", "%i %T %r", "-j", ",".join(job_ids)], env=ENV,
                             capture_output=True, text=True, timeout=30)
        lines = [ln for ln in out.stdout.splitlines() if ln.strip()]
        if not lines:
            return []
        # a dependency that can never be met stays pending forever: that is an end state too
        if all("DependencyNeverSatisfied" in ln for ln in lines):
            return lines
        time.sleep(1)
    raise TimeoutError(f"jobs {job_ids} still queued after {timeout_s} s")


def _job_state(job_id):
    out = subprocess.run(["scontrol", "-o", "show", "job", job_id], env=ENV, capture_output=True, text=True,
                         timeout=30)
    fields = dict(f.split("=", 1) for f in out.stdout.split() if "=" in f)
    return fields.get("JobState"), fields.get("ExitCode")


def test_array_records_each_tasks_exit_code_and_afterok_holds_the_group_job(tmp_path):
    """Task 1 has a subject without data (the app exits 66/18), task 2 has no row (the script exits 18);
    the exit codes are the tasks' and are recorded; the dependent group job never starts."""
    bids = tmp_path / "bids"
    bids.mkdir()
    (bids / "participants.tsv").write_text("participant_id\tgroup\tage\nsub-99\tALS\t60\n")
    (bids / "dataset_description.json").write_text('{"Name": "empty", "BIDSVersion": "1.8.0"}')
    out = tmp_path / "out"
    env = {**ENV, "QSM_BIDS": f"{sys.executable} {ROOT / 'run.py'}"}
    array = _sbatch(["--array=1-2", f"--output={tmp_path}/p_%A_%a.log", str(EXAMPLES / "participant_array.sbatch"),
                     str(bids), str(out), "--skip-bids-validation"], env)
    group = _sbatch([f"--dependency=afterok:{array}", f"--output={tmp_path}/g_%j.log",
                     str(EXAMPLES / "group.sbatch"), str(bids), str(out)], env)
    left = _wait([array, group])
    recorded = (out / "logs" / "slurm" / "sub-99_exitcode").read_text().strip()
    assert recorded in ("18", "66"), (tmp_path / f"p_{array}_1.log").read_text()
    state1, code1 = _job_state(f"{array}_1")
    state2, code2 = _job_state(f"{array}_2")
    assert state1 == "FAILED" and code1 == f"{recorded}:0"
    assert state2 == "FAILED" and code2 == "18:0"
    assert "no row 2" in (tmp_path / f"p_{array}_2.log").read_text()
    # afterok: the group job waits for ever; cancel it
    assert left and "DependencyNeverSatisfied" in left[0]
    subprocess.run(["scancel", group], env=ENV, check=True, timeout=30)
    assert not (out / "logs" / "slurm" / "group_exitcode").exists()


def test_dask_slurmcluster_permutations_equal_one_process(tmp_path):
    """dask_jobqueue.SLURMCluster: the workers are SLURM jobs; the FWE maps equal one process's."""
    pytest.importorskip("dask_jobqueue")
    from qsm_bids.group.permutation import DaskSpec, permutation_test

    from test_dask_permutation import _study

    Y, X, c, adj = _study(n_per_group=6)
    one = permutation_test(Y, X, c, adj, n_permutations=160, chunk_size=160, seed=7)
    os.environ["SLURM_CONF"] = ENV["SLURM_CONF"]
    spec = DaskSpec(jobqueue={"cluster": "SLURMCluster", "n_workers": 2, "options": {
        "cores": 1, "processes": 1, "memory": "1GB", "walltime": "00:15:00",
        "python": sys.executable, "log_directory": str(tmp_path / "dask-logs"),
        "local_directory": str(tmp_path / "dask-tmp"),
        "scheduler_options": {"dashboard_address": None}}}, timeout_s=240)
    on_slurm = permutation_test(Y, X, c, adj, n_permutations=160, chunk_size=40, seed=7, backend="dask",
                                dask=spec)
    for key in ("p_tfce", "p_tfce_neg", "p_t", "p_t_neg", "tfce"):
        np.testing.assert_array_equal(on_slurm[key], one[key], err_msg=key)
    np.testing.assert_array_equal(on_slurm["null"].max_tfce, one["null"].max_tfce)
    # the workers really were SLURM jobs: dask-jobqueue wrote their logs
    assert list((tmp_path / "dask-logs").glob("*.err")) or list((tmp_path / "dask-logs").glob("*.out"))
