"""The load under a user's oracle: the run's oracle judges every reply, in every load process.

The oracles are ``tests/conformance/example_oracles.py``; the server that is
right under them is ``fixtures/servers/upper_echo.py``, and the reference
echo server is wrong under them.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from conformance import check_server
from conformance.load import ErrorKey, Faults, LoadSpec, run_load
from conformance.load.spec import Judging, judging
from conformance.oracle import DiscardOracle, EchoOracle
from conformance.protocols import load_model
from conformance.run.results import Verdict
from conformance.targets.target import RunningTarget, TargetSpec
from tests.conformance.example_oracles import UpperEchoOracle
from tests.conformance.support import SERVERS, run_cli, serving, spawn_command
from tests.helpers import ServerProcess

ORACLES = "tests.conformance.example_oracles"
UPPER = f"{ORACLES}:UpperEchoOracle"
UPPER_SPAWN = spawn_command(SERVERS / "upper_echo.py")
LOAD_CHECKS = ["ECHO-LOAD-1", "ECHO-LOAD-2", "ECHO-LOAD-3"]
# A host that starts but cannot import what is not sent to it: no site-packages
# (-S), no current directory and no PYTHONPATH on sys.path (-I).
_BARE_HOST = f"popen//python={sys.executable} -I -S"


class EchoThatShouts(EchoOracle):
    """A user's subclass of echo that changes what is owed, not ``expected_reply``."""

    def sent(self, data: bytes) -> None:
        super().sent(data.upper())


@pytest.fixture(scope="module")
def upper() -> Iterator[RunningTarget]:
    with serving(TargetSpec.from_options(None, UPPER_SPAWN, None)) as running:
        yield running


@pytest.fixture(scope="module")
def single() -> Iterator[ServerProcess]:
    with ServerProcess(["single"]) as server:
        yield server


def test_UpperEchoOracle_is_pending_until_the_capitals_came_back() -> None:
    o = UpperEchoOracle()
    o.sent(b"ab1")
    o.received(b"A")
    assert o.verdict().pending
    o.received(b"B1")
    assert o.verdict().passed
    o.sent(b"cd")
    o.received(b"Cd")
    verdict = o.verdict()
    assert verdict.failed
    assert (verdict.offset, verdict.reason) == (4, "byte 4 differs: expected 0x44, received 0x64")


def test_judging_compares_bytes_where_the_oracle_says_what_is_owed_else_asks_its_verdict() -> None:
    assert judging(load_model("echo")) == (EchoOracle, Judging.ECHO)
    assert judging(load_model("oracle:echo")) == (EchoOracle, Judging.ECHO)
    assert judging(load_model("oracle:discard")) == (DiscardOracle, Judging.REPLY)
    assert judging(load_model("discard")) == (DiscardOracle, Judging.REPLY)
    assert judging(load_model(f"oracle:{ORACLES}:UpperEchoReplyOracle"))[1] is Judging.REPLY
    assert judging(load_model(f"oracle:{UPPER}"))[1] is Judging.VERDICT
    # Inheriting echo's expected_reply says nothing about what this oracle owes.
    assert judging(load_model(f"oracle:{__name__}:EchoThatShouts"))[1] is Judging.VERDICT


def test_run_load_judges_each_reply_by_the_oracles_verdict(upper: RunningTarget) -> None:
    host, port = upper.address.host, upper.address.port
    spec = LoadSpec(
        host, port, connections=10, rounds=30, size=100, duration=30, model=f"oracle:{UPPER}"
    )
    result = run_load(spec)
    assert result.ok, result.to_data()
    assert result.round_trips == 10 * 30
    assert result.bytes_verified == 10 * 30 * 100
    assert result.server_alive is True


def test_run_load_with_faults_judges_every_connection_by_the_oracle(upper: RunningTarget) -> None:
    host, port = upper.address.host, upper.address.port
    faults = Faults(reset=0.03, half_close=0.03, slow_reader=0.01, connect_storm=20)
    spec = LoadSpec(
        host, port, connections=20, duration=1.0, faults=faults, model=f"oracle:{UPPER}"
    )
    result = run_load(spec)
    assert result.ok, result.to_data()
    assert result.injected["half-close"] > 0, result.to_data()
    assert result.observed["half-close-echoed"] == result.injected["half-close"]
    assert result.observed["slow-reader-served"] == result.injected["slow-reader"]


def test_run_load_streams_with_an_oracle_that_says_what_is_owed(upper: RunningTarget) -> None:
    host, port = upper.address.host, upper.address.port
    oracle = f"{ORACLES}:UpperEchoReplyOracle"
    spec = LoadSpec(
        host, port, connections=4, mode="stream", duration=0.5, model=f"oracle:{oracle}"
    )
    result = run_load(spec)
    assert result.ok, result.to_data()
    assert result.bytes_verified > 100_000


def test_run_load_in_several_processes_makes_the_oracle_from_its_name(
    upper: RunningTarget,
) -> None:
    host, port = upper.address.host, upper.address.port
    spec = LoadSpec(
        host, port, connections=6, rounds=20, duration=30, procs=2, model=f"oracle:{UPPER}"
    )
    result = run_load(spec)
    assert result.ok, result.to_data()
    assert result.round_trips == 6 * 20


@pytest.mark.parametrize("oracle", [UPPER, f"{ORACLES}:UpperEchoReplyOracle"])
def test_run_load_under_the_upper_oracle_fails_an_echo_server_at_a_byte(
    single: ServerProcess, oracle: str
) -> None:
    host, port = single.address
    result = run_load(LoadSpec(host, port, connections=3, duration=0.5, model=f"oracle:{oracle}"))
    assert result.errors[ErrorKey("mismatch")] >= 1, result.to_data()
    first = result.first_error
    assert first is not None
    assert re.fullmatch(r"byte \d+ differs.*", first["detail"]), first
    assert isinstance(first["offset"], int)


@pytest.mark.parametrize(
    ("name", "method", "error"),
    [("ReceivedRaises", "received", "RuntimeError"), ("VerdictRaises", "verdict", "ZeroDivision")],
)
def test_run_load_ends_with_what_the_oracle_raised_and_judges_nothing(
    upper: RunningTarget, name: str, method: str, error: str
) -> None:
    host, port = upper.address.host, upper.address.port
    spec = LoadSpec(host, port, connections=4, duration=5.0, model=f"oracle:{ORACLES}:{name}")
    result = run_load(spec)
    assert result.oracle_error is not None, result.to_data()
    assert f"raised in {method}(): {error}" in result.oracle_error
    assert not result.ok
    assert result.seconds < 2.0  # Ended at the oracle's error, not at the end of the time.
    assert not result.errors  # Not the server's doing.
    assert result.server_alive is None  # No probe: nothing can be judged.
    assert "ORACLE ERROR" in result.summary_line()


def test_run_load_says_when_an_oracle_cannot_judge_a_reply_as_it_comes(
    upper: RunningTarget,
) -> None:
    host, port = upper.address.host, upper.address.port
    oracle = f"{ORACLES}:JudgesAtTheEnd"
    spec = LoadSpec(
        host,
        port,
        connections=3,
        rounds=2,
        duration=10,
        drain_timeout=1.0,
        model=f"oracle:{oracle}",
    )
    result = run_load(spec)
    assert result.unjudged is not None, result.to_data()
    assert "cannot judge a reply as it comes" in result.unjudged
    assert "was PASS once told the exchange was over" in result.unjudged
    assert not result.errors  # The server is not blamed.
    assert not result.ok
    assert result.server_alive is None


def _report(path: Path) -> dict[str, dict[str, str]]:
    (target,) = json.loads(path.read_text())["targets"]
    return {r["id"]: r for r in target["results"]}


@pytest.mark.timeout(240)
def test_load_checks_pass_a_server_that_is_right_under_the_runs_oracle(tmp_path: Path) -> None:
    report = tmp_path / "r.json"
    result = run_cli(
        "run", "--spawn", UPPER_SPAWN, "--oracle", UPPER, "--checks", ",".join(LOAD_CHECKS),
        "--report-json", str(report),
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    results = _report(report)
    assert {check: results[check]["verdict"] for check in LOAD_CHECKS} == dict.fromkeys(
        LOAD_CHECKS, "PASS"
    )


@pytest.mark.timeout(240)
def test_load_checks_fail_the_echo_server_under_the_upper_oracle_at_a_byte(
    tmp_path: Path,
) -> None:
    report = tmp_path / "r.json"
    result = run_cli(
        "run", "--reference", "single", "--oracle", UPPER, "--checks", ",".join(LOAD_CHECKS),
        "--report-json", str(report),
    )  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    results = _report(report)
    for check in LOAD_CHECKS:
        assert results[check]["verdict"] in ("FAIL", "NON-STRICT"), results[check]
        assert re.search(
            r"first: mismatch on connection \d+ at byte offset \d+: byte \d+ differs: "
            r"expected 0x[0-9a-f]{2}, received 0x[0-9a-f]{2}",
            results[check]["details"],
        ), results[check]["details"]


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("name", "method"), [("ReceivedRaises", "received"), ("VerdictRaises", "verdict")]
)
def test_a_load_check_whose_oracle_raises_is_an_error(name: str, method: str) -> None:
    results = check_server(UPPER_SPAWN, checks=["ECHO-LOAD-1"], oracle=f"{ORACLES}:{name}")
    (target,) = results.targets
    outcome = target.result(results.checks[0])
    assert outcome.verdict is Verdict.ERROR, outcome.details
    assert f"OracleError: the oracle {ORACLES}:{name} raised in {method}()" in outcome.reason
    assert not results.ok()


@pytest.mark.timeout(120)
def test_a_load_check_is_skipped_when_its_oracle_cannot_judge_a_reply_as_it_comes() -> None:
    results = check_server(UPPER_SPAWN, checks=["ECHO-LOAD-1"], oracle=f"{ORACLES}:JudgesAtTheEnd")
    (target,) = results.targets
    outcome = target.result(results.checks[0])
    assert outcome.verdict is Verdict.SKIPPED, outcome.details
    assert "the load could not be judged" in outcome.reason
    assert "cannot judge a reply as it comes" in outcome.reason


@pytest.mark.timeout(180)
def test_load_hosts_judge_with_the_runs_oracle_where_they_can_import_it() -> None:
    results = check_server(UPPER_SPAWN, checks=["ECHO-LOAD-1"], oracle=UPPER, load_hosts=["popen"])
    (target,) = results.targets
    outcome = target.result(results.checks[0])
    assert outcome.verdict is Verdict.PASS, outcome.details


@pytest.mark.timeout(180)
def test_a_load_host_that_cannot_import_the_oracle_says_so(single: ServerProcess) -> None:
    host, port = single.address
    results = check_server(
        f"{host}:{port}", checks=["ECHO-LOAD-1"], oracle=UPPER, load_hosts=[_BARE_HOST]
    )
    (target,) = results.targets
    outcome = target.result(results.checks[0])
    assert outcome.verdict is Verdict.SKIPPED, outcome.details  # Not measured, not failed.
    assert f"the oracle {UPPER} is not importable on this host" in outcome.reason
    assert "must be importable there" in outcome.reason
