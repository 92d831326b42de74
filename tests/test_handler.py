"""The handler cost dial (``Work``, ``--work``): parsed, validated, spent, on every model."""

from __future__ import annotations

import re
import threading
import time

import pytest

from reference.handler import EchoHandler, Transport, Work, WorkingHandler, WorkKind, with_work
from reference.reactor import Reactor
from reference.server import bind_listener
from tests.conftest import MODELS
from tests.helpers import ServerProcess, connect, exchange, recv_exactly
from tests.test_cli import assert_usage_error, run


@pytest.mark.parametrize(
    ("text", "kind", "amount"),
    [
        ("none", WorkKind.NONE, 0.0),
        ("block:50", WorkKind.BLOCK, 50.0),
        ("block:0.5", WorkKind.BLOCK, 0.5),
        ("cpu:200", WorkKind.CPU, 200.0),
        ("CPU:0", WorkKind.CPU, 0.0),
    ],
)
def test_Work_parses_each_kind_and_prints_what_parses_back(
    text: str, kind: WorkKind, amount: float
) -> None:
    work = Work.parse(text)
    assert (work.kind, work.amount) == (kind, amount)
    assert Work.parse(str(work)) == work


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("block:x", "'x' is not a number of milliseconds"),
        ("cpu:", "is not a number of microseconds"),
        ("block", "block needs an amount in milliseconds"),
        ("sleep:1", "unknown kind 'sleep'"),
        ("none:3", "none takes no amount"),
        ("block:-1", "between 0 and 10000"),
        ("cpu:inf", "between 0 and 1e+07"),
        ("block:nan", "between 0 and 10000"),
    ],
)
def test_Work_rejects_bad_text_saying_what_to_write(text: str, says: str) -> None:
    with pytest.raises(ValueError, match=re.escape(says)):
        Work.parse(text)


class _Recorder:
    """A transport that keeps what is sent."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def send(self, data: bytes) -> None:
        self.sent.append(data)

    def close(self) -> None:
        pass


@pytest.mark.parametrize("work", ["cpu:2000", "block:2"])
def test_WorkingHandler_spends_its_work_then_lets_the_inner_handler_reply(work: str) -> None:
    handler = WorkingHandler(EchoHandler(), Work.parse(work))
    transport = _Recorder()
    handler.connection_made(transport)
    before = time.perf_counter()
    handler.data_received(b"ping")
    spent = time.perf_counter() - before
    assert transport.sent == [b"ping"]
    # A lower bound that holds by construction (the busy loop runs until the
    # clock passes its end, sleep never returns early), whatever the load.
    assert spent >= 0.002, f"only {spent * 1e6:.0f} us spent"


def test_with_work_none_is_the_factory_itself() -> None:
    assert with_work(EchoHandler, Work()) is EchoHandler


@pytest.mark.parametrize(
    "work", ["block:x", "cpu:-5", "spin:1", "block"], ids=["nan", "negative", "kind", "no-amount"]
)
def test_cli_bad_work_is_one_line_and_exit_2(work: str) -> None:
    assert_usage_error(run("-m", "reference", "pool", "--work", work), f"--work: {work}:")


def test_cli_serve_bad_work_is_one_line_and_exit_2() -> None:
    result = run("-m", "conformance", "serve", "single", "--work", "block:x")
    assert_usage_error(result, "reactor-conformance serve single", "--work: block:x:", "number")


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("work", ["block:50", "cpu:200"])
def test_Server_with_work_still_echoes_in_order(name: str, work: str) -> None:
    with ServerProcess([*MODELS[name], "--work", work]) as server:
        if name == "multi-process":  # The sub-reactor processes built the same handler.
            server.wait_for_log(rf"sub-1: serving echo, work {work}")
            server.wait_for_log(rf"sub-2: serving echo, work {work}")
        with connect(server.address, timeout=30) as one, connect(server.address) as two:
            for i in range(5):  # Ping-pong: one message in flight per connection.
                for sock in (one, two):
                    message = b"message %d on %d" % (i, sock.fileno())
                    sock.sendall(message)
                    assert recv_exactly(sock, len(message)) == message
            payload = bytes(range(256)) * 64
            assert exchange(one, payload, half_close=True, timeout=60) == payload


class _Timeline:
    """What the handlers did, in order: ("enter" | "leave", connection number)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, int]] = []
        self.lock = threading.Lock()
        self.entered = [threading.Event(), threading.Event()]

    def factory(self, work: Work) -> type[EchoHandler]:
        timeline = self
        inner = with_work(EchoHandler, work)

        class Traced(EchoHandler):
            """Notes when a message's work begins and ends, around the costly handler."""

            def connection_made(self, transport: Transport) -> None:
                self.costly = inner()
                self.costly.connection_made(transport)

            def data_received(self, data: bytes) -> None:
                which = data[0] - ord("0")
                with timeline.lock:
                    timeline.events.append(("enter", which))
                timeline.entered[which].set()
                self.costly.data_received(data)
                with timeline.lock:
                    timeline.events.append(("leave", which))

        return Traced


@pytest.mark.parametrize(
    ("workers", "first_two"),
    [
        (1, [("enter", 0), ("leave", 0)]),  # one after the other
        (2, [("enter", 0), ("enter", 1)]),  # side by side
    ],
    ids=["1-worker-serial", "2-workers-overlap"],
)
def test_Reactor_pool_runs_two_connections_blocked_messages_side_by_side(
    workers: int, first_two: list[tuple[str, int]]
) -> None:
    # Shown by order, not by a clock: connection 1 sends only once connection
    # 0's message is inside its 1 s block. With two workers, 1's message enters
    # its block before 0's leaves; with one, it waits its turn.
    timeline = _Timeline()
    handler = timeline.factory(Work.parse("block:1000"))
    reactor = Reactor(bind_listener("127.0.0.1", 0), handler, workers=workers)
    serving = threading.Thread(target=reactor.serve_forever)
    serving.start()
    try:
        with connect(reactor.address, timeout=30) as zero, connect(reactor.address) as one:
            zero.sendall(b"0 first")
            assert timeline.entered[0].wait(20), "connection 0's message never reached a worker"
            one.sendall(b"1 second")
            assert recv_exactly(zero, 7) == b"0 first"
            assert recv_exactly(one, 8) == b"1 second"
    finally:
        reactor.stop()
        serving.join(30)
    assert not serving.is_alive()
    assert len(timeline.events) == 4
    assert timeline.events[:2] == first_two, timeline.events
