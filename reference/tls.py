"""TLS inside the connection: ``ssl.SSLObject`` over two memory BIOs, sans-I/O.

How this works
--------------
A :class:`TlsConnection` is a :class:`~reference.connection.Connection` whose
bytes pass through an ``ssl.SSLObject`` (``SSLContext.wrap_bio``, server side)
between two ``ssl.MemoryBIO``: the socket I/O stays the connection's own,
non-blocking, and OpenSSL never touches the socket::

    socket --recv_into--> incoming BIO --SSLObject.read--> handler.data_received
    handler's send --> SSLObject.write --> outgoing BIO --> ciphertext buffer --send--> socket

The server picks the class once, when it accepts: a server without a TLS
context never runs this code, and the plaintext path has no branch for TLS.
The handler is the same as over plain TCP and never knows the difference.

- *Handshake*: the connection starts in ``HANDSHAKING`` (see the state table in
  :mod:`reference.connection`). On each readable event it reads what came,
  feeds the incoming BIO and calls ``do_handshake``; whatever the outgoing BIO
  holds then (the server's flight, an alert) is sent like any other bytes.
  Success is ``HANDSHAKE_DONE``: only then is the handler made
  (``connection_made``), so a handler never sees a connection that is not
  secure yet, nor hears of one whose handshake failed. A failed handshake
  (not TLS, a version or cipher the server refuses, a reset, an EOF) closes
  that connection alone, logged at debug. A deadline timer closes a peer that
  does not finish in time; until then an idle handshake is a registered
  descriptor and a timer, and costs no CPU.
- *Reading*: every readable event reads once from the socket, then calls
  ``SSLObject.read`` until ``SSLWantReadError``, so that every record already
  received is given to the handler in that event (one ``data_received`` per
  read buffer's worth).
- *Writing*: ``send`` encrypts at once; the ciphertext goes out with the
  connection's partial-write logic (send what the socket takes, buffer the
  rest, write interest only while the buffer is non-empty). The water marks
  count the *plaintext* still owed: each record's plaintext size is kept with
  the stream position where its ciphertext ends, and is owed until the socket
  has taken all of it.
- *Closing*: the close that enters ``DRAINING`` calls ``SSLObject.unwrap()``,
  which queues close_notify behind every byte owed; ``FLUSHED`` then sends the
  FIN, as over plain TCP. So after the peer's EOF (its close_notify, or a FIN
  without one, a truncation, logged at debug), the server sends everything it
  owes, then close_notify, then FIN; and a server that closes a connection
  itself (a handler, a stop) sends close_notify first. An abort sends no
  close_notify: a stream cut short must not look complete.

Facts about OpenSSL this relies on
----------------------------------
- ``SSL_read`` returns the plaintext of at most one record per call. What it
  has decrypted beyond that, and the whole records still in the incoming BIO,
  are invisible to epoll: a readable event that reads one record and returns
  leaves the others waiting for the next byte from the peer, which may never
  come (the classic ``SSL_pending`` bug). Hence the loop until
  ``SSLWantReadError``.
- Reading can write: TLS 1.3 answers a KeyUpdate, sends session tickets once
  the handshake is done, and any error queues an alert. So the outgoing BIO is
  emptied after every ``do_handshake`` and every batch of reads.
- ``SSLObject.write`` encrypts all it is given (no partial writes) into the
  outgoing BIO, which grows without bound; the bound is the connection's, by
  the water marks.
- On memory BIOs ``unwrap()`` writes close_notify and then raises
  ``SSLWantReadError`` (it would wait for the peer's), or returns if the peer's
  came first; either way close_notify is in the outgoing BIO. Writing after
  one's own close_notify fails (``PROTOCOL_IS_SHUTDOWN``); writing after the
  peer's does not, in TLS 1.2 and 1.3 alike, which is what lets the server
  answer a half-closed peer.
- Once the peer's close_notify has come, ``SSLObject.read`` returns ``b""``
  (0 into a buffer), or raises ``SSLZeroReturnError`` once our own has been
  sent as well: both are the peer's EOF.
"""

from __future__ import annotations

import collections
import logging
import os
import socket
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import cast

from reference.connection import (
    _SENDING_STATES,
    DEFAULT_HIGH_WATER,
    DEFAULT_LINGER,
    DEFAULT_LOW_WATER,
    DEFAULT_READ_SIZE,
    Connection,
    ConnEvent,
    ConnState,
)
from reference.handler import DiscardHandler, Handler
from reference.loop import EventLoop

__all__ = ["DEFAULT_HANDSHAKE_TIMEOUT", "TlsConnection", "TlsFiles", "server_context"]

log = logging.getLogger(__name__)

#: Seconds a client has to complete the TLS handshake.
DEFAULT_HANDSHAKE_TIMEOUT = 10.0

#: The most plaintext one TLS record carries (RFC 8446, 5.1; RFC 5246, 6.2.1).
_RECORD = 16 * 1024


class _EncryptedKey(Exception):
    """The private key asks for a password (raised from ``load_cert_chain``'s callback)."""


def _refuse_password() -> bytes:
    # Without a callback OpenSSL would prompt on the terminal and block the start.
    raise _EncryptedKey


def server_context(cert: str, key: str | None = None) -> ssl.SSLContext:
    """A server-side TLS context with this certificate and key.

    Args:
        cert: A PEM file: the certificate, then any intermediates.
        key: A PEM file with the certificate's private key, unencrypted;
            None when the key is in ``cert`` too.

    Returns:
        A context for ``wrap_bio(..., server_side=True)``: TLS 1.2 and 1.3
        (the ``ssl`` module's defaults), no renegotiation.

    Raises:
        ValueError: A file cannot be read, is not PEM, holds no key, or the key
            is encrypted or does not match; the message says which, in one line.
    """
    for what, path in (("certificate", cert), ("private key", key)):
        if path is None:
            continue
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise ValueError(f"cannot read the TLS {what} {path}: {exc.strerror or exc}") from None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    # A client asking to renegotiate would make the server do a handshake's
    # work again and again for it; TLS 1.3 has no renegotiation at all.
    context.options |= ssl.OP_NO_RENEGOTIATION
    where = cert if key is None else f"{cert} and {key}"
    try:
        context.load_cert_chain(cert, key, password=_refuse_password)
    except _EncryptedKey:
        raise ValueError(
            f"the TLS private key in {key or cert} is encrypted; give an unencrypted PEM key"
        ) from None
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            reason = "the private key is not the certificate's"
        elif exc.reason and exc.reason != "PEM lib":
            reason = exc.reason.replace("_", " ").lower()
        elif key is None:  # OpenSSL's "PEM lib": not the PEM it wanted.
            reason = "not a PEM certificate followed by its private key"
        else:
            reason = "not a PEM certificate and a PEM private key"
        raise ValueError(f"cannot use the TLS certificate {where}: {reason}") from None
    return context


@dataclass(frozen=True)
class TlsFiles:
    """Where a server's certificate and key are, to build its TLS context from.

    An ``ssl.SSLContext`` can be neither pickled nor passed to another process:
    each sub-reactor process builds its own from these paths.

    Attributes:
        cert: A PEM file: the certificate, then any intermediates.
        key: A PEM file with the private key; None when it is in ``cert``.
    """

    cert: str
    key: str | None = None

    def absolute(self) -> TlsFiles:
        """The same files, named from ``/``, for a process that may run elsewhere."""
        return TlsFiles(os.path.abspath(self.cert), self.key and os.path.abspath(self.key))

    def context(self) -> ssl.SSLContext:
        """Load the files into a server-side context.

        Raises:
            ValueError: As :func:`server_context`.
        """
        return server_context(self.cert, self.key)


#: The handler a connection has before its handshake is done: told nothing
#: (a discard handler: it answers nothing, keeps nothing).
_UNMADE = DiscardHandler()


class TlsConnection(Connection):
    """A connection that speaks TLS, server side. Loop thread only, like its base.

    Args:
        loop: The loop that owns the connection.
        sock: A connected socket; it is made non-blocking.
        handler: The protocol logic; it is made once the handshake is done.
        context: A server-side TLS context (see :func:`server_context`).
        handshake_timeout: Seconds the peer has to complete the handshake.
        peer, on_closed, high_water, low_water, read_size, linger: As for
            :class:`~reference.connection.Connection`; the water marks count
            plaintext bytes owed.
    """

    __slots__ = (
        "_app",
        "_tls",
        "_incoming",
        "_outgoing",
        "_handshake_timeout",
        "_queued",
        "_owed",
        "_segments",
    )

    def __init__(
        self,
        loop: EventLoop,
        sock: socket.socket,
        handler: Handler,
        *,
        context: ssl.SSLContext,
        handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
        peer: object = None,
        on_closed: Callable[[Connection], None] | None = None,
        high_water: int = DEFAULT_HIGH_WATER,
        low_water: int = DEFAULT_LOW_WATER,
        read_size: int = DEFAULT_READ_SIZE,
        linger: float = DEFAULT_LINGER,
    ) -> None:
        if handshake_timeout <= 0:
            raise ValueError(f"need handshake_timeout > 0, got {handshake_timeout}")
        super().__init__(
            loop,
            sock,
            _UNMADE,
            peer=peer,
            on_closed=on_closed,
            high_water=high_water,
            low_water=low_water,
            read_size=read_size,
            linger=linger,
        )
        self._state = ConnState.HANDSHAKING
        self._app = handler
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._tls = context.wrap_bio(self._incoming, self._outgoing, server_side=True)
        self._handshake_timeout = handshake_timeout
        self._queued = 0  # ciphertext bytes ever queued: the stream position of the end of _out
        self._owed = 0  # plaintext bytes whose ciphertext the socket has not taken in full
        # (stream position where a record's ciphertext ends, its plaintext size),
        # for the records of application data not yet sent whole, oldest first.
        self._segments: collections.deque[tuple[int, int]] = collections.deque()

    @property
    def buffered(self) -> int:
        """Plaintext bytes waiting to be sent to the peer."""
        return self._owed

    # -- life cycle -----------------------------------------------------------

    def start(self) -> None:
        """Register with the loop and wait for the handshake. Loop thread only."""
        self.loop.assert_in_loop_thread()
        self._update_interest()
        self._deadline = self.loop.call_later(self._handshake_timeout, self._handshake_expired)

    def stop_in_loop(self) -> None:
        """As :meth:`Connection.stop_in_loop`; a connection still in its handshake just closes."""
        self.loop.assert_in_loop_thread()
        if self._state is ConnState.HANDSHAKING:
            self._transition(ConnEvent.STOP)
            self._release(None)
            return
        super().stop_in_loop()

    def _close_now(self) -> None:
        notify = self._state in _SENDING_STATES
        self._transition(ConnEvent.CLOSE)
        if notify:  # Entering DRAINING: close_notify goes behind everything owed.
            self._queue_close_notify()
        if self._state is ConnState.DRAINING:
            if self._out:
                self._update_interest()
            else:
                self._start_lingering()

    # -- reading --------------------------------------------------------------

    def _handle_read(self) -> None:
        try:
            n = self._sock.recv_into(self._read_view, self._read_size)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._lost(exc)
            return
        if not n:
            self._on_fin()
            return
        self._incoming.write(self._read_view[:n])
        if self._state is ConnState.HANDSHAKING:
            self._handshake()
            if self.state is not ConnState.CONNECTED:
                return
        self._read_records()  # Application data may have come with the handshake's end.

    def _on_fin(self) -> None:
        if self._state is ConnState.HANDSHAKING:
            log.debug("%r: peer closed during the TLS handshake", self)
            self._transition(ConnEvent.PEER_EOF)
            self._release(None)
            return
        log.debug("%r: peer sent FIN without close_notify (a truncated stream); EOF", self)
        try:
            self._on_peer_eof()
        except Exception as exc:
            log.exception("%r: handler failed, closing the connection", self)
            self._lost(exc, reset=True)

    def _handshake(self) -> None:
        try:
            self._tls.do_handshake()
        except ssl.SSLWantReadError:
            self._flush_tls()
            return
        except ssl.SSLError as exc:
            log.debug("%r: TLS handshake failed: %s", self, exc)
            self._flush_tls()  # The alert, if the socket takes it now.
            self._lost(None)
            return
        self._flush_tls()  # The server's last flight (TLS 1.3: its session tickets).
        if self._state is not ConnState.HANDSHAKING:
            return  # Lost while sending.
        self._transition(ConnEvent.HANDSHAKE_DONE)
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        log.debug("%r: TLS handshake done, %s", self, self._tls.version())
        self._handler = self._app
        try:
            self._handler.connection_made(self)
        except Exception as exc:
            log.exception("%r: handler failed in connection_made", self)
            self._lost(exc, reset=True)

    def _handshake_expired(self) -> None:
        self._deadline = None
        if self._state is ConnState.HANDSHAKING:
            log.debug("%r: no TLS handshake within %.1fs, closing", self, self._handshake_timeout)
            self._transition(ConnEvent.EXPIRED)
            self._release(None)

    def _read_records(self) -> None:
        """Give the handler every record the incoming BIO holds, then act on close_notify."""
        # Given a buffer, read returns how many bytes it put there (typeshed says bytes).
        read = cast(Callable[[int, memoryview], int], self._tls.read)
        view = self._read_view
        size = self._read_size
        got = 0
        peer_eof = False
        while True:
            try:
                n = read(size - got, view[got:size])
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                peer_eof = True
                break
            except ssl.SSLError as exc:
                self._flush_tls()  # The alert, if the socket takes it now.
                self._lost(exc)
                return
            if not n:
                peer_eof = True
                break
            got += n
            if got == size:  # The read buffer is full: hand it over, read on.
                if not self._deliver(got):
                    return
                got = 0
        self._flush_tls()
        if self._state is not ConnState.CONNECTED:
            return  # Lost while sending.
        if got and not self._deliver(got):
            return
        if peer_eof:
            log.debug("%r: peer sent close_notify", self)
            try:
                self._on_peer_eof()
            except Exception as exc:
                log.exception("%r: handler failed, closing the connection", self)
                self._lost(exc, reset=True)

    def _deliver(self, count: int) -> bool:
        """Give the first ``count`` bytes of the read buffer to the handler.

        Returns:
            True while the connection still takes input.
        """
        self._bytes_in += count
        try:
            self._handler.data_received(self._read_view[:count].tobytes())
        except Exception as exc:
            log.exception("%r: handler failed, closing the connection", self)
            self._lost(exc, reset=True)
            return False
        return self._state is ConnState.CONNECTED

    # -- writing --------------------------------------------------------------

    def _send_now(self, data: bytes) -> None:
        if self._state not in _SENDING_STATES:
            log.debug("%r: %d bytes sent after close, dropped", self, len(data))
            return
        if not data:
            return
        # One record at a time, noting where each one's ciphertext ends, so that
        # the plaintext owed is known to a record, not to a whole reply.
        write = self._tls.write
        outgoing = self._outgoing
        cuts: list[tuple[int, int]] = []
        try:
            if len(data) <= _RECORD:
                write(data)
                cuts.append((outgoing.pending, len(data)))
            else:
                view = memoryview(data)
                for start in range(0, len(data), _RECORD):
                    record = view[start : start + _RECORD]
                    write(record)
                    cuts.append((outgoing.pending, len(record)))
        except ssl.SSLError as exc:
            self._lost(exc, reset=True)
            return
        self._queue(outgoing.read(), cuts)

    def _flush_tls(self) -> None:
        """Queue what the TLS layer wrote by itself (handshake, alerts, tickets, close_notify)."""
        if self._outgoing.pending:
            self._queue(self._outgoing.read(), ())

    def _queue(self, cipher: bytes, cuts: Sequence[tuple[int, int]]) -> None:
        """Send ``cipher`` now, buffering what the socket does not take.

        Args:
            cipher: Ciphertext, in stream order.
            cuts: For each record of application data in it, where its
                ciphertext ends in ``cipher`` and how many plaintext bytes it
                carries: owed until the socket has taken that record whole.
        """
        out = self._out
        start = self._queued
        self._queued += len(cipher)
        n = 0
        if not out:
            try:
                n = self._sock.send(cipher)
            except (BlockingIOError, InterruptedError):
                pass
            except OSError as exc:
                self._lost(exc)
                return
            if n == len(cipher):
                return
            out += memoryview(cipher)[n:]
            self._update_interest()
        else:
            out += cipher
        if cuts:
            segments = self._segments
            for end, plain in cuts:
                if end > n:
                    segments.append((start + end, plain))
                    self._owed += plain
            if self._owed > self._high_water and not self._paused_by_buffer:
                self._paused_by_buffer = True
                log.debug("%r: pause reading, %d bytes buffered", self, self._owed)
                self._update_interest()

    def _handle_write(self) -> None:
        out = self._out
        try:
            n = self._sock.send(out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._lost(exc)
            return
        del out[:n]
        segments = self._segments
        sent = self._queued - len(out)
        while segments and segments[0][0] <= sent:
            self._owed -= segments.popleft()[1]
        changed = False
        if self._paused_by_buffer and self._owed <= self._low_water:
            self._paused_by_buffer = False
            log.debug("%r: resume reading, %d bytes buffered", self, self._owed)
            changed = True
        if not out:
            if self._state is ConnState.DRAINING:
                self._start_lingering()
                return
            changed = True
        if changed:
            self._update_interest()

    def _queue_close_notify(self) -> None:
        try:
            self._tls.unwrap()
        except ssl.SSLWantReadError:
            pass  # Ours is written; the peer's comes later, or never: it is not awaited.
        except ssl.SSLError as exc:
            log.debug("%r: no close_notify: %s", self, exc)
        self._flush_tls()
