"""The worker pool: handler work off the reactor thread, in order per connection.

How this works
--------------
The reactor thread does all socket I/O. A :class:`PooledHandler` wraps the
protocol handler of one connection: the core calls it on the loop thread, and
it posts each call (``connection_made``, every ``data_received``,
``eof_received``, ``connection_lost``) to the connection's :class:`Strand`.

A strand is a FIFO of one connection's work that at most one worker runs at a
time (as in Boost.Asio): posting to an idle strand submits it to the pool; the
worker that picks it up runs its tasks in order, then lets it go. So two
chunks of one connection never overtake each other even when they are handled
by different workers, while different connections run in parallel.

Workers never touch a socket, a selector or a buffer: the inner handler replies
with ``transport.send``, which from a worker hands the bytes to the owning loop
with ``call_soon_threadsafe`` (FIFO, so replies keep the strand's order), and
the loop writes them.

Stopping: the connection cannot know whether the workers still owe replies for
what it read, so it asks the handler (``close_when_done``); the close is posted
to the strand and reaches the loop after those replies.

Backpressure without blocking the reactor: posting never waits. When a
connection has too much work waiting, or the pool's queue is long, the loop
pauses reading from *that* connection; once its strand has run dry, a worker
asks the loop to resume it.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import deque
from collections.abc import Callable
from functools import partial

from reference.connection import Connection
from reference.handler import Handler, HandlerFactory, Transport

__all__ = ["WorkerPool", "Strand", "PooledHandler", "pooled"]

log = logging.getLogger(__name__)

Task = Callable[[], object]

#: Tasks a strand runs before it goes to the back of the pool's queue.
_BATCH = 16


class WorkerPool:
    """A fixed number of threads running submitted tasks in FIFO order.

    Args:
        workers: Number of threads.
        max_backlog: Queue length above which connections that post more
            work are paused (see :class:`PooledHandler`); ``submit`` itself
            never blocks.
    """

    def __init__(self, workers: int, *, max_backlog: int | None = None) -> None:
        if workers < 1:
            raise ValueError(f"a worker pool needs at least 1 worker, got {workers}")
        self.size = workers
        self.max_backlog = max_backlog if max_backlog is not None else 64 * workers
        self._queue: queue.SimpleQueue[Task | None] = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._work, name=f"worker-{i + 1}", daemon=True)
            for i in range(workers)
        ]

    def start(self) -> None:
        """Start the threads."""
        for thread in self._threads:
            thread.start()

    def submit(self, task: Task) -> None:
        """Queue ``task`` for a worker. Any thread; never blocks."""
        self._queue.put(task)

    def backlog(self) -> int:
        """Tasks waiting for a worker (approximate)."""
        return self._queue.qsize()

    def shutdown(self, timeout: float) -> bool:
        """Let the workers finish what is queued, then end them.

        Returns:
            True when every thread ended within ``timeout`` seconds.
        """
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            if thread.is_alive():
                thread.join(timeout)
        return not any(thread.is_alive() for thread in self._threads)

    def _work(self) -> None:
        while (task := self._queue.get()) is not None:
            try:
                task()
            except Exception:
                log.exception("worker task failed")


class Strand:
    """One connection's work, run in order by at most one worker at a time.

    Args:
        pool: The pool whose workers run the tasks.
        on_idle: Called on the worker when the strand has run dry.
    """

    __slots__ = ("_pool", "_on_idle", "_lock", "_tasks", "_scheduled", "_running")

    def __init__(self, pool: WorkerPool, on_idle: Task) -> None:
        self._pool = pool
        self._on_idle = on_idle
        self._lock = threading.Lock()
        self._tasks: deque[Task] = deque()
        self._scheduled = False
        self._running = 0  # 1 while a worker runs one of its tasks

    def post(self, task: Task) -> int:
        """Add ``task`` after the others. Any thread; never blocks.

        Returns:
            How many tasks wait in the strand, ``task`` included.
        """
        with self._lock:
            self._tasks.append(task)
            waiting = len(self._tasks)
            submit = not self._scheduled
            self._scheduled = True
        if submit:
            self._pool.submit(self._run)
        return waiting

    def waiting(self) -> int:
        """How many tasks are posted and not yet finished. Any thread."""
        with self._lock:
            return len(self._tasks) + self._running

    def _run(self) -> None:
        tasks = self._tasks
        lock = self._lock
        for _ in range(_BATCH):
            with lock:
                if not tasks:
                    self._scheduled = False
                    self._running = 0
                    break
                task = tasks.popleft()
                self._running = 1
            try:
                task()
            except Exception:  # The strand must go on with the next task.
                log.exception("strand task failed")
        else:
            with lock:
                self._running = 0
            self._pool.submit(self._run)  # More to do: let other strands have a turn.
            return
        self._on_idle()


class PooledHandler:
    """Runs an inner handler on a worker pool, in order, through a strand.

    The core calls this object on the loop thread; every call is posted to the
    connection's strand and the inner handler runs on a worker.

    Args:
        inner: The protocol handler; it may block, it never sees a socket.
        pool: The workers.
        max_waiting: Tasks waiting in the strand above which reading pauses.
    """

    def __init__(self, inner: Handler, pool: WorkerPool, *, max_waiting: int = 4) -> None:
        self._inner = inner
        self._pool = pool
        self._max_waiting = max_waiting
        self._strand = Strand(pool, self._on_idle)
        self._conn: Connection | None = None
        self._paused = False
        self._failed = False

    # -- loop thread: the core calls these --------------------------------

    def connection_made(self, transport: Transport) -> None:
        assert isinstance(transport, Connection), "a pooled handler needs a Connection"
        self._conn = transport
        self._post(lambda: self._inner.connection_made(transport))

    def data_received(self, data: bytes) -> None:
        waiting = self._strand.post(partial(self._run_data, data))
        if not self._paused and (
            waiting > self._max_waiting or self._pool.backlog() > self._pool.max_backlog
        ):
            self._pause()

    def eof_received(self) -> bool:
        self._post(self._run_eof)
        return True  # The strand closes the connection once the work before EOF is done.

    def close_when_done(self) -> None:
        """Close the connection after the work posted so far (a stopping server).

        The close goes through the strand, after the replies the worker still
        owes, which reach the loop before it in the same order.
        """
        conn = self._conn
        assert conn is not None
        self._post(conn.close)

    def connection_lost(self, exc: Exception | None) -> None:
        def lost() -> None:  # Runs even after a failure: the handler's last call.
            try:
                self._inner.connection_lost(exc)
            except Exception:
                log.exception("%r: handler failed in connection_lost", self._conn)

        self._strand.post(lost)

    # -- flow control ----------------------------------------------------------

    def _pause(self) -> None:
        assert self._conn is not None
        self._paused = True
        log.debug(
            "%r: pause reading, %d tasks waiting, pool backlog %d",
            self._conn,
            self._strand.waiting(),
            self._pool.backlog(),
        )
        self._conn.pause_reading()
        # The strand may have run dry between the post and the pause, before
        # _paused was set; then no worker will ask for a resume: do it here.
        self._resume_if_idle()

    def _resume_if_idle(self) -> None:
        if self._paused and self._conn is not None and self._strand.waiting() == 0:
            self._paused = False
            self._conn.resume_reading()

    def _on_idle(self) -> None:  # On a worker.
        if self._paused and self._conn is not None:
            self._conn.loop.call_soon_threadsafe(self._resume_if_idle)

    # -- worker side ------------------------------------------------------------

    def _post(self, call: Task) -> int:
        def task() -> None:
            if self._failed:
                return
            try:
                call()
            except Exception as exc:
                self._fail(exc)

        return self._strand.post(task)

    def _run_data(self, data: bytes) -> None:
        if self._failed:
            return
        try:
            self._inner.data_received(data)
        except Exception as exc:
            self._fail(exc)

    def _fail(self, exc: Exception) -> None:
        self._failed = True
        log.exception("%r: handler failed, closing the connection", self._conn)
        if self._conn is not None:
            self._conn.loop.call_soon_threadsafe(self._conn.abort, exc)

    def _run_eof(self) -> None:
        if not self._inner.eof_received():
            assert self._conn is not None
            self._conn.close()


def pooled(factory: HandlerFactory, pool: WorkerPool) -> HandlerFactory:
    """A handler factory whose handlers run ``factory``'s handlers on ``pool``."""

    def make() -> Handler:
        return PooledHandler(factory(), pool)

    return make
