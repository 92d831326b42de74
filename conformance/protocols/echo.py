"""Echo (RFC 862) and discard (RFC 863) as protocol models, and any oracle as one.

How this works
--------------
Any byte string is a valid request stream for both, so a request is just
bytes and a stream is their concatenation (no keys, so the prefix is not
used). Their oracles are :class:`conformance.oracle.EchoOracle` and
:class:`conformance.oracle.DiscardOracle` themselves, so a model gives the
same verdicts as the oracle it wraps. The load generator's request is random
bytes, owed back whole (echo) or not at all (discard).

An oracle alone (``--oracle``) is a model too, :class:`OracleModel`: the
checks send it what they send under echo, any bytes, and it judges them. It
promises what echo promises, but replies only when its oracle owes one for a
short message: the one place where "does the server owe a reply" is asked
of an oracle. It has no load source of its own: the load sends random bytes
and judges them with its oracle (:func:`conformance.load.spec.judging`).
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from conformance.oracle import DiscardOracle, EchoOracle, Oracle, OracleFactory
from conformance.protocols.base import Capability, LoadConnection

if TYPE_CHECKING:  # Hypothesis is imported where requests are drawn, not for the load.
    from hypothesis import strategies as st

__all__ = ["DiscardModel", "EchoModel", "OracleModel"]


class _EchoLoad:
    """Random bytes, owed back whole."""

    __slots__ = ()

    def next_request(self, rng: random.Random, size: int) -> tuple[bytes, bytes]:
        data = rng.randbytes(size)
        return data, data


class _DiscardLoad:
    """Random bytes, owed nothing."""

    __slots__ = ()

    def next_request(self, rng: random.Random, size: int) -> tuple[bytes, bytes]:
        return rng.randbytes(size), b""


class _AnyBytes:
    """What echo and discard share: any bytes are requests, one payload each, no keys."""

    def requests(
        self, *, min_size: int = 0, max_size: int = 16, max_value: int = 4096
    ) -> st.SearchStrategy[tuple[bytes, ...]]:
        """Payloads, each one request; see :class:`~conformance.protocols.base.ProtocolModel`."""
        from hypothesis import strategies as st

        from conformance.payloads import payloads

        return st.lists(
            payloads(min_size=1, max_size=max(1, max_value)), min_size=min_size, max_size=max_size
        ).map(tuple)

    def encode(self, requests: Sequence[bytes], *, prefix: str) -> bytes:
        """The payloads, one after another (no keys: ``prefix`` is not used)."""
        return b"".join(requests)


class EchoModel(_AnyBytes):
    """RFC 862: every byte sent comes back, in order; after the client's FIN, then the close."""

    name = "echo"
    capabilities = frozenset({Capability.REPLIES, Capability.HALF_CLOSE, Capability.ANY_BYTES})
    lacks: Mapping[Capability, str] = {}

    def oracle(self) -> Oracle:
        """A new :class:`~conformance.oracle.EchoOracle`."""
        return EchoOracle()

    def load_connection(self, prefix: str) -> LoadConnection:
        """Random bytes of ``size``, owed back whole."""
        return _EchoLoad()


class DiscardModel(_AnyBytes):
    """RFC 863: the server reads everything, sends nothing back, closes after the client's FIN."""

    name = "discard"
    capabilities = frozenset({Capability.HALF_CLOSE, Capability.ANY_BYTES})
    lacks: Mapping[Capability, str] = {Capability.REPLIES: "a discard server sends nothing back"}

    def oracle(self) -> Oracle:
        """A new :class:`~conformance.oracle.DiscardOracle`."""
        return DiscardOracle()

    def load_connection(self, prefix: str) -> LoadConnection:
        """Random bytes of ``size``, owed nothing."""
        return _DiscardLoad()


#: What :class:`OracleModel` sends its oracle to learn whether the server answers.
_SAMPLE = b"does anything come back?\r\n"


def _owes_a_reply(factory: OracleFactory) -> bool:
    """Whether a server this oracle judges answers a short message (echo does, discard not)."""
    try:
        oracle = factory()
        oracle.sent(_SAMPLE)
        return oracle.verdict().pending
    except Exception:  # A user's oracle: the checks meet what it raises again, as ERRORs.
        return True


class OracleModel(_AnyBytes):
    """Echo's requests, any bytes, judged by an oracle (``--oracle``); see the module docstring.

    Args:
        factory: Makes one oracle per connection.
        spec: The oracle's name as ``--oracle`` takes it (``discard``,
            ``package.module:Class``); its model's name
            (:func:`conformance.protocols.model_name`) is ``oracle:`` and this.
    """

    def __init__(self, factory: OracleFactory, spec: str) -> None:
        self.factory = factory
        self.spec = spec
        self.name = spec
        promises = {Capability.HALF_CLOSE, Capability.ANY_BYTES}
        #: Why a check that needs what the model lacks is skipped (:func:`skip_reason`).
        self.skips: Mapping[Capability, str] = {}
        if _owes_a_reply(factory):
            promises.add(Capability.REPLIES)
        else:
            self.skips = {
                Capability.REPLIES: f"it rests on the server's replies, and the {spec} oracle "
                "owes none"
            }
        self.capabilities = frozenset(promises)

    def oracle(self) -> Oracle:
        """A new oracle of :attr:`factory`'s."""
        return self.factory()

    def load_connection(self, prefix: str) -> LoadConnection:
        """None: an oracle says what is right, not what to send.

        Raises:
            TypeError: Always; the load sends random bytes instead.
        """
        raise TypeError(
            f"the oracle {self.spec} has no requests of its own: the load sends random bytes"
        )
