"""Protocol models: what a server speaks, so that checks send valid requests and judge replies.

How this works
--------------
A model (:class:`ProtocolModel`, in :mod:`conformance.protocols.base`) is a
stateless object, built without arguments, with:

- ``name`` (``resp``) and ``capabilities``, a frozenset of :class:`Capability`:
  ``REPLIES`` (the server answers), ``HALF_CLOSE`` (after the client's FIN it
  still sends all it owes, then closes), ``ANY_BYTES`` (any byte string is a
  valid request stream). :func:`skip_reason` gives a check that needs a
  capability the model lacks its SKIPPED reason;
- ``requests(*, min_size=0, max_size=16, max_value=4096)``: a Hypothesis
  strategy of one connection's requests, a tuple of plain frozen data that
  shrinks toward few requests and small values;
- ``encode(requests, *, prefix)``: their bytes, every key made unique to the
  connection by ``prefix``. Keys outlive connections, so every connection, a
  reconnection included, needs a prefix of its own (:func:`unique_prefix`);
- ``oracle()``: a new :class:`conformance.oracle.Oracle` for one connection,
  fed the bytes sent and received cut anywhere, pipelined or not. Its FAIL
  offset is the first received byte where the replies stopped being right;
- ``load_connection(prefix)``: an object whose ``next_request(rng, size)``
  gives the next request's bytes and the exact bytes a correct server owes for
  it (:class:`LoadConnection`), for the load generator: cheap, no Hypothesis.

Models are named by a string so that another process can have one:
:func:`load_model` reads ``echo``, ``discard``, ``resp``, ``memcached`` or
``package.module:Class``, and :func:`model_name` writes it. An oracle alone
(``--oracle``) is a model too (:class:`OracleModel`), named ``oracle:`` and the
oracle's own name (``oracle:discard``, ``oracle:package.module:Class``):
:func:`load_model` is the one place that imports and checks what either
option names, and :func:`run_model` the model a run's two options make.

How the rest of the suite uses one:

- a check declares the capabilities it needs (the random-byte checks
  ``ANY_BYTES``, checks of what comes back ``REPLIES``, checks of the close
  after the client's FIN ``HALF_CLOSE``) and is SKIPPED with
  ``skip_reason(model, capability)`` when that is not None. Whether the
  server owes replies at all is ``REPLIES in model.capabilities``, nowhere
  else;
- a scenario's connection draws ``model.requests()``, sends
  ``model.encode(requests, prefix=unique_prefix(i))`` cut as it likes, and
  judges with ``model.oracle()``;
- the load names the model to its processes with :func:`model_name`; each
  process calls :func:`load_model` once, ``load_connection(unique_prefix(i))``
  per connection, then for each message
  ``request, owed = conn.next_request(rng, size)``: it sends ``request`` and
  checks the bytes that come back against ``owed``, byte for byte.

A request/reply protocol's model subclasses :class:`ReplyModel` and writes
only what is its own: a :class:`ConnectionModel` (framing, state, the reply
owed), one request's strategy and bytes, and the load's next request; its
oracle (:class:`ReplyStreamOracle`) and its load (:class:`ModelLoad`) come
with it. See :mod:`conformance.protocols.replies` and
:mod:`conformance.protocols.reply_model`.
"""

from __future__ import annotations

import zlib

from conformance.errors import UsageError
from conformance.oracle import ORACLES, Oracle, OracleFactory
from conformance.protocols.base import (
    TEMPLATE,
    Capability,
    InvalidRequest,
    LoadConnection,
    ProtocolModel,
    fresh_keys,
    request_stream,
    skip_reason,
    template_prefix,
    unique_prefix,
)
from conformance.protocols.echo import DiscardModel, EchoModel, OracleModel
from conformance.protocols.memcached import MemcachedModel
from conformance.protocols.replies import (
    ConnectionModel,
    Expected,
    Match,
    ModelLoad,
    ReplyStreamOracle,
)
from conformance.protocols.reply_model import ReplyModel
from conformance.protocols.resp import RespModel
from conformance.user_code import import_named

__all__ = [
    "MODELS",
    "Capability",
    "ConnectionModel",
    "DiscardModel",
    "EchoModel",
    "Expected",
    "InvalidRequest",
    "LoadConnection",
    "Match",
    "MemcachedModel",
    "ModelLoad",
    "ORACLE",
    "OracleModel",
    "ProtocolModel",
    "ReplyModel",
    "ReplyStreamOracle",
    "RespModel",
    "load_model",
    "message_for",
    "model_name",
    "run_model",
    "TEMPLATE",
    "fresh_keys",
    "request_stream",
    "template_prefix",
    "skip_reason",
    "unique_prefix",
]


def run_model(protocol: str = "echo", oracle: str = "echo") -> ProtocolModel:
    """The one model that judges a run, from ``--protocol`` and ``--oracle``.

    A model other than echo brings its own oracle; under echo (the default)
    ``--oracle`` names the model (``echo``, ``discard``, ``package.module:Class``:
    an :class:`OracleModel`).

    Raises:
        UsageError: Either names nothing, or both are given.
    """
    model = load_model(protocol)
    if protocol == "echo":
        return _oracle_model(oracle)
    if oracle != "echo":
        raise UsageError(
            f"--protocol {protocol} judges replies with its own oracle: drop --oracle "
            f"{oracle}, or use --protocol echo"
        )
    return model


def message_for(model: ProtocolModel, data: bytes) -> bytes:
    """``data`` itself where any bytes are a request, else one short request of the model in
    its place (the same one for the same ``data``, with keys of its own)."""
    if Capability.ANY_BYTES in model.capabilities:
        return data
    return request_stream(model, len(data), zlib.crc32(data))


#: The built-in models, by name.
MODELS: dict[str, type[ProtocolModel]] = {
    "echo": EchoModel,
    "discard": DiscardModel,
    "resp": RespModel,
    "memcached": MemcachedModel,
}

_GIVE = "give echo, discard, resp, memcached or package.module:Class"
_GIVE_ORACLE = "give echo, discard or package.module:Class"
#: How a model's name says it is an oracle's (:class:`OracleModel`).
ORACLE = "oracle:"


def load_model(spec: str) -> ProtocolModel:
    """The model ``spec`` names: what ``--protocol`` names, or (``oracle:...``) ``--oracle``.

    Args:
        spec: ``echo``, ``discard``, ``resp``, ``memcached``, or
            ``package.module:Class`` (a class built without arguments, or a
            model object the module holds); or ``oracle:`` and an oracle's
            name, ``echo``, ``discard`` or ``package.module:Class`` (a class
            whose instances have an oracle's methods), whose model is
            :class:`EchoModel` for echo, else an :class:`OracleModel`.

    Returns:
        The model.

    Raises:
        UsageError: Saying what is wrong (for an oracle, as ``bad oracle ...``):
            an unknown name, a module that cannot be imported, a missing
            attribute, a constructor that fails, or an object without a
            model's (an oracle's) attributes.
    """
    known = MODELS.get(spec)
    if known is not None:
        return known()
    oracle = _oracle_named(spec)
    if oracle is not None:
        return _oracle_model(oracle)
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise UsageError(f"unknown protocol {spec!r}: {_GIVE}")
    attr, found = import_named(spec, "protocol", _GIVE)
    if isinstance(found, type):
        try:
            found = found()
        except Exception as exc:  # A user's constructor: any failure is a usage error.
            raise UsageError(
                f"bad protocol {spec!r}: {attr}() failed ({type(exc).__name__}: {exc}); "
                "a model is built without arguments"
            ) from None
    if not isinstance(found, ProtocolModel):
        raise UsageError(
            f"bad protocol {spec!r}: {attr} is not a protocol model; it needs name, "
            "capabilities, requests, encode, oracle and load_connection "
            "(see conformance.protocols)"
        )
    bad = [c for c in found.capabilities if not isinstance(c, Capability)]
    if not isinstance(found.name, str) or bad:
        raise UsageError(
            f"bad protocol {spec!r}: its name must be a string and its capabilities "
            f"members of conformance.protocols.Capability (got {found.name!r}, {bad!r})"
        )
    return found


def model_name(model: ProtocolModel) -> str:
    """The name :func:`load_model` reads back: a built-in's name, else ``module:Class``.

    An oracle's model is ``oracle:`` and the oracle's name.

    Args:
        model: A model.

    Returns:
        Its name.

    Raises:
        ValueError: Its class (its oracle's) is defined inside a function, so
            no other process can import it.
    """
    if isinstance(model, OracleModel):
        what, made = "oracle", getattr(model.factory, "__qualname__", "")
    else:
        what, made = "model", type(model).__qualname__
        for name, known in MODELS.items():
            if type(model) is known:
                return name
    if "<locals>" in made:
        raise ValueError(
            f"the {what} {made} is defined inside a function: "
            "define it at a module's top level so that other processes can import it"
        )
    if isinstance(model, OracleModel):
        return ORACLE + model.spec
    return f"{type(model).__module__}:{made}"


def _oracle_named(spec: str) -> str | None:
    """The oracle's name in a model's ``oracle:NAME``; None for a model's own name.

    ``oracle:Class`` (one colon, not a built-in oracle) stays a model's: a class
    in a user's module that is called ``oracle``.
    """
    if not spec.startswith(ORACLE):
        return None
    name = spec.removeprefix(ORACLE)
    return name if name in ORACLES or ":" in name or not name else None


def _oracle_model(spec: str) -> ProtocolModel:
    """The model of the oracle ``spec`` names (``echo``, ``discard``, ``package.module:Class``).

    Raises:
        UsageError: The module cannot be imported, the class is missing, or its
            instances lack the oracle's methods.
    """
    if spec == "echo":
        return EchoModel()
    return OracleModel(_load_oracle(spec), spec)


def _load_oracle(spec: str) -> OracleFactory:
    if spec in ORACLES:
        return ORACLES[spec]
    attr, factory = import_named(spec, "oracle", _GIVE_ORACLE)
    if not callable(factory):
        raise UsageError(f"bad oracle {spec!r}: {attr} is not a class")
    try:
        instance = factory()
    except Exception as exc:  # A user's constructor: any failure is a usage error.
        raise UsageError(f"bad oracle {spec!r}: {attr}() failed: {exc}") from None
    if not isinstance(instance, Oracle):
        raise UsageError(
            f"bad oracle {spec!r}: {attr} needs methods sent, received, finish and verdict"
        )
    result: OracleFactory = factory
    return result
