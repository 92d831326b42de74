"""The core checks: bytes, sizes, partial writes, concurrency, fairness, close, reset, storms.

How this works
--------------
Each scenario below is an async function over a
:class:`~conformance.harness.Harness`; :data:`CORE_CHECKS` pairs each with its
ID, title, category, level and spec reference. IDs are stable: a check that
changes meaning gets a new ID. Payloads are deterministic (seeded), so a
replay sends the same bytes.

The scenarios speak only of bytes sent and bytes owed; the oracle decides
what is owed (echo: everything; discard: nothing), so every check runs
against any oracle. Most send what the run's protocol model makes
(``h.payload(size, seed)``, ``h.message(text)``): random bytes under echo,
whole requests under a model such as ``resp``, judged by its oracle; so they
run under any model (``any_bytes=False``). The few that send bytes of their
own choosing (every byte value, NULs) need a protocol where any bytes are a
request, and are SKIPPED under the others with the model's reason.

Sizes are chosen so that the whole catalogue runs in well under a minute
against the reference servers on two cores, while staying large enough to
matter: 16 MiB exceeds every default socket buffer; a storm of thousands of
connections exceeds the usual 1024-descriptor limit of a server that leaks.
"""

from __future__ import annotations

import random

import trio

from conformance.checks.base import (
    KIB,
    MIB,
    RFC862,
    RFC9293_CLOSE,
    RFC9293_FLOW,
    RFC9293_RESET,
    Check,
    Level,
)
from conformance.checks.resources import require_processes, server_processes
from conformance.harness import CheckFailure, Connection, Harness
from conformance.protocols import Capability
from conformance.rules import HALFCLOSE_CLOSE, HALFCLOSE_DATA
from conformance.targets import procfs
from conformance.tcp_state import fin_acknowledged

__all__ = ["CORE_CHECKS", "payload"]


#: The rules every check that half-closes judges, each at its own level.
HALF_CLOSE = (HALFCLOSE_DATA, HALFCLOSE_CLOSE)


def payload(size: int, seed: int) -> bytes:
    """``size`` deterministic pseudo-random bytes."""
    return random.Random(seed).randbytes(size)


# -- basic -------------------------------------------------------------------


#: How long ECHO-BASIC-1 listens after the reply for bytes that should not come.
QUIET = 0.3

#: Seconds a fresh connection's first reply may take in the fairness checks, as
#: long as the liveness probe's: a server may set a connection up slowly
#: (authentication, a lazy upstream) and be fair; each later round trip has 2 s.
FIRST_REPLY = 5.0


async def basic_short(h: Harness) -> None:
    conn = await h.connect("c1")
    await conn.send(h.message(b"Hello, echo!\r\n"))
    await conn.settle()
    await conn.expect_quiet(QUIET)


async def basic_empty(h: Harness) -> None:
    for i in range(20):
        conn = await h.connect(f"empty{i}")
        if i % 2:
            conn.reset()
        else:
            conn.close()


async def basic_byte_values(h: Harness) -> None:
    conn = await h.connect("c1")
    await conn.exchange(bytes(range(256)) + bytes(reversed(range(256))) * 3)


async def basic_nul(h: Harness) -> None:
    conn = await h.connect("c1")
    for message in (b"\0", b"\0" * 4096, b"a\0b\0\0c" * 500, b"\0\r\n\0\n\r\0", b"end\0"):
        await conn.exchange(message)


async def sizes_small_to_large(h: Harness) -> None:
    conn = await h.connect("c1")
    sizes = [1, 2, 3, 255, 256, 1460, 4095, 4096, 4097, 65535, 65536, 65537, MIB + 1]
    for seed, size in enumerate(sizes):
        await conn.exchange(h.payload(size, seed))
    await conn.expect_quiet(QUIET)  # Nothing more, not even late (what no oracle owes).


async def sizes_16mib(h: Harness) -> None:
    conn = await h.connect("c1")
    await conn.exchange(h.payload(16 * MIB, 16), read_size=MIB, timeout=30.0)


# -- partial writes ----------------------------------------------------------


async def partial_small_writes(h: Harness) -> None:
    conn = await h.connect("c1", nodelay=True)
    await conn.exchange(
        h.payload(20_000, 1),
        chunks=[1, 2, 3, 5, 7, 11, 13],
        send_pause=0.001,
        send_pause_every=64,
    )


async def partial_small_reads(h: Harness) -> None:
    conn = await h.connect("c1")
    await conn.exchange(h.payload(MIB, 2), read_size=31, timeout=15.0)


async def partial_server_short_sends(h: Harness) -> None:
    conn = await h.connect("slow", rcvbuf=4096)
    await conn.exchange(
        h.payload(4 * MIB, 3),
        read_size=4096,
        read_pause=0.001,
        read_pause_every=16,
        timeout=20.0,
    )


# -- one connection, events at once --------------------------------------------


async def pipelined_bursts(h: Harness) -> None:
    conn = await h.connect("c1")
    bursts = [h.message(f"burst {i:04d} ".encode() * 40) for i in range(99)]
    bursts.append(h.payload(16 * KIB, 9))  # A last burst larger than one small read.
    for i, burst in enumerate(bursts):
        await conn.send(burst, step=f"send burst {i} before reading anything")
    await conn.settle(step="read the replies to 100 pipelined bursts")


async def duplex(h: Harness) -> None:
    conn = await h.connect("c1")
    await conn.exchange(
        h.payload(4 * MIB, 4), chunks=[65536, 1000, 7, 30000], read_size=8192, timeout=20.0
    )


# -- many connections ----------------------------------------------------------


async def many_interleaved(h: Harness) -> None:
    conns = [await h.connect(f"c{i}") for i in range(200)]

    async def talk(i: int, conn: Connection) -> None:
        for rnd in range(4):
            await conn.send(h.message(f"[{i}:{rnd}]".encode() * (1 + (i * 7 + rnd) % 13)))
            await conn.send(h.message(f"<{i}>".encode()))
            await trio.lowlevel.checkpoint()  # Let other connections' steps interleave.
            await conn.settle()

    async with trio.open_nursery() as nursery:
        order = list(enumerate(conns))
        random.Random(5).shuffle(order)
        for i, conn in order:
            nursery.start_soon(talk, i, conn)


async def idle_does_not_delay_busy(h: Harness) -> None:
    idle = [await h.connect(f"idle{i}") for i in range(50)]
    half = h.payload(64, 12)[:12]  # the first 12 bytes of a message, never completed
    await idle[0].send(half, step="send an incomplete message on idle0")
    busy = await h.connect("busy")
    with h.step("200 round trips on busy while 50 connections idle", busy, timeout=15.0):
        for i in range(200):
            await busy.send(h.message(b"ping %d\n" % i), timeout=2.0)
            bound = FIRST_REPLY if i == 0 else 2.0
            await busy.settle(step=f"round trip {i} on busy", timeout=bound)


async def slow_reader_does_not_delay_others(h: Harness) -> None:
    # busy is served once before the slow reader blocks: its first reply may be slow
    # (FIRST_REPLY); what the slow reader does to it is measured from then on.
    busy = await h.connect("busy")
    await busy.send(h.message(b"hello\n"), timeout=2.0)
    await busy.settle(step="the first round trip on busy", timeout=FIRST_REPLY)
    slow = await h.connect("slow", rcvbuf=4096)
    await slow.send_until_blocked(h.payload(16 * MIB, 6), step="fill the slow reader's window")
    for i in range(50):
        await busy.send(h.message(b"are you there %d?\n" % i), timeout=2.0)
        await busy.settle(step=f"round trip {i} on busy while slow does not read", timeout=2.0)
    await slow.settle(step="read everything back on slow", timeout=20.0)


# -- close and reset -----------------------------------------------------------


async def half_close_flushes(h: Harness) -> None:
    conn = await h.connect("c1")
    # The FIN right behind the data, and nothing read until then: the server sees its
    # EOF while its replies are still queued (in its own buffer, past what the kernel
    # holds). Its connection must stay open for writing until they are all sent.
    sent = await conn.send_until_blocked(
        h.payload(16 * MIB, 7), step="send up to 16 MiB without reading, then FIN"
    )
    await conn.shutdown_write()
    await conn.expect_owed_then_fin(
        read_size=4096, step=f"after the FIN, read back all {sent} bytes", timeout=10.0
    )


async def half_close_empty(h: Harness) -> None:
    conn = await h.connect("c1")
    await conn.shutdown_write()
    await conn.expect_owed_then_fin(step="nothing is owed after an empty half-closed stream")


async def half_close_with_replies_queued(h: Harness) -> None:
    conn = await h.connect("c1", rcvbuf=4096)
    sent = await conn.send_until_blocked(
        h.payload(8 * MIB, 8), step="send up to 8 MiB without reading, replies pile up"
    )
    await conn.shutdown_write()
    await conn.expect_owed_then_fin(
        pause=0.001,
        pause_every=4,
        step=f"after the FIN, read back all {sent} bytes through a 4 KiB window",
        timeout=10.0,
    )


async def reset_mid_stream(h: Harness) -> None:
    replies = Capability.REPLIES in h.model.capabilities
    for i in range(5):
        conn = await h.connect(f"victim{i}")
        await conn.send(h.payload(64 * KIB, 10 + i))
        if replies:  # Mid-stream: the server is busy answering when the reset comes.
            with h.step(f"read the first reply byte on victim{i}", conn):
                await conn.recv_some(1)
        conn.reset()


async def reset_with_data_queued(h: Harness) -> None:
    bystander = await h.connect("bystander")
    await bystander.send(h.message(b"before"))
    await bystander.settle()
    victim = await h.connect("victim", rcvbuf=4096)
    await victim.send_until_blocked(h.payload(16 * MIB, 11), step="fill the victim's window")
    victim.reset()
    await bystander.send(h.message(b"after the reset"))
    await bystander.settle(step="bystander still served after the victim's reset")


async def close_without_reading(h: Harness) -> None:
    bystander = await h.connect("bystander")
    for i in range(4):
        victim = await h.connect(f"victim{i}", rcvbuf=4096)
        if i % 2:
            # Half-close first, and close only once the server's kernel has the FIN: the
            # server is then in CLOSE_WAIT, and the RST that answers our close leaves EPIPE
            # pending, so its very next write fails with EPIPE (and raises SIGPIPE, unless
            # it ignores the signal or writes with MSG_NOSIGNAL).
            await victim.send_until_blocked(h.payload(8 * MIB, 20 + i), stall=0.2)
            await victim.shutdown_write()
            await fin_acknowledged(victim.sock, 2.0)
        else:
            # The RST leaves ECONNRESET pending: the first write fails with it, the next with EPIPE.
            await victim.send_until_blocked(h.payload(2 * MIB, 20 + i), stall=0.2)
        victim.close()  # Unread data: the kernel answers with RST, and the server's writes fail.
        await bystander.send(h.message(b"still there %d?" % i))
        await bystander.settle(step=f"bystander served after victim{i} left unread replies")


# -- storms --------------------------------------------------------------------


def open_descriptors(pids: set[int]) -> int | None:
    """How many descriptors the processes ``pids`` hold together, or None if none can be seen."""
    counts = [n for n in (procfs.open_descriptors(pid) for pid in pids) if n is not None]
    return sum(counts) if counts else None


async def storm(h: Harness, count: int, concurrency: int, send: int) -> None:
    limiter = trio.CapacityLimiter(concurrency)
    failures: list[CheckFailure] = []

    async def one(i: int) -> None:
        async with limiter:
            try:
                conn = await h.connect(f"storm{i}", record=False, timeout=10.0)
            except CheckFailure as exc:
                failures.append(exc)
                return
            try:
                if send:
                    await conn.send(h.payload(send, i % 7), timeout=5.0)
            finally:
                if i % 2:
                    conn.reset()
                else:
                    conn.close()
            h.connections.remove(conn)

    with h.step(f"storm of {count} connections, {concurrency} at a time", timeout=40.0):
        async with trio.open_nursery() as nursery:
            for i in range(count):
                nursery.start_soon(one, i)
    if failures:
        first = failures[0]
        raise CheckFailure(
            f"{len(failures)} of {count} connections failed during the storm; first: "
            f"{first.message}",
            step=first.step,
        )


async def wait_descriptors_back(h: Harness, pids: set[int], before: int | None) -> None:
    """Fail if the server holds many more descriptors than before the storm (a leak)."""
    slack = 32
    if before is None:
        return
    now = open_descriptors(pids)
    with trio.move_on_after(5.0):
        while now is not None and now > before + slack:
            await trio.sleep(0.05)  # Closes are asynchronous; poll, bounded.
            now = open_descriptors(pids)
    if now is not None and now > before + slack:
        raise CheckFailure(
            f"descriptor leak: the server (processes {sorted(pids)}) held {before} "
            f"descriptors before the storm and still holds {now} after every connection "
            "closed",
            step="count the server's descriptors after the storm",
        )


def _counted(h: Harness) -> tuple[set[int], int | None]:
    """The server's processes and their descriptors now; noted as not measured when unseen."""
    pids = server_processes(h)
    before = open_descriptors(pids)
    if before is None:
        require_processes(h, set(), "its descriptors")
    return pids, before


async def connect_close_storm(h: Harness) -> None:
    pids, before = _counted(h)
    await storm(h, count=3000, concurrency=64, send=0)
    await wait_descriptors_back(h, pids, before)


async def send_and_vanish_storm(h: Harness) -> None:
    pids, before = _counted(h)
    await storm(h, count=500, concurrency=32, send=8 * KIB)
    await wait_descriptors_back(h, pids, before)


# -- the catalogue -------------------------------------------------------------

CORE_CHECKS: tuple[Check, ...] = (
    Check("ECHO-BASIC-1", "A short message comes back unchanged, and nothing more",
          "basic", Level.MUST, RFC862, basic_short, any_bytes=False),
    Check("ECHO-BASIC-2", "Connections opened and closed (FIN or RST) without data leave "
          "the server serving", "basic", Level.MUST, RFC9293_CLOSE, basic_empty, fault=True,
          timeout=15.0, any_bytes=False),
    Check("ECHO-BASIC-3", "Every byte value 0..255 comes back unchanged", "basic",
          Level.MUST, RFC862, basic_byte_values),
    Check("ECHO-BASIC-4", "NUL-heavy payloads come back unchanged, nothing cut at a NUL",
          "basic", Level.MUST, RFC862, basic_nul),
    Check("ECHO-SIZE-1", "Messages of 1 byte to 1 MiB+1 on one connection come back whole",
          "basic", Level.MUST, RFC862, sizes_small_to_large, timeout=20.0, any_bytes=False),
    Check("ECHO-SIZE-2", "16 MiB sent in one write comes back whole, in order", "basic",
          Level.MUST, RFC862, sizes_16mib, heavy=True, timeout=40.0, any_bytes=False),
    Check("ECHO-PARTIAL-1", "One payload sent in thousands of tiny paced writes "
          "(TCP_NODELAY) comes back in order", "partial-write", Level.MUST, RFC862,
          partial_small_writes, timeout=20.0, any_bytes=False),
    Check("ECHO-PARTIAL-2", "One 1 MiB write read back through 31-byte reads", "partial-write",
          Level.MUST, RFC862, partial_small_reads, timeout=25.0, any_bytes=False),
    Check("ECHO-PARTIAL-3", "A client with a tiny window that reads slowly (the server's send "
          "returns short) still gets every byte in order", "partial-write", Level.MUST,
          RFC9293_FLOW, partial_server_short_sends, heavy=True, timeout=30.0, any_bytes=False),
    Check("ECHO-PIPELINE-1", "100 bursts (the last of 16 KiB) sent before any read come back "
          "in order", "concurrency", Level.MUST, RFC862, pipelined_bursts, any_bytes=False),
    Check("ECHO-DUPLEX-1", "Sending and reading at the same time, 4 MiB both ways",
          "concurrency", Level.MUST, RFC862, duplex, timeout=20.0, any_bytes=False),
    Check("ECHO-MANY-1", "200 interleaved connections each get their own bytes in their own "
          "order", "fairness", Level.MUST, RFC862, many_interleaved, timeout=15.0, any_bytes=False),
    Check("ECHO-FAIR-1", "50 idle connections (one mid-message) do not delay a busy one",
          "fairness", Level.MUST, RFC862, idle_does_not_delay_busy, timeout=20.0, any_bytes=False),
    Check("ECHO-FAIR-2", "A client that does not read (the server's send would block) does "
          "not delay the others, and later gets everything", "fairness", Level.MUST,
          RFC9293_FLOW, slow_reader_does_not_delay_others, heavy=True, timeout=40.0,
          any_bytes=False),
    Check("ECHO-HALFCLOSE-1", "A client that sends its data and FIN before reading gets every "
          "byte back (MUST), then the server's FIN (SHOULD)", "close", Level.MUST,
          RFC9293_CLOSE, half_close_flushes, rules=HALF_CLOSE, timeout=25.0, any_bytes=False),
    Check("ECHO-HALFCLOSE-2", "After an empty half-closed stream nothing comes back (MUST), "
          "then the server's FIN (SHOULD)", "close", Level.MUST, RFC9293_CLOSE,
          half_close_empty, rules=HALF_CLOSE, any_bytes=False),
    Check("ECHO-HALFCLOSE-3", "A client that half-closes while its replies are still "
          "queued in the server, and reads through a tiny window, gets every byte (MUST), "
          "then the server's FIN (SHOULD)", "close", Level.MUST, RFC9293_CLOSE,
          half_close_with_replies_queued, heavy=True, timeout=25.0, rules=HALF_CLOSE,
          any_bytes=False),
    Check("ECHO-RESET-1", "Clients that reset mid-stream leave the server serving", "reset",
          Level.MUST, RFC9293_RESET, reset_mid_stream, fault=True, timeout=20.0, any_bytes=False),
    Check("ECHO-RESET-2", "A reset while the server has replies queued for that client "
          "(ECONNRESET/EPIPE) leaves it serving the others", "reset", Level.MUST,
          RFC9293_RESET, reset_with_data_queued, fault=True, heavy=True, timeout=20.0,
          any_bytes=False),
    Check("ECHO-RESET-3", "Clients that close with replies unread, some after a half-close "
          "(ECONNRESET, EPIPE, SIGPIPE), leave the server serving", "reset", Level.MUST,
          RFC9293_RESET, close_without_reading, fault=True, heavy=True, timeout=25.0,
          any_bytes=False),
    Check("ECHO-STORM-1", "3000 connect-and-close connections (FIN and RST) leak no "
          "descriptor and leave the server serving", "storm", Level.MUST, RFC9293_CLOSE,
          connect_close_storm, fault=True, heavy=True, timeout=50.0, any_bytes=False),
    Check("ECHO-STORM-2", "500 clients that send 8 KiB and vanish without reading leave the "
          "server serving", "storm", Level.MUST, RFC9293_RESET, send_and_vanish_storm,
          fault=True, heavy=True, timeout=40.0, any_bytes=False),
)  # fmt: skip
