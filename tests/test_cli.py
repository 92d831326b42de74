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
    with ServerProcess(["serve", "single"], entry="conformance.cli") as server:
        with connect(server.address) as sock:
            assert exchange(sock, b"served\0", half_close=True) == b"served\0"
        assert server.signal_and_wait() == 0


def test_cli_version_names_the_package() -> None:
    result = run("-m", "conformance", "--version")
    assert result.returncode == 0
    assert result.stdout.strip().startswith("reactor-conformance ")
    assert __version__ in result.stdout
