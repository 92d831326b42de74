"""Targets: addresses parsed strictly; spawned servers waited for, then stopped by PID."""

from __future__ import annotations

import json
import os
import shlex
import sys
import time

import pytest

from conformance.errors import TargetError, UsageError
from conformance.targets.target import (
    Address,
    TargetKind,
    TargetSpec,
    free_port,
    parse_address,
    probe,
    start_target,
)
from tests.conformance.support import ASYNCIO_ECHO, serving, spawn_command


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:7000", Address("127.0.0.1", 7000)),
        ("localhost:1", Address("localhost", 1)),
        ("[::1]:7000", Address("::1", 7000)),
        ("[fe80::1%eth0]:65535", Address("fe80::1%eth0", 65535)),
    ],
)
def test_parse_address_accepts_host_port_and_bracketed_ipv6(text: str, expected: Address) -> None:
    assert parse_address(text) == expected
    assert parse_address(str(expected)) == expected


@pytest.mark.parametrize(
    "text", ["", "7000", "127.0.0.1", "::1:7000", "host:port", "host:0", "host:70000", "[::1]"]
)
def test_parse_address_rejects_malformed_text(text: str) -> None:
    with pytest.raises(UsageError, match="malformed target"):
        parse_address(text)


def test_TargetSpec_defaults_to_the_reference_single_server() -> None:
    assert TargetSpec.from_options(None, None, None) == TargetSpec(TargetKind.REFERENCE, "single")


def test_TargetSpec_rejects_two_targets_and_unknown_models() -> None:
    with pytest.raises(UsageError, match="--target and --spawn"):
        TargetSpec.from_options("127.0.0.1:1", "cmd", None)
    with pytest.raises(UsageError, match="unknown reference model 'bogus'"):
        TargetSpec.from_options(None, None, "bogus")
    with pytest.raises(UsageError, match="cannot split"):
        TargetSpec.from_options(None, "say 'unterminated", None)


def test_TargetSpec_options_name_the_same_target_again() -> None:
    spec = TargetSpec.from_options(None, "server --port {port}", None)
    assert TargetSpec.from_options(*_as_triple(spec.options())) == spec


def _as_triple(options: list[str]) -> tuple[str | None, str | None, str | None]:
    flag, value = options
    return (
        value if flag == "--target" else None,
        value if flag == "--spawn" else None,
        value if flag == "--reference" else None,
    )


def test_start_target_with_an_address_fails_when_nothing_listens() -> None:
    port = free_port()
    with pytest.raises(TargetError, match=f"cannot connect to 127.0.0.1:{port}"):
        start_target(TargetSpec(TargetKind.ADDRESS, f"127.0.0.1:{port}"))


def test_start_target_replaces_port_and_stops_the_server_by_pid() -> None:
    with serving(TargetSpec(TargetKind.SPAWN, spawn_command(ASYNCIO_ECHO))) as running:
        assert running.pid is not None
        assert running.address.host == "127.0.0.1"
        assert probe(running.address) is None
        pid = running.pid
    assert running.proc is not None
    assert running.proc.returncode is not None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_start_target_reads_the_listening_line_of_a_reference_server() -> None:
    with serving(TargetSpec.default()) as running:
        assert running.address.port != 0
        assert probe(running.address) is None
    assert running.proc is not None
    assert running.proc.returncode == 0  # Stopped cleanly by SIGTERM.


def test_start_target_reports_a_command_that_exits_with_its_stderr() -> None:
    code = "import sys; sys.stderr.write('cannot bind: boom\\n'); sys.exit(7)"
    spec = TargetSpec(TargetKind.SPAWN, shlex.join([sys.executable, "-c", code]))
    with pytest.raises(TargetError, match=r"exited with code 7; stderr: cannot bind: boom"):
        start_target(spec)


def test_start_target_reports_a_missing_program() -> None:
    with pytest.raises(TargetError, match="cannot start no-such-server-xyz"):
        start_target(TargetSpec(TargetKind.SPAWN, "no-such-server-xyz --port {port}"))


def test_start_target_gives_up_on_a_server_that_never_listens_within_its_deadline() -> None:
    # Prints nothing and never listens; stdin is closed, so reading it returns at once,
    # then the process waits on a pipe that never delivers (bounded by the stop below).
    code = "import os; r, w = os.pipe(); os.read(r, 1)"
    spec = TargetSpec(TargetKind.SPAWN, shlex.join([sys.executable, "-c", code]))
    start = time.monotonic()
    with pytest.raises(TargetError, match="did not listen within 1s"):
        start_target(spec, start_timeout=1.0)
    assert time.monotonic() - start < 10


def test_RunningTarget_kills_a_server_that_ignores_SIGTERM() -> None:
    code = (
        "import signal, socket, os\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "s = socket.create_server(('127.0.0.1', 0))\n"
        "print('listening on 127.0.0.1:%d' % s.getsockname()[1], flush=True)\n"
        "r, w = os.pipe(); os.read(r, 1)\n"
    )
    running = start_target(TargetSpec(TargetKind.SPAWN, shlex.join([sys.executable, "-c", code])))
    start = time.monotonic()
    code_after = running.stop(grace=1.0)
    assert code_after == -9
    assert time.monotonic() - start < 5


def test_TargetKind_compares_and_serialises_as_its_string() -> None:
    spec = TargetSpec.from_options(None, "server --port {port}", None)
    assert spec.kind == "spawn"  # Code and reports that compare with the string still work.
    assert spec.kind is TargetKind.SPAWN
    assert json.dumps({"kind": spec.kind}) == '{"kind": "spawn"}'
    assert TargetSpec("reference", "pool") == TargetSpec(TargetKind.REFERENCE, "pool")  # type: ignore[arg-type]
    assert TargetSpec("reference", "pool").kind is TargetKind.REFERENCE  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="'bogus' is not a valid TargetKind"):
        TargetSpec("bogus", "x")  # type: ignore[arg-type]
