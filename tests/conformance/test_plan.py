"""The run plan: ``--max-connections`` from the option table to every check's Setup.

No network: plans, sessions and setups are plain data until a check runs.
"""

from __future__ import annotations

import argparse
import json

import pytest

from conformance.checks import by_id
from conformance.errors import UsageError
from conformance.harness import DEFAULT_MAX_CONNECTIONS
from conformance.plan import Front, RunPlan, add_options, max_connections, plan_from_options
from conformance.session import LiveTarget, Session
from conformance.target import Address, TargetSpec


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
