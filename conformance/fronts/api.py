"""``check_server``: the suite as a function, for another project's own tests.

Like ``trio.testing.check_two_way_stream``, it runs the conformance checks
against a server from inside any test suite, and returns typed results
instead of printing. It runs the same engine as ``reactor-conformance run``
(:class:`~conformance.run.session.Session`), checks one after the other in this
process, without pytest's collection or xdist.

Its keywords are options of the run, rows of the option table
(:mod:`conformance.run.options`) that take their defaults from it: the call
becomes the values of every option (:func:`option_values_of`), which
:func:`~conformance.run.plan.plan_from_options` checks as it checks the CLI's.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterable
from typing import Any

from conformance.errors import UsageError
from conformance.run.options import Front, by_keyword, option_values
from conformance.run.plan import plan_from_options
from conformance.run.profiles import Profile
from conformance.run.results import RunResults
from conformance.run.session import Session
from conformance.targets.target import REFERENCE_MODELS, TargetKind, TargetSpec, parse_address
from conformance.tls import TlsSettings

__all__ = ["check_server"]

#: The options of a run that are keywords of :func:`check_server`, by keyword.
_OPTIONS = by_keyword()
#: Their defaults: the option table's, for this front.
_DEFAULTS = {keyword: option.default_for(Front.API) for keyword, option in _OPTIONS.items()}
#: The option that names a target of each kind.
_TARGET_DEST = {
    TargetKind.ADDRESS: "target",
    TargetKind.SPAWN: "spawn",
    TargetKind.REFERENCE: "reference",
}


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


def _option_value(keyword: str, value: Any) -> Any:
    """The value a keyword of :func:`check_server` gives its option, as a front's flag would."""
    if keyword == "checks":
        names = [name for name in value if name.strip()]  # as --checks, comma-separated
        return ",".join(names) if names else None
    if keyword == "load_hosts":
        return list(value) or None  # as --load-hosts, repeated
    return value


def option_values_of(target: str | TargetSpec, **keywords: Any) -> argparse.Namespace:
    """The run's option values when :func:`check_server` is called with these arguments.

    Every option ``keywords`` leaves out has its default for :attr:`Front.API
    <conformance.run.options.Front.API>` (the option table's).

    Raises:
        UsageError: The target is malformed.
        KeyError: A keyword is not one of :func:`check_server`'s.
    """
    spec = _spec(target)
    given = {_OPTIONS[k].dest: _option_value(k, v) for k, v in keywords.items()}
    return option_values(Front.API, **given, **{_TARGET_DEST[spec.kind]: [spec.value]})


def check_server(
    target: str | TargetSpec,
    *,
    checks: Iterable[str] = (),
    oracle: str = _DEFAULTS["oracle"],
    protocol: str = _DEFAULTS["protocol"],
    profile: str | Profile = _DEFAULTS["profile"],
    strict: bool = _DEFAULTS["strict"],
    load_hosts: Iterable[str] = (),
    tls: TlsSettings | None = _DEFAULTS["tls"],
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
        tls: Speak TLS to the server with these settings
            (:class:`~conformance.tls.TlsSettings`); default: plain TCP.

    Returns:
        The results: ``ok()`` is true when every MUST passed (every check,
        when strict); ``failed()`` lists the failures, each with its
        :class:`~conformance.reports.failure.FailureReport`.

    Raises:
        UsageError: An unknown check, oracle, protocol, profile or load host,
            or a malformed target.
        TargetError: The target cannot be reached, or never listens.
    """
    values = option_values_of(
        target,
        checks=checks,
        oracle=oracle,
        protocol=protocol,
        profile=profile,
        strict=strict,
        load_hosts=load_hosts,
        tls=tls,
    )
    # Validated as a front's flags are; a failure's replay command is the CLI's.
    plan = plan_from_options(values, Front.CLI)
    session = Session(plan)
    session.start()
    try:
        (live,) = session.targets
        for check in plan.checks:
            session.run(live.name, check)
    finally:
        session.stop()
    assert session.results is not None
    session.results.finished = time.time()
    return session.results
