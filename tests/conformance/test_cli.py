"""``reactor-conformance``: exit codes 0, 1, 2, 3, one-line errors, reports and replays."""

from __future__ import annotations

import shlex
import subprocess

import pytest

from conformance.catalogue import CATALOGUE
from conformance.target import free_port
from tests.conformance.support import ASYNCIO_ECHO, broken_spawn, run_cli, spawn_command


def assert_one_line_error(
    result: subprocess.CompletedProcess[str], code: int, *needles: str
) -> None:
    assert result.returncode == code, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_list_names_every_check_with_level_and_spec() -> None:
    result = run_cli("list")
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    assert len(lines) == len(CATALOGUE)
    for line, check in zip(lines, CATALOGUE, strict=True):
        assert line.split()[:2] == [check.id, check.level.value]
        assert check.spec in line


def test_run_with_no_target_passes_against_the_reference_single_server() -> None:
    result = run_cli("run", "-n", "2")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(CATALOGUE)} passed, 0 failed, 0 non-strict" in result.stdout
    assert "reference single server" in result.stdout


def test_run_passes_against_the_asyncio_echo_server() -> None:
    result = run_cli("run", "--spawn", spawn_command(ASYNCIO_ECHO))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(CATALOGUE)} passed, 0 failed" in result.stdout


def test_run_against_a_broken_server_exits_1_with_a_bug_report_and_a_replay() -> None:
    spawn = broken_spawn("truncates_at_nul")
    result = run_cli("run", "--spawn", spawn, "--checks", "ECHO-BASIC-1,ECHO-PARTIAL-2")
    assert result.returncode == 1, result.stdout + result.stderr
    out = result.stdout
    assert "PASS        ECHO-BASIC-1" in out
    assert "FAIL        ECHO-PARTIAL-2" in out
    for needle in (
        "FAILED ECHO-PARTIAL-2 (MUST",
        "Divergence at step",
        "first divergent offset",
        "sent 0x00",
        "sent     (1048576 bytes) @0x",
        "received (",
        "ended: ",
        "1 passed, 1 failed, 0 non-strict",
    ):
        assert needle in out, out
    replay_lines = [line for line in out.splitlines() if line.strip().startswith("replay: ")]
    assert len(replay_lines) == 1
    replay = shlex.split(replay_lines[0].split("replay: ", 1)[1])
    assert replay[:2] == ["reactor-conformance", "run"]
    assert replay[-2:] == ["--checks", "ECHO-PARTIAL-2"]
    # The replay runs just that check, against the same (re-spawned) server.
    again = run_cli(*replay[1:])
    assert again.returncode == 1
    assert "0 passed, 1 failed" in again.stdout


def test_run_non_strict_should_failure_passes_unless_strict() -> None:
    spawn = broken_spawn("ignores_half_close")
    lenient = run_cli("run", "--spawn", spawn, "--checks", "ECHO-HALFCLOSE-2")
    assert lenient.returncode == 0, lenient.stdout + lenient.stderr
    assert "NON-STRICT  ECHO-HALFCLOSE-2" in lenient.stdout
    assert "0 passed, 0 failed, 1 non-strict" in lenient.stdout
    strict = run_cli("run", "--spawn", spawn, "--checks", "ECHO-HALFCLOSE-2", "--strict")
    assert strict.returncode == 1, strict.stdout + strict.stderr
    assert "--strict --checks ECHO-HALFCLOSE-2" in strict.stdout


def test_run_unreachable_target_exits_3_with_one_line() -> None:
    port = free_port()
    result = run_cli("run", "--target", f"127.0.0.1:{port}")
    assert_one_line_error(result, 3, f"cannot connect to 127.0.0.1:{port}", "Connection refused")


def test_run_server_that_never_listens_exits_3_with_one_line() -> None:
    result = run_cli("run", "--spawn", "python -c 'import sys; sys.exit(4)'")
    assert_one_line_error(result, 3, "exited with code 4")


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--target", "nonsense"], "malformed target 'nonsense'"),
        (["--target", "[::1]"], "malformed target"),
        (["--checks", "ECHO-NOPE-9"], "unknown check 'ECHO-NOPE-9'"),
        (["--category", "nope"], "unknown category 'nope'"),
        (["--target", "127.0.0.1:1", "--reference", "single"], "name two targets"),
        (["--reference", "bogus"], "unknown reference model 'bogus'"),
        (["--oracle", "no_such_module_xyz:Oracle"], "cannot import"),
        (["-n", "-1"], "must be 0 or more"),
    ],
)
def test_run_usage_errors_exit_2_with_one_line(argv: list[str], needle: str) -> None:
    assert_one_line_error(run_cli("run", *argv), 2, needle)
