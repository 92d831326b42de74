"""The load over TLS: a sans-I/O ``ssl.SSLObject`` per connection, in the same epoll loop.

How this works
--------------
With ``spec.tls`` set, :func:`make_driver` gives a :class:`TlsDriver`
instead of the plain :class:`~conformance.load.driver.Driver`: the choice is
made once per load process, so the plain path keeps its fast path and gains
no test per event. Each connection holds a :class:`TlsSession`: an
``SSLObject`` between two ``MemoryBIO`` s, made from the one context of the
process (:func:`~conformance.tls.client_context`). Nothing else changes: the
driver, its sender, faults, tally and loop judge the *plaintext* owed and
received exactly as over TCP.

- *Connecting*: :class:`TlsConnector` holds a connection among the connects
  under way until its handshake is done, under the connect's deadline, driven
  by readiness events (``EPOLLIN``; ``EPOLLOUT`` only while ciphertext is
  pending). A handshake that fails is an error of kind ``handshake``, in the
  words of :func:`~conformance.tls.handshake_failure`; one that is not done
  in time, ``handshake`` too. A completed handshake is counted, with the
  time from its TCP connect to its end.
- *Sending*: plaintext goes into the ``SSLObject`` (a ``MemoryBIO`` never
  refuses it); the ciphertext it makes is what the sender sends and queues,
  so the connection's ``out`` is ciphertext the socket has not taken.
- *Receiving*: on readable, ``recv`` into the incoming BIO until
  ``EAGAIN``, then ``read`` until ``SSLWantReadError``: every record already
  received, never one per event. The server's ``close_notify``, or a FIN
  without one, is the peer's EOF.
- The outgoing BIO is emptied after every ``SSLObject`` call (a read may
  answer a KeyUpdate; a failure sends its alert).
- *Faults*: a reset is RST with no ``close_notify``; a half-close is
  ``close_notify`` then ``SHUT_WR`` (TLS 1.3 only: TLS 1.2 has none, RFC 5246
  §7.2.1, and the fault is skipped there); a slow reader stops reading the
  socket. A connection closed at the end sends ``close_notify`` first.

Facts about TLS this relies on
------------------------------
- ``SSLObject.read`` returns at most one record per call; what is left stays
  in the incoming BIO, where epoll cannot see it: hence the read loop.
- ``SSLObject.write(b"")`` means something else (an EOF): never call it so.
- CPython's ``unwrap`` calls ``SSL_shutdown`` twice; the first queues
  ``close_notify``, the second wants the server's and raises
  ``SSLWantReadError``. Reading afterwards still works.
"""

from __future__ import annotations

import select
import socket
import ssl
import time

from conformance.load.client import Client, ClientState
from conformance.load.connector import Connecting, Connector, StopEvent
from conformance.load.driver import Driver
from conformance.load.spec import LoadSpec
from conformance.tls import client_context, handshake_failure

__all__ = ["HandshakeFailed", "TlsConnector", "TlsDriver", "TlsSession", "make_driver"]

_IN = select.EPOLLIN
_OUT = select.EPOLLOUT
_RECV_SIZE = 256 * 1024
_READ_SIZE = 256 * 1024
_CLOSED = ClientState.CLOSED


class HandshakeFailed(OSError):
    """A TLS handshake failed; ``words`` says why and which side said so."""

    def __init__(self, words: str) -> None:
        super().__init__(words)
        self.words = words


class TlsSession:
    """One connection's TLS: an ``SSLObject`` between two memory BIOs, and no I/O of its own.

    Args:
        context: The process's client context.
        server_hostname: The name to send (SNI) and verify.
    """

    __slots__ = ("incoming", "outgoing", "obj", "pending", "events", "started_ns")

    def __init__(self, context: ssl.SSLContext, server_hostname: str) -> None:
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.obj = context.wrap_bio(self.incoming, self.outgoing, server_hostname=server_hostname)
        #: Ciphertext of the handshake the socket has not taken yet.
        self.pending = b""
        self.events = 0  # the interest registered while the handshake runs
        self.started_ns = time.monotonic_ns()

    def fill(self, sock: socket.socket) -> OSError | None:
        """Move what the socket holds into the incoming BIO, until ``EAGAIN`` or its EOF.

        Returns:
            The socket's error, after what came before it was moved; else None.
        """
        recv, write = sock.recv, self.incoming.write
        while True:
            try:
                data = recv(_RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                return None
            except OSError as exc:
                return exc
            if not data:
                self.incoming.write_eof()
                return None
            write(data)

    def close_notify(self) -> bytes:
        """Queue ``close_notify``; the ciphertext to send (with it, whatever was pending)."""
        try:
            self.obj.unwrap()
        except ssl.SSLError:
            pass  # Want-read (the server's close_notify), or a connection TLS gave up on.
        return self.outgoing.read()

    @property
    def version(self) -> str | None:
        """The negotiated protocol (``TLSv1.3``), once the handshake is done."""
        return self.obj.version()


class TlsConnector(Connector):
    """Connects that count as done once their TLS handshake is.

    Args:
        ep: The driver's epoll.
        host: The server's host.
        port: The server's port.
        context: The process's client context.
        server_hostname: The name to send and verify.
    """

    def __init__(
        self,
        ep: select.epoll,
        host: str,
        port: int,
        context: ssl.SSLContext,
        server_hostname: str,
    ) -> None:
        super().__init__(ep, host, port)
        self.context = context
        self.server_hostname = server_hostname

    def finish(self, fd: int) -> tuple[Connecting, OSError | None] | None:
        """Move the connect on ``fd`` on: its TCP connect, then its handshake.

        Returns:
            ``(connect, None)`` once its handshake is done (``connect.session``
            holds its TLS, the socket no longer registered); ``(connect, error)``
            when it failed (a :class:`HandshakeFailed` for the handshake; the
            socket closed); None while it is under way.
        """
        attempt = self.pending.get(fd)
        if attempt is None:
            return None
        session: TlsSession | None = attempt.session
        if session is None:  # The TCP connect.
            done = super().finish(fd)
            if done is None or done[1] is not None:
                return done
            attempt = done[0]
            session = attempt.session = TlsSession(self.context, self.server_hostname)
            self.pending[attempt.fd] = attempt
            self.ep.register(attempt.fd, _IN)
            session.events = _IN
        else:
            failed = session.fill(attempt.sock)
            if failed is not None:
                return self._failed(attempt, failed)
        return self._handshake(attempt, session)

    def _handshake(
        self, attempt: Connecting, session: TlsSession
    ) -> tuple[Connecting, OSError | None] | None:
        try:
            session.obj.do_handshake()
        except ssl.SSLWantReadError:
            self._send_pending(attempt, session)
            want = _IN | (_OUT if session.pending else 0)
            if want != session.events:
                session.events = want
                self.ep.modify(attempt.fd, want)
            return None
        except ssl.SSLError as exc:
            self._send_pending(attempt, session)  # Its alert, if the socket takes it.
            return self._failed(attempt, exc)
        self._send_pending(attempt, session)  # Our Finished; the rest goes as the client's out.
        self._forget(attempt)
        return attempt, None

    def _send_pending(self, attempt: Connecting, session: TlsSession) -> None:
        session.pending += session.outgoing.read()
        if session.pending:
            try:
                n = attempt.sock.send(session.pending)
            except OSError:  # (BlockingIOError: later; another error: the next recv says it)
                return
            session.pending = session.pending[n:]

    def _failed(self, attempt: Connecting, exc: OSError) -> tuple[Connecting, OSError]:
        self._forget(attempt)
        attempt.sock.close()
        return attempt, HandshakeFailed(handshake_failure(exc))


class TlsDriver(Driver):
    """The driver of a load process whose connections speak TLS (see the module docstring).

    Args:
        spec: The whole run's spec (``spec.tls`` set).
        first: The run-wide index of this process's first connection.
        count: How many connections this process drives.
        stop: When set, the run ends within a tick, keeping what it measured.
    """

    def __init__(
        self, spec: LoadSpec, first: int, count: int, stop: StopEvent | None = None
    ) -> None:
        super().__init__(spec, first, count, stop)
        assert spec.tls is not None
        self.connector = TlsConnector(
            self.ep,
            spec.host,
            spec.port,
            client_context(spec.tls),
            spec.tls.server_hostname(spec.host),
        )
        # The loop's fast path reads the socket itself: every event comes here instead.
        self.plain = False

    # -- connections --------------------------------------------------------------

    def on_connected(self, fd: int) -> None:
        """A connect (or its handshake) moved on: once the handshake is done, add the connection."""
        done = self.connector.finish(fd)
        if done is None:
            return
        attempt, failed = done
        if failed is not None:
            self.connect_failed(attempt.index, failed)
            return
        session: TlsSession = attempt.session
        self.result.handshakes += 1
        self.result.handshake_seconds += (time.monotonic_ns() - session.started_ns) / 1e9
        if attempt.index is None:  # A storm connection: open, and at once closed.
            attempt.sock.close()
            return
        client = self.add_client(attempt.index, attempt.sock)
        client.tls = session
        if session.pending:
            client.out = memoryview(session.pending)
            session.pending = b""
            self.set_events(client, _IN | _OUT)
        if self.running:
            self.start(client, time.monotonic_ns())

    def connect_failed(self, index: int | None, exc: OSError) -> None:
        if not isinstance(exc, HandshakeFailed):
            super().connect_failed(index, exc)
            return
        what = "TLS handshake" if index is not None else "storm TLS handshake"
        self.tally.error("handshake", None, f"{what} failed: {exc.words}")

    def late_connects(self, late: list[Connecting]) -> None:
        handshakes = [attempt for attempt in late if attempt.session is not None]
        if handshakes:
            self.tally.error(
                "handshake",
                None,
                f"{len(handshakes)} TLS handshakes not done within "
                f"{self.spec.connect_timeout:g}s of their connect",
                times=len(handshakes),
            )
        rest = [attempt for attempt in late if attempt.session is None]
        if rest:
            super().late_connects(rest)

    def drop(self, client: Client, *, rst: bool = False) -> bool:
        session: TlsSession | None = client.tls
        if not rst and session is not None and self.clients.get(client.fd) is client:
            self.send_now(client, session.close_notify(), encrypt=False)
        return super().drop(client, rst=rst)

    # -- sending ------------------------------------------------------------------

    def send(self, client: Client, data: bytes | memoryview) -> None:
        """Encrypt ``data`` and send its ciphertext after whatever is still queued."""
        if not data:
            return  # (write(b"") would mean something else)
        session: TlsSession = client.tls
        try:
            session.obj.write(data)
        except ssl.SSLError as exc:
            self.tls_error(client, exc)
            return
        super().send(client, session.outgoing.read())

    def send_now(self, client: Client, data: bytes, *, encrypt: bool = True) -> None:
        session: TlsSession | None = client.tls
        if encrypt and session is not None and data:
            try:
                session.obj.write(data)
            except ssl.SSLError:
                return
            data = session.outgoing.read()
        if data:
            super().send_now(client, data)

    def no_half_close(self, client: Client) -> str | None:
        version = client.tls.version
        if version == "TLSv1.3":
            return None
        return f"{version} has no half-close (RFC 5246 §7.2.1)"

    def shutdown_write(self, client: Client) -> None:
        """``close_notify``, then the FIN (if the socket took the close_notify at once)."""
        cipher = client.tls.close_notify()
        n = client.sock.send(cipher)
        if n < len(cipher):  # Rare: the FIN waits; the close_notify alone half-closes TLS.
            client.out = memoryview(cipher)[n:]
            self.set_events(client, client.events | _OUT)
            return
        client.sock.shutdown(socket.SHUT_WR)

    # -- receiving ----------------------------------------------------------------

    def on_readable(self, client: Client) -> None:
        """Every record already received, decrypted and judged at once; then the peer's end."""
        session: TlsSession = client.tls
        failed: OSError | None = session.fill(client.sock)
        read = session.obj.read
        chunks: list[bytes] = []
        ended = False
        while True:
            try:
                piece = read(_READ_SIZE)
            except ssl.SSLWantReadError:
                break
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                ended = True  # The server's close_notify, or its FIN without one.
                break
            except ssl.SSLError as exc:
                failed = exc
                break
            if not piece:
                ended = True
                break
            chunks.append(piece)
        cipher = session.outgoing.read()  # A KeyUpdate's answer, an alert.
        if cipher and failed is None:
            super().send(client, cipher)
        if chunks and client.state is not _CLOSED:
            self.on_data(client, chunks[0] if len(chunks) == 1 else b"".join(chunks))
        if client.state is _CLOSED:
            return
        if isinstance(failed, ssl.SSLError):
            self.tls_error(client, failed)
        elif failed is not None:
            self.io_error(client, failed)
        elif ended:
            self.on_eof(client)

    def tls_error(self, client: Client, exc: ssl.SSLError) -> None:
        """TLS refused what the server sent (a bad record, an alert): an error of kind ``tls``."""
        if self.clients.get(client.fd) is not client:
            return
        self.tally.error("tls", client, f"TLS: {exc.reason or exc}", offset=client.verified)
        self.replace(client, rst=True)


def make_driver(spec: LoadSpec, first: int, count: int, stop: StopEvent | None = None) -> Driver:
    """The driver of one load process: over TLS when ``spec.tls`` says so, chosen once."""
    if spec.tls is not None:
        return TlsDriver(spec, first, count, stop)
    return Driver(spec, first, count, stop)
