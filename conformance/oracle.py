"""Protocol oracles: given what was sent and what came back, is it right?

How this works
--------------
An oracle is sans-I/O: no sockets, no trio, no clock. The harness feeds it the
bytes of one connection as they go out (:meth:`Oracle.sent`) and come in
(:meth:`Oracle.received`), tells it when the exchange is over
(:meth:`Oracle.finish`: nothing more will be sent, and the peer's bytes are
all in), and asks for a :class:`Judgement` whenever it likes:

- ``PASS``: what came back is right, so far and (after ``finish``) in all;
- ``FAIL``: it is wrong; ``offset`` is the first byte, in the received
  stream, where it stopped being right;
- ``PENDING``: nothing wrong yet, but the server still owes bytes.

The harness records a chunk as sent *before* it hands it to the socket and
then sends all of it, so a correct echo never receives more than was sent.

A user's oracle is any class with these four methods and a constructor that
takes no argument (``--oracle package.module:Class``)::

    o = EchoOracle(); o.sent(b"ab"); o.received(b"a"); assert o.verdict().pending

The suite judges through protocol models (:mod:`conformance.protocols`): an
oracle ``--oracle`` names is one, an ``OracleModel`` whose requests are echo's
(any bytes), loaded and checked by :func:`conformance.protocols.load_model`.

An oracle may also say in advance what a correct server sends back for the
bytes sent (:class:`ReplyOracle`, a fifth method ``expected_reply``): echo
owes the bytes themselves, discard owes nothing. The load generator then
checks every reply of thousands of connections without keeping their streams;
without it, the load asks each connection's oracle its verdict after every
read, as the harness does (:mod:`conformance.load.spec`).

A user's oracle is code the suite calls: :func:`guarded` wraps it so that an
exception it raises becomes :class:`OracleError`, which a check reports as an
ERROR (a fault on the judging side), never as a verdict on the server.
"""

from __future__ import annotations

import enum
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

__all__ = [
    "DiscardOracle",
    "EchoOracle",
    "Judgement",
    "Oracle",
    "OracleError",
    "OracleFactory",
    "ORACLES",
    "ReplyOracle",
    "Status",
    "Verdict",
    "first_difference",
    "guarded",
]


class Status(enum.Enum):
    """The three answers an oracle gives."""

    PASS = "PASS"
    FAIL = "FAIL"
    PENDING = "PENDING"


@dataclass(frozen=True)
class Judgement:
    """An oracle's answer about one connection (the run's verdicts are another thing).

    Attributes:
        status: PASS, FAIL or PENDING.
        offset: For FAIL, the first divergent byte offset in the received
            stream; for PENDING, the first byte still owed, if the oracle knows.
        reason: One line saying why (for FAIL and PENDING).
    """

    status: Status
    offset: int | None = None
    reason: str = ""

    @property
    def passed(self) -> bool:
        return self.status is Status.PASS

    @property
    def failed(self) -> bool:
        return self.status is Status.FAIL

    @property
    def pending(self) -> bool:
        return self.status is Status.PENDING


#: The old name of :class:`Judgement`, which users' oracles import (the README
#: named it): ``verdict()`` returning ``conformance.oracle.Verdict`` still works.
#: The run's verdicts are :class:`conformance.run.results.Verdict`, another thing.
Verdict = Judgement


@runtime_checkable
class Oracle(Protocol):
    """Judges one connection's byte streams; see the module docstring."""

    def sent(self, data: bytes) -> None: ...

    def received(self, data: bytes) -> None: ...

    def finish(self) -> None: ...

    def verdict(self) -> Judgement: ...


@runtime_checkable
class ReplyOracle(Oracle, Protocol):
    """An oracle that can say in advance what a correct server sends back.

    ``expected_reply(data)`` returns the bytes a correct server owes for
    ``data``, whatever was sent before and however the stream is cut:
    ``expected_reply(a + b) == expected_reply(a) + expected_reply(b)``. It
    leaves the oracle's state alone (what was sent is still told with ``sent``).
    """

    def expected_reply(self, data: bytes) -> bytes: ...


#: Makes one oracle per connection.
OracleFactory = Callable[[], Oracle]

_BLOCK = 4096


def first_difference(a: bytes | bytearray | memoryview, b: bytes | bytearray | memoryview) -> int:
    """The first offset where ``a`` and ``b`` differ, or ``min(len(a), len(b))``.

    Compares in blocks so that a 16 MiB stream costs no Python loop per byte.
    """
    va, vb = memoryview(a), memoryview(b)
    end = min(len(va), len(vb))
    start = 0
    while start < end:
        stop = min(start + _BLOCK, end)
        if va[start:stop] != vb[start:stop]:
            for i in range(start, stop):
                if va[i] != vb[i]:
                    return i
        start = stop
    return end


class EchoOracle:
    """RFC 862: every byte sent comes back, in order, and nothing else."""

    def __init__(self) -> None:
        self._sent = bytearray()
        self._received = bytearray()
        self._checked = 0
        self._finished = False
        self._failure: Judgement | None = None

    def sent(self, data: bytes) -> None:
        self._sent += data
        self._compare()

    def received(self, data: bytes) -> None:
        self._received += data
        self._compare()

    def finish(self) -> None:
        self._finished = True

    def expected_reply(self, data: bytes) -> bytes:
        """Every byte comes back as it was sent."""
        return data

    def _compare(self) -> None:
        if self._failure is not None:
            return
        end = min(len(self._sent), len(self._received))
        if end > self._checked:
            offset = self._checked + first_difference(
                memoryview(self._sent)[self._checked : end],
                memoryview(self._received)[self._checked : end],
            )
            if offset < end:
                self._failure = Judgement(
                    Status.FAIL,
                    offset,
                    f"byte {offset} differs: sent 0x{self._sent[offset]:02x}, "
                    f"received 0x{self._received[offset]:02x}",
                )
                return
            self._checked = end
        if len(self._received) > len(self._sent):
            self._failure = Judgement(
                Status.FAIL,
                len(self._sent),
                f"received {len(self._received) - len(self._sent)} bytes more than were sent",
            )

    def verdict(self) -> Judgement:
        if self._failure is not None:
            return self._failure
        missing = len(self._sent) - len(self._received)
        if missing == 0:
            return Judgement(Status.PASS)
        if self._finished:
            return Judgement(
                Status.FAIL,
                len(self._received),
                f"the exchange ended with {missing} of {len(self._sent)} bytes never echoed",
            )
        return Judgement(
            Status.PENDING,
            len(self._received),
            f"{missing} of {len(self._sent)} bytes not echoed yet",
        )


class DiscardOracle:
    """RFC 863: the server reads everything and sends nothing back."""

    def __init__(self) -> None:
        self._received = 0

    def sent(self, data: bytes) -> None:
        pass

    def received(self, data: bytes) -> None:
        self._received += len(data)

    def finish(self) -> None:
        pass

    def expected_reply(self, data: bytes) -> bytes:
        """Nothing comes back."""
        return b""

    def verdict(self) -> Judgement:
        if self._received:
            return Judgement(Status.FAIL, 0, f"a discard server sent {self._received} bytes back")
        return Judgement(Status.PASS)


#: The built-in oracles, by name.
ORACLES: dict[str, OracleFactory] = {"echo": EchoOracle, "discard": DiscardOracle}


class OracleError(Exception):
    """An oracle's own code raised: a fault on the judging side, not the server's.

    A check that meets one ends in ERROR, whatever the server did.
    """


def _raised(name: str, method: str, exc: Exception) -> OracleError:
    where = ""
    frames = traceback.extract_tb(exc.__traceback__)
    if frames:
        last = frames[-1]
        where = f" (at {last.filename}:{last.lineno}, in {last.name})"
    return OracleError(
        f"the oracle {name} raised in {method}(): {type(exc).__name__}: {exc}{where}"
    )


class _Guarded:
    """A user's oracle whose every call turns an exception into :class:`OracleError`."""

    __slots__ = ("_inner", "_name")

    def __init__(self, inner: Oracle, name: str) -> None:
        self._inner = inner
        self._name = name

    def sent(self, data: bytes) -> None:
        try:
            self._inner.sent(data)
        except Exception as exc:  # A user's code: anything it raises is its fault.
            raise _raised(self._name, "sent", exc) from exc

    def received(self, data: bytes) -> None:
        try:
            self._inner.received(data)
        except Exception as exc:
            raise _raised(self._name, "received", exc) from exc

    def finish(self) -> None:
        try:
            self._inner.finish()
        except Exception as exc:
            raise _raised(self._name, "finish", exc) from exc

    def verdict(self) -> Judgement:
        try:
            verdict = self._inner.verdict()
        except Exception as exc:
            raise _raised(self._name, "verdict", exc) from exc
        if not isinstance(verdict, Judgement):
            raise OracleError(
                f"the oracle {self._name} returned {verdict!r} from verdict(), not a Judgement"
            )
        return verdict


class _GuardedReply(_Guarded):
    """A guarded :class:`ReplyOracle`: ``expected_reply`` is guarded too."""

    __slots__ = ("_reply",)

    def __init__(self, inner: ReplyOracle, name: str) -> None:
        super().__init__(inner, name)
        self._reply = inner.expected_reply

    def expected_reply(self, data: bytes) -> bytes:
        try:
            owed = self._reply(data)
        except Exception as exc:
            raise _raised(self._name, "expected_reply", exc) from exc
        if not isinstance(owed, bytes | bytearray):
            raise OracleError(
                f"the oracle {self._name} returned {type(owed).__name__} from "
                "expected_reply(), not bytes"
            )
        return owed


def guarded(factory: OracleFactory, name: str | None = None) -> OracleFactory:
    """``factory``, whose oracles raise :class:`OracleError` when the oracle's own code raises.

    The built-in oracles are the suite's own code and come back as they are
    (no call in between on the load generator's hot path).

    Args:
        factory: An oracle factory (a class, or a model's ``oracle`` method).
        name: The oracle's name in messages; default: ``module:Class`` of ``factory``.

    Returns:
        A factory of the same oracles, each call guarded; its oracles are
        :class:`ReplyOracle` exactly when ``factory``'s are.
    """
    if factory in ORACLES.values():
        return factory
    if name is None:
        name = f"{getattr(factory, '__module__', '?')}:"
        name += getattr(factory, "__qualname__", repr(factory))

    def make() -> Oracle:
        try:
            inner = factory()
        except Exception as exc:
            raise _raised(name, "__init__", exc) from exc
        if isinstance(inner, ReplyOracle):
            return _GuardedReply(inner, name)
        return _Guarded(inner, name)

    return make
