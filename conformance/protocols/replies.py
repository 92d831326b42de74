"""The one oracle every request/reply model shares, and its load.

How this works
--------------
Most models are a request/reply protocol: requests are framed in the stream
sent, and each request is owed one reply (or none), in order. Such a model
writes a :class:`ConnectionModel`, the server as seen by one connection:

- ``parse_request(buf)`` frames the next request at the start of ``buf``:
  ``(request, length)`` when it is all there, else the smallest length of
  ``buf`` worth trying again at (so a 16 MiB value is not parsed again for
  every chunk that brings more of it);
- ``apply(request)`` runs the model's state for that connection and returns
  the :class:`Expected` reply (or None when none is owed): exact bytes, or a
  pattern (one line beginning with known bytes, as a version string or an
  error text whose wording servers vary);
- ``describe(request)`` gives a short text for a failure report.

:class:`ReplyStreamOracle` does the rest for every such model: it frames the
bytes sent as they come, keeps a queue of the replies owed, and checks the
bytes received against the head of the queue, a reply at a time, with
memoryview slices and ``bytes.find`` (no Python loop per byte, so 16 MiB
streams are cheap). A FAIL's offset is the first byte of the received stream
where it stopped being right: the first differing byte of an exact reply, the
start of a reply that does not fit its pattern, the first byte nobody asked
for. :class:`ModelLoad` serves the load generator from the same
:class:`ConnectionModel`, so the oracle and the load agree on what is owed.

Writing a model (a whole one, a line protocol, is about 30 lines): its
:class:`ConnectionModel`, and the rest in a
:class:`~conformance.protocols.reply_model.ReplyModel`, which makes the
oracle and the load of it::

    class UpperConnection:  # every line comes back in capitals
        def parse_request(self, buf):
            end = buf.find(b"\\r\\n")
            return (bytes(buf[:end]), end + 2) if end >= 0 else len(buf) + 1
        def apply(self, line): return Expected.exact(line.upper() + b"\\r\\n")
        def describe(self, line): return repr(line[:40])

    class UpperModel(ReplyModel[bytes]):
        name = "upper"
        capabilities = frozenset({Capability.REPLIES, Capability.HALF_CLOSE})
        def connection(self): return UpperConnection()
        def request(self, max_value): return lines(max_size=max_value)
        def encode_request(self, line, prefix): return line + b"\\r\\n"
        def load_request(self, rng, size, prefix): return make_line(rng, size, prefix)
"""

from __future__ import annotations

import enum
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from conformance.oracle import Judgement, Status, first_difference

__all__ = [
    "LINE_LIMIT",
    "ConnectionModel",
    "Expected",
    "Match",
    "ModelLoad",
    "ReplyStreamOracle",
    "RequestMaker",
    "short",
]


class Match(enum.Enum):
    """How a reply is judged."""

    EXACT = "exact"  # these bytes, exactly
    LINE = "line"  # one CRLF-terminated line that begins with these bytes


@dataclass(frozen=True, slots=True)
class Expected:
    """The reply one request is owed.

    Attributes:
        match: EXACT or LINE.
        data: The whole reply (EXACT), or the bytes its line begins with (LINE).
    """

    match: Match
    data: bytes

    @classmethod
    def exact(cls, data: bytes) -> Expected:
        return cls(Match.EXACT, data)

    @classmethod
    def line(cls, prefix: bytes) -> Expected:
        return cls(Match.LINE, prefix)

    def describe(self) -> str:
        if self.match is Match.EXACT:
            return short(self.data)
        return f"a line beginning {short(self.data)}"


@runtime_checkable
class ConnectionModel(Protocol):
    """The server as one connection sees it: the framing of its requests and its state."""

    def parse_request(self, buf: bytearray) -> tuple[Any, int] | int:
        """Frame the request at the start of ``buf``.

        Args:
            buf: Bytes sent and not framed yet.

        Returns:
            ``(request, length)`` when a whole request is there; else the
            smallest ``len(buf)`` worth trying again at (more than ``len(buf)``).

        Raises:
            InvalidRequest: ``buf`` does not start with a request of this model.
        """
        ...

    def apply(self, request: Any) -> Expected | None:
        """Run ``request`` on the model's state; the reply it is owed, or None for none."""
        ...

    def describe(self, request: Any) -> str:
        """A short text naming ``request`` (``GET c1:k0``) for a failure report."""
        ...


#: The longest a pattern's line may grow without its CRLF before it is wrong.
LINE_LIMIT = 64 * 1024
#: Received bytes already judged are dropped once this many have piled up.
_COMPACT = 1 << 20
#: A failure report shows at most this many bytes of each side.
_SHOW = 48
#: ... and this many from a little before the first wrong byte, deep in a long reply.
_WINDOW = 24
#: Bytes received after the first wrong one that are kept for the report.
_KEEP = 4096


def short(data: bytes | bytearray | memoryview, limit: int = _SHOW) -> str:
    """``data`` as an escaped bytes literal, cut to ``limit`` bytes with the rest counted."""
    raw = bytes(data[:limit])
    more = len(data) - len(raw)
    return repr(raw) + (f"... (+{more} bytes)" if more > 0 else "")


@dataclass(frozen=True, slots=True)
class _Owed:
    """One reply owed: to which request (its number and the request itself), and what."""

    index: int
    request: Any
    expected: Expected


class ReplyStreamOracle:
    """Judges one connection of a request/reply protocol; see the module docstring.

    Args:
        model: The connection's model (it is the oracle's, and changes as requests are sent).

    Raises:
        InvalidRequest: From :meth:`sent`, when the bytes sent are not requests of the model.
    """

    def __init__(self, model: ConnectionModel) -> None:
        self._model = model
        self._unframed = bytearray()  # sent, not framed into a request yet
        self._need = 1  # len(_unframed) worth framing at
        self._requests = 0
        self._owed: deque[_Owed] = deque()
        self._received = bytearray()  # from stream offset _base
        self._base = 0
        self._pos = 0  # index in _received of the first byte not judged yet
        self._matched = 0  # bytes of the head reply already found right
        self._scan = 0  # index in _received where the head LINE reply's CRLF search resumes
        self._finished = False
        # The first wrong byte's index in _received, and what makes the reason
        # from what has come by the time it is asked for.
        self._failure: tuple[int, Callable[[], str]] | None = None

    def sent(self, data: bytes) -> None:
        buf = self._unframed
        buf += data
        while len(buf) >= self._need:
            parsed = self._model.parse_request(buf)
            if isinstance(parsed, int):
                self._need = max(parsed, len(buf) + 1)
                break
            request, length = parsed
            del buf[:length]
            self._need = 1
            expected = self._model.apply(request)
            if expected is not None and (expected.data or expected.match is Match.LINE):
                self._owed.append(_Owed(self._requests, request, expected))
            self._requests += 1
        self._judge()

    def received(self, data: bytes) -> None:
        if self._failure is None:
            self._received += data
            self._judge()
        elif len(self._received) < self._failure[0] + _KEEP:
            self._received += data[: self._failure[0] + _KEEP - len(self._received)]

    def finish(self) -> None:
        self._finished = True

    def verdict(self) -> Judgement:
        if self._failure is not None:
            at, reason = self._failure
            return Judgement(Status.FAIL, self._base + at, reason())
        offset = self._base + self._pos
        if not self._owed:
            return Judgement(Status.PASS)
        head = self._owed[0]
        count = len(self._owed)
        what = (
            f"{count} {'reply' if count == 1 else 'replies'} owed, the first to "
            f"{self._name(head)}: expected {head.expected.describe()}"
        )
        if self._finished:
            came = self._received[self._pos - self._matched :]
            return Judgement(
                Status.FAIL,
                offset,
                f"the exchange ended with {what}, received {short(came)}",
            )
        return Judgement(Status.PENDING, offset, what)

    # -- judging ----------------------------------------------------------------

    def _name(self, owed: _Owed) -> str:
        return f"request {owed.index} ({self._model.describe(owed.request)})"

    def _fail(self, at: int, reason: Callable[[], str]) -> None:
        self._failure = (at, reason)

    def _judge(self) -> None:
        if self._failure is not None:
            return
        recv = self._received
        while self._owed:
            avail = len(recv) - self._pos
            if not avail:
                break
            head = self._owed[0]
            done = (
                self._judge_exact(head, avail)
                if head.expected.match is Match.EXACT
                else self._judge_line(head, avail)
            )
            if not done:
                break
            self._owed.popleft()
            self._matched = 0
        if self._failure is None and not self._owed and len(recv) > self._pos:
            at = self._pos
            self._fail(
                at,
                lambda: (
                    f"bytes came that no request asked for (after the replies to all "
                    f"{self._requests} requests): {short(recv[at:])}"
                ),
            )
        if self._pos >= _COMPACT and self._failure is None:
            del recv[: self._pos - self._matched]
            self._base += self._pos - self._matched
            self._scan -= self._pos - self._matched
            self._pos = self._matched

    def _judge_exact(self, head: _Owed, avail: int) -> bool:
        want = head.expected.data
        start = self._matched
        n = min(len(want) - start, avail)
        got = memoryview(self._received)[self._pos : self._pos + n]
        part = memoryview(want)[start : start + n]
        if got != part:
            at = first_difference(got, part)
            reply_at = start + at
            lo = max(0, reply_at - 8)
            shown = self._pos - start + lo  # index in _received of the reply's byte lo
            self._fail(
                self._pos + at,
                lambda: (
                    f"the reply to {self._name(head)} differs at its byte {reply_at}"
                    + (f" of {len(want)}, from its byte {lo}" if lo else "")
                    + f": expected {short(want[lo:], _WINDOW if lo else _SHOW)}, "
                    f"received {short(self._received[shown:], _WINDOW if lo else _SHOW)}"
                ),
            )
            return False
        self._pos += n
        self._matched += n
        return self._matched == len(want)

    def _judge_line(self, head: _Owed, avail: int) -> bool:
        recv = self._received
        prefix = head.expected.data
        start = self._pos - self._matched  # where the reply begins
        if self._matched < len(prefix):
            n = min(len(prefix) - self._matched, avail)
            got = memoryview(recv)[self._pos : self._pos + n]
            if got != memoryview(prefix)[self._matched : self._matched + n]:
                self._fail(
                    start,
                    lambda: (
                        f"the reply to {self._name(head)} does not fit its pattern: "
                        f"expected {head.expected.describe()}, received {short(recv[start:])}"
                    ),
                )
                return False
            self._pos += n
            self._matched += n
            self._scan = self._pos
            if self._matched < len(prefix):
                return False
        end = recv.find(b"\r\n", max(self._scan - 1, start + len(prefix)))
        if end < 0:
            self._pos = len(recv)
            self._matched = self._pos - start
            self._scan = self._pos
        if (end if end >= 0 else len(recv)) - start > LINE_LIMIT:
            self._fail(
                start,
                lambda: (
                    f"the reply to {self._name(head)} runs past {LINE_LIMIT} bytes "
                    f"without its CRLF: expected {head.expected.describe()}, "
                    f"received {short(recv[start:])}"
                ),
            )
            return False
        if end < 0:
            return False
        self._pos = end + 2
        self._matched = self._pos - start
        return True


#: Makes the next request of a load connection: its bytes, or the request as
#: ``parse_request`` would give it and its bytes (no parse then: cheaper).
RequestMaker = Callable[[random.Random, int, bytes], "bytes | tuple[Any, bytes]"]


class ModelLoad:
    """A load connection served by a :class:`ConnectionModel`: owed bytes as the oracle owes.

    Args:
        model: A fresh connection model (this load connection's own).
        make: ``make(rng, size, prefix)``, the next request's bytes, or
            ``(request, bytes)`` with the request as ``parse_request`` gives
            it (the load then skips the parse: a maker that can should, and
            its tests must show the two agree); each must be owed an exact
            reply (or none), never a pattern.
        prefix: The connection's key prefix, as bytes.
    """

    __slots__ = ("_model", "_make", "_prefix")

    def __init__(self, model: ConnectionModel, make: RequestMaker, prefix: bytes) -> None:
        self._model = model
        self._make = make
        self._prefix = prefix

    def next_request(self, rng: random.Random, size: int) -> tuple[bytes, bytes]:
        """The next request's bytes and the exact bytes a correct server owes for it.

        Raises:
            ValueError: The request maker made a request owed only a pattern.
        """
        made = self._make(rng, size, self._prefix)
        if isinstance(made, tuple):
            request, data = made
        else:
            data = made
            parsed = self._model.parse_request(bytearray(data))
            if isinstance(parsed, int) or parsed[1] != len(data):
                raise ValueError(f"the load made {short(data)}, which is not one whole request")
            request = parsed[0]
        expected = self._model.apply(request)
        if expected is None:
            return data, b""
        if expected.match is not Match.EXACT:
            raise ValueError(
                f"the load made {self._model.describe(request)}, owed only "
                f"{expected.describe()}; load requests need exact replies"
            )
        return data, expected.data
