"""The values of a run's options, each checked before anything runs.

One function per option that names a file, a directory or a number: it
returns the value the plan keeps, or raises a :class:`~conformance.errors.UsageError`
whose message is one line that names the option and what is wrong with it.
:func:`~conformance.run.plan.plan_from_options` calls them.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

from conformance.checks import CATALOGUE, Check
from conformance.errors import UsageError
from conformance.harness import DEFAULT_MAX_CONNECTIONS
from conformance.run.options import DEFAULT_TIMEOUT

__all__ = [
    "artifacts_dir",
    "check_report_path",
    "max_connections",
    "run_timeout",
    "scenario_file",
]


def check_report_path(value: str | None, option: str) -> str | None:
    """``value``, when it can name a report file to write (checked before anything runs).

    Raises:
        UsageError: Its directory does not exist, it is a directory, or it
            cannot be written.
    """
    if value is None:
        return None
    if not value.strip():
        raise UsageError(f"{option} '': give a file name")
    path = Path(value)
    parent = path.resolve().parent
    if not parent.is_dir():
        raise UsageError(f"{option} {value}: the directory {parent} does not exist")
    if path.is_dir():
        raise UsageError(f"{option} {value}: a directory; give a file name")
    existed = path.exists()
    try:
        # Opened to append, so a report that is already there is not touched now.
        with path.open("a"):
            pass
    except OSError as exc:
        raise UsageError(f"{option} {value}: cannot be written ({exc.strerror or exc})") from None
    if not existed:
        path.unlink(missing_ok=True)
    return value


def run_timeout(text: str | float | None, targets: int = 1) -> float | None:
    """The seconds of ``--timeout``: a finite number above zero, or ``none`` for no cap.

    Args:
        text: The option's value; None: not given, :data:`DEFAULT_TIMEOUT` per target.
        targets: How many targets the run has.

    Raises:
        UsageError: It is neither.
    """
    if text is None:
        return DEFAULT_TIMEOUT * max(1, targets)
    if isinstance(text, str) and text.strip().lower() == "none":
        return None
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"--timeout {text}: not a number of seconds (or none)") from None
    if not math.isfinite(value) or value <= 0:
        raise UsageError(f"--timeout {text}: give a number of seconds above 0, or none")
    return value


def max_connections(text: str | int | None) -> int | None:
    """The count of ``--max-connections``: a whole number above zero; None when not given.

    Raises:
        UsageError: It is not one.
    """
    if text is None:
        return None
    try:
        value = int(text)
    except ValueError:
        raise UsageError(
            f"--max-connections {text}: not a whole number of connections; give one "
            f"above 0, for example {DEFAULT_MAX_CONNECTIONS}"
        ) from None
    if value <= 0:
        raise UsageError(f"--max-connections {text}: give a number of connections above 0")
    return value


def _regular_or_new(path: Path) -> bool:
    """Whether ``path`` is a regular file or nothing yet (not a device such as /dev/stdout)."""
    return path.is_file() or not path.exists()


def artifacts_dir(value: str | None, report_json: str | None) -> Path | None:
    """Where a run keeps its artifacts: ``--artifacts``, else beside the JSON report.

    Beside the JSON report only where it is a file: a report written to a
    device (``/dev/stdout``) leaves the artifacts in a temporary directory.

    Returns:
        The directory (made, if it was not there), or None: the run makes a
        temporary one.

    Raises:
        UsageError: It cannot be made or written.
    """
    if value is not None:
        if not value.strip():
            raise UsageError("--artifacts '': give a directory")
        path = Path(value)
    elif report_json is not None and _regular_or_new(Path(report_json)):
        report = Path(report_json)
        path = report.with_name(f"{report.stem}-artifacts")
    else:
        return None
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"--artifacts {path}: cannot be made ({exc.strerror or exc})") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise UsageError(f"--artifacts {path}: cannot be written")
    return path.resolve()


def scenario_file(path: str | None, checks: Sequence[Check] = CATALOGUE) -> Path | None:
    """The saved scenario at ``path``, checked; None when no path is given.

    Raises:
        UsageError: It cannot be read, is not a scenario that can be replayed
            (:func:`~conformance.properties.scenario.read_saved`), or was saved from what
            is not a property check, or from one not among ``checks`` (the
            run's), so that nothing would replay it.
    """
    if path is None:
        return None
    from conformance.properties.scenario import read_saved

    try:
        saved = read_saved(Path(path).read_text())
    except OSError as exc:
        raise UsageError(f"cannot read scenario {path!r}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise UsageError(f"--scenario {path}: {exc}") from None
    if not any(c.id == saved.check and c.category == "property" for c in CATALOGUE):
        raise UsageError(
            f"--scenario {path}: saved from {saved.check!r}, which is not a property check"
        )
    if not any(c.id == saved.check for c in checks):
        raise UsageError(
            f"--scenario {path}: saved from {saved.check}, which this run does not "
            f"select, so nothing would replay it: add --checks {saved.check}"
        )
    return Path(path)
