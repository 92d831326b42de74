"""The results of a run: every check's verdict against every target.

How this works
--------------
The pytest plugin fills a :class:`RunResults` from the test reports it sees
on the controller (the only process, or xdist's controller, where every
worker's reports arrive). Each report carries the check's ID, its target and,
for a failure, the bug report, as user properties; :meth:`RunResults.record`
turns it into a :class:`CheckResult`. The JSON and HTML reports, the plugin's
terminal summary and the CLI's summary are all rendered from this one object.

Verdicts (:class:`Verdict`): ``PASS``; ``FAIL`` (a MUST failed, or any
check under strict); ``NON-STRICT`` (a SHOULD or MAY failed, the run still
passes); ``SKIPPED`` (skipped with a reason: the target was unreachable or
had exited, the run's ``--timeout`` was spent, or the run was stopped first);
``ERROR`` (a fault in the suite's own code: the check measured nothing, and
the run fails).

A target's events (it exited during a check, was restarted, stopped
answering) are kept with its results (:attr:`TargetRun.events`).
"""

from __future__ import annotations

import enum
import platform
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from conformance.checks import Check, by_id, replay_check
from conformance.reports.failure import FailureReport
from conformance.targets.target_state import TargetEvent, TargetEventKind

__all__ = [
    "NOT_RUN",
    "CheckResult",
    "RunResults",
    "TargetRun",
    "Verdict",
    "format_counts",
    "format_table",
    "host_info",
    "paint",
    "use_colour",
]


class Verdict(enum.Enum):
    """What a check's result means for the run; the value is the word the reports show."""

    PASS = "PASS"
    FAIL = "FAIL"
    NON_STRICT = "NON-STRICT"
    SKIPPED = "SKIPPED"
    ERROR = "ERROR"

    @property
    def count_word(self) -> str:
        """The word of the summary's count: ``N passed``, ``N failed``..."""
        return _COUNT_WORDS[self]


#: The reason of a SKIPPED result whose check never ran (the run stopped first, or its
#: ``--timeout`` was spent), or the start of it; such a run is not a passing run.
NOT_RUN = "not run"

_COUNT_WORDS = {
    Verdict.PASS: "passed",
    Verdict.FAIL: "failed",
    Verdict.NON_STRICT: "non-strict",
    Verdict.SKIPPED: "skipped",
    Verdict.ERROR: "errors",
}
_COLOURS = {
    Verdict.PASS: "32",
    Verdict.FAIL: "31;1",
    Verdict.NON_STRICT: "33",
    Verdict.SKIPPED: "36",
    Verdict.ERROR: "35;1",
}


def use_colour(stream: Any, environ: dict[str, str] | Any) -> bool:
    """Whether to colour what goes to ``stream``: a terminal, ``NO_COLOR`` unset, not dumb."""
    if environ.get("NO_COLOR"):
        return False
    if environ.get("TERM") == "dumb":
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty is not None and isatty())


def paint(verdict: Verdict, text: str, colour: bool) -> str:
    """``text`` in the colour of ``verdict`` when ``colour``."""
    code = _COLOURS.get(verdict)
    return f"\x1b[{code}m{text}\x1b[0m" if colour and code else text


@dataclass
class CheckResult:
    """One check against one target.

    Attributes:
        check: The check.
        verdict: PASS, FAIL, NON-STRICT or SKIPPED.
        duration: Seconds it ran.
        failure: The bug report of a FAIL or NON-STRICT, when the check made one.
        reason: Why it was SKIPPED, or what failed when the check made no bug
            report (an error in the suite itself).
        replay: The command that reruns just this check against this target.
        ran: Whether the check ran, to its end; False for a SKIPPED check that
            never did (the run stopped first, or its ``--timeout`` was spent):
            set by whoever makes such a result (:data:`NOT_RUN` begins its reason).
    """

    check: Check
    verdict: Verdict
    duration: float = 0.0
    failure: FailureReport | None = None
    reason: str = ""
    replay: str = ""
    ran: bool = True

    @property
    def details(self) -> str:
        """The bug report as text (FAIL, NON-STRICT), else the reason, or empty."""
        return self.failure.render() if self.failure is not None else self.reason

    def to_data(self) -> dict[str, Any]:
        """Plain data that :meth:`from_data` reads (an xdist worker's result, to the controller).

        ``ran`` is there only when False: the data of a check that ran is as it always was.
        """
        data: dict[str, Any] = {
            "check": self.check.id,
            "verdict": self.verdict.value,
            "duration": self.duration,
            "failure": self.failure.to_data() if self.failure is not None else None,
            "reason": self.reason,
            "replay": self.replay,
        }
        if not self.ran:
            data["ran"] = False
        return data

    @classmethod
    def from_data(cls, data: dict[str, Any]) -> CheckResult:
        failure = data["failure"]
        return cls(
            by_id(data["check"]),
            Verdict(data["verdict"]),
            data["duration"],
            FailureReport.from_data(failure) if failure is not None else None,
            data["reason"],
            data["replay"],
            ran=data.get("ran", True),
        )


@dataclass
class TargetRun:
    """The results against one target.

    Attributes:
        name: Short name, unique in the run (a column heading).
        kind: ``address``, ``spawn`` or ``reference``.
        spec: What the user wrote: the address, the command, the model.
        address: Where it listened.
        description: One line for people.
        replay: The command that reruns the run against it, without ``--checks``.
        results: Check ID -> result, for the checks that reported.
        events: What happened to it during the run (exits, restarts, unreachable).
    """

    name: str
    kind: str
    spec: str
    address: str
    description: str
    replay: str = ""
    results: dict[str, CheckResult] = field(default_factory=dict)
    events: list[TargetEvent] = field(default_factory=list)

    def result(self, check: Check) -> CheckResult:
        """The result of ``check``; SKIPPED (never run) when it did not report."""
        found = self.results.get(check.id)
        if found is not None:
            return found
        return CheckResult(
            check, Verdict.SKIPPED, reason=NOT_RUN, replay=self.replay_of(check), ran=False
        )

    def replay_of(self, check: Check) -> str:
        return replay_check(self.replay, check) if self.replay else ""

    def counts(self, checks: Sequence[Check]) -> dict[Verdict, int]:
        counts = dict.fromkeys(Verdict, 0)
        for check in checks:
            counts[self.result(check).verdict] += 1
        return counts

    def never_usable(self) -> bool:
        """It stopped answering, and no other check measured it: the run never tested it.

        Measured: any verdict but SKIPPED and ERROR, from a check other than the
        one that found it unreachable.
        """
        found = [e.check for e in self.events if e.kind is TargetEventKind.UNREACHABLE]
        if not found:
            return False
        return not self.measured_beside(found)

    def never_answered(self) -> bool:
        """It accepts connections but answered none: no check but the one that found it measured it.

        Such a target is reachable: the run fails it (exit 1), it does not
        call it unreachable (exit 3).
        """
        found = [e.check for e in self.events if e.kind is TargetEventKind.SILENT]
        return bool(found) and not self.measured_beside(found)

    def measured_beside(self, found: list[str | None]) -> bool:
        """Whether a check other than those in ``found`` measured the target."""
        measured = (Verdict.PASS, Verdict.FAIL, Verdict.NON_STRICT)
        return any(r.verdict in measured for check, r in self.results.items() if check not in found)


@dataclass
class RunResults:
    """A whole run: the checks, the targets, and each check's result against each.

    Attributes:
        checks: The selected checks, in catalogue order.
        targets: The targets, in the order given.
        strict: Whether a failed SHOULD or MAY failed the run.
        oracle: The oracle's name.
        protocol: The protocol model's name (``echo``, ``resp``...).
        load_hosts: The execnet gateways the load checks ran from; empty:
            the suite's own process.
        started: When the run began (seconds since the epoch).
        finished: When it ended, or None while it runs.
    """

    checks: list[Check]
    targets: list[TargetRun]
    strict: bool = False
    oracle: str = "echo"
    protocol: str = "echo"
    load_hosts: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.time)
    finished: float | None = None

    def target(self, name: str) -> TargetRun | None:
        for target in self.targets:
            if target.name == name:
                return target
        return None

    def record(self, target: str, result: CheckResult) -> None:
        """Keep ``result``; a later report of the same check wins unless it passed.

        A check reports its call phase and, should its teardown fail, again:
        the worse of the two is kept.
        """
        run = self.target(target)
        if run is None:
            return
        previous = run.results.get(result.check.id)
        worse = result.verdict in (Verdict.FAIL, Verdict.ERROR)
        if previous is None or previous.verdict is Verdict.PASS or worse:
            run.results[result.check.id] = result

    def ok(self) -> bool:
        """No target failed a check that fails the run, no check erred, every check ran,
        and no target's process exited during the run (even between two checks)."""
        return all(
            t.result(c).verdict not in (Verdict.FAIL, Verdict.ERROR) and t.result(c).ran
            for t in self.targets
            for c in self.checks
        ) and not any(e.kind is TargetEventKind.EXITED for t in self.targets for e in t.events)

    def failed(self) -> list[CheckResult]:
        """Every result that fails the run (FAIL, ERROR), target by target."""
        return [
            t.result(c)
            for t in self.targets
            for c in self.checks
            if t.result(c).verdict in (Verdict.FAIL, Verdict.ERROR)
        ]

    def totals(self) -> dict[Verdict, int]:
        totals = dict.fromkeys(Verdict, 0)
        for target in self.targets:
            for verdict, n in target.counts(self.checks).items():
                totals[verdict] += n
        return totals

    @property
    def duration(self) -> float:
        return (self.finished or time.time()) - self.started


def host_info() -> dict[str, str]:
    """The machine that ran the suite."""
    return {
        "name": socket.gethostname(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
    }


def format_counts(counts: dict[Verdict, int]) -> str:
    """``N passed, N failed, N non-strict, N skipped`` (and ``, N errors`` when there are)."""
    shown = [v for v in Verdict if v is not Verdict.ERROR or counts.get(v)]
    return ", ".join(f"{counts.get(v, 0)} {v.count_word}" for v in shown)


def format_table(run: RunResults, *, colour: bool = False) -> list[str]:
    """The verdicts as a table: one row per check, one column per target.

    With one target, each row also has the check's duration.
    """
    id_width = max([len(c.id) for c in run.checks] + [5])
    lines = []
    if len(run.targets) == 1:
        target = run.targets[0]
        for check in run.checks:
            result = target.result(check)
            duration = f"{result.duration:6.2f}s" if result.ran else "      -"
            word = paint(result.verdict, f"{result.verdict.value:<10}", colour)
            lines.append(
                f"{word}  {check.id:<{id_width}} {check.level.value:<6} {duration}  {check.title}"
            )
        return lines
    widths = [max(len(t.name), len(Verdict.NON_STRICT.value)) for t in run.targets]
    head = "  ".join(f"{t.name:<{w}}" for t, w in zip(run.targets, widths, strict=True))
    lines.append(f"{'check':<{id_width}}  {'level':<6}  {head}")
    for check in run.checks:
        cells = []
        for target, width in zip(run.targets, widths, strict=True):
            verdict = target.result(check).verdict
            cells.append(paint(verdict, f"{verdict.value:<{width}}", colour))
        lines.append(f"{check.id:<{id_width}}  {check.level.value:<6}  {'  '.join(cells)}")
    return [line.rstrip() for line in lines]
