"""What a check saw on its connections, and how a check fails: plain data, no sockets.

A :class:`Transcript` is one connection as the client saw it: every byte sent
and received, its events (times relative to the start of the check), and
how it ended (:class:`Ending`). A :class:`CheckFailure` (a
:class:`StepTimeout`, a :class:`Divergence`) names the step and the
connection that failed, and its :class:`FailureKind`; the harness
(:mod:`conformance.harness`) raises them and a
:class:`~conformance.reports.failure.FailureReport` is built from them.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import ClassVar

from conformance.oracle import Judgement
from conformance.rules import Rule

__all__ = [
    "CheckFailure",
    "Divergence",
    "Ending",
    "Event",
    "FailureKind",
    "NotMeasurable",
    "Stalled",
    "StepTimeout",
    "Transcript",
]


class FailureKind(enum.Enum):
    """What went wrong; the value is the word the reports show.

    The first four are what a check found (:attr:`CheckFailure.kind`); the
    last three, what happened to the target during the check, which the
    session's judge puts first (:func:`~conformance.run.judge.judge`).
    """

    CHECK_FAILURE = "CheckFailure"
    STEP_TIMEOUT = "StepTimeout"
    STALLED = "Stalled"
    DIVERGENCE = "Divergence"
    TARGET_EXITED = "TargetExited"
    TARGET_UNREACHABLE = "TargetUnreachable"
    TARGET_SILENT = "TargetSilent"


class Ending(enum.Enum):
    """How a connection ended, as the client saw it."""

    OPEN = "still open"
    FIN = "FIN from the server"
    RST = "RST from the server"
    TIMEOUT = "timed out"
    CLIENT_CLOSE = "closed by the client"
    CLIENT_RESET = "reset by the client"
    REFUSED = "refused"


@dataclass(frozen=True)
class Event:
    """One thing that happened on a connection, ``at`` seconds after the check began."""

    at: float
    action: str
    size: int = 0


@dataclass
class Transcript:
    """What happened on one connection."""

    name: str
    sent: bytearray = field(default_factory=bytearray)
    received: bytearray = field(default_factory=bytearray)
    events: list[Event] = field(default_factory=list)
    ending: Ending = Ending.OPEN

    def end(self, ending: Ending) -> None:
        """Record how the connection ended; the first ending wins."""
        if self.ending is Ending.OPEN:
            self.ending = ending

    def summary(self) -> str:
        last = self.events[-1].at if self.events else 0.0
        return (
            f"connection {self.name}: sent {len(self.sent)} bytes, received "
            f"{len(self.received)} bytes, {len(self.events)} events over {last:.3f}s, "
            f"ended: {self.ending.value}"
        )


class NotMeasurable(Exception):
    """A step that cannot measure what it is for under this run's conditions.

    The check stops and is SKIPPED with this message as its reason: never a
    PASS, never a FAIL (for example, a half-close over TLS 1.2, which has none).
    """


class CheckFailure(Exception):
    """A check failed; the message says how.

    Attributes:
        kind: What kind of failure it is, in its report (each class names its own).
        step: The step that failed, if any.
        transcript: The connection it failed on, if any.
        verdict: The oracle's verdict, for a wrong byte.
        rule: The rule it broke (:mod:`conformance.rules`), when the check
            judges several at different levels; None: the check's own.
    """

    kind: ClassVar[FailureKind] = FailureKind.CHECK_FAILURE

    def __init__(
        self,
        message: str,
        *,
        step: str | None = None,
        transcript: Transcript | None = None,
        verdict: Judgement | None = None,
        rule: Rule | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.step = step
        self.transcript = transcript
        self.verdict = verdict
        self.rule = rule

    @property
    def liveness(self) -> bool:
        """A liveness finding (nothing came in time), not a wrong, missing or added byte."""
        return isinstance(self, StepTimeout)

    def under(self, rule: Rule) -> CheckFailure:
        """This failure, judged by ``rule`` (unless it already names one).

        A liveness finding is judged by no data rule: a reply that has not come
        yet was not lost, so it stays the check's own finding, at its level.
        """
        if self.rule is None and not self.liveness:
            self.rule = rule
        return self


class StepTimeout(CheckFailure):
    """Liveness: a step missed its deadline, the server hung or is far too slow."""

    kind = FailureKind.STEP_TIMEOUT


class Stalled(StepTimeout):
    """Liveness: bytes were owed and nothing moved either way for the progress deadline."""

    kind = FailureKind.STALLED


class Divergence(CheckFailure):
    """The oracle found a wrong, missing or extra byte."""

    kind = FailureKind.DIVERGENCE
