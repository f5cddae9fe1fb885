"""Named workflow steps with resume.

A step declares its inputs (files), its parameters (a JSON-able dict) and its
outputs (files). After it succeeds, a record with the fingerprints of inputs
and outputs is written under ``OUTPUT_DIR/logs/steps/``. A rerun skips the
step when every output still exists with its recorded fingerprint and the
inputs and parameters are unchanged; otherwise it runs again. Outputs are
written atomically by the step itself (see :mod:`qsm_bids.io`), and the
record is written last, so a killed run never leaves a step looking finished.

Before a record is written every output is read back completely
(:func:`qsm_bids.verify.verify_output`) and the step's own post-condition
(``Step.check``) is run; a record is reused only while its outputs still
verify and hash to the recorded content. A step that fails either has its
outputs removed, so nothing unverified looks finished to a later level.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import __version__
from .errors import TemporaryError
from .io import sidecar_of, write_json
from .native import native_output_to_log
from .resources import memory_guard
from .verify import verify_output

logger = logging.getLogger(__name__)

__all__ = ["Step", "StepRunner", "fingerprint", "subject_lock", "subject_lock_path"]


def fingerprint(path) -> list | None:
    """(size, mtime_ns) of a file, or None when it does not exist."""
    try:
        st = Path(path).stat()
    except FileNotFoundError:
        return None
    return [st.st_size, st.st_mtime_ns]


def _content_hash(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def subject_lock_path(output_dir, label: str) -> Path:
    """The lock file that keeps two jobs off one subject in one OUTPUT_DIR."""
    return Path(output_dir) / "logs" / "steps" / f"{label}.lock"


@contextlib.contextmanager
def subject_lock(output_dir, label: str):
    """Hold the subject's lock; another job holding it is a temporary failure (exit 75)."""
    import fcntl

    path = subject_lock_path(output_dir, label)
    path.parent.mkdir(parents=True, exist_ok=True)
    fh = open(path, "a+")
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            raise TemporaryError(f"{label}: another qsm-bids job ({holder}) is processing it in "
                                 f"{Path(output_dir)}; retry when it has finished") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()}")
        fh.flush()
        yield path
    finally:
        fh.close()


def _params_hash(params: dict) -> str:
    blob = json.dumps(params, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


@dataclass
class Step:
    """A unit of work with declared inputs, parameters and outputs."""

    name: str
    inputs: list
    params: dict
    outputs: dict  # key -> Path
    func: object  # callable(outputs: dict) -> dict | None (extra info for the record)
    description: str = ""
    check: object = None  # callable(outputs: dict) -> None, raises when a post-condition fails


@dataclass
class StepRunner:
    """Runs steps for one subject (or the group), recording what was done."""

    record_dir: Path
    prefix: str
    timings: dict = field(default_factory=dict)
    reused: list = field(default_factory=list)

    def _record_path(self, step: Step) -> Path:
        return Path(self.record_dir) / f"{self.prefix}_{step.name}.json"

    def is_current(self, step: Step) -> bool:
        """True when the step's record matches its inputs, parameters and outputs."""
        path = self._record_path(step)
        if not path.exists():
            return False
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            return False
        if record.get("params_hash") != _params_hash(step.params):
            return False
        if record.get("version") != __version__:
            return False
        inputs_now = {str(p): fingerprint(p) for p in step.inputs}
        if record.get("inputs") != inputs_now:
            return False
        for key, out in step.outputs.items():
            if record.get("outputs", {}).get(key) != fingerprint(out) or fingerprint(out) is None:
                return False
        try:
            for key, out in step.outputs.items():
                verify_output(out)
                if record.get("sha256", {}).get(key) != _content_hash(out):
                    logger.warning("[%s] step %s: %s changed since it was recorded; running the step again",
                                   self.prefix, step.name, out)
                    return False
            if step.check is not None:
                step.check(step.outputs)
        except Exception as exc:  # noqa: BLE001 - any failure to verify means "run it again"
            logger.warning("[%s] step %s: recorded output no longer verifies (%s); running the step again",
                           self.prefix, step.name, exc)
            return False
        return True

    def _discard(self, step: Step) -> None:
        """Remove a failed step's outputs so nothing unverified looks finished."""
        for out in step.outputs.values():
            side = sidecar_of(out)
            for path in {Path(out), side} if side != Path(out) else {Path(out)}:
                with contextlib.suppress(OSError):
                    path.unlink()

    def run(self, step: Step) -> dict:
        """Run ``step`` unless it is current; return the info it recorded."""
        if self.is_current(step):
            logger.info("[%s] step %-12s reused (inputs and parameters unchanged)", self.prefix, step.name)
            self.reused.append(step.name)
            self.timings[step.name] = 0.0
            return json.loads(self._record_path(step).read_text()).get("info", {})
        logger.info("[%s] step %-12s started%s", self.prefix, step.name,
                    f": {step.description}" if step.description else "")
        with contextlib.suppress(FileNotFoundError):
            self._record_path(step).unlink()  # a stale record must not outlive outputs being rewritten
        start = time.perf_counter()
        try:
            with memory_guard().step(f"[{self.prefix}] step {step.name}"), \
                    native_output_to_log(f"[{self.prefix}] step {step.name}"):
                info = step.func(step.outputs) or {}
            for out in step.outputs.values():
                verify_output(out)
            if step.check is not None:
                step.check(step.outputs)
        except BaseException:
            self._discard(step)
            raise
        elapsed = time.perf_counter() - start
        self.timings[step.name] = round(elapsed, 2)
        record = {
            "step": step.name,
            "version": __version__,
            "params_hash": _params_hash(step.params),
            "inputs": {str(p): fingerprint(p) for p in step.inputs},
            "outputs": {k: fingerprint(p) for k, p in step.outputs.items()},
            "sha256": {k: _content_hash(p) for k, p in step.outputs.items()},
            "seconds": round(elapsed, 2),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "info": info,
        }
        write_json(self._record_path(step), record)
        logger.info("[%s] step %-12s done in %.1f s", self.prefix, step.name, elapsed)
        return info
