"""Spawned servers: the listening line waited for under a deadline, the group stopped."""

from __future__ import annotations

import io
import os
import re
import select
import shlex
import socket
import sys
import time

import pytest

from conformance.errors import TargetError
from conformance.targets import procfs
from conformance.targets.line_reader import HEAD, LineReader, parse_listening
from conformance.targets.spawn import spawn, spawn_listening

#: Listens, says so after a line of chatter, and echoes one connection's bytes.
LISTENS = (
    "import socket, sys\n"
    "s = socket.create_server(('127.0.0.1', 0))\n"
    "print('starting up', flush=True)\n"
    "print('listening on 127.0.0.1:%d' % s.getsockname()[1], flush=True)\n"
    "print('a log line', file=sys.stderr, flush=True)\n"
    "c, _ = s.accept()\n"
    "c.sendall(c.recv(100))\n"
    "r, w = __import__('os').pipe(); __import__('os').read(r, 1)\n"
)
#: Blocks forever, printing nothing (stopped by the test).
SILENT = "import os; r, w = os.pipe(); os.read(r, 1)"


def _python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("listening on 127.0.0.1:7000", ("127.0.0.1", 7000)),
        ("listening on [::1]:7001", ("::1", 7001)),
        ("INFO server: listening on localhost:1 ", ("localhost", 1)),
        ("listening soon", None),
        ("listening on 127.0.0.1:7000 and more", None),
    ],
)
def test_parse_listening_reads_host_and_port(line: str, expected: tuple[str, int] | None) -> None:
    assert parse_listening(line) == expected


def test_spawn_listening_returns_the_address_it_printed() -> None:
    with spawn_listening(_python(LISTENS), timeout=10.0) as server:
        assert server.address[0] == "127.0.0.1"
        assert server.stdout.lines()[0] == "starting up"
        with socket.create_connection(server.address, timeout=10.0) as sock:
            sock.sendall(b"ping")
            assert sock.recv(100) == b"ping"
        assert server.stderr.wait_for(re.compile("a log line"), 10.0) is not None
        assert server.alive()
    assert not server.alive()


def test_spawn_listening_reports_a_command_that_exits_first_with_its_stderr() -> None:
    code = "import sys; sys.stderr.write('cannot bind: boom\\n'); sys.exit(7)"
    start = time.monotonic()
    with pytest.raises(TargetError, match=r"exited with code 7; stderr: cannot bind: boom$"):
        spawn_listening(_python(code), timeout=10.0)
    assert time.monotonic() - start < 5  # It did not wait for the deadline.


def test_spawn_listening_gives_up_at_its_deadline_and_stops_the_process() -> None:
    before = set(procfs.children(os.getpid()) or [])
    start = time.monotonic()
    with pytest.raises(TargetError, match=r"did not listen within 0.5s"):
        spawn_listening(_python(SILENT), timeout=0.5)
    assert time.monotonic() - start < 5
    assert set(procfs.children(os.getpid()) or []) <= before  # Stopped and reaped.


def test_spawn_reports_a_missing_program() -> None:
    with pytest.raises(TargetError, match="cannot start no-such-server-xyz --port 1"):
        spawn("no-such-server-xyz --port 1")


def test_spawn_splits_a_string_as_a_shell_would() -> None:
    code = "import sys; print('listening on 127.0.0.1:%s' % sys.argv[1], flush=True)"
    with spawn(f"{shlex.quote(sys.executable)} -c {shlex.quote(code)} '12 34'") as server:
        assert server.argv[-1] == "12 34"
        with pytest.raises(TargetError, match="exited with code 0"):
            server.wait_listening(10.0)  # "12 34" is no port: the line does not match.


def test_Spawned_stop_kills_the_group_including_a_child_that_ignores_SIGTERM() -> None:
    code = (
        "import signal, subprocess, sys\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import os; r, w = os.pipe(); "
        "os.read(r, 1)'])\n"
        "print('child', child.pid, flush=True)\n"
        "print('listening on 127.0.0.1:1', flush=True)\n"
        "child.wait()\n"
    )
    server = spawn_listening(_python(code), timeout=10.0)
    match = server.stdout.wait_for(re.compile(r"child (\d+)"), 10.0)
    assert match is not None
    child = int(match[1])
    assert procfs.parent_pid(child) == server.pid
    child_exit = os.pidfd_open(child)  # Readable once the child exits.
    try:
        start = time.monotonic()
        assert server.stop(grace=0.5) == -9
        assert time.monotonic() - start < 5
        readable, _, _ = select.select([child_exit], [], [], 10.0)
        assert readable, "the server's child outlived the stop"
    finally:
        os.close(child_exit)


def test_Spawned_address_before_the_line_is_an_error() -> None:
    with spawn(_python(SILENT)) as server, pytest.raises(RuntimeError, match="wait_listening"):
        _ = server.address


def test_LineReader_keeps_the_head_and_the_tail_and_waits_from_a_mark() -> None:
    text = "".join(f"line {i}\n" for i in range(100))
    reader = LineReader(io.StringIO(text), keep=5)
    reader.start()
    reader.join(10)
    assert reader.ended
    assert len(reader) == 100
    assert reader.lines() == [f"line {i}" for i in range(95, 100)]
    pattern = re.compile(r"line (\d+)")
    first = reader.wait_for(pattern, 0.0)
    assert first is not None
    assert first[1] == "0"
    later = reader.wait_for(pattern, 0.0, start=HEAD)  # Lines HEAD..94 were dropped.
    assert later is not None
    assert later[1] == "95"
    assert reader.wait_for(re.compile("line 50$"), 0.0) is None
