"""The protocol model interface: what a model promises, draws, judges and loads.

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

Most models are a request/reply protocol: they subclass
:class:`~conformance.protocols.reply_model.ReplyModel`, write a
:class:`~conformance.protocols.replies.ConnectionModel`, and get their oracle
and their load from :mod:`conformance.protocols.replies`.

A model is stateless and built without arguments, so another process gets it
by name (:func:`conformance.protocols.model_name`,
:func:`conformance.protocols.load_model`).
"""

from __future__ import annotations

import enum
import random
import uuid
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from conformance.oracle import Oracle

if TYPE_CHECKING:  # Only models' requests() need Hypothesis: the load runs without it.
    from hypothesis import strategies as st

__all__ = [
    "Capability",
    "InvalidRequest",
    "LoadConnection",
    "ProtocolModel",
    "STREAM_VALUE",
    "TEMPLATE",
    "check_prefix",
    "fresh_keys",
    "request_stream",
    "skip_reason",
    "template_prefix",
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
