"""The keeper of a started target: it records each exit and starts the target again.

One :class:`Keeper` per target the suite started, on the process that owns
it: a thread waits on the target's process, and when it exits records how on
the run's :class:`~conformance.targets.health.Board` (with its last stderr lines),
stops what it left behind, and starts it again, at most
:data:`~conformance.targets.health.MAX_RESTARTS` times, unless the run says
``--no-restart``. A command that exits 0 while a process it started listens
on its handed-out port has daemonized: the keeper follows that process
instead (:mod:`conformance.targets.daemons`), and its end is the target's exit.

The keeper's thread also starts every restarted server, and lives as long as
the target: a server dies with the thread that started it when the suite is
killed outright (:mod:`conformance.targets.lifeline`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from conformance.errors import TargetError
from conformance.targets.health import (
    MAX_RESTARTS,
    STDERR_LINES,
    Board,
    Exit,
    Note,
    TargetEventKind,
    TargetState,
    TargetStatus,
    describe_exit,
)
from conformance.targets.procfs import command_line
from conformance.targets.target import RunningTarget

__all__ = ["FIND_DAEMON_WITHIN", "Keeper"]

#: Seconds to look for the daemon of a watched command that exited 0 while its
#: port still listens (one look at /proc can miss a process forking meanwhile).
FIND_DAEMON_WITHIN = 5.0


class Keeper:
    """Keeps one started target: records its exits and restarts it (the owning process only).

    A command that exits 0 while a process it started listens on its
    handed-out port has daemonized: the keeper follows that process (a
    ``daemonized`` note, its PID published) and the daemon's end is the exit.

    Args:
        name: The target's name in the run.
        board: Where to record.
        running: The started target.
        restart: Starts it again (a new :class:`RunningTarget`).
        restarts: Whether an exited target is restarted at all.
    """

    def __init__(
        self,
        name: str,
        board: Board,
        running: RunningTarget,
        restart: Callable[[], RunningTarget],
        *,
        restarts: bool = True,
    ) -> None:
        self.name = name
        self.board = board
        self.running = running
        self._restart = restart
        self._restarts_wanted = restarts
        self._lock = threading.Lock()
        self._stopping = False
        self._exits: list[Exit] = []
        self._notes: list[Note] = []
        self._status = (TargetStatus.UP, "")
        self.generation = 0
        self._note_daemon()
        self._publish(TargetStatus.UP)
        self._thread = threading.Thread(target=self._watch, name=f"keeper of {name}", daemon=True)
        if running.server is not None:
            self._thread.start()

    def _publish(self, status: TargetStatus, down_reason: str = "") -> None:
        self._status = (status, down_reason)
        address = self.running.address
        self.board.publish(
            self.name,
            TargetState(
                self.generation,
                status,
                address.host,
                address.port,
                self.running.pid,
                tuple(self._exits),
                down_reason,
                tuple(self._notes),
            ),
        )

    def _note_daemon(self) -> None:
        """Note the daemon followed now: this generation's note says its PID, one note each."""
        daemon = self.running.daemon
        if daemon is not None:
            detail = f"the server daemonized: PID {daemon} ({command_line(daemon) or '?'})"
            # A hand-on (the middle of a double fork ended) replaces the note it made.
            self._notes = [
                n
                for n in self._notes
                if (n.kind, n.generation) != (TargetEventKind.DAEMONIZED, self.generation)
            ]
            self._notes.append(
                Note(TargetEventKind.DAEMONIZED, self.generation, detail, time.time())
            )

    def _note_left(self, running: RunningTarget) -> None:
        for pid in sorted(running.left):
            detail = f"PID {pid} ({command_line(pid) or '?'}) still runs after SIGKILL"
            self._notes.append(
                Note(TargetEventKind.LEFT_RUNNING, self.generation, detail, time.time())
            )
        running.left.clear()

    def _wait_end(self, running: RunningTarget) -> str | None:
        """Wait until the target's process ends; say how, or None when the keeper is stopping."""
        server = running.server
        assert server is not None
        if running.daemon is None:
            code = server.proc.wait()
            # The target accepted already: a daemon holds the socket by now,
            # unless nothing listens on the port any more.
            followed = (
                code == 0
                and not self._stopping
                and running.follow_daemon(FIND_DAEMON_WITHIN, bound=True)
            )
            with self._lock:
                if self._stopping or not followed:
                    return describe_exit(code)
                self._note_daemon()
                self._publish(TargetStatus.UP)
        while True:
            watched = running.daemon
            ended = running.wait_daemon(1.0)
            if running.daemon != watched:  # Handed on: the daemon is another PID.
                with self._lock:
                    if not self._stopping:
                        self._note_daemon()
                        self._publish(TargetStatus.UP)
            if ended:
                break
            if self._stopping:
                return None
        return (
            f"exited (the daemon, PID {running.daemon}: not a child of the suite, so its "
            "status is not visible)"
        )

    def _watch(self) -> None:
        while True:
            running = self.running
            server = running.server
            assert server is not None
            how = self._wait_end(running)
            server.stderr.join(1.0)  # Its last words, once the pipe closes.
            with self._lock:
                if self._stopping or how is None:
                    return
                restart = self._restarts_wanted and len(self._exits) < MAX_RESTARTS
                reason = ""
                if not self._restarts_wanted:
                    reason = "--no-restart"
                elif not restart:
                    reason = f"it exited {MAX_RESTARTS + 1} times"
                tail = tuple(server.stderr.lines()[-STDERR_LINES:])
                self._exits.append(Exit(self.generation, how, time.time(), tail, restart))
                running.stop(1.0)  # Whatever it forked goes with it, strays included.
                self._note_left(running)
                self._publish(TargetStatus.RESTARTING if restart else TargetStatus.DOWN, reason)
                if not restart:
                    return
            try:
                new = self._restart()
            except TargetError as exc:
                with self._lock:
                    last = self._exits[-1]
                    self._exits[-1] = Exit(last.generation, last.how, last.at, last.stderr, False)
                    self._publish(TargetStatus.DOWN, f"the restart failed: {exc}")
                return
            with self._lock:
                if self._stopping:
                    new.stop()
                    return
                self.running = new
                self.generation += 1
                self._note_daemon()
                self._publish(TargetStatus.UP)

    def stop(self) -> None:
        """Stop the target and the watching: its group, then by PID what left the group.

        A process that outlives even SIGKILL is published as a ``left running`` note.
        """
        with self._lock:
            self._stopping = True
            running = self.running
        running.stop()
        if self._thread.is_alive():
            self._thread.join(30.0)
        if running.left:
            with self._lock:
                self._note_left(running)
                self._publish(*self._status)
