"""--n-cpus and --mem-gb: thread limits and the memory guard (qsm_bids.resources)."""

from __future__ import annotations

import mmap
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from qsm_bids import resources
from qsm_bids.errors import QSMBidsError


def _run(code: str, env=None, timeout=120):
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_available_cpus_reads_the_slurm_allocation(monkeypatch):
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "3")
    assert resources.available_cpus() == 3
    monkeypatch.delenv("SLURM_CPUS_PER_TASK")
    assert resources.available_cpus() >= 1


def test_pool_size_is_bounded_by_cpus_and_tasks():
    assert resources.pool_size(10, n_cpus=2) == 2
    assert resources.pool_size(1, n_cpus=8) == 1
    assert resources.pool_size(0, n_cpus=4) == 1


def test_apply_cpu_limit_sets_every_pool():
    # in a child process: the limits are global to the interpreter
    out = _run("""
        import json, numpy, scipy.linalg
        from qsm_bids import resources
        resources.apply_cpu_limit(1)
        print(json.dumps(resources.cpu_limits()))
    """)
    assert out.returncode == 0, out.stderr
    import json

    limits = json.loads(out.stdout.strip().splitlines()[-1])
    assert limits["n_cpus"] == 1 and limits["fft_workers"] == 1 and limits["itk_threads"] == "1"
    assert limits["blas"], "numpy's BLAS should be visible to threadpoolctl"
    assert all(b["num_threads"] == 1 for b in limits["blas"])


def test_one_cpu_means_cpu_time_at_most_wall_time():
    """GEMMs and FFTs under --n-cpus 1: CPU time / wall time about 1, never several cores."""
    out = _run("""
        import os, resource, time
        import numpy as np
        from qsm_bids import resources
        resources.apply_cpu_limit(1)
        from qsm_bids.recon import fft
        a = np.random.default_rng(0).standard_normal((600, 600)).astype(np.float32)
        v = np.random.default_rng(1).standard_normal((64, 64, 64)).astype(np.complex64)
        r0 = resource.getrusage(resource.RUSAGE_SELF); w0 = time.perf_counter()
        for _ in range(12):
            a @ a
            fft.ifftn(fft.fftn(v))
        r1 = resource.getrusage(resource.RUSAGE_SELF); w1 = time.perf_counter()
        cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
        print(cpu / (w1 - w0))
    """)
    assert out.returncode == 0, out.stderr
    ratio = float(out.stdout.strip().splitlines()[-1])
    # one thread cannot use more CPU than wall time (a little slack for the interpreter's own threads)
    assert ratio < 1.2, f"CPU time / wall time {ratio:.2f} under a 1-CPU limit"


def test_require_names_the_step_and_the_limit():
    # The limit sits 0.5 GB above what this worker already holds (other tests ran in it before).
    limit_gb = round(resources.process_memory_bytes() / 1e9 + 0.5, 1)
    guard = resources.MemoryGuard(limit_gb)
    guard.require(1e6, "small step")  # fits
    with pytest.raises(resources.MemoryLimitError) as info:
        guard.require(4e9, "voxelwise: subjects x voxels matrix", fix="raise --mem-gb to 6")
    msg = str(info.value)
    assert "voxelwise: subjects x voxels matrix" in msg and f"--mem-gb {limit_gb:g}" in msg
    assert "raise --mem-gb to 6" in msg
    assert isinstance(info.value, QSMBidsError) and info.value.exit_code == 1
    # no limit: never raises
    resources.MemoryGuard(None).require(1e15, "anything")


def test_process_memory_counts_new_pages():
    # A fresh anonymous mapping, not np.ones: the allocator may hand back pages an earlier test in this
    # worker freed but kept resident, which rightly does not raise the process's memory.
    before = resources.process_memory_bytes(children=False)
    block = mmap.mmap(-1, 64 * 2**20)
    np.frombuffer(block, dtype=np.uint8)[::4096] = 1  # touch every page
    after = resources.process_memory_bytes(children=False)
    assert after - before > 40e6
    block.close()


_GROW = """
    import sys, numpy as np
    from qsm_bids import resources
    from qsm_bids.errors import QSMBidsError
    limit = resources.process_memory_bytes() / 1e9 + 0.25
    guard = resources.MemoryGuard(limit, interval_s=0.05, grace_s={grace})
    keep = []
    try:
        with guard.watch("sub-01 step dipole_inversion"):
            {body}
            print("finished without hitting the limit")
    except QSMBidsError as exc:
        print(f"qsm-bids: error: {{exc}}", file=sys.stderr)
        sys.exit(exc.exit_code)
"""


def test_watch_stops_a_growing_step_with_a_clear_message():
    body = "for _ in range(400): keep.append(np.ones(2**20)); __import__('time').sleep(0.005)"
    out = _run(_GROW.format(grace=3.0, body=body))
    assert out.returncode == 1, (out.stdout, out.stderr)
    assert "finished" not in out.stdout
    assert "sub-01 step dipole_inversion: memory in use reached" in out.stderr
    assert "more than --mem-gb" in out.stderr and "Traceback" not in out.stderr


def test_watch_ends_a_native_call_that_cannot_be_interrupted():
    # one large allocation, then a long native call: the interrupt cannot land, the grace ends it
    body = "keep.append(np.ones(int(0.5e9 / 8))); np.linalg.svd(np.ones((1200, 1200)))"
    out = _run(_GROW.format(grace=0.05, body=body))
    assert out.returncode == 1, (out.stdout, out.stderr)
    assert "finished" not in out.stdout
    assert "memory in use reached" in out.stderr
