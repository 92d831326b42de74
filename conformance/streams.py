"""The byte stream under one client connection: plain TCP, or TLS over it.

How this works
--------------
A :class:`~conformance.client.Connection` sends, reads, half-closes and
closes through a :class:`ClientStream`; it never learns which one it has. So
every check runs over TLS as it runs over TCP, and only the stream knows the
difference.

:class:`PlainStream` is the socket itself. :class:`TlsStream` is sans-I/O TLS
(``ssl.SSLObject`` between two memory BIOs) over a non-blocking socket, and
keeps the socket's semantics that checks rely on:

- Sending never reads (a check that stops reading must not have the stream
  read behind its back). Ciphertext the socket does not take waits in
  :attr:`TlsStream.pending`, and a send first waits until the socket took it:
  one record ahead at most, so a server that stops reading stops the sender.
- Reading also sends what is pending whenever the socket takes it, unless
  another task already waits to write (trio allows one waiter per direction).
- Half-close is the TLS rule: ``close_notify``, then FIN, after what is
  pending; the client still reads what it is owed, then the server's
  ``close_notify`` (:attr:`TlsStream.close_notify`: before its FIN?).
- Whatever can block waits on the socket's readiness, so a step's deadline
  cancels it; a send returns the count it committed, and never raises
  ``Cancelled`` after it committed one.

The TLS checks (:mod:`conformance.checks.tls`) use primitives only
:class:`TlsStream` has: records sent in one ``send``, a handshake or records
trickled one byte per segment, a ClientHello cut short, bytes that are not
TLS, a KeyUpdate; a record that does not decrypt fails the step as a
:class:`~conformance.tls.TlsRecordError`, not as a reset.

Facts about OpenSSL (3.0): ``SSLObject.read`` returns one record at most, so
a reader calls it until ``SSLWantReadError``; a read can produce bytes to
send (a KeyUpdate answer, an alert), so the outgoing BIO is emptied after
every call; after the client's own ``close_notify`` the server's is
``SSLZeroReturnError``; a FIN without ``close_notify`` is ``SSLEOFError``.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import struct
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

import trio

from conformance.key_update import request_key_update
from conformance.tls import TlsRecordError
from conformance.transcript import NotMeasurable

__all__ = ["ClientStream", "PlainStream", "TlsStream"]

MAX_RECORD = 16384  # The most plaintext one send commits: one TLS record.
RECV_SIZE = 65536  # The most ciphertext one ``recv`` takes from the socket.


class ClientStream(Protocol):
    """What a client connection sends and reads on."""

    @property
    def sock(self) -> trio.socket.SocketType:
        """The TCP socket beneath (its options, its names, its state)."""
        ...

    @property
    def close_notify(self) -> bool | None:
        """Over TLS, once the server ended: whether its ``close_notify`` came before its FIN."""
        ...

    @property
    def no_half_close(self) -> str | None:
        """Why a half-close on this stream cannot be measured; None: it can."""
        ...

    async def send_some(self, data: memoryview) -> int:
        """Send a prefix of ``data``; how many bytes. Raises ``OSError`` on a reset."""
        ...

    async def receive_some(self, max_bytes: int) -> bytes:
        """The next bytes; ``b""`` once the server ended its side. ``OSError`` on a reset."""
        ...

    async def send_eof(self) -> None:
        """Half-close: the client sends no more, and keeps reading."""
        ...

    def close(self) -> None:
        """Close the connection (FIN; over TLS, ``close_notify`` first when it can)."""
        ...

    def reset(self) -> None:
        """Close with RST instead of FIN (over TLS, no ``close_notify`` either)."""
        ...


class PlainStream:
    """TCP: the socket, as it is."""

    #: TCP has no ``close_notify``.
    close_notify: bool | None = None
    #: TCP has half-close (RFC 9293 §3.6).
    no_half_close: str | None = None

    def __init__(self, sock: trio.socket.SocketType) -> None:
        self._sock = sock

    @property
    def sock(self) -> trio.socket.SocketType:
        return self._sock

    async def send_some(self, data: memoryview) -> int:
        return await self._sock.send(data)

    async def receive_some(self, max_bytes: int) -> bytes:
        return await self._sock.recv(max_bytes)

    async def send_eof(self) -> None:
        self._sock.shutdown(socket.SHUT_WR)
        await trio.lowlevel.checkpoint()

    def close(self) -> None:
        self._sock.close()

    def reset(self) -> None:
        _reset(self._sock)


class TlsStream:
    """TLS over a connected, non-blocking socket; :meth:`handshake` before anything else.

    Args:
        sock: The connected trio socket.
        raw: The standard library socket ``sock`` wraps
            (``trio.socket.from_stdlib_socket(raw)``): the stream sends and
            receives on it without waiting, and waits on its readiness.
        context: The client's context (:meth:`conformance.tls.TlsSettings.context`).
        server_hostname: The name sent (SNI) and verified.
    """

    def __init__(
        self,
        sock: trio.socket.SocketType,
        raw: socket.socket,
        context: ssl.SSLContext,
        server_hostname: str,
    ) -> None:
        if raw.fileno() != sock.fileno():
            raise ValueError("raw must be the socket that sock wraps")
        self._sock = sock
        self._raw = raw
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._tls = context.wrap_bio(
            self._incoming, self._outgoing, server_hostname=server_hostname
        )
        #: Ciphertext the socket has not taken yet.
        self.pending = bytearray()
        #: Whether the server's ``close_notify`` came before its FIN; ``None`` until it ended.
        self.close_notify: bool | None = None
        self._eof_queued = False  # close_notify queued: FIN once ``pending`` is sent
        self._eof_sent = False
        self._writing = False  # a task waits for the socket to take ``pending``
        self._ahead = bytearray()  # plaintext decrypted before our close_notify, not read yet
        self._ahead_end: bool | None = None  # the server's end, seen then (close_notify?)

    @property
    def sock(self) -> trio.socket.SocketType:
        return self._sock

    @property
    def version(self) -> str | None:
        """The negotiated protocol (``TLSv1.3``), once the handshake is done."""
        return self._tls.version()

    @property
    def no_half_close(self) -> str | None:
        if self.version == "TLSv1.3":
            return None
        return (
            f"{self.version} has no half-close: on the client's close_notify the server "
            "discards what it still owes (RFC 5246 §7.2.1); TLS 1.3 has one (RFC 8446 §6.1)"
        )

    # -- the handshake ---------------------------------------------------

    async def handshake(self, *, trickle: float | None = None) -> None:
        """Run the handshake to its end.

        Args:
            trickle: Send the client's handshake one byte per TCP segment (the
                socket has ``TCP_NODELAY``), this many seconds apart; None: at once.

        Raises:
            ssl.SSLError: The handshake failed (its alert, if any, was sent).
            OSError: The socket failed (reset) during the handshake.
        """
        while True:
            try:
                self._tls.do_handshake()
            except ssl.SSLWantReadError:
                await self._flush(trickle)
                await self._fill()
                continue
            except ssl.SSLError:
                self._take_output()
                self._send_now()  # The alert, if the socket takes it.
                raise
            await self._flush(trickle)
            return

    async def send_client_hello(self, *, upto: int | None = None) -> int:
        """Begin the handshake: send the ClientHello (its first ``upto`` bytes), wait for nothing.

        Returns:
            How many bytes of it were sent.
        """
        try:
            self._tls.do_handshake()
        except ssl.SSLWantReadError:
            pass
        hello = self._outgoing.read()
        sent = hello if upto is None else hello[:upto]
        self.pending += sent
        await self._flush()
        return len(sent)

    async def wait_answer(self) -> None:
        """Wait until the server sent something (or ended), without reading it."""
        await trio.lowlevel.wait_readable(self._raw)

    async def send_plain(self, data: bytes) -> None:
        """Send ``data`` as it is, outside TLS: what a client that does not speak TLS sends."""
        self.pending += data
        await self._flush()

    # -- sending ---------------------------------------------------------

    async def send_some(self, data: memoryview) -> int:
        await trio.lowlevel.checkpoint_if_cancelled()
        await self._flush()
        n = min(len(data), MAX_RECORD)
        if n == 0:
            return 0  # SSLObject.write(b"") would mean something else.
        self._tls.write(data[:n])
        self._take_output()
        self._send_now()
        await trio.lowlevel.cancel_shielded_checkpoint()
        return n

    async def send_records(self, pieces: Sequence[bytes]) -> None:
        """Each of ``pieces`` as a record of its own, all sent with one ``send`` (one segment)."""
        await self._flush()
        for piece in pieces:
            if piece:
                self._tls.write(piece)
        self._take_output()
        await self._flush()

    async def send_trickled(self, data: bytes, *, record: int, pause: float) -> None:
        """``data`` in records of ``record`` bytes, their ciphertext one byte per TCP
        segment, ``pause`` seconds apart."""
        await self._flush()
        for start in range(0, len(data), record):
            self._tls.write(data[start : start + record])
        self._take_output()
        await self._flush(pause)

    async def update_keys(self) -> None:
        """A TLS 1.3 KeyUpdate asking the server to update its keys too (else NotMeasurable)."""
        why = request_key_update(self._tls)
        if why is not None:
            raise NotMeasurable(why)
        with contextlib.suppress(ssl.SSLWantReadError):
            self._tls.do_handshake()  # Emits the queued KeyUpdate.
        await self._flush()

    async def send_eof(self) -> None:
        # CPython's unwrap() calls SSL_shutdown twice, and the second reads what TLS
        # already holds: application data there fails it. Take that data out first.
        self._read_ahead()
        try:
            self._tls.unwrap()  # Queues close_notify; the server's comes later, if at all.
        except ssl.SSLWantReadError:
            pass
        self._take_output()
        self._eof_queued = True
        self._send_now()
        await trio.lowlevel.checkpoint()

    # -- reading ---------------------------------------------------------

    async def receive_some(self, max_bytes: int) -> bytes:
        if self._ahead:
            data = bytes(self._ahead[:max_bytes])
            del self._ahead[:max_bytes]
            await trio.lowlevel.cancel_shielded_checkpoint()
            return data
        if self._ahead_end is not None:
            return self._ended(close_notify=self._ahead_end)
        while True:
            try:
                data = self._tls.read(max_bytes)
            except ssl.SSLWantReadError:
                self._take_output()
                self._send_now()
                await self._fill()
                continue
            except ssl.SSLZeroReturnError:
                return self._ended(close_notify=True)
            except ssl.SSLEOFError:
                return self._ended(close_notify=False)
            except ssl.SSLError as exc:
                self._take_output()
                self._send_now()  # Our alert, if the socket takes it.
                raise TlsRecordError.of(exc) from None
            self._take_output()  # A read can answer a KeyUpdate.
            self._send_now()
            if not data:
                return self._ended(close_notify=True)
            await trio.lowlevel.cancel_shielded_checkpoint()
            return data

    def _read_ahead(self) -> None:
        """Decrypt what TLS already holds into :attr:`_ahead`, without touching the socket."""
        while self._ahead_end is None:
            try:
                data = self._tls.read(RECV_SIZE)
            except ssl.SSLWantReadError:
                return
            except ssl.SSLZeroReturnError:
                self._ahead_end = True
                return
            except ssl.SSLEOFError:
                self._ahead_end = False
                return
            if not data:
                self._ahead_end = True
                return
            self._ahead += data

    def _ended(self, *, close_notify: bool) -> bytes:
        if self.close_notify is None:
            self.close_notify = close_notify
        return b""

    # -- closing ---------------------------------------------------------

    def close(self) -> None:
        if self._sock.fileno() == -1:
            return
        if not self._eof_queued:
            try:
                self._tls.unwrap()
            except ssl.SSLError:
                pass  # Want-read (the usual), or a connection TLS already gave up on.
            self._take_output()
        try:
            self._send_now()
        except OSError:
            pass  # A reset connection: closing is all that is left.
        self._sock.close()

    def reset(self) -> None:
        _reset(self._sock)

    # -- the socket beneath ----------------------------------------------

    def _take_output(self) -> None:
        self.pending += self._outgoing.read()

    def _send_now(self) -> None:
        """Send what the socket takes now, without waiting; then the FIN, if queued and due."""
        self._take_output()
        while self.pending:
            try:
                n = self._raw.send(self.pending)
            except (BlockingIOError, InterruptedError):
                return
            del self.pending[:n]
        if self._eof_queued and not self._eof_sent:
            self._eof_sent = True
            self._raw.shutdown(socket.SHUT_WR)

    async def _flush(self, trickle: float | None = None) -> None:
        """Wait until the socket took every pending byte (with ``trickle``: one byte per
        ``send``, that many seconds apart)."""
        self._take_output()
        while trickle is not None and self.pending:
            await trio.lowlevel.wait_writable(self._raw)
            try:
                del self.pending[: self._raw.send(self.pending[:1])]
            except (BlockingIOError, InterruptedError):
                continue
            await trio.sleep(trickle)
        self._send_now()
        while self.pending:
            self._writing = True
            try:
                await trio.lowlevel.wait_writable(self._raw)
            finally:
                self._writing = False
            self._send_now()

    async def _fill(self) -> None:
        """Wait for ciphertext from the server and hand it to TLS (a FIN as EOF).

        Pending bytes go out meanwhile, whenever the socket takes them and no
        other task is waiting to send them.
        """
        while True:
            try:
                data = self._raw.recv(RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                if self.pending and not self._writing:
                    await _readable_or_writable(self._raw)
                    self._send_now()
                else:
                    await trio.lowlevel.wait_readable(self._raw)
                continue
            if data:
                self._incoming.write(data)
            else:
                self._incoming.write_eof()
            return


def _reset(sock: trio.socket.SocketType) -> None:
    """Close ``sock`` with RST: ``SO_LINGER`` on with a zero timeout."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass  # Already reset by the server; closing is all that is left.
    sock.close()


async def _readable_or_writable(sock: socket.socket) -> None:
    """Wait until ``sock`` can be read or written, whichever comes first."""
    async with trio.open_nursery() as nursery:

        async def wait(ready: Callable[[socket.socket], Awaitable[None]]) -> None:
            await ready(sock)
            nursery.cancel_scope.cancel()

        nursery.start_soon(wait, trio.lowlevel.wait_readable)
        nursery.start_soon(wait, trio.lowlevel.wait_writable)
