"""Property checks: Hypothesis generates scenarios, trio runs them, the oracle judges.

How this works
--------------
A property check searches for a scenario (:mod:`conformance.scenario`) on which
the server breaks a property, for example "every connection gets back exactly
its own bytes, in order". Hypothesis draws scenarios from
:mod:`conformance.strategies`; each one is run by :func:`interpret` in a fresh
:class:`~conformance.harness.Harness` (every step under a deadline; no verdict
depends on time otherwise) and judged by the oracle, connection by connection.
When one fails, Hypothesis shrinks it to a minimal scenario, which the report
prints as steps, with the Hypothesis reproduction blob, and saves as JSON: the
check replays exactly that scenario when ``--scenario FILE`` is given.

The search runs on a worker thread with its own ``trio.run`` per example,
since the check itself already runs inside trio.

The run's :class:`~conformance.profiles.Profile` sizes the search, and a
scenario saved by an earlier run (``--scenario FILE``) replaces it; both come
with the harness the check runs in (``Harness.profile``,
``Harness.scenario``), from the run plan.
"""

from __future__ import annotations

import hashlib
import inspect
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Flaky, InvalidArgument

from conformance.checks import Check, Level, first_failure, liveness
from conformance.harness import CheckFailure, Connection, Divergence, Harness
from conformance.profiles import PROFILES, Limits
from conformance.scenario import (
    HalfClose,
    Pause,
    Read,
    Reconnect,
    Reset,
    Scenario,
    Script,
    Send,
    StopReading,
    describe,
    from_json,
    to_json,
)
from conformance.strategies import (
    backpressure_scenarios,
    concurrent_scenarios,
    scenarios,
)

__all__ = [
    "PROPERTY_CHECKS",
    "interpret",
]


def _register_profiles() -> None:
    """Make ``--hypothesis-profile ci|thorough`` known to Hypothesis, unless already defined."""
    for name in ("ci", "thorough"):
        try:
            settings.get_profile(name)
        except InvalidArgument:
            settings.register_profile(name, **PROFILES[name].hypothesis_settings())


_register_profiles()

# -- the interpreter -------------------------------------------------------------------------


class _Runner:
    """Runs one connection's script, with a reader beside it."""

    def __init__(self, h: Harness, name: str, script: Script) -> None:
        self.h = h
        self.name = name
        self.script = script
        self.read_size = 65536
        self.resume_at = 0.0
        self.reader_scope: trio.CancelScope | None = None
        self.recv_scope: trio.CancelScope | None = None
        self.reader_done = trio.Event()
        self.count = 0

    async def run(self) -> None:
        conn = await self.h.connect(self.name, rcvbuf=self.script.rcvbuf)
        half_closed = False
        async with trio.open_nursery() as nursery:
            await self._start_reader(nursery, conn)
            for n, step in enumerate(self.script.steps, 1):
                where = f"{self.name} step {n}"
                match step:
                    case Send(data, chunks):
                        await conn.send(data, chunks=chunks or None, step=f"{where}: send")
                    case Pause(seconds):
                        await trio.sleep(seconds)
                    case Read(size):
                        self.read_size = size
                    case StopReading(seconds):
                        self.resume_at = trio.current_time() + seconds
                        if self.recv_scope is not None:
                            self.recv_scope.cancel()
                    case Reset():
                        await self._stop_reader()
                        conn.reset()
                        return
                    case Reconnect():
                        await self._stop_reader()
                        await conn.settle(step=f"{where}: read what is owed before reconnecting")
                        conn.conclude(f"{where}: judge before reconnecting")
                        conn.close()
                        self.count += 1
                        conn = await self.h.connect(
                            f"{self.name}.{self.count}", rcvbuf=self.script.rcvbuf
                        )
                        await self._start_reader(nursery, conn)
                    case HalfClose():
                        await conn.shutdown_write()
                        half_closed = True
            await self._stop_reader()
        if half_closed:
            await conn.expect_eof(step=f"{self.name}: read the rest after the half-close, then FIN")
        else:
            # Megabytes may still be owed through a tiny window: a hang is a
            # server that stops delivering, not one that delivers slowly.
            await conn.settle(step=f"{self.name}: read what is still owed", idle=True)
            conn.conclude(f"{self.name}: judge the whole exchange")
            conn.close()

    async def _start_reader(self, nursery: trio.Nursery, conn: Connection) -> None:
        self.reader_done = trio.Event()
        self.reader_scope = trio.CancelScope()
        nursery.start_soon(self._read, conn, self.reader_scope, self.reader_done)

    async def _stop_reader(self) -> None:
        if self.reader_scope is not None:
            self.reader_scope.cancel()
            await self.reader_done.wait()
            self.reader_scope = None

    async def _read(self, conn: Connection, scope: trio.CancelScope, done: trio.Event) -> None:
        try:
            with scope:
                while True:
                    if self.resume_at > trio.current_time():
                        await trio.sleep_until(self.resume_at)
                    with trio.CancelScope() as recv_scope:
                        self.recv_scope = recv_scope
                        data = await conn.recv_some(self.read_size)
                    self.recv_scope = None
                    if recv_scope.cancelled_caught:
                        continue
                    verdict = conn.oracle.verdict()
                    if verdict.failed:
                        raise Divergence(
                            verdict.reason,
                            step=f"{self.name}: read while sending",
                            transcript=conn.transcript,
                            verdict=verdict,
                        )
                    if not data:
                        return  # FIN or RST: the final judgement says whether it was owed.
        finally:
            done.set()


async def interpret(h: Harness, scenario: Scenario, *, check_liveness: bool = False) -> None:
    """Run ``scenario`` against ``h``'s target; raise CheckFailure on the first failure."""
    async with trio.open_nursery() as nursery:
        for i, script in enumerate(scenario.connections, 1):
            nursery.start_soon(_Runner(h, f"c{i}", script).run)
    if check_liveness:
        await liveness(h, "liveness after the scenario")


# -- searching -------------------------------------------------------------------------------


class _Abandoned(BaseException):
    """The check's deadline passed: stop searching at once (no shrinking)."""


_EXAMPLE_TIMEOUT = 60.0


def _fresh(template: Harness) -> Harness:
    return Harness(
        template.address,
        template.oracle_factory,
        server_pid=template.server_pid,
        step_timeout=template.profile.step_timeout,
        profile=template.profile,
    )


def _run_example(h: Harness, scenario: Scenario, check_liveness: bool) -> None:
    """Run one scenario in its own ``trio.run``; raise its first CheckFailure."""

    async def main() -> None:
        try:
            with trio.fail_after(_EXAMPLE_TIMEOUT):
                await interpret(h, scenario, check_liveness=check_liveness)
        except trio.TooSlowError:
            raise CheckFailure(
                f"the scenario did not complete within {_EXAMPLE_TIMEOUT:g}s",
                step=h.current_step,
            ) from None
        finally:
            h.close_all()

    try:
        trio.run(main)
    except BaseExceptionGroup as group:
        found = first_failure(group)
        if found is None:
            raise
        raise found from None


def _save(scenario: Scenario) -> Path:
    text = to_json(scenario)
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    folder = Path(tempfile.gettempdir()) / "reactor-conformance"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"scenario-{digest}.json"
    path.write_text(text)
    return path


def _failure_report(
    scenario: Scenario, failure: CheckFailure, blob: str, outer: Harness, example: Harness
) -> CheckFailure:
    path = _save(scenario)
    outer.transcripts.extend(example.transcripts)
    lines = [
        f"{failure.message}",
        f"minimal scenario ({len(scenario.connections)} connections, "
        f"{sum(len(s.steps) for s in scenario.connections)} steps, "
        f"{scenario.bytes_sent} bytes sent):",
        describe(scenario),
        f"saved as {path}; add '--scenario {path}' to the replay command to replay exactly it",
    ]
    if blob:
        lines.append(blob)
    return CheckFailure(
        "\n".join(lines), step=failure.step, transcript=failure.transcript, verdict=failure.verdict
    )


def _search(
    outer: Harness,
    strategy: st.SearchStrategy[Scenario],
    check_liveness: bool,
    stop: threading.Event,
    max_examples: int | None = None,
) -> None:
    """Search for a failing scenario (or replay the saved one); raise CheckFailure if found.

    ``max_examples`` caps the profile's number of examples (for costly scenarios).
    """
    saved = outer.scenario
    profile = outer.profile
    if saved is not None:
        scenario = from_json(Path(saved).read_text())
        example = _fresh(outer)
        try:
            _run_example(example, scenario, check_liveness)
        except CheckFailure as failure:
            raise _failure_report(scenario, failure, "", outer, example) from None
        return

    failures: list[tuple[Scenario, CheckFailure, Harness]] = []
    shrink_until: list[float] = []

    @settings(
        deadline=None,
        database=None,
        print_blob=True,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
        **{
            **profile.hypothesis_settings(),
            "max_examples": min(profile.max_examples, max_examples or 10**6),
        },
    )
    @given(strategy)
    def holds(scenario: Scenario) -> None:
        if stop.is_set():
            raise _Abandoned
        if shrink_until and time.monotonic() > shrink_until[0]:
            # Shrinking has had its time: let every further candidate pass, so
            # Hypothesis ends with the smallest failing scenario found so far.
            return
        example = _fresh(outer)
        try:
            _run_example(example, scenario, check_liveness)
        except CheckFailure as failure:
            failures.append((scenario, failure, example))
            if not shrink_until:
                shrink_until.append(time.monotonic() + profile.shrink_seconds)
            raise

    try:
        holds()
    except _Abandoned:
        raise
    except Exception as exc:
        if not failures:
            raise
        minimal, first, where = failures[-1]
        notes = getattr(exc, "__notes__", [])
        blob = "\n".join(n for n in notes if "reproduce_failure" in n or "@seed" in n)
        if not blob and isinstance(exc, Flaky):
            blob = (
                "Hypothesis saw this scenario fail, then pass on a rerun: the failure "
                "depends on timing; the saved scenario replays it (it may take a few tries)"
            )
        elif not blob and shrink_until and time.monotonic() > shrink_until[0]:
            blob = (
                f"shrinking stopped after {profile.shrink_seconds:g}s (profile "
                f"{profile.name}): this is the smallest failing scenario found by then; "
                "the saved scenario replays it exactly"
            )
        raise _failure_report(minimal, first, blob, outer, where) from None


_ABANDON = (
    "abandon_on_cancel"
    if "abandon_on_cancel" in inspect.signature(trio.to_thread.run_sync).parameters
    else "cancellable"
)


def _property(
    strategy: Callable[[Limits], st.SearchStrategy[Scenario]],
    *,
    check_liveness: bool = False,
    max_examples: int | None = None,
) -> Callable[[Harness], Any]:
    async def body(h: Harness) -> None:
        stop = threading.Event()
        try:
            run_sync: Any = trio.to_thread.run_sync  # its cancel keyword changed name
            await run_sync(
                _search,
                h,
                strategy(h.profile.limits),
                check_liveness,
                stop,
                max_examples,
                **{_ABANDON: True},
            )
        finally:
            stop.set()  # When the check's deadline abandoned the search thread.

    return body


def _echo_scenarios(lim: Limits) -> st.SearchStrategy[Scenario]:
    return scenarios(limits=lim)


def _reset_scenarios(lim: Limits) -> st.SearchStrategy[Scenario]:
    return scenarios(limits=lim, reset=True).filter(
        lambda s: any(isinstance(step, Reset) for c in s.connections for step in c.steps)
    )


def _concurrent_scenarios(lim: Limits) -> st.SearchStrategy[Scenario]:
    return concurrent_scenarios(limits=lim)


def _backpressure_scenarios(lim: Limits) -> st.SearchStrategy[Scenario]:
    return backpressure_scenarios()


def _half_close_scenarios(lim: Limits) -> st.SearchStrategy[Scenario]:
    return scenarios(limits=lim, half_close=True).filter(
        lambda s: any(isinstance(step, HalfClose) for c in s.connections for step in c.steps)
    )


RFC862 = "RFC 862"
RFC9293_RESET = "RFC 9293 §3.5.2 (reset processing)"
RFC9293_CLOSE = "RFC 9293 §3.6 (closing a connection)"
RFC9293_FLOW = "RFC 9293 §3.8.6 (window management)"

PROPERTY_CHECKS: tuple[Check, ...] = (
    Check("PROP-ECHO-1", "For any scenario of sends, pauses, reads, stalled readers and "
          "reconnects, every connection gets back exactly its own bytes, in order",
          "property", Level.MUST, RFC862, _property(_echo_scenarios), timeout=240.0),
    Check("PROP-CONCURRENT-1", "For any set of connections sending bursts in small writes "
          "while reading, each gets back exactly its own bytes, in order", "property",
          Level.MUST, RFC862, _property(_concurrent_scenarios), timeout=240.0),
    Check("PROP-BACKPRESSURE-1", "For any bulk send from clients with a tiny window that stop "
          "reading for a while (the server's send returns short), every byte comes back",
          "property", Level.MUST, RFC9293_FLOW,
          _property(_backpressure_scenarios, max_examples=4), timeout=240.0),
    Check("PROP-ALIVE-1", "For any scenario in which clients reset mid-stream, the others get "
          "their bytes and a fresh connection is served afterwards", "property", Level.MUST,
          RFC9293_RESET, _property(_reset_scenarios, check_liveness=True), fault=True,
          timeout=240.0),
    Check("PROP-HALFCLOSE-1", "For any scenario ending in half-closes, each half-closed "
          "connection gets all it is owed, then FIN", "property", Level.SHOULD, RFC9293_CLOSE,
          _property(_half_close_scenarios), timeout=240.0),
)  # fmt: skip
