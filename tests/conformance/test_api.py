"""``conformance.check_server``: the engine as a function, typed results, no pytest inside."""

from __future__ import annotations

import inspect
import sys

import pytest

import conformance
from conformance.checks import CATALOGUE
from conformance.errors import TargetError, UsageError
from conformance.fronts.api import option_values_of
from conformance.run.options import Front, by_keyword, option_values
from conformance.run.plan import plan_from_options
from conformance.run.results import Verdict
from conformance.targets.target import SERVER_NOFILE, TargetSpec, free_port
from tests.conformance.support import broken_spawn, serving


def test_check_server_passes_a_reference_model_by_name() -> None:
    results = conformance.check_server("single", checks=["ECHO-BASIC-*", "PROP-ECHO-1"])
    assert results.ok()
    assert [c.id for c in results.checks] == [
        "ECHO-BASIC-1",
        "ECHO-BASIC-2",
        "ECHO-BASIC-3",
        "ECHO-BASIC-4",
        "PROP-ECHO-1",
    ]
    (target,) = results.targets
    assert all(target.result(c).verdict is Verdict.PASS for c in results.checks)


def test_check_server_reports_a_broken_command_with_a_bug_report() -> None:
    results = conformance.check_server(broken_spawn("truncates_at_nul"), checks=["ECHO-BASIC-4"])
    assert not results.ok()
    (failed,) = results.failed()
    assert failed.check.id == "ECHO-BASIC-4"
    assert failed.failure is not None
    assert failed.failure.check_line.startswith("ECHO-BASIC-4 (MUST")
    assert failed.replay.endswith("--checks ECHO-BASIC-4")


def test_check_server_takes_the_address_of_a_running_server() -> None:
    with serving(TargetSpec.from_options(None, None, "pool")) as running:
        results = conformance.check_server(str(running.address), checks=["ECHO-BASIC-1"])
    assert results.ok()
    assert results.targets[0].address == str(running.address)


def test_check_server_says_what_is_wrong_with_its_arguments() -> None:
    with pytest.raises(UsageError, match="no check"):
        conformance.check_server("single", checks=["NO-SUCH-*"])
    with pytest.raises(UsageError, match="unknown profile"):
        conformance.check_server("single", checks=["ECHO-BASIC-1"], profile="quick")
    with pytest.raises(TargetError):
        conformance.check_server(f"127.0.0.1:{free_port()}", checks=["ECHO-BASIC-1"])


def test_check_server_speaks_a_protocol_model_and_skips_what_does_not_apply() -> None:
    spawn = f"{sys.executable} -m reference single --port {{port}} --handler resp"
    results = conformance.check_server(
        spawn, checks=["ECHO-BASIC-1", "ECHO-BASIC-3", "ECHO-PIPELINE-1"], protocol="resp"
    )
    (target,) = results.targets
    verdicts = {c.id: target.result(c).verdict for c in results.checks}
    assert verdicts == {
        "ECHO-BASIC-1": Verdict.PASS,
        "ECHO-BASIC-3": Verdict.SKIPPED,
        "ECHO-PIPELINE-1": Verdict.PASS,
    }
    assert results.protocol == "resp"
    with pytest.raises(UsageError, match="--protocol resp judges replies with its own oracle"):
        conformance.check_server(spawn, protocol="resp", oracle="discard")


def test_check_server_keywords_are_options_with_the_option_tables_defaults() -> None:
    parameters = inspect.signature(conformance.check_server).parameters.values()
    defaults = {p.name: p.default for p in parameters if p.kind is p.KEYWORD_ONLY}
    assert set(defaults) == set(by_keyword())
    # Called with nothing but a target, every option has the table's default for the API:
    # a keyword whose default differs from its row's (or from the row's API default) fails.
    given = vars(option_values_of("single", **defaults))
    table = vars(option_values(Front.API, reference=["single"]))
    assert {dest: given[dest] for dest in given if given[dest] != table[dest]} == {}


def test_check_server_plans_as_it_always_did() -> None:
    plan = plan_from_options(option_values_of("single"), Front.CLI)
    # Every check but those only TLS needs (they run with tls=...).
    assert plan.checks == tuple(c for c in CATALOGUE if c.category != "tls")
    assert plan.profile.name == "ci"  # derandomized, as a test suite wants
    assert plan.timeout is None  # the caller's tests bound the run
    assert not plan.strict
    assert plan.oracle == plan.protocol == "echo"
    assert plan.restart
    assert plan.artifacts is None
    assert plan.server_nofile == SERVER_NOFILE
    assert (
        plan.replay_prefix(plan.targets[0])
        == "reactor-conformance run --reference single --profile ci"
    )


def test_check_server_keywords_become_the_values_of_their_options() -> None:
    values = option_values_of("127.0.0.1:7000", checks=["ECHO-BASIC-1", " ", "ECHO-RESET-*"])
    assert values.target == ["127.0.0.1:7000"]
    assert values.checks == "ECHO-BASIC-1,ECHO-RESET-*"
    assert option_values_of("single", checks=[" "]).checks is None  # a blank name selects nothing
    assert option_values_of("single", load_hosts=["popen"]).load_hosts == ["popen"]
    assert option_values_of("echo {port}").spawn == ["echo {port}"]
