"""Load checks: the catalogue's checks that put many connections on the server at once.

Each runs :func:`conformance.load.run_load` (a raw-epoll load generator,
every byte verified) on a worker thread, under the step's deadline, and fails
with the first wrong byte, the count of errors by kind, and whether the server
still answered at the end. They are heavy checks: never two at once.

The load ends on its own within its connect deadline, duration and drain
deadline, whatever the server does (connects never wait on it); should the
check's deadline come first, the thread is left behind with its stop event
set (:func:`~conformance.checks.base.run_in_thread`) and ends within a tick.

Errors on the connections a fault struck are counted apart (their
:class:`~conformance.load.result.ErrorKey` names the fault: ``eof after
half-close``): ECHO-LOAD-3 judges the other connections by its own title, and a
half-closed connection by the half-close rule (:mod:`conformance.rules`):
what it is owed must come back. Whether the server then closes it is not
judged here (the load moves on); ECHO-HALFCLOSE-1/2/3 judge that.

Sized to run in a few seconds against the reference servers on two cores;
10,000 connections (C10K) live in ``tools/c10k.py``.

The run's model judges the load (a protocol model such as ``resp`` with its
own requests and replies; echo, discard and an oracle's model, ``--oracle``,
with random bytes and their oracle): the load processes get the model's name
and make it themselves, so every reply is judged as the harness judges one.
An oracle that raises makes the check an ERROR
(:class:`~conformance.oracle.OracleError`); one whose verdict cannot say when
a reply is complete makes it SKIPPED, with why, rather than guessed.

With ``--tls`` the load speaks TLS (:mod:`conformance.load.tls_driver`):
each connection's handshake is part of its connect, and a handshake that
fails is an error of kind ``handshake`` that fails the check with its reason.
Over TLS 1.2 the half-close fault is skipped (TLS 1.2 has no half-close, RFC
5246 §7.2.1) and counted as skipped; ECHO-LOAD-3 judges the rest.

With ``--load-hosts`` the load runs from those execnet gateways
(:func:`~conformance.load.hosts.run_hosts`), its step names them and a
failure's summary gives each host's part. A host that cannot start or does
not finish is not the server's doing: the check records it as not measured,
and is SKIPPED with that reason unless what the other hosts measured fails it.

A failure that an overflowing accept queue explains (connects that time out,
connections stalled or reset before their first byte) names the listen
backlog as its likely cause when the kernel's ``ListenOverflows`` counter
(read before the load and after it) grew and the server's listener, on this
machine, queues fewer connections than the load opens at once
(:func:`_backlog_overflowed`).
"""

from __future__ import annotations

import dataclasses
import threading
from typing import Any

from conformance.checks.base import (
    RFC862,
    RFC9293_RESET,
    Check,
    Level,
    run_in_thread,
)
from conformance.harness import CheckFailure, Harness
from conformance.load import Fault, Faults, LoadResult, LoadSpec, run_load
from conformance.load.faults import HALF_CLOSE_SKIPPED
from conformance.load.hosts import HostError, HostState, parse_hosts, run_hosts
from conformance.oracle import OracleError
from conformance.protocols import model_name
from conformance.rules import HALFCLOSE_DATA
from conformance.targets import procfs
from conformance.targets.sockdiag import listen_backlogs

__all__ = ["LOAD_CHECKS"]


def _run(h: Harness, spec: LoadSpec, stop: threading.Event) -> tuple[LoadResult, str, bool]:
    """Run the load here or from the run's load hosts: the result, its summary, its wholeness.

    A host that cannot start, or does not finish, is recorded as not
    measured (the check is then SKIPPED unless what was measured fails it).
    """
    if not h.load_hosts:
        result = run_load(spec, stop=stop)
        return result, result.summary_line(), True
    try:
        outcome = run_hosts(spec, parse_hosts(h.load_hosts), stop=stop)
    except HostError as exc:
        h.not_measured(f"the load from {', '.join(h.load_hosts)} could not start: {exc}")
        return LoadResult(spec), str(exc), False
    for host in outcome.hosts:
        if host.state is not HostState.DONE and not outcome.result.stopped:
            h.not_measured(f"the load from host {host.label} did not finish: {host.error}")
    return outcome.result, outcome.summary_line(), not outcome.partial


async def _load(h: Harness, step: str, spec: LoadSpec, timeout: float) -> LoadResult:
    # A check wants the first failure, promptly: stop at the first error, and call a
    # connection stalled after the suite's usual step deadline.
    # Over TLS (the run's --tls) every load connection speaks TLS, its handshake included.
    spec = dataclasses.replace(spec, stop_on_error=True, drain_timeout=5.0, tls=h.tls)
    try:
        spec = dataclasses.replace(spec, model=model_name(h.model))
    except ValueError as exc:  # Each load process makes the model again from its name.
        h.not_measured(f"the load cannot make the model again from its name: {exc}")
        return LoadResult(spec)
    if h.load_hosts:
        step += f", from {', '.join(h.load_hosts)}"
    overflows = procfs.listen_overflows()
    with h.step(step, timeout=timeout):
        result, summary, whole = await run_in_thread(lambda stop: _run(h, spec, stop))
    if result.oracle_error is not None:
        raise OracleError(result.oracle_error)  # The judging side's fault: an ERROR.
    if result.unjudged is not None and not result.errors:
        h.not_measured(f"the load could not be judged: {result.unjudged}")
        return result
    if not whole and not result.errors:
        return result  # Not measured (recorded): nothing to judge.
    if not result.ok:
        first = result.first_error or {}
        others = [key for key in result.errors if key.after is None]
        on_half_closed = [key for key in result.errors if key.after is Fault.HALF_CLOSE]
        # Only half-closed fault connections went wrong: that is the half-close rule's
        # business (what is owed after the FIN must come back), not the others'.
        rule = (
            HALFCLOSE_DATA
            if on_half_closed and not others and result.server_alive is not False
            else None
        )
        where = (
            f" on connection {first.get('connection')} at byte offset {first.get('offset')}"
            if first.get("offset") is not None
            else ""
        )
        detail = first.get("detail", "")
        extra = ""
        if "expected" in first:
            extra = f" (expected {first['expected']}, received {first['received']})"
        alive = "" if result.server_alive else "; the server no longer answers a new connection"
        cause = _backlog_overflowed(h, spec, first, overflows)
        raise CheckFailure(
            f"errors under load: {result.errors_by_name()}; first: {first.get('kind')}{where}: "
            f"{detail}{extra}{alive}. {cause}Load: {summary}",
            step=step,
            rule=rule,
        )
    if whole and spec.rounds is not None and result.round_trips != spec.connections * spec.rounds:
        raise CheckFailure(
            f"only {result.round_trips} of {spec.connections * spec.rounds} round trips completed",
            step="count the round trips",
        )
    return result


def _backlog_overflowed(
    h: Harness, spec: LoadSpec, first: dict[str, Any], before: int | None
) -> str:
    """A sentence naming the listen backlog as the likely cause of ``first``; else "".

    Said only when all of these hold: the first error is one a full accept
    queue causes (a connect that failed or timed out, a connection stalled or
    reset before its first byte came back); the server's listener is on this
    machine (so the counter is its kernel's) and queues fewer connections
    than the load opens at once (else its queue cannot have overflowed); and
    the system-wide ``ListenOverflows`` grew since ``before``. Other
    processes may bump that counter too, so the sentence says "on this machine".
    """
    kind, offset = first.get("kind"), first.get("offset")
    if not (kind == "connect" or (kind in ("stalled", "reset") and offset == 0)):
        return ""
    after = procfs.listen_overflows()
    if before is None or after is None or after <= before:
        return ""
    backlogs = listen_backlogs(h.address.host, h.address.port)
    at_once = spec.connections + spec.faults.connect_storm
    if not backlogs or sum(b + 1 for b in backlogs) >= at_once:  # Linux queues backlog + 1.
        return ""
    grew = after - before
    times = "once" if grew == 1 else f"{grew} times"
    listens = "a backlog of " if len(backlogs) == 1 else "backlogs of "
    return (
        f"A listen backlog overflowed {times} on this machine during this check (TcpExt "
        "ListenOverflows, which counts every listener here), and the server listens with "
        f"{listens}{', '.join(map(str, backlogs))} while this check opens {at_once} "
        "connections at once: the kernel most likely dropped connections the server did not "
        "accept in time; give it a larger backlog (listen()'s argument, capped by "
        "net.core.somaxconn). "
    )


async def many_round_trips(h: Harness) -> None:
    spec = LoadSpec(
        h.address.host, h.address.port, connections=200, rounds=200, size=64, duration=35.0
    )
    await _load(h, "200 connections x 200 round trips, every byte checked", spec, 40)


async def thousand_connections(h: Harness) -> None:
    spec = LoadSpec(
        h.address.host,
        h.address.port,
        connections=1000,
        rounds=5,
        size=128,
        duration=35.0,
        connect_timeout=10.0,
    )
    await _load(h, "1000 concurrent connections x 5 round trips", spec, 40)


async def faults_under_load(h: Harness) -> None:
    faults = Faults(reset=0.02, half_close=0.02, slow_reader=0.005, connect_storm=300)
    spec = LoadSpec(
        h.address.host, h.address.port, connections=100, size=256, duration=3.0, faults=faults
    )
    result = await _load(
        h, "100 connections for 3s with resets, half-closes, slow readers, a storm", spec, 30
    )
    # TLS 1.2 has no half-close (RFC 5246 §7.2.1): there the load skips that fault.
    no_half_close = result.observed[HALF_CLOSE_SKIPPED] > 0
    missing = [
        kind
        for kind in ("reset", "half-close", "connect-storm")
        if not result.injected[kind] and not (kind == "half-close" and no_half_close)
    ]
    if missing and not h.unmeasured:
        raise CheckFailure(
            f"the load never got to inject {', '.join(missing)} "
            f"(only {result.round_trips} round trips in 3s)",
            step="inject faults during the load",
        )


LOAD_CHECKS: tuple[Check, ...] = (
    Check("ECHO-LOAD-1", "200 connections x 200 round trips under load, every byte exact",
          "load", Level.MUST, RFC862, many_round_trips, heavy=True, timeout=45.0,
          needs_replies=True, any_bytes=False),
    Check("ECHO-LOAD-2", "1,000 concurrent connections held and served, every byte exact",
          "load", Level.SHOULD, RFC862, thousand_connections, heavy=True, timeout=45.0,
          needs_replies=True, any_bytes=False),
    Check("ECHO-LOAD-3", "Resets, half-closes, slow readers and a connect storm during load "
          "leave every other connection exact and the server serving; a half-closed "
          "connection still gets all it is owed", "load", Level.MUST, RFC9293_RESET,
          faults_under_load, fault=True, heavy=True, timeout=35.0, needs_replies=True,
          rules=(HALFCLOSE_DATA,), any_bytes=False),
)  # fmt: skip
