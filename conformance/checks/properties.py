"""Property checks: Hypothesis generates scenarios, trio runs them, the oracle judges.

How this works
--------------
A property check searches for a scenario (:mod:`conformance.properties.scenario`) on which
the server breaks a property, for example "every connection gets back exactly
its own bytes, in order". Hypothesis draws scenarios from
:mod:`conformance.properties.strategies`; each one is run by :func:`interpret` in a fresh
:class:`~conformance.harness.Harness` (every step under a deadline; no verdict
depends on time otherwise) and judged by the oracle, connection by connection.
When one fails, Hypothesis shrinks it to a minimal scenario, which the report
prints as steps, with the Hypothesis reproduction blob, and saves as JSON: the
check replays exactly that scenario when ``--scenario FILE`` is given.

Property checks are *heavy*: their steps have short deadlines (the
profile's), so they never run beside the storms and the load checks, which
keep a server (socat's fork per connection, for one) busy for seconds.

The search runs on a worker thread with its own ``trio.run`` per example,
since the check itself already runs inside trio.

The run's :class:`~conformance.run.profiles.Profile` sizes the search, and a
scenario saved by an earlier run (``--scenario FILE``) replaces it; both come
with the harness the check runs in (``Harness.profile``,
``Harness.scenario``), from the run plan.
"""

from __future__ import annotations

import hashlib
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
from hypothesis.reporting import with_reporter

from conformance.checks.base import (
    RFC862,
    RFC9293_CLOSE,
    RFC9293_FLOW,
    RFC9293_RESET,
    Check,
    Level,
    first_failure,
    run_in_thread,
)
from conformance.checks.core import HALF_CLOSE
from conformance.harness import CheckFailure, Harness, StepTimeout
from conformance.properties.interpreter import interpret
from conformance.properties.scenario import (
    HalfClose,
    Reset,
    Scenario,
    describe,
    read_saved,
    to_json,
)
from conformance.properties.strategies import (
    backpressure_scenarios,
    concurrent_scenarios,
    scenarios,
)
from conformance.protocols import ProtocolModel
from conformance.run.profiles import PROFILES, Limits
from conformance.run.stopping import run_trio

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

# -- searching -------------------------------------------------------------------------------


class _Abandoned(BaseException):
    """The check's deadline passed: stop searching at once (no shrinking)."""


class _Found(BaseException):
    """Stop shrinking: the smallest failing scenario found so far is the one reported."""


class _SearchedOut(BaseException):
    """The search's share of the check's deadline is spent, with no failure found."""


#: Seconds one scenario may take at most (less when the check's deadline is nearer).
_EXAMPLE_TIMEOUT = 60.0
#: Seconds kept at the end of a property check's deadline, to report what it found.
_MARGIN = 2.0
#: Scenarios a search must have run, when its time is up, for a pass to mean something.
_MIN_EXAMPLES = 5


def _fresh(template: Harness) -> Harness:
    """A harness for one scenario; what it cannot measure is the check's (``template``'s)."""
    fresh = Harness(
        template.address,
        template.model,
        step_timeout=template.profile.step_timeout,
        profile=template.profile,
        artifacts=template.artifacts,
        max_connections=template.max_connections,
        load_hosts=template.load_hosts,
        tls=template.tls,
    )
    fresh.unmeasured = template.unmeasured
    return fresh


def _run_example(
    h: Harness, scenario: Scenario, check_liveness: bool, seconds: float = _EXAMPLE_TIMEOUT
) -> None:
    """Run one scenario in its own ``trio.run``, within ``seconds``; raise its first CheckFailure.

    Raises:
        CheckFailure: The server failed the scenario.
        StepTimeout: The whole scenario did not complete within ``seconds``.
    """

    async def main() -> None:
        try:
            with trio.fail_after(seconds):
                await interpret(h, scenario, check_liveness=check_liveness)
        except trio.TooSlowError:
            raise StepTimeout(
                f"liveness: the scenario did not complete within {seconds:g}s",
                step=h.current_step,
            ) from None
        finally:
            h.close_all()

    try:
        run_trio(main)
    except BaseExceptionGroup as group:
        found = first_failure(group)
        if found is None:
            raise
        raise found from None


def _save(scenario: Scenario, folder: Path | None, check: str) -> Path:
    text = to_json(scenario, check=check)
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    if folder is None:
        folder = Path(tempfile.gettempdir()) / "reactor-conformance"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"scenario-{digest}.json"
    path.write_text(text)
    return path


def _failure_report(
    scenario: Scenario,
    failure: CheckFailure,
    blob: str,
    outer: Harness,
    example: Harness,
    check: str,
) -> CheckFailure:
    path = _save(scenario, outer.artifacts, check)
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
    return type(failure)(
        "\n".join(lines),
        step=failure.step,
        transcript=failure.transcript,
        verdict=failure.verdict,
        rule=failure.rule,
    )


def _search(
    outer: Harness,
    strategy: st.SearchStrategy[Scenario],
    check_liveness: bool,
    stop: threading.Event,
    max_examples: int | None = None,
    *,
    check: str,
) -> None:
    """Search for a failing scenario (or replay the saved one); raise CheckFailure if found.

    ``max_examples`` caps the profile's number of examples (for costly scenarios);
    ``check`` is the check's ID, saved with a failing scenario. A saved scenario is
    replayed only by the check it was saved from: another check is SKIPPED, with why.
    """
    saved = outer.scenario
    profile = outer.profile
    if saved is not None:
        replay = read_saved(Path(saved).read_text())  # (checked when the run was planned)
        why = replay.skip_reason(check, saved)
        if why is not None:
            outer.not_measured(why)
            return
        scenario = replay.scenario
        example = _fresh(outer)
        seconds = min(_EXAMPLE_TIMEOUT, outer.ends_at - _MARGIN - time.monotonic())
        try:
            _run_example(example, scenario, check_liveness, max(1.0, seconds))
        except CheckFailure as failure:
            raise _failure_report(scenario, failure, "", outer, example, check) from None
        return

    failures: list[tuple[Scenario, CheckFailure, Harness]] = []
    shrink_until: list[float] = []
    ran = 0
    # The check's deadline holds the search, then the shrinking, then the report.
    ends = outer.ends_at - _MARGIN
    reserve = min(profile.shrink_seconds, max(0.0, ends - time.monotonic()) / 3)
    search_until = ends - reserve
    limit = min(profile.max_examples, max_examples or 10**6)

    @settings(
        deadline=None,
        database=None,
        print_blob=True,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
        # One failure is reported: with several, Hypothesis raises a group that holds
        # this search's own stop signals (_Found, BaseExceptions) beside the failures.
        report_multiple_bugs=False,
        **{**profile.hypothesis_settings(), "max_examples": limit},
    )
    @given(strategy)
    def holds(scenario: Scenario) -> None:
        nonlocal ran
        if stop.is_set():
            raise _Abandoned
        now = time.monotonic()
        if failures:
            if now > shrink_until[0]:
                raise _Found  # Shrinking has had its time.
        elif now > search_until:
            raise _SearchedOut
        seconds = min(_EXAMPLE_TIMEOUT, (shrink_until[0] if failures else ends) - now)
        example = _fresh(outer)
        try:
            _run_example(example, scenario, check_liveness, seconds)
        except StepTimeout as timeout:
            if seconds < _EXAMPLE_TIMEOUT and time.monotonic() >= now + seconds:
                # Cut short by the check's own deadline, not by the server.
                raise (_Found if failures else _SearchedOut) from timeout
            _failed(scenario, timeout, example)
            raise
        except CheckFailure as failure:
            _failed(scenario, failure, example)
            raise
        ran += 1

    def _failed(scenario: Scenario, failure: CheckFailure, example: Harness) -> None:
        failures.append((scenario, failure, example))
        if len(failures) == 1:
            # Each try of a stalled scenario costs a stall: a liveness failure is
            # reported as found; a wrong byte is shrunk for the time reserved.
            shrink = 0.0 if failure.liveness else reserve
            shrink_until.append(min(time.monotonic() + shrink, ends))

    def report(value: object) -> None:
        if not stop.is_set():  # An abandoned search has nobody to tell.
            print(value)

    try:
        with with_reporter(report):
            holds()
    except _Abandoned:
        raise
    except _SearchedOut:
        if ran < min(_MIN_EXAMPLES, limit):
            outer.not_measured(
                f"only {ran} of {limit} scenarios ran within the check's deadline of "
                f"{profile.check_seconds:g}s (profile {profile.name}), none failed: the "
                "server answers too slowly for a search"
            )
        return
    except (_Found, Exception) as exc:
        if not failures:
            raise
        minimal, first, where = failures[-1]
        notes = getattr(exc, "__notes__", [])
        blob = "\n".join(n for n in notes if "reproduce_failure" in n or "@seed" in n)
        if isinstance(exc, _Found) and first.liveness and len(failures) == 1:
            blob = (
                "a liveness failure is not shrunk (each try would wait out a stall): "
                "this is the scenario that failed; the saved scenario replays it exactly"
            )
        elif isinstance(exc, _Found):
            blob = (
                f"shrinking stopped after {reserve:.0f}s (the share of the check's "
                f"deadline of {profile.check_seconds:g}s kept for it, profile "
                f"{profile.name}): this is the smallest failing scenario found by then; "
                "the saved scenario replays it exactly"
            )
        elif not blob and isinstance(exc, Flaky):
            blob = (
                "Hypothesis saw this scenario fail, then pass on a rerun: the failure "
                "depends on timing; the saved scenario replays it (it may take a few tries)"
            )
        raise _failure_report(minimal, first, blob, outer, where, check) from None


#: Makes a property check's search from the profile's limits and the run's model.
Search = Callable[[Limits, ProtocolModel], st.SearchStrategy[Scenario]]


def _property(
    strategy: Search,
    *,
    check_liveness: bool = False,
    max_examples: int | None = None,
) -> Callable[[Harness], Any]:
    async def body(h: Harness) -> None:
        search = strategy(h.profile.limits, h.model)
        check = next(c.id for c in PROPERTY_CHECKS if c.body is body)  # (saved with a scenario)
        await run_in_thread(
            lambda stop: _search(h, search, check_liveness, stop, max_examples, check=check)
        )

    return body


def _echo_scenarios(lim: Limits, model: ProtocolModel) -> st.SearchStrategy[Scenario]:
    return scenarios(limits=lim, model=model)


def _reset_scenarios(lim: Limits, model: ProtocolModel) -> st.SearchStrategy[Scenario]:
    return scenarios(limits=lim, reset=True, model=model).filter(
        lambda s: any(isinstance(step, Reset) for c in s.connections for step in c.steps)
    )


def _concurrent_scenarios(lim: Limits, model: ProtocolModel) -> st.SearchStrategy[Scenario]:
    return concurrent_scenarios(limits=lim, model=model)


def _backpressure_scenarios(lim: Limits, model: ProtocolModel) -> st.SearchStrategy[Scenario]:
    return backpressure_scenarios(model=model)


def _half_close_scenarios(lim: Limits, model: ProtocolModel) -> st.SearchStrategy[Scenario]:
    return scenarios(limits=lim, half_close=True, model=model).filter(
        lambda s: any(isinstance(step, HalfClose) for c in s.connections for step in c.steps)
    )


PROPERTY_CHECKS: tuple[Check, ...] = (
    Check("PROP-ECHO-1", "For any scenario of sends, pauses, reads, stalled readers and "
          "reconnects, every connection gets back exactly its own bytes, in order",
          "property", Level.MUST, RFC862, _property(_echo_scenarios), heavy=True, searches=True,
          any_bytes=False),
    Check("PROP-CONCURRENT-1", "For any set of connections sending bursts in small writes "
          "while reading, each gets back exactly its own bytes, in order", "property",
          Level.MUST, RFC862, _property(_concurrent_scenarios), heavy=True, searches=True,
          any_bytes=False),
    Check("PROP-BACKPRESSURE-1", "For any bulk send from clients with a tiny window that stop "
          "reading for a while (the server's send returns short), every byte comes back",
          "property", Level.MUST, RFC9293_FLOW,
          _property(_backpressure_scenarios, max_examples=4), heavy=True, searches=True,
          any_bytes=False),
    Check("PROP-ALIVE-1", "For any scenario in which clients reset mid-stream, the others get "
          "their bytes and a fresh connection is served afterwards", "property", Level.MUST,
          RFC9293_RESET, _property(_reset_scenarios, check_liveness=True), fault=True,
          heavy=True, searches=True, any_bytes=False),
    Check("PROP-HALFCLOSE-1", "For any scenario ending in half-closes, each half-closed "
          "connection gets all it is owed (MUST), then FIN, not RST (SHOULD)", "property",
          Level.MUST, RFC9293_CLOSE, _property(_half_close_scenarios), heavy=True,
          searches=True, rules=HALF_CLOSE, any_bytes=False),
)  # fmt: skip
