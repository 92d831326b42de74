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

States (one enum, one table, below). ``send`` is accepted in ``CONNECTED`` and
``PEER_CLOSED``; ``DRAINING`` flushes the buffer, then shuts down the write side
and closes the socket.

Facts about the OS this relies on
---------------------------------
- ``recv`` returning ``b""`` is the peer's FIN (it called ``shutdown(SHUT_WR)``
  or ``close``). The peer may still read: what is owed must still be sent.
- A peer reset shows up as ``ConnectionResetError`` from ``recv`` or ``send``,
  or ``BrokenPipeError`` from ``send``. CPython ignores ``SIGPIPE`` at start-up,
  so the error arrives as an exception, not a signal.
- ``close`` with unread data in the receive queue sends RST instead of FIN; in
  ``PEER_CLOSED`` there is none (the peer sent FIN), so the close is clean.
"""

from __future__ import annotations

import enum
import itertools
import logging
import socket
from collections.abc import Callable

from reference.handler import Handler
from reference.loop import ERROR, READ, READ_BUFFER_SIZE, WRITE, EventLoop

__all__ = [
    "ConnState",
    "ConnEvent",
    "Connection",
    "DEFAULT_HIGH_WATER",
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

_READ = READ
_WRITE = WRITE
_READABLE = READ | ERROR
_WRITABLE = WRITE | ERROR
_ids = itertools.count(1)


class ConnState(enum.Enum):
    """Where a connection is in its life."""

    CONNECTED = "connected"  # reading and writing
    PEER_CLOSED = "peer-closed"  # the peer sent FIN; the handler still writes
    DRAINING = "draining"  # closing: no reads, flush the buffer, then close
    CLOSED = "closed"  # socket closed, connection_lost called


class ConnEvent(enum.Enum):
    """What moves a connection from one state to another."""

    PEER_EOF = "peer-eof"  # recv returned b""
    CLOSE = "close"  # the handler or the server asked for a graceful close
    FLUSHED = "flushed"  # the output buffer is empty while draining
    ABORT = "abort"  # an error, a reset, or a forced stop


# The state table. Rules:
# - reading happens only in CONNECTED, so PEER_EOF comes only from there;
# - CLOSE is a request: repeating it, or making it after the end, changes nothing;
# - FLUSHED only means something while DRAINING;
# - ABORT ends any connection at once, and is harmless after the end.
_TRANSITIONS: dict[tuple[ConnState, ConnEvent], ConnState] = {
    (ConnState.CONNECTED, ConnEvent.PEER_EOF): ConnState.PEER_CLOSED,
    (ConnState.CONNECTED, ConnEvent.CLOSE): ConnState.DRAINING,
    (ConnState.CONNECTED, ConnEvent.ABORT): ConnState.CLOSED,
    (ConnState.PEER_CLOSED, ConnEvent.CLOSE): ConnState.DRAINING,
    (ConnState.PEER_CLOSED, ConnEvent.ABORT): ConnState.CLOSED,
    (ConnState.DRAINING, ConnEvent.CLOSE): ConnState.DRAINING,
    (ConnState.DRAINING, ConnEvent.FLUSHED): ConnState.CLOSED,
    (ConnState.DRAINING, ConnEvent.ABORT): ConnState.CLOSED,
    (ConnState.CLOSED, ConnEvent.CLOSE): ConnState.CLOSED,
    (ConnState.CLOSED, ConnEvent.ABORT): ConnState.CLOSED,
}

_SENDING_STATES = frozenset({ConnState.CONNECTED, ConnState.PEER_CLOSED})


class IllegalTransition(RuntimeError):
    """An event arrived that the state table does not allow in this state."""


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
    ) -> None:
        if not 0 <= low_water <= high_water:
            raise ValueError(f"need 0 <= low_water <= high_water, got {low_water}, {high_water}")
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
            self.send_in_loop(data)
        else:
            self.loop.call_soon_threadsafe(self.send_in_loop, bytes(data))

    def close(self) -> None:
        """Flush what is queued, then close. Any thread may call this."""
        if self.loop.is_in_loop_thread():
            self.close_in_loop()
        else:
            self.loop.call_soon_threadsafe(self.close_in_loop)

    def send_in_loop(self, data: bytes) -> None:
        """Send ``data`` now, buffering what the socket does not take. Loop thread only."""
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

    def close_in_loop(self) -> None:
        """Stop reading, flush the buffer, then close. Loop thread only."""
        self._transition(ConnEvent.CLOSE)
        if self._state is ConnState.DRAINING:
            if self._out:
                self._update_interest()
            else:
                self._finish_close()

    def abort(self, exc: Exception | None = None) -> None:
        """Close at once, dropping what is buffered. Loop thread only."""
        self.loop.assert_in_loop_thread()
        self._lost(exc)

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
                self._handler.data_received(self._read_view[:n].tobytes())
            else:
                self._on_peer_eof()
        except Exception as exc:
            log.exception("%r: handler failed, closing the connection", self)
            self._lost(exc)

    def _on_peer_eof(self) -> None:
        self._transition(ConnEvent.PEER_EOF)
        log.debug("%r: peer sent EOF, %d bytes still owed", self, len(self._out))
        self._update_interest()
        if not self._handler.eof_received():
            self.close_in_loop()

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
                self._finish_close()
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
        if (
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

    def _finish_close(self) -> None:
        self._transition(ConnEvent.FLUSHED)
        try:
            self._sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # Already reset by the peer: nothing left to tell it.
        self._release(None)

    def _lost(self, exc: Exception | None) -> None:
        if self._state is ConnState.CLOSED:
            return
        self._transition(ConnEvent.ABORT)
        if exc is not None:
            log.debug("%r: dropped: %s", self, exc)
        self._out.clear()
        self._release(exc)

    def _release(self, exc: Exception | None) -> None:
        if self._events:
            self.loop.unregister(self._sock)
            self._events = 0
        self._sock.close()
        try:
            self._handler.connection_lost(exc)
        except Exception:
            log.exception("%r: handler failed in connection_lost", self)
        if self._on_closed is not None:
            self._on_closed(self)
