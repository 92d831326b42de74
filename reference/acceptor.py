"""The acceptor: a listening socket that hands every new connection on.

How this works
--------------
On each readable event the acceptor calls ``accept`` until it raises
``BlockingIOError``, so one event drains every pending connection, and passes
each new socket to its ``on_accept`` callback (which decides which loop will
own the connection).

Two reasons to stop accepting, kept apart:

- *paused by the owner*: ``on_accept`` (or whoever owns the acceptor) calls
  :meth:`Acceptor.pause` because it has nowhere to put more connections (in
  process mode, every sub-reactor's channel is full). It lasts until the owner
  calls :meth:`Acceptor.resume`, and it takes effect at once: the accept loop
  looks at it after every accept, so not one more socket is taken in that
  turn. The clients wait in the kernel's backlog.
- *paused for resources*: ``accept`` failed for want of descriptors or memory
  (below); a timer ends it.

The listening socket is watched only while neither holds: the end of one
never lifts the other.

Facts about the OS this relies on
---------------------------------
- When the process is out of descriptors (``EMFILE``) or the system is
  (``ENFILE``), or the kernel is short of memory (``ENOBUFS``, ``ENOMEM``),
  ``accept`` fails but the pending connection stays in the backlog, and the
  listening socket stays readable. Retrying at once would spin at 100% CPU. So
  the acceptor stops watching the socket and looks again after a short pause
  (as asyncio does): the waiting clients are served as soon as descriptors
  free up, and none is dropped.
- ``ECONNABORTED`` (and ``EPROTO``) means that one pending connection was reset
  before it was accepted; skip it and take the next one.
"""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import Callable

from reference.loop import READ, EventLoop, TimerHandle

__all__ = ["Acceptor", "RESOURCE_ERRNOS", "DEFAULT_RETRY_DELAY"]

log = logging.getLogger(__name__)

#: ``accept`` errors that mean "out of resources": pause, then try again.
RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
#: ``accept`` errors that concern one pending connection only: skip it.
_SKIP_ERRNOS = frozenset({errno.ECONNABORTED, errno.EPROTO, errno.EPERM})
#: Seconds the acceptor waits before accepting again after running out of resources.
DEFAULT_RETRY_DELAY = 0.1

#: What the acceptor does with an accepted socket and its peer address.
AcceptCallback = Callable[[socket.socket, object], None]


class Acceptor:
    """Accepts connections on a listening socket, on one loop.

    Args:
        loop: The loop that watches the listening socket.
        sock: A bound, listening socket; it is made non-blocking.
        on_accept: Called on the loop thread with each new socket and its peer.
        retry_delay: Seconds to wait after an out-of-resources error.
    """

    def __init__(
        self,
        loop: EventLoop,
        sock: socket.socket,
        on_accept: AcceptCallback,
        *,
        retry_delay: float = DEFAULT_RETRY_DELAY,
    ) -> None:
        self.loop = loop
        self.sock = sock
        self._on_accept = on_accept
        self._retry_delay = retry_delay
        self._started = False
        self._watching = False
        self._paused_by_owner = False
        self._retry: TimerHandle | None = None  # set while paused for resources
        self._starved = False  # out of resources since the last successful accept
        self.resource_errors = 0
        sock.setblocking(False)

    @property
    def paused_by_owner(self) -> bool:
        """True between :meth:`pause` and :meth:`resume`."""
        return self._paused_by_owner

    @property
    def paused_for_resources(self) -> bool:
        """True while waiting to retry after an out-of-resources error."""
        return self._retry is not None

    @property
    def accepting(self) -> bool:
        """True while the listening socket is watched: started, open, and not paused."""
        return self._watching

    def start(self) -> None:
        """Start accepting (unless paused). Loop thread only."""
        self.loop.assert_in_loop_thread()
        self._started = True
        self._update()

    def pause(self) -> None:
        """Stop accepting until :meth:`resume`; clients wait in the backlog. Loop thread only.

        Takes effect at once, even from within ``on_accept``: no other
        connection is accepted in the same turn.
        """
        self.loop.assert_in_loop_thread()
        self._paused_by_owner = True
        self._update()

    def resume(self) -> None:
        """End a :meth:`pause`. Accepting starts again unless paused for resources.

        Loop thread only.
        """
        self.loop.assert_in_loop_thread()
        self._paused_by_owner = False
        self._update()

    def close(self) -> None:
        """Stop accepting and close the listening socket. Loop thread only."""
        self._started = False
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        self._update()
        self.sock.close()

    def _update(self) -> None:
        """Watch the listening socket if, and only if, nothing holds accepting back."""
        wanted = (
            self._started
            and not self._paused_by_owner
            and self._retry is None
            and self.sock.fileno() != -1
        )
        if wanted and not self._watching:
            self.loop.register(self.sock, READ, self._handle_read)
            self._watching = True
        elif not wanted and self._watching:
            self.loop.unregister(self.sock)
            self._watching = False

    def _handle_read(self, mask: int) -> None:
        accept = self.sock.accept
        on_accept = self._on_accept
        while self._watching:  # on_accept may pause us (or close us): look after each one.
            try:
                conn, peer = accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in _SKIP_ERRNOS:
                    continue
                if exc.errno in RESOURCE_ERRNOS:
                    self._pause_for_resources(exc)
                    return
                log.error("accept failed: %s; still listening", exc)
                return
            if self._starved:
                self._starved = False
                log.warning("accepting again after %d pauses", self.resource_errors)
            on_accept(conn, peer)

    def _pause_for_resources(self, exc: OSError) -> None:
        self.resource_errors += 1
        # Warn once per shortage, not at every retry.
        level = logging.DEBUG if self._starved else logging.WARNING
        self._starved = True
        log.log(
            level,
            "accept failed: %s; pausing accepts for %.1fs (pending clients wait in the backlog)",
            exc.strerror,
            self._retry_delay,
        )
        self._retry = self.loop.call_later(self._retry_delay, self._retry_due)
        self._update()

    def _retry_due(self) -> None:
        self._retry = None
        self._update()  # Still paused if the owner paused us meanwhile.
