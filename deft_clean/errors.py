"""Errors that deft-clean raises on purpose. Each message says what went wrong and what to do next.

The CLI prints ``str(error)`` as one line on stderr and exits with ``error.exit_code``.
"""

from __future__ import annotations


class DeftCleanError(Exception):
    """Base class: an expected failure with a message meant for the user."""

    exit_code: int = 1


class DataError(DeftCleanError):
    """The dataset, a table or a results file is unusable as given (exit code 1)."""

    exit_code = 1


class UsageError(DeftCleanError):
    """The command was called wrongly: a missing path, a bad option value (exit code 2)."""

    exit_code = 2


class WeightsError(DeftCleanError):
    """Model weights could not be found or loaded (exit code 1)."""

    exit_code = 1
