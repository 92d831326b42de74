"""``check_server``: the suite as a function, for another project's own tests.

Like ``trio.testing.check_two_way_stream``, it runs the conformance checks
against a server from inside any test suite, and returns typed results
instead of printing. It runs the same engine as ``reactor-conformance run``
(:class:`~conformance.run.session.Session`), checks one after the other in this
process, without pytest's collection or xdist.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from conformance.errors import UsageError
from conformance.protocols import run_model
from conformance.run.plan import Front, RunPlan, target_names
from conformance.run.plan import load_hosts as parse_load_hosts
from conformance.run.profiles import Profile, profile_named
from conformance.run.results import RunResults
from conformance.run.selection import select_checks
from conformance.run.session import Session
from conformance.targets.target import REFERENCE_MODELS, TargetSpec, parse_address

__all__ = ["check_server"]


def _spec(target: str | TargetSpec) -> TargetSpec:
    if isinstance(target, TargetSpec):
        return target
    if target in REFERENCE_MODELS:
        return TargetSpec.from_options(None, None, target)
    try:
        parse_address(target)
    except UsageError:
        return TargetSpec.from_options(None, target, None)
    return TargetSpec.from_options(target, None, None)


def check_server(
    target: str | TargetSpec,
    *,
    checks: Iterable[str] = (),
    oracle: str = "echo",
    protocol: str = "echo",
    profile: str | Profile = "ci",
    strict: bool = False,
    load_hosts: Iterable[str] = (),
) -> RunResults:
    """Run conformance checks against one server and return every verdict.

    Args:
        target: ``HOST:PORT`` of a running server; a command to start, with
            ``{port}`` for a free port (or printing ``listening on
            HOST:PORT``), stopped at the end; a reference model name
            (``single``, ``pool``, ``multi``); or a
            :class:`~conformance.targets.target.TargetSpec`.
        checks: IDs or patterns (``ECHO-RESET-*``); default: every check.
        oracle: ``echo``, ``discard`` or ``package.module:Class``.
        protocol: The protocol model the checks speak (``resp``,
            ``memcached``, ``package.module:Model``); a model other than echo
            brings its own oracle, so ``oracle`` is then left as it is.
        profile: How hard the property checks search; default ``ci``
            (derandomized: the same scenarios on every run, as a test suite wants).
        strict: A failed SHOULD or MAY fails too.
        load_hosts: execnet gateways (``popen``, ``ssh=me@h2*4``) the load
            checks run from; default: this process.

    Returns:
        The results: ``ok()`` is true when every MUST passed (every check,
        when strict); ``failed()`` lists the failures, each with its
        :class:`~conformance.reports.failure.FailureReport`.

    Raises:
        UsageError: An unknown check, oracle, protocol, profile or load host,
            or a malformed target.
        TargetError: The target cannot be reached, or never listens.
    """
    spec = _spec(target)
    selected = tuple(select_checks(list(checks)))
    if not selected:
        raise UsageError("no check selected")
    if isinstance(profile, str):
        try:
            profile = profile_named(profile)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    plan = RunPlan(
        targets=(spec,),
        names=tuple(target_names([spec])),
        checks=selected,
        oracle=oracle,
        protocol=protocol,
        model=run_model(protocol, oracle),
        strict=strict,
        profile=profile,
        front=Front.CLI,
        load_hosts=parse_load_hosts(list(load_hosts)),
    )
    session = Session(plan)
    session.start()
    try:
        (live,) = session.targets
        for check in selected:
            session.run(live.name, check)
    finally:
        session.stop()
    assert session.results is not None
    session.results.finished = time.time()
    return session.results
