"""Faults injected while the load runs, so that the server must cope with them.

How this works
--------------
``--faults reset=1%,half-close=1%,slow-reader=1%,connect-storm=500``: after
each round trip the driver calls :func:`inject_after_round`, which rolls once
and may strike that connection:

- *reset*: send a burst, then close with RST before reading the replies;
- *half-close*: send the next message, ``shutdown(SHUT_WR)`` (over TLS 1.3,
  ``close_notify`` first; TLS 1.2 has no half-close, RFC 5246 §7.2.1, so
  there the fault is skipped and counted as such in ``observed``), and
  expect the whole reply; the connection is then replaced;
- *slow reader*: send a burst and stop reading the socket for a while, so that the server
  must hold or pause; reading resumes at a housekeeping tick.

A reset or half-closed connection is replaced by a new one. :func:`storm`,
called at each tick, opens and at once closes a share of the ``connect-storm``
connections, spread over the run; its connects, like every other, never wait
(:mod:`conformance.load.connector`), and no more than ``CONNECT_BATCH`` are
under way at once. The other connections must stay byte-exact.

A fault acts on a connection only while the driver still has it: a send that
fails drops the connection (``CLOSED``), and the fault stops there. The faults
see the driver through :class:`FaultedDriver` alone, so this module does not
import the driver that imports it.
"""

from __future__ import annotations

import random
import select
import time
from typing import Protocol

from conformance.load.client import Client, ClientEvent, ClientState
from conformance.load.connector import CONNECT_BATCH, Connector
from conformance.load.result import LoadResult
from conformance.load.spec import LoadSpec

__all__ = [
    "HALF_CLOSE_SKIPPED",
    "FaultedDriver",
    "inject_after_round",
    "resume_slow_reader",
    "storm",
    "TICK",
]

TICK = 0.1  # seconds between housekeeping passes (progress, stalls, faults)
_SLOW_PAUSE = 0.2  # seconds a slow reader stops reading
_SLOW_BURST = 256 * 1024  # bytes a slow reader sends before it stops reading
_RESET_BURST = 65536  # bytes sent just before a reset
#: What ``observed`` counts a half-close under that the connection could not make
#: (TLS 1.2 has none: RFC 5246 §7.2.1); the connection goes on instead.
HALF_CLOSE_SKIPPED = "half-close-skipped-tls-1.2"


class FaultedDriver(Protocol):
    """What a fault needs of the driver (:class:`conformance.load.driver.Driver`)."""

    spec: LoadSpec
    rng: random.Random
    result: LoadResult
    connector: Connector
    #: Storm connects not started yet.
    storm_left: int

    def connect(self, deadline: float, *, storm: bool = False) -> None:
        """Start one connect (a storm's is closed as soon as it opens)."""
        ...

    def replace(self, client: Client, *, rst: bool = False) -> None:
        """Drop ``client`` (with RST) and, unless the run is draining, connect a new one."""
        ...

    def set_events(self, client: Client, events: int) -> None:
        """Watch ``client`` for ``events`` (epoll flags)."""
        ...

    def send_next(self, client: Client, now_ns: int) -> None:
        """Start ``client``'s next round: send its next message."""
        ...

    def await_writable(self, client: Client) -> None:
        """Nothing owed, nothing queued: let the next write readiness move ``client`` on."""
        ...

    def io_error(self, client: Client, exc: OSError) -> None:
        """``client``'s socket failed with ``exc``: record the error, replace the connection."""
        ...

    def send_now(self, client: Client, data: bytes) -> None:
        """Send what the socket takes of ``data`` now; drop the rest, and errors."""
        ...

    def no_half_close(self, client: Client) -> str | None:
        """Why ``client`` cannot half-close; None: it can."""
        ...

    def shutdown_write(self, client: Client) -> None:
        """Half-close ``client`` (over TLS: its close_notify, then its FIN)."""
        ...


def inject_after_round(driver: FaultedDriver, client: Client, now_ns: int) -> bool:
    """Maybe strike ``client`` (ACTIVE, between rounds) with one fault.

    Args:
        driver: The driver that owns ``client``.
        client: A connection whose round just completed.
        now_ns: ``time.monotonic_ns()`` at the end of the round.

    Returns:
        True when a fault was injected (the fault started the next round or
        ended the connection); False when the driver should just go on.
    """
    faults = driver.spec.faults
    roll = driver.rng.random()
    if roll < faults.reset:
        _reset(driver, client)
        return True
    roll -= faults.reset
    if roll < faults.half_close:
        _half_close(driver, client, now_ns)
        return True
    roll -= faults.half_close
    if roll < faults.slow_reader:
        _slow_reader(driver, client, now_ns)
        return True
    return False


def _reset(driver: FaultedDriver, client: Client) -> None:
    driver.result.injected["reset"] += 1
    size = driver.spec.size
    burst = client.pattern[:size] * max(1, _RESET_BURST // size)
    driver.send_now(client, burst)  # Replies queued at the server when the RST lands.
    driver.replace(client, rst=True)


def _half_close(driver: FaultedDriver, client: Client, now_ns: int) -> None:
    if driver.no_half_close(client) is not None:  # TLS 1.2: no half-close to inject.
        driver.result.observed[HALF_CLOSE_SKIPPED] += 1
        driver.send_next(client, now_ns)
        return
    driver.result.injected["half-close"] += 1
    driver.send_next(client, now_ns)
    if client.state is ClientState.CLOSED:  # The send failed: the driver dropped it.
        return
    client.measured = False
    if client.out is not None:  # Rare: a message larger than the socket takes; stay ACTIVE.
        return
    client.advance(ClientEvent.HALF_CLOSE)
    try:
        driver.shutdown_write(client)
    except OSError as exc:
        driver.io_error(client, exc)


def _slow_reader(driver: FaultedDriver, client: Client, now_ns: int) -> None:
    driver.result.injected["slow-reader"] += 1
    for _ in range(max(16, _SLOW_BURST // driver.spec.size)):
        driver.send_next(client, now_ns)
        if client.state is ClientState.CLOSED:  # The send failed: the driver dropped it.
            return
        client.rounds += 1
    client.rounds -= 1  # the round that completes the burst counts it
    client.measured = False
    client.advance(ClientEvent.PAUSE_READING)
    client.resume_at = time.monotonic() + _SLOW_PAUSE
    driver.set_events(client, client.events & ~select.EPOLLIN)


def resume_slow_reader(driver: FaultedDriver, client: Client, now: float) -> bool:
    """At a tick: let a slow reader whose pause is over read again.

    Returns:
        True when ``client`` was paused and now reads again.
    """
    if client.events & select.EPOLLIN or now < client.resume_at:
        return False
    driver.set_events(client, client.events | select.EPOLLIN)
    client.last_progress = now
    if not client.owes():  # Nothing owed (discard): the round ends at write readiness.
        driver.await_writable(client)
    return True


def storm(driver: FaultedDriver) -> None:
    """At a tick: start this tick's share of the storm's connects (each closed once open)."""
    spec = driver.spec
    per_tick = max(1, int(spec.faults.connect_storm * TICK / spec.duration) + 1)
    room = CONNECT_BATCH - len(driver.connector.pending)
    deadline = time.monotonic() + spec.connect_timeout
    for _ in range(min(per_tick, driver.storm_left, room)):
        driver.storm_left -= 1
        driver.result.injected["connect-storm"] += 1
        driver.connect(deadline, storm=True)
