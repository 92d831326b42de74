"""The run plan: ``--max-connections`` from the option table to every check's Setup.

No network: plans, sessions and setups are plain data until a check runs.
"""

from __future__ import annotations

import argparse
import json

import pytest

from conformance.checks import CATALOGUE, by_id
from conformance.errors import UsageError
from conformance.harness import DEFAULT_MAX_CONNECTIONS, DEFAULT_STEP_TIMEOUT
from conformance.protocols import OracleModel, RespModel, model_name
from conformance.run.options import option_values
from conformance.run.plan import (
    DEFAULT_TIMEOUT,
    Front,
    RunPlan,
    add_options,
    max_connections,
    plan_from_options,
    run_profile,
)
from conformance.run.profiles import PROFILES
from conformance.run.session import LiveTarget, ReportFile, ReportKind, Session
from conformance.targets.target import Address, TargetSpec


def _options(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_options(parser.add_argument, Front.CLI)
    return parser.parse_args([*argv])


def _plan(max_connections: int | None = None) -> RunPlan:
    return RunPlan(
        targets=(TargetSpec.default(),),
        names=("reference-single",),
        checks=(by_id("ECHO-BASIC-1"),),
        max_connections=max_connections,
    )


def test_max_connections_is_a_whole_number_above_zero() -> None:
    assert max_connections(None) is None
    assert max_connections(str(DEFAULT_MAX_CONNECTIONS)) == DEFAULT_MAX_CONNECTIONS
    assert max_connections("300") == 300
    for text in ("0", "-5"):
        with pytest.raises(UsageError, match=f"--max-connections {text}: give a number"):
            max_connections(text)
    for text in ("many", "1.5", ""):
        with pytest.raises(UsageError, match="not a whole number of connections"):
            max_connections(text)


def test_plan_from_options_reads_max_connections() -> None:
    assert plan_from_options(_options(), Front.CLI).max_connections is None
    plan = plan_from_options(_options("--max-connections", "300"), Front.CLI)
    assert plan.max_connections == 300
    with pytest.raises(UsageError, match="--max-connections 0"):
        plan_from_options(_options("--max-connections", "0"), Front.CLI)


def test_RunPlan_carries_max_connections_to_workers_and_into_replays() -> None:
    plan = _plan(max_connections=300)
    again = RunPlan.from_data(json.loads(json.dumps(plan.to_data())))
    assert again.max_connections == 300
    spec = plan.targets[0]
    assert plan.replay_prefix(spec).endswith("--max-connections 300")
    assert "--max-connections" not in _plan().replay_prefix(spec)


def test_Session_setup_gives_every_check_max_connections() -> None:
    spec = TargetSpec.default()
    live = LiveTarget("reference-single", spec, Address("127.0.0.1", 9), None, "replay")
    session = Session(_plan(max_connections=300), [live])
    assert session.setup("reference-single").max_connections == 300
    worker = Session.for_worker(json.loads(json.dumps(session.to_worker())))
    assert worker.setup("reference-single").max_connections == 300


def test_the_whole_catalogue_ends_within_ten_minutes_by_default() -> None:
    plan = plan_from_options(_options("--tls", "--tls-insecure"), Front.CLI)  # TLS checks too
    assert len(plan.checks) == len(CATALOGUE)
    assert plan.timeout == DEFAULT_TIMEOUT
    assert plan.bound() < 600
    # Each check keeps its own deadline; the run's --timeout is what bounds their sum.
    uncapped = plan_from_options(_options("--tls", "--timeout", "none"), Front.CLI)
    assert uncapped.timeout is None
    assert uncapped.bound() > plan.bound()
    for check in plan.checks:
        assert 0 < check.deadline(plan.profile) <= 120, check.id


def test_the_default_timeout_is_per_target() -> None:
    two = plan_from_options(_options("--reference", "single", "--reference", "pool"), Front.CLI)
    assert two.timeout == 2 * DEFAULT_TIMEOUT
    assert plan_from_options(_options("--timeout", "90"), Front.CLI).timeout == 90


def test_a_property_checks_deadline_is_its_profiles() -> None:
    check = by_id("PROP-ECHO-1")
    for profile in PROFILES.values():
        assert check.deadline(profile) == profile.check_seconds
        assert profile.step_timeout >= DEFAULT_STEP_TIMEOUT
    assert by_id("ECHO-SIZE-2").deadline(PROFILES["ci"]) == by_id("ECHO-SIZE-2").timeout


def test_the_plan_resolves_one_model_that_every_check_and_worker_gets() -> None:
    plan = plan_from_options(_options("--oracle", "discard"), Front.CLI)
    assert isinstance(plan.model, OracleModel)
    assert model_name(plan.model) == "oracle:discard"
    live = LiveTarget("reference-single", TargetSpec.default(), Address("127.0.0.1", 9), None, "r")
    session = Session(plan, [live])
    assert session.setup("reference-single").model is plan.model
    worker = Session.for_worker(json.loads(json.dumps(session.to_worker())))
    assert model_name(worker.setup("reference-single").model) == "oracle:discard"
    assert plan.replay_prefix(live.spec).endswith("--oracle discard")
    resp = plan_from_options(_options("--protocol", "resp"), Front.CLI)
    assert type(resp.model) is RespModel
    with pytest.raises(UsageError, match="--protocol resp judges replies with its own oracle"):
        plan_from_options(_options("--protocol", "resp", "--oracle", "discard"), Front.CLI)


def test_option_values_are_a_fronts_defaults_then_what_is_given() -> None:
    assert vars(option_values(Front.CLI)) == vars(_options())
    assert option_values(Front.CLI).conformance_profile is None
    assert option_values(Front.API).conformance_profile == "ci"
    assert option_values(Front.API, oracle="discard").oracle == "discard"
    with pytest.raises(TypeError, match="no option sets bogus"):
        option_values(Front.CLI, bogus=1)
    with pytest.raises(ValueError, match="keyword arguments, not flags"):
        add_options(argparse.ArgumentParser().add_argument, Front.API)


def test_run_profile_is_the_one_given_else_hypothesis_else_the_default() -> None:
    assert run_profile("thorough", "ci").name == "thorough"
    assert run_profile(PROFILES["ci"]) is PROFILES["ci"]
    assert run_profile(None, "ci").name == "ci"
    assert run_profile(None, "someone-elses").name == "default"
    with pytest.raises(UsageError, match="unknown profile 'quick': choose among ci, default"):
        run_profile("quick")


def test_ReportKind_is_named_as_each_front_prints_it() -> None:
    assert [kind.label for kind in ReportKind] == ["JSON", "HTML", "JUnit"]  # the CLI's summary
    assert [kind.value for kind in ReportKind] == ["json", "html", "JUnit"]  # the plugin's lines
    unwritten = ReportFile(ReportKind.JSON, "/dev/full", "No space left on device")
    assert (unwritten.kind.label, unwritten.why) == ("JSON", "No space left on device")
    assert ReportFile(ReportKind.HTML, "r.html").why is None


def test_the_tls_checks_are_selected_by_default_only_over_tls() -> None:
    plain = plan_from_options(option_values(Front.API, reference=["single"]), Front.CLI)
    assert not [c for c in plain.checks if c.category == "tls"]
    over_tls = plan_from_options(
        option_values(Front.API, reference=["single"], tls=True, tls_insecure=True), Front.CLI
    )
    assert [c.id for c in over_tls.checks if c.category == "tls"]
    named = plan_from_options(
        option_values(Front.API, reference=["single"], checks="TLS-RECORDS-1"), Front.CLI
    )
    assert [c.id for c in named.checks] == ["TLS-RECORDS-1"]  # SKIPPED when it runs: needs --tls
