"""Hypothesis strategies for scenarios (plural nouns, keyword-only bounds).

They shrink bottom-up: a failing scenario shrinks toward fewer connections,
fewer steps, smaller payloads (a large payload is drawn as a size and a seed,
so its size shrinks directly) and fewer, larger writes (an empty chunking is
one write).

Their sizes come from a :class:`~conformance.run.profiles.Limits` (each profile
of :mod:`conformance.run.profiles` has one).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hypothesis import strategies as st

from conformance.payloads import payloads, seeded
from conformance.run.profiles import Limits

if TYPE_CHECKING:
    from conformance.protocols import ProtocolModel
from conformance.properties.scenario import (
    HalfClose,
    Pause,
    Read,
    Reconnect,
    Reset,
    Scenario,
    Script,
    Send,
    Step,
    StopReading,
)

__all__ = [
    "backpressure_scenarios",
    "chunkings",
    "concurrent_scenarios",
    "payloads",
    "requests",
    "scenarios",
    "scripts",
    "sends",
]


def _request_bulk(model: ProtocolModel, size_and_seed: tuple[int, int]) -> bytes:
    from conformance.protocols import request_stream, template_prefix

    size, seed = size_and_seed
    return request_stream(model, size, seed, prefix=template_prefix())


def chunkings(*, max_chunk: int = 4096, max_writes: int = 8) -> st.SearchStrategy[tuple[int, ...]]:
    """Sizes of successive writes (cycled); the empty tuple is one write of everything."""
    return st.lists(st.integers(1, max_chunk), max_size=max_writes).map(tuple)


#: At most this many writes per send: a large payload in 1-byte writes would
#: measure the client's speed, not the server's behaviour.
MAX_WRITES = 512


def _send(data: bytes, chunks: tuple[int, ...]) -> Send:
    floor = -(-len(data) // MAX_WRITES)
    return Send(data, tuple(max(c, floor) for c in chunks))


def _speaks(model: ProtocolModel | None) -> ProtocolModel | None:
    """``model`` when its requests are what a scenario sends; None when any bytes are."""
    from conformance.protocols import Capability

    if model is None or Capability.ANY_BYTES in model.capabilities:
        return None
    return model


def requests(
    model: ProtocolModel, *, min_size: int = 1, max_size: int = 4, max_value: int = 4096
) -> st.SearchStrategy[bytes]:
    """Whole requests of ``model``, encoded with the template key prefix.

    The scenario interpreter gives each connection fresh keys in its place
    (:func:`~conformance.protocols.fresh_keys`), so that no two connections, nor
    two runs of one example, share a key on the server.
    """
    from conformance.protocols import template_prefix

    prefix = template_prefix()
    return model.requests(min_size=min_size, max_size=max_size, max_value=max_value).map(
        lambda reqs: model.encode(reqs, prefix=prefix)
    )


def sends(
    *, max_payload: int = 4096, model: ProtocolModel | None = None
) -> st.SearchStrategy[Send]:
    """A send of one payload in some chunking (at most :data:`MAX_WRITES` writes).

    Under a protocol model (``model``, one that does not take any bytes) the
    payload is one to four of its requests, values up to ``max_payload``.
    """
    speaks = _speaks(model)
    data = (
        payloads(max_size=max_payload)
        if speaks is None
        else requests(speaks, max_value=max_payload)
    )
    return st.builds(_send, data, chunkings())


def _middle_steps(limits: Limits, model: ProtocolModel | None = None) -> st.SearchStrategy[Step]:
    return st.one_of(
        sends(max_payload=limits.max_payload, model=model),
        st.integers(0, 30).map(lambda ms: Pause(ms / 1000)),
        st.sampled_from([1, 7, 64, 1024, 65536]).map(Read),
        st.integers(10, 300).map(lambda ms: StopReading(ms / 1000)),
        st.just(Reconnect()),
    )


def scripts(
    *,
    limits: Limits,
    half_close: bool = False,
    reset: bool = False,
    model: ProtocolModel | None = None,
) -> st.SearchStrategy[Script]:
    """What one connection does; it may end in a half-close or a reset when allowed."""
    endings: list[tuple[Step, ...]] = [()]
    if half_close:
        endings.append((HalfClose(),))
    if reset:
        endings.append((Reset(),))
    return st.builds(
        lambda middle, end, rcvbuf: Script(tuple(middle) + end, rcvbuf),
        st.lists(_middle_steps(limits, model), max_size=limits.max_steps),
        st.sampled_from(endings),
        st.sampled_from([None, 4096]),
    )


def scenarios(
    *,
    limits: Limits,
    half_close: bool = False,
    reset: bool = False,
    model: ProtocolModel | None = None,
) -> st.SearchStrategy[Scenario]:
    """Scenarios of 1 to ``limits.max_connections`` connections at once."""
    return (
        st.lists(
            scripts(limits=limits, half_close=half_close, reset=reset, model=model),
            min_size=1,
            max_size=limits.max_connections,
        )
        .map(tuple)
        .map(Scenario)
    )


def concurrent_scenarios(
    *, limits: Limits, model: ProtocolModel | None = None
) -> st.SearchStrategy[Scenario]:
    """Several connections at once, each sending bursts in many small writes, no pauses.

    Data is in flight both ways on every connection at once, and one send
    reaches the server as several readiness events: the scenarios that break a
    server that hands two chunks of one connection to two workers.
    """
    speaks = _speaks(model)
    burst = st.builds(
        _send,
        payloads(min_size=64, max_size=max(64, limits.max_payload))
        if speaks is None
        else requests(speaks, max_size=8, max_value=max(64, limits.max_payload)),
        st.lists(st.integers(1, 512), min_size=1, max_size=8).map(tuple),
    )
    script = st.lists(burst, min_size=1, max_size=limits.max_steps).map(
        lambda steps: Script(tuple(steps))
    )
    return st.lists(script, min_size=2, max_size=max(2, limits.max_connections)).map(
        lambda scripts: Scenario(tuple(scripts))
    )


def backpressure_scenarios(
    *,
    min_bulk: int = 4 * 1024 * 1024,
    max_bulk: int = 8 * 1024 * 1024,
    model: ProtocolModel | None = None,
) -> st.SearchStrategy[Scenario]:
    """A client with a tiny window stops reading while it sends more than socket buffers hold.

    The server's ``send`` must return short (Linux grows a loopback send buffer
    to about 4 MiB), so a server that ignores a short send loses bytes here.
    """
    speaks = _speaks(model)
    bulk = st.tuples(st.integers(min_bulk, max_bulk), st.integers(0, 2**16)).map(
        seeded if speaks is None else lambda pair: _request_bulk(speaks, pair)
    )
    script = st.builds(
        lambda stop, data, chunks, read: Script(
            (StopReading(stop / 1000), Send(data, chunks), Read(read)), rcvbuf=4096
        ),
        st.integers(100, 400),
        bulk,
        st.lists(st.integers(1024, 262144), max_size=3).map(tuple),
        st.sampled_from([4096, 65536]),
    )
    return st.lists(script, min_size=1, max_size=2).map(lambda s: Scenario(tuple(s)))
