"""The load loop: one raw ``epoll``, its events dispatched to the driver, a tick, a drain.

How this works
--------------
:func:`run` polls the driver's ``select.epoll`` (no trio, no selector
objects: the generator must not be the bottleneck) and hands each event to
the :class:`~conformance.load.driver.Driver`. Every ``TICK`` seconds it runs
:func:`housekeeping` (resume slow readers, find stalled connections, the
connect storm) and reports progress.

One fast path: ping-pong with no faults and no round count (every connection
``ACTIVE`` throughout) takes a whole reply in one ``recv``, compares it in one
``==`` and calls :meth:`~conformance.load.driver.Driver.send_next`, the same code every round uses.
Latencies go into a list that :meth:`~conformance.load.histogram.Histogram.record_many`
empties at each housekeeping tick.

A descriptor that is no connection's is a connect under way (a replacement,
or the connect storm's): its event goes to
:meth:`~conformance.load.driver.Driver.on_connected`, off the fast path.

When the time (or the count) is up, no new data is sent and every connection
waits for what it is owed, up to a deadline; what is still missing then is an
error ("stalled"), so no byte goes unchecked. Connects still under way are
abandoned then: nothing is owed on them. A connection judged by its oracle's
verdict (:func:`stalled`) is told the exchange is over first: a verdict that
then turns PASS (or stays PENDING) shows an oracle that cannot judge a reply
as it comes, not a server that holds bytes, and the run ends unjudged.

An oracle that raises (:class:`~conformance.oracle.OracleError`) ends the
run where it is, with what was measured and the error in the result.

The stop event is looked at once per tick, never per message: when it is
set, the run ends at that tick, while running or draining, and the result
keeps what was measured (``stopped``). A run whose connecting phase opened
nothing, or was halted, ends at once.
"""

from __future__ import annotations

import select
import time
from collections.abc import Callable

from conformance.load.client import Client, ClientState
from conformance.load.driver import Driver
from conformance.load.faults import TICK, resume_slow_reader, storm
from conformance.load.result import LoadResult
from conformance.oracle import OracleError

__all__ = ["housekeeping", "run", "stalled"]

_IN = select.EPOLLIN
_OUT = select.EPOLLOUT
_ERR = select.EPOLLERR | select.EPOLLHUP
_SLOW_READER = ClientState.SLOW_READER
_IDLE = ClientState.IDLE
_CLOSED = ClientState.CLOSED


def housekeeping(driver: Driver, now: float) -> None:
    """At a tick: resume slow readers, drop stalled connections, expire and storm connects."""
    for client in list(driver.clients.values()):
        if client.state is _CLOSED:
            continue  # (dropped by the time its turn came)
        if client.state is _SLOW_READER and resume_slow_reader(driver, client, now):
            continue
        if client.owes() and now - progress_time(driver, client) > driver.spec.drain_timeout:
            stalled(
                driver,
                client,
                f"nothing came back for {driver.spec.drain_timeout:.0f}s with "
                f"{client.owed_words()}",
            )
            driver.drop(client, rst=True)  # A new connection would most likely stall too.
    if driver.connector.pending:
        driver.connects_expired(now)
    if driver.storm_left > 0 and not driver.draining:
        storm(driver)


def stalled(driver: Driver, client: Client, detail: str) -> None:
    """``client`` is owed a reply that does not come: "stalled", unless its oracle cannot tell.

    A connection judged by its oracle's verdict is told the exchange is over
    (``finish``): only a FAIL then blames the server; a PASS, or a verdict
    still PENDING, shows that the oracle could not tell that the reply was
    complete, and the run ends unjudged (:meth:`~conformance.load.tally.Tally.cannot_judge`).
    """
    judge = client.judge
    if judge is not None:
        verdict = judge.finish()
        if not verdict.failed:
            driver.tally.cannot_judge(client, verdict.status)
            return
        detail = f"{detail}; told the exchange was over, the oracle says: {verdict.reason}"
    driver.tally.error("stalled", client, detail, offset=client.verified)


def progress_time(driver: Driver, client: Client) -> float:
    """When ``client`` last made progress (ping-pong: when its round began)."""
    if driver.stream or client.state is _SLOW_READER:
        return client.last_progress
    return max(client.last_progress, client.sent_at / 1e9)


def settle(driver: Driver, fast_bytes: int) -> int:
    """Fold into the result what the loop batched: latencies and verified bytes.

    Args:
        driver: The driver whose result gets them.
        fast_bytes: Bytes the fast path verified since the last call.

    Returns:
        0, the fast path's new count.
    """
    latencies = driver.latencies
    if latencies:
        driver.result.latency.record_many(latencies)
        driver.result.round_trips += len(latencies)
        latencies.clear()
    driver.result.bytes_verified += fast_bytes
    return 0


def run(driver: Driver, on_progress: Callable[[int, int], None] | None) -> LoadResult:
    """Drive the connections until the time or the rounds are up, then drain.

    Args:
        driver: The load process's driver, its connections open.
        on_progress: Called at each housekeeping tick with (round trips, bytes).

    Returns:
        This process's result (``server_alive`` left unset).
    """
    if driver.tally.halted or not driver.clients:
        return finish(driver, 0)  # The connecting phase ended the run, or opened nothing.
    try:
        fast_bytes = _drive(driver, on_progress)
    except OracleError as exc:
        driver.tally.oracle_failed(exc)
        if not driver.result.seconds:
            driver.result.seconds = time.monotonic() - driver.started
        fast_bytes = 0
    return finish(driver, fast_bytes)


def _drive(driver: Driver, on_progress: Callable[[int, int], None] | None) -> int:
    """:func:`run`'s loop; returns the bytes its fast path verified and did not fold in yet."""
    spec = driver.spec
    driver.storm_left = round(spec.faults.connect_storm * driver.count / spec.connections)
    driver.running = True
    start = driver.started = time.monotonic()
    end = start + spec.duration
    now_ns = time.monotonic_ns()
    for opened in list(driver.clients.values()):
        driver.start(opened, now_ns)
    next_tick = start + TICK
    drain_end = 0.0
    clients = driver.clients
    connecting = driver.connector.pending
    poll = driver.ep.poll
    latency = driver.latencies.append
    send_next = driver.send_next
    tally = driver.tally
    monotonic_ns = time.monotonic_ns
    fast_bytes = 0
    plain = driver.plain  # (every connection is ACTIVE while it holds)
    while True:
        for fd, ev in poll(TICK):
            client = clients.get(fd)
            if client is None:
                if fd in connecting:
                    driver.on_connected(fd)
                continue
            if plain and ev == _IN:
                # The fast path: a whole reply in one read, one compare.
                try:
                    data = client.sock.recv(len(client.expect) or 4096)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError as exc:
                    driver.io_error(client, exc)
                    continue
                if data == client.expect and client.out is None and data:
                    now_ns = monotonic_ns()
                    latency((now_ns - client.sent_at) // 1000)
                    n = len(data)
                    fast_bytes += n
                    client.verified += n
                    client.rounds += 1
                    client.expect = b""
                    send_next(client, now_ns)
                else:
                    driver.on_data(client, data)
                continue
            if ev & _OUT and client.events & _OUT:
                driver.on_writable(client)
                if client.state is _CLOSED:  # (its fd may already serve a new connection)
                    continue
            if ev & (_IN | _ERR) and client.events & _IN:
                driver.on_readable(client)
        now = time.monotonic()
        if now >= next_tick:
            next_tick = now + TICK
            fast_bytes = settle(driver, fast_bytes)
            housekeeping(driver, now)
            if on_progress is not None:
                on_progress(driver.result.round_trips, driver.result.bytes_verified)
            tally.stop_requested()
        if not driver.draining:
            done_counting = (
                spec.rounds is not None
                and not connecting
                and all(c.state is _IDLE for c in clients.values())
            )
            if now >= end or done_counting:
                driver.draining = True
                driver.plain = plain = False
                driver.result.seconds = now - start
                # The next tick would add them after the clock stopped.
                fast_bytes = settle(driver, fast_bytes)
                drain_end = now + spec.drain_timeout
                driver.connector.close_all()
        if tally.halted:
            if not driver.result.seconds:
                driver.result.seconds = now - start
            break
        if driver.draining:
            # A paused slow reader is owed its round even when nothing comes back (discard).
            owed = [
                c
                for c in clients.values()
                if c.owes() or c.out is not None or c.state is _SLOW_READER
            ]
            if not owed:
                break
            if now >= drain_end:
                for late in owed:
                    stalled(driver, late, f"{late.owed_words()} when the run ended")
                break
    return fast_bytes


def finish(driver: Driver, fast_bytes: int) -> LoadResult:
    """End the run: fold in what the loop batched, close every socket and the epoll.

    Returns:
        The driver's result.
    """
    settle(driver, fast_bytes)
    for left in list(driver.clients.values()):
        driver.drop(left)
    driver.connector.close_all()
    driver.ep.close()
    return driver.result
