"""What the engine does when a target exits, stops answering, or the suite itself fails.

Real servers, real processes: a broken server that exits on a reset, a
listening socket nobody serves, an oracle whose own code raises.
"""

from __future__ import annotations

import json
import os
import signal
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import pytest

from conformance.fronts.api import check_server
from conformance.oracle import EchoOracle
from conformance.run.results import Verdict
from conformance.targets.health import Board, describe_exit
from conformance.targets.keeper import Keeper
from conformance.targets.target import Address, TargetKind, TargetSpec, start_target
from conformance.targets.target_state import Down, TargetEventKind, TargetState, TargetStatus
from tests.conformance.support import SERVERS, broken_spawn, run_cli, spawn_command

HOSTILE = SERVERS / "hostile"

CRASHES = broken_spawn("crashes_on_reset")


def test_describe_exit_names_the_code_or_the_signal() -> None:
    assert describe_exit(1) == "exited with code 1"
    assert describe_exit(-13) == "exited with signal 13 (SIGPIPE)"
    assert describe_exit(-9) == "exited with signal 9 (SIGKILL)"


@pytest.mark.timeout(60)
def test_keeper_records_an_exit_with_its_stderr_and_restarts_the_target(tmp_path: Path) -> None:
    spec = TargetSpec(TargetKind.SPAWN, CRASHES)
    board = Board(tmp_path)
    keeper = Keeper("t", board, start_target(spec), lambda: start_target(spec))
    try:
        first = board.state("t")
        assert first is not None
        assert first.status is TargetStatus.UP
        assert first.generation == 0
        assert first.pid is not None
        os.kill(first.pid, signal.SIGUSR1)  # Python ignores SIGPIPE itself.
        ended = board.exit_during("t", 0, first.pid, wait=10.0, exiting=10.0)
        assert ended is not None
        assert ended.how == "exited with signal 10 (SIGUSR1)"
        assert ended.restarted
        again = board.wait_ready("t", timeout=30.0)
        assert isinstance(again, TargetState), again
        assert again.generation == 1
        assert again.pid != first.pid
        with socket.create_connection((again.host, again.port), timeout=5.0) as sock:
            sock.settimeout(5.0)
            sock.sendall(b"hello")
            assert sock.recv(5) == b"hello"
        (event,) = board.events("t")
        assert (event.kind, event.outcome) == (TargetEventKind.EXITED, "restarted (1 of at most 5)")
    finally:
        keeper.stop()


@pytest.mark.timeout(60)
def test_keeper_without_restarts_leaves_the_target_down(tmp_path: Path) -> None:
    spec = TargetSpec(TargetKind.SPAWN, CRASHES)
    board = Board(tmp_path)
    keeper = Keeper("t", board, start_target(spec), lambda: start_target(spec), restarts=False)
    try:
        state = board.state("t")
        assert state is not None
        assert state.pid is not None
        os.kill(state.pid, signal.SIGKILL)
        assert board.exit_during("t", 0, state.pid, wait=10.0, exiting=10.0) is not None
        why = board.wait_ready("t", timeout=10.0)
        assert isinstance(why, Down), why
        assert why.how == "exited with signal 9 (SIGKILL)"
        assert why.reason == "--no-restart"
    finally:
        keeper.stop()


def _verdicts(report: dict[str, Any]) -> dict[str, str]:
    (target,) = report["targets"]
    return {r["id"]: r["verdict"] for r in target["results"]}


@pytest.mark.timeout(240)
def test_an_exit_fails_the_check_it_happened_in_and_the_target_is_restarted(
    tmp_path: Path,
) -> None:
    report = tmp_path / "r.json"
    junit = tmp_path / "junit.xml"
    result = run_cli(
        "run", "--spawn", CRASHES, "--checks", "ECHO-BASIC-1,ECHO-RESET-2,ECHO-CPU-1",
        "--report-json", str(report), "--junitxml", str(junit),
    )  # fmt: skip
    out = result.stdout
    assert result.returncode == 1, out + result.stderr
    assert "the run ends within at most" in out
    assert "TargetExited: the target exited with code 1 during this check" in out
    assert "it is restarted for the next check (1 of at most 5)" in out
    assert "ConnectionResetError" in out  # its last stderr lines
    assert "target crashes_on_reset exited with code 1 during ECHO-RESET-2; restarted" in out
    data = json.loads(report.read_text())
    assert _verdicts(data) == {
        "ECHO-BASIC-1": "PASS",
        "ECHO-RESET-2": "FAIL",
        "ECHO-CPU-1": "PASS",  # after the restart
    }
    (event,) = data["targets"][0]["events"]
    assert (event["kind"], event["check"]) == ("exited", "ECHO-RESET-2")
    assert any("ConnectionResetError" in line for line in event["stderr"])
    properties = [
        p.get("value", "")
        for p in ElementTree.parse(junit).iter("property")
        if p.get("name") == "conformance_target_event"
    ]
    assert properties == [
        "crashes_on_reset: exited with code 1 during ECHO-RESET-2; restarted (1 of at most 5)"
    ]
    # Its stderr is kept beside the report.
    log = tmp_path / "r-artifacts" / "crashes_on_reset.stderr.log"
    assert "ConnectionResetError" in log.read_text()


@pytest.mark.timeout(240)
def test_no_restart_skips_the_checks_after_an_exit(tmp_path: Path) -> None:
    report = tmp_path / "r.json"
    result = run_cli(
        "run", "--spawn", CRASHES, "--checks", "ECHO-RESET-2,ECHO-RESET-3,ECHO-CPU-1",
        "--no-restart", "--report-json", str(report),
    )  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    assert "it is not restarted: the remaining checks are skipped" in result.stdout
    data = json.loads(report.read_text())
    assert _verdicts(data) == {
        "ECHO-RESET-2": "FAIL",
        "ECHO-RESET-3": "SKIPPED",
        "ECHO-CPU-1": "SKIPPED",
    }
    skipped = data["targets"][0]["results"][1]["details"]
    assert "exited with code 1 during ECHO-RESET-2 and was not restarted: --no-restart" in (skipped)


@pytest.fixture
def silent_listener() -> Iterator[Address]:
    """A socket that listens and never accepts: connects complete, nothing answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        yield Address("127.0.0.1", sock.getsockname()[1])


@pytest.mark.timeout(240)
def test_a_target_that_answers_nothing_is_reported_once_and_exits_3(
    silent_listener: Address, tmp_path: Path
) -> None:
    report = tmp_path / "r.json"
    result = run_cli(
        "run", "--target", str(silent_listener), "--checks", "ECHO-BASIC-1,ECHO-BASIC-3",
        "--report-json", str(report),
    )  # fmt: skip
    out = result.stdout
    assert result.returncode == 3, out + result.stderr
    assert out.count("TargetUnreachable") == 1
    assert "never served a check: the target is unreachable" in out
    data = json.loads(report.read_text())
    verdicts = sorted(_verdicts(data).values())
    assert verdicts == ["FAIL", "SKIPPED"]
    (event,) = data["targets"][0]["events"]
    assert event["kind"] == "unreachable"


class RaisingOracle(EchoOracle):
    """An oracle whose own code fails: a fault in the suite's side, not the server's."""

    def received(self, data: bytes) -> None:
        raise RuntimeError("this oracle cannot read")


@pytest.mark.timeout(120)
def test_a_fault_in_the_suite_is_an_error_verdict_and_the_run_goes_on() -> None:
    results = check_server(
        "single",
        checks=["ECHO-BASIC-1", "ECHO-BASIC-3"],
        oracle=f"{__name__}:RaisingOracle",
    )
    target = results.targets[0]
    verdicts = [target.result(c).verdict for c in results.checks]
    assert verdicts == [Verdict.ERROR, Verdict.ERROR]
    reason = target.result(results.checks[0]).reason
    assert "RuntimeError: this oracle cannot read" in reason
    assert "error in the suite's own code" in reason
    assert not results.ok()


@pytest.mark.timeout(120)
def test_timeout_caps_the_run_and_what_it_did_not_measure_is_skipped(tmp_path: Path) -> None:
    report = tmp_path / "r.json"
    never_reads = spawn_command(HOSTILE / "never_reads.py")
    result = run_cli(
        "run", "--spawn", never_reads, "--timeout", "2",
        "--checks", "ECHO-BASIC-1,ECHO-BASIC-3", "--report-json", str(report),
    )  # fmt: skip
    assert "(--timeout 2s)" in result.stdout
    # Nothing was measured to the end: not a passing run.
    assert result.returncode == 1, result.stdout + result.stderr
    data = json.loads(report.read_text())
    results = {r["id"]: r for r in data["targets"][0]["results"]}
    assert results["ECHO-BASIC-1"]["verdict"] == "SKIPPED"  # cut short, not failed
    assert "not run to the end: the run's --timeout of 2s" in results["ECHO-BASIC-1"]["details"]
    assert results["ECHO-BASIC-3"]["verdict"] == "SKIPPED"
    assert "not run: the run's --timeout of 2s was spent" in results["ECHO-BASIC-3"]["details"]
    assert data["duration"] < 30  # The cap, not BASIC-1's own 60 s deadline.


@pytest.mark.parametrize("value", ["nan", "inf", "0", "-1", "soon"])
def test_a_timeout_that_is_not_a_positive_number_is_a_usage_error(value: str) -> None:
    result = run_cli("run", "--timeout", value, "--checks", "ECHO-BASIC-1")
    assert result.returncode == 2
    assert "--timeout" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_artifacts_directory_that_cannot_be_made_is_a_usage_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = run_cli("run", "--artifacts", str(blocker / "sub"), "--checks", "ECHO-BASIC-1")
    assert result.returncode == 2
    assert "--artifacts" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_failing_property_scenario_is_saved_in_the_artifacts_directory(tmp_path: Path) -> None:
    artifacts = tmp_path / "kept"
    result = run_cli(
        "run", "--spawn", broken_spawn("truncates_at_nul"), "--profile", "ci",
        "--checks", "PROP-ECHO-1", "--artifacts", str(artifacts),
        timeout=300,
    )  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    saved = list(artifacts.glob("scenario-*.json"))
    assert saved, result.stdout
    assert str(saved[0]) in result.stdout
