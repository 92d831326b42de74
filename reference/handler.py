"""The handler contract, and the handlers the servers ship with.

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

Handler cost
------------
:class:`Work` is a dial for what a handler costs per message, so that the
models can be compared under handlers that are not free (``--work``):

- ``none``: nothing (the default);
- ``block:MS``: the handler's thread blocks for MS milliseconds
  (``time.sleep``, as a blocking database call does: the GIL is released, the
  core is free for others);
- ``cpu:US``: the handler burns US microseconds of CPU (a busy loop on
  ``time.perf_counter``, holding the GIL as pure-Python work does).

:func:`with_work` wraps a handler factory so that each handler spends the work
once per ``data_received`` call, then does what the inner handler does. A
"message" is one ``data_received`` call: in a ping-pong exchange (one message
in flight per connection) that is one per message; bytes that arrive together
are one call, and pay once.
"""

from __future__ import annotations

import enum
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from reference.memcache import MemcacheHandler
from reference.resp import RespHandler
from reference.transport import Transport

__all__ = [
    "Transport",
    "Handler",
    "HandlerFactory",
    "EchoHandler",
    "DiscardHandler",
    "HANDLERS",
    "WorkKind",
    "Work",
    "NO_WORK",
    "WorkingHandler",
    "with_work",
]


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


#: The handlers a server can be started with, by ``--handler`` name. ``resp``
#: and ``memcached`` keep their values in a store shared by the connections of
#: one server process (see :mod:`reference.resp`, :mod:`reference.memcache`).
HANDLERS: dict[str, HandlerFactory] = {
    "echo": EchoHandler,
    "discard": DiscardHandler,
    "resp": RespHandler,
    "memcached": MemcacheHandler,
}


class WorkKind(enum.Enum):
    """How a handler spends its cost per message."""

    NONE = "none"
    BLOCK = "block"  # time.sleep: blocks the thread, frees the core
    CPU = "cpu"  # a busy loop: holds the core (and the GIL)


#: The unit of each kind's amount, as written after the colon.
_UNITS = {WorkKind.BLOCK: "milliseconds", WorkKind.CPU: "microseconds"}
#: The largest amount of each kind: 10 s per message, so that nothing hangs for long.
_LIMITS = {WorkKind.BLOCK: 10_000.0, WorkKind.CPU: 10_000_000.0}


@dataclass(frozen=True)
class Work:
    """What a handler costs per message: nothing, a blocking wait, or CPU.

    Args:
        kind: How the cost is spent.
        amount: Milliseconds for :attr:`WorkKind.BLOCK`, microseconds for
            :attr:`WorkKind.CPU`, 0 for :attr:`WorkKind.NONE`.
    """

    kind: WorkKind = WorkKind.NONE
    amount: float = 0.0

    @classmethod
    def parse(cls, text: str) -> Work:
        """Parse ``none``, ``block:MS`` or ``cpu:US``.

        Returns:
            The work the text describes.

        Raises:
            ValueError: With a message that says what was wrong and what to
                write instead.
        """
        kind_text, colon, amount_text = text.strip().partition(":")
        try:
            kind = WorkKind(kind_text.lower())
        except ValueError:
            raise ValueError(
                f"unknown kind {kind_text!r}; write none, block:MS or cpu:US"
            ) from None
        if kind is WorkKind.NONE:
            if colon:
                raise ValueError("none takes no amount; write none")
            return cls()
        unit = _UNITS[kind]
        if not colon:
            raise ValueError(f"{kind.value} needs an amount in {unit}, e.g. {kind.value}:1")
        try:
            amount = float(amount_text)
        except ValueError:
            raise ValueError(
                f"{amount_text!r} is not a number of {unit}; write e.g. {kind.value}:1"
            ) from None
        limit = _LIMITS[kind]
        if not math.isfinite(amount) or not 0 <= amount <= limit:
            raise ValueError(f"{unit} must be between 0 and {limit:g}, got {amount_text}")
        return cls(kind, amount)

    def __str__(self) -> str:
        if self.kind is WorkKind.NONE:
            return "none"
        amount = int(self.amount) if self.amount.is_integer() else self.amount
        return f"{self.kind.value}:{amount}"  # Parses back to the same Work.

    def spend(self) -> None:
        """Spend the cost of one message on the calling thread."""
        if self.kind is WorkKind.BLOCK:
            time.sleep(self.amount / 1e3)
        elif self.kind is WorkKind.CPU:
            end = time.perf_counter() + self.amount / 1e6
            while time.perf_counter() < end:
                pass


#: The default: handlers that cost nothing beyond their own code.
NO_WORK = Work()


class WorkingHandler:
    """Spends :class:`Work` on every ``data_received``, then lets the inner handler run.

    Args:
        inner: The protocol handler.
        work: The cost of each message.
    """

    __slots__ = ("_inner", "_spend")

    def __init__(self, inner: Handler, work: Work) -> None:
        self._inner = inner
        self._spend = work.spend

    def connection_made(self, transport: Transport) -> None:
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self._spend()
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._inner.connection_lost(exc)


def with_work(factory: HandlerFactory, work: Work) -> HandlerFactory:
    """A handler factory whose handlers spend ``work`` per message; ``factory`` for none."""
    if work.kind is WorkKind.NONE:
        return factory

    def make() -> Handler:
        return WorkingHandler(factory(), work)

    return make
