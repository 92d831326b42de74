"""Limit checks: more connections at once than the server has descriptors.

How this works
--------------
Every connection a server accepts costs it a descriptor, and a process may
hold only so many: its soft ``RLIMIT_NOFILE`` (``ulimit -n``, often 1024).
A storm of short connections never reaches that limit in a correct server;
connections *held at once* do. ECHO-LIMIT-1 holds more than the server may:

1. It reads the limit from ``/proc/PID/limits`` of the server's processes,
   found by their sockets as the resource checks find them
   (:func:`~conformance.checks.resources.server_processes`): the holders of
   the listening socket and their children, the limits added up, since each
   process has a table of its own (a forking server such as ``socat ... fork``,
   or the multi-process reference, spreads its connections over several). When
   none is visible it takes the server to hold ``--max-connections``
   (:attr:`~conformance.harness.Harness.max_connections`).
2. It raises its own soft limit to its hard limit for the while
   (:func:`raised_descriptor_limit`); when the count it needs (the limit and
   :data:`MARGIN` more) is beyond what it can open, or beyond :data:`CAP`, it
   says so and is SKIPPED (:meth:`~conformance.harness.Harness.not_measured`):
   a check that could not exceed the limit has not seen what it claims.
3. It opens :data:`EARLY` connections and makes a round trip on each, then
   opens the rest, :data:`CONCURRENCY` at a time, each connect under
   :data:`CONNECT_TIMEOUT`. The excess may wait in the backlog, time out once
   the backlog is full, or be refused: all allowed.
4. It waits (bounded) until the server holds about as many descriptors as it
   may, then makes a round trip on each early connection, judged by the
   oracle: what the server accepted is still served. Then it closes them all,
   and the liveness step (the check is a *fault* check) wants a fresh
   connection served: a server that frees descriptors accepts again.

Facts about the OS this relies on
---------------------------------
- Out of descriptors, ``accept`` fails with ``EMFILE`` and the pending
  connection stays in the backlog; the listening socket stays readable.
- The kernel completes handshakes into the backlog without the server: a
  client's ``connect`` succeeds while the server cannot accept. Once the
  backlog is full (``min(backlog, net.core.somaxconn)``), new SYNs are
  dropped and the client retries until its connect times out.
- Each process has its own descriptor table and limit; a child inherits its
  parent's. A process may raise its soft limit up to its hard limit without
  privilege, and lower it again while it holds more descriptors than that
  (only new ones then fail).
"""

from __future__ import annotations

import os
import resource
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import trio

from conformance.checks.base import Check, Level
from conformance.checks.resources import name_processes, server_processes
from conformance.harness import (
    DEFAULT_MAX_CONNECTIONS,
    CheckFailure,
    Connection,
    Harness,
    StepTimeout,
)
from conformance.targets import procfs

__all__ = [
    "LIMIT_CHECKS",
    "ServerLimit",
    "raised_descriptor_limit",
    "server_limit",
]

RFC9293_OPEN = "RFC 9293 §3.5 (establishing a connection)"

#: Connections opened beyond the server's limit.
MARGIN = 64
#: The most connections the check opens: beyond it, the check is SKIPPED.
CAP = 16_384
#: Descriptors the suite keeps for itself beyond those it holds now.
RESERVE = 64
#: Connections served before the others connect, and again while all are held.
EARLY = 4
#: Connects in flight at once.
CONCURRENCY = 128
#: Seconds one connect may take (a full backlog drops SYNs: the client retries).
CONNECT_TIMEOUT = 3.0
#: Seconds all the connects may take together.
OPEN_TIMEOUT = 40.0
#: Seconds to wait for the server to take what it can, and how long its
#: descriptor count must stay still for it to have taken all it will.
FILL_TIMEOUT = 10.0
FILL_STEADY = 1.0
#: Descriptors short of its limit at which a server counts as full.
SLACK = 8


@dataclass(frozen=True)
class ServerLimit:
    """How many descriptors the server may hold, and where that figure comes from.

    Attributes:
        total: The descriptors, all its processes together.
        holders: The processes that hold its listening socket (empty when
            none is visible).
        pids: The processes whose limits are added up (the holders and
            their children); empty when the figure is ``--max-connections``.
        source: Where the figure comes from, for messages.
    """

    total: int
    holders: frozenset[int]
    pids: frozenset[int]
    source: str

    @property
    def measured(self) -> bool:
        """Whether the figure was read from ``/proc`` (not taken from ``--max-connections``)."""
        return bool(self.pids)


def server_limit(h: Harness) -> ServerLimit:
    """The server's descriptor limit: its processes' soft limits added up, or else the option.

    The processes are the holders of its listening socket and their children
    (a forking server's, the multi-process reference's workers).
    """
    holders = server_processes(h)
    family = set(holders)
    for pid in holders:
        family |= set(procfs.children(pid) or ())
    limits = {pid: n for pid in family if (n := procfs.descriptor_limit(pid)) is not None}
    if not limits:
        given = h.max_connections
        figure = DEFAULT_MAX_CONNECTIONS if given is None else given
        said = "the default --max-connections" if given is None else "--max-connections"
        return ServerLimit(
            figure,
            frozenset(),
            frozenset(),
            f"{said} {figure}: its own limit is not visible from here",
        )
    total = min(sum(limits.values()), procfs.UNLIMITED)
    if len(limits) == 1:
        (pid,) = limits
        source = f"the soft RLIMIT_NOFILE of its process {pid}, in /proc/{pid}/limits"
    else:
        source = (
            f"the soft RLIMIT_NOFILE of its {len(limits)} processes added up, each in "
            "/proc/PID/limits"
        )
    return ServerLimit(total, frozenset(holders), frozenset(limits), source)


def _finite(value: int) -> int:
    return procfs.UNLIMITED if value == resource.RLIM_INFINITY else value


@contextmanager
def raised_descriptor_limit() -> Iterator[int]:
    """Raise this process's soft ``RLIMIT_NOFILE`` to its hard limit for the block.

    The soft limit is put back at the end, so that servers this process
    starts later inherit the limit they would have had.

    Yields:
        The soft limit in force in the block.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard
    if hard == resource.RLIM_INFINITY:
        try:  # The kernel's own ceiling on any process's table.
            want = int(Path("/proc/sys/fs/nr_open").read_text())
        except (OSError, ValueError):
            want = soft
    raised = False
    if _finite(want) > _finite(soft):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            raised = True
        except (OSError, ValueError):
            pass  # Not allowed here: the check opens what the soft limit allows.
    try:
        yield _finite(want if raised else soft)
    finally:
        if raised:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _own_room(limit: int) -> int:
    """How many more descriptors this process may open under ``limit``, less :data:`RESERVE`."""
    held = procfs.open_descriptors(os.getpid()) or 0
    return max(0, limit - held - RESERVE)


def _too_many(limit: ServerLimit, count: int, own: int, room: int) -> str:
    """Why ``count`` connections are more than this check opens (``room`` it can open)."""
    if count > CAP:
        why = f"the check's cap of {CAP}"
        fix = (
            "start it under a lower limit (ulimit -n 1024)"
            if limit.measured
            else "pass a lower --max-connections (how many connections it holds at most)"
        )
    else:
        why = (
            f"this suite may open only {room} more descriptors: its own limit is {own}, "
            f"raised to its hard limit, less those it holds and {RESERVE} it keeps"
        )
        fix = "run the suite under a higher hard limit (ulimit -Hn)"
    return (
        f"more connections than the server's descriptors not measured: it may hold "
        f"{limit.total} descriptors ({limit.source}), so exceeding them takes {count} "
        f"connections held at once, more than this check opens (at most {min(room, CAP)}: "
        f"{why}); {fix}"
    )


@dataclass
class Tally:
    """What became of the connects beyond the early ones."""

    connected: int = 0
    refused: int = 0
    timed_out: int = 0

    def text(self, count: int) -> str:
        """For example ``1080 of 1084 connected, 4 timed out after 3s``."""
        parts = [f"{self.connected} of {count} connected"]
        if self.refused:
            parts.append(f"{self.refused} refused or reset")
        if self.timed_out:
            parts.append(f"{self.timed_out} timed out after {CONNECT_TIMEOUT:g}s")
        untried = count - self.connected - self.refused - self.timed_out
        if untried:
            parts.append(f"{untried} not tried once the backlog was full")
        return ", ".join(parts)


async def open_held(h: Harness, count: int) -> Tally:
    """Open ``count`` connections, :data:`CONCURRENCY` at a time, and keep them open.

    Connects that are refused or time out are counted, not failed: they are
    the excess. After the first timeout (the backlog is full) no new connect
    starts; those in flight finish.
    """
    tally = Tally()
    limiter = trio.CapacityLimiter(CONCURRENCY)

    async def one(i: int) -> None:
        async with limiter:
            if tally.timed_out:
                return
            try:
                await h.connect(f"held{i}", record=False, timeout=CONNECT_TIMEOUT)
            except StepTimeout:
                tally.timed_out += 1
            except CheckFailure:
                tally.refused += 1
            else:
                tally.connected += 1

    step = f"open {count} more connections, {CONCURRENCY} at a time, and hold them"
    with h.step(step, timeout=OPEN_TIMEOUT):
        async with trio.open_nursery() as nursery:
            for i in range(count):
                nursery.start_soon(one, i)
    return tally


def _descriptors(pids: frozenset[int]) -> tuple[int, bool]:
    """The descriptors ``pids`` hold together, and whether one of them has exited."""
    counts = [procfs.open_descriptors(pid) or 0 for pid in pids]
    return sum(counts), any(_exited(pid) for pid in pids)


def _exited(pid: int) -> bool:
    return not procfs.open_descriptors(pid)  # Gone (None), or a zombie (none listed).


async def wait_full(limit: ServerLimit) -> tuple[bool, int]:
    """Wait until the server holds about as many descriptors as it may (bounded).

    Also stops when one of its processes exits, or its count stays still
    for :data:`FILL_STEADY` seconds (it takes no more: a connection cap,
    or connections handed to children).

    Returns:
        Whether it came within :data:`SLACK` of its limit, and what it holds.
    """
    held, gone = _descriptors(limit.pids)
    last, since = held, trio.current_time()
    with trio.move_on_after(FILL_TIMEOUT):
        while held < limit.total - SLACK and not gone:
            if held != last:
                last, since = held, trio.current_time()
            elif trio.current_time() - since >= FILL_STEADY:
                break
            await trio.sleep(0.05)  # Polling /proc: no event says "it took one more".
            held, gone = _descriptors(limit.pids)
    return held >= limit.total - SLACK, held


async def round_trip(h: Harness, conn: Connection, when: str) -> None:
    """Send a short message on ``conn`` and read what the oracle says is owed."""
    message = h.message(f"{conn.name} {when}\n".encode())
    await conn.send(message, step=f"send on {conn.name} {when}")
    await conn.settle(step=f"read the reply on {conn.name} {when}", timeout=10.0)


async def more_connections_than_descriptors(h: Harness) -> None:
    with raised_descriptor_limit() as own:
        try:
            await _beyond_the_limit(h, own)
        finally:
            h.close_all()  # Before the limit goes back down.


async def _beyond_the_limit(h: Harness, own: int) -> None:
    limit = server_limit(h)
    count = min(limit.total, procfs.UNLIMITED - MARGIN) + MARGIN
    room = _own_room(own)
    if count > min(room, CAP):
        h.not_measured(_too_many(limit, count, own, room))
        return
    early = [await h.connect(f"early{i}") for i in range(EARLY)]
    for conn in early:
        await round_trip(h, conn, "before the others connect")
    tally = await open_held(h, count - EARLY)
    held = EARLY + tally.connected
    full, descriptors = await wait_full(limit) if limit.measured else (False, 0)
    when = f"while {held} connections are held"
    for conn in early:
        try:
            await round_trip(h, conn, when)
        except CheckFailure as exc:
            exited = [pid for pid in limit.holders if _exited(pid)]
            what = (
                f"the server's {name_processes(exited)} exited"
                if exited
                else f"connection {conn.name}, served before the others connected, was no "
                "longer served"
            )
            raise CheckFailure(
                f"{what} while the check held {held} connections open, against the "
                f"{limit.total} descriptors it may hold ({limit.source}; "
                f"{tally.text(count - EARLY)}): {exc.message}",
                step=exc.step,
                transcript=exc.transcript,
                verdict=exc.verdict,
            ) from None
    if not limit.measured and h.max_connections is None:
        h.not_measured(
            f"more connections than the server's descriptors not measured: its limit is not "
            f"visible from here, and it kept serving while {held} connections were held (the "
            f"default --max-connections {DEFAULT_MAX_CONNECTIONS} and {MARGIN} more), which "
            "may be fewer than it may hold; pass --max-connections N, its limit, to judge it"
        )
    if limit.measured and not full and tally.timed_out:
        h.not_measured(
            f"more connections than the server's descriptors not measured: its backlog "
            f"filled while it held {descriptors} of the {limit.total} descriptors it may hold "
            f"({tally.text(count - EARLY)}), so the check never took it to its limit"
        )


LIMIT_CHECKS: tuple[Check, ...] = (
    Check("ECHO-LIMIT-1", "More connections than the server has descriptors (held at once) "
          "leave it serving: the excess waits or is refused, and once they close a fresh "
          "connection is served (its limit: /proc, else --max-connections; SKIPPED when it "
          "is too high to exceed)", "storm", Level.MUST, RFC9293_OPEN,
          more_connections_than_descriptors, fault=True, heavy=True, timeout=60.0,
          any_bytes=False),
)  # fmt: skip
