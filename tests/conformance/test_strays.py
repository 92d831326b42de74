"""Strays: processes found by their listening socket, their session and their start time, stopped.

Real processes: a listener started with ``start_new_session`` (its own
session, as a daemon's), a process that ignores SIGTERM. Every wait is for
an exit or a ``/proc`` reading under a deadline; every process is stopped.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator

import pytest

from conformance.targets.procfs import command_line
from conformance.targets.spawn import Spawned, spawn_listening
from conformance.targets.strays import (
    listeners,
    session_members,
    sessions_of,
    start_ticks,
    stop_processes,
    wait_gone,
)

#: Listens, says where, and waits on a pipe nobody writes (SIGTERM ends it).
LISTENS = (
    "import os, socket\n"
    "s = socket.create_server(('127.0.0.1', 0))\n"
    "print('listening on 127.0.0.1:%d' % s.getsockname()[1], flush=True)\n"
    "r, w = os.pipe(); os.read(r, 1)\n"
)
#: As LISTENS, but ignores SIGTERM.
STUBBORN = "import signal; signal.signal(signal.SIGTERM, signal.SIG_IGN)\n" + LISTENS


@pytest.fixture
def listener() -> Iterator[Spawned]:
    server = spawn_listening([sys.executable, "-c", LISTENS], timeout=10.0)
    yield server
    server.kill()


def test_start_ticks_of_a_child_are_no_earlier_than_its_parents() -> None:
    own = start_ticks(os.getpid())
    assert own is not None
    with subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=-1) as p:
        child = start_ticks(p.pid)
        assert child is not None
        assert child >= own
        assert p.stdin is not None
        p.stdin.close()
        p.wait(10.0)
    assert start_ticks(p.pid) is None  # Reaped: gone.


def test_listeners_finds_the_holder_of_the_port_started_since_a_time(listener: Spawned) -> None:
    host, port = listener.address
    started = start_ticks(listener.pid)
    assert started is not None
    assert listeners(host, port, started) == {listener.pid: started}
    assert listeners(host, port, started + 1) == {}  # It started before that.
    assert listeners(host, port + 1 if port < 65535 else port - 1, started) == {}
    assert "import os, socket" in command_line(listener.pid)


def test_session_members_are_the_processes_of_a_session_started_since(listener: Spawned) -> None:
    # spawn runs the command in a session of its own: its PID is the session's ID.
    assert sessions_of([listener.pid]) == {listener.pid}
    assert listener.started is not None
    assert session_members([listener.pid], listener.started) == {listener.pid: listener.started}
    assert session_members([listener.pid], listener.started + 1) == {}
    assert session_members([], 0) == {}


@pytest.mark.timeout(30)
def test_stop_processes_sends_SIGKILL_to_one_that_ignores_SIGTERM() -> None:
    server = spawn_listening([sys.executable, "-c", STUBBORN], timeout=10.0)
    try:
        assert server.started is not None
        left = stop_processes({server.pid: server.started}, grace=0.5)
        assert left == {}
        assert server.proc.wait(10.0) == -9
    finally:
        server.kill()


def test_stop_processes_leaves_alone_a_pid_whose_start_time_differs(listener: Spawned) -> None:
    assert listener.started is not None
    # Another start time: another process that got the same PID. Not signalled.
    assert stop_processes({listener.pid: listener.started - 1}, grace=0.5) == {}
    assert listener.alive()
    assert not wait_gone(listener.pid, listener.started, 0.2)


def test_wait_gone_sees_the_end_of_a_process_it_did_not_start(listener: Spawned) -> None:
    assert listener.started is not None
    listener.proc.terminate()
    assert wait_gone(listener.pid, listener.started, 10.0)
    assert listener.proc.wait(10.0) == -15


@pytest.mark.timeout(30)
def test_Spawned_stop_also_stops_a_process_of_its_session_that_left_its_group() -> None:
    code = (
        "import os, subprocess, sys\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import os; r, w = os.pipe(); "
        "os.read(r, 1)'], process_group=0)\n"
        "print('child', child.pid, flush=True)\n"
        "print('listening on 127.0.0.1:1', flush=True)\n"
        "child.wait()\n"
    )
    server = spawn_listening([sys.executable, "-c", code], timeout=10.0)
    match = server.stdout.wait_for(re.compile(r"child (\d+)"), 10.0)
    assert match is not None
    child = int(match[1])
    child_started = start_ticks(child)
    assert child_started is not None
    assert os.getpgid(child) == child != server.pid  # Out of the group...
    assert os.getsid(child) == server.pid  # ...but in the session.
    server.stop(grace=1.0)
    assert wait_gone(child, child_started, 10.0), "the child that left the group outlived stop"
    assert server.left == {}
