"""The pytest plugin: one test item per check of the catalogue and target.

How this works
--------------
The plugin is registered through the ``pytest11`` entry point, so it is
loaded by every pytest run in an environment where the package is installed.
It does nothing unless the run names the suite itself: ``pytest --pyargs
conformance`` (or a path to the ``conformance`` package). Ordinary test runs
collect, start and add nothing.

When the suite is named:

- ``pytest_configure`` turns the options (defined once, in
  :mod:`conformance.run.options`) into a run plan, or takes the plan
  the CLI handed in (:class:`~conformance.run.session.PlannedRun`), and in the
  xdist controller (or the only process) starts a
  :class:`~conformance.run.session.Session`: it starts every target once
  (``--target``, ``--spawn`` and ``--reference`` may each be repeated, and
  are tested side by side) and stops them at the end; a target that cannot be
  reached ends the run with exit code 3. Under xdist the workers get the plan
  and the targets from the controller (``pytest_configure_node``), so a
  spawned server is started once, and die with the controller
  (:mod:`conformance.targets.lifeline`). SIGINT, SIGTERM and SIGHUP stop the run
  cleanly, even mid-check (:mod:`conformance.run.stopping`).
- ``pytest_collect_file`` turns the package's ``__init__.py`` into a
  :class:`CatalogueFile` whose items are the selected checks (with several
  targets, one :class:`TargetNode` per target holds them, so an item's name is
  still its check's ID: the JUnit test name). Heavy checks carry
  ``xdist_group("conformance-heavy")``: under ``--dist loadgroup`` they run on
  one worker, one after the other; a file lock per target keeps them apart
  whatever the scheduler does (:func:`~conformance.run.heavy_lock.heavy_lock`).
- A failed MUST (or any failure under ``--conformance-strict``) fails its
  item with the bug report as the failure text. A failed SHOULD or MAY
  passes with a ``NON-STRICT`` status and its report in the summary. The
  report itself travels as data (a user property), never as text to parse.
- The controller's :class:`Recorder` reads every test report as it arrives
  (``pytest_runtest_logreport``: a worker's reports arrive there with their
  user properties) into one :class:`~conformance.run.results.RunResults`, and at
  the end writes ``--report-json`` and ``--report-html`` (one that cannot be
  written is recorded in :attr:`~conformance.run.session.Session.unwritten`) and,
  with several targets, prints the verdicts side by side. xdist's ``loadgroup`` appends
  ``@group`` to a grouped item's node ID; the recorder takes it off the
  controller's copy of the report, so JUnit names each test by its check ID.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import pytest

from conformance.checks import Check
from conformance.errors import EXIT_UNREACHABLE, TargetError, UsageError
from conformance.reports.failure import FailureReport
from conformance.reports.html_report import write_html
from conformance.reports.json_report import write_json
from conformance.run.heavy_lock import heavy_lock
from conformance.run.plan import (
    Front,
    add_options,
    plan_from_options,
)
from conformance.run.results import (
    CheckResult,
    RunResults,
    Verdict,
    format_counts,
    format_table,
)
from conformance.run.session import PlannedRun, ReportFile, ReportKind, Session
from conformance.run.stopping import install
from conformance.targets.lifeline import die_with_parent
from conformance.targets.target import TargetKind, server_nofile_header

__all__ = [
    "CHECK_PROPERTY",
    "EVENT_PROPERTY",
    "HEAVY_GROUP",
    "NONSTRICT",
    "RESULT",
    "CatalogueFile",
    "CheckItem",
    "Recorder",
    "TARGET_PROPERTY",
    "TargetNode",
    "nonstrict_report",
    "run_session",
]

#: The xdist group of checks that must not run at the same time.
HEAVY_GROUP = "conformance-heavy"
#: The user property (and report category) of a SHOULD or MAY that failed.
NONSTRICT = "non-strict"
#: The user property that carries a check's whole result, as JSON (JUnit shows it).
RESULT = "conformance_result"
#: The JUnit test suite property of each target event (it exited, stopped answering).
EVENT_PROPERTY = "conformance_target_event"
#: The user properties naming a report's check and target.
CHECK_PROPERTY = "conformance_check"
TARGET_PROPERTY = "conformance_target"

#: The package whose ``__init__.py`` the plugin collects as the catalogue.
_PACKAGE = Path(__file__).resolve().parents[1]
_SESSION = pytest.StashKey[Session]()
_WORKER_KEY = "conformance_session"
_CONTROLLER_KEY = "conformance_controller"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("conformance", "reactor-conformance (with --pyargs conformance)")
    add_options(group.addoption, Front.PYTEST)


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


def _planned(config: pytest.Config) -> PlannedRun | None:
    for plugin in config.pluginmanager.get_plugins():
        if isinstance(plugin, PlannedRun):
            return plugin
    return None


def pytest_configure(config: pytest.Config) -> None:
    opt = config.option
    planned = _planned(config)
    if not _names_suite(config):
        if opt.target or opt.spawn or opt.reference or opt.report_json or opt.report_html:
            raise pytest.UsageError(
                "--target, --spawn, --reference and --report-* test a server with the "
                "conformance suite: add --pyargs conformance"
            )
        return
    config.addinivalue_line("markers", "xdist_group(name): run in one xdist worker")
    workerinput: dict[str, Any] | None = getattr(config, "workerinput", None)
    if workerinput is not None:
        # A controller killed outright (SIGKILL) takes its workers with it; Ctrl-C,
        # which reaches the workers too, stops their checks cleanly.
        die_with_parent(workerinput[_CONTROLLER_KEY])
        install()
        config.stash[_SESSION] = Session.for_worker(workerinput[_WORKER_KEY])
        return
    if planned is not None:
        session = planned.session
    else:
        try:
            plan = plan_from_options(
                opt, Front.PYTEST, hypothesis_profile=getattr(opt, "hypothesis_profile", None)
            )
        except UsageError as exc:
            raise pytest.UsageError(str(exc)) from None
        session = Session(plan)
        # A signal mid-check stops the run cleanly: the servers stopped, the reports written.
        install()
        try:
            session.start()
        except TargetError as exc:
            pytest.exit(f"target unreachable: {exc}", returncode=EXIT_UNREACHABLE)
        config.add_cleanup(session.stop)
    config.stash[_SESSION] = session
    config.pluginmanager.register(Recorder(session, config), "conformance-recorder")


def run_session(config: pytest.Config) -> Session | None:
    """The session of this run, or None (no suite)."""
    return config.stash.get(_SESSION, None)


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """xdist: hand the controller's targets to each worker."""
    session = run_session(node.config)
    if session is not None:
        node.workerinput[_WORKER_KEY] = session.to_worker()
        node.workerinput[_CONTROLLER_KEY] = os.getpid()


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    if file_path.name != "__init__.py" or file_path.resolve().parent != _PACKAGE:
        return None
    if _SESSION not in parent.config.stash:
        return None
    collector: CatalogueFile = CatalogueFile.from_parent(parent, path=file_path)
    return collector


class CatalogueFile(pytest.File):
    """The catalogue, as a pytest collector: one item per selected check and target."""

    def collect(self) -> Iterator[CheckItem | TargetNode]:
        session = self.config.stash[_SESSION]
        if len(session.targets) == 1:
            (target,) = session.targets
            for check in session.plan.checks:
                yield CheckItem.from_parent(self, name=check.id, check=check, target=target.name)
            return
        for target in session.targets:
            yield TargetNode.from_parent(self, name=target.name)


class TargetNode(pytest.Collector):
    """The checks against one target, when a run has several."""

    def collect(self) -> Iterator[CheckItem]:
        for check in self.config.stash[_SESSION].plan.checks:
            yield CheckItem.from_parent(self, name=check.id, check=check, target=self.name)


class CheckFailed(Exception):
    """A check failed the run; the message is its bug report."""


class CheckErred(Exception):
    """A check's own code failed (an ERROR verdict); the message is the error and its stack."""


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
        session = self.config.stash[_SESSION]
        setup = session.setup(self.target)
        with heavy_lock(setup.address) if self.check.heavy else nullcontext():
            self.user_properties.append(("conformance_started", f"{time.time():.6f}"))
            result = session.execute(self.target, self.check)
            self.user_properties.append(("conformance_finished", f"{time.time():.6f}"))
        self.user_properties.append((RESULT, json.dumps(result.to_data())))
        if result.verdict is Verdict.SKIPPED:
            pytest.skip(result.reason)
        if result.verdict is Verdict.ERROR:
            raise CheckErred(result.reason)
        if result.verdict is Verdict.FAIL:
            raise CheckFailed(result.details)

    def repr_failure(
        self,
        excinfo: pytest.ExceptionInfo[BaseException],
        style: Any = None,
    ) -> str | Any:
        if isinstance(excinfo.value, CheckFailed | CheckErred):
            return str(excinfo.value)
        return super().repr_failure(excinfo, style=style)

    def reportinfo(self) -> tuple[Path, int | None, str]:
        level = self.check.level.value
        return self.path, None, f"{self.check.id} [{level}] {self.check.title}"


def check_result(report: pytest.TestReport) -> CheckResult | None:
    """The result a check item attached to its report, if any."""
    for key, value in report.user_properties:
        if key == RESULT and isinstance(value, str):
            return CheckResult.from_data(json.loads(value))
    return None


def nonstrict_report(report: pytest.TestReport) -> FailureReport | None:
    """The bug report of a SHOULD or MAY that failed without failing the run, if any."""
    result = check_result(report) if report.when == "call" else None
    if result is not None and result.verdict is Verdict.NON_STRICT:
        return result.failure
    return None


class Recorder:
    """On the controller: turns each check's reports into results, and writes the reports."""

    def __init__(self, session: Session, config: pytest.Config) -> None:
        assert session.results is not None
        self.session = session
        self.config = config
        self.results: RunResults = session.results
        self.checks = {c.id: c for c in self.results.checks}
        self.written = session.written

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
        result = check_result(report)
        if result is None:
            # No result attached: not the check's doing (a setup or teardown of its
            # own, or an interruption).
            if not report.failed:
                return
            run = self.results.target(target)
            replay = run.replay_of(check) if run is not None else ""
            result = CheckResult(
                check, Verdict.ERROR, report.duration, reason=report.longreprtext, replay=replay
            )
        self.results.record(target, result)

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self) -> None:
        self.results.finished = time.time()
        self.session.gather_events()
        self._events_to_junit()
        plan = self.session.plan
        for kind, path, write in (
            (ReportKind.JSON, plan.report_json, write_json),
            (ReportKind.HTML, plan.report_html, write_html),
        ):
            if path is None:
                continue
            try:
                write(self.results, path)
            except OSError as exc:
                self.session.unwritten.append(ReportFile(kind, str(path), exc.strerror or str(exc)))
                continue
            self.written.append(ReportFile(kind, str(path)))

    def _events_to_junit(self) -> None:
        """Each target event as a property of the JUnit test suite, before it is written."""
        try:
            from _pytest.junitxml import xml_key
        except ImportError:  # pytest moved it: the events are still in each result.
            return
        xml = self.config.stash.get(xml_key, None)
        if xml is None:
            return
        for target in self.results.targets:
            for event in target.events:
                xml.add_global_property(EVENT_PROPERTY, f"{target.name}: {event.line()}")

    def pytest_report_header(self) -> list[str]:
        plan = self.session.plan
        capped = f" (--conformance-timeout {plan.timeout:g}s)" if plan.timeout else ""
        lines = [f"conformance: the run ends within at most {plan.bound():.0f}s{capped}"]
        board, targets = self.session.board, self.session.targets
        if any(t.spec.kind is not TargetKind.ADDRESS for t in targets):
            lines.append(f"conformance: {server_nofile_header(plan.server_nofile)}")
        for target in targets:
            notes = board.notes(target.name) if board is not None else ()
            lines += [f"conformance: {target.name}: {note.detail}" for note in notes]
        return lines

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
        for report in self.written:
            terminalreporter.write_line(f"conformance {report.kind.value} report: {report.path}")
        for report in self.session.unwritten:
            terminalreporter.write_line(
                f"conformance {report.kind.value} report: cannot write {report.path}: {report.why}",
                red=True,
            )


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
        failure = nonstrict_report(report)
        if failure is not None:
            terminalreporter.write_line(failure.render())
