"""The in-process models: how loops and threads are arranged around one core.

How this works
--------------
Every in-process model is the same :class:`Reactor`: a main loop on the
calling thread that runs the acceptor, with two dials (as muduo's
``setThreadNum``):

- ``sub_reactors=0, workers=0``: *single*. The main loop accepts, reads, runs
  the handler and writes.
- ``workers=N``: *pool*. The main loop still does all I/O; handlers run on N
  worker threads, in order per connection (see :mod:`reference.workers`).
- ``sub_reactors=N``: *multi* (thread mode). The main loop only accepts; each
  connection goes, round-robin, to one of N loops in a :class:`LoopPool`,
  which owns it for its whole life.

The process mode of the multi model is in :mod:`reference.multi`.

Each loop holds descriptors of its own, so before it creates sub-reactor
loops the reactor makes sure the descriptor limit leaves room for them and
for at least one connection each, and says so in one line
(:class:`~reference.server.StartError`) rather than failing half-built.
"""

from __future__ import annotations

import errno
import logging
import socket
import ssl
import threading

from reference.handler import HandlerFactory
from reference.loop import EventLoop
from reference.server import (
    DEFAULT_GRACE,
    LOOP_DESCRIPTORS,
    ConnectionOptions,
    Server,
    StartError,
    check_descriptors,
)
from reference.workers import WorkerPool, pooled

__all__ = ["LoopPool", "Reactor"]

log = logging.getLogger(__name__)

#: Seconds to wait for threads beyond the grace period before giving up on them.
_JOIN_SLACK = 5.0


class LoopPool:
    """N event loops, each run by a thread of its own.

    Args:
        count: Number of loops.
        name: Prefix of the loops' names (``sub-1``, ``sub-2``...).
    """

    def __init__(self, count: int, name: str = "sub") -> None:
        if count < 1:
            raise ValueError(f"a loop pool needs at least 1 loop, got {count}")
        self.loops = [EventLoop(f"{name}-{i + 1}") for i in range(count)]
        self._threads = [
            threading.Thread(target=loop.run, name=loop.name, daemon=True) for loop in self.loops
        ]

    def start(self) -> None:
        """Start one thread per loop."""
        for thread in self._threads:
            thread.start()

    def join(self, timeout: float) -> bool:
        """Wait for every loop to stop (each stops itself), then close them.

        Returns:
            True when every loop stopped within ``timeout`` seconds.
        """
        for thread in self._threads:
            thread.join(timeout)
        stopped = not any(thread.is_alive() for thread in self._threads)
        if stopped:
            for loop in self.loops:
                loop.close()
        return stopped


class Reactor:
    """A main loop, and optionally sub-reactor threads or a worker pool.

    Args:
        listener: A bound, listening socket.
        handler_factory: Makes the handler of each connection.
        options: Flow-control settings for every connection.
        sub_reactors: Loops, each on its own thread, that own the connections
            (0: the main loop owns them).
        workers: Worker threads that run the handlers (0: the loop runs them).
        tls: A server-side TLS context: every connection speaks TLS. None:
            plain TCP.

    Raises:
        StartError: The descriptor limit is too small for ``sub_reactors`` loops.
    """

    def __init__(
        self,
        listener: socket.socket,
        handler_factory: HandlerFactory,
        *,
        options: ConnectionOptions | None = None,
        sub_reactors: int = 0,
        workers: int = 0,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        if sub_reactors:
            what = f"{sub_reactors} sub-reactor threads"
            # Each sub-reactor: its loop and one connection; and the main loop.
            check_descriptors((LOOP_DESCRIPTORS + 1) * sub_reactors + LOOP_DESCRIPTORS, what)
        try:
            self.loop = EventLoop("main")
            self.loop_pool = LoopPool(sub_reactors) if sub_reactors else None
        except OSError as exc:
            if exc.errno not in (errno.EMFILE, errno.ENFILE):
                raise
            raise StartError(f"cannot create the event loops: {exc.strerror}") from None
        self.worker_pool = WorkerPool(workers) if workers else None
        if self.worker_pool is not None:
            handler_factory = pooled(handler_factory, self.worker_pool)
        self.server = Server(
            self.loop,
            handler_factory,
            listener=listener,
            options=options,
            sub_loops=self.loop_pool.loops if self.loop_pool else (),
            tls=tls,
        )
        self.address = self.server.address
        self._grace = DEFAULT_GRACE

    def serve_forever(self) -> None:
        """Serve on the calling thread until :meth:`stop`, then end every thread."""
        if self.worker_pool is not None:
            self.worker_pool.start()
        if self.loop_pool is not None:
            self.loop_pool.start()
        self.server.start()
        try:
            self.loop.run()
        finally:
            self.loop.close()
            if self.loop_pool is not None and not self.loop_pool.join(self._grace + _JOIN_SLACK):
                log.error("sub-reactor threads did not stop in time")
            if self.worker_pool is not None and not self.worker_pool.shutdown(_JOIN_SLACK):
                log.error("worker threads did not stop in time")

    def stop(self, grace: float = DEFAULT_GRACE) -> None:
        """Stop serving; see :meth:`reference.server.Server.stop`. Any thread."""
        self._grace = grace
        self.server.stop(grace)
