"""The handler contract, and the two handlers the servers ship with.

A *handler* is the protocol logic of one connection; the reactor core owns the
socket and calls the handler in asyncio's order::

    start -> connection_made [-> data_received*] [-> eof_received] -> connection_lost -> end

- ``connection_made(transport)``: once, first; keep the transport to reply.
- ``data_received(data)``: zero or more times, with the bytes in arrival order.
- ``eof_received()``: at most once, when the peer half-closed its side. Return
  a true value to keep the connection open for writing (the handler then calls
  ``transport.close()`` itself); return ``None``/``False`` and the core flushes
  what is owed and closes.
- ``connection_lost(exc)``: once, last; ``exc`` is None for a clean close.

A handler never touches a socket: it talks through the :class:`Transport`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

__all__ = [
    "Transport",
    "Handler",
    "HandlerFactory",
    "EchoHandler",
    "DiscardHandler",
    "HANDLERS",
]


class Transport(Protocol):
    """What a handler may do to its connection."""

    def send(self, data: bytes) -> None:
        """Queue ``data`` for the peer, in order. Any thread may call this."""

    def close(self) -> None:
        """Flush what is queued, then close. Any thread may call this."""


class Handler(Protocol):
    """Protocol logic for one connection, called in asyncio's order."""

    def connection_made(self, transport: Transport) -> None: ...

    def data_received(self, data: bytes) -> None: ...

    def eof_received(self) -> bool | None: ...

    def connection_lost(self, exc: Exception | None) -> None: ...


#: Makes one handler per connection.
HandlerFactory = Callable[[], Handler]


class EchoHandler:
    """Echo (RFC 862): send back every byte received, in order, nothing else."""

    __slots__ = ("_transport",)

    def __init__(self) -> None:
        self._transport: Transport | None = None

    def connection_made(self, transport: Transport) -> None:
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        assert self._transport is not None
        self._transport.send(data)

    def eof_received(self) -> bool | None:
        return None  # Flush what is owed, then close.

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None


class DiscardHandler:
    """Discard (RFC 863): read and throw away everything, never reply."""

    __slots__ = ()

    def connection_made(self, transport: Transport) -> None:
        pass

    def data_received(self, data: bytes) -> None:
        pass

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        pass


#: The handlers a server can be started with, by ``--handler`` name.
HANDLERS: dict[str, HandlerFactory] = {
    "echo": EchoHandler,
    "discard": DiscardHandler,
}
