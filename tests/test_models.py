"""Behaviour of every server model over real sockets, each server in a subprocess."""

from __future__ import annotations

import os
import selectors
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from reference.connection import DEFAULT_HIGH_WATER, DEFAULT_READ_SIZE
from reference.server import DEFAULT_GRACE
from tests.helpers import (
    ServerProcess,
    connect,
    exchange,
    recv_exactly,
    recv_until_eof,
    reset,
)

MIB = 1024 * 1024


def assert_same(expected: bytes, received: bytes) -> None:
    """Compare two byte strings, naming the first differing offset."""
    if expected != received:
        offset = next(
            (i for i, (a, b) in enumerate(zip(expected, received, strict=False)) if a != b),
            min(len(expected), len(received)),
        )
        raise AssertionError(
            f"sent {len(expected)} bytes, received {len(received)}; first difference at "
            f"offset {offset}: expected {expected[offset : offset + 16]!r}, "
            f"got {received[offset : offset + 16]!r}"
        )


def assert_echoes(server: ServerProcess, payload: bytes = b"still alive\0") -> None:
    """A fresh connection gets ``payload`` back, then EOF after a half-close."""
    with connect(server.address) as sock:
        assert_same(payload, exchange(sock, payload, half_close=True, timeout=20))


#: What a server logs when a close waited for a deadline, or a stop was forced.
GAVE_UP = r"still flushing|did not close|no EOF from the peer|grace 0\.0s"

#: The server's debug line for a closed connection: how many bytes it read.
CLOSED = r"\('127\.0\.0\.1', {port}\)[^>]*>: closed; (\d+) bytes read"


@dataclass(frozen=True)
class StreamEnd:
    """What a client that sent and read continuously saw after the server was stopped.

    Attributes:
        sent: Every byte the client sent.
        received: Every byte it received.
        port: Its own port, to find its connection in the server's log.
        reset: True when the stream ended with a reset rather than a FIN.
    """

    sent: bytes
    received: bytes
    port: int
    reset: bool


def stream_through_stop(
    server: ServerProcess,
    stop: Callable[[], None],
    *,
    before: int = 4 * MIB,
    timeout: float = 30.0,
) -> StreamEnd:
    """Send and read continuously; once ``before`` bytes came back, call ``stop``.

    The client sends in large writes and reads in smaller ones, so the
    pipeline to the server and back is full when ``stop`` is called (the
    server owes a lot). After ``stop`` it sends nothing more and reads until
    the stream ends; then it closes.

    Raises:
        TimeoutError: The stream did not end within ``timeout`` seconds.
    """
    payload = os.urandom(64 * MIB)
    view = memoryview(payload)
    received = bytearray()
    sent = 0
    stopped = False
    reset_seen = False
    deadline = time.monotonic() + timeout
    with connect(server.address) as sock, selectors.DefaultSelector() as sel:
        port = sock.getsockname()[1]
        sock.setblocking(False)
        sel.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(
                    f"no end of stream within {timeout}s: sent {sent}, received {len(received)}"
                )
            ready = sel.select(left)
            mask = ready[0][1] if ready else 0
            if mask & selectors.EVENT_WRITE:
                if sent == len(payload):
                    raise AssertionError(f"sent all {sent} bytes before the server was stopped")
                try:
                    sent += sock.send(view[sent : sent + 256 * 1024])
                except BlockingIOError:
                    pass
            if mask & selectors.EVENT_READ:
                try:
                    data = sock.recv(64 * 1024)
                except BlockingIOError:
                    continue
                except ConnectionResetError:
                    reset_seen = True
                    break
                if not data:
                    break
                received += data
            if not stopped and len(received) >= before:
                stop()
                stopped = True
                sel.modify(sock, selectors.EVENT_READ)  # Send nothing more.
    return StreamEnd(payload[:sent], bytes(received), port, reset_seen)


def assert_stream_complete(server: ServerProcess, end: StreamEnd) -> None:
    """Every byte the server read came back, in order, then FIN; the server exited 0."""
    assert not end.reset, (
        f"connection reset after {len(end.received)} bytes received, {len(end.sent)} sent"
    )
    assert_same(end.sent[: len(end.received)], end.received)
    read = int(server.wait_for_log(CLOSED.format(port=end.port)).group(1))
    assert len(end.received) == read, (
        f"the server read {read} bytes and sent back {len(end.received)} before its FIN"
    )
    assert server.proc.wait(20) == 0
    assert not server.log_matches(GAVE_UP), "the server waited for a deadline or forced a stop"


def test_Server_echoes_every_byte_value_and_nothing_more(server: ServerProcess) -> None:
    payload = bytes(range(256)) * 16 + b"\0" * 4096 + b"a\0b\0\0c" * 100
    with connect(server.address) as sock:
        assert_same(payload, exchange(sock, payload))
        sock.shutdown(socket.SHUT_WR)
        assert recv_until_eof(sock) == b""


def test_Server_echoes_16mib_sent_at_once(server: ServerProcess) -> None:
    payload = os.urandom(16 * MIB)
    with connect(server.address) as sock:
        assert_same(payload, exchange(sock, payload, read_size=1 * MIB, timeout=120))


def test_Server_keeps_order_of_many_small_writes(server: ServerProcess) -> None:
    payload = bytes(i % 251 for i in range(30_000))
    with connect(server.address) as sock:
        assert_same(payload, exchange(sock, payload, chunks=[1, 2, 3, 5, 7], read_size=13))


def test_Server_keeps_order_of_pipelined_bursts(server: ServerProcess) -> None:
    bursts = [f"burst {i:04d} ".encode() * 50 for i in range(100)]
    payload = b"".join(bursts)
    with connect(server.address) as sock:
        for burst in bursts:  # Everything is sent before anything is read.
            sock.sendall(burst)
        assert_same(payload, recv_exactly(sock, len(payload)))


def test_Server_flushes_what_it_owes_after_peer_half_close(server: ServerProcess) -> None:
    payload = os.urandom(4 * MIB)
    with connect(server.address) as sock:
        # The FIN follows the data at once; the server still owes all of it.
        assert_same(payload, exchange(sock, payload, half_close=True, timeout=60))


def test_Server_survives_peer_reset_with_replies_queued(server: ServerProcess) -> None:
    bystander = connect(server.address)
    assert_same(b"before", exchange(bystander, b"before"))
    victim = connect(server.address)
    victim.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    victim.settimeout(5)
    # Send without reading until the server stops reading from us: its replies
    # are then queued for a peer that resets.
    mark = len(server.stderr)
    sender = threading.Thread(target=_send_ignoring_errors, args=(victim, os.urandom(8 * MIB)))
    sender.start()
    server.wait_for_log(r"pause reading, \d+ bytes buffered", start=mark)
    reset(victim)
    sender.join(10)
    server.wait_for_log(r"dropped: .*(reset|Broken pipe)", start=mark)
    assert server.alive()
    assert_same(b"after", exchange(bystander, b"after"))
    assert_echoes(server)
    bystander.close()


def _send_ignoring_errors(sock: socket.socket, payload: bytes) -> None:
    try:
        sock.sendall(payload)
    except OSError:
        pass  # The test resets the socket under the sender's feet.


def test_Server_bounds_memory_of_a_peer_that_does_not_read(server: ServerProcess) -> None:
    payload = os.urandom(64 * MIB)
    errors: list[BaseException] = []

    def send_all(sock: socket.socket) -> None:
        try:
            sock.sendall(payload)
        except BaseException as exc:  # Reported by the main thread.
            errors.append(exc)

    with connect(server.address, timeout=60) as sock:
        sender = threading.Thread(target=send_all, args=(sock,))
        sender.start()
        # The server must stop reading from us; only then do we start to read.
        first = server.wait_for_log(r"pause reading, (\d+) bytes buffered")
        assert int(first.group(1)) <= DEFAULT_HIGH_WATER + DEFAULT_READ_SIZE
        received = recv_exactly(sock, len(payload))
        sender.join(60)
        assert not sender.is_alive(), "the sender is still blocked after every byte came back"
        assert not errors, errors
    assert_same(payload, received)
    pauses = [int(m.group(1)) for m in server.log_matches(r"pause reading, (\d+) bytes buffered")]
    assert max(pauses) <= DEFAULT_HIGH_WATER + DEFAULT_READ_SIZE, pauses
    # Had the server buffered the 64 MiB it was sent, its peak memory would show it.
    assert server.peak_rss() < 48 * MIB


def test_Server_serves_1000_connections_opened_at_once(server: ServerProcess) -> None:
    socks = [connect(server.address, timeout=20) for _ in range(1000)]
    try:
        for i, sock in enumerate(socks):
            sock.sendall(b"connection %d\n" % i)
        for i, sock in enumerate(socks):
            expected = b"connection %d\n" % i
            assert recv_exactly(sock, len(expected)) == expected
    finally:
        for sock in socks:
            sock.close()


def test_Server_does_not_let_idle_connections_block_a_busy_one(server: ServerProcess) -> None:
    idle = [connect(server.address) for _ in range(100)]
    idle[0].sendall(b"half a messa")  # Idle after an incomplete message, too.
    try:
        with connect(server.address, timeout=10) as busy:
            for i in range(500):
                message = b"ping %d" % i
                busy.sendall(message)
                assert recv_exactly(busy, len(message)) == message
    finally:
        for sock in idle:
            sock.close()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_Server_stops_cleanly_on_signal(server: ServerProcess, signum: int) -> None:
    with connect(server.address) as idle, connect(server.address) as busy:
        assert_same(b"x" * 1000, exchange(busy, b"x" * 1000))
        server.proc.send_signal(signum)
        # The server sends its FIN, then waits for ours: it ends when we close.
        assert recv_until_eof(idle) == b""
        assert recv_until_eof(busy) == b""
    assert server.proc.wait(20) == 0
    assert not server.log_matches(GAVE_UP), "the server waited for a deadline or forced a stop"


def test_Server_stop_sends_every_byte_it_read_then_fin(server: ServerProcess) -> None:
    end = stream_through_stop(server, lambda: server.proc.send_signal(signal.SIGTERM))
    assert_stream_complete(server, end)


def test_Server_multi_process_stop_by_signal_to_every_process_loses_nothing() -> None:
    # As a process-group SIGTERM (how the suite stops a server): each sub-reactor
    # stops on its own signal, then sees the channel close; that is one stop, not two.
    with ServerProcess(["multi", "--sub-reactors", "2", "--mode", "process"]) as server:
        for index in (1, 2):  # Each has its SIGTERM handler once its loop runs.
            server.wait_for_log(rf"sub-{index}: running")

        def signal_every_process() -> None:
            for pid in [*server.pids()[1:], server.pid]:  # Processes this test started.
                os.kill(pid, signal.SIGTERM)

        end = stream_through_stop(server, signal_every_process)
        assert_stream_complete(server, end)


def test_Server_stops_within_its_grace_period_when_a_peer_never_reads(
    server: ServerProcess,
) -> None:
    with connect(server.address, timeout=30) as stuck:
        stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        mark = len(server.stderr)
        sender = threading.Thread(target=_send_ignoring_errors, args=(stuck, os.urandom(8 * MIB)))
        sender.start()
        server.wait_for_log(r"pause reading, \d+ bytes buffered", start=mark)
        assert server.signal_and_wait(signal.SIGTERM) == 0
        server.wait_for_log(r"still flushing, dropped", start=mark)
        stuck.close()
        sender.join(10)


def test_Server_stop_ends_at_the_grace_deadline_when_a_peer_never_closes(
    server: ServerProcess,
) -> None:
    with connect(server.address, timeout=30) as stays:
        assert_same(b"owed", exchange(stays, b"owed"))
        mark = len(server.stderr)
        started = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        assert recv_until_eof(stays) == b""  # The server's FIN; ours never comes.
        assert server.proc.wait(20) == 0
        took = time.monotonic() - started
        # Closed at a deadline: the server's grace, or (a tie) the connection's own linger.
        server.wait_for_log(r"but their peers did not close|no EOF from the peer", start=mark)
    assert took < DEFAULT_GRACE + 5, f"the stop took {took:.1f}s, the grace is {DEFAULT_GRACE}s"


def test_Server_with_discard_handler_replies_nothing(model: list[str]) -> None:
    with ServerProcess([*model, "--handler", "discard"]) as server, connect(server.address) as sock:
        assert exchange(sock, os.urandom(MIB), half_close=True) == b""


def test_Server_with_small_water_marks_echoes_a_large_payload(model: list[str]) -> None:
    high, low = 4096, 1024
    with ServerProcess([*model, "--high-water", str(high), "--low-water", str(low)]) as server:
        # Every loop that owns connections says which marks it got: each
        # sub-reactor process for itself, from its own command line.
        owners = ["sub-1", "sub-2"] if "process" in model else ["main"]
        for owner in owners:
            server.wait_for_log(rf"{owner}: .* stop reading above {high} bytes .* at {low}")
        payload = os.urandom(32 * MIB)  # More than the kernel's buffers on both sides hold.
        with connect(server.address, timeout=60) as sock:
            sender = threading.Thread(target=_send_ignoring_errors, args=(sock, payload))
            sender.start()
            # Not reading yet: the replies back up until the server stops reading from us.
            first = server.wait_for_log(r"pause reading, (\d+) bytes buffered")
            assert int(first.group(1)) <= high + DEFAULT_READ_SIZE
            received = recv_exactly(sock, len(payload))
            sender.join(60)
            assert not sender.is_alive(), "the sender is still blocked after every byte came back"
        assert_same(payload, received)
        resumes = [int(m.group(1)) for m in server.log_matches(r"resume reading, (\d+) bytes")]
        assert resumes, "the server never read again after it paused"
        assert max(resumes) <= low, resumes
        assert_echoes(server)  # The other sub-reactor too, in process mode.


def test_Server_survives_running_out_of_descriptors(model: list[str]) -> None:
    limit = "import resource; resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))"
    with ServerProcess(model, prefix=limit) as server:
        # More clients than the server (or each of its sub-reactor processes) has room for.
        clients = [connect(server.address) for _ in range(150)]
        try:
            server.wait_for_log(r"accept failed: Too many open files|out of descriptors")
            # While descriptors are short, the server neither exits nor spins.
            before = server.cpu_seconds()
            threading.Event().wait(1.0)  # A measuring window, not a synchronisation.
            used = server.cpu_seconds() - before
            assert server.alive()
            assert used < 0.5, f"server used {used:.2f}s of CPU in 1s while out of descriptors"
            # Free descriptors: the clients that waited get served.
            for sock in clients[:120]:
                sock.close()
            for i, sock in enumerate(clients[120:]):
                message = b"waited in the backlog %d" % i
                sock.sendall(message)
                assert recv_exactly(sock, len(message)) == message
            server.wait_for_log(r"accepting again|taking connections again")
        finally:
            for sock in clients:
                sock.close()


def test_Server_echoes_200_concurrent_connections_pipelining_bursts(
    server: ServerProcess,
) -> None:
    socks = [connect(server.address, timeout=20) for _ in range(200)]
    expected = [bytearray() for _ in socks]
    try:
        for round_ in range(4):  # Interleave the connections' bursts, no reads between.
            for i, sock in enumerate(socks):
                for burst in range(5):
                    data = b"%d/%d/%d:" % (i, round_, burst) + bytes([i % 256]) * (i % 97)
                    sock.sendall(data)
                    expected[i] += data
        for sock, wanted in zip(socks, expected, strict=True):
            assert_same(bytes(wanted), recv_exactly(sock, len(wanted)))
    finally:
        for sock in socks:
            sock.close()
