"""The run plan: the options of a conformance run, validated.

How this works
--------------
Every front takes its options from one table (:data:`~conformance.run.options.OPTIONS`):
the pytest plugin adds them to pytest's parser, the CLI to its ``run``
sub-command, with the same names (the CLI also accepts the short ``--strict``
and ``--profile``; pytest owns ``--strict``); ``check_server`` takes some as
keywords. Whatever the front, the values become one validated :class:`RunPlan`
(:func:`plan_from_options`): the targets, the checks, the one model that
judges them (``--protocol`` and ``--oracle``, resolved here once), the
strictness, the profile, the saved scenario, the report paths, and the front,
which names the replay commands (:meth:`RunPlan.replay_prefix`). A
:class:`~conformance.run.session.Session` runs a plan.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from conformance.checks import CATALOGUE, Check
from conformance.checks.tls import TLS_CATEGORY
from conformance.errors import UsageError
from conformance.protocols import EchoModel, ProtocolModel, run_model
from conformance.run.options import DEFAULT_TIMEOUT, TARGET_DESTS, Front, add_options, flag_name
from conformance.run.profiles import DEFAULT, PROFILES, Profile, profile_named
from conformance.run.selection import select_checks, split_list
from conformance.run.values import (
    artifacts_dir,
    check_report_path,
    max_connections,
    run_timeout,
    scenario_file,
)
from conformance.targets.health import MAX_RESTARTS
from conformance.targets.target import SERVER_NOFILE, TargetKind, TargetSpec, server_nofile
from conformance.tls import TlsSettings, tls_from_options

# The option table is conformance.run.options'; the fronts take it from here, with the plan.
__all__ = [
    "DEFAULT_TIMEOUT",
    "TARGET_DESTS",
    "Front",
    "RunPlan",
    "add_options",
    "artifacts_dir",
    "check_report_path",
    "load_hosts",
    "max_connections",
    "plan_from_options",
    "run_profile",
    "run_timeout",
    "scenario_file",
    "target_names",
    "target_specs",
]


#: Seconds one check may take beyond its own deadline: the probe of its target after
#: a failure (at most 5 s), waiting for an exit to be recorded, the test item itself.
CHECK_OVERHEAD = 8.0
#: Seconds to start one target and to stop it.
TARGET_START_BOUND = 30.0
_NAME_CHARS = re.compile(r"[^A-Za-z0-9_.:-]+")


@dataclass(frozen=True)
class RunPlan:
    """A validated run: what to check, against what, judged how.

    Attributes:
        targets: The targets, in the order given.
        names: A short name per target, unique in the run.
        checks: The selected checks, in catalogue order.
        oracle: ``--oracle`` as given (``echo``, ``discard``, ``module:Class``).
        protocol: ``--protocol`` as given (``echo``, ``resp``, ``module:Model``).
        model: What the two name, the model every check speaks and is judged by.
        strict: A failed SHOULD or MAY fails the run.
        profile: How hard the property checks search.
        scenario: A saved scenario the property checks replay.
        report_json: Where to write the JSON report, if anywhere.
        report_html: Where to write the HTML report, if anywhere.
        front: What runs it (names the replay commands).
        timeout: Seconds the whole run may take, if capped.
        restart: A started server that exits is started again for the next check.
        artifacts: Where failing scenarios and server logs go; None: a
            directory made when the run starts.
        max_connections: How many connections a server whose descriptor
            limit cannot be read is taken to hold at most; None: not given.
        load_hosts: The execnet gateways the load checks run from
            (``--load-hosts``); empty: this process.
        server_nofile: The soft descriptor limit the servers it starts begin
            with (``--server-nofile``); None: the suite's own.
        tls: Speak TLS with these settings (``--tls``); None: plain TCP.
    """

    targets: tuple[TargetSpec, ...]
    names: tuple[str, ...]
    checks: tuple[Check, ...]
    oracle: str = "echo"
    protocol: str = "echo"
    model: ProtocolModel = field(default_factory=EchoModel)
    strict: bool = False
    profile: Profile = DEFAULT
    scenario: Path | None = None
    report_json: str | None = None
    report_html: str | None = None
    front: Front = Front.CLI
    timeout: float | None = None
    restart: bool = True
    artifacts: Path | None = None
    max_connections: int | None = None
    load_hosts: tuple[str, ...] = ()
    server_nofile: int | None = SERVER_NOFILE
    tls: TlsSettings | None = None

    def bound(self, start: float = TARGET_START_BOUND) -> float:
        """Seconds the run takes at most: each check's deadline plus its probes, per target.

        Args:
            start: Seconds to start (and at the end stop) one target.
        """
        per_target = sum(check.deadline(self.profile) + CHECK_OVERHEAD for check in self.checks)
        per_target += start * (1 + (MAX_RESTARTS if self.restart else 0))
        whole = len(self.targets) * per_target
        if self.timeout is not None:
            whole = min(whole, self.timeout + len(self.targets) * start + CHECK_OVERHEAD)
        return whole

    def replay_prefix(self, spec: TargetSpec) -> str:
        """The command that reruns this run against ``spec``, without ``--checks``."""
        words = [*shlex.split(self.front.value), *spec.options()]
        if self.oracle != "echo":
            words += [flag_name("oracle", self.front), self.oracle]
        if self.protocol != "echo":
            words += [flag_name("protocol", self.front), self.protocol]
        if self.strict:
            words.append(flag_name("conformance_strict", self.front))
        if self.profile is not DEFAULT:
            words += [flag_name("conformance_profile", self.front), self.profile.name]
        if self.max_connections is not None:
            words += [flag_name("max_connections", self.front), str(self.max_connections)]
        for host in self.load_hosts:
            words += [flag_name("load_hosts", self.front), host]
        if self.server_nofile != SERVER_NOFILE:
            nofile = "inherit" if self.server_nofile is None else str(self.server_nofile)
            words += [flag_name("server_nofile", self.front), nofile]
        if self.tls is not None:
            words += self.tls.flags()
        return shlex.join(words)

    def to_data(self) -> dict[str, Any]:
        """Plain data that :meth:`from_data` reads (for xdist's workers)."""
        return {
            "targets": [[spec.kind.value, spec.value] for spec in self.targets],
            "names": list(self.names),
            "checks": [check.id for check in self.checks],
            "oracle": self.oracle,
            "protocol": self.protocol,
            "strict": self.strict,
            "profile": self.profile.name,
            "scenario": str(self.scenario) if self.scenario is not None else None,
            "report_json": self.report_json,
            "report_html": self.report_html,
            "front": self.front.name,
            "timeout": self.timeout,
            "restart": self.restart,
            "artifacts": str(self.artifacts) if self.artifacts is not None else None,
            "max_connections": self.max_connections,
            "load_hosts": list(self.load_hosts),
            "server_nofile": self.server_nofile,
            "tls": self.tls.to_data() if self.tls is not None else None,
        }

    @classmethod
    def from_data(cls, data: dict[str, Any]) -> RunPlan:
        by_id = {check.id: check for check in CATALOGUE}
        protocol = data.get("protocol", "echo")
        return cls(
            targets=tuple(TargetSpec(TargetKind(k), v) for k, v in data["targets"]),
            names=tuple(data["names"]),
            checks=tuple(by_id[i] for i in data["checks"]),
            oracle=data["oracle"],
            protocol=protocol,
            model=run_model(protocol, data["oracle"]),
            strict=data["strict"],
            profile=PROFILES[data["profile"]],
            scenario=Path(data["scenario"]) if data["scenario"] is not None else None,
            report_json=data["report_json"],
            report_html=data["report_html"],
            front=Front[data["front"]],
            timeout=data["timeout"],
            restart=data["restart"],
            artifacts=Path(data["artifacts"]) if data["artifacts"] is not None else None,
            max_connections=data["max_connections"],
            load_hosts=tuple(data.get("load_hosts", ())),
            server_nofile=data.get("server_nofile", SERVER_NOFILE),
            tls=TlsSettings.from_data(data["tls"]) if data.get("tls") else None,
        )


def plan_from_options(
    values: Any, front: Front, *, hypothesis_profile: str | None = None
) -> RunPlan:
    """The plan of the options in ``values`` (an argparse namespace or pytest's options).

    Args:
        values: Has an attribute per :data:`~conformance.run.options.OPTIONS` entry.
        front: What runs the plan.
        hypothesis_profile: Hypothesis' own ``--hypothesis-profile``; it picks
            the profile when it names one and ``--conformance-profile`` is not given.

    Raises:
        UsageError: An option is malformed, names nothing, or selects no check.
    """
    specs = target_specs(values.target, values.spawn, values.reference)
    for flag, given in (("--checks", values.checks), ("--category", values.category)):
        if given is not None and not split_list(given):
            raise UsageError(
                f"{flag} {given!r} names nothing: give names separated by commas, "
                "or leave the option out to run every check"
            )
    checks = tuple(select_checks(split_list(values.checks), split_list(values.category)))
    tls = tls_from_options(values)
    if tls is None and values.checks is None and values.category is None:
        # Not asked for by name: the TLS checks run with --tls, and only then.
        checks = tuple(check for check in checks if check.category != TLS_CATEGORY)
    if not checks:
        raise UsageError("no check selected")
    model = run_model(values.protocol, values.oracle)
    check_report_path(values.report_json, "--report-json")
    check_report_path(values.report_html, "--report-html")
    return RunPlan(
        targets=tuple(specs),
        names=tuple(target_names(specs)),
        checks=checks,
        oracle=values.oracle,
        protocol=values.protocol,
        model=model,
        strict=bool(values.conformance_strict),
        profile=run_profile(values.conformance_profile, hypothesis_profile),
        scenario=scenario_file(values.scenario, checks),
        report_json=values.report_json,
        report_html=values.report_html,
        front=front,
        timeout=run_timeout(values.conformance_timeout, len(specs)),
        restart=not values.no_restart,
        artifacts=artifacts_dir(values.artifacts, values.report_json),
        max_connections=max_connections(values.max_connections),
        load_hosts=load_hosts(values.load_hosts),
        server_nofile=server_nofile(values.server_nofile),
        tls=tls,
    )


def run_profile(value: str | Profile | None, hypothesis_profile: str | None = None) -> Profile:
    """The profile ``--conformance-profile`` gives (a profile, or its name); when it is not
    given, the one ``hypothesis_profile`` names, else :data:`~conformance.run.profiles.DEFAULT`.

    Raises:
        UsageError: It names no profile.
    """
    if isinstance(value, Profile):
        return value
    if value is None:
        value = hypothesis_profile if hypothesis_profile in PROFILES else DEFAULT.name
    try:
        return profile_named(value)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def load_hosts(texts: Sequence[str] | None) -> tuple[str, ...]:
    """``--load-hosts`` values, each checked as ``load --hosts`` checks it.

    Raises:
        UsageError: One of them is not a ``popen`` or ``ssh=`` gateway spec.
    """
    from conformance.load.hosts import HostSpec  # execnet, only when hosts are given

    for text in texts or []:
        HostSpec.parse(text)
    return tuple(text.strip() for text in texts or [])


def target_specs(
    targets: list[str] | None, spawns: list[str] | None, references: list[str] | None
) -> list[TargetSpec]:
    """The targets named by repeated options: addresses, then commands, then models.

    Raises:
        UsageError: One of them is malformed.
    """
    specs = [TargetSpec.from_options(t, None, None) for t in targets or []]
    specs += [TargetSpec.from_options(None, s, None) for s in spawns or []]
    specs += [TargetSpec.from_options(None, None, r) for r in references or []]
    return specs or [TargetSpec.default()]


def _short_name(spec: TargetSpec) -> str:
    if spec.kind is TargetKind.ADDRESS:
        return spec.value
    if spec.kind is TargetKind.REFERENCE:
        return f"reference-{spec.value}"
    words = shlex.split(spec.value)
    scripts = [w for w in words[1:] if not w.startswith("-") and "." in os.path.basename(w)]
    word = scripts[0] if scripts and os.path.basename(words[0]).startswith("python") else words[0]
    return Path(word).stem or "spawned"


def target_names(specs: Sequence[TargetSpec]) -> list[str]:
    """A short name per target, unique in the run, safe in a pytest node ID."""
    names: list[str] = []
    for spec in specs:
        clean = _NAME_CHARS.sub("_", _short_name(spec)).strip("_") or "target"
        unique, n = clean, 2
        while unique in names:
            unique, n = f"{clean}-{n}", n + 1
        names.append(unique)
    return names
