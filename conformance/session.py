"""The session: the one engine behind ``reactor-conformance run`` and the pytest plugin.

How this works
--------------
A :class:`Session` runs a :class:`~conformance.plan.RunPlan`. In the process
that owns the run (the only one, or xdist's controller) it starts each target
once and stops it at the end (:meth:`Session.start`, :meth:`Session.stop`),
gathers every check's result into a :class:`~conformance.results.RunResults`,
and builds every replay command (:meth:`Session.replay_command`). xdist's
workers get the plan and the running targets as plain data
(:meth:`Session.to_worker`, :meth:`Session.for_worker`), so a spawned server
is started once, and every check runs against a
:class:`~conformance.checks.Setup` the session made (:meth:`Session.setup`).
What happens to a target during the run belongs here, in one place.

The CLI builds the plan from its own arguments, starts the session (so an
unreachable target is one line and exit 3 before pytest starts) and hands it
to the plugin in process (:class:`PlannedRun`): nothing about a run passes
as text between the two fronts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from conformance.checks import Check, Setup, run_check
from conformance.oracle import load_oracle
from conformance.plan import RunPlan
from conformance.results import CheckResult, RunResults, TargetRun, Verdict
from conformance.target import Address, RunningTarget, TargetKind, TargetSpec, start_target

__all__ = ["LiveTarget", "PlannedRun", "Session"]


@dataclass(frozen=True)
class LiveTarget:
    """One target of a session, once it listens.

    Attributes:
        name: Its short name in the run.
        spec: What the user named.
        address: Where it listens.
        pid: Its process, when the session started it.
        replay: The command that reruns the run against it, without ``--checks``.
    """

    name: str
    spec: TargetSpec
    address: Address
    pid: int | None
    replay: str

    def to_data(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "spec": [self.spec.kind.value, self.spec.value],
            "host": self.address.host,
            "port": self.address.port,
            "pid": self.pid,
            "replay": self.replay,
        }

    @classmethod
    def from_data(cls, data: dict[str, Any]) -> LiveTarget:
        kind, value = data["spec"]
        return cls(
            data["name"],
            TargetSpec(TargetKind(kind), value),
            Address(data["host"], data["port"]),
            data["pid"],
            data["replay"],
        )


class Session:
    """Runs one plan: owns its targets and, in the owning process, its results.

    Args:
        plan: The run.
        targets: The running targets, when they are already known (a worker).
    """

    def __init__(self, plan: RunPlan, targets: Sequence[LiveTarget] = ()) -> None:
        self.plan = plan
        self.targets: list[LiveTarget] = list(targets)
        self.results: RunResults | None = None
        #: The reports written at the end: (kind, path).
        self.written: list[tuple[str, str]] = []
        self._oracle = load_oracle(plan.oracle)
        self._running: list[RunningTarget] = []

    def start(self) -> None:
        """Start (or reach) every target, in order, and prepare the results.

        Raises:
            TargetError: A target cannot be reached, or never listens; the
                targets already started are stopped.
        """
        try:
            for spec, name in zip(self.plan.targets, self.plan.names, strict=True):
                running = start_target(spec)
                self._running.append(running)
                self.targets.append(
                    LiveTarget(
                        name, spec, running.address, running.pid, self.plan.replay_prefix(spec)
                    )
                )
        except BaseException:
            self.stop()
            raise
        self.results = RunResults(
            list(self.plan.checks),
            [
                TargetRun(
                    t.name,
                    t.spec.kind.value,
                    t.spec.value,
                    str(t.address),
                    t.spec.describe(),
                    replay=t.replay,
                )
                for t in self.targets
            ],
            strict=self.plan.strict,
            oracle=self.plan.oracle,
        )

    def stop(self) -> None:
        """Stop every target this session started (SIGTERM to its group, then SIGKILL)."""
        while self._running:
            self._running.pop().stop()

    def setup(self, name: str) -> Setup:
        """What each check against the target called ``name`` runs against."""
        target = next(t for t in self.targets if t.name == name)
        return Setup(
            target.address,
            self._oracle,
            server_pid=target.pid,
            replay=target.replay,
            profile=self.plan.profile,
            scenario=self.plan.scenario,
        )

    def run(self, name: str, check: Check) -> CheckResult:
        """Run ``check`` against the target called ``name`` here, and record its result.

        The pytest plugin runs checks as test items instead (so xdist spreads
        them); this is the same engine without pytest (:func:`conformance.check_server`).
        """
        outcome = run_check(check, self.setup(name))
        verdict = Verdict.PASS
        if outcome.failure is not None:
            verdict = Verdict.FAIL if outcome.fails_run(self.plan.strict) else Verdict.NON_STRICT
        result = CheckResult(
            check,
            verdict,
            outcome.duration,
            outcome.failure,
            replay=self.replay_command(name, check),
        )
        if self.results is not None:
            self.results.record(name, result)
        return result

    def replay_command(self, name: str, check: Check) -> str:
        """The command that reruns just ``check`` against the target called ``name``."""
        return self.setup(name).replay_command(check)

    def to_worker(self) -> dict[str, Any]:
        """The plan and the running targets, as plain data for an xdist worker."""
        return {"plan": self.plan.to_data(), "targets": [t.to_data() for t in self.targets]}

    @classmethod
    def for_worker(cls, data: dict[str, Any]) -> Session:
        """The session of an xdist worker, from :meth:`to_worker`'s data."""
        return cls(
            RunPlan.from_data(data["plan"]), [LiveTarget.from_data(t) for t in data["targets"]]
        )


@dataclass(eq=False)
class PlannedRun:
    """A started session handed to the pytest plugin in process (by the CLI).

    The plugin runs it instead of building one from its options; whoever
    started it stops it.
    """

    session: Session
