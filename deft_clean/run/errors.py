"""Errors that deft-clean raises on purpose. Each message says what went wrong and what to do next.

A message names options with :func:`option`, so that it speaks the caller's language: ``str(error)`` says
``lr`` (the keyword argument), and the CLI prints :meth:`DeftCleanError.cli_message`, which says ``--lr``.
The CLI prints that one line on stderr and exits with ``error.exit_code``.
"""

from __future__ import annotations

import logging
import re
from typing import Any

STATUS_OK = "ok"  # the status of a usable row; any other status says why the file could not be used
RESULT_WARNING = "deft_clean_result"  # set on a log record whose warning changes what the results mean


def warn_result(message: str) -> None:
    """Log a warning that changes what the results mean (flags withheld, prompts collapsed, duplicate groups
    dropped, a clean set that did not settle). The CLI shows it on stderr even with ``--quiet``, which hides
    only progress and the summary."""
    logging.getLogger("deft_clean").warning("%s", message, extra={RESULT_WARNING: True})


_MARK = "\x1f"  # brackets an option reference inside a message (an ASCII unit separator: never in real text)
_NO_VALUE = object()
_REFERENCE = re.compile(f"{_MARK}([A-Za-z_][A-Za-z0-9_]*)(?:=(.*?))?{_MARK}")


def option(name: str, value: Any = _NO_VALUE) -> str:
    """An option inside an error message, optionally with a value: ``lr`` / ``selection='deft'`` from Python,
    ``--lr`` / ``--selection deft`` on the command line."""
    return f"{_MARK}{name}{'' if value is _NO_VALUE else '=' + repr(value)}{_MARK}"


def render(message: str, *, cli: bool) -> str:
    """``message`` with its option references written for Python (``cli=False``) or the command line."""

    def word(match: re.Match[str]) -> str:
        name, value = match[1], match[2]
        if not cli:
            return name if value is None else f"{name}={value}"
        flag = "--" + name.replace("_", "-")
        if value is None or value == "True":
            return flag
        return f"{flag} {value.strip(chr(39))}"

    return _REFERENCE.sub(word, message)


class DeftCleanError(Exception):
    """Base class: an expected failure with a message meant for the user."""

    exit_code: int = 1

    def __str__(self) -> str:
        return render(super().__str__(), cli=False)

    def cli_message(self) -> str:
        """The message with options written as command-line flags."""
        return render(super().__str__(), cli=True)


class DataError(DeftCleanError):
    """The dataset, a table or a results file is unusable as given (exit code 1)."""

    exit_code = 1


class UsageError(DeftCleanError):
    """The command was called wrongly: a missing path, a bad option value (exit code 2)."""

    exit_code = 2


class WeightsError(DeftCleanError):
    """Model weights could not be found or loaded (exit code 1)."""

    exit_code = 1
