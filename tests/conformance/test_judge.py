"""The judge: every fate of a target, every kind of outcome, no server and no clock."""

from __future__ import annotations

import pytest

from conformance.checks import Check, Outcome, by_id
from conformance.reports.failure import FailureKind, FailureReport
from conformance.run.judge import (
    UNDISTURBED,
    AlreadyUnreachable,
    Before,
    During,
    ExitClaimed,
    ExitOfAnother,
    SpentBefore,
    SpentDuring,
    StoppedAnswering,
    judge,
)
from conformance.run.results import CheckResult, Verdict
from conformance.targets.target_state import Down, NeverStarted, NotUpAgain, Unreachable

MUST = by_id("ECHO-BASIC-1")
SHOULD = by_id("ECHO-CPU-1")
REPLAY = "reactor-conformance run --target 127.0.0.1:7 --checks ECHO-BASIC-1"


def _report(check: Check) -> FailureReport:
    return FailureReport(
        check_line=check.line,
        kind=FailureKind.DIVERGENCE,
        message="byte 2 differs",
        replay=REPLAY,
        step="exchange 1 on c1",
    )


def _passed(check: Check = MUST) -> Outcome:
    return Outcome(check, None, 1.5)


def _failed(check: Check = MUST) -> Outcome:
    return Outcome(check, _report(check), 2.5)


def _erred(check: Check = MUST) -> Outcome:
    return Outcome(check, None, 0.5, error="RuntimeError: this oracle cannot read")


def _unmeasured(check: Check = SHOULD) -> Outcome:
    return Outcome(check, None, 0.25, unmeasured="the server's process is not visible")


def _judge(outcome: Outcome, fate: During, *, strict: bool = False) -> CheckResult:
    return judge(outcome, fate, check=outcome.check, strict=strict, replay=REPLAY)


# Before the check: it did not run.


@pytest.mark.parametrize(
    ("fate", "reason", "ran"),
    [
        (SpentBefore(2.0), "not run: the run's --timeout of 2s was spent", False),
        (
            Unreachable("ECHO-BASIC-3", "a fresh connection to 127.0.0.1:7: refused", 1.0),
            "target unreachable since ECHO-BASIC-3 (a fresh connection to 127.0.0.1:7: refused)",
            True,
        ),
        (
            Down("exited with signal 9 (SIGKILL)", "ECHO-RESET-2", "--no-restart"),
            "the target exited with signal 9 (SIGKILL) during ECHO-RESET-2 and was not "
            "restarted: --no-restart",
            True,
        ),
        (
            Down("stopped", None, "the restart failed: nothing listens"),
            "the target stopped and was not restarted: the restart failed: nothing listens",
            True,
        ),
        (NotUpAgain(30.0), "the target was not up again within 30s of its restart", True),
        (NeverStarted(), "the target was never started", True),
    ],
)
def test_judge_skips_a_check_that_could_not_run_and_says_why(
    fate: Before, reason: str, ran: bool
) -> None:
    result = judge(None, fate, check=MUST, strict=True, replay=REPLAY)
    assert result == CheckResult(MUST, Verdict.SKIPPED, 0.0, None, reason, REPLAY, ran=ran)


# Nothing befell the target: the verdict the check earned.


@pytest.mark.parametrize(
    ("outcome", "strict", "verdict"),
    [
        (_passed(), False, Verdict.PASS),
        (_failed(MUST), False, Verdict.FAIL),
        (_failed(SHOULD), False, Verdict.NON_STRICT),
        (_failed(SHOULD), True, Verdict.FAIL),
    ],
)
def test_judge_keeps_the_verdict_a_check_earned_when_the_target_was_undisturbed(
    outcome: Outcome, strict: bool, verdict: Verdict
) -> None:
    result = _judge(outcome, UNDISTURBED, strict=strict)
    assert result == CheckResult(
        outcome.check, verdict, outcome.duration, outcome.failure, "", REPLAY
    )
    assert result.ran


def test_judge_calls_a_fault_in_the_suite_an_error() -> None:
    result = _judge(_erred(), UNDISTURBED)
    assert result.verdict is Verdict.ERROR
    assert result.reason == (
        "error in the suite's own code (the check measured nothing):\n"
        "RuntimeError: this oracle cannot read"
    )
    assert (result.failure, result.duration, result.ran) == (None, 0.5, True)


def test_judge_skips_what_a_check_could_not_measure_never_passes_it() -> None:
    result = _judge(_unmeasured(), UNDISTURBED)
    assert result == CheckResult(
        SHOULD, Verdict.SKIPPED, 0.25, None, "the server's process is not visible", REPLAY
    )


# The run's --timeout ran out during the check.


@pytest.mark.parametrize("outcome", [_failed(), _erred(), _unmeasured()])
def test_judge_skips_a_check_cut_short_by_the_runs_timeout_as_not_run(outcome: Outcome) -> None:
    result = _judge(outcome, SpentDuring(2.0))
    assert result == CheckResult(
        outcome.check,
        Verdict.SKIPPED,
        outcome.duration,
        None,
        "not run to the end: the run's --timeout of 2s was spent during this check",
        REPLAY,
        ran=False,
    )


def test_judge_keeps_the_pass_of_a_check_that_ended_as_the_runs_timeout_ran_out() -> None:
    assert _judge(_passed(), SpentDuring(2.0)) == _judge(_passed(), UNDISTURBED)


# The target's process exited during the check.


def test_judge_fails_the_check_that_claims_an_exit_even_if_it_passed() -> None:
    fate = ExitClaimed("exited with code 1", ("Traceback", "ConnectionResetError"), True, 2)
    result = _judge(_passed(), fate)
    assert result.verdict is Verdict.FAIL
    assert (result.reason, result.duration, result.replay) == ("", 1.5, REPLAY)
    assert result.failure == FailureReport(
        check_line=MUST.line,
        kind=FailureKind.TARGET_EXITED,
        message="the target exited with code 1 during this check; it is restarted for the "
        "next check (2 of at most 5)",
        replay=REPLAY,
        stderr=("Traceback", "ConnectionResetError"),
    )


def test_judge_leads_a_failed_checks_report_with_the_exit_it_claimed() -> None:
    fate = ExitClaimed("exited with signal 13 (SIGPIPE)", ("broken pipe",), False, 1)
    result = _judge(_failed(SHOULD), fate)
    assert result.verdict is Verdict.FAIL  # A SHOULD, and not strict: the exit fails it.
    assert result.failure == _report(SHOULD).about_target(
        FailureKind.TARGET_EXITED,
        "the target exited with signal 13 (SIGPIPE) during this check; it is not restarted: "
        "the remaining checks are skipped",
        ("broken pipe",),
    )
    assert result.failure is not None
    assert result.failure.seen == "Divergence at step 'exchange 1 on c1': byte 2 differs"
    assert result.failure.step is None


def test_judge_fails_an_erring_check_that_claims_an_exit() -> None:
    result = _judge(_erred(), ExitClaimed("exited with code 3", (), True, 1))
    assert result.verdict is Verdict.FAIL
    assert result.failure is not None
    assert result.failure.kind is FailureKind.TARGET_EXITED
    assert result.failure.seen is None


def test_judge_keeps_the_pass_of_a_check_beside_one_that_claimed_the_exit() -> None:
    fate = ExitOfAnother("exited with code 1", "ECHO-RESET-2")
    assert _judge(_passed(), fate) == _judge(_passed(), UNDISTURBED)


@pytest.mark.parametrize("outcome", [_failed(), _erred(), _unmeasured()])
def test_judge_skips_what_a_check_beside_the_claimed_exit_did_not_measure(
    outcome: Outcome,
) -> None:
    result = _judge(outcome, ExitOfAnother("exited with code 1", "ECHO-RESET-2"))
    assert result == CheckResult(
        outcome.check,
        Verdict.SKIPPED,
        outcome.duration,
        None,
        "not measured: the target exited with code 1 during ECHO-RESET-2, while this check ran",
        REPLAY,
    )
    assert result.ran


# The target stopped answering.


@pytest.mark.parametrize(
    ("accepts", "kind", "what"),
    [
        (False, FailureKind.TARGET_UNREACHABLE, "stopped answering"),
        (True, FailureKind.TARGET_SILENT, "accepts connections but stopped answering"),
    ],
)
def test_judge_fails_the_first_check_to_see_its_target_stop_answering(
    accepts: bool, kind: FailureKind, what: str
) -> None:
    result = _judge(_failed(), StoppedAnswering("nothing back within 5s", accepts))
    assert result.verdict is Verdict.FAIL
    assert result.reason == ""
    assert result.failure == _report(MUST).about_target(
        kind,
        f"the target {what} during this check (nothing back within 5s); "
        "the remaining checks are skipped",
    )


def test_judge_skips_a_failed_check_against_a_target_already_found_unreachable() -> None:
    result = _judge(_failed(), AlreadyUnreachable("ECHO-BASIC-3"))
    assert result == CheckResult(
        MUST,
        Verdict.SKIPPED,
        2.5,
        None,
        "not measured: target unreachable since ECHO-BASIC-3",
        REPLAY,
    )


# Facts that do not go together.


def test_judge_refuses_a_fate_during_a_check_without_its_outcome() -> None:
    with pytest.raises(ValueError, match="needs its outcome"):
        judge(None, UNDISTURBED, check=MUST, strict=False, replay=REPLAY)


def test_judge_refuses_an_outcome_with_a_fate_that_kept_the_check_from_running() -> None:
    with pytest.raises(ValueError, match="did not run"):
        judge(_passed(), NeverStarted(), check=MUST, strict=False, replay=REPLAY)


def test_judge_refuses_another_checks_outcome() -> None:
    with pytest.raises(ValueError, match="ECHO-CPU-1 given for ECHO-BASIC-1"):
        judge(_passed(SHOULD), UNDISTURBED, check=MUST, strict=False, replay=REPLAY)


# Whether a check ran travels with its result.


@pytest.mark.parametrize(
    "result",
    [
        judge(None, SpentBefore(2.0), check=MUST, strict=False, replay=REPLAY),
        judge(None, NeverStarted(), check=MUST, strict=False, replay=REPLAY),
        judge(_failed(), SpentDuring(2.0), check=MUST, strict=False, replay=REPLAY),
        judge(_failed(), StoppedAnswering("refused", False), check=MUST, strict=False, replay=""),
    ],
)
def test_CheckResult_data_keeps_whether_the_check_ran(result: CheckResult) -> None:
    data = result.to_data()
    assert ("ran" in data) is not result.ran  # The data of a check that ran is as it was.
    assert CheckResult.from_data(data) == result
