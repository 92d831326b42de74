"""The two errors that end a run before any check, each with its exit code."""

from __future__ import annotations

__all__ = [
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_REPORTS",
    "EXIT_UNREACHABLE",
    "EXIT_USAGE",
    "TargetError",
    "UsageError",
]

#: Every MUST passed (and every SHOULD under ``--strict``).
EXIT_OK = 0
#: A check failed.
EXIT_FAILED = 1
#: Bad usage: an unknown check, a malformed address, an oracle that will not load.
EXIT_USAGE = 2
#: The target cannot be reached, or never starts listening.
EXIT_UNREACHABLE = 3
#: The checks ran, but a report asked for could not be written (a full disk).
EXIT_REPORTS = 4


class UsageError(Exception):
    """The command line is wrong; the message says what and how to fix it."""


class TargetError(Exception):
    """The target cannot be reached or never starts listening; the message says why."""
