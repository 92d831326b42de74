"""The worker pool: strands keep each connection's order; backpressure never blocks."""

from __future__ import annotations

import logging
import os
import random
import threading
from collections.abc import Iterator

import pytest

from reference.handler import EchoHandler
from reference.reactor import Reactor
from reference.server import bind_listener
from reference.workers import Strand, WorkerPool
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
