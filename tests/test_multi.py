"""The multi-reactor model: sub-reactors share the connections; processes come and go."""

from __future__ import annotations

import collections
import os
import re
import resource
import signal
import socket
import threading
import time

import pytest

from conformance.targets import procfs
from reference.multi import EXIT_AT_START_ENV, MAX_RESTARTS
from tests.helpers import ServerProcess, connect, exchange, recv_exactly

ACCEPTED = r"<Connection #\d+ .* on (sub-\d+)>: accepted"


@pytest.mark.parametrize("mode", ["thread", "process"])
def test_Server_multi_spreads_connections_over_the_sub_reactors(mode: str) -> None:
    with ServerProcess(["multi", "--sub-reactors", "3", "--mode", mode]) as server:
        for i in range(12):
            with connect(server.address) as sock:
                assert exchange(sock, b"hello %d" % i) == b"hello %d" % i
        # The log lines come a little after the replies: wait for the twelfth.
        seen = _wait_for_lines(server, ACCEPTED, 12)
        owners = collections.Counter(m.group(1) for m in seen)
    assert sorted(owners) == ["sub-1", "sub-2", "sub-3"]
    assert sum(owners.values()) == 12
    assert max(owners.values()) - min(owners.values()) <= 1, owners  # round-robin


def _wait_for_lines(server: ServerProcess, pattern: str, count: int) -> list[re.Match[str]]:
    """The first ``count`` stderr lines matching ``pattern``, waiting for each in turn."""
    while True:
        found = [(i, m) for i, m in enumerate(map(re.compile(pattern).search, server.stderr)) if m]
        if len(found) >= count:
            return [m for _, m in found[:count]]
        server.wait_for_log(pattern, start=found[-1][0] + 1 if found else 0)


def _sub_reactor_pids(server: ServerProcess, count: int) -> list[int]:
    server.wait_for_log(rf"sub-reactor {count}: pid \d+")
    pids = [int(m.group(1)) for m in server.log_matches(r"sub-reactor \d+: pid (\d+)")]
    assert len(pids) == count
    return pids


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_Server_multi_process_runs_n_processes_and_leaves_none_behind(signum: int) -> None:
    server = ServerProcess(["multi", "--sub-reactors", "4", "--mode", "process"])
    with server:
        pids = _sub_reactor_pids(server, 4)
        assert len(set(pids)) == 4
        assert all(procfs.parent_pid(pid) == server.pid for pid in pids)
        for i in range(8):  # Every process serves.
            with connect(server.address) as sock:
                assert exchange(sock, b"x" * i + b"\0") == b"x" * i + b"\0"
        with connect(server.address) as open_during_stop:
            assert exchange(open_during_stop, b"open") == b"open"
            assert server.signal_and_wait(signum) == 0
            assert open_during_stop.recv(10) == b""
    left = [pid for pid in pids if not _gone(pid)]
    assert not left, f"sub-reactor processes still running after the server stopped: {left}"


def test_Server_multi_process_restarts_a_sub_reactor_that_dies() -> None:
    with ServerProcess(["multi", "--sub-reactors", "2", "--mode", "process"]) as server:
        victim = _sub_reactor_pids(server, 2)[0]
        mark = len(server.stderr)
        os.kill(victim, signal.SIGKILL)  # A child of the server this test started.
        server.wait_for_log(rf"sub-reactor 1 \(pid {victim}\) is gone \(killed by SIGKILL\)")
        heir = int(server.wait_for_log(r"sub-reactor 1: pid (\d+)", start=mark).group(1))
        assert heir != victim
        assert procfs.parent_pid(heir) == server.pid
        for i in range(6):  # Round-robin over both again: the heir gets its share.
            with connect(server.address) as sock:
                assert exchange(sock, b"after %d" % i) == b"after %d" % i
        server.wait_for_log(r"<Connection #\d+ .* on sub-1>: accepted", start=mark)
        assert server.alive()
        assert server.signal_and_wait() == 0


def test_Server_multi_process_exits_1_when_no_sub_reactor_can_start() -> None:
    exit_at_start = f"import os; os.environ[{EXIT_AT_START_ENV!r}] = '3'"
    server = ServerProcess(
        ["multi", "--sub-reactors", "2", "--mode", "process"], prefix=exit_at_start
    )
    with server:
        # Each is started again MAX_RESTARTS times, after 0.1 s, 0.2 s... 1.6 s.
        code = server.proc.wait(60)
        server.spawned.stderr.join(10)
        assert server.spawned.stderr.ended
    assert code == 1, server.stderr[-10:]
    assert len(server.log_matches(r"sub-reactor 1: pid")) == MAX_RESTARTS + 1
    last = server.stderr[-1]
    assert last.startswith("error: no sub-reactor can run: "), server.stderr[-10:]
    assert "exit code 3" in last
    assert len(server.log_matches("^error:")) == 1


#: Clients that connect while the one sub-reactor is stopped.
CLIENTS = 1500
#: Fewest bytes of send buffer one message with a descriptor takes (the
#: kernel's accounting of its buffer, far more than the one byte of data).
MESSAGE_TRUESIZE = 256


def _channel_holds() -> int:
    """Most messages a Unix socket's default send buffer holds: a few hundred."""
    with open("/proc/sys/net/core/wmem_default") as wmem:
        return int(wmem.read()) // MESSAGE_TRUESIZE


def _sockets(pid: int) -> int:
    """How many sockets process ``pid`` has open."""
    fds = f"/proc/{pid}/fd"
    count = 0
    for name in os.listdir(fds):
        try:
            count += os.readlink(f"{fds}/{name}").startswith("socket:")
        except FileNotFoundError:
            pass  # Closed while we looked.
    return count


def _accept_queue(port: int) -> int:
    """How many connections wait in the backlog of the loopback listener on ``port``.

    For a listening socket, the rx_queue column of /proc/net/tcp is the length
    of its accept queue.
    """
    local = f"0100007F:{port:04X}"
    with open("/proc/net/tcp") as table:
        for line in table.readlines()[1:]:
            fields = line.split()
            if fields[1] == local and fields[3] == "0A":  # 0A: LISTEN
                return int(fields[4].split(":")[1], 16)
    raise AssertionError(f"no listener on 127.0.0.1:{port} in /proc/net/tcp")


def _state(pid: int) -> str:
    """The one-letter state of process ``pid`` (R, S, T...), from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rpartition(")")[2].split()[0]


def _wait_stopped(pid: int, timeout: float = 10.0) -> None:
    """Wait until process ``pid`` is stopped by a signal (state T)."""
    deadline = time.monotonic() + timeout
    while _state(pid) != "T":
        if time.monotonic() > deadline:
            raise TimeoutError(f"process {pid} not stopped within {timeout}s")
        threading.Event().wait(0.01)


def test_Server_multi_process_leaves_clients_in_the_backlog_while_no_channel_has_room() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = CLIENTS + 256
    if hard != resource.RLIM_INFINITY and hard < wanted:
        pytest.skip(f"needs {wanted} descriptors for its clients; the hard limit is {hard}")
    clients: list[socket.socket] = []
    with ServerProcess(["multi", "--sub-reactors", "1", "--mode", "process"]) as server:
        server.wait_for_log(r"sub-1: running")
        (sub,) = _sub_reactor_pids(server, 1)
        before = _sockets(server.pid)
        mark = len(server.stderr)
        # Processes this test started. The main process is stopped too while the
        # clients connect, so that they are all pending at once when it goes on:
        # an acceptor that did not stop at once would take every one of them.
        os.kill(sub, signal.SIGSTOP)
        os.kill(server.pid, signal.SIGSTOP)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), hard))
            _wait_stopped(sub)
            _wait_stopped(server.pid)
            for _ in range(CLIENTS):
                clients.append(connect(server.address))
            os.kill(server.pid, signal.SIGCONT)
            server.wait_for_log(r"accepts paused", start=mark)
            held = _sockets(server.pid) - before
            waiting = _accept_queue(server.address[1])
            in_channel = CLIENTS - held - waiting
            print(f"main process holds {held}, backlog {waiting}, channel {in_channel}")
            assert held <= 1, f"the main process holds {held} accepted sockets"
            assert in_channel <= _channel_holds(), (
                f"{in_channel} connections neither in the backlog nor in the main process"
            )
        finally:
            os.kill(server.pid, signal.SIGCONT)
            os.kill(sub, signal.SIGCONT)
        try:
            for i, sock in enumerate(clients):  # Every one is served, in the end.
                message = b"waited %d" % i
                sock.sendall(message)
                assert recv_exactly(sock, len(message)) == message
        finally:
            for sock in clients:
                sock.close()
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        assert server.signal_and_wait() == 0
