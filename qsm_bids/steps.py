"""Named workflow steps with resume.

A step declares its inputs (files), its parameters (a JSON-able dict) and its
outputs (files). After it succeeds, a record with the fingerprints of inputs
and outputs is written under ``OUTPUT_DIR/logs/steps/``. A rerun skips the
step when every output still exists with its recorded fingerprint and the
inputs and parameters are unchanged; otherwise it runs again. Outputs are
written atomically by the step itself (see :mod:`qsm_bids.io`), and the
record is written last, so a killed run never leaves a step looking finished.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import __version__
from .io import write_json

logger = logging.getLogger(__name__)

__all__ = ["Step", "StepRunner", "fingerprint"]


def fingerprint(path) -> list | None:
    """(size, mtime_ns) of a file, or None when it does not exist."""
    try:
        st = Path(path).stat()
    except FileNotFoundError:
        return None
    return [st.st_size, st.st_mtime_ns]


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
        return True

    def run(self, step: Step) -> dict:
        """Run ``step`` unless it is current; return the info it recorded."""
        if self.is_current(step):
            logger.info("[%s] step %-12s reused (inputs and parameters unchanged)", self.prefix, step.name)
            self.reused.append(step.name)
            self.timings[step.name] = 0.0
            return json.loads(self._record_path(step).read_text()).get("info", {})
        logger.info("[%s] step %-12s started%s", self.prefix, step.name,
                    f": {step.description}" if step.description else "")
        start = time.perf_counter()
        info = step.func(step.outputs) or {}
        elapsed = time.perf_counter() - start
        self.timings[step.name] = round(elapsed, 2)
        missing = [str(p) for p in step.outputs.values() if not Path(p).exists()]
        if missing:
            raise RuntimeError(f"step {step.name} did not write {missing}")
        record = {
            "step": step.name,
            "version": __version__,
            "params_hash": _params_hash(step.params),
            "inputs": {str(p): fingerprint(p) for p in step.inputs},
            "outputs": {k: fingerprint(p) for k, p in step.outputs.items()},
            "seconds": round(elapsed, 2),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "info": info,
        }
        write_json(self._record_path(step), record)
        logger.info("[%s] step %-12s done in %.1f s", self.prefix, step.name, elapsed)
        return info
