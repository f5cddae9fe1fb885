"""The run's scratch folder: one per process, removed on exit, on signals and after kills.

``<base>/qsm-bids-work-<uid>-<host>-<pid>`` (base: ``--work-dir`` or ``$TMPDIR``). It is removed
when the run ends; a small watcher process removes it when the run dies any other way (SIGTERM,
SIGKILL, out of memory); and folders left by processes of this host that no longer exist are
removed at the next start (a reboot, a killed watcher).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

logger = logging.getLogger(__name__)

__all__ = ["run_scratch", "remove_stale"]

_PREFIX = "qsm-bids-work-"

# Polls the run's pid; when it is gone, removes the folder (runs with only the standard library).
_WATCHER = (
    "import os, shutil, sys, time\n"
    "pid, folder = int(sys.argv[1]), sys.argv[2]\n"
    "while True:\n"
    "    try:\n"
    "        os.kill(pid, 0)\n"
    "    except ProcessLookupError:\n"
    "        break\n"
    "    except PermissionError:\n"
    "        pass\n"
    "    if os.getppid() != pid:\n"
    "        break\n"
    "    time.sleep(1.0)\n"
    "shutil.rmtree(folder, ignore_errors=True)\n"
)


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname()) or "host"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale(base: Path) -> list:
    """Remove this user's scratch folders in ``base`` whose process (on this host) has ended."""
    removed = []
    pattern = re.compile(rf"^{re.escape(_PREFIX)}{os.getuid()}-{re.escape(_host())}-(\d+)$")
    with contextlib.suppress(OSError):
        for entry in Path(base).iterdir():
            m = pattern.match(entry.name)
            if m and entry.is_dir() and int(m.group(1)) != os.getpid() and not _alive(int(m.group(1))):
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(entry)
    if removed:
        logger.info("removed %d scratch folder(s) of ended runs in %s", len(removed), base)
    return removed


@contextlib.contextmanager
def run_scratch(base):
    """Create this run's scratch folder under ``base``; yield it; remove it however the run ends."""
    base = Path(base)
    remove_stale(base)
    folder = base / f"{_PREFIX}{os.getuid()}-{_host()}-{os.getpid()}"
    folder.mkdir(parents=True, exist_ok=True)
    watcher = None
    with contextlib.suppress(OSError):
        watcher = subprocess.Popen([sys.executable, "-c", _WATCHER, str(os.getpid()), str(folder)],
                                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        if watcher is not None:
            with contextlib.suppress(OSError):
                watcher.kill()
                watcher.wait(timeout=5)
