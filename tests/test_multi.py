"""The multi-reactor model: sub-reactors share the connections; processes come and go."""

from __future__ import annotations

import collections
import os
import re
import signal

import pytest

from conformance import procfs
from tests.helpers import ServerProcess, connect, exchange

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


def test_Server_multi_process_sends_new_connections_to_the_living_when_one_dies() -> None:
    with ServerProcess(["multi", "--sub-reactors", "2", "--mode", "process"]) as server:
        victim = _sub_reactor_pids(server, 2)[0]
        os.kill(victim, signal.SIGKILL)  # A child of the server this test started.
        server.wait_for_log(rf"sub-reactor 1 \(pid {victim}\) is gone")
        for i in range(6):
            with connect(server.address) as sock:
                assert exchange(sock, b"after %d" % i) == b"after %d" % i
        assert server.alive()
