"""Servers that daemonize or leave their process group: followed as the target, then stopped.

Real processes throughout: ``fixtures/servers/hostile/daemonizes.py`` and
``escapes_group.py``, a server that daemonizes only when told to (a file
appears), and the real ``memcached -d`` when it is installed. After each
run, the test waits (under a deadline) until nothing the server started
still runs: by the PID it recorded, and by the port it listened on.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from conformance.errors import TargetError
from conformance.targets.health import Board, TargetState, process_gone
from conformance.targets.keeper import Keeper
from conformance.targets.strays import listeners, start_ticks, stop_processes, wait_gone
from conformance.targets.target import RunningTarget, TargetKind, TargetSpec, start_target
from conformance.targets.target_state import TargetEventKind, TargetStatus
from tests.conformance.support import SERVERS, run_cli, spawn_command

HOSTILE = SERVERS / "hostile"
DAEMONIZES = HOSTILE / "daemonizes.py"
ESCAPES = HOSTILE / "escapes_group.py"
MEMCACHED = shutil.which("memcached")

#: Listens on the port it is given (argv 1) and prints so; daemonizes once
#: the file named by argv 2 exists: fork (the command exits 0), setsid, then
#: argv 4 more forks in a row, each parent exiting once the file named by
#: argv 5 exists ("-": at once), the classic double fork with 1. The daemon
#: writes its PID to the file named by argv 3, then echoes one read per
#: connection.
DAEMONIZES_LATER = """\
import os, socket, sys, time
port, go, pid_file, hops, release = sys.argv[1:6]
s = socket.create_server(('127.0.0.1', int(port)))
print('listening on 127.0.0.1:%d' % s.getsockname()[1], flush=True)
while not os.path.exists(go):
    time.sleep(0.01)
if os.fork():
    os._exit(0)
os.setsid()
for _ in range(int(hops)):
    if os.fork():
        while release != '-' and not os.path.exists(release):
            time.sleep(0.01)
        os._exit(0)
with open(pid_file, 'w') as out:
    out.write('%d\\n' % os.getpid())
while True:
    c, _ = s.accept()
    c.sendall(c.recv(100))
    c.close()
"""

#: The checks each run makes: one on the wire, one through /proc (CPU), the
#: descriptor limit (its /proc limits, then more connections than that).
CHECKS = "ECHO-BASIC-1,ECHO-CPU-1,ECHO-LIMIT-1"


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``condition`` until it holds; fail saying ``what`` was awaited after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.02)


def echo(address: tuple[str, int]) -> bytes:
    with socket.create_connection(address, timeout=10.0) as sock:
        sock.sendall(b"ping")
        return sock.recv(100)


def assert_nothing_left(pid: int, port: int, since: int, name: str) -> None:
    """The recorded ``pid`` is gone, and nothing started since ``since`` listens on ``port``."""
    wait_until(lambda: process_gone(pid), 5.0, f"the end of {name}'s PID {pid}")
    wait_until(
        lambda: not listeners("127.0.0.1", port, since),
        5.0,
        f"no process started by the run listening on {port}",
    )


def read_pid(path: Path) -> int:
    wait_until(lambda: path.exists() and path.read_text().endswith("\n"), 10.0, f"{path}")
    return int(path.read_text())


@pytest.fixture
def since() -> int:
    """A start time that every process a test starts is at or after (this process's)."""
    ticks = start_ticks(os.getpid())
    assert ticks is not None
    return ticks


# start_target and the keeper


@pytest.mark.timeout(60)
def test_start_target_follows_a_server_that_daemonizes_and_stops_its_daemon(
    tmp_path: Path,
) -> None:
    pid_file = tmp_path / "daemon.pid"
    spawn = f"{spawn_command(DAEMONIZES)} --pid-file {shlex.quote(str(pid_file))}"
    running = start_target(TargetSpec(TargetKind.SPAWN, spawn))
    try:
        assert running.server is not None
        wait_until(lambda: running.server is not None and not running.server.alive(), 10.0, "exit")
        found = running.daemon is not None or running.follow_daemon(10.0)
        assert found, "the daemon was not found by its port"
        daemon = read_pid(pid_file)
        # The middle of the double fork may have been taken first, and handed the target on.
        wait_until(lambda: running.alive() and running.daemon == daemon, 10.0, "the daemon")
        assert running.pid == daemon != running.server.pid
        assert running.server.proc.returncode == 0
        assert os.getsid(daemon) not in (running.server.pid, os.getsid(0))
        assert echo((running.address.host, running.address.port)) == b"ping"
        started = start_ticks(daemon)
        assert started is not None
    finally:
        running.stop(grace=2.0)
    assert wait_gone(daemon, started, 10.0), "the daemon outlived the target's stop"
    assert running.left == {}


@pytest.mark.timeout(60)
def test_a_command_that_exits_0_with_nothing_listening_says_what_was_looked_for() -> None:
    spec = TargetSpec(TargetKind.SPAWN, shlex.join([sys.executable, "-c", "pass"]) + " {port}")
    with pytest.raises(TargetError, match=r"exited with code 0; nothing it started listens on"):
        start_target(spec, start_timeout=1.0)


def _later(tmp_path: Path, port: str, hops: int = 1, release: bool = False) -> TargetSpec:
    """DAEMONIZES_LATER on ``port``: it daemonizes once ``tmp_path/go`` exists.

    With ``release``, each process between the command and the daemon exits
    only once ``tmp_path/release`` exists.
    """
    args = [
        str(tmp_path / "go"),
        str(tmp_path / "daemon.pid"),
        str(hops),
        str(tmp_path / "release") if release else "-",
    ]
    command = [sys.executable, "-c", DAEMONIZES_LATER]
    return TargetSpec(TargetKind.SPAWN, f"{shlex.join(command)} {port} {shlex.join(args)}")


@pytest.mark.timeout(60)
def test_a_daemon_whose_port_was_not_handed_out_is_neither_followed_nor_stopped(
    tmp_path: Path,
) -> None:
    running = start_target(_later(tmp_path, "0"))  # It prints its port: not handed out.
    daemon = None
    try:
        assert running.server is not None
        (tmp_path / "go").touch()
        daemon = read_pid(tmp_path / "daemon.pid")
        assert running.server.proc.wait(10.0) == 0
        assert not running.follow_daemon()
        assert running.daemon is None
        running.stop(grace=2.0)
        assert start_ticks(daemon) is not None, "the suite stopped a process not proven its own"
    finally:
        running.stop(grace=2.0)
        # Not the suite's to stop: the test does.
        started = start_ticks(daemon) if daemon is not None else None
        if daemon is not None and started is not None:
            assert stop_processes({daemon: started}, grace=2.0) == {}


def _keeper(
    tmp_path: Path, hops: int = 1, release: bool = False
) -> tuple[Board, Keeper, RunningTarget]:
    running = start_target(_later(tmp_path, "{port}", hops, release))
    board = Board(tmp_path)

    def never() -> RunningTarget:
        raise TargetError("not restarted in this test")

    return board, Keeper("later", board, running, never, restarts=False), running


def _state(board: Board) -> TargetState:
    state = board.state("later")
    assert state is not None
    return state


def _published(board: Board, running: RunningTarget, daemon: int) -> int:
    """Wait until the board names ``daemon``, once, and it serves; return its start time."""
    wait_until(lambda: _state(board).pid == daemon, 10.0, "the daemon's PID published")
    state = _state(board)
    assert (state.pid, state.status, state.exits) == (daemon, TargetStatus.UP, ())
    (note,) = state.notes
    assert note.detail.startswith(f"the server daemonized: PID {daemon} (")
    (event,) = board.events("later")
    assert event.kind is TargetEventKind.DAEMONIZED
    assert echo((running.address.host, running.address.port)) == b"ping"
    started = start_ticks(daemon)
    assert started is not None
    return started


@pytest.mark.timeout(60)
def test_the_keeper_follows_a_server_that_daemonizes_while_it_is_watched(tmp_path: Path) -> None:
    board, keeper, running = _keeper(tmp_path)
    try:
        assert running.server is not None
        spawned = running.server.pid
        assert _state(board).pid == spawned
        (tmp_path / "go").touch()
        daemon = read_pid(tmp_path / "daemon.pid")
        started = _published(board, running, daemon)
        (note,) = _state(board).notes
        assert note.generation == 0
        (event,) = board.events("later")
        assert event.line().startswith(f"the server daemonized: PID {daemon} (")
        # A check that ran against the command's PID sees no exit: the target lives on.
        assert board.exit_during("later", 0, spawned, wait=1.0) is None
    finally:
        keeper.stop()
    assert wait_gone(daemon, started, 10.0), "the daemon outlived the keeper's stop"


@pytest.mark.timeout(60)
def test_the_end_of_a_followed_daemon_is_the_targets_exit(tmp_path: Path) -> None:
    board, keeper, running = _keeper(tmp_path)
    try:
        assert running.server is not None
        (tmp_path / "go").touch()
        daemon = read_pid(tmp_path / "daemon.pid")
        wait_until(lambda: _state(board).pid == daemon, 10.0, "the daemon's PID published")
        os.kill(daemon, signal.SIGTERM)  # Started by this test's target; ended by its PID.
        wait_until(lambda: _state(board).status is TargetStatus.DOWN, 10.0, "the exit recorded")
        (ended,) = _state(board).exits
        assert ended.how.startswith(f"exited (the daemon, PID {daemon}: not a child")
        kinds = [e.kind for e in board.events("later")]
        assert kinds == [TargetEventKind.DAEMONIZED, TargetEventKind.EXITED]
    finally:
        keeper.stop()


def _middle_followed(tmp_path: Path, board: Board, running: RunningTarget) -> tuple[int, int]:
    """Make the server daemonize (its middle process lingers); return (daemon, middle).

    The middle of the double fork leads the session, holds the socket too and
    started first: it is the one followed while it lingers.
    """
    assert running.server is not None
    spawned = running.server.pid
    (tmp_path / "go").touch()
    daemon = read_pid(tmp_path / "daemon.pid")
    wait_until(lambda: _state(board).pid != spawned, 10.0, "a PID published")
    middle = _state(board).pid
    assert middle is not None
    assert middle != daemon
    assert os.getsid(daemon) == middle
    return daemon, middle


@pytest.mark.timeout(60)
def test_the_middle_of_a_double_fork_that_lingers_hands_the_target_on_to_the_daemon(
    tmp_path: Path,
) -> None:
    board, keeper, running = _keeper(tmp_path, release=True)
    try:
        daemon, middle = _middle_followed(tmp_path, board, running)
        (tmp_path / "release").touch()
        started = _published(board, running, daemon)
    finally:
        keeper.stop()
    assert wait_gone(daemon, started, 10.0), "the daemon outlived the keeper's stop"


@pytest.mark.timeout(60)
def test_a_followed_daemon_that_ends_later_is_the_exit_though_another_holds_its_port(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Any end counts as late: as a daemon that dies long after it was followed
    # while a worker it forked still holds the listening socket.
    monkeypatch.setattr("conformance.targets.daemons.HAND_ON_WITHIN", 0.0)
    board, keeper, running = _keeper(tmp_path, release=True)
    try:
        daemon, middle = _middle_followed(tmp_path, board, running)
        started = start_ticks(daemon)
        assert started is not None
        (tmp_path / "release").touch()
        wait_until(lambda: _state(board).status is TargetStatus.DOWN, 10.0, "the exit recorded")
        (ended,) = _state(board).exits
        assert ended.how.startswith(f"exited (the daemon, PID {middle}: not a child")
        # What it left on the port is the run's, and stopped with it.
        assert wait_gone(daemon, started, 10.0), "the holder left on the port was not stopped"
    finally:
        keeper.stop()


@pytest.mark.timeout(60)
def test_the_keeper_follows_a_daemon_forked_through_a_chain_of_short_lived_processes(
    tmp_path: Path,
) -> None:
    # Thirty processes in a row, each forking the next and exiting at once: a
    # look at /proc often sees none of them, or one that is gone a moment later.
    board, keeper, running = _keeper(tmp_path, hops=30)
    try:
        assert running.server is not None
        (tmp_path / "go").touch()
        daemon = read_pid(tmp_path / "daemon.pid")
        started = _published(board, running, daemon)
    finally:
        keeper.stop()
    assert wait_gone(daemon, started, 10.0), "the daemon outlived the keeper's stop"


@pytest.mark.timeout(60)
def test_a_target_stopped_while_its_server_forks_on_leaves_nothing_behind(
    tmp_path: Path, since: int
) -> None:
    # Stopped once the command has exited 0, while a thousand processes in a
    # row fork the next and exit: most looks at /proc see none of them.
    running = start_target(_later(tmp_path, "{port}", hops=1000))
    host, port = running.address.host, running.address.port
    try:
        assert running.server is not None
        (tmp_path / "go").touch()
        assert running.server.proc.wait(10.0) == 0
        running.stop(grace=2.0)
        assert running.left == {}
        wait_until(
            lambda: not listeners(host, port, since),
            5.0,
            f"no process started by the test listening on {port}",
        )
    finally:
        running.stop(grace=2.0)
        # What a failed stop left: the test's own processes, ended by PID.
        assert stop_processes(listeners(host, port, since), grace=2.0) == {}


# The CLI


def _run(spawn: str, report: Path, *extra: str) -> tuple[str, dict[str, Any]]:
    result = run_cli(
        "run", "--spawn", spawn, "--checks", CHECKS, "--report-json", str(report), *extra,
        timeout=240,
    )  # fmt: skip
    out = result.stdout + result.stderr
    assert "Traceback" not in out, out
    assert result.returncode == 0, out
    (target,) = json.loads(report.read_text())["targets"]
    verdicts = {r["id"]: r["verdict"] for r in target["results"]}
    assert verdicts == dict.fromkeys(CHECKS.split(","), "PASS"), out
    return out, target


@pytest.mark.timeout(300)
def test_a_run_against_a_server_that_daemonizes_follows_and_stops_its_daemon(
    tmp_path: Path, since: int
) -> None:
    pid_file = tmp_path / "daemon.pid"
    spawn = f"{spawn_command(DAEMONIZES)} --pid-file {shlex.quote(str(pid_file))}"
    out, target = _run(spawn, tmp_path / "report.json")
    daemon = read_pid(pid_file)
    detail = f"the server daemonized: PID {daemon} ("
    assert f"reactor-conformance: daemonizes: {detail}" in out
    assert [(e["kind"], e["check"]) for e in target["events"]] == [("daemonized", None)]
    assert target["events"][0]["detail"].startswith(detail)
    assert "exited with code 0" not in out
    port = int(target["address"].rpartition(":")[2])
    assert_nothing_left(daemon, port, since, "daemonizes.py's daemon")


@pytest.mark.timeout(300)
def test_a_run_against_a_server_whose_worker_escapes_its_group_stops_the_worker(
    tmp_path: Path, since: int
) -> None:
    pid_file = tmp_path / "worker.pid"
    spawn = f"{spawn_command(ESCAPES)} --pid-file {shlex.quote(str(pid_file))}"
    _, target = _run(spawn, tmp_path / "report.json")
    worker = read_pid(pid_file)
    assert target["events"] == []
    port = int(target["address"].rpartition(":")[2])
    assert_nothing_left(worker, port, since, "escapes_group.py's worker")


@pytest.mark.skipif(MEMCACHED is None, reason="memcached is not installed (apt install memcached)")
@pytest.mark.timeout(300)
def test_a_run_against_memcached_d_follows_its_daemon_and_stops_it(
    tmp_path: Path, since: int
) -> None:
    assert MEMCACHED is not None
    user = " -u nobody" if os.geteuid() == 0 else ""  # memcached will not run as root.
    spawn = f"{MEMCACHED} -d -p {{port}} -l 127.0.0.1 -U 0{user}"
    out, target = _run(spawn, tmp_path / "report.json", "--protocol", "memcached")
    assert [e["kind"] for e in target["events"]] == ["daemonized"]
    # memcached removes its -P file as it exits: its PID is the one the event names.
    detail = target["events"][0]["detail"]
    match = re.match(r"the server daemonized: PID (\d+) \(.*memcached -d", detail)
    assert match is not None, target["events"]
    daemon = int(match[1])
    assert f"reactor-conformance: memcached: {match[0]}" in out
    port = int(target["address"].rpartition(":")[2])
    assert_nothing_left(daemon, port, since, "memcached -d")
