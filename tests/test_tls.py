"""TLS in the reference core: TlsConnection on a loop, and every model over real sockets.

The client here is sans-I/O too (``ssl.SSLObject`` over two memory BIOs, on a
socket with a timeout), so a test decides what goes into each TCP segment: many
records in one, one record cut into 1-byte segments, close_notify then FIN, a
FIN alone. Certificates come from ``trustme``, written to a temporary directory.
"""

from __future__ import annotations

import os
import re
import selectors
import signal
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme
from cryptography.hazmat.primitives import serialization

from reference.connection import (
    DEFAULT_HIGH_WATER,
    DEFAULT_READ_SIZE,
    Connection,
    ConnEvent,
    ConnState,
    IllegalTransition,
)
from reference.handler import DiscardHandler, EchoHandler, Handler
from reference.loop import EventLoop
from reference.tls import TlsConnection, server_context
from tests.helpers import ServerProcess, connect, exchange, recv_until_eof, reset
from tests.test_cli import assert_usage_error, run
from tests.test_connection import RecordingHandler, on_loop

MIB = 1024 * 1024
TLS12 = ssl.TLSVersion.TLSv1_2
TLS13 = ssl.TLSVersion.TLSv1_3

#: The server's debug line for a closed connection: how many bytes it read.
CLOSED = r"\('127\.0\.0\.1', {port}\)[^>]*>: closed; (\d+) bytes read"
#: The same line for any connection.
ANY_CLOSED = r">: closed; \d+ bytes read"


@dataclass(frozen=True)
class Certs:
    """A CA, and the server's certificate and key, in files."""

    ca: trustme.CA
    cert: Path
    key: Path

    def client_context(self, version: ssl.TLSVersion | None = None) -> ssl.SSLContext:
        """A client context that trusts the CA; ``version`` pins the protocol version."""
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        if version is not None:
            context.minimum_version = context.maximum_version = version
        return context

    def server_args(self) -> list[str]:
        return ["--tls-cert", str(self.cert), "--tls-key", str(self.key)]


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    """A certificate for 127.0.0.1 and localhost, signed by a CA made for this run."""
    where = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    issued = ca.issue_cert("127.0.0.1", "localhost")
    cert, key = where / "cert.pem", where / "key.pem"
    issued.cert_chain_pems[0].write_to_path(str(cert))
    issued.private_key_pem.write_to_path(str(key))
    return Certs(ca, cert, key)


@pytest.fixture
def loop() -> Iterator[EventLoop]:
    """A loop running on a thread of its own."""
    loop = EventLoop("tls")
    thread = threading.Thread(target=loop.run)
    thread.start()
    yield loop
    loop.stop()
    thread.join(10)
    assert not thread.is_alive()
    loop.close()


@pytest.fixture
def tls_server(model: list[str], certs: Certs) -> Iterator[ServerProcess]:
    """An echo server of each model speaking TLS, killed by PID at teardown."""
    with ServerProcess([*model, *certs.server_args()]) as proc:
        yield proc


class TlsClient:
    """A TLS client: ``ssl.SSLObject`` over memory BIOs, on a socket with a timeout.

    Nothing is sent until :meth:`flush` (or a method that says it sends), so
    a test chooses how the ciphertext is cut into segments.

    Args:
        sock: A connected socket; its timeout bounds every wait.
        context: A client context.
    """

    def __init__(self, sock: socket.socket, context: ssl.SSLContext) -> None:
        self.sock = sock
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing, server_hostname="localhost")
        self.received = bytearray()  # decrypted, not yet taken by recv_exactly
        self.close_notify = False  # the server's close_notify came
        self.eof = False  # the server's FIN came
        self.close_notify_before_eof = False

    @classmethod
    def connect(
        cls, address: tuple[str, int], context: ssl.SSLContext, *, timeout: float = 20.0
    ) -> TlsClient:
        return cls(connect(address, timeout=timeout), context)

    def __enter__(self) -> TlsClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def handshake(self, *, segment: int | None = None, flush: bool = True) -> None:
        """Complete the handshake; with ``flush=False`` the client's last flight stays unsent."""
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self.flush(segment=segment)
                if not self._feed():
                    raise AssertionError("the server closed during the handshake") from None
        if flush:
            self.flush(segment=segment)

    def write(self, data: bytes) -> None:
        """Encrypt ``data`` into one record (or more above 16 KiB); send nothing yet."""
        self.tls.write(data)

    def flush(self, *, segment: int | None = None) -> int:
        """Send every byte encrypted so far: at once, or ``segment`` bytes per ``send``.

        Returns:
            How many ciphertext bytes were sent.
        """
        data = self.outgoing.read()
        if segment is None:
            self.sock.sendall(data)
        else:
            for i in range(0, len(data), segment):
                self.sock.sendall(data[i : i + segment])
        return len(data)

    def send(self, data: bytes) -> None:
        self.write(data)
        self.flush()

    def close_write(self) -> None:
        """Send close_notify, then FIN."""
        self._unwrap()
        self.flush()
        self.sock.shutdown(socket.SHUT_WR)

    def recv_exactly(self, n: int) -> bytes:
        """Read until ``n`` plaintext bytes came; take them."""
        while len(self.received) < n:
            if not self._feed():
                raise AssertionError(f"EOF after {len(self.received)} of {n} bytes")
        data = bytes(self.received[:n])
        del self.received[:n]
        return data

    def recv_until_eof(self) -> bytes:
        """Read until the server's FIN; take everything that came."""
        while self._feed():
            pass
        data = bytes(self.received)
        self.received.clear()
        return data

    def exchange(
        self,
        payload: bytes,
        *,
        write_size: int = 64 * 1024,
        half_close: bool = False,
        timeout: float = 60.0,
    ) -> bytes:
        """Send ``payload`` while reading what comes back, both at once.

        Stops once ``len(payload)`` bytes came back; with ``half_close``, sends
        close_notify and FIN after the payload and reads until the server's FIN.

        Raises:
            TimeoutError: Saying how much was sent and received.
        """
        sock = self.sock
        view = memoryview(payload)
        taken = 0  # plaintext handed to the TLS object
        out = bytearray()  # ciphertext not yet sent
        notified = write_done = False
        start = len(self.received)
        deadline = time.monotonic() + timeout
        old_timeout = sock.gettimeout()
        sock.setblocking(False)
        try:
            with selectors.DefaultSelector() as sel:
                sel.register(sock, selectors.EVENT_READ)
                while True:
                    got = len(self.received) - start
                    if write_done and (self.eof if half_close else got >= len(payload)):
                        break
                    if not out and not write_done:
                        if taken < len(payload):
                            self.tls.write(view[taken : taken + write_size])
                            taken = min(len(payload), taken + write_size)
                        elif half_close and not notified:
                            self._unwrap()
                            notified = True
                        out += self.outgoing.read()
                        if not out:
                            if half_close:
                                sock.shutdown(socket.SHUT_WR)
                            write_done = True
                            continue
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise TimeoutError(
                            f"exchange timed out after {timeout}s: sent {taken} of "
                            f"{len(payload)} bytes, received {got}"
                        )
                    sel.modify(sock, selectors.EVENT_READ | (selectors.EVENT_WRITE if out else 0))
                    for _, mask in sel.select(left):
                        if mask & selectors.EVENT_READ:
                            try:
                                more = self._feed()
                            except BlockingIOError:
                                more = True
                            if not more and not half_close:
                                raise AssertionError(f"server closed after {got} bytes")
                            if not write_done:
                                out += self.outgoing.read()
                        if mask & selectors.EVENT_WRITE and out:
                            try:
                                del out[: sock.send(out)]
                            except BlockingIOError:
                                pass
        finally:
            sock.settimeout(old_timeout)
        data = bytes(self.received[start:])
        del self.received[start:]
        return data

    def _unwrap(self) -> None:
        try:
            self.tls.unwrap()
        except ssl.SSLWantReadError:
            pass  # close_notify is written; the server's comes later.

    def _feed(self) -> bool:
        """Read once from the socket and decrypt every record; False at the server's FIN."""
        data = self.sock.recv(256 * 1024)
        if not data:
            self.eof = True
            self.close_notify_before_eof = self.close_notify
            return False
        self.incoming.write(data)
        while not self.close_notify:
            try:
                plain = self.tls.read(256 * 1024)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                self.close_notify = True
                break
            if not plain:
                self.close_notify = True
                break
            self.received += plain
        return True


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


def assert_tls_echoes(server: ServerProcess, certs: Certs, payload: bytes = b"alive\0") -> int:
    """A fresh TLS client gets ``payload`` back, then close_notify and EOF after its own.

    Returns:
        The client's port, to find its connection in the server's log.
    """
    with TlsClient.connect(server.address, certs.client_context()) as client:
        client.handshake()
        assert_same(payload, client.exchange(payload, half_close=True))
        assert client.close_notify_before_eof
        return int(client.sock.getsockname()[1])


def descriptors(server: ServerProcess) -> dict[int, list[str]]:
    """What each of the server's processes holds open now, by PID."""
    held: dict[int, list[str]] = {}
    for pid in server.pids():
        try:
            names = os.listdir(f"/proc/{pid}/fd")
        except FileNotFoundError:
            continue  # A process that just exited.
        held[pid] = sorted(_link(f"/proc/{pid}/fd/{name}") for name in names)
    return held


def _link(path: str) -> str:
    try:
        return os.readlink(path)
    except FileNotFoundError:
        return "(closed)"


def descriptors_when_idle(server: ServerProcess, certs: Certs) -> dict[int, list[str]]:
    """What the server holds open once every loop runs and one served client is closed."""
    for started in server.log_matches(r"sub-reactor (\d+): pid"):  # Process mode.
        server.wait_for_log(rf"sub-{started.group(1)}: running")
    server.wait_for_log(CLOSED.format(port=assert_tls_echoes(server, certs)))
    return descriptors(server)


# -- TlsConnection on a loop ----------------------------------------------------


def make_tls_connection(
    loop: EventLoop,
    handler: Handler,
    certs: Certs,
    *,
    high_water: int = 256 * 1024,
    low_water: int = 0,
    handshake_timeout: float = 10.0,
) -> tuple[TlsConnection, socket.socket, threading.Event]:
    """A TLS connection over a real TCP pair, the peer's socket, and "closed"."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        peer = socket.create_connection(listener.getsockname(), timeout=10)
        ours, _ = listener.accept()
    closed = threading.Event()
    context = server_context(str(certs.cert), str(certs.key))

    def create() -> TlsConnection:
        conn = TlsConnection(
            loop,
            ours,
            handler,
            context=context,
            handshake_timeout=handshake_timeout,
            high_water=high_water,
            low_water=low_water,
            on_closed=lambda c: closed.set(),
        )
        conn.start()
        return conn

    return on_loop(loop, create), peer, closed


def test_TlsConnection_makes_the_handler_once_the_handshake_is_done(
    loop: EventLoop, certs: Certs
) -> None:
    handler = RecordingHandler()
    conn, peer, _ = make_tls_connection(loop, handler, certs)
    assert on_loop(loop, lambda: conn.state) is ConnState.HANDSHAKING
    client = TlsClient(peer, certs.client_context())
    client.handshake(flush=False)  # TLS 1.3: the server is one flight short.
    assert handler.calls == []
    client.send(b"ping")
    client.close_write()
    assert client.recv_until_eof() == b""
    assert client.close_notify_before_eof
    assert handler.lost.wait(10)
    assert handler.calls == [
        "connection_made",
        "data_received",
        "eof_received",
        "connection_lost(None)",
    ]
    peer.close()


def test_TlsConnection_tells_the_handler_nothing_of_a_failed_handshake(
    loop: EventLoop, certs: Certs
) -> None:
    handler = RecordingHandler()
    _, peer, closed = make_tls_connection(loop, handler, certs)
    peer.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
    try:
        recv_until_eof(peer)  # An alert, perhaps, then the end.
    except ConnectionResetError:
        pass  # The alert unread, our request unread: either end is fine.
    assert closed.wait(10)
    assert handler.calls == []
    peer.close()


def test_TlsConnection_closes_a_handshake_that_does_not_finish_in_time(
    loop: EventLoop, certs: Certs
) -> None:
    handler = RecordingHandler()
    conn, peer, closed = make_tls_connection(loop, handler, certs, handshake_timeout=0.2)
    assert recv_until_eof(peer) == b""  # Nothing sent: no ClientHello came.
    assert closed.wait(10)
    assert on_loop(loop, lambda: conn.state) is ConnState.CLOSED
    assert handler.calls == []
    peer.close()


def test_TlsConnection_rejects_a_close_during_the_handshake_naming_state_and_event(
    loop: EventLoop, certs: Certs
) -> None:
    conn, peer, closed = make_tls_connection(loop, DiscardHandler(), certs)
    with pytest.raises(IllegalTransition, match="'close' is not allowed in state 'handshaking'"):
        on_loop(loop, lambda: conn._transition(ConnEvent.CLOSE))
    on_loop(loop, conn.stop_in_loop)  # A stopping server: the handshake just ends.
    assert closed.wait(10)
    peer.close()


def test_TlsConnection_water_marks_count_plaintext_owed(loop: EventLoop, certs: Certs) -> None:
    conn, peer, _ = make_tls_connection(
        loop, DiscardHandler(), certs, high_water=64 * 1024, low_water=16 * 1024
    )
    client = TlsClient(peer, certs.client_context())
    client.handshake()
    payload = bytes(range(256)) * 65536  # 16 MiB: far more than the socket buffers hold.

    def send_all() -> tuple[int, bool]:
        conn.send_in_loop(payload)
        return conn.buffered, conn.reading

    buffered, reading = on_loop(loop, send_all)
    # Plaintext owed, not ciphertext (which is larger by each record's overhead).
    assert 0 < buffered < len(payload)
    assert not reading, "reading goes on above the high-water mark"
    assert_same(payload, client.recv_exactly(len(payload)))
    assert on_loop(loop, lambda: conn.buffered) == 0
    assert on_loop(loop, lambda: conn.reading)
    peer.close()


def test_Connection_plain_starts_connected_and_never_handshakes(loop: EventLoop) -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        peer = socket.create_connection(listener.getsockname(), timeout=10)
        ours, _ = listener.accept()

    def create() -> Connection:
        conn = Connection(loop, ours, EchoHandler())
        conn.start()
        return conn

    conn = on_loop(loop, create)
    assert on_loop(loop, lambda: conn.state) is ConnState.CONNECTED
    assert exchange(peer, b"plain\0", half_close=True) == b"plain\0"
    peer.close()


# -- every model, over real sockets -----------------------------------------------


def test_TlsServer_echoes_binary_data_with_nul_bytes(
    tls_server: ServerProcess, certs: Certs
) -> None:
    payload = bytes(range(256)) * 16 + b"\0" * 4096 + b"a\0b\0\0c" * 100
    with TlsClient.connect(tls_server.address, certs.client_context()) as client:
        client.handshake()
        assert_same(payload, client.exchange(payload))
        client.close_write()
        assert client.recv_until_eof() == b""
        assert client.close_notify_before_eof


def test_TlsServer_echoes_8mib_byte_for_byte(tls_server: ServerProcess, certs: Certs) -> None:
    payload = os.urandom(8 * MIB)
    with TlsClient.connect(tls_server.address, certs.client_context()) as client:
        client.handshake()
        assert_same(payload, client.exchange(payload, timeout=120))


@pytest.mark.parametrize("version", [TLS12, TLS13], ids=["TLSv1.2", "TLSv1.3"])
def test_TlsServer_reads_every_record_of_one_segment(
    tls_server: ServerProcess, certs: Certs, version: ssl.TLSVersion
) -> None:
    payload = bytes(i % 251 for i in range(1500))
    with TlsClient.connect(tls_server.address, certs.client_context(version)) as client:
        client.handshake()
        for byte in payload:
            client.write(bytes([byte]))  # 1500 records of one byte each...
        assert client.flush() < 64 * 1024  # ...in one send, one segment on loopback.
        # Nothing more is sent: records left undecrypted in the server would wait forever.
        assert_same(payload, client.recv_exactly(len(payload)))


def test_TlsServer_reads_data_that_came_with_the_handshakes_last_flight(
    tls_server: ServerProcess, certs: Certs
) -> None:
    with TlsClient.connect(tls_server.address, certs.client_context(TLS13)) as client:
        client.handshake(flush=False)  # The client's Finished waits in the BIO...
        client.write(b"with the Finished")
        client.flush()  # ...and goes in one send with the data.
        assert client.recv_exactly(17) == b"with the Finished"


def test_TlsServer_reads_records_cut_into_1_byte_segments(
    tls_server: ServerProcess, certs: Certs
) -> None:
    payload = os.urandom(3000)
    with TlsClient.connect(tls_server.address, certs.client_context()) as client:
        client.handshake(segment=1)
        client.write(payload[:2000])
        for byte in payload[2000:]:
            client.write(bytes([byte]))
        client.flush(segment=1)
        assert_same(payload, client.recv_exactly(len(payload)))


@pytest.mark.parametrize("version", [TLS12, TLS13], ids=["TLSv1.2", "TLSv1.3"])
def test_TlsServer_speaks_tls_1_2_and_1_3(
    tls_server: ServerProcess, certs: Certs, version: ssl.TLSVersion
) -> None:
    with TlsClient.connect(tls_server.address, certs.client_context(version)) as client:
        client.handshake()
        assert client.tls.version() == version.name.replace("v1_", "v1.")
        assert_same(b"versioned\0", client.exchange(b"versioned\0"))
    tls_server.wait_for_log(rf"TLS handshake done, {re.escape(client.tls.version() or '')}")


@pytest.mark.parametrize("version", [TLS12, TLS13], ids=["TLSv1.2", "TLSv1.3"])
def test_TlsServer_after_close_notify_and_fin_sends_all_it_owes_then_close_notify_then_fin(
    tls_server: ServerProcess, certs: Certs, version: ssl.TLSVersion
) -> None:
    payload = os.urandom(2 * MIB)
    with TlsClient.connect(tls_server.address, certs.client_context(version)) as client:
        client.handshake()
        # close_notify and FIN follow the data at once: the server owes nearly all of it.
        received = client.exchange(payload, half_close=True)
        assert_same(payload, received)
        assert client.close_notify, "the server sent FIN without close_notify"
        assert client.close_notify_before_eof
    tls_server.wait_for_log(r"peer sent close_notify")


def test_TlsServer_takes_a_fin_without_close_notify_as_eof(
    tls_server: ServerProcess, certs: Certs
) -> None:
    payload = os.urandom(256 * 1024)
    with TlsClient.connect(tls_server.address, certs.client_context()) as client:
        client.handshake()
        client.send(payload)
        client.sock.shutdown(socket.SHUT_WR)  # A truncated stream: no close_notify.
        assert_same(payload, client.recv_until_eof())
        assert client.close_notify_before_eof
    tls_server.wait_for_log(r"FIN without close_notify")


def test_TlsServer_bounds_memory_of_a_peer_that_does_not_read(
    tls_server: ServerProcess, certs: Certs
) -> None:
    payload = os.urandom(40 * MIB)
    errors: list[BaseException] = []
    with TlsClient.connect(tls_server.address, certs.client_context(), timeout=60) as client:
        client.handshake()
        before = tls_server.peak_rss()
        client.write(payload)
        cipher = client.outgoing.read()  # Sent raw by the thread; the TLS object stays here.

        def send_all() -> None:
            try:
                client.sock.sendall(cipher)
            except BaseException as exc:  # Reported by the main thread.
                errors.append(exc)

        sender = threading.Thread(target=send_all)
        sender.start()
        # Not reading yet: the replies back up until the server stops reading from us.
        first = tls_server.wait_for_log(r"pause reading, (\d+) bytes buffered")
        assert int(first.group(1)) <= DEFAULT_HIGH_WATER + DEFAULT_READ_SIZE
        received = client.recv_exactly(len(payload))
        sender.join(60)
        assert not sender.is_alive(), "the sender is still blocked after every byte came back"
        assert not errors, errors
    assert_same(payload, received)
    # Had the server buffered what it was sent, its peak memory would show it.
    grown = tls_server.peak_rss() - before
    assert grown < 16 * MIB, f"the server's peak memory grew by {grown / MIB:.1f} MiB"
    assert tls_server.peak_rss() < 48 * MIB


def test_TlsServer_serves_others_while_a_client_never_sends_client_hello(
    model: list[str], certs: Certs
) -> None:
    args = [*model, *certs.server_args(), "--tls-handshake-timeout", "2"]
    with ServerProcess(args) as server, connect(server.address) as silent:
        assert_tls_echoes(server, certs)
        # The silent handshake costs nothing while it waits.
        before = server.cpu_seconds()
        threading.Event().wait(1.0)  # A measuring window, not a synchronisation.
        used = server.cpu_seconds() - before
        assert used < 0.3, f"the server used {used:.2f}s of CPU in 1s with one idle handshake"
        assert_tls_echoes(server, certs)
        # At the deadline the server closes it.
        silent.settimeout(20)
        assert recv_until_eof(silent) == b""
        server.wait_for_log(r"no TLS handshake within 2\.0s, closing")
        assert_tls_echoes(server, certs)


@pytest.mark.parametrize(
    "garbage",
    [b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n", b"\0" * 1000, b"\x16\x03\x01\x00\x05hello"],
    ids=["http", "zeros", "bad-hello"],
)
def test_TlsServer_closes_garbage_instead_of_client_hello_and_serves_the_next(
    tls_server: ServerProcess, certs: Certs, garbage: bytes
) -> None:
    held = descriptors_when_idle(tls_server, certs)
    mark = len(tls_server.stderr)
    with connect(tls_server.address) as bad:
        bad.sendall(garbage)
        try:
            recv_until_eof(bad)  # An alert, perhaps, then the end.
        except ConnectionResetError:
            pass  # Unread garbage turns the close into a reset: fine too.
        tls_server.wait_for_log(ANY_CLOSED, start=mark)
    tls_server.wait_for_log(r"TLS handshake failed", start=mark)
    assert descriptors(tls_server) == held, "the failed handshake left a descriptor open"
    assert_tls_echoes(tls_server, certs)


def test_TlsServer_survives_a_reset_in_the_middle_of_the_handshake(
    tls_server: ServerProcess, certs: Certs
) -> None:
    held = descriptors_when_idle(tls_server, certs)
    mark = len(tls_server.stderr)
    client = TlsClient.connect(tls_server.address, certs.client_context())
    try:
        client.tls.do_handshake()
    except ssl.SSLWantReadError:
        pass
    hello = client.outgoing.read()
    client.sock.sendall(hello[: len(hello) // 2])  # Half a ClientHello, then RST.
    reset(client.sock)
    tls_server.wait_for_log(ANY_CLOSED, start=mark)  # Its peer may be unknown: reset first.
    assert descriptors(tls_server) == held, "the reset handshake left a descriptor open"
    assert_tls_echoes(tls_server, certs)


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
def test_TlsServer_refuses_a_version_below_1_2_and_serves_the_next(
    certs: Certs,
) -> None:
    with ServerProcess(["single", *certs.server_args()]) as server:
        old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        old.check_hostname = False
        old.verify_mode = ssl.CERT_NONE
        old.set_ciphers("DEFAULT:@SECLEVEL=0")
        old.minimum_version = ssl.TLSVersion.TLSv1
        old.maximum_version = ssl.TLSVersion.TLSv1_1
        try:  # Whether this OpenSSL still writes a ClientHello for TLS 1.0/1.1 at all.
            old.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO()).do_handshake()
        except ssl.SSLWantReadError:
            pass  # It wrote one and waits for the server's answer.
        except ssl.SSLError as exc:
            pytest.skip(f"this OpenSSL cannot offer TLS 1.0 or 1.1: {exc}")
        client = TlsClient.connect(server.address, old)
        with client, pytest.raises((ssl.SSLError, AssertionError, ConnectionResetError)):
            client.handshake()
        server.wait_for_log(r"TLS handshake failed: .*(version|protocol)")
        assert_tls_echoes(server, certs)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_TlsServer_stop_sends_close_notify_then_fin(
    tls_server: ServerProcess, certs: Certs, signum: int
) -> None:
    context = certs.client_context()
    with TlsClient.connect(tls_server.address, context) as idle:
        idle.handshake()
        with TlsClient.connect(tls_server.address, context) as busy:
            busy.handshake()
            assert_same(b"x" * 1000, busy.exchange(b"x" * 1000))
            tls_server.proc.send_signal(signum)
            for client in (idle, busy):
                assert client.recv_until_eof() == b""
                assert client.close_notify_before_eof, "the server closed without close_notify"
    assert tls_server.proc.wait(20) == 0


@pytest.mark.parametrize(
    ("handler", "request_", "reply"),
    [
        ("discard", b"into the void\0", b""),
        ("resp", b"*1\r\n$4\r\nPING\r\n", b"+PONG\r\n"),
        ("memcached", b"set k 0 0 2\r\nhi\r\nget k\r\n", b"STORED\r\nVALUE k 0 2\r\nhi\r\nEND\r\n"),
    ],
)
def test_TlsServer_serves_every_handler_unchanged(
    certs: Certs, handler: str, request_: bytes, reply: bytes
) -> None:
    with ServerProcess(["single", "--handler", handler, *certs.server_args()]) as server:
        client = TlsClient.connect(server.address, certs.client_context())
        with client:
            client.handshake()
            client.send(request_)
            client.close_write()
            assert client.recv_until_eof() == reply
            assert client.close_notify_before_eof


def test_TlsServer_handler_that_closes_sends_its_reply_then_close_notify_then_fin(
    certs: Certs,
) -> None:
    with ServerProcess(["single", "--handler", "resp", *certs.server_args()]) as server:
        client = TlsClient.connect(server.address, certs.client_context())
        with client:
            client.handshake()
            client.send(b"*1\r\n$4\r\nQUIT\r\n")  # The server closes; the client does not.
            assert client.recv_until_eof() == b"+OK\r\n"
            assert client.close_notify_before_eof, "the server closed without close_notify"


def test_TlsServer_key_in_the_certificate_file_serves_too(certs: Certs, tmp_path: Path) -> None:
    combined = tmp_path / "combined.pem"
    combined.write_bytes(certs.cert.read_bytes() + certs.key.read_bytes())
    with ServerProcess(
        ["multi", "--mode", "process", "--sub-reactors", "2", "--tls-cert", str(combined)]
    ) as server:
        for _ in range(2):  # One connection per sub-reactor process.
            assert_tls_echoes(server, certs)


# -- the command line ----------------------------------------------------------------


@pytest.mark.parametrize(
    "model", [["single"], ["pool"], ["multi", "--mode", "thread"], ["multi", "--mode", "process"]]
)
def test_cli_missing_certificate_is_a_usage_error(model: list[str], tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"
    result = run("-m", "reference", *model, "--tls-cert", str(missing))
    assert_usage_error(result, "cannot read the TLS certificate", str(missing), "No such file")


def test_cli_missing_key_is_a_usage_error(certs: Certs, tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"
    result = run(
        "-m", "reference", "single", "--tls-cert", str(certs.cert), "--tls-key", str(missing)
    )
    assert_usage_error(result, "cannot read the TLS private key", str(missing))


def test_cli_key_without_certificate_is_a_usage_error(certs: Certs) -> None:
    result = run("-m", "reference", "single", "--tls-key", str(certs.key))
    assert_usage_error(result, "--tls-key needs --tls-cert")


def test_cli_certificate_without_a_key_is_a_usage_error(certs: Certs) -> None:
    result = run("-m", "reference", "single", "--tls-cert", str(certs.cert))
    assert_usage_error(result, str(certs.cert), "not a PEM certificate followed by its private key")


def test_cli_key_of_another_certificate_is_a_usage_error(certs: Certs, tmp_path: Path) -> None:
    other = tmp_path / "other-key.pem"
    trustme.CA().issue_cert("localhost").private_key_pem.write_to_path(str(other))
    result = run(
        "-m", "reference", "single", "--tls-cert", str(certs.cert), "--tls-key", str(other)
    )
    assert_usage_error(result, "the private key is not the certificate's")


def test_cli_encrypted_key_is_a_usage_error_not_a_prompt(certs: Certs, tmp_path: Path) -> None:
    key = serialization.load_pem_private_key(certs.key.read_bytes(), password=None)
    encrypted = tmp_path / "encrypted-key.pem"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    result = run(
        "-m", "reference", "single", "--tls-cert", str(certs.cert), "--tls-key", str(encrypted)
    )
    assert_usage_error(result, "is encrypted")


@pytest.mark.parametrize("seconds", ["0", "-1", "soon", "nan"])
def test_cli_bad_handshake_timeout_is_a_usage_error(seconds: str) -> None:
    result = run("-m", "reference", "single", "--tls-handshake-timeout", seconds)
    assert_usage_error(result, "--tls-handshake-timeout")
