"""Strays: processes a started server left outside its process group, found, followed, stopped.

How this works
--------------
A spawned command leads a process group of its own, and stopping that group
stops what it forked, unless a process left it: a daemon (``fork``,
``setsid``, ``fork`` again, the parent exits 0: ``memcached -d``,
``redis-server --daemonize yes``, nginx's ``daemon on``), or a child that
calls ``setsid`` and keeps serving while its parent dies. Such a *stray* is
found by what it holds and when it started, never by its name:

- every process is known by its PID *and* its start time
  (:func:`start_ticks`), and only one that started at or after the spawn
  (:attr:`conformance.targets.spawn.Spawned.started`) counts as the run's;
- :func:`listeners`: the holders of a socket listening on the port the run
  handed out (its ``{port}``), found through :mod:`conformance.targets.procfs`;
- :func:`session_members`: the processes of a session the run's processes
  lead (the spawned command's own, and those its strays made with ``setsid``).

:func:`stop_processes` stops a set of them by PID: SIGTERM, a grace, SIGKILL,
and returns those that still run; :func:`wait_gone` waits for one to end.
Both go through a pidfd when the kernel has them, so a signal never reaches
another process that took a PID over meanwhile.

Facts about the OS this relies on
---------------------------------
- ``/proc/PID/stat``, counted from the last ``)``: field 3 is the state
  (``Z``: a zombie, ended, not yet reaped), field 6 the session ID, field 22
  the start time in clock ticks since boot. A PID is reused only after its
  process is reaped; the pair (PID, start time) is not reused.
- ``setsid()`` makes the caller lead a new session and group whose ID is its
  PID. A process's session is its parent's unless it calls ``setsid``, so
  every session that the run's processes are in was made by one of them.
- A process whose parent exits is reparented (to init, or to a subreaper),
  so it is not the suite's child: its exit status cannot be waited for; only
  its end can be seen (``/proc``, a pidfd).
- ``pidfd_open(PID)`` (Linux 5.3) gives a descriptor that refers to that one
  process: it becomes readable when the process ends, and
  ``pidfd_send_signal`` on it cannot reach a process that reused the PID.
"""

from __future__ import annotations

import os
import select
import signal
import time
from collections.abc import Callable, Iterable

from conformance.targets.procfs import listening_inodes, process_ids, socket_owners, stat_fields

__all__ = [
    "listeners",
    "session_members",
    "sessions_of",
    "start_ticks",
    "stop_found",
    "stop_processes",
    "wait_gone",
]

#: Seconds between two looks at ``/proc`` where no pidfd can be waited on.
_POLL = 0.02

#: Seconds :func:`stop_found` goes on looking for processes to stop, at most.
STOP_SEARCH = 5.0


def start_ticks(pid: int) -> int | None:
    """When ``pid`` started, in clock ticks since boot; None if it is gone or has ended."""
    fields = stat_fields(pid)
    if fields is None or fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def listeners(host: str, port: int, since: int) -> dict[int, int]:
    """The processes that started at ``since`` or later and hold a socket listening on ``port``.

    Args:
        host: The address the port was handed out on (the wildcard address matches too).
        port: The port.
        since: A start time, in clock ticks since boot (:func:`start_ticks`).

    Returns:
        ``{pid: start time}``, among the processes this user may inspect.
    """
    inodes = listening_inodes(host, port)
    if not inodes:
        return {}
    # Only the processes that started since then: their descriptors, not every
    # process's, are read (fewer to list, none cut off by socket_owners' limit).
    young: dict[int, int] = {}
    for pid in process_ids():
        started = start_ticks(pid)
        if started is not None and started >= since:
            young[pid] = started
    owners = socket_owners(inodes, pids=young)
    # Still the same process after the descriptors were read.
    return {pid: young[pid] for pid in owners if start_ticks(pid) == young[pid]}


def session_members(sessions: Iterable[int], since: int) -> dict[int, int]:
    """The live processes in any of ``sessions`` that started at ``since`` or later.

    Returns:
        ``{pid: start time}``.
    """
    wanted = {str(sid) for sid in sessions}
    found: dict[int, int] = {}
    if not wanted:
        return found
    for pid in process_ids():
        fields = stat_fields(pid)
        if fields is None or fields[0] in ("Z", "X") or fields[3] not in wanted:
            continue
        started = int(fields[19])
        if started >= since:
            found[pid] = started
    return found


def _session(pid: int) -> int | None:
    fields = stat_fields(pid)
    return None if fields is None else int(fields[3])


def sessions_of(pids: Iterable[int]) -> set[int]:
    """The sessions the processes ``pids`` are in (those still running)."""
    return {sid for pid in pids if (sid := _session(pid)) is not None}


class _Handle:
    """One process to stop, held by a pidfd when the kernel gives one (else by PID)."""

    def __init__(self, pid: int, fd: int | None) -> None:
        self.pid = pid
        self.fd = fd

    @classmethod
    def open(cls, pid: int, started: int) -> _Handle | None:
        """A handle on ``pid`` if it still is the process that started at ``started``."""
        try:
            fd: int | None = os.pidfd_open(pid)
        except ProcessLookupError:
            return None
        except (AttributeError, OSError):
            fd = None  # No pidfd here (an old kernel, not Linux): by PID, checked first.
        handle = cls(pid, fd)
        # Read after the pidfd is open: if the pidfd's process still runs after the
        # reading, the reading was its own, not a later holder's of the same PID.
        if start_ticks(pid) != started or handle.ended():
            handle.close()
            return None
        return handle

    def ended(self) -> bool:
        if self.fd is None:
            return start_ticks(self.pid) is None
        return bool(select.select([self.fd], [], [], 0)[0])

    def signal(self, signum: int) -> None:
        try:
            if self.fd is not None:
                signal.pidfd_send_signal(self.fd, signum)
            else:
                os.kill(self.pid, signum)
        except ProcessLookupError:
            pass  # It ended meanwhile.
        except PermissionError:
            pass  # Another user's: it stays in the survivors.

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _wait_all(handles: list[_Handle], timeout: float) -> list[_Handle]:
    """Wait until every handle's process ended or ``timeout`` passed; return those still running."""
    deadline = time.monotonic() + timeout
    while True:
        running = [h for h in handles if not h.ended()]
        left = deadline - time.monotonic()
        if not running or left <= 0:
            return running
        fds = [h.fd for h in running if h.fd is not None]
        if len(fds) == len(running):
            select.select(fds, [], [], left)  # A pidfd is readable once its process ends.
        else:
            time.sleep(min(_POLL, left))  # Watching /proc under the deadline.


def stop_processes(processes: dict[int, int], grace: float = 5.0) -> dict[int, int]:
    """Stop processes by PID: SIGTERM, ``grace`` seconds, SIGKILL, ``grace`` seconds.

    A process is signalled only while it still is the one that started when
    ``processes`` says (a PID taken over by another process is left alone).

    Args:
        processes: ``{pid: start time}`` (:func:`listeners`, :func:`session_members`).
        grace: Seconds to wait after each signal.

    Returns:
        Those that still run after the SIGKILL, ``{pid: start time}``.
    """
    handles = [h for pid, started in processes.items() if (h := _Handle.open(pid, started))]
    try:
        for handle in handles:
            handle.signal(signal.SIGTERM)
        left = _wait_all(handles, grace)
        for handle in left:
            handle.signal(signal.SIGKILL)
        left = _wait_all(left, grace)
        return {h.pid: processes[h.pid] for h in left}
    finally:
        for handle in handles:
            handle.close()


def stop_found(
    find: Callable[[], dict[int, int]],
    grace: float = 5.0,
    held: Callable[[], bool] | None = None,
) -> dict[int, int]:
    """Stop what ``find`` finds (:func:`stop_processes`), and look again.

    One look at ``/proc`` misses a process that forks while it is read (a
    server stopped while it daemonizes: each process of a fork chain exits
    as soon as it has forked the next), and one not found forks on. So it
    looks until two looks in a row find none and, with ``held``, until
    ``held()`` says nothing holds what the processes held (the port the run
    handed out): within :data:`STOP_SEARCH` seconds.

    Args:
        find: Finds processes to stop, ``{pid: start time}``.
        grace: Seconds to wait after each signal.
        held: Whether what the processes to stop hold is held still.

    Returns:
        Those that still run after SIGKILL.
    """
    left: dict[int, int] = {}
    deadline = time.monotonic() + STOP_SEARCH
    empty = 0
    while True:
        found = {pid: started for pid, started in find().items() if pid not in left}
        if found:
            empty = 0
            left |= stop_processes(found, grace)
        else:
            empty += 1
            if empty >= 2 and (held is None or not held()):
                return left
        if time.monotonic() >= deadline:
            return left
        if not found:
            time.sleep(_POLL)  # Looking at /proc again, under the deadline.


def wait_gone(pid: int, started: int, timeout: float) -> bool:
    """Wait until the process ``pid`` that started at ``started`` has ended.

    Args:
        pid: The process (not necessarily a child of this one).
        started: Its start time (:func:`start_ticks`).
        timeout: Seconds to wait at most.

    Returns:
        Whether it has ended (or was already gone).
    """
    handle = _Handle.open(pid, started)
    if handle is None:
        return True
    try:
        return not _wait_all([handle], timeout)
    finally:
        handle.close()
