"""The command lines: bad input is one line on stderr and exit code 2."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from conformance import __version__
from tests.helpers import ROOT, ServerProcess, connect, exchange


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, *argv], capture_output=True, text=True, timeout=30, env=env, cwd=ROOT
    )


def assert_usage_error(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode == 2, result
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, lines
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0]


def test_cli_port_in_use_is_a_usage_error() -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = run("-m", "reference", "single", "--port", str(port))
    assert_usage_error(result, f"127.0.0.1:{port}", "address already in use")


def test_cli_unknown_host_is_a_usage_error() -> None:
    result = run("-m", "reference", "single", "--host", "no-such-host.invalid")
    assert_usage_error(result, "no-such-host.invalid", "unknown host")


def test_cli_address_not_on_this_machine_is_a_usage_error() -> None:
    result = run("-m", "reference", "single", "--host", "192.0.2.1")  # TEST-NET-1
    assert_usage_error(result, "192.0.2.1", "not available")


@pytest.mark.parametrize("port", ["70000", "-1", "http"])
def test_cli_bad_port_is_a_usage_error(port: str) -> None:
    assert_usage_error(run("-m", "reference", "single", "--port", port), "--port")


def test_cli_unknown_model_and_handler_are_usage_errors() -> None:
    assert_usage_error(run("-m", "reference", "threaded"), "invalid choice")
    assert_usage_error(run("-m", "reference", "single", "--handler", "chargen"), "invalid choice")


def test_cli_reactor_conformance_serve_runs_a_reference_server() -> None:
    with ServerProcess(["serve", "single"], entry="conformance.fronts.cli") as server:
        with connect(server.address) as sock:
            assert exchange(sock, b"served\0", half_close=True) == b"served\0"
        assert server.signal_and_wait() == 0


def test_cli_version_names_the_package() -> None:
    result = run("-m", "conformance", "--version")
    assert result.returncode == 0
    assert result.stdout.strip().startswith("reactor-conformance ")
    assert __version__ in result.stdout


def run_with_descriptor_limit(limit: int, *argv: str) -> subprocess.CompletedProcess[str]:
    """Run ``python ARGV`` under ``ulimit -n LIMIT``, as a shell user would."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    script = f'ulimit -n {limit} && exec "$@"'
    return subprocess.run(
        ["sh", "-c", script, "sh", sys.executable, *argv],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
        cwd=ROOT,
    )


@pytest.mark.parametrize("mode", ["thread", "process"])
def test_cli_descriptor_limit_too_small_for_the_sub_reactors_is_a_usage_error(mode: str) -> None:
    result = run_with_descriptor_limit(
        40, "-m", "reference", "multi", "--sub-reactors", "30", "--mode", mode
    )
    assert_usage_error(
        result, "too few file descriptors", f"30 sub-reactor {mode}", "limit is 40", "ulimit -n"
    )


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (["--high-water", "4096", "--low-water", "4096"], "--low-water (4096) must be below"),
        (["--low-water", "300000"], "--high-water (262144)"),
        (["--high-water", "0"], "--high-water: must be at least 2"),
        (["--low-water", "0"], "--low-water: must be at least 1"),
        (["--low-water", "-5"], "--low-water"),
        (["--high-water", "64k"], "--high-water: not a whole number"),
    ],
)
def test_cli_bad_water_marks_are_usage_errors(flags: list[str], needle: str) -> None:
    assert_usage_error(run("-m", "reference", "single", *flags), needle)


@pytest.mark.parametrize(
    "model", [["pool"], ["multi", "--mode", "thread"], ["multi", "--mode", "process"]]
)
def test_cli_every_model_checks_its_water_marks(model: list[str]) -> None:
    flags = ["--high-water", "1000", "--low-water", "2000"]
    assert_usage_error(run("-m", "reference", *model, *flags), "must be below --high-water (1000)")
