"""The hostile servers in ``fixtures/servers/hostile/`` really misbehave as they say.

Each test starts one server as the suite does (its own process group, the
``listening on`` line waited for) and shows its behaviour happening: a
connect that hangs, a reply that never comes, a frozen or dead process, a
refused port. Every wait is for an event under a deadline (a socket timeout,
an exit, a ``/proc`` reading that changes); every server is killed by its
process group at teardown, and whatever left the group (a daemon, a worker in
a session of its own) by its PID, found by the port it listens on.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conformance.targets import procfs
from conformance.targets.spawn import Spawned, spawn_listening
from conformance.targets.strays import listeners, start_ticks, stop_processes, wait_gone
from tests.helpers import ROOT, connect, exchange, recv_until_eof, reset

HOSTILE = ROOT / "fixtures" / "servers" / "hostile"

NAMES = sorted(path.stem for path in HOSTILE.glob("[!_]*.py"))

#: A hostile server started with some options.
Start = Callable[..., Spawned]


@pytest.fixture
def start() -> Iterator[Start]:
    """Start ``fixtures/servers/hostile/NAME.py OPTIONS`` on a free port; kill them all after."""
    started: list[Spawned] = []

    def start_server(name: str, *options: str) -> Spawned:
        script = HOSTILE / f"{name}.py"
        argv = [sys.executable, str(script), "--port", "0", *options]
        spawned = spawn_listening(argv, timeout=20.0, cwd=ROOT, keep=None)
        started.append(spawned)
        return spawned

    yield start_server
    for spawned in started:
        spawned.kill()
        if spawned.started is not None:
            stop_processes(listeners(*spawned.address, spawned.started), grace=2.0)


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``condition`` until it holds; fail saying ``what`` was awaited after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.02)


def echo_once(address: tuple[str, int], payload: bytes = b"hello") -> None:
    """One connection: send ``payload``, read its echo, half-close, read the server's EOF."""
    with connect(address, timeout=10.0) as sock:
        assert exchange(sock, payload, half_close=True, timeout=10.0) == payload


def send_until_stalled(sock: socket.socket, chunk: bytes, *, stall: float, limit: int) -> int:
    """Send ``chunk`` again and again until no byte goes out for ``stall`` seconds.

    Returns:
        The bytes sent: fewer than ``limit`` when the peer stopped reading.
    """
    sock.settimeout(stall)
    sent = 0
    while sent < limit:
        try:
            sent += sock.send(chunk)
        except TimeoutError:
            break
    return sent


def process_state(pid: int) -> str:
    """The state letter of ``/proc/PID/stat`` (``R``, ``S``, ``T``...)."""
    text = (Path("/proc") / str(pid) / "stat").read_text()
    return text[text.rindex(")") + 2]


def descriptors(pid: int) -> int:
    count = procfs.open_descriptors(pid)
    assert count is not None, f"cannot read /proc/{pid}/fd"
    return count


def descriptor_limit(pid: int) -> int:
    """The soft ``Max open files`` of ``/proc/PID/limits``."""
    text = (Path("/proc") / str(pid) / "limits").read_text()
    match = re.search(r"^Max open files\s+(\d+)", text, re.MULTILINE)
    assert match is not None, text
    return int(match.group(1))


def connects(address: tuple[str, int]) -> str:
    """Try a connect to ``address`` (closed again at once): ``connected``, ``refused`` or ``reset``.

    A reset comes when the listener closes during the handshake.
    """
    try:
        socket.create_connection(address, timeout=5.0).close()
    except ConnectionRefusedError:
        return "refused"
    except ConnectionResetError:
        return "reset"
    return "connected"


def exit_code(spawned: Spawned, timeout: float = 10.0) -> int:
    """Wait for the server's own exit; fail if it still runs after ``timeout``."""
    try:
        return spawned.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"{spawned.argv[1]} still runs after {timeout}s") from None


def stderr_of(spawned: Spawned) -> str:
    """Every stderr line of a server that exited."""
    spawned.stderr.join(10.0)
    return "\n".join(spawned.stderr.lines())


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", NAMES)
def test_hostile_server_stops_on_sigterm(start: Start, name: str) -> None:
    spawned = start(name)
    assert spawned.stop(grace=5.0) == 0


def test_hostile_servers_are_all_here() -> None:
    assert NAMES == [
        "closes_at_once",
        "crashes_on_reset",
        "daemonizes",
        "dies_of_sigpipe",
        "echoes_lines_only",
        "escapes_group",
        "exits_after",
        "freezes_after",
        "leaks_to_emfile",
        "listens_ipv4_mapped",
        "never_accepts",
        "never_reads",
        "rate_limits",
        "slow_first_reply",
        "stops_after_64k",
    ]


@pytest.mark.timeout(60)
def test_never_accepts_hangs_connects_once_the_backlog_is_full(start: Start) -> None:
    spawned = start("never_accepts")
    held: list[socket.socket] = []
    try:
        hung = False
        for _ in range(64):
            try:
                held.append(connect(spawned.address, timeout=1.0))
            except TimeoutError:
                hung = True
                break
        assert hung, f"{len(held)} connects completed"
        # Linux queues backlog + 1 handshakes (backlog 8), then drops SYNs.
        assert 1 <= len(held) <= 10
        held[0].sendall(b"hello")
        held[0].settimeout(0.0)
        with pytest.raises(BlockingIOError):  # A second after sending: no echo.
            held[0].recv(100)
    finally:
        for sock in held:
            sock.close()


@pytest.mark.timeout(60)
def test_never_reads_accepts_and_never_answers(start: Start) -> None:
    spawned = start("never_reads")
    before = descriptors(spawned.pid)
    with connect(spawned.address) as first, connect(spawned.address) as second:
        wait_until(
            lambda: descriptors(spawned.pid) == before + 2,
            10.0,
            "the server holds both connections",
        )
        for sock in (first, second):
            sock.sendall(b"hello")
            sock.settimeout(1.0)
            with pytest.raises(TimeoutError):
                sock.recv(100)
    assert spawned.alive()


@pytest.mark.timeout(60)
def test_freezes_after_stops_itself_after_n_connections(start: Start) -> None:
    spawned = start("freezes_after", "--after", "3")
    for _ in range(2):
        echo_once(spawned.address)
    assert process_state(spawned.pid) != "T"
    echo_once(spawned.address)
    wait_until(lambda: process_state(spawned.pid) == "T", 10.0, "state T (stopped)")
    with connect(spawned.address) as sock:  # The backlog still completes the handshake.
        sock.sendall(b"hello")
        sock.settimeout(1.0)
        with pytest.raises(TimeoutError):
            sock.recv(100)
    # SIGTERM stays pending on a stopped process; SIGKILL ends it.
    assert spawned.stop(grace=1.0) == -signal.SIGKILL


@pytest.mark.timeout(60)
@pytest.mark.parametrize("ending", ["reset", "close"])
def test_dies_of_sigpipe_when_a_peer_resets_with_replies_owed(start: Start, ending: str) -> None:
    spawned = start("dies_of_sigpipe")
    echo_once(spawned.address)
    sock = socket.socket()
    # A small receive buffer: the server's replies back up at once. (A small
    # send buffer too would slow the client to a few segments per delayed ACK.)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
    sock.settimeout(10.0)
    sock.connect(spawned.address)
    assert send_until_stalled(sock, b"x" * 65536, stall=1.0, limit=256 << 20) < 256 << 20
    # Replies are still owed: the server's next write meets the reset (a close
    # with unread data in the receive buffer resets too).
    if ending == "reset":
        reset(sock)
    else:
        sock.close()
    assert exit_code(spawned) == -signal.SIGPIPE


@pytest.mark.timeout(60)
def test_crashes_on_reset_exits_with_a_traceback(start: Start) -> None:
    spawned = start("crashes_on_reset")
    echo_once(spawned.address)
    with connect(spawned.address) as sock:
        assert exchange(sock, b"hello", timeout=10.0) == b"hello"
        reset(sock)
    assert exit_code(spawned) == 1
    err = stderr_of(spawned)
    assert "Traceback" in err
    assert "ConnectionResetError" in err


@pytest.mark.timeout(60)
def test_exits_after_n_connections_with_status_0(start: Start) -> None:
    spawned = start("exits_after", "--after", "3")
    for _ in range(2):
        echo_once(spawned.address)
    assert spawned.alive()
    echo_once(spawned.address)
    assert exit_code(spawned) == 0
    assert "served 3 connections; exiting" in stderr_of(spawned)
    assert connects(spawned.address) == "refused"


@pytest.mark.timeout(60)
def test_leaks_to_emfile_keeps_one_descriptor_per_connection(start: Start) -> None:
    spawned = start("leaks_to_emfile")
    assert descriptor_limit(spawned.pid) == 1024
    before = descriptors(spawned.pid)
    for n in range(1, 5):
        with connect(spawned.address) as sock:
            assert exchange(sock, b"hello", timeout=10.0) == b"hello"
            sock.shutdown(socket.SHUT_WR)
            assert recv_until_eof(sock) == b""  # The server shut it down...
        assert descriptors(spawned.pid) == before + n  # ...and kept its descriptor.


@pytest.mark.timeout(60)
def test_leaks_to_emfile_logs_once_and_stops_answering_at_the_limit(start: Start) -> None:
    spawned = start("leaks_to_emfile")
    room = descriptor_limit(spawned.pid) - descriptors(spawned.pid)
    held: list[socket.socket] = []
    try:
        for _ in range(room):
            held.append(connect(spawned.address))
        wait_until(
            lambda: descriptors(spawned.pid) == 1024, 10.0, "the server reaches 1024 descriptors"
        )
        with connect(spawned.address) as late:  # Into the backlog: accept fails now.
            assert spawned.stderr.wait_for(re.compile("EMFILE|Too many open files"), 10.0)
            late.sendall(b"hello")
            late.settimeout(1.0)
            with pytest.raises(TimeoutError):
                late.recv(100)
        assert exchange(held[0], b"still served", timeout=10.0) == b"still served"
    finally:
        for sock in held:
            sock.close()
    assert spawned.alive()
    assert len([line for line in spawned.stderr.lines() if "accept failed" in line]) == 1


@pytest.mark.timeout(60)
def test_rate_limits_refuses_connects_for_a_pause_then_serves_again(start: Start) -> None:
    spawned = start("rate_limits", "--pause", "1")
    for _ in range(60):
        if connects(spawned.address) != "connected":
            break  # It stopped listening before the burst ended.
    wait_until(lambda: connects(spawned.address) == "refused", 10.0, "a connect is refused")
    assert spawned.stderr.wait_for(re.compile("more than 50 connections within 1s"), 10.0)
    wait_until(lambda: connects(spawned.address) == "connected", 10.0, "a connect succeeds again")
    echo_once(spawned.address)
    assert spawned.stderr.wait_for(re.compile(f"listening again on port {spawned.address[1]}"), 5)


@pytest.mark.timeout(60)
def test_closes_at_once_sends_eof_and_nothing_else(start: Start) -> None:
    spawned = start("closes_at_once")
    for _ in range(3):
        with connect(spawned.address, timeout=5.0) as sock:
            assert sock.recv(100) == b""
    assert spawned.alive()


def _escaped(spawned: Spawned) -> int:
    """The one process that listens on ``spawned``'s port and is not ``spawned`` itself."""
    assert spawned.started is not None
    found: dict[int, int] = {}

    def one_other() -> bool:
        found.clear()
        found.update(listeners(*spawned.address, spawned.started or 0))
        found.pop(spawned.pid, None)
        return len(found) == 1

    wait_until(one_other, 10.0, f"one process besides {spawned.pid} on {spawned.address}")
    (pid,) = found
    return pid


@pytest.mark.timeout(60)
def test_daemonizes_exits_0_while_its_daemon_serves_outside_its_group_and_session(
    start: Start,
) -> None:
    spawned = start("daemonizes")
    assert exit_code(spawned) == 0
    daemon = _escaped(spawned)
    assert procfs.parent_pid(daemon) != spawned.pid
    assert os.getsid(daemon) != spawned.pid
    assert os.getpgid(daemon) != spawned.pid
    assert procfs.open_descriptors(daemon) is not None
    assert Path(f"/proc/{daemon}/cwd").resolve() == Path("/")
    echo_once(spawned.address)
    started = start_ticks(daemon)
    assert started is not None
    assert stop_processes({daemon: started}, grace=5.0) == {}  # SIGTERM ends it.


@pytest.mark.timeout(60)
def test_escapes_group_worker_serves_on_after_its_launchers_group_is_stopped(start: Start) -> None:
    spawned = start("escapes_group")
    worker = _escaped(spawned)
    assert os.getsid(worker) == worker != spawned.pid
    assert procfs.parent_pid(worker) == spawned.pid
    started = start_ticks(worker)
    assert started is not None
    assert spawned.stop(grace=5.0) == 0  # The launcher and its group: SIGTERM, exit 0.
    assert not wait_gone(worker, started, 0.5)
    echo_once(spawned.address)  # The worker still serves.
    assert stop_processes({worker: started}, grace=5.0) == {}
