"""What happens to a target during a run: it exits, it is restarted, it stops answering.

How this works
--------------
A run's checks may run in several processes (xdist's workers), while the
targets the suite started are children of one (the controller). They share
what they know through a :class:`Board`, a private directory of small files:

- ``NAME.state.json``, written only by the process that owns the target (by
  :class:`~conformance.targets.keeper.Keeper`, atomically: write, then
  rename): its generation (0, then 1 after the first restart...), its status
  (``up``, ``restarting``, ``down``), where it listens, its PID, every exit it saw (how: "exited
  with signal 13 (SIGPIPE)", when, and the last lines of its stderr), and
  its notes: the server daemonized (its PID is the daemon's from then on),
  a process the run could not stop.
- ``NAME.exit-G``, created (``O_EXCL``, so once) by the check that claims
  the exit of generation G: the check that was running when the process
  died. That check FAILs naming the exit; any other check that was running
  beside it is SKIPPED if it failed (it measured a dying server, not the
  behaviour it checks), and keeps its PASS otherwise.
- ``NAME.unreachable``, created once by the check after which the target no
  longer served a fresh connection (:func:`conformance.checks.liveness`):
  the remaining checks are SKIPPED with "target unreachable since CHECK".

A :class:`~conformance.targets.keeper.Keeper` (one per started target, on the owning
process) waits on
the target's process in a thread; when it exits, the keeper records how,
then restarts it (at most :data:`MAX_RESTARTS` times) unless the run says
``--no-restart``. A command that exits 0 while a process it started listens
on its handed-out port has daemonized
(:meth:`~conformance.targets.target.RunningTarget.follow_daemon`): the keeper follows
that process instead, and its end is the target's exit. Before each check
the session waits until its target is
``up`` (:meth:`Board.wait_ready`); after it, it looks for an exit of the
generation it ran against (:meth:`Board.exit_during`). What the board holds
and returns is typed data, from :mod:`conformance.targets.target_state`.
"""

from __future__ import annotations

import json
import os
import signal
import tempfile
import threading
import time
from pathlib import Path

from conformance.targets.target_state import (
    MAX_RESTARTS,
    Down,
    Exit,
    NeverStarted,
    Note,
    NotReady,
    NotUpAgain,
    TargetEvent,
    TargetEventKind,
    TargetState,
    TargetStatus,
    Unreachable,
)

__all__ = [
    "MAX_RESTARTS",
    "Board",
    "Exit",
    "Note",
    "NotReady",
    "TargetEvent",
    "TargetEventKind",
    "TargetState",
    "TargetStatus",
    "Unreachable",
    "describe_exit",
    "process_gone",
    "process_state",
]
#: How long a check waits for its target to be up again after a restart.
READY_TIMEOUT = 30.0
#: How long a check that saw its target's process die waits for the owner to record it.
EXIT_RECORD_WAIT = 5.0
#: Lines of a dead target's stderr that its report quotes.
STDERR_LINES = 20


def describe_exit(returncode: int) -> str:
    """``exited with code 1`` or ``exited with signal 13 (SIGPIPE)`` (a Popen return code)."""
    if returncode >= 0:
        return f"exited with code {returncode}"
    try:
        name = signal.Signals(-returncode).name
    except ValueError:
        return f"exited with signal {-returncode}"
    return f"exited with signal {-returncode} ({name})"


def process_gone(pid: int) -> bool:
    """Whether ``pid`` no longer runs: no such process, or a zombie waiting to be reaped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    state = stat.rpartition(")")[2].split()[:1]
    return state in (["Z"], ["X"])


def process_state(pid: int) -> str | None:
    """The state letter of ``pid`` in ``/proc`` (``R``, ``S``, ``T`` stopped...), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()
    return fields[0] if fields else None


class Board:
    """The files through which a run's processes share what happened to its targets.

    Args:
        path: The directory (made by :meth:`create` on the owning process).
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def create(cls) -> Board:
        return cls(Path(tempfile.mkdtemp(prefix="reactor-conformance-targets-")))

    def remove(self) -> None:
        """Delete the directory and its files (the owner, at the end of the run)."""
        for child in self.path.glob("*"):
            child.unlink(missing_ok=True)
        try:
            self.path.rmdir()
        except OSError:
            pass

    # The owner's side.

    def publish(self, name: str, state: TargetState) -> None:
        """Record ``state`` (the owner only): written aside, then renamed over the old one."""
        final = self.path / f"{name}.state.json"
        aside = final.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
        aside.write_text(json.dumps(state.to_data()))
        os.replace(aside, final)

    # Everyone's side.

    def state(self, name: str) -> TargetState | None:
        """The state last published for ``name``, or None (nothing published)."""
        try:
            return TargetState.from_data(json.loads((self.path / f"{name}.state.json").read_text()))
        except FileNotFoundError:
            return None

    def notes(self, name: str) -> tuple[Note, ...]:
        """What the owner noted about ``name`` besides its exits (it daemonized...)."""
        state = self.state(name)
        return state.notes if state is not None else ()

    def unreachable(self, name: str) -> Unreachable | None:
        """What the check that found the target unreachable recorded, or None (none did)."""
        try:
            found = json.loads((self.path / f"{name}.unreachable").read_text())
        except (FileNotFoundError, ValueError):
            return None
        return Unreachable.from_data(found)

    def mark_unreachable(
        self, name: str, check: str, detail: str, *, accepts: bool = False
    ) -> bool:
        """Record that the target stopped answering during ``check``; False if already recorded.

        Args:
            accepts: It still accepts connections (it answers nothing on them).
        """
        found = Unreachable(check, detail, time.time(), accepts)
        return self._create_once(self.path / f"{name}.unreachable", json.dumps(found.to_data()))

    def claim_exit(self, name: str, generation: int, check: str) -> bool:
        """Claim the exit of ``generation`` for ``check``; False if another check has it."""
        return self._create_once(self.path / f"{name}.exit-{generation}", check)

    def exit_claimed_by(self, name: str, generation: int) -> str | None:
        try:
            return (self.path / f"{name}.exit-{generation}").read_text() or None
        except FileNotFoundError:
            return None

    def wait_ready(self, name: str, timeout: float = READY_TIMEOUT) -> TargetState | NotReady:
        """Wait until the target is up; return its state, or why the check cannot run.

        Returns:
            The state (status up), or why not: unreachable since a check,
            down (exited and not restarted), still restarting after
            ``timeout`` seconds, or never started.
        """
        deadline = time.monotonic() + timeout
        while True:
            gone = self.unreachable(name)
            if gone is not None:
                return gone
            state = self.state(name)
            if state is None:
                return NeverStarted()
            if state.status is TargetStatus.UP:
                return state
            if state.status is TargetStatus.DOWN:
                last = state.exits[-1] if state.exits else None
                if last is None:
                    return Down("stopped", None, state.down_reason)
                return Down(
                    last.how, self.exit_claimed_by(name, last.generation), state.down_reason
                )
            if time.monotonic() >= deadline:
                return NotUpAgain(timeout)
            time.sleep(0.05)  # Polling a file another process writes, under a deadline.

    def exit_during(
        self,
        name: str,
        generation: int,
        pid: int | None,
        wait: float = EXIT_RECORD_WAIT,
        *,
        exiting: float = 0.0,
    ) -> Exit | None:
        """The exit of ``generation``, if its process ended (seen by its owner or here).

        Args:
            name: The target.
            generation: The start of it that a check ran against.
            pid: Its process.
            wait: When the process is gone but its owner has not recorded the
                exit yet, how long to wait for the record.
            exiting: How long to wait for a process that still runs to end
                (it refused a connection: it may be exiting, its listening
                socket already closed).
        """
        if pid is None:
            return None
        until_gone = time.monotonic() + exiting
        deadline = time.monotonic() + wait
        while True:
            state = self.state(name)
            if state is not None:
                for record in state.exits:
                    if record.generation == generation:
                        return record
                if state.generation == generation and state.pid is not None:
                    pid = state.pid  # The owner followed the server into its daemon.
            if not process_gone(pid):
                if time.monotonic() >= until_gone:
                    return None
                deadline = time.monotonic() + wait
            elif time.monotonic() >= deadline:
                return Exit(generation, "exited (its status was not seen)", time.time())
            time.sleep(0.02)  # The owner reaps and records it in a moment.

    def events(self, name: str) -> list[TargetEvent]:
        """What happened to the target, oldest first (for the reports)."""
        events: list[TargetEvent] = []
        state = self.state(name)
        if state is not None:
            for n, record in enumerate(state.exits, 1):
                if record.restarted:
                    outcome = f"restarted ({n} of at most {MAX_RESTARTS})"
                else:
                    outcome = f"not restarted: {state.down_reason}"
                events.append(
                    TargetEvent(
                        TargetEventKind.EXITED,
                        self.exit_claimed_by(name, record.generation),
                        record.how,
                        record.at,
                        outcome,
                        record.stderr,
                    )
                )
            events += [TargetEvent.of_note(note) for note in state.notes]
        gone = self.unreachable(name)
        if gone is not None:
            events.append(
                TargetEvent(
                    gone.kind, gone.check, gone.detail, gone.at, "the remaining checks were skipped"
                )
            )
        events.sort(key=lambda e: e.at)
        return events

    @staticmethod
    def _create_once(path: Path, text: str) -> bool:
        # Written aside, then linked into place: link fails if the file exists,
        # and a reader never sees it empty or half written.
        aside = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        aside.write_text(text)
        try:
            os.link(aside, path)
        except FileExistsError:
            return False
        finally:
            aside.unlink(missing_ok=True)
        return True
