"""What ``reactor-conformance run`` prints: a progress line on a terminal, then the summary.

:class:`Progress` is a pytest plugin object, in the CLI's process only: the
``[done/total] N failed CHECK (target)`` line, rewritten in place on stderr.
:func:`summarise` prints the run's end: the verdicts (a column per target),
the bug report of each failure, why each skipped check was skipped, the
counts, what happened to each target, the reports written and those that
could not be, and returns the exit code.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

from conformance.errors import EXIT_FAILED, EXIT_OK, EXIT_REPORTS, EXIT_UNREACHABLE
from conformance.fronts.plugin import CHECK_PROPERTY, TARGET_PROPERTY
from conformance.run.results import RunResults, Verdict, format_counts, format_table, paint
from conformance.run.session import Session

__all__ = ["Progress", "summarise"]


@dataclass(eq=False)
class Progress:
    """A pytest plugin object, in this process only: the progress line on a terminal."""

    total: int
    colour: bool
    done: int = 0
    failed: int = 0

    def pytest_runtest_logreport(self, report: Any) -> None:
        props = dict(report.user_properties)
        if CHECK_PROPERTY not in props or not (report.when == "call" or report.failed):
            return
        if report.when == "call":
            self.done += 1
        if report.failed:
            self.failed += 1
        failed = paint(Verdict.FAIL, f"{self.failed} failed", self.colour) if self.failed else ""
        line = (
            f"[{self.done}/{self.total}] {failed}  {props[CHECK_PROPERTY]} "
            f"({props.get(TARGET_PROPERTY, '')})"
        )
        sys.stderr.write(f"\r\x1b[K{line}")
        sys.stderr.flush()

    def pytest_sessionfinish(self) -> None:
        sys.stderr.write("\r\x1b[K")
        sys.stderr.flush()


def summarise(results: RunResults, session: Session, colour: bool) -> int:
    """Print the verdicts, each failure's report, why checks were skipped, the counts,
    the target events and the reports written; return the run's exit code."""
    print()
    for line in format_table(results, colour=colour):
        print(line)
    for target in results.targets:
        for check in results.checks:
            result = target.result(check)
            if result.verdict in (Verdict.FAIL, Verdict.NON_STRICT, Verdict.ERROR) and (
                result.details
            ):
                print()
                heading = f"[{target.name}] " if len(results.targets) > 1 else ""
                print(heading + result.details)
    skipped = [
        (target.name, check.id, result.details)
        for target in results.targets
        for check in results.checks
        if (result := target.result(check)).verdict is Verdict.SKIPPED and result.details
    ]
    if skipped:
        print()
        print("skipped, and why:")
        for name, check_id, why in skipped:
            heading = f"[{name}] " if len(results.targets) > 1 else ""
            print(f"  {heading}{check_id}: {why}")
    print()
    if len(results.targets) > 1:
        for target in results.targets:
            print(f"  {target.name}: {format_counts(target.counts(results.checks))}")
    for target in results.targets:
        for event in target.events:
            print(f"reactor-conformance: target {target.name} {event.line()}")
    ok = results.ok()
    counts = format_counts(results.totals())
    strict = " (strict)" if results.strict else ""
    line = f"reactor-conformance: {counts} in {results.duration:.1f}s{strict}"
    print(paint(Verdict.PASS if ok else Verdict.FAIL, line, colour))
    for report in session.written:
        print(f"reactor-conformance: {report.kind.label} report: {report.path}")
    sys.stdout.flush()
    for report in session.unwritten:
        print(
            f"reactor-conformance: cannot write the {report.kind.label} report {report.path}: "
            f"{report.why}",
            file=sys.stderr,
        )
    for target in results.targets:
        if target.never_answered():
            print(
                f"reactor-conformance: {target.name} accepts connections but answered no "
                "check: it fails"
            )
    never = [t.name for t in results.targets if t.never_usable()]
    if never:
        print(
            f"reactor-conformance: {', '.join(never)} never served a check: "
            "the target is unreachable"
        )
        return EXIT_UNREACHABLE
    if session.unwritten:
        return EXIT_REPORTS
    return EXIT_OK if ok else EXIT_FAILED
