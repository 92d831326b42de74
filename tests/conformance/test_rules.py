"""Rules: one behaviour, one level; a failure is judged at the level of the rule it broke."""

from __future__ import annotations

import pytest

from conformance.checks import CATALOGUE, Check, Level, Outcome
from conformance.harness import CheckFailure, Harness
from conformance.reports.failure import FailureReport
from conformance.rules import HALFCLOSE_CLOSE, HALFCLOSE_DATA, RULES, Rule, by_rule_id


async def _nothing(h: Harness) -> None:
    return None


def test_every_check_that_half_closes_judges_both_half_close_rules() -> None:
    judged = {c.id for c in CATALOGUE if HALFCLOSE_CLOSE in c.rules}
    assert judged == {
        "ECHO-HALFCLOSE-1",
        "ECHO-HALFCLOSE-2",
        "ECHO-HALFCLOSE-3",
        "PROP-HALFCLOSE-1",
    }
    assert all(HALFCLOSE_DATA in c.rules for c in CATALOGUE if c.id in judged)
    assert HALFCLOSE_DATA in next(c for c in CATALOGUE if c.id == "ECHO-LOAD-3").rules
    for check in CATALOGUE:
        if check.rules:
            assert check.level is Level.MUST, check.id


def test_rules_are_written_down_once_with_their_words() -> None:
    assert len({r.id for r in RULES}) == len(RULES)
    for rule in RULES:
        assert rule.quote
        assert rule.spec.startswith("RFC")
        assert by_rule_id(rule.id) is rule
    assert by_rule_id("NO-SUCH-RULE") is None


def test_a_check_level_must_be_the_strictest_of_its_rules() -> None:
    with pytest.raises(ValueError, match="strictest"):
        Check("X-1", "t", "c", Level.SHOULD, "RFC 0", _nothing, rules=(HALFCLOSE_DATA,))


@pytest.mark.parametrize(
    ("rule", "level", "fails_lenient"),
    [
        (None, Level.MUST, True),
        (HALFCLOSE_DATA, Level.MUST, True),
        (HALFCLOSE_CLOSE, Level.SHOULD, False),
    ],
)
def test_a_failure_is_judged_at_the_level_of_the_rule_it_broke(
    rule: Rule | None, level: Level, fails_lenient: bool
) -> None:
    check = Check(
        "X-1", "t", "c", Level.MUST, "RFC 0", _nothing, rules=(HALFCLOSE_DATA, HALFCLOSE_CLOSE)
    )
    failure = CheckFailure("what happened", step="s", rule=rule)
    report = FailureReport.build(
        check_line=check.line_for(failure.rule), failure=failure, transcripts=[], replay="r"
    )
    outcome = Outcome(check, FailureReport.from_data(report.to_data()), 0.1)
    assert outcome.level is level
    assert outcome.fails_run(strict=False) is fails_lenient
    assert outcome.fails_run(strict=True)
    text = outcome.report
    if rule is None:
        assert "broke" not in text
        assert text.startswith("FAILED X-1 (MUST, c;")
    else:
        assert f"broke {rule.line}" in text
        assert text.startswith(f"FAILED X-1 ({level.value} {rule.id}, c;")
        assert report.fields()["rule"] == rule.id


def test_under_keeps_the_rule_a_failure_already_names() -> None:
    failure = CheckFailure("x", rule=HALFCLOSE_CLOSE)
    assert failure.under(HALFCLOSE_DATA).rule is HALFCLOSE_CLOSE
    assert CheckFailure("y").under(HALFCLOSE_DATA).rule is HALFCLOSE_DATA
