"""The judge: one pure function from what a check found and what befell its target to a verdict.

How this works
--------------
The session gathers the facts (:meth:`~conformance.run.session.Session.execute`:
the run's clock, the board, the probe after a failed check) into a
:data:`Fate`, and :func:`judge` decides. Nothing here touches a socket, a
file or the clock: every case can be tested with plain values.

What the check found (its :class:`~conformance.checks.Outcome`) gives the
verdict it earned on its own:

- an error in the suite's own code: ERROR;
- nothing failed, but something it judges was not measured: SKIPPED, and why;
- else PASS, or FAIL / NON-STRICT for a failure by its level and ``strict``.

The target's fate then decides, in this table (``-``: no outcome, the check
did not run; ``earned``: the verdict above stands):

=====================  ========  ====================================================
fate                   outcome   result
=====================  ========  ====================================================
SpentBefore            ``-``     SKIPPED "not run: the run's --timeout ... was spent"
Unreachable            ``-``     SKIPPED "target unreachable since CHECK (DETAIL)"
Down                   ``-``     SKIPPED "the target HOW during CHECK and was not restarted"
NotUpAgain             ``-``     SKIPPED "the target was not up again within Ns"
NeverStarted           ``-``     SKIPPED "the target was never started"
Undisturbed            any       earned
SpentDuring            passed    earned
SpentDuring            other     SKIPPED "not run to the end: ... spent during this check"
ExitClaimed            any       FAIL TargetExited, with the target's last stderr lines
ExitOfAnother          PASS      earned
ExitOfAnother          other     SKIPPED "not measured: the target HOW during CHECK"
StoppedAnswering       any       FAIL TargetUnreachable, or TargetSilent if it accepts
AlreadyUnreachable     any       SKIPPED "not measured: target unreachable since CHECK"
=====================  ========  ====================================================

A FAIL for the target's sake keeps what the check itself saw, when it
failed, under the target's headline
(:meth:`~conformance.reports.failure.FailureReport.about_target`). Only the two
``Spent`` fates make a result that did not run (:attr:`CheckResult.ran`).
A fate in the wrong column (one that needs an outcome given none, or one
that says the check did not run given its outcome) raises.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeAlias

from conformance.checks import Check, Outcome
from conformance.reports.failure import FailureKind, FailureReport
from conformance.run.results import NOT_RUN, CheckResult, Verdict
from conformance.targets.target_state import (
    MAX_RESTARTS,
    Down,
    NeverStarted,
    NotReady,
    NotUpAgain,
    Unreachable,
)

__all__ = [
    "UNDISTURBED",
    "AlreadyUnreachable",
    "Before",
    "During",
    "ExitClaimed",
    "ExitOfAnother",
    "Fate",
    "SpentBefore",
    "SpentDuring",
    "StoppedAnswering",
    "Undisturbed",
    "judge",
]


@dataclass(frozen=True)
class SpentBefore:
    """The run's ``--timeout`` of ``timeout`` seconds was spent before the check began."""

    timeout: float


@dataclass(frozen=True)
class Undisturbed:
    """Nothing befell the target that changes the verdict (or the run does not watch it)."""


#: The one :class:`Undisturbed`.
UNDISTURBED = Undisturbed()


@dataclass(frozen=True)
class SpentDuring:
    """The run's ``--timeout`` of ``timeout`` seconds ran out during the check."""

    timeout: float


@dataclass(frozen=True)
class ExitClaimed:
    """The target's process exited during the check, and this check claimed the exit.

    Attributes:
        how: ``exited with code N`` or ``exited with signal N (NAME)``.
        stderr: The target's last stderr lines.
        restarted: Whether it was started again.
        count: How many exits of the target so far, this one included.
    """

    how: str
    stderr: tuple[str, ...]
    restarted: bool
    count: int


@dataclass(frozen=True)
class ExitOfAnother:
    """The target's process exited while the check ran, and another check claimed the exit.

    Attributes:
        how: How it exited.
        claimed_by: The check that claimed it (None: its claim could not be read).
    """

    how: str
    claimed_by: str | None


@dataclass(frozen=True)
class StoppedAnswering:
    """The check failed, the target no longer serves a fresh connection, and this check is
    the first to see it.

    Attributes:
        detail: What the probe saw, in words.
        accepts: The target accepted the probe's connection and sent nothing
            back (silent); False: refused or not accepted (unreachable).
    """

    detail: str
    accepts: bool


@dataclass(frozen=True)
class AlreadyUnreachable:
    """The check failed against a target that another check had found unreachable first.

    Attributes:
        since: That check (None: its record could not be read).
    """

    since: str | None


#: What kept a check from running (:func:`judge` gets no outcome).
Before: TypeAlias = SpentBefore | NotReady
#: What befell the target while a check ran (:func:`judge` gets its outcome).
During: TypeAlias = (
    Undisturbed | SpentDuring | ExitClaimed | ExitOfAnother | StoppedAnswering | AlreadyUnreachable
)
#: The target's fate during a check, as the session saw it.
Fate: TypeAlias = Before | During

_BEFORE = (SpentBefore, Unreachable, Down, NotUpAgain, NeverStarted)


def judge(
    outcome: Outcome | None, fate: Fate, *, check: Check, strict: bool, replay: str
) -> CheckResult:
    """The result of ``check``, from what it found and what befell its target.

    Args:
        outcome: What the check found; None when it did not run (``fate`` says why).
        fate: What befell the target (or the run's time) before or during the check.
        check: The check.
        strict: Whether a failed SHOULD or MAY fails the run.
        replay: The command that reruns just this check against this target.

    Returns:
        The verdict, with its reason or bug report (the table above).

    Raises:
        ValueError: ``fate`` and ``outcome`` do not go together (a fate
            during the check with no outcome, a fate before it with one), or
            ``outcome`` is another check's.
    """
    if outcome is None:
        if not isinstance(fate, _BEFORE):
            raise ValueError(f"the fate {fate!r} is of a check that ran: it needs its outcome")
        return CheckResult(
            check,
            Verdict.SKIPPED,
            reason=_why_not_run(fate),
            replay=replay,
            ran=not isinstance(fate, SpentBefore),
        )
    if isinstance(fate, _BEFORE):
        raise ValueError(f"the fate {fate!r} is of a check that did not run: it has no outcome")
    if outcome.check != check:
        raise ValueError(f"the outcome of {outcome.check.id} given for {check.id}")
    earned = _earned(outcome, strict=strict, replay=replay)
    if isinstance(fate, Undisturbed):
        return earned
    if isinstance(fate, SpentDuring):
        if outcome.passed:
            return earned
        return _skipped(
            earned,
            f"{NOT_RUN} to the end: the run's --timeout of {fate.timeout:g}s was spent "
            "during this check",
            ran=False,
        )
    if isinstance(fate, ExitClaimed):
        if fate.restarted:
            then = f"it is restarted for the next check ({fate.count} of at most {MAX_RESTARTS})"
        else:
            then = "it is not restarted: the remaining checks are skipped"
        message = f"the target {fate.how} during this check; {then}"
        return _failed_for_target(earned, FailureKind.TARGET_EXITED, message, fate.stderr)
    if isinstance(fate, ExitOfAnother):
        if earned.verdict is Verdict.PASS:
            return earned
        return _skipped(
            earned,
            f"not measured: the target {fate.how} during {fate.claimed_by}, while this check ran",
        )
    if isinstance(fate, StoppedAnswering):
        if fate.accepts:
            kind, what = FailureKind.TARGET_SILENT, "accepts connections but stopped answering"
        else:
            kind, what = FailureKind.TARGET_UNREACHABLE, "stopped answering"
        message = (
            f"the target {what} during this check ({fate.detail}); the remaining checks are skipped"
        )
        return _failed_for_target(earned, kind, message, ())
    return _skipped(earned, f"not measured: target unreachable since {fate.since}")


def _why_not_run(fate: Before) -> str:
    if isinstance(fate, SpentBefore):
        return f"{NOT_RUN}: the run's --timeout of {fate.timeout:g}s was spent"
    if isinstance(fate, Unreachable):
        return f"target unreachable since {fate.check} ({fate.detail})"
    if isinstance(fate, Down):
        where = f" during {fate.during}" if fate.during else ""
        return f"the target {fate.how}{where} and was not restarted: {fate.reason}"
    if isinstance(fate, NotUpAgain):
        return f"the target was not up again within {fate.timeout:g}s of its restart"
    return "the target was never started"


def _earned(outcome: Outcome, *, strict: bool, replay: str) -> CheckResult:
    """The verdict the check earned on its own, whatever befell its target."""
    if outcome.error is not None:
        return CheckResult(
            outcome.check,
            Verdict.ERROR,
            outcome.duration,
            reason=f"error in the suite's own code (the check measured nothing):\n{outcome.error}",
            replay=replay,
        )
    if outcome.failure is None and outcome.unmeasured is not None:
        return CheckResult(
            outcome.check,
            Verdict.SKIPPED,
            outcome.duration,
            reason=outcome.unmeasured,
            replay=replay,
        )
    verdict = Verdict.PASS
    if outcome.failure is not None:
        verdict = Verdict.FAIL if outcome.fails_run(strict) else Verdict.NON_STRICT
    return CheckResult(outcome.check, verdict, outcome.duration, outcome.failure, replay=replay)


def _skipped(earned: CheckResult, reason: str, *, ran: bool = True) -> CheckResult:
    """SKIPPED with ``reason``, after ``earned``'s time: what it found does not count."""
    return CheckResult(
        earned.check, Verdict.SKIPPED, earned.duration, reason=reason, replay=earned.replay, ran=ran
    )


def _failed_for_target(
    earned: CheckResult, kind: FailureKind, message: str, stderr: Sequence[str]
) -> CheckResult:
    """FAIL for what befell the target, led by it; what the check saw, if it failed, below."""
    if earned.failure is not None:
        failure = earned.failure.about_target(kind, message, stderr)
    else:
        failure = FailureReport(
            check_line=earned.check.line,
            kind=kind,
            message=message,
            replay=earned.replay,
            stderr=tuple(stderr),
        )
    return CheckResult(earned.check, Verdict.FAIL, earned.duration, failure, replay=earned.replay)
