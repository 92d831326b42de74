"""Following a server that daemonizes: the process its command left listening, found and watched.

A command that exits 0 while a process it started listens on the port the
run handed out has daemonized (``memcached -d``, ``redis-server --daemonize
yes``, a classic double fork). That process is found by its listening socket
and its start time (:func:`conformance.targets.strays.listeners`), never by
its name, and from then on it is the target's process.

Facts this relies on:

- One look at ``/proc`` is not atomic: a process forked while the PIDs are
  listed, whose parent exits before its descriptors are read, is seen by
  neither. :meth:`FollowsDaemon.follow_daemon` looks again until its deadline.
- The earliest started holder of the port may be the middle of a double fork
  (the session leader, which exits as soon as it has forked the daemon): a
  holder that leads its session is given :data:`SETTLE` seconds to end
  before it is followed. One that ends later, within :data:`HAND_ON_WITHIN`
  seconds of being followed, while a process started after it holds the
  port, hands the target on to that one; a daemon that dies later while its
  workers still hold the socket has exited.
"""

from __future__ import annotations

import time

from conformance.targets.address import Address
from conformance.targets.procfs import listening_inodes
from conformance.targets.spawn import Spawned
from conformance.targets.strays import listeners, sessions_of, start_ticks, wait_gone

__all__ = ["HAND_ON_WITHIN", "SETTLE", "FollowsDaemon"]

#: Seconds after it was followed within which a daemon that ends hands the
#: target on to a later holder of its port (the middle of a double fork exits
#: as soon as it has forked; on a loaded machine that can take a while).
HAND_ON_WITHIN = 5.0

#: Seconds a holder of the port that leads its session is given to end before
#: it is followed: the middle of a double fork leads the session it made and
#: exits once it has forked; a daemon made by daemon(3) leads its own and stays.
SETTLE = 0.5


class FollowsDaemon:
    """The daemon-following part of :class:`~conformance.targets.target.RunningTarget`.

    Attributes:
        address: Where the target listens.
        server: The process the suite started, or None.
        handed_out: Whether the run gave the command its port (``{port}``).
        daemon: The process the command daemonized into, once followed
            (:meth:`follow`); None until then.
    """

    address: Address
    server: Spawned | None
    handed_out: bool
    daemon: int | None = None
    _daemon_started: int = 0
    _followed_at: float = 0.0

    def _holders(
        self, since: int, exclude: tuple[int, ...], timeout: float, bound: bool
    ) -> list[int]:
        """The processes started at ``since`` or later that listen on the port, earliest first.

        One look at ``/proc`` can miss a process that forks while it is read:
        it looks again until ``timeout`` while none is found, and with
        ``bound`` (the target accepted on the port already) stops at once
        when nothing listens on the port at all (then no process holds it).
        """
        deadline = time.monotonic() + timeout
        while True:
            found = listeners(self.address.host, self.address.port, since)
            for pid in exclude:
                found.pop(pid, None)
            if found or time.monotonic() >= deadline:
                return sorted(found, key=lambda pid: (found[pid], pid))
            if bound and not listening_inodes(self.address.host, self.address.port):
                return []
            time.sleep(0.05)  # Looking at /proc for a listener, under the deadline.

    def _follow_first(
        self, since: int, exclude: tuple[int, ...], timeout: float, bound: bool
    ) -> bool:
        """Follow the earliest started of :meth:`_holders` that still runs; whether one is.

        One that leads its session may be the middle of a double fork: it is
        given :data:`SETTLE` seconds to end before it is taken.
        """
        deadline = time.monotonic() + timeout
        while True:
            left = max(deadline - time.monotonic(), 0.0)
            holders = self._holders(since, exclude, left, bound)
            # One that ended since it was seen is not followed: the next one, or look again.
            if any(self.follow(pid) for pid in holders):
                pid, started = self.daemon, self._daemon_started
                assert pid is not None
                if sessions_of([pid]) != {pid} or not wait_gone(pid, started, SETTLE):
                    return True
                exclude = (*exclude, pid)  # It forked and ended: look again.
            elif not holders or time.monotonic() >= deadline:
                return False

    def _command_exited_0(self) -> Spawned | None:
        server = self.server
        if server is None or not self.handed_out or server.started is None:
            return None
        return server if server.proc.poll() == 0 else None

    def follow(self, pid: int) -> bool:
        """Take ``pid`` as the target's process from now on.

        Returns:
            Whether it is followed (False: it has ended already).
        """
        started = start_ticks(pid)
        if started is None:
            return False
        self.daemon, self._daemon_started = pid, started
        self._followed_at = time.monotonic()
        return True

    def follow_daemon(self, timeout: float = 0.0, *, bound: bool = False) -> bool:
        """Find the process the command daemonized into, and follow it.

        It is the earliest started of the processes that listen on the port
        the run handed out and started after the command (a daemon's workers
        that share its socket started later), once the command exited 0.

        Args:
            timeout: Seconds to wait for one to listen (the daemon may bind
                after its parent exited; one look at ``/proc`` can miss it).
            bound: The target accepted on the port already: once nothing
                listens on it at all, the search ends at once.

        Returns:
            Whether one is followed: not while the command runs or when it
            exited otherwise than with 0, its port was not handed out, or no
            such process listens.
        """
        server = self._command_exited_0()
        if server is None or server.started is None:
            return False
        return self._follow_first(server.started, (server.pid,), timeout, bound)

    def _hand_on(self) -> bool:
        """The followed process has ended: follow the port's next holder if it ended at once.

        Only within :data:`HAND_ON_WITHIN` seconds of being followed (the
        middle of a double fork), and only to a process that started after
        it and holds the handed-out port: a daemon that dies later, its
        workers still holding the socket, has exited.

        Returns:
            Whether another process is followed now.
        """
        server, ended = self.server, self.daemon
        if server is None or ended is None:
            return False
        if time.monotonic() - self._followed_at > HAND_ON_WITHIN:
            return False
        return self._follow_first(
            self._daemon_started, (ended, server.pid), HAND_ON_WITHIN, bound=True
        )

    def wait_daemon(self, timeout: float) -> bool:
        """Wait, at most ``timeout`` seconds, for the followed daemon to end; True once it has.

        False also when it ended and handed the target on (:meth:`_hand_on`):
        :attr:`daemon` names the process followed now.
        """
        if self.daemon is None:
            return True
        return wait_gone(self.daemon, self._daemon_started, timeout) and not self._hand_on()
