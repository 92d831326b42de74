"""One TCP connection: its socket, its output buffer, its state.

How this works
--------------
A ``Connection`` belongs to one :class:`~reference.loop.EventLoop` for its whole
life and is only touched on that loop's thread. It reads what the peer sends
and hands it to its :class:`~reference.handler.Handler`; the handler replies
through :meth:`Connection.send`.

Sending follows asyncio's selector transport: try to send at once; keep what the
socket did not take in a ``bytearray``; ask the selector for write readiness
only while that buffer is non-empty; on write readiness send what the socket
takes (``n = sock.send(out); del out[:n]``).

Flow control: when the buffer grows past the high-water mark (a peer that does
not read its replies), the connection stops reading from that peer; when it
drains down to the low-water mark, reading resumes. Nothing is dropped and the
buffer never holds more than the high-water mark plus one read.

States (one enum, one table, below). ``send`` is accepted in ``CONNECTED``,
``PEER_CLOSED`` and ``STOPPING``. A TLS connection
(:class:`reference.tls.TlsConnection`, this class with its bytes passed
through ``ssl.SSLObject``) starts in ``HANDSHAKING`` and reaches ``CONNECTED``
when its handshake is done; a plain one starts in ``CONNECTED``.

Closing gracefully is a *lingering close*, the same whoever asks for it (the
handler, the core after the peer's EOF, a stopping server):

1. take no more input: nothing read from now on reaches the handler;
2. ``DRAINING``: send everything that is owed;
3. ``LINGERING``: ``shutdown(SHUT_WR)`` (the peer reads our FIN after the last
   byte), then read and throw away whatever the peer still sends, until its
   EOF or the linger deadline;
4. only then close the socket.

A stopping server first calls :meth:`Connection.stop_in_loop` (``STOPPING``): a
handler whose work runs elsewhere (a :class:`DeferredHandler`, the pool's) may
still owe replies for what it was given, so it is asked to close once that is
done; any other handler has answered already, and the close begins at once.

An abort (an error, a failed handler, a server out of time) closes at once; if
bytes were still owed, the peer gets a reset (RST), so that a cut-short stream
is never mistaken for a complete one.

Facts about the OS this relies on
---------------------------------
- ``recv`` returning ``b""`` is the peer's FIN (it called ``shutdown(SHUT_WR)``
  or ``close``). The peer may still read: what is owed must still be sent.
- A peer reset shows up as ``ConnectionResetError`` from ``recv`` or ``send``,
  or ``BrokenPipeError`` from ``send``. CPython ignores ``SIGPIPE`` at start-up,
  so the error arrives as an exception, not a signal.
- ``close`` with unread data in the receive queue sends RST instead of FIN, and
  the kernel drops what it still had to send: the peer loses the end of the
  stream even though the server had "sent" it. Lingering until the peer's EOF
  means no such data is left when the socket is closed.
- After the peer's FIN, ``recv`` returns ``b""`` again each time it is called,
  so a connection that saw the EOF earlier ends its lingering on the first read.
- ``SO_LINGER`` on with a zero timeout makes ``close`` send RST at once.
"""

from __future__ import annotations

import enum
import itertools
import logging
import socket
import struct
from collections.abc import Callable
from typing import Protocol, runtime_checkable

from reference.handler import Handler
from reference.loop import ERROR, READ, READ_BUFFER_SIZE, WRITE, EventLoop, TimerHandle

__all__ = [
    "ConnState",
    "ConnEvent",
    "Connection",
    "DeferredHandler",
    "IllegalTransition",
    "DEFAULT_HIGH_WATER",
    "DEFAULT_LINGER",
    "DEFAULT_LOW_WATER",
    "DEFAULT_READ_SIZE",
]

log = logging.getLogger(__name__)

#: Pause reading from a peer once this many reply bytes wait for it.
DEFAULT_HIGH_WATER = 256 * 1024
#: Resume reading once the waiting reply bytes are down to this.
DEFAULT_LOW_WATER = 64 * 1024
#: Largest single ``recv``.
DEFAULT_READ_SIZE = READ_BUFFER_SIZE
#: Seconds a closing connection waits for the peer's EOF after its own FIN.
DEFAULT_LINGER = 2.0

_READ = READ
_WRITE = WRITE
_READABLE = READ | ERROR
_WRITABLE = WRITE | ERROR
_ids = itertools.count(1)
#: ``struct linger`` with l_onoff=1, l_linger=0: ``close`` sends RST.
_RESET_ON_CLOSE = struct.pack("ii", 1, 0)


class ConnState(enum.Enum):
    """Where a connection is in its life."""

    HANDSHAKING = "handshaking"  # TLS only: no handler yet; the handshake reads and writes
    CONNECTED = "connected"  # reading and writing
    PEER_CLOSED = "peer-closed"  # the peer sent FIN; the handler still writes
    STOPPING = "stopping"  # the server stops: no reads; the handler finishes, then closes
    DRAINING = "draining"  # closing: no reads, flush the buffer
    LINGERING = "lingering"  # FIN sent: read and discard until the peer's EOF
    CLOSED = "closed"  # socket closed, connection_lost called


class ConnEvent(enum.Enum):
    """What moves a connection from one state to another."""

    HANDSHAKE_DONE = "handshake-done"  # TLS: the handshake succeeded
    PEER_EOF = "peer-eof"  # recv returned b"" (over TLS: the peer's close_notify, or its FIN)
    STOP = "stop"  # the server is stopping: take no more input, finish, close
    CLOSE = "close"  # the handler or the server asked for a graceful close
    FLUSHED = "flushed"  # the output buffer is empty while draining
    EXPIRED = "expired"  # a deadline passed: the handshake's, or the linger's before the EOF
    ABORT = "abort"  # an error, a reset, or a forced stop


# The state table. Rules:
# - input reaches the handler only in CONNECTED; LINGERING reads only to throw
#   away; HANDSHAKING reads only for the handshake; so PEER_EOF comes only from
#   those three (and ends LINGERING and HANDSHAKING);
# - HANDSHAKING (TLS) has no handler yet, so nothing is owed: HANDSHAKE_DONE
#   leads to CONNECTED, and the peer's EOF, the handshake deadline (EXPIRED), a
#   stopping server (STOP) or a failure (ABORT) end the connection at once;
#   CLOSE, a handler's request, cannot come before there is a handler;
# - STOP and CLOSE are requests: repeating them, or making them later in the
#   close, changes nothing; STOP never undoes a CLOSE already under way;
# - over TLS, the CLOSE that enters DRAINING queues close_notify behind every
#   byte owed, so FLUSHED (and the FIN of LINGERING) comes after it;
# - FLUSHED only means something while DRAINING, EXPIRED while HANDSHAKING or
#   LINGERING;
# - ABORT ends any connection at once (over TLS, without close_notify), and is
#   harmless after the end.
_TRANSITIONS: dict[tuple[ConnState, ConnEvent], ConnState] = {
    (ConnState.HANDSHAKING, ConnEvent.HANDSHAKE_DONE): ConnState.CONNECTED,
    (ConnState.HANDSHAKING, ConnEvent.PEER_EOF): ConnState.CLOSED,
    (ConnState.HANDSHAKING, ConnEvent.EXPIRED): ConnState.CLOSED,
    (ConnState.HANDSHAKING, ConnEvent.STOP): ConnState.CLOSED,
    (ConnState.HANDSHAKING, ConnEvent.ABORT): ConnState.CLOSED,
    (ConnState.CONNECTED, ConnEvent.PEER_EOF): ConnState.PEER_CLOSED,
    (ConnState.CONNECTED, ConnEvent.STOP): ConnState.STOPPING,
    (ConnState.CONNECTED, ConnEvent.CLOSE): ConnState.DRAINING,
    (ConnState.CONNECTED, ConnEvent.ABORT): ConnState.CLOSED,
    (ConnState.PEER_CLOSED, ConnEvent.STOP): ConnState.STOPPING,
    (ConnState.PEER_CLOSED, ConnEvent.CLOSE): ConnState.DRAINING,
    (ConnState.PEER_CLOSED, ConnEvent.ABORT): ConnState.CLOSED,
    (ConnState.STOPPING, ConnEvent.STOP): ConnState.STOPPING,
    (ConnState.STOPPING, ConnEvent.CLOSE): ConnState.DRAINING,
    (ConnState.STOPPING, ConnEvent.ABORT): ConnState.CLOSED,
    (ConnState.DRAINING, ConnEvent.STOP): ConnState.DRAINING,
    (ConnState.DRAINING, ConnEvent.CLOSE): ConnState.DRAINING,
    (ConnState.DRAINING, ConnEvent.FLUSHED): ConnState.LINGERING,
    (ConnState.DRAINING, ConnEvent.ABORT): ConnState.CLOSED,
    (ConnState.LINGERING, ConnEvent.STOP): ConnState.LINGERING,
    (ConnState.LINGERING, ConnEvent.CLOSE): ConnState.LINGERING,
    (ConnState.LINGERING, ConnEvent.PEER_EOF): ConnState.CLOSED,
    (ConnState.LINGERING, ConnEvent.EXPIRED): ConnState.CLOSED,
    (ConnState.LINGERING, ConnEvent.ABORT): ConnState.CLOSED,
    (ConnState.CLOSED, ConnEvent.STOP): ConnState.CLOSED,
    (ConnState.CLOSED, ConnEvent.CLOSE): ConnState.CLOSED,
    (ConnState.CLOSED, ConnEvent.ABORT): ConnState.CLOSED,
}

_SENDING_STATES = frozenset({ConnState.CONNECTED, ConnState.PEER_CLOSED, ConnState.STOPPING})
# States that read whatever the owner or the buffer says.
_ALWAYS_READING = frozenset({ConnState.HANDSHAKING, ConnState.LINGERING})
# An abort in these states cuts short what the peer is owed (or may be owed).
_OWING_STATES = frozenset({ConnState.STOPPING, ConnState.DRAINING})


class IllegalTransition(RuntimeError):
    """An event arrived that the state table does not allow in this state."""


@runtime_checkable
class DeferredHandler(Protocol):
    """A handler whose work runs off the loop thread (the pool's ``PooledHandler``).

    When the server stops, such a handler may not have answered all it was
    given yet; only it knows when it has. The connection calls
    :meth:`close_when_done` on the loop thread (once, in ``STOPPING``); the
    handler then calls ``transport.close()`` after the replies it still owes,
    in their order.
    """

    def close_when_done(self) -> None: ...


class Connection:
    """A connected socket owned by one loop.

    Args:
        loop: The loop that owns the connection; every method except
            :meth:`send` and :meth:`close` runs on its thread.
        sock: A connected socket; it is made non-blocking.
        handler: The protocol logic, called in asyncio's order.
        peer: The peer address, for logs.
        on_closed: Called on the loop thread once the connection is closed.
        high_water: Pause reading once this many bytes wait to be sent.
        low_water: Resume reading once the waiting bytes are down to this.
        read_size: Largest single ``recv``.
        linger: Seconds a closing connection waits for the peer's EOF after
            its own FIN, before it closes anyway.
    """

    __slots__ = (
        "id",
        "loop",
        "peer",
        "_sock",
        "_handler",
        "_on_closed",
        "_out",
        "_state",
        "_events",
        "_paused_by_buffer",
        "_paused_by_owner",
        "_high_water",
        "_low_water",
        "_read_size",
        "_read_view",
        "_linger",
        "_deadline",
        "_bytes_in",
        "_discarded",
    )

    def __init__(
        self,
        loop: EventLoop,
        sock: socket.socket,
        handler: Handler,
        *,
        peer: object = None,
        on_closed: Callable[[Connection], None] | None = None,
        high_water: int = DEFAULT_HIGH_WATER,
        low_water: int = DEFAULT_LOW_WATER,
        read_size: int = DEFAULT_READ_SIZE,
        linger: float = DEFAULT_LINGER,
    ) -> None:
        if not 0 <= low_water <= high_water:
            raise ValueError(f"need 0 <= low_water <= high_water, got {low_water}, {high_water}")
        if linger < 0:
            raise ValueError(f"need linger >= 0, got {linger}")
        self.id = next(_ids)
        self.loop = loop
        self.peer = peer
        self._sock = sock
        self._handler = handler
        self._on_closed = on_closed
        self._out = bytearray()
        self._state = ConnState.CONNECTED
        self._events = 0
        self._paused_by_buffer = False
        self._paused_by_owner = False
        self._high_water = high_water
        self._low_water = low_water
        self._read_size = min(read_size, len(loop.read_buffer))
        self._read_view = memoryview(loop.read_buffer)
        self._linger = linger
        # The timer of the state's deadline: the linger's, or (TLS) the handshake's.
        self._deadline: TimerHandle | None = None
        self._bytes_in = 0  # read and given to the handler
        self._discarded = 0  # read while closing and thrown away
        sock.setblocking(False)
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass  # A socket that is already reset; the first recv will say so.

    # -- inspection -------------------------------------------------------

    @property
    def state(self) -> ConnState:
        return self._state

    @property
    def buffered(self) -> int:
        """Bytes waiting to be sent to the peer."""
        return len(self._out)

    @property
    def reading(self) -> bool:
        """True while the connection asks the selector for readable events."""
        return bool(self._events & _READ)

    @property
    def bytes_in(self) -> int:
        """Bytes read from the peer and given to the handler."""
        return self._bytes_in

    def __repr__(self) -> str:
        return f"<Connection #{self.id} {self.peer} {self._state.value} on {self.loop.name}>"

    # -- life cycle ---------------------------------------------------------

    def start(self) -> None:
        """Register with the loop and call ``connection_made``. Loop thread only."""
        self.loop.assert_in_loop_thread()
        self._update_interest()
        try:
            self._handler.connection_made(self)
        except Exception as exc:
            log.exception("%r: handler failed in connection_made", self)
            self.abort(exc)

    def send(self, data: bytes) -> None:
        """Queue ``data`` for the peer. Any thread may call this.

        On the loop thread it sends at once (or buffers); from another thread
        it hands the bytes to the loop, which sends them in call order.
        """
        if self.loop.is_in_loop_thread():
            self._send_now(data)
        else:
            self.loop.call_soon_threadsafe(self._send_now, bytes(data))

    def close(self) -> None:
        """Flush what is queued, then close. Any thread may call this."""
        if self.loop.is_in_loop_thread():
            self._close_now()
        else:
            self.loop.call_soon_threadsafe(self._close_now)

    def send_in_loop(self, data: bytes) -> None:
        """Send ``data`` now, buffering what the socket does not take. Loop thread only.

        Raises:
            RuntimeError: Called from another thread than the loop's.
        """
        self.loop.assert_in_loop_thread()
        self._send_now(data)

    def close_in_loop(self) -> None:
        """Close gracefully: no more input, flush, FIN, linger, close. Loop thread only.

        See "How this works" above for the steps.

        Raises:
            RuntimeError: Called from another thread than the loop's.
        """
        self.loop.assert_in_loop_thread()
        self._close_now()

    def stop_in_loop(self) -> None:
        """Take no more input; close once what was read is answered. Loop thread only.

        For a stopping server. Input that arrives from now on never reaches the
        handler. A :class:`DeferredHandler` is asked to close when its work is
        done; any other handler has answered already, so the close begins now.

        Raises:
            RuntimeError: Called from another thread than the loop's.
        """
        self.loop.assert_in_loop_thread()
        before = self._state
        self._transition(ConnEvent.STOP)
        if before not in (ConnState.CONNECTED, ConnState.PEER_CLOSED):
            return  # A close is already under way (or over).
        self._update_interest()
        handler = self._handler
        if not isinstance(handler, DeferredHandler):
            self._close_now()
            return
        try:
            handler.close_when_done()
        except Exception as exc:
            log.exception("%r: handler failed in close_when_done", self)
            self._lost(exc, reset=True)

    def _send_now(self, data: bytes) -> None:
        if self._state not in _SENDING_STATES:
            log.debug("%r: %d bytes sent after close, dropped", self, len(data))
            return
        out = self._out
        if not out:
            try:
                n = self._sock.send(data)
            except (BlockingIOError, InterruptedError):
                n = 0
            except OSError as exc:
                self._lost(exc)
                return
            if n == len(data):
                return
            out += memoryview(data)[n:]
            self._update_interest()
        else:
            out += data
        if len(out) > self._high_water and not self._paused_by_buffer:
            self._paused_by_buffer = True
            log.debug("%r: pause reading, %d bytes buffered", self, len(out))
            self._update_interest()

    def _close_now(self) -> None:
        self._transition(ConnEvent.CLOSE)
        if self._state is ConnState.DRAINING:
            if self._out:
                self._update_interest()
            else:
                self._start_lingering()

    def abort(self, exc: Exception | None = None) -> None:
        """Close at once, dropping what is buffered. Loop thread only.

        If bytes were still owed (buffered, or a close still flushing), the
        peer gets a reset (RST) rather than a FIN.
        """
        self.loop.assert_in_loop_thread()
        self._lost(exc, reset=True)

    def pause_reading(self) -> None:
        """Stop reading from the peer until :meth:`resume_reading`. Loop thread only.

        For the owner of the connection (a server applying backpressure); the
        connection's own high/low water marks work independently of it.
        """
        if not self._paused_by_owner:
            self._paused_by_owner = True
            self._update_interest()

    def resume_reading(self) -> None:
        """Undo :meth:`pause_reading`. Loop thread only."""
        if self._paused_by_owner:
            self._paused_by_owner = False
            self._update_interest()

    # -- readiness ------------------------------------------------------------

    def _on_ready(self, mask: int) -> None:
        # ERROR (hang-up, error) comes whatever was asked for: let the I/O that
        # is wanted now discover it.
        if mask & _READABLE and self._events & _READ:
            if self._state is ConnState.LINGERING:
                self._discard_input()
            else:
                self._handle_read()
        if mask & _WRITABLE and self._out and self._state is not ConnState.CLOSED:
            self._handle_write()

    def _handle_read(self) -> None:
        # recv_into the loop's buffer, then copy out just what came: a fresh
        # 256 KiB bytes object per read (plain recv) makes malloc map and unmap
        # memory on every read.
        try:
            n = self._sock.recv_into(self._read_view, self._read_size)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._lost(exc)
            return
        try:
            if n:
                self._bytes_in += n
                self._handler.data_received(self._read_view[:n].tobytes())
            else:
                self._on_peer_eof()
        except Exception as exc:
            log.exception("%r: handler failed, closing the connection", self)
            self._lost(exc, reset=True)

    def _on_peer_eof(self) -> None:
        self._transition(ConnEvent.PEER_EOF)
        log.debug("%r: peer sent EOF, %d bytes still owed", self, len(self._out))
        self._update_interest()
        if not self._handler.eof_received():
            self._close_now()

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
        changed = False
        if self._paused_by_buffer and len(out) <= self._low_water:
            self._paused_by_buffer = False
            log.debug("%r: resume reading, %d bytes buffered", self, len(out))
            changed = True
        if not out:
            if self._state is ConnState.DRAINING:
                self._start_lingering()
                return
            changed = True
        if changed:
            self._update_interest()

    # -- internals --------------------------------------------------------------

    def _transition(self, event: ConnEvent) -> None:
        try:
            self._state = _TRANSITIONS[(self._state, event)]
        except KeyError:
            raise IllegalTransition(
                f"{self!r}: event {event.value!r} is not allowed in state {self._state.value!r}"
            ) from None

    def _update_interest(self) -> None:
        events = 0
        if self._state in _ALWAYS_READING or (
            self._state is ConnState.CONNECTED
            and not self._paused_by_buffer
            and not self._paused_by_owner
        ):
            events |= _READ
        if self._out and self._state is not ConnState.CLOSED:
            events |= _WRITE
        if events == self._events:
            return
        if not events:
            self.loop.unregister(self._sock)
        elif not self._events:
            self.loop.register(self._sock, events, self._on_ready)
        else:
            self.loop.modify(self._sock, events, self._on_ready)
        self._events = events

    def _start_lingering(self) -> None:
        """Everything owed is sent: FIN, then read and discard until the peer's EOF."""
        self._transition(ConnEvent.FLUSHED)
        try:
            self._sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # Already reset by the peer: the read below finds out.
        self._discard_input()  # The EOF may be there already (always, after PEER_CLOSED).
        if self._state is ConnState.LINGERING:
            self._update_interest()
            self._deadline = self.loop.call_later(self._linger, self._linger_expired)

    def _discard_input(self) -> None:
        try:
            n = self._sock.recv_into(self._read_view, self._read_size)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._lost(exc)
            return
        if n:
            self._discarded += n
        else:
            self._transition(ConnEvent.PEER_EOF)
            self._release(None)

    def _linger_expired(self) -> None:
        self._deadline = None
        if self._state is ConnState.LINGERING:
            log.debug("%r: no EOF from the peer within %.1fs, closing", self, self._linger)
            self._transition(ConnEvent.EXPIRED)
            self._release(None)

    def _lost(self, exc: Exception | None, *, reset: bool = False) -> None:
        """Close at once; with ``reset``, send RST if bytes were still owed."""
        if self._state is ConnState.CLOSED:
            return
        owed = bool(self._out) or self._state in _OWING_STATES
        self._transition(ConnEvent.ABORT)
        if exc is not None:
            log.debug("%r: dropped: %s", self, exc)
        self._out.clear()
        if reset and owed:
            try:
                self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET_ON_CLOSE)
            except OSError:
                pass  # The socket is already reset: the peer knows.
        self._release(exc)

    def _release(self, exc: Exception | None) -> None:
        if self._events:
            self.loop.unregister(self._sock)
            self._events = 0
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self._sock.close()
        log.debug(
            "%r: closed; %d bytes read, %d discarded while closing",
            self,
            self._bytes_in,
            self._discarded,
        )
        try:
            self._handler.connection_lost(exc)
        except Exception:
            log.exception("%r: handler failed in connection_lost", self)
        if self._on_closed is not None:
            self._on_closed(self)
