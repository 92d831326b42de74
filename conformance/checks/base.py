"""What a check is, and how one runs against a target.

How this works
--------------
A :class:`Check` is data: a stable ID, a title, a category, a requirement
level (:class:`Level`, RFC 2119), the spec text it rests on, and a body, an
async function that drives a :class:`~conformance.harness.Harness`. The body
returns when the server behaved, and raises
:class:`~conformance.harness.CheckFailure` (a timeout, a wrong byte, a reset)
when it did not.

:func:`run_check` runs one body under the check's own deadline in a fresh
``trio.run``; for a *fault* check (one that hurts the server: resets, storms)
it then runs the liveness step: a fresh connection must still be served. It
returns an :class:`Outcome` whose report, for a failure, is a bug report
(:mod:`conformance.reports.failure`).

A body that must run blocking code (the load generator, a Hypothesis
search) runs it with :func:`run_in_thread`: trio cannot interrupt a thread,
so at the check's deadline the thread is abandoned and told to stop through a
``threading.Event`` it polls; the check ends on time, and the thread soon after.

The catalogue itself is assembled in :mod:`conformance.checks`.
"""

from __future__ import annotations

import inspect
import threading
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import trio

from conformance.harness import CheckFailure, Harness, StepTimeout
from conformance.protocols import Capability, EchoModel, ProtocolModel, skip_reason
from conformance.reports.failure import FailureReport
from conformance.rules import HALFCLOSE_CLOSE, HALFCLOSE_DATA, Level, Rule
from conformance.run.profiles import DEFAULT, Profile
from conformance.run.stopping import run_trio
from conformance.targets.target import Address
from conformance.tls import TlsSettings
from conformance.transcript import NotMeasurable

__all__ = [
    "KIB",
    "MIB",
    "RFC862",
    "RFC9293_CLOSE",
    "RFC9293_FLOW",
    "RFC9293_RESET",
    "first_failure",
    "Check",
    "CheckBody",
    "Level",
    "Outcome",
    "Setup",
    "liveness",
    "replay_check",
    "run_check",
    "run_in_thread",
    "short_stack",
]

T = TypeVar("T")
_E = TypeVar("_E", bound=BaseException)


#: The texts the checks rest on, and the sizes they use (one place for all sections).
RFC862 = "RFC 862"
RFC9293_CLOSE = "RFC 9293 §3.6 (closing a connection)"
RFC9293_RESET = "RFC 9293 §3.5.2 (reset processing)"
RFC9293_FLOW = "RFC 9293 §3.8.6 (window management)"
KIB = 1024
MIB = 1024 * KIB


#: The body of a check: drives the harness, raises CheckFailure on a failure.
CheckBody = Callable[[Harness], Awaitable[None]]


_STRICTNESS = {Level.MUST: 0, Level.SHOULD: 1, Level.MAY: 2}


@dataclass(frozen=True)
class Check:
    """One entry of the catalogue.

    Attributes:
        id: Stable identifier, ``ECHO-BASIC-1`` style.
        title: What a passing server does, in one line.
        category: A group of related checks (``--category``).
        level: MUST, SHOULD or MAY. Only MUST fails a run unless ``--strict``.
        spec: The text it rests on, for example ``RFC 862``.
        body: The scenario.
        fault: The check hurts the server; liveness is checked after it.
        heavy: Large or many connections, or steps with short deadlines that
            a storm beside them would break (the property checks); heavy
            checks do not run at once under xdist (one ``xdist_group``, and
            a lock per target).
        timeout: Seconds for the whole check, liveness included (a search's
            come from the run's profile instead: :meth:`deadline`).
        needs_replies: What it checks rests on the server's replies (load
            round trips, replies piling up): under a model that promises none
            (discard, an oracle that owes none), it does not apply and is
            SKIPPED with the model's reason.
        rules: The rules (:mod:`conformance.rules`) it judges besides its own
            level: a failure that names one of them is judged at that rule's
            level. ``level`` is then the strictest of them.
        any_bytes: It sends bytes of its own choosing (every byte value, a
            NUL, half a line), which only a protocol whose every byte string
            is a request can answer (echo, discard); False: it sends the run's
            protocol's requests (``Harness.payload``, ``Harness.message``), so
            it runs under any model.
        searches: A property check: it searches for a failing scenario, under
            the profile's deadline.
    """

    id: str
    title: str
    category: str
    level: Level
    spec: str
    body: CheckBody
    fault: bool = False
    heavy: bool = False
    timeout: float = 10.0
    needs_replies: bool = False
    rules: tuple[Rule, ...] = ()
    any_bytes: bool = True
    searches: bool = False

    def deadline(self, profile: Profile) -> float:
        """Seconds the check may take under ``profile``: a search's are the profile's."""
        return profile.check_seconds if self.searches else self.timeout

    @property
    def needs(self) -> frozenset[Capability]:
        """What the run's protocol model must promise for this check to apply."""
        needs = set()
        if self.any_bytes:
            needs.add(Capability.ANY_BYTES)
        if self.needs_replies:
            needs.add(Capability.REPLIES)
        if any(rule in (HALFCLOSE_DATA, HALFCLOSE_CLOSE) for rule in self.rules):
            needs.add(Capability.HALF_CLOSE)
        return frozenset(needs)

    def __post_init__(self) -> None:
        strictest = min((_STRICTNESS[r.level] for r in self.rules), default=None)
        if strictest is not None and _STRICTNESS[self.level] != strictest:
            raise ValueError(f"{self.id}: its level must be the strictest of its rules'")

    @property
    def line(self) -> str:
        """The check in one line: ID, level, category, spec, title (a report's first line)."""
        return self.line_for(None)

    def line_for(self, rule: Rule | None) -> str:
        """:attr:`line` for a failure of ``rule``: its level and ID instead of the check's."""
        level = self.level.value if rule is None else f"{rule.level.value} {rule.id}"
        return f"{self.id} ({level}, {self.category}; {self.spec}): {self.title}"


@dataclass(frozen=True)
class Setup:
    """What every check of a run is run against.

    Attributes:
        address: The target.
        model: The protocol the server speaks and what judges it (``--protocol``,
            or the oracle ``--oracle`` names): one oracle per connection.
        replay: The command that reruns a check, without ``--checks``;
            default: ``reactor-conformance run --target ADDRESS``.
        profile: How hard the property checks search.
        scenario: A saved scenario the property checks replay instead.
        artifacts: Where checks keep what they leave (failing scenarios).
        max_connections: How many connections the server is taken to hold at
            most when its own descriptor limit cannot be read (``--max-connections``);
            None: not given.
        load_hosts: The execnet gateways the load checks run from
            (``--load-hosts``); empty: this process.
        tls: Speak TLS to the target with these settings (``--tls``); None: TCP.
    """

    address: Address
    model: ProtocolModel = field(default_factory=EchoModel)
    replay: str | None = None
    profile: Profile = DEFAULT
    scenario: Path | None = None
    artifacts: Path | None = None
    max_connections: int | None = None
    load_hosts: tuple[str, ...] = ()
    tls: TlsSettings | None = None

    def replay_command(self, check: Check) -> str:
        """The command that reruns just ``check`` against the same target."""
        return replay_check(
            self.replay or f"reactor-conformance run --target {self.address}", check
        )


def replay_check(prefix: str, check: Check) -> str:
    """``prefix`` (a command that reruns a run against one target) narrowed to ``check``."""
    return f"{prefix} --checks {check.id}"


@dataclass(frozen=True)
class Outcome:
    """The result of one check, before the run's strictness makes it a verdict.

    Attributes:
        check: The check.
        failure: None when the server behaved; else the bug report.
        duration: Seconds it took.
        error: A fault in the check's own code (not the server's doing): the
            exception and a short stack; the check measured nothing.
        unmeasured: Why part of what the check judges was not measured (the
            server's process is not visible from here); with no failure, the
            check is SKIPPED for it, not passed.
    """

    check: Check
    failure: FailureReport | None
    duration: float
    error: str | None = None
    unmeasured: str | None = None

    @property
    def passed(self) -> bool:
        """Everything the check judges was measured, and held."""
        return self.failure is None and self.error is None and self.unmeasured is None

    @property
    def report(self) -> str:
        """The bug report as text; empty for a pass."""
        return self.failure.render() if self.failure is not None else ""

    @property
    def level(self) -> Level:
        """The level of what failed: the broken rule's, else the check's own."""
        if self.failure is not None and self.failure.level is not None:
            return self.failure.level
        return self.check.level

    def fails_run(self, strict: bool) -> bool:
        """Whether this outcome fails the run: a failed MUST, or any failure when strict."""
        return self.failure is not None and (strict or self.level is Level.MUST)


LIVENESS_PAYLOAD = b"still alive?\x00\xff\r\n"


async def liveness(h: Harness, step: str = "liveness") -> None:
    """A fresh connection is still served: a short message comes back within 8 s.

    Its reply has no progress deadline of its own: a server that answers each
    new connection a few seconds late, or accepts late after a storm, is slow,
    not dead.
    """
    conn = await h.connect(step, timeout=5.0)
    await conn.send(h.message(LIVENESS_PAYLOAD), step=f"{step}: send a short message", timeout=5.0)
    await conn.settle(step=f"{step}: read its reply", timeout=8.0, watch=False)
    conn.close()


def run_check(check: Check, setup: Setup, *, timeout: float | None = None) -> Outcome:
    """Run one check against ``setup``, under the check's deadline.

    Args:
        check: The check.
        setup: The target and how to judge it.
        timeout: A shorter deadline than the check's own (what is left of a
            run's ``--timeout``).

    Returns:
        PASS, FAIL with a bug report, or an error: an exception in the
        check's own code, with a short stack.
    """
    harness = Harness(
        setup.address,
        setup.model,
        profile=setup.profile,
        scenario=setup.scenario,
        artifacts=setup.artifacts,
        max_connections=setup.max_connections,
        load_hosts=setup.load_hosts,
        tls=setup.tls,
    )
    start = time.monotonic()
    for capability in sorted(check.needs, key=lambda c: c.value):
        why = skip_reason(setup.model, capability)
        if why is not None:
            return Outcome(check, None, 0.0, unmeasured=why)
    failure: CheckFailure | None = None
    deadline = check.deadline(setup.profile)
    limit = deadline if timeout is None else max(0.0, min(timeout, deadline))
    try:
        run_trio(partial(_main, check, harness, limit))
    except Exception as exc:  # An exception group from a nursery, or one failure.
        failure = first_failure(exc)
        unmeasurable = _first(exc, NotMeasurable) if failure is None else None
        if unmeasurable is not None:
            return Outcome(check, None, time.monotonic() - start, unmeasured=str(unmeasurable))
        if failure is None:
            return Outcome(check, None, time.monotonic() - start, error=short_stack(exc))
    duration = time.monotonic() - start
    if failure is None:
        unmeasured = "; ".join(dict.fromkeys(harness.unmeasured)) or None
        return Outcome(check, None, duration, unmeasured=unmeasured)
    report = FailureReport.build(
        check_line=check.line_for(failure.rule),
        failure=failure,
        transcripts=harness.transcripts,
        replay=setup.replay_command(check),
    )
    return Outcome(check, report, duration)


async def _main(check: Check, harness: Harness, limit: float) -> None:
    harness.ends_at = time.monotonic() + limit
    try:
        with trio.fail_after(limit):
            await check.body(harness)
            if check.fault:
                await liveness(harness, "liveness after the fault")
    except trio.TooSlowError:
        raise StepTimeout(
            f"the whole check did not complete within {limit:g}s",
            step=harness.current_step,
        ) from None
    finally:
        harness.close_all()


def short_stack(exc: BaseException, frames: int = 6) -> str:
    """``exc`` and the last ``frames`` frames of its stack (inside a group: its first leaf)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    lines = traceback.format_exception(type(exc), exc, exc.__traceback__, limit=-frames)
    return "".join(lines).rstrip()


def first_failure(exc: BaseException) -> CheckFailure | None:
    """The first CheckFailure in ``exc``, looking inside exception groups."""
    return _first(exc, CheckFailure)


def _first(exc: BaseException, kind: type[_E]) -> _E | None:
    """The first ``kind`` in ``exc``, looking inside exception groups."""
    if isinstance(exc, kind):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _first(inner, kind)
            if found is not None:
                return found
    return None


# trio.to_thread.run_sync's keyword for "leave the thread behind on cancellation"
# was renamed (cancellable -> abandon_on_cancel in trio 0.23).
_ABANDON = (
    "abandon_on_cancel"
    if "abandon_on_cancel" in inspect.signature(trio.to_thread.run_sync).parameters
    else "cancellable"
)


async def run_in_thread(work: Callable[[threading.Event], T]) -> T:
    """Run ``work(stop)`` on a worker thread that a cancellation leaves behind.

    ``stop`` is set as soon as this returns, raises or is cancelled (the
    check's deadline): ``work`` must look at it often (every tenth of a
    second or so) and then return at once, so that nothing it started
    outlives the check by more than that.

    Args:
        work: Blocking code that polls its ``threading.Event`` argument.

    Returns:
        What ``work`` returned.

    Raises:
        trio.Cancelled: The deadline passed; ``work`` goes on until it sees ``stop``.
    """
    stop = threading.Event()
    try:
        run_sync: Any = trio.to_thread.run_sync  # its cancel keyword changed name
        result: T = await run_sync(work, stop, **{_ABANDON: True})
        return result
    finally:
        stop.set()
