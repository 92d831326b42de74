"""The pytest plugin: one test item per check of the catalogue and target.

How this works
--------------
The plugin is registered through the ``pytest11`` entry point, so it is
loaded by every pytest run in an environment where the package is installed.
It does nothing unless the run names the suite itself: ``pytest --pyargs
conformance`` (or a path to the ``conformance`` package). Ordinary test runs
collect, start and add nothing.

When the suite is named:

- ``pytest_configure`` (in the xdist controller, or the only process) starts
  every target once (:func:`conformance.target.start_target`): ``--target``,
  ``--spawn`` and ``--reference`` may each be repeated, and are tested side by
  side. It stops them at the end; a target that cannot be reached ends the run
  with exit code 3. Under xdist the workers get the targets' addresses from
  the controller (``pytest_configure_node``), so a spawned server is started
  once.
- ``pytest_collect_file`` turns the package's ``__init__.py`` into a
  :class:`CatalogueFile` whose items are the selected checks (with several
  targets, one :class:`TargetNode` per target holds them, so an item's name is
  still its check's ID: the JUnit test name). Heavy checks carry
  ``xdist_group("conformance-heavy")``: under ``--dist loadgroup`` they run on
  one worker, one after the other; a file lock per target keeps them apart
  whatever the scheduler does (:func:`heavy_lock`).
- A failed MUST (or any failure under ``--conformance-strict``) fails its
  item with the bug report as the failure text. A failed SHOULD or MAY
  passes with a ``NON-STRICT`` status and its report in the summary.
- The controller's :class:`Recorder` reads every test report as it arrives
  (``pytest_runtest_logreport``: a worker's reports arrive there with their
  user properties) into one :class:`~conformance.results.RunResults`, and at
  the end writes ``--report-json`` and ``--report-html`` and, with several
  targets, prints the verdicts side by side. xdist's ``loadgroup`` appends
  ``@group`` to a grouped item's node ID; the recorder takes it off the
  controller's copy of the report, so JUnit names each test by its check ID.
"""

from __future__ import annotations

import fcntl
import functools
import os
import re
import shlex
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import conformance
from conformance.checks import Check, Setup, run_check
from conformance.errors import EXIT_UNREACHABLE, TargetError, UsageError
from conformance.oracle import load_oracle
from conformance.report_html import write_html
from conformance.report_json import write_json
from conformance.results import (
    FAIL,
    NON_STRICT,
    PASS,
    SKIPPED,
    CheckResult,
    RunResults,
    TargetRun,
    format_counts,
    format_table,
)
from conformance.selection import select_checks, split_list
from conformance.target import Address, RunningTarget, TargetSpec, start_target

__all__ = [
    "HEAVY_GROUP",
    "NONSTRICT",
    "REPORT",
    "CatalogueFile",
    "CheckItem",
    "Recorder",
    "TargetNode",
    "check_report_path",
    "heavy_lock",
    "nonstrict_report",
    "run_results",
    "target_names",
    "target_specs",
]

#: The xdist group of checks that must not run at the same time.
HEAVY_GROUP = "conformance-heavy"
#: The user property (and report category) of a SHOULD or MAY that failed.
NONSTRICT = "non-strict"
#: The user property that carries a failed check's bug report.
REPORT = "conformance_report"
#: The user properties naming a report's check and target.
CHECK_PROPERTY = "conformance_check"
TARGET_PROPERTY = "conformance_target"

_PACKAGE = Path(conformance.__file__).resolve().parent
_STATE = pytest.StashKey["_State"]()
_RUNNING = pytest.StashKey[list[dict[str, Any]]]()
_RESULTS = pytest.StashKey[RunResults]()
_WORKER_KEY = "conformance_targets"
_NAME_CHARS = re.compile(r"[^A-Za-z0-9_.:-]+")


@dataclass(frozen=True)
class _State:
    setups: dict[str, Setup]
    checks: tuple[Check, ...]
    strict: bool


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("conformance", "reactor-conformance (with --pyargs conformance)")
    group.addoption(
        "--target",
        action="append",
        metavar="HOST:PORT",
        help="Test the server listening there (repeat to test several side by side)",
    )
    group.addoption(
        "--spawn",
        action="append",
        metavar="CMD",
        help="Start CMD and test it: {port} is replaced by a free port, or CMD prints "
        "'listening on HOST:PORT' (repeatable)",
    )
    group.addoption(
        "--reference",
        action="append",
        metavar="MODEL",
        help="Test a reference server: single, pool or multi (repeatable; default: single)",
    )
    group.addoption(
        "--oracle",
        default="echo",
        metavar="SPEC",
        help="What the server should answer: echo, discard or package.module:Class "
        "(default: %(default)s)",
    )
    group.addoption(
        "--checks", metavar="ID,...", help="Run only these checks: IDs or patterns (ECHO-RESET-*)"
    )
    group.addoption("--category", metavar="NAME,...", help="Run only these categories")
    group.addoption(
        "--conformance-strict",
        action="store_true",
        help="A failed SHOULD or MAY fails its test",
    )
    group.addoption("--report-json", metavar="PATH", help="Write the JSON report to PATH")
    group.addoption(
        "--report-html", metavar="PATH", help="Write the self-contained HTML report to PATH"
    )
    group.addoption(
        "--conformance-replay",
        action="append",
        metavar="CMD",
        help="Command that reruns a check, without --checks, one per target in order "
        "(reactor-conformance run sets it)",
    )
    group.addoption(
        "--conformance-server-pid",
        action="append",
        type=int,
        metavar="PID",
        help="Process of each target (0: unknown), for the descriptor-leak check",
    )
    group.addoption(
        "--scenario",
        metavar="PATH",
        help="Property checks replay this saved scenario (JSON) instead of searching",
    )
    group.addoption(
        "--conformance-name",
        action="append",
        metavar="NAME",
        help="Name of each target in the reports, in order (default: from the target)",
    )


def scenario_file(path: str | None) -> Path | None:
    """The saved scenario at ``path``, checked; None when no path is given.

    Raises:
        UsageError: It cannot be read, or is not a scenario.
    """
    if path is None:
        return None
    from conformance.scenario import from_json

    try:
        from_json(Path(path).read_text())
    except OSError as exc:
        raise UsageError(f"cannot read scenario {path!r}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise UsageError(f"{path}: {exc}") from None
    return Path(path)


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


def target_specs(
    targets: list[str] | None, spawns: list[str] | None, references: list[str] | None
) -> list[TargetSpec]:
    """The targets named by repeated options: addresses, then commands, then models.

    Raises:
        UsageError: One of them is malformed.
    """
    specs = [TargetSpec.from_options(t, None, None) for t in targets or []]
    specs += [TargetSpec.from_options(None, s, None) for s in spawns or []]
    specs += [TargetSpec.from_options(None, None, r) for r in references or []]
    return specs or [TargetSpec.default()]


def _short_name(spec: TargetSpec) -> str:
    if spec.kind == "address":
        return spec.value
    if spec.kind == "reference":
        return f"reference-{spec.value}"
    words = shlex.split(spec.value)
    scripts = [w for w in words[1:] if not w.startswith("-") and "." in os.path.basename(w)]
    word = scripts[0] if scripts and os.path.basename(words[0]).startswith("python") else words[0]
    return Path(word).stem or "spawned"


def target_names(specs: list[TargetSpec], given: list[str] | None = None) -> list[str]:
    """A short name per target, unique in the run, safe in a pytest node ID.

    Args:
        specs: The targets.
        given: Names the user chose, one per target, or None.

    Raises:
        UsageError: ``given`` does not name every target once.
    """
    if given:
        if len(given) != len(specs):
            raise UsageError(
                f"{len(given)} --conformance-name for {len(specs)} targets: give one per target"
            )
        raw = given
    else:
        raw = [_short_name(s) for s in specs]
    names: list[str] = []
    for name in raw:
        clean = _NAME_CHARS.sub("_", name).strip("_") or "target"
        unique, n = clean, 2
        while unique in names:
            unique, n = f"{clean}-{n}", n + 1
        names.append(unique)
    return names


def _per_target(values: list[Any] | None, count: int, option: str) -> list[Any]:
    if not values:
        return [None] * count
    if len(values) != count:
        raise UsageError(f"{len(values)} {option} for {count} targets: give one per target")
    return values


def check_report_path(value: str | None, option: str) -> str | None:
    """``value``, when it can name a report file to write.

    Raises:
        UsageError: Its directory does not exist, or it is a directory.
    """
    if value is None:
        return None
    parent = Path(value).resolve().parent
    if not parent.is_dir():
        raise UsageError(f"{option} {value}: the directory {parent} does not exist")
    if Path(value).is_dir():
        raise UsageError(f"{option} {value}: a directory; give a file name")
    return value


def pytest_configure(config: pytest.Config) -> None:
    opt = config.option
    if not _names_suite(config):
        if opt.target or opt.spawn or opt.reference or opt.report_json or opt.report_html:
            raise pytest.UsageError(
                "--target, --spawn, --reference and --report-* test a server with the "
                "conformance suite: add --pyargs conformance"
            )
        return
    config.addinivalue_line("markers", "xdist_group(name): run in one xdist worker")
    from conformance import properties  # Hypothesis is imported only for the suite's runs.

    try:
        checks = tuple(select_checks(split_list(opt.checks), split_list(opt.category)))
        oracle = load_oracle(opt.oracle)
        specs = target_specs(opt.target, opt.spawn, opt.reference)
        names = target_names(specs, opt.conformance_name)
        replays = _per_target(opt.conformance_replay, len(specs), "--conformance-replay")
        pids = _per_target(opt.conformance_server_pid, len(specs), "--conformance-server-pid")
        check_report_path(opt.report_json, "--report-json")
        check_report_path(opt.report_html, "--report-html")
        properties.set_replay(scenario_file(opt.scenario))
    except UsageError as exc:
        raise pytest.UsageError(str(exc)) from None
    # Hypothesis' own option picks the size of the property checks' search too.
    profile = getattr(opt, "hypothesis_profile", None)
    if profile in properties.PROFILES:
        properties.set_profile(profile)
    workerinput: dict[str, Any] | None = getattr(config, "workerinput", None)
    if workerinput is not None:
        infos: list[dict[str, Any]] = workerinput[_WORKER_KEY]
    else:
        infos = []
        for spec, name, replay, pid in zip(specs, names, replays, pids, strict=True):
            try:
                running = start_target(spec)
            except TargetError as exc:
                pytest.exit(f"target unreachable: {exc}", returncode=EXIT_UNREACHABLE)
            config.add_cleanup(functools.partial(_stop, running))
            info = _describe(running, spec, name, replay, opt.oracle)
            info["pid"] = pid or running.pid
            infos.append(info)
        config.stash[_RUNNING] = infos
        results = RunResults(
            list(checks),
            [
                TargetRun(
                    info["name"],
                    info["kind"],
                    info["spec"],
                    f"{Address(info['host'], info['port'])}",
                    info["description"],
                    replay=info["replay"],
                )
                for info in infos
            ],
            strict=bool(opt.conformance_strict),
            oracle=opt.oracle,
        )
        config.stash[_RESULTS] = results
        config.pluginmanager.register(Recorder(config, results), "conformance-recorder")
    setups = {
        info["name"]: Setup(
            Address(info["host"], info["port"]),
            oracle,
            server_pid=info["pid"],
            replay=info["replay"],
        )
        for info in infos
    }
    config.stash[_STATE] = _State(setups, checks, bool(opt.conformance_strict))


def _describe(
    running: RunningTarget, spec: TargetSpec, name: str, replay: str | None, oracle: str
) -> dict[str, Any]:
    if replay is None:
        options = " ".join(shlex.quote(o) for o in spec.options())
        extra = f" --oracle {shlex.quote(oracle)}" if oracle != "echo" else ""
        replay = f"pytest --pyargs conformance {options}{extra}"
    return {
        "name": name,
        "kind": spec.kind,
        "spec": spec.value,
        "description": spec.describe(),
        "host": running.address.host,
        "port": running.address.port,
        "replay": replay,
    }


def _stop(running: RunningTarget) -> None:
    running.stop()


def run_results(config: pytest.Config) -> RunResults | None:
    """The results the controller gathered in this run, or None (a worker, or no suite)."""
    return config.stash.get(_RESULTS, None)


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """xdist: hand the controller's targets to each worker."""
    infos = node.config.stash.get(_RUNNING, None)
    if infos is not None:
        node.workerinput[_WORKER_KEY] = infos


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
    """The catalogue, as a pytest collector: one item per selected check and target."""

    def collect(self) -> Iterator[CheckItem | TargetNode]:
        state = self.config.stash[_STATE]
        if len(state.setups) == 1:
            (name,) = state.setups
            for check in state.checks:
                yield CheckItem.from_parent(self, name=check.id, check=check, target=name)
            return
        for name in state.setups:
            yield TargetNode.from_parent(self, name=name)


class TargetNode(pytest.Collector):
    """The checks against one target, when a run has several."""

    def collect(self) -> Iterator[CheckItem]:
        state = self.config.stash[_STATE]
        for check in state.checks:
            yield CheckItem.from_parent(self, name=check.id, check=check, target=self.name)


class CheckFailed(Exception):
    """A check failed the run; the message is its bug report."""


class CheckItem(pytest.Item):
    """One check of the catalogue, run against one target of the session."""

    def __init__(self, *, check: Check, target: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.check = check
        self.target = target
        self.user_properties.append((CHECK_PROPERTY, check.id))
        self.user_properties.append(("conformance_level", check.level.value))
        self.user_properties.append((TARGET_PROPERTY, target))
        if check.heavy:
            self.add_marker(pytest.mark.xdist_group(HEAVY_GROUP))

    def runtest(self) -> None:
        state = self.config.stash[_STATE]
        setup = state.setups[self.target]
        with heavy_lock(setup.address) if self.check.heavy else nullcontext():
            self.user_properties.append(("conformance_started", f"{time.time():.6f}"))
            outcome = run_check(self.check, setup)
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


def _skip_reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return report.longreprtext or "skipped"


class Recorder:
    """On the controller: turns each check's reports into results, and writes the reports."""

    def __init__(self, config: pytest.Config, results: RunResults) -> None:
        self.config = config
        self.results = results
        self.checks = {c.id: c for c in results.checks}
        self.written: list[tuple[str, str]] = []

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        props = dict(report.user_properties)
        check = self.checks.get(str(props.get(CHECK_PROPERTY, "")))
        if check is None:
            return
        head, sep, tail = report.nodeid.rpartition("@")
        if sep and tail and "::" not in tail:
            report.nodeid = head  # xdist's loadgroup suffix, on this copy of the report only.
        target = str(props.get(TARGET_PROPERTY, ""))
        run = self.results.target(target)
        replay = run.replay_of(check) if run is not None else ""
        if report.when == "call" and report.passed:
            nonstrict = nonstrict_report(report)
            verdict, details = (NON_STRICT, nonstrict) if nonstrict is not None else (PASS, "")
        elif report.failed:
            verdict, details = FAIL, str(props.get(REPORT, report.longreprtext))
        elif report.skipped:
            verdict, details = SKIPPED, _skip_reason(report)
        else:
            return  # A setup or teardown that passed.
        result = CheckResult(check, verdict, report.duration, details, replay)
        self.results.record(target, result)

    def pytest_sessionfinish(self) -> None:
        self.results.finished = time.time()
        opt = self.config.option
        for kind, path, write in (
            ("json", opt.report_json, write_json),
            ("html", opt.report_html, write_html),
        ):
            if path is None:
                continue
            try:
                write(self.results, path)
            except OSError as exc:
                sys.stderr.write(f"reactor-conformance: cannot write {path}: {exc.strerror}\n")
                continue
            self.written.append((kind, str(path)))

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        run = self.results
        if len(run.targets) > 1:
            terminalreporter.section("conformance verdicts per target", sep="=")
            colour = bool(getattr(terminalreporter, "hasmarkup", False))
            for line in format_table(run, colour=colour):
                terminalreporter.write_line(line)
            for target in run.targets:
                counts = format_counts(target.counts(run.checks))
                terminalreporter.write_line(f"{target.name}: {counts}")
        for kind, path in self.written:
            terminalreporter.write_line(f"conformance {kind} report: {path}")


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
