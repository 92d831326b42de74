"""The worker pool: handler work off the reactor thread, in order per connection.

How this works
--------------
The reactor thread does all socket I/O. A :class:`PooledHandler` wraps the
protocol handler of one connection: the core calls it on the loop thread, and
it posts each call (``connection_made``, the data, ``eof_received``,
``connection_lost``) to the connection's :class:`Strand`.

A strand is a FIFO of one connection's work that at most one worker runs at a
time (as in Boost.Asio): posting to an idle strand submits it to the pool; the
worker that picks it up runs its tasks in order, then lets it go. So two
chunks of one connection never overtake each other even when they are handled
by different workers, while different connections run in parallel.

Handoffs are batched both ways, because in CPython every handoff between
threads is a wakeup and a trip of the GIL, which cost more than echoing 64
bytes (measured with ``tools/bench.py``; see the README's "Which model when"):

- Loop to pool, per connection: the bytes a connection receives are appended
  to its *inbox*; only the first chunk after the inbox was emptied posts a
  task to the strand. The worker that runs it takes everything gathered by
  then and hands it to the handler as one ``data_received`` (several when it
  holds more than one read). So a strand has at most one data task waiting,
  however many reads the loop does before a worker comes.
- Loop to pool, per turn: a strand that becomes ready during a loop turn is
  not submitted at once but at the end of the turn (:class:`Departures`),
  all of that turn's strands as one *batch*: one queue item, one worker
  woken, and no worker competing for the GIL while the loop still reads. A
  worker runs a batch of quick tasks alone; after a slow task (one that
  blocked, or computed longer than :data:`SLOW_TASK`) it gives half of what
  is left back to the queue before each task, so that idle workers take the
  rest in parallel (:class:`WorkerPool`).
- Pool to loop: workers never touch a socket, a selector or a buffer. The
  inner handler replies through a :class:`PooledTransport`, which appends the
  reply to its loop's :class:`Outbox`, a FIFO shared by the workers. A worker
  wakes the loop once its batch is done (or after a slow task, so that a
  slow batch does not hold back replies that are ready); only the first
  wakeup after the loop emptied the FIFO reaches the loop, which then sends
  every reply in one callback. One FIFO per loop keeps each strand's
  replies in order, closes and aborts included.

Stopping: the connection cannot know whether the workers still owe replies for
what it read, so it asks the handler (``close_when_done``); the close is posted
to the strand and reaches the loop after those replies.

Backpressure without blocking the reactor: posting never waits. When a
connection's inbox holds too many bytes, or the pool's queue is long, the loop
pauses reading from *that* connection; once a worker has taken the inbox, it
asks the loop to resume it.

Facts about CPython this relies on
----------------------------------
- One thread runs Python at a time (the GIL). A thread that wakes up to run
  Python must wait for the one that holds it, and a thread that makes a
  system call lets another one in; so fewer wakeups, and fewer threads
  awake at once, is what makes the handoffs cheap, not shorter code.
- ``collections.deque`` appends and pops are thread-safe (documented), which
  is all the outbox's FIFO needs; its "a drain is due" flag is a plain
  attribute, read after the append, so that a wakeup is never lost (at worst
  one is spent on an empty FIFO).
- ``time.sleep`` and socket calls release the GIL; a pure-Python busy loop
  does not, except every ``sys.getswitchinterval()`` seconds. So a pool
  helps handlers that block, not handlers that compute.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from reference.connection import DEFAULT_READ_SIZE, Connection
from reference.handler import Handler, HandlerFactory, Transport
from reference.loop import EventLoop

__all__ = ["WorkerPool", "Strand", "Outbox", "PooledTransport", "PooledHandler", "pooled"]

log = logging.getLogger(__name__)

Task = Callable[[], object]

#: Tasks a strand runs before it goes to the back of the pool's queue.
_BATCH = 16
#: Seconds a task may take and still count as quick. A slower task (one that
#: blocked, or computed for longer) makes its worker share its batch: waking
#: another worker costs a few microseconds, a blocked one wastes far more.
SLOW_TASK = 100e-6
#: Bytes waiting in a connection's inbox above which reading from it pauses.
DEFAULT_MAX_PENDING = 256 * 1024
#: Most bytes given to one ``data_received``: no more than one read, so that a
#: reply to one call is no larger than without the inbox.
_MAX_CALL = DEFAULT_READ_SIZE


class WorkerPool:
    """A fixed number of threads running submitted tasks.

    Tasks start in about the order they were submitted; nothing more is
    promised between two tasks (a :class:`Strand` is what keeps an order).
    Work is queued in *batches* (a sequence of tasks, run in order): one queue
    item, one wakeup. A worker runs its batch alone while the tasks are quick,
    which in CPython is the fastest way (every extra thread that wakes up
    wants the GIL the others hold). Once a task has been slow (it blocked, or
    worked for more than ``slow_task`` seconds), the worker gives the
    second half of what is left back to the queue before each task, so idle
    workers share a batch of slow tasks, halving it again as they go.

    Args:
        workers: Number of threads.
        max_backlog: Batches waiting above which connections that post more
            work are paused (see :class:`PooledHandler`); ``submit`` itself
            never blocks.
        slow_task: Seconds above which a task counts as slow.
    """

    def __init__(
        self, workers: int, *, max_backlog: int | None = None, slow_task: float = SLOW_TASK
    ) -> None:
        if workers < 1:
            raise ValueError(f"a worker pool needs at least 1 worker, got {workers}")
        self.size = workers
        self.max_backlog = max_backlog if max_backlog is not None else 64 * workers
        self.slow_task = slow_task
        self._queue: queue.SimpleQueue[Sequence[Task] | None] = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._work, name=f"worker-{i + 1}", daemon=True)
            for i in range(workers)
        ]
        self._outboxes: dict[EventLoop, Outbox] = {}
        self._departures: dict[EventLoop, Departures] = {}
        self._outboxes_lock = threading.Lock()
        self._closing = False  # shutting down: a worker keeps its whole batch

    def start(self) -> None:
        """Start the threads."""
        for thread in self._threads:
            thread.start()

    def submit(self, task: Task) -> None:
        """Queue ``task`` for a worker. Any thread; never blocks."""
        self._queue.put((task,))

    def submit_batch(self, tasks: Sequence[Task]) -> None:
        """Queue ``tasks`` to run in order, by one worker unless they are slow. Any thread."""
        if tasks:
            self._queue.put(tasks)

    def backlog(self) -> int:
        """Batches waiting for a worker (approximate)."""
        return self._queue.qsize()

    def outbox(self, loop: EventLoop) -> Outbox:
        """The one outbox through which the workers reply to ``loop``. Any thread."""
        box = self._outboxes.get(loop)
        if box is None:
            with self._outboxes_lock:
                box = self._outboxes.setdefault(loop, Outbox(loop))
        return box

    def departures(self, loop: EventLoop) -> Departures:
        """The strands ``loop`` submits at the end of its turn. ``loop``'s thread only."""
        gate = self._departures.get(loop)
        if gate is None:
            gate = self._departures[loop] = Departures(loop, self)
        return gate

    def shutdown(self, timeout: float) -> bool:
        """Let the workers finish what is queued, then end them.

        Returns:
            True when every thread ended within ``timeout`` seconds.
        """
        self._closing = True
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            if thread.is_alive():
                thread.join(timeout)
        return not any(thread.is_alive() for thread in self._threads)

    def _work(self) -> None:
        get, put, clock, slow_task = (
            self._queue.get,
            self._queue.put,
            time.perf_counter,
            self.slow_task,
        )
        # The outboxes this worker posted to and has not woken yet: woken once
        # its batch is done (or a task was slow), not at the first reply.
        unwoken: set[Outbox] = set()
        _worker.unwoken = unwoken
        slow = False  # the last task this worker ran was slow
        while (batch := get()) is not None:
            i, end = 0, len(batch)
            try:
                while i < end:
                    if slow and end - i > 1 and not self._closing:
                        # Share: the second half goes back to the queue.
                        half = i + (end - i + 1) // 2
                        put(batch[half:end])
                        end = half
                    task = batch[i]
                    i += 1
                    start = clock()
                    try:
                        task()
                    except Exception:
                        log.exception("worker task failed")
                    slow = clock() - start > slow_task
                    if slow and unwoken:  # Its replies go now; the next task may be slow too.
                        _wake_all(unwoken)
            finally:
                if unwoken:
                    _wake_all(unwoken)


#: Per thread: on a pool worker, ``unwoken`` is the set of outboxes it posted
#: to without waking their loops yet; elsewhere it is absent.
_worker = threading.local()


def _wake_all(unwoken: set[Outbox]) -> None:
    for box in unwoken:
        box.wake()
    unwoken.clear()


class Strand:
    """One connection's work, run in order by at most one worker at a time.

    Besides tasks, a strand gathers *data* (bytes, for a handler's
    ``data_received``) in an inbox: :meth:`post_data` appends to it and queues
    one data task only when none is waiting; the worker that reaches that
    task takes the whole inbox, in the same critical section, and hands it to
    ``on_data``. One lock acquisition per chunk on the posting side, one per
    task on the worker's (locks are dear: on some machines one costs as much
    as ten Python calls).

    Args:
        pool: The pool whose workers run the tasks.
        on_idle: Called on the worker when the strand has run dry.
        on_data: Called on the worker with the chunks gathered by
            :meth:`post_data`, in arrival order.
    """

    __slots__ = (
        "_pool",
        "_on_idle",
        "_on_data",
        "_lock",
        "_tasks",
        "_scheduled",
        "_running",
        "_inbox",
        "_inbox_bytes",
        "_data_waiting",
    )

    def __init__(
        self,
        pool: WorkerPool,
        on_idle: Task | None = None,
        on_data: Callable[[list[bytes]], object] | None = None,
    ) -> None:
        self._pool = pool
        self._on_idle = on_idle
        self._on_data = on_data
        self._lock = threading.Lock()
        self._tasks: deque[Task | None] = deque()  # None: take the inbox, call on_data
        self._scheduled = False
        self._running = 0  # 1 while a worker runs one of its tasks
        self._inbox: list[bytes] = []
        self._inbox_bytes = 0
        self._data_waiting = False  # a data task is queued and has not started

    def post(self, task: Task, *, submit: Callable[[Task], None] | None = None) -> int:
        """Add ``task`` after the others. Any thread; never blocks.

        Args:
            task: The work.
            submit: What hands the strand to the pool when it was idle
                (default: the pool's own ``submit``, at once).

        Returns:
            How many tasks wait in the strand, ``task`` included.
        """
        lock = self._lock
        lock.acquire()
        try:
            self._tasks.append(task)
            waiting = len(self._tasks)
            go = not self._scheduled
            self._scheduled = True
        finally:
            lock.release()
        if go:
            (submit or self._pool.submit)(self._run)
        return waiting

    def post_data(self, data: bytes, *, submit: Callable[[Task], None] | None = None) -> int:
        """Add ``data`` to the inbox; queue a data task unless one waits. Any thread.

        Args:
            data: The next chunk.
            submit: As for :meth:`post`.

        Returns:
            How many bytes wait in the inbox, ``data`` included.
        """
        lock = self._lock
        lock.acquire()
        try:
            self._inbox.append(data)
            self._inbox_bytes += len(data)
            pending = self._inbox_bytes
            go = False
            if not self._data_waiting:
                self._data_waiting = True
                self._tasks.append(None)
                go = not self._scheduled
                self._scheduled = True
        finally:
            lock.release()
        if go:
            (submit or self._pool.submit)(self._run)
        return pending

    def waiting(self) -> int:
        """How many tasks are posted and not yet finished. Any thread."""
        with self._lock:
            return len(self._tasks) + self._running

    def data_waiting(self) -> bool:
        """True while a data task is queued and no worker has taken the inbox yet. Any thread."""
        with self._lock:
            return self._data_waiting

    def _run(self) -> None:
        tasks = self._tasks
        lock = self._lock
        chunks: list[bytes] = []
        for _ in range(_BATCH):
            lock.acquire()
            try:
                if not tasks:
                    self._scheduled = False
                    self._running = 0
                    break
                task = tasks.popleft()
                if task is None:  # The data task: take the inbox with it.
                    chunks = self._inbox
                    self._inbox = []
                    self._inbox_bytes = 0
                    self._data_waiting = False
                self._running = 1
            finally:
                lock.release()
            try:
                if task is not None:
                    task()
                elif self._on_data is not None:
                    self._on_data(chunks)
            except Exception:  # The strand must go on with the next task.
                log.exception("strand task failed")
        else:
            with lock:
                self._running = 0
            self._pool.submit(self._run)  # More to do: let other strands have a turn.
            return
        if self._on_idle is not None:
            self._on_idle()


class Departures:
    """Strands that one loop hands to the pool, submitted once its turn's reads are done.

    Loop thread only. The first :meth:`add` in a turn schedules :meth:`flush`
    as a timer due at once: a loop turn runs its due timers right after its
    ready sockets (see :mod:`reference.loop`), so the flush comes after every
    read of the turn, and, unlike ``call_soon_threadsafe``, costs no wakeup
    byte. Until then no worker is woken, so the loop reads every ready socket
    without handing the GIL to a worker between two reads.

    Args:
        loop: The loop whose turn it is.
        pool: The pool the strands go to.
    """

    __slots__ = ("_loop", "_submit", "_runs")

    def __init__(self, loop: EventLoop, pool: WorkerPool) -> None:
        self._loop = loop
        self._submit = pool.submit_batch
        self._runs: list[Task] = []

    def add(self, run: Task) -> None:
        """Submit ``run`` to the pool at the end of this turn. Loop thread only."""
        if not self._runs:
            self._loop.call_later(0.0, self.flush)
        self._runs.append(run)

    def flush(self) -> None:
        """Submit what was added this turn. Loop thread only."""
        runs, self._runs = self._runs, []
        self._submit(runs)


class Outbox:
    """What the workers hand to one loop: a FIFO of calls, drained in one callback.

    Any thread may :meth:`post`; the loop runs the calls in post order. A post
    from a pool worker wakes the loop when the worker's batch is done (or
    after a slow task); a post from any other thread wakes it at once. Either
    way only the first wakeup after the loop emptied the FIFO reaches the
    loop; the posts that come before it runs ride along (one wakeup per batch,
    not per reply).

    Args:
        loop: The loop that runs the calls.
    """

    __slots__ = ("_loop", "_calls", "_armed")

    def __init__(self, loop: EventLoop) -> None:
        self._loop = loop
        self._calls: deque[tuple[Callable[[Any], object], Any]] = deque()
        self._armed = False  # a drain is scheduled and has not started yet

    def post(self, call: Callable[[Any], object], arg: Any) -> None:
        """Run ``call(arg)`` on the loop thread, after the calls posted before. Any thread."""
        self._calls.append((call, arg))
        # Append first, then look at the flag: the drain clears the flag before
        # it takes the calls, so either it takes this one, or the flag is clear
        # and a wakeup is owed (at worst one whose drain finds the FIFO empty).
        if not self._armed:
            unwoken = getattr(_worker, "unwoken", None)
            if unwoken is None:
                self.wake()
            else:
                unwoken.add(self)  # The worker wakes us once its batch is done.

    def wake(self) -> None:
        """Make the loop drain the FIFO soon, unless a drain is already due. Any thread."""
        if not self._armed:
            self._armed = True
            self._loop.call_soon_threadsafe(self._drain)

    def _drain(self) -> None:
        self._armed = False
        calls = self._calls
        # Only what is here now: later posts scheduled a drain of their own,
        # so workers that keep posting cannot keep the loop from its sockets.
        for _ in range(len(calls)):
            call, arg = calls.popleft()
            try:
                call(arg)
            except Exception:
                log.exception("%s: reply %r failed", self._loop.name, call)


class PooledTransport:
    """The transport a pooled handler sees: replies go through its loop's outbox.

    ``send`` and ``close`` may be called from any thread; they reach the
    connection on its loop, in call order, after what the strand sent before.

    Args:
        conn: The connection.
        outbox: The outbox of the connection's loop.
    """

    __slots__ = ("_conn", "_post", "_send_in_loop")

    def __init__(self, conn: Connection, outbox: Outbox) -> None:
        self._conn = conn
        self._post = outbox.post
        self._send_in_loop = conn.send_in_loop

    def send(self, data: bytes) -> None:
        """Queue ``data`` for the peer, after the replies before it. Any thread."""
        # A copy unless immutable: the handler may reuse its buffer once this returns.
        self._post(self._send_in_loop, data if type(data) is bytes else bytes(data))

    def close(self) -> None:
        """Flush what is queued, then close. Any thread."""
        self._post(Connection.close_in_loop, self._conn)

    def abort(self, exc: Exception | None) -> None:
        """Close at once, after the replies before, dropping what is unsent. Any thread."""
        self._post(self._conn.abort, exc)

    def __repr__(self) -> str:
        return repr(self._conn)


class PooledHandler:
    """Runs an inner handler on a worker pool, in order, through a strand.

    The core calls this object on the loop thread; every call is posted to the
    connection's strand and the inner handler runs on a worker. Data is
    gathered in an inbox: at most one data task waits in the strand at a time.

    Args:
        inner: The protocol handler; it may block, it never sees a socket.
        pool: The workers.
        max_pending: Bytes waiting in the inbox above which reading pauses.
    """

    __slots__ = (
        "_inner",
        "_pool",
        "_max_pending",
        "_strand",
        "_conn",
        "_transport",
        "_outbox",
        "_submit",
        "_paused",
        "_failed",
    )

    def __init__(
        self, inner: Handler, pool: WorkerPool, *, max_pending: int = DEFAULT_MAX_PENDING
    ) -> None:
        self._inner = inner
        self._pool = pool
        self._max_pending = max_pending
        self._strand = Strand(pool, on_data=self._run_data)
        self._conn: Connection | None = None
        self._transport: PooledTransport | None = None
        self._outbox: Outbox | None = None
        self._submit: Callable[[Task], None] | None = None
        self._paused = False  # loop thread only
        self._failed = False

    # -- loop thread: the core calls these --------------------------------

    def connection_made(self, transport: Transport) -> None:
        assert isinstance(transport, Connection), "a pooled handler needs a Connection"
        self._conn = transport
        self._outbox = self._pool.outbox(transport.loop)
        self._submit = self._pool.departures(transport.loop).add
        self._transport = PooledTransport(transport, self._outbox)
        self._strand.post(self._run_made)

    def data_received(self, data: bytes) -> None:
        pending = self._strand.post_data(data, submit=self._submit)
        if not self._paused and (
            pending > self._max_pending or self._pool.backlog() > self._pool.max_backlog
        ):
            self._pause(pending)

    def eof_received(self) -> bool:
        self._strand.post(self._run_eof)
        return True  # The strand closes the connection once the work before EOF is done.

    def close_when_done(self) -> None:
        """Close the connection after the work posted so far (a stopping server).

        The close goes through the strand, after the replies the worker still
        owes, which reach the loop before it in the same order.
        """
        transport = self._transport
        assert transport is not None
        self._strand.post(transport.close, submit=self._submit)

    def connection_lost(self, exc: Exception | None) -> None:
        def lost() -> None:  # Runs even after a failure: the handler's last call.
            try:
                self._inner.connection_lost(exc)
            except Exception:
                log.exception("%r: handler failed in connection_lost", self._conn)

        self._strand.post(lost)

    # -- flow control ----------------------------------------------------------

    def _pause(self, pending: int) -> None:
        assert self._conn is not None
        self._paused = True
        log.debug(
            "%r: pause reading, %d bytes waiting, pool backlog %d",
            self._conn,
            pending,
            self._pool.backlog(),
        )
        self._conn.pause_reading()
        # A worker may have taken the inbox between the append and the pause,
        # before _paused was set; then no worker will ask for a resume: look here.
        self._resume_if_taken(None)

    def _resume_if_taken(self, _: object) -> None:  # On the loop, through the outbox.
        if self._paused and self._conn is not None and not self._strand.data_waiting():
            self._paused = False
            self._conn.resume_reading()

    # -- worker side ------------------------------------------------------------

    def _run_made(self) -> None:
        assert self._transport is not None
        try:
            self._inner.connection_made(self._transport)
        except Exception as exc:
            self._fail(exc)

    def _run_data(self, chunks: list[bytes]) -> None:
        if self._paused and self._outbox is not None:
            self._outbox.post(self._resume_if_taken, None)
        if len(chunks) == 1:  # The common case: one read since the last task.
            self._deliver(chunks[0])
            return
        group: list[bytes] = []
        size = 0
        for chunk in chunks:  # Each chunk is one read, so at most _MAX_CALL bytes.
            if group and size + len(chunk) > _MAX_CALL:
                self._deliver(b"".join(group))
                group, size = [], 0
            group.append(chunk)
            size += len(chunk)
        self._deliver(b"".join(group))

    def _deliver(self, data: bytes) -> None:
        if self._failed:
            return
        try:
            self._inner.data_received(data)
        except Exception as exc:
            self._fail(exc)

    def _run_eof(self) -> None:
        if self._failed:
            return
        assert self._transport is not None
        try:
            keep_open = self._inner.eof_received()
        except Exception as exc:
            self._fail(exc)
            return
        if not keep_open:
            self._transport.close()

    def _fail(self, exc: Exception) -> None:
        self._failed = True
        log.exception("%r: handler failed, closing the connection", self._conn)
        if self._transport is not None:
            self._transport.abort(exc)


def pooled(factory: HandlerFactory, pool: WorkerPool) -> HandlerFactory:
    """A handler factory whose handlers run ``factory``'s handlers on ``pool``."""

    def make() -> Handler:
        return PooledHandler(factory(), pool)

    return make
