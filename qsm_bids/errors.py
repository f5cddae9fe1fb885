"""Exceptions that map to the exit codes of the BIDS execution specification.

Raise these with one line that names the file and the problem (and the fix
where there is one); the command line prints the message, never a traceback.
"""

from __future__ import annotations

__all__ = [
    "QSMBidsError",
    "UsageError",
    "ValidationError",
    "NoMatchError",
    "DataError",
    "NoInputError",
    "OutputError",
    "AnalysisLevelError",
    "StorageError",
    "TemporaryError",
]


class QSMBidsError(Exception):
    """Base class; ``exit_code`` is what the app exits with."""

    exit_code = 1


class UsageError(QSMBidsError):
    """Bad command line or configuration (EX_USAGE)."""

    exit_code = 64


class ValidationError(QSMBidsError):
    """The BIDS validator reported errors."""

    exit_code = 16


class NoMatchError(QSMBidsError):
    """The participant/session filters selected no data."""

    exit_code = 18


class DataError(QSMBidsError):
    """An input file is malformed or inconsistent (EX_DATAERR)."""

    exit_code = 65


class NoInputError(QSMBidsError):
    """No usable input was found (EX_NOINPUT)."""

    exit_code = 66


class OutputError(QSMBidsError):
    """The output cannot be created (EX_CANTCREAT)."""

    exit_code = 73


class AnalysisLevelError(QSMBidsError):
    """The analysis level is not one the app offers (execution spec: 17)."""

    exit_code = 17


class StorageError(QSMBidsError):
    """Out of space, quota or an I/O error while writing (EX_IOERR)."""

    exit_code = 74


class TemporaryError(QSMBidsError):
    """A temporary failure (e.g. another job holds the subject); retrying later may succeed (EX_TEMPFAIL)."""

    exit_code = 75
