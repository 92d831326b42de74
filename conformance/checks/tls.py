"""The TLS checks: what only a server that speaks TLS can get wrong.

How this works
--------------
Every other check runs over TLS as it runs over TCP (the stream under each
connection, :mod:`conformance.streams`, is the only part that knows). These
few test the server's TLS layer itself, so they drive the client's TLS
through the stream's own primitives: records written one by one and sent in
one TCP segment (:meth:`~conformance.streams.TlsStream.send_records`), a
handshake or records cut into one-byte TCP segments (``trickle``), a
ClientHello cut short, bytes that are not TLS at all, a reset mid-handshake.

They run only when the run speaks TLS (``--tls``): otherwise each is
SKIPPED with the reason ("needs --tls"), never PASS, and none is a *fault*
check (whose liveness step would still run): TLS-STORM-1 checks liveness
itself. The CPU and descriptor readings come from ``/proc`` as in
:mod:`conformance.checks.resources`; a check that cannot see the server's
process is SKIPPED for that part.

Facts about TLS servers these rest on:

- ``SSLObject.read`` (OpenSSL's ``SSL_read``) returns one record's plaintext
  at most: a server that reads once per readiness event keeps the other
  records of a segment, already received, until the client sends again.
- A memory-BIO server sends ciphertext it made already: what ``send`` did
  not take must be sent later, byte for byte (TLS's WANT_WRITE); a record
  cut short leaves every later one unreadable (its MAC, its header).
- A handshake waits for the client; run blocking in a reactor's only thread,
  it stops every other connection until the client speaks.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Awaitable, Callable

import trio

from conformance.checks.base import KIB, MIB, Check, CheckBody, Level, liveness
from conformance.checks.core import open_descriptors
from conformance.checks.resources import (
    CPU_PATIENCE,
    IDLE_SHARE,
    WINDOW,
    cpu_seconds,
    require_processes,
    server_processes,
)
from conformance.harness import CheckFailure, Connection, Event, Harness
from conformance.streams import TlsStream
from conformance.tls import TlsRecordError

__all__ = ["TLS_CHECKS", "TLS_CATEGORY"]

#: The category of the checks that only TLS needs; they run with ``--tls``, and only then.
TLS_CATEGORY = "tls"

RFC8446_RECORDS = "RFC 8446 §5.1 (record layer)"
RFC8446_HANDSHAKE = "RFC 8446 §4 (handshake protocol)"
RFC8446_ERRORS = "RFC 8446 §6.2 (error alerts)"
RFC8446_CLOSE = "RFC 8446 §6.1 (closure alerts)"

#: How many records TLS-RECORDS-1 sends in one TCP segment, of 1 to 20 bytes each.
RECORDS = 200
#: Seconds between the one-byte segments of a trickled handshake, and of trickled records.
HANDSHAKE_PACE = 0.004
RECORD_PACE = 0.001
#: Seconds a bystander's round trip may take while others misbehave.
ROUND_TRIP = 1.0
#: Connections that hold a handshake open: with no ClientHello, with half of one.
SILENT, HALF_HELLO = 3, 2


def needs_tls(body: CheckBody) -> CheckBody:
    """``body``, run only when the run speaks TLS; otherwise not measured, with the reason."""

    @functools.wraps(body)
    async def run(h: Harness) -> None:
        if h.tls is None:
            h.not_measured(
                "needs --tls: it tests the server's TLS layer, and this run speaks plain TCP"
            )
            return
        await body(h)

    return run


def _stream(conn: Connection) -> TlsStream:
    assert isinstance(conn.stream, TlsStream), "only over TLS (needs_tls)"
    return conn.stream


def _blame(exc: CheckFailure, prefix: str) -> CheckFailure:
    """``exc`` again (same kind), its message prefixed with what it means here."""
    return type(exc)(
        f"{prefix}: {exc.message}",
        step=exc.step,
        transcript=exc.transcript,
        verdict=exc.verdict,
        rule=exc.rule,
    )


def _tls_failure(exc: BaseException) -> TlsRecordError | None:
    """The first TLS record error in ``exc`` (a reader task's, inside an exception group)."""
    if isinstance(exc, TlsRecordError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            if (found := _tls_failure(inner)) is not None:
                return found
    return None


async def send_tls(
    h: Harness,
    conn: Connection,
    data: bytes,
    how: Callable[[TlsStream], Awaitable[None]],
    *,
    step: str,
    timeout: float | None = None,
) -> None:
    """Send ``data`` as ``how`` cuts it, as one step; the oracle learns of it after.

    Nothing is read on ``conn`` meanwhile, so telling the oracle after cannot
    miss an early reply.
    """
    with h.step(step, conn, timeout):
        try:
            await how(_stream(conn))
        except OSError as exc:
            raise CheckFailure(
                f"the server reset connection {conn.name} while it was sending "
                f"({exc.strerror or exc})",
                step=step,
                transcript=conn.transcript,
            ) from None
    conn.oracle.sent(data)
    conn.transcript.sent += data
    conn.transcript.events.append(Event(h.elapsed(), "send", len(data)))
    conn.progressed()


async def round_trip(h: Harness, conn: Connection, i: int, meanwhile: str) -> None:
    """One short message and its reply on ``conn`` within :data:`ROUND_TRIP` seconds."""
    try:
        await conn.send(h.message(b"are you there %d?\n" % i), timeout=ROUND_TRIP)
        await conn.settle(step=f"round trip {i} on {conn.name}", timeout=ROUND_TRIP)
    except CheckFailure as exc:
        raise _blame(exc, f"{conn.name} was not served while {meanwhile}") from None


# -- records -------------------------------------------------------------------


async def many_records_one_segment(h: Harness) -> None:
    conn = await h.connect("c1")
    rng = random.Random(41)
    sizes = [rng.randint(1, 20) for _ in range(RECORDS)]
    data = h.payload(sum(sizes), 41)
    pieces, start = [], 0
    for size in sizes[:-1]:
        pieces.append(data[start : start + size])
        start += size
    pieces.append(data[start:])  # A model's payload may be a little longer.
    await send_tls(
        h, conn, data, lambda s: s.send_records(pieces),
        step=f"send {RECORDS} records of 1..20 bytes in one TCP segment",
    )  # fmt: skip
    try:
        await conn.settle(step=f"read the reply to {RECORDS} records")
    except TlsRecordError:
        raise
    except CheckFailure as exc:
        if not exc.liveness:
            raise
        got = len(conn.transcript.received)
        raise _blame(
            exc,
            f"{got} of {len(data)} bytes came back, then nothing: the {RECORDS} records came "
            "in one TCP segment, so the server holds records it already received (one "
            "record decrypted per readiness event waits for an event that never comes)",
        ) from None


async def trickled(h: Harness) -> None:
    bystander = await h.connect("bystander")
    await round_trip(h, bystander, 0, "nothing else happened")
    conn = await h.connect("c1", handshake=False)
    doing = ["c1 trickled its handshake one byte per TCP segment"]

    async def keep_asking(cancel: trio.CancelScope) -> None:
        with cancel:
            for i in range(1, 10_000):
                await round_trip(h, bystander, i, doing[0])
                await trio.sleep(0.05)

    data = h.payload(600, 42)
    async with trio.open_nursery() as nursery:
        asking = trio.CancelScope()
        nursery.start_soon(keep_asking, asking)
        await h.handshake(conn, trickle=HANDSHAKE_PACE, timeout=15.0)
        doing[0] = "c1 trickled its records one byte per TCP segment"
        await send_tls(
            h, conn, data, lambda s: s.send_trickled(data, record=50, pause=RECORD_PACE),
            step=f"send {len(data)} bytes in records of 50, one byte per TCP segment",
            timeout=15.0,
        )  # fmt: skip
        await conn.settle(step="read the reply to the trickled records")
        asking.cancel()


# -- handshakes that do not finish -----------------------------------------------


async def _hold_handshakes(h: Harness) -> list[Connection]:
    """:data:`SILENT` connections with no ClientHello, :data:`HALF_HELLO` with half of one."""
    held = [await h.connect(f"silent{i}", handshake=False) for i in range(SILENT)]
    for i in range(HALF_HELLO):
        conn = await h.connect(f"half{i}", handshake=False)
        with h.step(f"send half a ClientHello on {conn.name}", conn):
            await _stream(conn).send_client_hello(upto=60)
        held.append(conn)
    return held


async def unfinished_handshakes_do_not_block(h: Harness) -> None:
    bystander = await h.connect("bystander")
    await round_trip(h, bystander, 0, "nothing else happened")
    await _hold_handshakes(h)
    meanwhile = f"{SILENT} clients sent no ClientHello and {HALF_HELLO} half of one"
    for i in range(1, 6):
        await round_trip(h, bystander, i, meanwhile)
    for i in range(3):
        try:
            late = await h.connect(f"late{i}", timeout=2.0)
        except CheckFailure as exc:
            raise _blame(exc, f"late{i} was not served while {meanwhile}") from None
        await round_trip(h, late, 0, meanwhile)


async def idle_while_handshakes_wait(h: Harness) -> None:
    bystander = await h.connect("bystander")
    await round_trip(h, bystander, 0, "nothing else happened")
    pids = server_processes(h, bystander)
    held = await _hold_handshakes(h)
    if not require_processes(h, pids, "its CPU while handshakes wait"):
        return
    shares: list[float] = []
    with h.step(f"watch the server's CPU (processes {sorted(pids)})", timeout=CPU_PATIENCE + 5):
        start = trio.current_time()
        while trio.current_time() - start < CPU_PATIENCE:
            before, t0 = _cpu(pids), trio.current_time()
            await trio.sleep(WINDOW)  # The measuring window itself, not a wait for an event.
            shares.append((_cpu(pids) - before) / (trio.current_time() - t0))
            if shares[-1] < IDLE_SHARE:
                return
    raise CheckFailure(
        f"the server kept busy while {len(held)} clients held an unfinished handshake "
        f"({SILENT} with no ClientHello, {HALF_HELLO} with half of one): in each of "
        f"{len(shares)} windows of {WINDOW:g}s over {CPU_PATIENCE:g}s it used at least "
        f"{min(shares):.0%} of a core (most {max(shares):.0%}); a server waiting for its "
        "clients uses ~0% (a handshake retried on every event, or a socket watched for "
        "writing while TLS waits to read)",
        step="watch the server's CPU while handshakes wait",
        transcript=held[0].transcript,
    )


def _cpu(pids: set[int]) -> float:
    return sum(cpu_seconds(pid) or 0.0 for pid in pids)


# -- failed handshakes -----------------------------------------------------------


def client_hello_sslv3() -> bytes:
    """A ClientHello that offers SSL 3.0 alone (no supported_versions): a version to refuse."""
    body = b"\x03\x00" + bytes(32) + b"\x00" + b"\x00\x02\x00\x2f" + b"\x01\x00"
    handshake = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x00" + len(handshake).to_bytes(2, "big") + handshake


#: How each connection of the storm fails its handshake, in turn.
FAILURES = (
    "an HTTP request instead of a ClientHello",
    "a TLS record header followed by junk",
    "a ClientHello offering SSL 3.0 alone",
    "a reset once the server answered the ClientHello",
    "half a ClientHello, then FIN",
)
STORM = 400


async def _fail_handshake(h: Harness, conn: Connection, kind: int) -> None:
    stream = _stream(conn)
    if kind == 0:
        await stream.send_plain(b"GET / HTTP/1.0\r\n\r\n")
    elif kind == 1:
        await stream.send_plain(b"\x16\x03\x01\x00\x05hello")
    elif kind == 2:
        await stream.send_plain(client_hello_sslv3())
    elif kind == 3:
        await stream.send_client_hello()
    else:
        await stream.send_client_hello(upto=40)
    if kind in (2, 3):
        with trio.move_on_after(2.0):
            await stream.wait_answer()


async def failed_handshake_storm(h: Harness) -> None:
    pids = server_processes(h)
    before = open_descriptors(pids)
    if before is None:
        require_processes(h, set(), "its descriptors")
    limiter = trio.CapacityLimiter(32)
    failures: list[CheckFailure] = []

    async def one(i: int) -> None:
        async with limiter:
            try:
                conn = await h.connect(f"storm{i}", record=False, handshake=False, timeout=10.0)
            except CheckFailure as exc:
                failures.append(exc)
                return
            kind = i % len(FAILURES)
            try:
                await _fail_handshake(h, conn, kind)
            except OSError:
                pass  # The server reset it first: that is its answer.
            finally:
                if kind == 3:
                    conn.reset()
                else:
                    conn.close()
                h.connections.remove(conn)

    with h.step(f"{STORM} failed handshakes, 32 at a time", timeout=40.0):
        async with trio.open_nursery() as nursery:
            for i in range(STORM):
                nursery.start_soon(one, i)
    if failures:
        raise _blame(failures[0], f"{len(failures)} of {STORM} connections failed to connect")
    now = open_descriptors(pids)
    with trio.move_on_after(5.0):
        while before is not None and now is not None and now > before + 32:
            await trio.sleep(0.05)  # Closes are asynchronous; poll, bounded.
            now = open_descriptors(pids)
    if before is not None and now is not None and now > before + 32:
        raise CheckFailure(
            f"descriptor leak: the server (processes {sorted(pids)}) held {before} "
            f"descriptors before {STORM} failed handshakes ({'; '.join(FAILURES)}) and "
            f"still holds {now} after every failed handshake's connection closed",
            step="count the server's descriptors after the failed handshakes",
        )
    # Not a fault check: its liveness step would run on a plain run too (needs_tls).
    await liveness(h, "liveness after the failed handshakes")


# -- writes the socket does not take at once -------------------------------------


async def large_replies_to_slow_reader(h: Harness) -> None:
    conn = await h.connect("slow", rcvbuf=4096)
    try:
        await conn.exchange(
            h.payload(8 * MIB, 43),
            read_size=4 * KIB,
            read_pause=0.001,
            read_pause_every=16,
            timeout=20.0,
        )
    except BaseExceptionGroup as group:  # The reader's failure, from its nursery.
        found = _tls_failure(group)
        if found is None:
            raise
        found.step = found.step or f"read the reply on {conn.name} while sending"
        found.transcript = found.transcript or conn.transcript
        raise found from None


# -- closing -------------------------------------------------------------------


async def close_notify_before_fin(h: Harness) -> None:
    conn = await h.connect("c1")
    await conn.send(h.message(b"goodbye, cleanly\n"))
    await conn.settle()
    await conn.shutdown_write()  # close_notify, then FIN; not measurable over TLS 1.2.
    step = "read until the server ends, after the client's close_notify and FIN"
    ending = await conn.expect_eof(step=step, timeout=5.0)
    if _stream(conn).close_notify is not True:
        raise CheckFailure(
            f"the server ended without close_notify ({ending.value}) after the client's "
            "close_notify: the client cannot tell this end from a truncation of the "
            "stream (RFC 8446 §6.1: close_notify before closing the write side)",
            step=step,
            transcript=conn.transcript,
        )


TLS_CHECKS: tuple[Check, ...] = (
    Check("TLS-RECORDS-1", f"{RECORDS} TLS records of 1..20 bytes in one TCP segment all "
          "come back (the server decrypts every record it holds, not one per event)", TLS_CATEGORY,
          Level.MUST, RFC8446_RECORDS, needs_tls(many_records_one_segment), timeout=15.0,
          any_bytes=False),
    Check("TLS-TRICKLE-1", "A handshake and records cut into 1-byte TCP segments are served, "
          "and other clients are served meanwhile", TLS_CATEGORY, Level.MUST, RFC8446_RECORDS,
          needs_tls(trickled), timeout=30.0, any_bytes=False),
    Check("TLS-HANDSHAKE-1", f"{SILENT} clients that send no ClientHello and {HALF_HELLO} "
          "that send half of one do not stop others being served nor new handshakes", TLS_CATEGORY,
          Level.MUST, RFC8446_HANDSHAKE, needs_tls(unfinished_handshakes_do_not_block),
          timeout=20.0, any_bytes=False),
    Check("TLS-HANDSHAKE-2", "Clients that hold a handshake unfinished do not make the "
          "server spin (watches the server's CPU in /proc; SKIPPED when its process is not "
          "visible)", TLS_CATEGORY, Level.SHOULD, RFC8446_HANDSHAKE,
          needs_tls(idle_while_handshakes_wait), heavy=True, timeout=25.0, any_bytes=False),
    Check("TLS-STORM-1", f"{STORM} failed handshakes (not TLS, SSL 3.0 only, reset "
          "mid-handshake, cut short) leak no descriptor and leave the server serving", TLS_CATEGORY,
          Level.MUST, RFC8446_ERRORS, needs_tls(failed_handshake_storm),
          heavy=True, timeout=60.0, any_bytes=False),
    Check("TLS-WRITE-1", "8 MiB of replies to a client reading slowly through a 4 KiB "
          "window arrive intact (ciphertext the socket did not take is sent later, the same "
          "bytes)", TLS_CATEGORY, Level.MUST, RFC8446_RECORDS,
          needs_tls(large_replies_to_slow_reader), heavy=True, timeout=30.0, any_bytes=False),
    Check("TLS-CLOSE-1", "After the client's close_notify and FIN the server sends its "
          "close_notify before its FIN (TLS 1.3; no truncation goes unseen)", TLS_CATEGORY,
          Level.SHOULD, RFC8446_CLOSE, needs_tls(close_notify_before_fin), timeout=15.0,
          any_bytes=False),
)  # fmt: skip
