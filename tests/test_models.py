"""Behaviour of every server model over real sockets, each server in a subprocess."""

from __future__ import annotations

import os
import signal
import socket
import threading

import pytest

from reference.connection import DEFAULT_HIGH_WATER, DEFAULT_READ_SIZE
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
        assert server.signal_and_wait(signum) == 0
        assert recv_until_eof(idle) == b""
        assert recv_until_eof(busy) == b""


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


def test_Server_with_discard_handler_replies_nothing(model: list[str]) -> None:
    with ServerProcess([*model, "--handler", "discard"]) as server, connect(server.address) as sock:
        assert exchange(sock, os.urandom(MIB), half_close=True) == b""


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
