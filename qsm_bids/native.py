"""What C/C++ libraries (ITK, ANTs, HDF5) print goes to the run's log, not the console.

ANTs and ITK write their diagnostics straight to file descriptors 1 and 2, below Python's logging:
a failed transform write prints kilobytes of HDF5/ITK dump on the user's terminal. While a step
runs, :func:`native_output_to_log` points both descriptors at a scratch file, keeps the console
log handlers writing to the real terminal, and hands what the libraries printed to the debug log
(the run's log file holds debug records; the console shows INFO and above).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile

__all__ = ["native_output_to_log"]

logger = logging.getLogger(__name__)

#: Keep at most this much of one step's native output in the log (the end holds the error).
MAX_LOGGED_CHARS = 200_000


def _console_handlers() -> list:
    return [h for h in logging.getLogger().handlers
            if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)]


def _swap_stream(handler, stream):
    """``handler.setStream(stream)``; None when its old stream is closed (it is then left alone)."""
    try:
        return handler.setStream(stream)
    except ValueError:  # flushing a closed stream
        return None


@contextlib.contextmanager
def native_output_to_log(what: str):
    """Capture descriptors 1 and 2 for the block; log what was written there as DEBUG under ``what``."""
    try:
        sink = tempfile.TemporaryFile(mode="w+b", prefix="qsm-bids-native-")
    except OSError:  # no scratch space: leave the descriptors alone (the failure is reported elsewhere)
        yield
        return
    with sink:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        saved = (os.dup(1), os.dup(2))
        terminal = os.fdopen(os.dup(saved[1]), "w", buffering=1, encoding="utf-8", errors="replace")
        swapped = []
        for handler in _console_handlers():
            old_stream = _swap_stream(handler, terminal)
            if old_stream is not None:
                swapped.append((handler, old_stream))
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(Exception):
                    stream.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            for handler, old_stream in swapped:
                _swap_stream(handler, old_stream)
            terminal.close()
            sink.seek(0)
            text = sink.read().decode("utf-8", errors="replace").strip()
            if text:
                logger.debug("%s: native libraries wrote %d characters:\n%s", what, len(text),
                             text[-MAX_LOGGED_CHARS:])
