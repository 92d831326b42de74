"""The pytest plugin: one test item per check of the catalogue.

How this works
--------------
The plugin is registered through the ``pytest11`` entry point, so it is
loaded by every pytest run in an environment where the package is installed.
It does nothing unless the run names the suite itself: ``pytest --pyargs
conformance`` (or a path to the ``conformance`` package). Ordinary test runs
collect, start and add nothing.

When the suite is named:

- ``pytest_configure`` (in the xdist controller, or the only process) starts
  the target once (:func:`conformance.target.start_target`) and stops it at the
  end; a target that cannot be reached ends the run with exit code 3.
  Under xdist the workers get the target's address from the controller
  (``pytest_configure_node``), so a spawned server is started once.
- ``pytest_collect_file`` turns the package's ``__init__.py`` into a
  :class:`Catalogue` whose items are the selected checks. Heavy checks carry
  ``xdist_group("conformance-heavy")``: under ``--dist loadgroup`` they run on
  one worker, one after the other; a file lock per target keeps them apart
  whatever the scheduler does (:func:`heavy_lock`).
- A failed MUST (or any failure under ``--conformance-strict``) fails its
  item with the bug report as the failure text. A failed SHOULD or MAY
  passes with a ``NON-STRICT`` status and its report in the summary.
"""

from __future__ import annotations

import fcntl
import re
import shlex
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import conformance
from conformance.catalogue import select
from conformance.checks import Check, Setup, run_check
from conformance.errors import EXIT_UNREACHABLE, TargetError, UsageError
from conformance.oracle import load_oracle
from conformance.target import Address, RunningTarget, TargetSpec, start_target

__all__ = [
    "HEAVY_GROUP",
    "NONSTRICT",
    "REPORT",
    "CatalogueFile",
    "CheckItem",
    "heavy_lock",
    "nonstrict_report",
]

#: The xdist group of checks that must not run at the same time.
HEAVY_GROUP = "conformance-heavy"
#: The user property (and report category) of a SHOULD or MAY that failed.
NONSTRICT = "non-strict"
#: The user property that carries a failed check's bug report.
REPORT = "conformance_report"

_PACKAGE = Path(conformance.__file__).resolve().parent
_STATE = pytest.StashKey["_State"]()
_RUNNING = pytest.StashKey[dict[str, Any]]()
_WORKER_KEY = "conformance_target"


@dataclass(frozen=True)
class _State:
    setup: Setup
    checks: tuple[Check, ...]
    strict: bool


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("conformance", "reactor-conformance (with --pyargs conformance)")
    group.addoption("--target", metavar="HOST:PORT", help="Test the server listening there")
    group.addoption(
        "--spawn",
        metavar="CMD",
        help="Start CMD and test it: {port} is replaced by a free port, or CMD prints "
        "'listening on HOST:PORT'",
    )
    group.addoption(
        "--reference",
        metavar="MODEL",
        help="Test a reference server: single, pool or multi (default: single)",
    )
    group.addoption(
        "--oracle",
        default="echo",
        metavar="SPEC",
        help="What the server should answer: echo, discard or package.module:Class "
        "(default: %(default)s)",
    )
    group.addoption("--checks", metavar="ID,...", help="Run only these checks")
    group.addoption("--category", metavar="NAME,...", help="Run only these categories")
    group.addoption(
        "--conformance-strict",
        action="store_true",
        help="A failed SHOULD or MAY fails its test",
    )
    group.addoption(
        "--conformance-replay",
        metavar="CMD",
        help="Command that reruns a check, without --checks (reactor-conformance run sets it)",
    )
    group.addoption(
        "--conformance-server-pid",
        type=int,
        metavar="PID",
        help="Process of the target, for the descriptor-leak check",
    )


def _names_suite(config: pytest.Config) -> bool:
    """Whether the run's arguments name the conformance package."""
    for arg in config.args:
        head = arg.split("::", 1)[0]
        if config.option.pyargs and head.split(".", 1)[0] == "conformance":
            return True
        try:
            path = Path(head).resolve()
        except OSError:
            continue
        if path == _PACKAGE or _PACKAGE in path.parents:
            return True
    return False


def _split(text: str | None) -> list[str]:
    return [part for part in (text or "").split(",") if part.strip()]


def pytest_configure(config: pytest.Config) -> None:
    opt = config.option
    if not _names_suite(config):
        if opt.target or opt.spawn or opt.reference:
            raise pytest.UsageError(
                "--target, --spawn and --reference test a server with the conformance suite: "
                "add --pyargs conformance"
            )
        return
    config.addinivalue_line("markers", "xdist_group(name): run in one xdist worker")
    try:
        checks = tuple(select(_split(opt.checks), _split(opt.category)))
        oracle = load_oracle(opt.oracle)
        spec = TargetSpec.from_options(opt.target, opt.spawn, opt.reference)
    except UsageError as exc:
        raise pytest.UsageError(str(exc)) from None
    workerinput: dict[str, Any] | None = getattr(config, "workerinput", None)
    if workerinput is not None:
        info = workerinput[_WORKER_KEY]
    else:
        try:
            running = start_target(spec)
        except TargetError as exc:
            pytest.exit(f"target unreachable: {exc}", returncode=EXIT_UNREACHABLE)
        config.add_cleanup(lambda: _stop(running))
        info = _describe(running, spec, opt.conformance_replay, opt.oracle)
        pid = opt.conformance_server_pid or running.pid
        info["pid"] = pid
        config.stash[_RUNNING] = info
    setup = Setup(
        Address(info["host"], info["port"]),
        oracle,
        server_pid=info["pid"],
        replay=info["replay"],
    )
    config.stash[_STATE] = _State(setup, checks, bool(opt.conformance_strict))


def _describe(
    running: RunningTarget, spec: TargetSpec, replay: str | None, oracle: str
) -> dict[str, Any]:
    if replay is None:
        options = " ".join(shlex.quote(o) for o in spec.options())
        extra = f" --oracle {shlex.quote(oracle)}" if oracle != "echo" else ""
        replay = f"pytest --pyargs conformance {options}{extra}"
    return {"host": running.address.host, "port": running.address.port, "replay": replay}


def _stop(running: RunningTarget) -> None:
    running.stop()


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """xdist: hand the controller's target to each worker."""
    info = node.config.stash.get(_RUNNING, None)
    if info is not None:
        node.workerinput[_WORKER_KEY] = info


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    if file_path.name != "__init__.py" or file_path.resolve().parent != _PACKAGE:
        return None
    if _STATE not in parent.config.stash:
        return None
    collector: CatalogueFile = CatalogueFile.from_parent(parent, path=file_path)
    return collector


@contextmanager
def heavy_lock(address: Address, timeout: float = 900.0) -> Iterator[None]:
    """Hold the lock that keeps heavy checks against ``address`` from running at once.

    ``xdist_group`` already sends them to one worker, but only while xdist's
    grouping works (pytest-xdist 3.8 loses the groups under pytest 9.2); the
    lock, a ``flock`` on a file named after the target, holds across every
    process on this machine whatever the scheduler does.

    Raises:
        TimeoutError: The lock was not free within ``timeout`` seconds.
    """
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", str(address))
    path = Path(tempfile.gettempdir()) / f"reactor-conformance-heavy-{name}.lock"
    deadline = time.monotonic() + timeout
    with open(path, "a") as lock:
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise TimeoutError(
                        f"another heavy check held {path} for {timeout:g}s"
                    ) from None
                time.sleep(0.02)  # Polling a lock held by another process, bounded.
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


class CatalogueFile(pytest.File):
    """The catalogue, as a pytest collector: one item per selected check."""

    def collect(self) -> Iterator[CheckItem]:
        state = self.config.stash[_STATE]
        for check in state.checks:
            yield CheckItem.from_parent(self, name=check.id, check=check)


class CheckFailed(Exception):
    """A check failed the run; the message is its bug report."""


class CheckItem(pytest.Item):
    """One check of the catalogue, run against the target of the session."""

    def __init__(self, *, check: Check, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.check = check
        self.user_properties.append(("conformance_check", check.id))
        self.user_properties.append(("conformance_level", check.level.value))
        if check.heavy:
            self.add_marker(pytest.mark.xdist_group(HEAVY_GROUP))

    def runtest(self) -> None:
        state = self.config.stash[_STATE]
        with heavy_lock(state.setup.address) if self.check.heavy else nullcontext():
            self.user_properties.append(("conformance_started", f"{time.time():.6f}"))
            outcome = run_check(self.check, state.setup)
            self.user_properties.append(("conformance_finished", f"{time.time():.6f}"))
        if outcome.passed:
            return
        if outcome.fails_run(state.strict):
            self.user_properties.append((REPORT, outcome.report))
            raise CheckFailed(outcome.report)
        self.user_properties.append((NONSTRICT, outcome.report))

    def repr_failure(
        self,
        excinfo: pytest.ExceptionInfo[BaseException],
        style: Any = None,
    ) -> str | Any:
        if isinstance(excinfo.value, CheckFailed):
            return str(excinfo.value)
        return super().repr_failure(excinfo, style=style)

    def reportinfo(self) -> tuple[Path, int | None, str]:
        level = self.check.level.value
        return self.path, None, f"{self.check.id} [{level}] {self.check.title}"


def nonstrict_report(report: pytest.TestReport) -> str | None:
    """The report of a failed SHOULD or MAY that did not fail the run, if any."""
    for key, value in report.user_properties:
        if key == NONSTRICT:
            return str(value)
    return None


def pytest_report_teststatus(
    report: pytest.TestReport | pytest.CollectReport, config: pytest.Config
) -> tuple[str, str, str] | None:
    if (
        isinstance(report, pytest.TestReport)
        and report.when == "call"
        and report.passed
        and nonstrict_report(report) is not None
    ):
        return NONSTRICT, "N", "NON-STRICT"
    return None


def pytest_terminal_summary(terminalreporter: Any) -> None:
    reports = terminalreporter.stats.get(NONSTRICT, [])
    if not reports:
        return
    terminalreporter.section("failed SHOULD and MAY checks (non-strict)", sep="=")
    for report in reports:
        terminalreporter.write_line(nonstrict_report(report) or "")
