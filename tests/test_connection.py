"""Connection: buffering, flow control, the handler's call order, the state table."""

from __future__ import annotations

import select
import socket
import threading
from collections.abc import Callable, Iterator
from typing import TypeVar

import pytest

from reference.connection import Connection, ConnEvent, ConnState, IllegalTransition
from reference.handler import DiscardHandler, Handler, Transport
from reference.loop import EventLoop
from tests.helpers import recv_exactly, recv_until_eof, reset

T = TypeVar("T")


class RecordingHandler:
    """Records every call the core makes, in order."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.lost = threading.Event()

    def connection_made(self, transport: Transport) -> None:
        self.calls.append("connection_made")

    def data_received(self, data: bytes) -> None:
        if not self.calls[-1].startswith("data_received"):
            self.calls.append("data_received")

    def eof_received(self) -> bool | None:
        self.calls.append("eof_received")
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.calls.append(f"connection_lost({exc!r})")
        self.lost.set()


@pytest.fixture
def loop() -> Iterator[EventLoop]:
    loop = EventLoop("conn")
    thread = threading.Thread(target=loop.run)
    thread.start()
    yield loop
    loop.stop()
    thread.join(10)
    assert not thread.is_alive()
    loop.close()


def on_loop(loop: EventLoop, fn: Callable[[], T]) -> T:
    """Run ``fn`` on the loop's thread and return its result."""
    box: list[T] = []
    errors: list[BaseException] = []
    done = threading.Event()

    def run() -> None:
        try:
            box.append(fn())
        except BaseException as exc:  # Re-raised on the calling thread.
            errors.append(exc)
        done.set()

    loop.call_soon_threadsafe(run)
    assert done.wait(10), "the loop did not run the callback"
    if errors:
        raise errors[0]
    return box[0]


def make_connection(
    loop: EventLoop,
    handler: Handler,
    *,
    high_water: int = 256 * 1024,
    low_water: int = 0,
    linger: float = 10.0,
) -> tuple[Connection, socket.socket]:
    """A connection over a real TCP pair on loopback, and the peer's socket."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        peer = socket.create_connection(listener.getsockname(), timeout=10)
        ours, _ = listener.accept()

    def create() -> Connection:
        conn = Connection(
            loop, ours, handler, high_water=high_water, low_water=low_water, linger=linger
        )
        conn.start()
        return conn

    return on_loop(loop, create), peer


def test_Connection_calls_the_handler_in_asyncio_order(loop: EventLoop) -> None:
    handler = RecordingHandler()
    _, peer = make_connection(loop, handler)
    peer.sendall(b"hello")
    peer.shutdown(socket.SHUT_WR)
    assert recv_until_eof(peer) == b""
    assert handler.lost.wait(10)
    assert handler.calls == [
        "connection_made",
        "data_received",
        "eof_received",
        "connection_lost(None)",
    ]
    peer.close()


def test_Connection_buffers_what_the_socket_refuses_and_pauses_reading(loop: EventLoop) -> None:
    handler = DiscardHandler()
    conn, peer = make_connection(loop, handler, high_water=64 * 1024, low_water=16 * 1024)
    payload = bytes(range(256)) * 65536  # 16 MiB: far more than the socket buffers hold.
    on_loop(loop, lambda: conn.send_in_loop(payload))
    buffered, reading = on_loop(loop, lambda: (conn.buffered, conn.reading))
    assert 0 < buffered < len(payload)
    assert not reading, "reading goes on above the high-water mark"
    assert recv_exactly(peer, len(payload)) == payload
    # Drained below the low-water mark: reading resumes. Wait for the loop to see it.
    assert on_loop(loop, lambda: conn.buffered) == 0
    assert on_loop(loop, lambda: conn.reading)
    peer.close()


def test_Connection_send_from_other_threads_keeps_call_order(loop: EventLoop) -> None:
    conn, peer = make_connection(loop, DiscardHandler())
    messages = [b"message %05d;" % i for i in range(5000)]
    for message in messages:
        conn.send(message)  # Not the loop thread: handed over in call order.
    expected = b"".join(messages)
    assert recv_exactly(peer, len(expected)) == expected
    conn.close()
    assert recv_until_eof(peer) == b""
    peer.close()


def test_Connection_close_flushes_before_closing(loop: EventLoop) -> None:
    handler = RecordingHandler()
    conn, peer = make_connection(loop, handler)
    payload = b"\0\xff" * 500_000

    def send_and_close() -> None:
        conn.send_in_loop(payload)
        conn.close_in_loop()

    on_loop(loop, send_and_close)
    assert recv_until_eof(peer) == payload
    # Everything sent, then FIN; the socket stays open until the peer's EOF.
    assert on_loop(loop, lambda: conn.state) is ConnState.LINGERING
    peer.close()
    assert handler.lost.wait(10)
    assert on_loop(loop, lambda: conn.state) is ConnState.CLOSED


def test_Connection_reset_by_peer_closes_with_the_error(loop: EventLoop) -> None:
    handler = RecordingHandler()
    _, peer = make_connection(loop, handler)
    reset(peer)
    assert handler.lost.wait(10)
    assert handler.calls[-1].startswith("connection_lost(ConnectionResetError")


def test_Connection_rejects_an_illegal_transition_naming_state_and_event(loop: EventLoop) -> None:
    conn, peer = make_connection(loop, DiscardHandler())
    with pytest.raises(IllegalTransition, match="'flushed' is not allowed in state 'connected'"):
        on_loop(loop, lambda: conn._transition(ConnEvent.FLUSHED))
    peer.close()


def wait_unread_input(conn: Connection) -> None:
    """Wait until the connection's socket has input it has not read."""
    readable, _, _ = select.select([conn._sock], [], [], 10)
    assert readable, "the peer's bytes did not arrive"


def test_Connection_close_with_unread_input_lingers_then_ends_with_fin(loop: EventLoop) -> None:
    handler = RecordingHandler()
    conn, peer = make_connection(loop, handler)
    payload = bytes(range(256)) * 65536  # 16 MiB: most of it still owed at the close.
    on_loop(loop, conn.pause_reading)
    peer.sendall(b"never read" * 1000)
    wait_unread_input(conn)

    def send_and_close() -> None:
        conn.send_in_loop(payload)
        conn.close_in_loop()

    on_loop(loop, send_and_close)
    # A close with that input unread would reset the connection and drop the
    # kernel's send queue: every byte must come, then FIN.
    assert recv_until_eof(peer) == payload
    assert on_loop(loop, lambda: conn.state) is ConnState.LINGERING
    peer.sendall(b"sent after the server's FIN, thrown away")
    peer.shutdown(socket.SHUT_WR)
    assert handler.lost.wait(10)
    assert handler.calls == ["connection_made", "connection_lost(None)"]
    peer.close()


def test_Connection_lingers_no_longer_than_its_deadline(loop: EventLoop) -> None:
    handler = RecordingHandler()
    conn, peer = make_connection(loop, handler, linger=0.2)
    on_loop(loop, conn.close_in_loop)
    assert recv_until_eof(peer) == b""
    # The peer never closes: the connection closes anyway once the linger is over.
    assert handler.lost.wait(10)
    assert handler.calls[-1] == "connection_lost(None)"
    peer.close()


def test_Connection_stop_passes_no_more_input_to_the_handler(loop: EventLoop) -> None:
    handler = RecordingHandler()
    conn, peer = make_connection(loop, handler)
    on_loop(loop, conn.stop_in_loop)
    assert recv_until_eof(peer) == b""
    peer.sendall(b"after the stop")
    peer.shutdown(socket.SHUT_WR)
    assert handler.lost.wait(10)
    assert handler.calls == ["connection_made", "connection_lost(None)"]
    peer.close()


class DeferringEcho:
    """Echoes from another thread, as the pool does; closes when told, after its replies."""

    def __init__(self) -> None:
        self.transport: Transport | None = None
        self.received = bytearray()
        self.got_data = threading.Event()
        self.lost = threading.Event()

    def connection_made(self, transport: Transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.received += data  # Answered only when the connection stops.
        self.got_data.set()

    def eof_received(self) -> bool | None:
        return None

    def close_when_done(self) -> None:
        def answer_then_close() -> None:
            assert self.transport is not None
            self.transport.send(bytes(self.received))
            self.transport.close()

        threading.Thread(target=answer_then_close).start()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.set()


def test_Connection_stop_waits_for_a_deferred_handler_to_answer(loop: EventLoop) -> None:
    handler = DeferringEcho()
    conn, peer = make_connection(loop, handler)
    peer.sendall(b"owed")
    assert handler.got_data.wait(10)
    on_loop(loop, conn.stop_in_loop)
    assert recv_until_eof(peer) == b"owed"
    peer.close()
    assert handler.lost.wait(10)


def test_Connection_abort_with_bytes_owed_resets_the_peer(loop: EventLoop) -> None:
    conn, peer = make_connection(loop, DiscardHandler())
    payload = b"\0" * (16 * 1024 * 1024)

    def send_and_abort() -> None:
        conn.send_in_loop(payload)
        conn.abort()

    on_loop(loop, send_and_abort)
    with pytest.raises(ConnectionResetError):
        recv_until_eof(peer)
    peer.close()


def test_Connection_abort_with_nothing_owed_ends_with_fin(loop: EventLoop) -> None:
    conn, peer = make_connection(loop, DiscardHandler())
    on_loop(loop, conn.abort)
    assert recv_until_eof(peer) == b""
    peer.close()


@pytest.mark.parametrize("method", ["send_in_loop", "close_in_loop", "stop_in_loop"])
def test_Connection_in_loop_methods_raise_on_another_thread(loop: EventLoop, method: str) -> None:
    handler = RecordingHandler()
    conn, peer = make_connection(loop, handler)
    call = {
        "send_in_loop": lambda: conn.send_in_loop(b"x"),
        "close_in_loop": conn.close_in_loop,
        "stop_in_loop": conn.stop_in_loop,
    }[method]
    with pytest.raises(RuntimeError, match="but this loop runs on thread"):
        call()
    assert on_loop(loop, lambda: conn.state) is ConnState.CONNECTED
    peer.close()
    assert handler.lost.wait(10)
