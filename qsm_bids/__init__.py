"""qsm-bids: a BIDS App for whole-brain QSM group studies."""

from __future__ import annotations

from importlib import metadata as _metadata
from pathlib import Path as _Path


def _read_version() -> str:
    # The repository's ``version`` file is the single source; an installed
    # package reads it back through its metadata.
    here = _Path(__file__).resolve().parent.parent / "version"
    if here.is_file():
        return here.read_text().strip()
    try:
        return _metadata.version("qsm-bids")
    except _metadata.PackageNotFoundError:  # pragma: no cover - source tree without metadata
        return "0+unknown"


__version__ = _read_version()
