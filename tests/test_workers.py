"""The worker pool: strands keep each connection's order; backpressure never blocks."""

from __future__ import annotations

import functools
import logging
import os
import random
import socket
import threading
from collections.abc import Callable, Iterator

import pytest

from reference.connection import Connection
from reference.handler import EchoHandler
from reference.loop import EventLoop
from reference.reactor import Reactor
from reference.server import bind_listener
from reference.workers import SLOW_TASK, Outbox, PooledHandler, Strand, WorkerPool
from tests.helpers import ServerProcess, connect, exchange, recv_exactly

#: Registers a handler that takes a random time per chunk, in the server process.
JITTER = """
import random, time
from reference.handler import HANDLERS, EchoHandler
class JitteryEcho(EchoHandler):
    def data_received(self, data):
        time.sleep(random.random() * 0.003)  # Simulated handler work of varying length.
        super().data_received(data)
HANDLERS["jitter"] = JitteryEcho
"""


@pytest.fixture
def pool() -> Iterator[WorkerPool]:
    workers = WorkerPool(4)
    workers.start()
    yield workers
    assert workers.shutdown(10)


def test_Strand_runs_one_connections_tasks_in_post_order(pool: WorkerPool) -> None:
    rng = random.Random(7)
    seen: dict[int, list[int]] = {s: [] for s in range(8)}
    finished = threading.Semaphore(0)
    strands = [Strand(pool, on_idle=lambda: None) for _ in range(8)]
    for i in range(200):
        for s, strand in enumerate(strands):
            delay = rng.random() * 0.0005

            def task(s: int = s, i: int = i, delay: float = delay) -> None:
                threading.Event().wait(delay)  # Work of varying length, not a synchronisation.
                seen[s].append(i)

            strand.post(task)
    for strand in strands:
        strand.post(finished.release)
    for _ in strands:
        assert finished.acquire(timeout=30), "a strand never ran its last task"
    assert all(order == list(range(200)) for order in seen.values()), seen


def test_Strand_lets_different_connections_run_in_parallel(pool: WorkerPool) -> None:
    # Each task waits for the other: both pass only if two workers run them at once.
    meet = threading.Barrier(2)
    passed: list[bool] = []
    finished = threading.Barrier(3)
    for _ in range(2):
        strand = Strand(pool, on_idle=lambda: None)
        strand.post(lambda: passed.append(meet.wait(5) >= 0))
        strand.post(lambda: finished.wait(10))
    finished.wait(10)
    assert passed == [True, True]


@pytest.fixture
def loop() -> Iterator[EventLoop]:
    """An event loop running on a thread of its own."""
    running = EventLoop("test")
    thread = threading.Thread(target=running.run)
    thread.start()
    yield running
    running.stop()
    thread.join(10)
    assert not thread.is_alive()
    running.close()


def on_loop(loop: EventLoop, call: Callable[[], object]) -> None:
    """Run ``call`` on ``loop``'s thread and wait until it ran (and what it queued before)."""
    done = threading.Event()

    def run() -> None:
        call()
        done.set()

    loop.call_soon_threadsafe(run)
    assert done.wait(10), "the loop did not run the call"


def test_WorkerPool_wakes_the_loop_once_a_batch_of_quick_replies_is_done(
    loop: EventLoop,
) -> None:
    # No task counts as slow here, however loaded the machine: a slow one
    # would wake the loop before the batch ends (the next test).
    pool = WorkerPool(2, slow_task=3600.0)
    pool.start()
    outbox = Outbox(loop)
    ran: list[int] = []
    all_ran = threading.Event()
    seen_by_last: list[list[int]] = []

    def reply(i: int) -> None:
        ran.append(i)
        if i == 9:
            all_ran.set()

    def task(i: int) -> None:
        if i == 9:  # Nothing woke the loop yet: the replies of the batch wait for its end.
            seen_by_last.append(list(ran))
        outbox.post(reply, i)

    pool.submit_batch([functools.partial(task, i) for i in range(10)])
    assert all_ran.wait(10), f"replies never ran, only {ran}"
    assert pool.shutdown(10)
    assert seen_by_last == [[]]
    assert ran == list(range(10))


def test_WorkerPool_sends_a_slow_tasks_replies_before_the_rest_of_its_batch(
    pool: WorkerPool, loop: EventLoop
) -> None:
    outbox = Outbox(loop)
    replied = threading.Event()
    waited: list[bool] = []
    finished = threading.Event()

    def reply(_: object) -> None:
        replied.set()

    def slow() -> None:
        outbox.post(reply, None)
        threading.Event().wait(SLOW_TASK * 5)  # Slow by construction: a wait, not a sync.

    def next_in_batch() -> None:  # Its reply came while this batch was still running.
        waited.append(replied.wait(10))
        finished.set()

    pool.submit_batch([slow, next_in_batch])
    assert finished.wait(20)
    assert waited == [True], "the reply waited for the rest of the batch"


def test_WorkerPool_shares_a_batch_of_slow_tasks_between_workers(pool: WorkerPool) -> None:
    # After a slow task, the rest of the batch is shared: the two tasks after it
    # each wait for the other, and pass only if two workers run them at once.
    meet = threading.Barrier(2)
    met: list[bool] = []
    finished = threading.Barrier(3)

    def slow() -> None:
        threading.Event().wait(SLOW_TASK * 5)  # Slow by construction: a wait, not a sync.

    def meeting() -> None:
        met.append(meet.wait(10) >= 0)
        finished.wait(10)

    pool.submit_batch([slow, meeting, meeting])
    finished.wait(20)
    assert met == [True, True]


def test_Outbox_runs_posts_from_many_threads_in_each_threads_order(loop: EventLoop) -> None:
    outbox = Outbox(loop)
    got: dict[int, list[int]] = {t: [] for t in range(4)}
    done = threading.Semaphore(0)

    def post_many(t: int) -> None:
        for i in range(1000):
            outbox.post(got[t].append, i)
        outbox.post(lambda _: done.release(), None)

    threads = [threading.Thread(target=post_many, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    for _ in threads:
        assert done.acquire(timeout=10), "a thread's last post never ran"
    assert all(order == list(range(1000)) for order in got.values())


class _GatedRecorder(EchoHandler):
    """Echoes; records each ``data_received``; the first one waits for a gate."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[bytes] = []
        self.entered = threading.Event()
        self.gate = threading.Event()

    def data_received(self, data: bytes) -> None:
        self.calls.append(data)
        if len(self.calls) == 1:
            self.entered.set()
            self.gate.wait(10)
        super().data_received(data)


def test_PooledHandler_gathers_what_arrives_while_a_worker_is_busy_into_one_call(
    pool: WorkerPool, loop: EventLoop
) -> None:
    inner = _GatedRecorder()
    handler = PooledHandler(inner, pool)
    ours, theirs = socket.socketpair()
    with theirs:
        conn = Connection(loop, ours, handler)
        on_loop(loop, conn.start)
        on_loop(loop, lambda: handler.data_received(b"a"))
        assert inner.entered.wait(10), "the first chunk never reached a worker"
        for chunk in (b"b", b"c", b"d"):  # The worker is still busy with b"a".
            on_loop(loop, functools.partial(handler.data_received, chunk))
        inner.gate.set()
        theirs.settimeout(10)
        assert recv_exactly(theirs, 4) == b"abcd"
        on_loop(loop, conn.abort)
    assert inner.calls == [b"a", b"bcd"]


def test_Server_pool_keeps_each_connections_order_with_a_jittery_handler() -> None:
    with ServerProcess(["pool", "--workers", "8", "--handler", "jitter"], prefix=JITTER) as server:
        payloads = [os.urandom(20_000) for _ in range(12)]
        results: dict[int, bytes] = {}
        errors: list[BaseException] = []

        def client(i: int) -> None:
            try:
                with connect(server.address, timeout=60) as sock:
                    # Small writes with TCP_NODELAY: many chunks, many worker tasks.
                    results[i] = exchange(sock, payloads[i], chunks=[17, 301, 5, 1024], timeout=90)
            except BaseException as exc:  # Reported below.
                errors.append(exc)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(len(payloads))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert not errors, errors
        for i, payload in enumerate(payloads):
            assert results[i] == payload, f"connection {i} got its bytes out of order"


class _LogEvent(logging.Handler):
    """Sets an event when a record's message contains ``needle``."""

    def __init__(self, needle: str) -> None:
        super().__init__(logging.DEBUG)
        self.needle = needle
        self.event = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.needle in record.getMessage():
            self.event.set()


def test_Reactor_pool_pauses_reading_instead_of_blocking_the_loop() -> None:
    gate = threading.Event()

    class GatedEcho(EchoHandler):
        def data_received(self, data: bytes) -> None:
            gate.wait(30)  # Every worker is stuck until the test opens the gate.
            super().data_received(data)

    paused = _LogEvent("pause reading")
    logger = logging.getLogger("reference.workers")
    logger.addHandler(paused)
    old_level = logger.level
    logger.setLevel(logging.DEBUG)
    reactor = Reactor(bind_listener("127.0.0.1", 0), GatedEcho, workers=1)
    serving = threading.Thread(target=reactor.serve_forever)
    serving.start()
    try:
        payload = os.urandom(8 * 1024 * 1024)
        with connect(reactor.address, timeout=30) as sock:
            sender = threading.Thread(target=sock.sendall, args=(payload,))
            sender.start()
            assert paused.event.wait(20), "the pool never paused reading from the connection"
            # The worker is blocked, yet the loop still turns: it runs a callback.
            turned = threading.Event()
            reactor.loop.call_soon_threadsafe(turned.set)
            assert turned.wait(10), "the reactor thread is blocked"
            gate.set()
            assert recv_exactly(sock, len(payload)) == payload
            sender.join(30)
    finally:
        gate.set()
        logger.removeHandler(paused)
        logger.setLevel(old_level)
        reactor.stop()
        serving.join(30)
    assert not serving.is_alive()


#: Registers a handler that raises on a chunk containing b"boom".
CRASHY = """
from reference.handler import HANDLERS, EchoHandler
class CrashyEcho(EchoHandler):
    def data_received(self, data):
        if b"boom" in data:
            raise RuntimeError("the handler broke")
        super().data_received(data)
HANDLERS["crashy"] = CrashyEcho
"""


@pytest.mark.parametrize(
    "model",
    [["single"], ["pool", "--workers", "2"], ["multi", "--sub-reactors", "2"]],
    ids=["single", "pool", "multi-thread"],
)
def test_Server_closes_only_the_connection_whose_handler_raises(model: list[str]) -> None:
    with (
        ServerProcess([*model, "--handler", "crashy"], prefix=CRASHY) as server,
        connect(server.address) as bystander,
        connect(server.address) as victim,
    ):
        assert exchange(bystander, b"before") == b"before"
        victim.sendall(b"boom")
        server.wait_for_log(r"handler failed, closing the connection")
        try:
            assert victim.recv(100) == b""  # FIN, or ...
        except ConnectionResetError:
            pass  # ... RST: either way, the connection is closed.
        assert exchange(bystander, b"after") == b"after"
        assert server.alive()
