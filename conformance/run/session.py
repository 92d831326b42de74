"""The session: the one engine behind ``reactor-conformance run`` and the pytest plugin.

How this works
--------------
A :class:`Session` runs a :class:`~conformance.run.plan.RunPlan`. In the process
that owns the run (the only one, or xdist's controller) it starts each target
once and stops it at the end (:meth:`Session.start`, :meth:`Session.stop`),
gathers every check's result into a :class:`~conformance.run.results.RunResults`,
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

import enum
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conformance.checks import Check, Outcome, Setup, run_check
from conformance.errors import TargetError
from conformance.run.judge import (
    UNDISTURBED,
    AlreadyUnreachable,
    During,
    ExitClaimed,
    ExitOfAnother,
    Fate,
    SpentBefore,
    SpentDuring,
    StoppedAnswering,
    judge,
)
from conformance.run.plan import RunPlan
from conformance.run.probe import handshake_refused, unanswered
from conformance.run.results import CheckResult, RunResults, TargetRun
from conformance.targets.health import Board, Exit, TargetState, process_state
from conformance.targets.keeper import Keeper
from conformance.targets.target import Address, RunningTarget, TargetKind, TargetSpec, start_target

__all__ = ["LiveTarget", "PlannedRun", "ReportFile", "ReportKind", "Session"]


class ReportKind(enum.Enum):
    """A report a run writes; the value is its name in the pytest plugin's lines."""

    JSON = "json"
    HTML = "html"
    JUNIT = "JUnit"

    @property
    def label(self) -> str:
        """Its name in the CLI's summary: JSON, HTML, JUnit."""
        return self.value if self is ReportKind.JUNIT else self.name


@dataclass(frozen=True)
class ReportFile:
    """A report the run wrote at the end, or could not write.

    Attributes:
        kind: Which report.
        path: Where it was asked for.
        why: Why it could not be written; None: it was.
    """

    kind: ReportKind
    path: str
    why: str | None = None


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
        board: Where the run's processes share what happens to the targets
            (a worker: the owner's).
        deadline: When the run's ``--timeout`` is spent (seconds since the
            epoch), if it has one (a worker: the owner's).
        artifacts: Where the run keeps scenarios and server logs (a worker: the owner's).
    """

    def __init__(
        self,
        plan: RunPlan,
        targets: Sequence[LiveTarget] = (),
        *,
        board: Board | None = None,
        deadline: float | None = None,
        artifacts: Path | None = None,
    ) -> None:
        self.plan = plan
        self.targets: list[LiveTarget] = list(targets)
        self.results: RunResults | None = None
        #: The reports written at the end.
        self.written: list[ReportFile] = []
        #: The reports that could not be written, each with why.
        self.unwritten: list[ReportFile] = []
        self.board = board
        self.deadline = deadline
        self.artifacts = artifacts if artifacts is not None else plan.artifacts
        #: Whether this session made the artifacts directory (it says so at the end).
        self.made_artifacts = False
        self._keepers: list[Keeper] = []

    def start(self) -> None:
        """Start (or reach) every target, in order, and prepare the results.

        Raises:
            TargetError: A target cannot be reached, or never listens; the
                targets already started are stopped.
        """
        if self.artifacts is None:
            self.artifacts = Path(tempfile.mkdtemp(prefix="reactor-conformance-"))
            self.made_artifacts = True
        self.board = Board.create()
        if self.plan.timeout is not None:
            self.deadline = time.time() + self.plan.timeout
        try:
            for spec, name in zip(self.plan.targets, self.plan.names, strict=True):
                log = self.artifacts / f"{name}.stderr.log"

                def begin(spec: TargetSpec = spec, log: Path = log) -> RunningTarget:
                    return start_target(spec, stderr_log=log, nofile=self.plan.server_nofile)

                running = begin()
                self._keepers.append(
                    Keeper(name, self.board, running, begin, restarts=self.plan.restart)
                )
                self.targets.append(
                    LiveTarget(
                        name, spec, running.address, running.pid, self.plan.replay_prefix(spec)
                    )
                )
                if self.plan.tls is not None:
                    refused = handshake_refused(running.address, self.plan.tls)
                    if refused is not None:
                        raise TargetError(f"{name}: {refused}")
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
            protocol=self.plan.protocol,
            load_hosts=list(self.plan.load_hosts),
        )

    def gather_events(self) -> None:
        """Copy what happened to each target into the results (before the reports)."""
        if self.results is None or self.board is None:
            return
        for run in self.results.targets:
            run.events = self.board.events(run.name)

    def stop(self) -> None:
        """Stop every target this session started (SIGTERM to its group, then SIGKILL)."""
        while self._keepers:
            self._keepers.pop().stop()
        if self.board is not None and self.results is not None:
            self.gather_events()
        if self.board is not None:
            self.board.remove()

    def setup(self, name: str, state: TargetState | None = None) -> Setup:
        """What each check against the target called ``name`` runs against.

        Args:
            name: The target.
            state: Where it listens now (after a restart: elsewhere); default:
                where it first listened.
        """
        target = next(t for t in self.targets if t.name == name)
        return Setup(
            state.address if state is not None else target.address,
            self.plan.model,
            replay=target.replay,
            profile=self.plan.profile,
            scenario=self.plan.scenario,
            artifacts=self.artifacts,
            max_connections=self.plan.max_connections,
            load_hosts=self.plan.load_hosts,
            tls=self.plan.tls,
        )

    def execute(self, name: str, check: Check) -> CheckResult:
        """Run ``check`` against the target called ``name``, watching what happens to the target.

        This gathers the facts and :func:`~conformance.run.judge.judge` decides.
        Before the check: whether the run's ``--timeout`` is spent, and
        whether the target is up (waiting for it after a restart), else why
        not. After it: whether the time ran out during a check that did not
        pass (then nothing else is looked at: what befell the target is not
        this check's to claim); whether the target's process exited meanwhile
        (claimed by this check or another); and when the check failed and no
        exit explains it, whether a fresh connection is still served (this
        check is the first to see it, or another was).
        """
        replay = self.replay_command(name, check)

        def verdict(outcome: Outcome | None, fate: Fate) -> CheckResult:
            return judge(outcome, fate, check=check, strict=self.plan.strict, replay=replay)

        left = self._time_left()
        if left is not None and left < 1.0:
            return verdict(None, SpentBefore(self._spent()))
        state = self.board.wait_ready(name) if self.board is not None else None
        if state is not None and not isinstance(state, TargetState):
            return verdict(None, state)
        setup = self.setup(name, state)
        outcome = run_check(check, setup, timeout=self._time_left())
        left = self._time_left()
        if left is not None and left <= 0 and not outcome.passed:
            return verdict(outcome, SpentDuring(self._spent()))
        if self.board is None or state is None:
            return verdict(outcome, UNDISTURBED)
        return verdict(outcome, self._target_fate(name, check, state, setup, outcome))

    def _time_left(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.time()

    def _spent(self) -> float:
        """The run's ``--timeout``, once it is spent."""
        assert self.plan.timeout is not None, "a deadline without a --timeout"
        return self.plan.timeout

    def _target_fate(
        self, name: str, check: Check, state: TargetState, setup: Setup, outcome: Outcome
    ) -> During:
        """What befell the target (as ``state`` was when the check began) during ``check``."""
        assert self.board is not None
        # A failed check may have seen the target's last moments (an RST as it
        # exits): give a process that is ending a moment to be seen gone.
        soon = FAILED_EXIT_WAIT if outcome.failure is not None else 0.0
        ended = self.board.exit_during(name, state.generation, state.pid, exiting=soon)
        silent = None
        if ended is None and outcome.failure is not None:
            silent = unanswered(setup)
            if silent is not None:
                # Not served: perhaps it is exiting right now.
                ended = self.board.exit_during(
                    name, state.generation, state.pid, exiting=EXITING_WAIT
                )
        if ended is not None:
            return self._exited(name, check, ended)
        if silent is None:
            return UNDISTURBED
        detail = silent.detail
        if state.pid is not None and process_state(state.pid) in ("T", "t"):
            detail += "; its process is stopped (SIGSTOP or a debugger), not exited"
        if self.board.mark_unreachable(name, check.id, detail, accepts=silent.accepts):
            return StoppedAnswering(detail, silent.accepts)
        gone = self.board.unreachable(name)
        return AlreadyUnreachable(gone.check if gone is not None else None)

    def _exited(self, name: str, check: Check, ended: Exit) -> ExitClaimed | ExitOfAnother:
        """Whether ``check`` claims the exit of its target's process, or another check did."""
        assert self.board is not None
        if not self.board.claim_exit(name, ended.generation, check.id):
            return ExitOfAnother(ended.how, self.board.exit_claimed_by(name, ended.generation))
        count = sum(1 for e in self._exits(name) if e.generation <= ended.generation)
        return ExitClaimed(ended.how, ended.stderr, ended.restarted, count)

    def _exits(self, name: str) -> tuple[Exit, ...]:
        state = self.board.state(name) if self.board is not None else None
        return state.exits if state is not None else ()

    def run(self, name: str, check: Check) -> CheckResult:
        """Run ``check`` against the target called ``name`` here, and record its result.

        The pytest plugin runs checks as test items instead (so xdist spreads
        them); this is the same engine without pytest (:func:`conformance.check_server`).
        """
        result = self.execute(name, check)
        if self.results is not None:
            self.results.record(name, result)
        return result

    def replay_command(self, name: str, check: Check) -> str:
        """The command that reruns just ``check`` against the target called ``name``."""
        return self.setup(name).replay_command(check)

    def to_worker(self) -> dict[str, Any]:
        """The plan, the running targets and the board, as plain data for an xdist worker."""
        return {
            "plan": self.plan.to_data(),
            "targets": [t.to_data() for t in self.targets],
            "board": str(self.board.path) if self.board is not None else None,
            "deadline": self.deadline,
            "artifacts": str(self.artifacts) if self.artifacts is not None else None,
        }

    @classmethod
    def for_worker(cls, data: dict[str, Any]) -> Session:
        """The session of an xdist worker, from :meth:`to_worker`'s data."""
        return cls(
            RunPlan.from_data(data["plan"]),
            [LiveTarget.from_data(t) for t in data["targets"]],
            board=Board(Path(data["board"])) if data["board"] is not None else None,
            deadline=data["deadline"],
            artifacts=Path(data["artifacts"]) if data["artifacts"] is not None else None,
        )


#: How long a target that no longer serves a fresh connection has to finish exiting.
EXITING_WAIT = 3.0
#: Seconds a check that failed waits for its target's process to be seen gone, if it is ending.
FAILED_EXIT_WAIT = 0.5


@dataclass(eq=False)
class PlannedRun:
    """A started session handed to the pytest plugin in process (by the CLI).

    The plugin runs it instead of building one from its options; whoever
    started it stops it.
    """

    session: Session
