"""The catalogue as data, and each check against the reference server and a broken one."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from conformance.checks import (
    CATALOGUE,
    CATEGORIES,
    Check,
    Level,
    Outcome,
    Setup,
    by_id,
    run_check,
)
from conformance.errors import UsageError
from conformance.reports.failure import FailureKind, FailureReport
from conformance.run.selection import select_checks
from conformance.targets.target import RunningTarget, TargetKind, TargetSpec
from tests.conformance.support import broken_spawn, serving


def test_catalogue_ids_are_unique_and_well_formed() -> None:
    ids = [c.id for c in CATALOGUE]
    assert len(ids) == len(set(ids))
    for check in CATALOGUE:
        assert re.fullmatch(r"(ECHO|PROP|TLS)-[A-Z]+-\d+", check.id), check.id
        assert check.title[0].isupper() or check.title[0].isdigit(), check.id
        assert check.spec.startswith("RFC "), check.id
        assert check.category in CATEGORIES
        assert 0 < check.timeout <= 240


def test_Outcome_level_is_the_broken_rules_else_the_checks() -> None:
    check = by_id("ECHO-HALFCLOSE-2")
    assert check.level is Level.MUST

    def failed(level: Level | None) -> Outcome:
        report = FailureReport(
            check.line, FailureKind.DIVERGENCE, "byte 2 differs", "", level=level
        )
        return Outcome(check, report, 1.0)

    assert failed(Level.SHOULD).level is Level.SHOULD
    assert not failed(Level.SHOULD).fails_run(strict=False)
    assert failed(None).level is Level.MUST
    assert failed(None).fails_run(strict=False)
    assert Outcome(check, None, 1.0).level is Level.MUST


def test_catalogue_covers_the_required_ground() -> None:
    assert {"basic", "partial-write", "concurrency", "fairness", "close", "reset", "storm"} <= set(
        CATEGORIES
    )
    assert {c.level for c in CATALOGUE} >= {Level.MUST, Level.SHOULD}
    assert all(c.fault for c in CATALOGUE if c.category in ("reset", "storm"))
    assert all(c.heavy for c in CATALOGUE if c.category == "storm")


def test_select_by_id_and_category_keeps_catalogue_order() -> None:
    chosen = select_checks(["echo-storm-1", "ECHO-BASIC-1"], ["close"])
    assert [c.id for c in chosen] == [
        "ECHO-BASIC-1",
        "ECHO-HALFCLOSE-1",
        "ECHO-HALFCLOSE-2",
        "ECHO-HALFCLOSE-3",
        "ECHO-STORM-1",
    ]
    assert select_checks() == list(CATALOGUE)
    assert by_id(" echo-basic-3 ").id == "ECHO-BASIC-3"


def test_select_rejects_unknown_ids_and_categories() -> None:
    with pytest.raises(UsageError, match="unknown check 'ECHO-NOPE-1'"):
        select_checks(["ECHO-NOPE-1"])
    with pytest.raises(UsageError, match="unknown category 'nope'"):
        select_checks([], ["nope"])
    with pytest.raises(UsageError, match="unknown check 'ECHO-NOPE-1'"):
        by_id("ECHO-NOPE-1")


@pytest.fixture(scope="module")
def reference_single() -> Iterator[RunningTarget]:
    with serving(TargetSpec.default()) as running:
        yield running


@pytest.mark.parametrize("check", CATALOGUE, ids=[c.id for c in CATALOGUE])
def test_check_passes_against_the_reference_single_server(
    check: Check, reference_single: RunningTarget
) -> None:
    setup = Setup(reference_single.address)
    outcome = run_check(check, setup)
    if check.category == "tls":  # Over TLS: tests/conformance/test_tls_checks.py.
        assert outcome.failure is None, outcome.report
        assert outcome.unmeasured is not None
        assert outcome.unmeasured.startswith("needs --tls: "), outcome.unmeasured
        return
    if check.id == "ECHO-LIMIT-1" and outcome.failure is None and outcome.unmeasured:
        # It runs under this machine's limit, which may be too high to exceed; the
        # check against servers under 1024 descriptors is in test_limits.py.
        assert "more than this check opens" in outcome.unmeasured, outcome.unmeasured
        return
    assert outcome.passed, outcome.report


@pytest.mark.parametrize(
    ("server", "check_id", "needles"),
    [
        (
            "truncates_at_nul",
            "ECHO-PARTIAL-2",
            ["first divergent offset", "sent 0x00", "sent     (1048576 bytes) @0x"],
        ),
        ("truncates_at_nul", "ECHO-BASIC-3", ["first byte still owed: 0", "ended: timed out"]),
        ("blocks_in_send", "ECHO-FAIR-2", ["StepTimeout at step 'round trip 0 on busy"]),
        ("leaks_descriptors", "ECHO-STORM-1", ["descriptor leak"]),
        (
            "ignores_half_close",
            "ECHO-HALFCLOSE-2",
            [
                "(SHOULD HALFCLOSE-CLOSE,",
                "did not close its side within 5s",
                "broke HALFCLOSE-CLOSE (SHOULD)",
            ],
        ),
        (
            "resets_after_half_close",
            "ECHO-HALFCLOSE-2",
            ["(SHOULD HALFCLOSE-CLOSE,", "then ended with an RST, not a FIN"],
        ),
        (
            "closes_on_eof",
            "ECHO-HALFCLOSE-1",
            ["(MUST HALFCLOSE-DATA,", "bytes never echoed", "ended: FIN from the server"],
        ),
    ],
)
def test_check_fails_against_a_broken_server_with_a_useful_report(
    server: str, check_id: str, needles: list[str]
) -> None:
    spec = TargetSpec(TargetKind.SPAWN, broken_spawn(server))
    with serving(spec) as running:
        setup = Setup(
            running.address,
            replay=f"reactor-conformance run --spawn '{spec.value}'",
        )
        outcome = run_check(by_id(check_id), setup)
    assert not outcome.passed
    report = outcome.report
    assert report.startswith(f"FAILED {check_id} (")
    for needle in needles:
        assert needle in report, report
    assert report.rstrip().endswith(f"--checks {check_id}")
    strict_only = outcome.level is not Level.MUST
    assert outcome.fails_run(strict=False) is not strict_only
    assert outcome.fails_run(strict=True)
