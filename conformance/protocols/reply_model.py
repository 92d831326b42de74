"""The model of a request/reply protocol, written once: each protocol adds only its own parts.

How this works
--------------
RESP, memcached and a user's line protocol are models of one shape: their
requests are a Hypothesis strategy of plain frozen data, their bytes name keys
``{prefix}:k{n}`` that are the connection's own (:func:`key_bytes`), their
oracle is a :class:`~conformance.protocols.replies.ReplyStreamOracle` over a
new :class:`~conformance.protocols.replies.ConnectionModel`, and their load a
:class:`~conformance.protocols.replies.ModelLoad` over another.
:class:`ReplyModel` is that shape; a model subclasses it and writes only what
is its protocol's own:

- ``name``, ``capabilities`` (``REPLIES`` unless it says more) and ``lacks``
  (why not the rest); ``largest_value`` where its values are bounded;
- ``connection()``: a new connection model (the framing of its requests, its
  state, the reply each request is owed);
- ``request(max_value)``: a strategy of one request;
- ``encode_request(request, prefix)``: that request's bytes;
- ``load_request(rng, size, prefix)``: the load generator's next request, as
  :data:`~conformance.protocols.replies.RequestMaker` says.

It is the :class:`~conformance.protocols.base.ProtocolModel` every other part
of the suite sees: ``requests``, ``encode``, ``oracle`` and ``load_connection``
are here, the same for every such model.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from conformance.oracle import Oracle
from conformance.protocols.base import Capability, LoadConnection, check_prefix
from conformance.protocols.replies import ConnectionModel, ModelLoad, ReplyStreamOracle

if TYPE_CHECKING:  # Hypothesis is imported where requests are drawn, not for the load.
    from hypothesis import strategies as st

__all__ = ["KEYS", "LONGEST_PREFIX", "ReplyModel", "key_bytes"]

#: Keys per connection: few, so that requests meet the same keys.
KEYS = 4
#: The longest key prefix a model takes, in bytes.
LONGEST_PREFIX = 200

R = TypeVar("R")


def key_bytes(prefix: bytes, n: int) -> bytes:
    """The bytes of key number ``n`` of the connection with this prefix: ``{prefix}:k{n}``."""
    return b"%s:k%d" % (prefix, n)


class ReplyModel(ABC, Generic[R]):
    """A request/reply protocol's model, requests of type ``R``; see the module docstring."""

    name: str
    capabilities: frozenset[Capability] = frozenset({Capability.REPLIES})
    #: The largest value one request may carry, in bytes; None: no bound of the protocol's.
    largest_value: int | None = None

    # -- what each protocol writes ------------------------------------------------

    @abstractmethod
    def connection(self) -> ConnectionModel:
        """A new model of the server as one connection sees it."""

    @abstractmethod
    def request(self, max_value: int) -> st.SearchStrategy[R]:
        """One request, carrying values of at most ``max_value`` bytes."""

    @abstractmethod
    def encode_request(self, request: R, prefix: bytes) -> bytes:
        """The bytes of ``request``, its keys made with :func:`key_bytes` and ``prefix``."""

    @abstractmethod
    def load_request(
        self, rng: random.Random, size: int, prefix: bytes
    ) -> bytes | tuple[Any, bytes]:
        """The load's next request, carrying ``size`` bytes; see ``RequestMaker``."""

    # -- the ProtocolModel, the same for every one ----------------------------------

    def requests(
        self, *, min_size: int = 0, max_size: int = 16, max_value: int = 4096
    ) -> st.SearchStrategy[tuple[R, ...]]:
        """Requests for one connection; see :class:`conformance.protocols.base.ProtocolModel`.

        Raises:
            ValueError: ``max_value`` is over :attr:`largest_value`.
        """
        if self.largest_value is not None and max_value > self.largest_value:
            raise ValueError(
                f"{self.name} values are at most {self.largest_value} bytes, not {max_value}"
            )
        from hypothesis import strategies as st

        return st.lists(self.request(max_value), min_size=min_size, max_size=max_size).map(tuple)

    def encode(self, requests: Sequence[R], *, prefix: str) -> bytes:
        """The requests' bytes, keys as ``{prefix}:k{n}``.

        Raises:
            ValueError: ``prefix`` is not 1 to 200 printable ASCII characters without spaces.
        """
        raw = check_prefix(prefix, longest=LONGEST_PREFIX)
        return b"".join(self.encode_request(request, raw) for request in requests)

    def oracle(self) -> Oracle:
        """A new oracle for one connection."""
        return ReplyStreamOracle(self.connection())

    def load_connection(self, prefix: str) -> LoadConnection:
        """A new request source for one load connection whose keys start with ``prefix``.

        Raises:
            ValueError: A bad prefix, as for :meth:`encode`.
        """
        return ModelLoad(
            self.connection(), self.load_request, check_prefix(prefix, longest=LONGEST_PREFIX)
        )
