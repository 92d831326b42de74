"""The resp and memcached models against the real redis-server and memcached.

Each server is started on a free port by the suite's own target code (its
process group stopped by PID at the end), waited for until it accepts, under
a deadline. Requests drawn from the models are sent over plain sockets on
several connections at once, pipelined, cut at random byte boundaries, and
read in random sizes; every byte goes to the connection's oracle, which must
say PASS. Tests are skipped, saying why, where a server is not installed.
"""

from __future__ import annotations

import os
import random
import selectors
import shlex
import shutil
import socket
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conformance.oracle import Judgement, Oracle
from conformance.protocols import LoadConnection, ProtocolModel, load_model, unique_prefix
from conformance.protocols.memcached import MAX_VALUE, Get, Incr, Set, Version
from conformance.protocols.resp import Command, Key
from conformance.targets.target import Address, RunningTarget, TargetKind, TargetSpec, start_target

#: Every exchange ends within this many seconds, or the test fails saying what was owed.
DEADLINE = 60.0

_EXAMPLES = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@contextmanager
def _serving(program: str, command: str) -> Iterator[Address]:
    """Start ``command`` and wait until it accepts; stop its process group at the end."""
    if shutil.which(program) is None:
        pytest.skip(f"{program} is not installed (apt-get install {program})")
    running: RunningTarget = start_target(TargetSpec(TargetKind.SPAWN, command), start_timeout=20.0)
    try:
        yield running.address
    finally:
        running.stop()


@pytest.fixture(scope="module")
def redis() -> Iterator[Address]:
    command = "redis-server --port {port} --bind 127.0.0.1 --save '' --appendonly no"
    with _serving("redis-server", command) as address:
        yield address


@pytest.fixture(scope="module")
def memcached() -> Iterator[Address]:
    # memcached refuses to run as root unless told which user to run as.
    user = " -u root" if os.geteuid() == 0 else ""
    with _serving("memcached", "memcached -l 127.0.0.1 -p {port} -U 0" + user) as address:
        yield address


@dataclass
class _Connection:
    oracle: Oracle
    data: bytes
    sock: socket.socket
    pos: int = 0
    writes: int = 0
    reads: int = 0
    received: bytearray = field(default_factory=bytearray)
    closed: bool = False

    def done(self) -> bool:
        verdict = self.oracle.verdict()
        return self.closed or verdict.failed or (self.pos == len(self.data) and verdict.passed)


def exchange(
    address: Address,
    streams: Sequence[tuple[Oracle, bytes]],
    *,
    send_sizes: Sequence[int] = (),
    read_sizes: Sequence[int] = (65536,),
) -> list[tuple[Judgement, bytes]]:
    """Send each stream on a connection of its own, all at once, and judge what comes back.

    Args:
        address: The server.
        streams: Per connection, its oracle and the bytes to send.
        send_sizes: Sizes of successive writes, cycled (empty: as much as the socket takes).
        read_sizes: Sizes of successive reads, cycled.

    Returns:
        Per connection, the oracle's verdict (after ``finish``) and the bytes received.

    Raises:
        AssertionError: Not every connection is done within :data:`DEADLINE`.
    """
    conns = []
    with selectors.DefaultSelector() as sel:
        try:
            for oracle, data in streams:
                sock = socket.create_connection((address.host, address.port), timeout=10.0)
                sock.setblocking(False)
                conn = _Connection(oracle, data, sock)
                conns.append(conn)
                events = selectors.EVENT_READ | (selectors.EVENT_WRITE if data else 0)
                sel.register(sock, events, conn)
            deadline = time.monotonic() + DEADLINE
            while not all(c.done() for c in conns):
                left = deadline - time.monotonic()
                if left <= 0:
                    owed = [str(c.oracle.verdict()) for c in conns if not c.done()]
                    raise AssertionError(f"not done within {DEADLINE:g}s: {owed}")
                for key, events in sel.select(left):
                    conn = key.data
                    if events & selectors.EVENT_WRITE:
                        _write(conn, send_sizes, sel)
                    if events & selectors.EVENT_READ:
                        _read(conn, read_sizes, sel)
        finally:
            for conn in conns:
                conn.sock.close()
    results = []
    for conn in conns:
        conn.oracle.finish()
        results.append((conn.oracle.verdict(), bytes(conn.received)))
    return results


def _write(conn: _Connection, sizes: Sequence[int], sel: selectors.BaseSelector) -> None:
    size = sizes[conn.writes % len(sizes)] if sizes else len(conn.data)
    conn.writes += 1
    chunk = memoryview(conn.data)[conn.pos : conn.pos + size]
    try:
        n = conn.sock.send(chunk)
    except (BlockingIOError, InterruptedError):
        return
    conn.oracle.sent(bytes(chunk[:n]))  # Before any reply to these bytes is read.
    conn.pos += n
    if conn.pos == len(conn.data):
        sel.modify(conn.sock, selectors.EVENT_READ, conn)


def _read(conn: _Connection, sizes: Sequence[int], sel: selectors.BaseSelector) -> None:
    size = sizes[conn.reads % len(sizes)]
    conn.reads += 1
    try:
        data = conn.sock.recv(size)
    except (BlockingIOError, InterruptedError):
        return
    if not data:
        conn.closed = True
        sel.unregister(conn.sock)
        return
    conn.received += data
    conn.oracle.received(data)


def _check(
    address: Address,
    model: ProtocolModel,
    requests: Sequence[Sequence[object]],
    **kw: Sequence[int],
) -> None:
    streams = [
        (model.oracle(), model.encode(each, prefix=unique_prefix(i)))
        for i, each in enumerate(requests)
    ]
    for (verdict, received), (_, sent) in zip(
        exchange(address, streams, **kw), streams, strict=True
    ):
        assert verdict.passed, f"{verdict}\nsent {sent[:300]!r}\nreceived {received[:300]!r}"


_send_sizes = st.lists(st.integers(1, 4096), max_size=6)
_read_sizes = st.lists(st.sampled_from([1, 7, 64, 4096, 65536]), min_size=1, max_size=4)


# -- redis ------------------------------------------------------------------------------


@_EXAMPLES
@given(
    st.lists(load_model("resp").requests(max_size=24, max_value=2048), min_size=1, max_size=3),
    _send_sizes,
    _read_sizes,
)
def test_RespModel_judges_real_redis_pipelined_and_cut_anywhere(
    redis: Address, requests: list[tuple[Command, ...]], sends: list[int], reads: list[int]
) -> None:
    _check(redis, load_model("resp"), requests, send_sizes=sends, read_sizes=reads)


def test_RespModel_judges_real_redis_with_megabyte_values(redis: Address) -> None:
    rng = random.Random(7)
    big = rng.randbytes(3 * 1024 * 1024)
    requests = [
        (
            Command((b"SET", Key(0), big)),
            Command((b"GET", Key(0))),
            Command((b"ECHO", rng.randbytes(2 * 1024 * 1024))),
            Command((b"GET", Key(0))),
            Command((b"INCR", Key(0))),
            Command((b"FROB", b"x")),
        ),
        (Command((b"GET", Key(0))), Command((b"SET", Key(0), b"5")), Command((b"INCR", Key(0)))),
    ]
    _check(redis, load_model("resp"), requests, send_sizes=[65536, 777], read_sizes=[1024, 60000])


def test_RespModel_judges_real_redis_read_only_after_everything_was_sent(redis: Address) -> None:
    """A reader that reads nothing until it has sent 8 MiB: redis buffers the replies."""
    model = load_model("resp")
    value = random.Random(8).randbytes(1024 * 1024)
    requests = [Command((b"SET", Key(0), value))] + [Command((b"GET", Key(0)))] * 8
    oracle = model.oracle()
    data = model.encode(requests, prefix=unique_prefix(0))
    with socket.create_connection((redis.host, redis.port), timeout=DEADLINE) as sock:
        sock.sendall(data)
        oracle.sent(data)
        deadline = time.monotonic() + DEADLINE
        while oracle.verdict().pending and time.monotonic() < deadline:
            chunk = sock.recv(65536)
            if not chunk:
                break
            oracle.received(chunk)
    oracle.finish()
    assert oracle.verdict().passed, oracle.verdict()


# -- memcached ----------------------------------------------------------------------------


@_EXAMPLES
@given(
    st.lists(load_model("memcached").requests(max_size=24, max_value=2048), min_size=1, max_size=3),
    _send_sizes,
    _read_sizes,
)
def test_MemcachedModel_judges_real_memcached_pipelined_and_cut_anywhere(
    memcached: Address, requests: list[tuple[object, ...]], sends: list[int], reads: list[int]
) -> None:
    _check(memcached, load_model("memcached"), requests, send_sizes=sends, read_sizes=reads)


def test_MemcachedModel_judges_real_memcached_with_the_largest_values(memcached: Address) -> None:
    rng = random.Random(9)
    requests = [
        (
            Set(0, rng.randbytes(MAX_VALUE), 7),
            Get(0),
            Set(1, rng.randbytes(MAX_VALUE)),
            Get(1),
            Get(0),
            Version(),
        ),
        (Set(0, b"18446744073709551615"), Incr(0, 1), Get(0), Set(1, b"007"), Incr(1, 1), Get(1)),
    ]
    model = load_model("memcached")
    _check(memcached, model, requests, send_sizes=[65536, 999], read_sizes=[4096])


# -- the load generator's requests ---------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "size"), [("resp", 64), ("resp", 200_000), ("memcached", 64), ("memcached", 200_000)]
)
def test_load_connection_owes_exactly_what_the_real_server_sends(
    request: pytest.FixtureRequest, name: str, size: int
) -> None:
    address: Address = request.getfixturevalue("redis" if name == "resp" else "memcached")
    model = load_model(name)
    rng = random.Random(size)
    streams = []
    owed = []
    for i in range(3):
        load: LoadConnection = model.load_connection(unique_prefix(i))
        pairs = [load.next_request(rng, size) for _ in range(100 if size < 1000 else 10)]
        streams.append((model.oracle(), b"".join(p[0] for p in pairs)))
        owed.append(b"".join(p[1] for p in pairs))
    results = exchange(address, streams, send_sizes=[1500], read_sizes=[65536])
    for (verdict, received), expected in zip(results, owed, strict=True):
        assert verdict.passed, verdict
        assert received == expected


# -- echo and discard, against the project's own reference server -------------------------


@pytest.mark.parametrize("name", ["echo", "discard"])
def test_echo_and_discard_models_judge_the_reference_server(name: str) -> None:
    command = f"{shlex.quote(sys.executable)} -m reference single --handler {name} --port {{port}}"
    model = load_model(name)
    rng = random.Random(3)
    requests = [tuple(rng.randbytes(n) for n in (1, 4096, 300_000)) for _ in range(2)]
    with _serving(sys.executable, command) as address:
        _check(address, model, requests, send_sizes=[1000, 65536], read_sizes=[7, 65536])
