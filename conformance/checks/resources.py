"""Resource checks: what the server costs while it looks correct on the wire.

How this works
--------------
A server can echo every byte right and still spin at 100% CPU, or hold every
byte a non-reading client sends. These checks watch the server's process from
outside, through ``/proc``:

- The processes are found by the server's sockets, not by the PID the suite
  started: whoever holds the socket listening at the target's address
  (``/proc/net/tcp*`` gives its inode, ``/proc/PID/fd`` its holders), and the
  holder of the server's end of the check's own connection (a forking server's
  child, such as ``socat ... fork``'s). So a server behind a wrapper
  (``sh -c``, ``npm start``) or given as ``HOST:PORT`` is watched too, when it
  runs on this machine under a user whose ``/proc`` entries are readable.
- When none is visible, each check still judges what the wire shows, and
  what it could not measure makes it SKIPPED with the reason
  (:meth:`~conformance.harness.Harness.not_measured`), never PASS.

The ``/proc`` readings, and the facts about ``/proc`` they rely on, are in
:mod:`conformance.targets.procfs`.
"""

from __future__ import annotations

import random
from collections.abc import Iterable

import trio

from conformance.checks.base import (
    MIB,
    RFC9293_CLOSE,
    RFC9293_FLOW,
    Check,
    Level,
)
from conformance.harness import CheckFailure, Connection, Harness
from conformance.protocols import Capability
from conformance.targets.procfs import (
    cpu_seconds,
    listening_inodes,
    resident_bytes,
    socket_inode,
    socket_owners,
)

__all__ = [
    "RESOURCE_CHECKS",
    "cpu_seconds",
    "name_processes",
    "require_processes",
    "resident_bytes",
    "server_processes",
    "socket_owners",
]


# -- /proc ---------------------------------------------------------------------


def server_processes(h: Harness, conn: Connection | None = None) -> set[int]:
    """The server's processes, found by its sockets: whoever holds its listening socket.

    Also the owner of ``conn``'s far end (a forking server's child), when
    ``conn`` is given. Found by socket, not by the PID the suite started, so
    a server behind a wrapper (``sh -c``, ``npm start``, a supervisor) is
    found too. Empty when none is visible from here (another user, a
    container, another host): the caller says so (:func:`require_processes`).
    """
    pids = socket_owners(listening_inodes(h.address.host, h.address.port))
    if conn is not None:
        try:
            local = conn.sock.getsockname()[:2]
            remote = conn.sock.getpeername()[:2]
        except OSError:
            local = remote = None
        if local is not None and remote is not None:
            inode = socket_inode((remote[0], remote[1]), (local[0], local[1]))
            if inode is not None:
                pids |= socket_owners(inode)
    return {pid for pid in pids if cpu_seconds(pid) is not None}


def name_processes(pids: Iterable[int]) -> str:
    """``process 12`` or ``processes 12, 34``, for a message."""
    ordered = sorted(pids)
    if len(ordered) == 1:
        return f"process {ordered[0]}"
    return f"processes {', '.join(map(str, ordered))}"


def require_processes(h: Harness, pids: set[int], what: str) -> bool:
    """Whether ``pids`` holds any process; if not, record ``what`` as not measured."""
    if pids:
        return True
    h.not_measured(
        f"{what} not measured: the server's process is not visible from here (no process "
        f"this user may inspect holds its socket at {h.address}: another user, a "
        "container, another host)"
    )
    return False


def _total_cpu(pids: set[int]) -> float:
    return sum(cpu_seconds(pid) or 0.0 for pid in pids)


# -- CPU after a half-close ----------------------------------------------------

#: A window is idle when the server used less than this share of one core in it.
IDLE_SHARE = 0.2
WINDOW = 0.5
#: How long the check looks for one idle window (the suite's other checks may
#: keep a correct server busy for a while).
CPU_PATIENCE = 10.0


async def idle_after_half_close(h: Harness) -> None:
    conn = await h.connect("c1")
    await conn.send(h.message(b"about to half-close\n"))
    await conn.settle()
    pids = server_processes(h, conn)
    await conn.shutdown_write()
    with trio.move_on_after(2.0):
        # A correct server flushes and closes; either way the client stays connected.
        await conn.expect_eof(step="read the server's FIN after the half-close")
    if not require_processes(h, pids, "its CPU after the half-close"):
        if conn.transcript.ending.name != "FIN":
            raise CheckFailure(
                "the server's process cannot be watched from here, and it did not close "
                "its side within 2s of the client's FIN",
                step="read the server's FIN after the half-close",
                transcript=conn.transcript,
            )
        return
    shares: list[float] = []
    with h.step(
        f"watch the server's CPU (processes {sorted(pids)}) after the half-close",
        conn,
        timeout=CPU_PATIENCE + 5.0,
    ):
        start = trio.current_time()
        while trio.current_time() - start < CPU_PATIENCE:
            before, t0 = _total_cpu(pids), trio.current_time()
            await trio.sleep(WINDOW)  # The measuring window itself, not a wait for an event.
            used, spent = _total_cpu(pids) - before, trio.current_time() - t0
            shares.append(used / spent)
            if shares[-1] < IDLE_SHARE:
                return
    raise CheckFailure(
        f"the server kept busy after the client's half-close: in each of {len(shares)} "
        f"windows of {WINDOW:g}s over {CPU_PATIENCE:g}s it used at least "
        f"{min(shares):.0%} of a core (most {max(shares):.0%}); an idle server uses ~0% "
        "(a descriptor still watched for reading after EOF is readable forever)",
        step="watch the server's CPU after the half-close",
        transcript=conn.transcript,
    )


# -- memory under clients that do not read ---------------------------------------

#: How many clients send at once without reading: one alone shows whether the
#: server buffers without limit; several show what it buffers *per connection*
#: (a high-water mark of 50 MiB looks bounded for one client, not for four).
HOGS = 4
#: What each client offers without reading a byte.
HOG_OFFER = 96 * MIB
#: The most the server may take from each client meanwhile: every kernel buffer
#: on the way (the client's send buffer, the server's receive and send buffers,
#: up to ``tcp_wmem``/``tcp_rmem`` max, 4 + 32 + 4 MiB by default) and a modest
#: application buffer fit in it.
HOG_TAKEN_LIMIT = 64 * MIB
#: The most the server's resident memory may grow meanwhile, all its processes
#: and all the clients together: kernel buffers are not resident memory, so a
#: server with a high-water mark of a few MiB a connection stays far below it.
HOG_RSS_LIMIT = 48 * MIB


async def memory_bounded_under_non_readers(h: Harness) -> None:
    hogs = [await h.connect(f"hog{i}", rcvbuf=4096) for i in range(HOGS)]
    pids: set[int] = set()
    for hog in hogs:
        await hog.send(h.message(b"hello\n"))
        await hog.settle()
        pids |= server_processes(h, hog)
    require_processes(h, pids, "its resident memory")
    before = {pid: resident_bytes(pid) for pid in pids}
    if Capability.ANY_BYTES in h.model.capabilities:
        offer = random.Random(30).randbytes(MIB) * (HOG_OFFER // MIB)
    else:  # The model's requests; the hogs share them (their replies are never read).
        offer = h.payload(HOG_OFFER, 30)
    taken: dict[str, int] = {}

    async def fill(hog: Connection) -> None:
        taken[hog.name] = await hog.send_until_blocked(
            offer,
            stall=1.0,
            step=f"send up to {HOG_OFFER // MIB} MiB on {hog.name} without reading",
            timeout=30.0,
        )

    async with trio.open_nursery() as nursery:
        for hog in hogs:
            nursery.start_soon(fill, hog)
    grown = {
        pid: now - was
        for pid in sorted(pids)
        if (was := before[pid]) is not None and (now := resident_bytes(pid)) is not None
    }
    for hog in hogs:
        hog.reset()
    problems: list[str] = []
    over = sorted((n, name) for name, n in taken.items() if n > HOG_TAKEN_LIMIT)
    if over:
        most, name = over[-1]
        others = f", and over the limit from {len(over) - 1} more" if len(over) > 1 else ""
        problems.append(
            f"the server took {most / MIB:.1f} MiB from a client that read none of its "
            f"replies ({name}{others}; limit {HOG_TAKEN_LIMIT // MIB} MiB a client, kernel "
            "buffers included): it does not stop reading when its replies pile up"
        )
    total = sum(max(0, growth) for growth in grown.values())
    if total > HOG_RSS_LIMIT:
        grew = [pid for pid, growth in grown.items() if growth > 0]
        problems.append(
            f"the server's resident memory ({name_processes(grew)}) grew by {total / MIB:.1f} MiB "
            f"while {HOGS} clients sent {sum(taken.values()) / MIB:.1f} MiB without reading "
            f"(limit {HOG_RSS_LIMIT // MIB} MiB in all, {HOG_RSS_LIMIT / HOGS / MIB:g} MiB a "
            "client): it keeps too much for each connection that does not read"
        )
    if problems:
        worst = max(hogs, key=lambda hog: taken.get(hog.name, 0))
        raise CheckFailure(
            "; ".join(problems),
            step=f"measure what the server took from {HOGS} clients that do not read",
            transcript=worst.transcript,
        )


RESOURCE_CHECKS: tuple[Check, ...] = (
    Check("ECHO-CPU-1", "After the client's half-close the server goes idle, no busy loop on "
          "EOF (watches the server's CPU in /proc; SKIPPED when its process is not visible)",
          "resources", Level.SHOULD, RFC9293_CLOSE, idle_after_half_close, heavy=True,
          timeout=20.0, any_bytes=False),
    Check("ECHO-MEM-1", f"{HOGS} clients that each send 96 MiB at once without reading "
          "cannot make the server take more than 64 MiB from any of them, nor grow by more "
          "than 48 MiB in all (memory: /proc; SKIPPED when its process is not visible)",
          "resources", Level.SHOULD, RFC9293_FLOW, memory_bounded_under_non_readers,
          fault=True, heavy=True, timeout=45.0, needs_replies=True, any_bytes=False),
)  # fmt: skip
