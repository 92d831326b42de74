"""The protocol model interface, and the one oracle every request/reply model shares.

How this works
--------------
A :class:`ProtocolModel` says what a server speaks, in four parts, none of
which touches a socket:

- what it promises (:class:`Capability`): replies, half-close semantics, that
  any byte string is a valid request stream. A check that needs a promise the
  model does not make is skipped with :func:`skip_reason`'s sentence;
- valid requests, as a Hypothesis strategy of plain frozen data
  (``model.requests(min_size=, max_size=, max_value=)``), and their bytes
  (``model.encode(requests, prefix=)``). The prefix makes every key the
  requests name unique to one connection, so connections never see each
  other's keys and each oracle models its own connection alone;
- an oracle per connection (``model.oracle()``), a
  :class:`conformance.oracle.Oracle`: fed the bytes sent and received, cut
  anywhere, it says PASS, FAIL at a byte offset, or PENDING;
- a cheap request source for the load generator (``model.load_connection(prefix)``):
  each call of ``next_request(rng, size)`` gives the next request's bytes and
  the exact bytes a correct server owes for it.

Most models are a request/reply protocol: requests are framed in the stream
sent, and each request is owed one reply (or none), in order. Such a model
only writes a :class:`ConnectionModel`, the server as seen by one connection:

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

Writing a model (a whole one, a line protocol, is about 50 lines)::

    class UpperConnection:  # every line comes back in capitals
        def parse_request(self, buf):
            end = buf.find(b"\\r\\n")
            return (bytes(buf[:end]), end + 2) if end >= 0 else len(buf) + 1
        def apply(self, line): return Expected.exact(line.upper() + b"\\r\\n")
        def describe(self, line): return repr(line[:40])

    class UpperModel:
        name = "upper"
        capabilities = frozenset({Capability.REPLIES, Capability.HALF_CLOSE})
        def requests(self, *, min_size=0, max_size=16, max_value=64):
            return st.lists(lines(max_size=max_value), min_size=min_size,
                            max_size=max_size).map(tuple)
        def encode(self, requests, *, prefix): return b"".join(l + b"\\r\\n" for l in requests)
        def oracle(self): return ReplyStreamOracle(UpperConnection())
        def load_connection(self, prefix):
            return ModelLoad(UpperConnection(), make_line, prefix.encode())

A model is stateless and built without arguments, so another process gets it
by name (:func:`conformance.protocols.model_name`,
:func:`conformance.protocols.load_model`).
"""

from __future__ import annotations

import enum
import random
import uuid
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from conformance.oracle import Judgement, Oracle, Status, first_difference

if TYPE_CHECKING:  # Only models' requests() need Hypothesis: the load runs without it.
    from hypothesis import strategies as st

__all__ = [
    "Capability",
    "ConnectionModel",
    "Expected",
    "InvalidRequest",
    "LoadConnection",
    "Match",
    "ModelLoad",
    "ProtocolModel",
    "ReplyStreamOracle",
    "check_prefix",
    "TEMPLATE",
    "fresh_keys",
    "request_stream",
    "template_prefix",
    "short",
    "skip_reason",
    "unique_prefix",
]


class Capability(enum.Enum):
    """What a model promises about the server; checks that need more are skipped."""

    #: The server answers what it is sent.
    REPLIES = "replies"
    #: After the client's FIN the server still sends all it owes, then closes.
    HALF_CLOSE = "half-close semantics"
    #: Any byte string is a valid request stream (the random-byte checks need it).
    ANY_BYTES = "any byte string as a valid request stream"


class InvalidRequest(ValueError):
    """The bytes sent are not a request this model knows: a fault of the client, not the server."""


@runtime_checkable
class LoadConnection(Protocol):
    """One load connection's source of requests."""

    def next_request(self, rng: random.Random, size: int) -> tuple[bytes, bytes]:
        """The next request's bytes and the exact bytes a correct server owes for it.

        Args:
            rng: The load process's random source.
            size: How large a value the request carries, in bytes.

        Returns:
            ``(request, reply)``.
        """
        ...


@runtime_checkable
class ProtocolModel(Protocol):
    """A protocol a server speaks, as the suite sees it; see the module docstring.

    ``name`` is one word (``resp``); ``capabilities`` what the model promises;
    ``lacks`` (optional) says why, for a capability it does not promise, in a
    few words (``redis closes the connection at the client's EOF``); ``skips``
    (optional) gives instead the whole reason a check that needs it is skipped
    (a model made of an oracle: ``it rests on the server's replies, and the
    discard oracle owes none``).
    """

    name: str
    capabilities: frozenset[Capability]

    def requests(
        self, *, min_size: int = 0, max_size: int = 16, max_value: int = 4096
    ) -> st.SearchStrategy[tuple[Any, ...]]:
        """Requests for one connection, as plain frozen data; they shrink toward few, small ones.

        Args:
            min_size: The fewest requests.
            max_size: The most requests.
            max_value: The largest value one request carries, in bytes.
        """
        ...

    def encode(self, requests: Sequence[Any], *, prefix: str) -> bytes:
        """The bytes of ``requests``, with every key made unique by ``prefix``.

        Args:
            requests: Requests drawn from :meth:`requests`.
            prefix: A name unique to the connection for the server's whole life
                (a reconnection is another connection): :func:`unique_prefix`.

        Raises:
            ValueError: ``prefix`` cannot be part of a key of this protocol.
        """
        ...

    def oracle(self) -> Oracle:
        """A new oracle for one connection."""
        ...

    def load_connection(self, prefix: str) -> LoadConnection:
        """A new request source for one load connection whose keys start with ``prefix``."""
        ...


def skip_reason(model: ProtocolModel, capability: Capability) -> str | None:
    """Why a check that needs ``capability`` does not apply to ``model``, or None if it does.

    Args:
        model: The model the run uses.
        capability: What the check needs.

    Returns:
        None when the model promises it; else the SKIPPED reason, as
        ``does not apply: the resp model does not promise half-close
        semantics (redis closes the connection at the client's EOF)``.
    """
    if capability in model.capabilities:
        return None
    skips: Mapping[Capability, str] = getattr(model, "skips", {})
    if capability in skips:
        return f"does not apply: {skips[capability]}"
    lacks: Mapping[Capability, str] = getattr(model, "lacks", {})
    why = lacks.get(capability)
    tail = f" ({why})" if why else ""
    return f"does not apply: the {model.name} model does not promise {capability.value}{tail}"


#: The largest value one request of :func:`request_stream` carries.
STREAM_VALUE = 256 * 1024


#: The key prefix that scenarios are drawn with (:func:`template_prefix`); the
#: scenario interpreter puts a fresh one in its place for each connection it opens.
TEMPLATE = b"000000000000-c"


def template_prefix(connection: int = 0) -> str:
    """A prefix of :func:`unique_prefix`'s shape, the same on every draw (for scenarios)."""
    return f"{TEMPLATE.decode()}{connection}"


def fresh_keys(data: bytes, fresh: bytes) -> bytes:
    """``data`` with the template prefix's 12 digits replaced by ``fresh`` (12 hex digits).

    The lengths stay the same, so a request's framing (RESP's lengths) holds.
    """
    if len(fresh) != len(TEMPLATE) - 2:
        raise ValueError("fresh keys are 12 hex digits")
    return data.replace(TEMPLATE, fresh + b"-c")


def request_stream(
    model: ProtocolModel,
    size: int,
    seed: int,
    *,
    connection: int = 0,
    prefix: str | None = None,
) -> bytes:
    """About ``size`` bytes of the model's requests for one connection, with keys of its own.

    What a check sends where it would send ``size`` random bytes: for a model
    whose every byte string is a request (echo, discard), exactly those random
    bytes (``random.Random(seed).randbytes(size)``); for the others, whole
    requests from the model's load source (values of at most
    :data:`STREAM_VALUE` bytes, so that a large stream is many requests and
    large replies) until there are ``size`` bytes or more.

    Args:
        model: The run's model.
        size: How many bytes to send, at least one request's worth.
        seed: Makes the requests (and the random bytes) the same on a replay
            (the keys differ: each call gets a prefix of its own).
        connection: The connection's number, for the keys' prefix.
        prefix: The keys' prefix; default: a new :func:`unique_prefix`.
    """
    rng = random.Random(seed)
    if Capability.ANY_BYTES in model.capabilities:
        return rng.randbytes(size)
    source = model.load_connection(prefix if prefix is not None else unique_prefix(connection))
    parts: list[bytes] = []
    total = 0
    while total < size:
        request, _ = source.next_request(rng, max(1, min(size - total, STREAM_VALUE)))
        parts.append(request)
        total += len(request)
    return b"".join(parts)


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


def unique_prefix(connection: int) -> str:
    """A key prefix for one connection that no other connection uses, in this run or another.

    Keys outlive connections on the server (a reconnection, the next run), and a
    connection's oracle models its own keys from nothing: give every connection,
    each reconnection included, a prefix of its own.

    Args:
        connection: The connection's number, to read in failure reports.

    Returns:
        ``{12 random hex digits}-c{connection}``.
    """
    return f"{uuid.uuid4().hex[:12]}-c{connection}"


def check_prefix(prefix: str, *, longest: int) -> bytes:
    """A connection's key prefix as bytes, checked to be printable ASCII without spaces.

    Args:
        prefix: The prefix.
        longest: The most bytes it may have.

    Returns:
        Its ASCII bytes.

    Raises:
        ValueError: It is empty, too long, or has a space, a control or a non-ASCII character.
    """
    if not prefix or len(prefix) > longest or not all("!" <= c <= "~" for c in prefix):
        raise ValueError(
            f"bad key prefix {prefix!r}: give 1 to {longest} printable ASCII characters, no spaces"
        )
    return prefix.encode("ascii")


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
