"""Exceptions a person can act on, each mapped to a BEP027 exit code.

Library code raises these; only the command line turns them into one line and an exit code.
"""

from __future__ import annotations

# BEP027 exit codes (BIDS Apps 2.0).
EXIT_SUCCESS = 0
EXIT_FAILURE = 1
EXIT_VALIDATION = 16
EXIT_UNKNOWN_LEVEL = 17
EXIT_NOTHING_SELECTED = 18
EXIT_USAGE = 64
EXIT_DATA = 65
EXIT_NO_INPUT = 66
EXIT_CANT_CREATE = 73
EXIT_IO = 74


class QNetError(Exception):
    """Base class of every error bids_qnet reports to the user."""

    exit_code = EXIT_FAILURE


class UsageError(QNetError, ValueError):
    """The command line or the settings are inconsistent."""

    exit_code = EXIT_USAGE


class BIDSValidationError(QNetError):
    """The input dataset failed BIDS validation."""

    exit_code = EXIT_VALIDATION


class NothingSelectedError(QNetError, LookupError):
    """Labels or filters selected no participant, session or file."""

    exit_code = EXIT_NOTHING_SELECTED


class MissingInputError(QNetError, FileNotFoundError):
    """A required input (dataset, channel image, weights file) is missing."""

    exit_code = EXIT_NO_INPUT


class InputDataError(QNetError, ValueError):
    """An input exists but cannot be used (corrupt, 4D, wrong grid, ...)."""

    exit_code = EXIT_DATA


class RegistrationError(QNetError, RuntimeError):
    """Registration failed or its quality check did not pass."""

    exit_code = EXIT_DATA


class OutputError(QNetError, OSError):
    """The output or work directory cannot be created or written."""

    exit_code = EXIT_CANT_CREATE


class WriteError(QNetError, OSError):
    """Writing an output failed midway (disk full, file too large, quota, I/O error)."""

    exit_code = EXIT_IO


class DataLeakageError(QNetError, RuntimeError):
    """A participant appears on both sides of a train/test split."""

    exit_code = EXIT_FAILURE


def one_line(text: object) -> str:
    """Return ``text`` on one line: line breaks and runs of white space become one space."""
    return " ".join(str(text).split())


def describe(exc: BaseException) -> str:
    """Return ``TypeName: text`` of an exception on one line, for messages that quote it.

    An exception without text gives its type name alone; a ``MemoryError`` says what it means.
    """
    text = one_line(exc)
    if isinstance(exc, MemoryError):
        return "not enough memory" + (f" ({text})" if text else "")
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
