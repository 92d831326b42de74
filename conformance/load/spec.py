"""What load to put on a server: the faults to inject and the load's settings.

How this works
--------------
Plain data, checked once: :meth:`Faults.parse` reads the ``--faults`` text,
:meth:`LoadSpec.validate` names the first setting out of range. Nothing here
touches a socket; the driver (:mod:`conformance.load.driver`) reads a spec and
the processes (:mod:`conformance.load.processes`) hand it to each load process.

Replies are judged by the protocol model ``model`` names (``echo``, the
default, as :func:`~conformance.protocols.load_model` reads it): a name, so
that every load process, and every host, makes its own from it. A model with
requests of its own (``resp``, ``memcached``; see :mod:`conformance.protocols`)
has each connection send them, and checks the replies against the exact
bytes the model owes for each (``next_request``), byte for byte; keys are
unique to the connection. A model whose every byte string is a request (echo,
discard, and an oracle's, ``oracle:package.module:Class`` for ``--oracle``)
has random bytes sent, judged by its oracle; :func:`judging` says how, once
per process:

- ``ECHO``: the built-in echo oracle; what a message is owed is the message
  itself, compared with what comes back byte for byte (the fast path);
- ``REPLY``: an oracle with its own ``expected_reply``
  (:class:`~conformance.oracle.ReplyOracle`) says what each message is owed;
  the generator compares what comes back with that, byte for byte, and keeps
  no more than the bytes still owed (discard owes nothing);
- ``VERDICT``: any other oracle, asked as the harness asks it: each
  connection's oracle is told every message sent and every read received,
  and its verdict says whether the reply is right (FAIL, with its offset),
  still owed (PENDING) or complete (PASS: the next round starts). The
  generator cannot tell how many bytes are owed, so stream mode, which keeps
  a window of them in flight, needs ``REPLY`` (:meth:`LoadSpec.validate`).
  An oracle whose verdict stays PENDING after a reply came, and turns PASS
  only once told the exchange is over, cannot judge a stream as it comes:
  the run says so (``LoadResult.unjudged``) rather than blame the server.

A user's oracle is guarded (:func:`~conformance.oracle.guarded`): what it
raises ends the run with ``LoadResult.oracle_error``, never a verdict on the
server. Half-close faults need a model that promises half-close semantics.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from typing import Any, Literal

from conformance.oracle import DiscardOracle, EchoOracle, OracleFactory, ReplyOracle, guarded
from conformance.protocols import Capability, ProtocolModel, load_model, skip_reason
from conformance.tls import TlsSettings

__all__ = ["Fault", "Faults", "Judging", "LoadError", "LoadSpec", "Mode", "judging"]

Mode = Literal["pingpong", "stream"]

#: Largest ping-pong message: each connection holds one, and the generator what comes back.
MAX_SIZE = 16 << 20
#: Largest stream window: bytes in flight per connection.
MAX_WINDOW = 64 << 20


class Fault(enum.Enum):
    """A fault, by the name ``--faults`` gives it and the result counts it under."""

    RESET = "reset"
    HALF_CLOSE = "half-close"
    SLOW_READER = "slow-reader"
    CONNECT_STORM = "connect-storm"


#: The fields of :class:`Faults`, one per fault.
_FAULT_NAMES = frozenset(fault.value.replace("-", "_") for fault in Fault)


class LoadError(Exception):
    """The load could not run at all (a load process failed to start or answer)."""


@dataclass(frozen=True)
class Faults:
    """Faults to inject while the load runs."""

    reset: float = 0.0  # probability, after each round trip
    half_close: float = 0.0
    slow_reader: float = 0.0
    connect_storm: int = 0  # extra connections opened and closed at once, in all

    @property
    def any(self) -> bool:
        return bool(self.reset or self.half_close or self.slow_reader or self.connect_storm)

    @classmethod
    def parse(cls, text: str) -> Faults:
        """Parse ``reset=1%,half-close=0.5%,slow-reader=1%,connect-storm=500``.

        Args:
            text: Comma-separated ``name=value`` parts; empty means no faults.

        Returns:
            The faults, each probability as a fraction of 1.

        Raises:
            ValueError: Saying which part is wrong and what is expected.
        """
        values: dict[str, Any] = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            name, sep, raw = part.partition("=")
            key = name.strip().replace("-", "_")
            if not sep or key not in _FAULT_NAMES:
                raise ValueError(
                    f"unknown fault {part!r}: expected reset=P%, half-close=P%, "
                    "slow-reader=P% or connect-storm=N"
                )
            raw = raw.strip()
            if key == "connect_storm":
                if not raw.isdigit():
                    raise ValueError(f"connect-storm needs a count of connections, got {raw!r}")
                values[key] = int(raw)
                continue
            try:
                number = float(raw[:-1]) / 100.0 if raw.endswith("%") else float(raw)
            except ValueError:
                raise ValueError(f"{name} needs a percentage like 1%, got {raw!r}") from None
            if not 0.0 <= number <= 1.0:
                raise ValueError(f"{name} must be between 0% and 100%, got {raw!r}")
            values[key] = number
        faults = cls(**values)
        if faults.reset + faults.half_close + faults.slow_reader > 1.0:
            raise ValueError("the fault probabilities add up to more than 100%")
        return faults


@dataclass(frozen=True)
class LoadSpec:
    """What load to put on which server.

    ``duration`` bounds the run in seconds; ``rounds`` (ping-pong only) stops
    each connection after that many round trips instead, with ``duration``
    then as the upper bound. ``model`` names the protocol model that judges
    each connection (see the module docstring); a user's model or oracle must
    be importable in every load process and on every host.

    ``connect_timeout`` is one deadline for the whole set of connections
    (each load process's share), not one per connection: connects never wait
    on the server, and those not accepted within it are one ``connect`` error
    that counts them. A connection opened during the run (a replacement, a
    connect-storm one) has the same time on its own, and the final liveness
    probe at most that (5 s when it is longer). ``drain_timeout`` bounds the
    wait for what is owed once the time is up, and a stalled connection's
    silence. ``stop_on_error`` ends the run at its first error, a failed or
    late connect included.

    ``tls``: each connection speaks TLS with these settings (None: plain TCP).
    It is plain data: every load process, and every host, makes its one
    context from it (:func:`~conformance.tls.client_context`). A connection
    counts as connected once its handshake is done, under the same deadline
    as its connect.
    """

    host: str
    port: int
    connections: int = 50
    size: int = 64
    mode: Mode = "pingpong"
    window: int = 64 * 1024
    duration: float = 5.0
    rounds: int | None = None
    procs: int = 1
    faults: Faults = field(default_factory=Faults)
    seed: int = 1
    connect_timeout: float = 10.0
    drain_timeout: float = 10.0
    stop_on_error: bool = False
    model: str = "echo"
    tls: TlsSettings | None = None

    def validate(self) -> None:
        """Check every setting.

        Raises:
            ValueError: Naming the first setting out of range.
            UsageError: ``model`` names nothing that can be loaded here.
        """
        if not 1 <= self.connections <= 100_000:
            raise ValueError(f"connections must be between 1 and 100000, got {self.connections}")
        if not 1 <= self.size <= MAX_SIZE:
            raise ValueError(f"size must be between 1 and {MAX_SIZE} bytes, got {self.size}")
        if not 1 <= self.window <= MAX_WINDOW:
            raise ValueError(f"window must be between 1 and {MAX_WINDOW} bytes, got {self.window}")
        if not (math.isfinite(self.duration) and self.duration > 0):
            raise ValueError(f"duration must be a positive number of seconds, got {self.duration}")
        if self.rounds is not None and self.rounds < 1:
            raise ValueError(f"rounds must be at least 1, got {self.rounds}")
        if not 1 <= self.procs <= 256:
            raise ValueError(f"procs must be between 1 and 256, got {self.procs}")
        if self.procs > self.connections:
            raise ValueError(f"procs ({self.procs}) cannot exceed connections")
        if self.tls is not None and not isinstance(self.tls, TlsSettings):
            raise ValueError(f"tls must be TlsSettings or None, got {self.tls!r}")
        if self.mode not in ("pingpong", "stream"):
            raise ValueError(f"mode must be pingpong or stream, got {self.mode!r}")
        model = self.protocol()
        if Capability.ANY_BYTES in model.capabilities:
            _, how = judging(model)
            if how is Judging.VERDICT and self.mode == "stream":
                raise ValueError(
                    f"stream mode keeps a window of bytes in flight, which needs to know how "
                    f"many bytes each message is owed: the oracle {model.name} has no "
                    "expected_reply(data) to say so; use pingpong mode"
                )
        why = skip_reason(model, Capability.HALF_CLOSE)
        if self.faults.half_close > 0 and why is not None:
            raise ValueError(
                "half-close faults judge what is owed after the client's FIN, but "
                + why.removeprefix("does not apply: ")
            )

    def protocol(self) -> ProtocolModel:
        """The protocol model ``model`` names, made here.

        Raises:
            UsageError: ``model`` names no model.
        """
        return load_model(self.model)


class Judging(enum.Enum):
    """How a load connection's replies are judged (see the module docstring)."""

    ECHO = "echo"
    REPLY = "reply"
    VERDICT = "verdict"


#: The built-ins' ``expected_reply``: a user's subclass that inherits one has
#: not said what its own oracle owes.
_BUILT_IN_REPLIES = (EchoOracle.expected_reply, DiscardOracle.expected_reply)


def judging(model: ProtocolModel) -> tuple[OracleFactory, Judging]:
    """The oracle of ``model``, guarded, and how the load judges random bytes with it.

    Args:
        model: A model whose every byte string is a request (echo, discard, an oracle's).

    Returns:
        A factory of one (guarded) oracle per connection, and how replies
        are judged: ``ECHO`` for the built-in echo oracle, ``REPLY`` for an
        oracle that defines ``expected_reply`` (or the built-in discard),
        else ``VERDICT``.
    """
    sample = model.oracle()
    if type(sample) is EchoOracle:
        return EchoOracle, Judging.ECHO
    if type(sample) is DiscardOracle:
        return DiscardOracle, Judging.REPLY
    factory = guarded(model.oracle, model.name)
    if isinstance(sample, ReplyOracle) and type(sample).expected_reply not in _BUILT_IN_REPLIES:
        return factory, Judging.REPLY
    return factory, Judging.VERDICT
