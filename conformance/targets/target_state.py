"""What a run knows about a target, as data: its status, its exits, its notes, its events.

How this works
--------------
The owner of a started target (:class:`~conformance.targets.keeper.Keeper`) records
a :class:`TargetState` on the run's :class:`~conformance.targets.health.Board`; every
process reads it back. Everything here is plain data, no I/O: each record
turns into the JSON the board's files and the reports hold
(:meth:`TargetState.to_data`, :meth:`TargetEvent.to_data`) and back, the
enums' values being the words those files hold.

The states of a target (:class:`TargetStatus`)::

    up -> restarting -> up        (it exited; started again)
    up -> down                    (it exited; not restarted: --no-restart, too many exits)
    up -> restarting -> down      (the restart failed)

What can keep a check from running against it (:data:`NotReady`): it was
found unreachable by an earlier check (:class:`Unreachable`), it is
:class:`Down`, it was not up again in time after a restart
(:class:`NotUpAgain`), or it was never started (:class:`NeverStarted`).
"""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field
from typing import Any, TypeAlias

from conformance.targets.address import Address

__all__ = [
    "MAX_RESTARTS",
    "Down",
    "Exit",
    "NeverStarted",
    "Note",
    "NotReady",
    "NotUpAgain",
    "TargetEvent",
    "TargetEventKind",
    "TargetState",
    "TargetStatus",
    "Unreachable",
]

#: How many times a target that exited is restarted in one run, at most.
MAX_RESTARTS = 5


class TargetStatus(enum.Enum):
    """Where a started target stands; the value is the word its state file holds."""

    UP = "up"
    RESTARTING = "restarting"
    #: Exited, and not restarted (not wanted, too many exits, or the restart failed).
    DOWN = "down"


class TargetEventKind(enum.Enum):
    """What happened to a target; the value is the word the reports show."""

    EXITED = "exited"
    #: A fresh connection is refused, or not accepted.
    UNREACHABLE = "unreachable"
    #: Connections are accepted, but a short message gets nothing back: the
    #: server fails, it is not unreachable.
    SILENT = "silent"
    DAEMONIZED = "daemonized"
    LEFT_RUNNING = "left running"


#: What the run did about each kind of :class:`Note`.
_NOTE_OUTCOMES = {
    TargetEventKind.DAEMONIZED: (
        "followed as the target: its PID is the one watched, measured and stopped"
    ),
    TargetEventKind.LEFT_RUNNING: "the run could not stop it",
}


@dataclass(frozen=True)
class Exit:
    """One exit of a target's process.

    Attributes:
        generation: Which start of the target it ended (0: the first).
        how: ``exited with code N`` or ``exited with signal N (NAME)``.
        at: When (seconds since the epoch).
        stderr: Its last stderr lines.
        restarted: Whether it was started again.
    """

    generation: int
    how: str
    at: float
    stderr: tuple[str, ...] = ()
    restarted: bool = False


@dataclass(frozen=True)
class Note:
    """Something about a target that is not an exit: it daemonized, a process outlived the run.

    Attributes:
        kind: :attr:`TargetEventKind.DAEMONIZED` or :attr:`TargetEventKind.LEFT_RUNNING`.
        generation: Which start of the target it concerns.
        detail: What, in words: ``the server daemonized: PID 12 (CMD)``.
        at: When (seconds since the epoch).

    Raises:
        ValueError: ``kind`` is not a kind of note.
    """

    kind: TargetEventKind
    generation: int
    detail: str
    at: float

    def __post_init__(self) -> None:
        if self.kind not in _NOTE_OUTCOMES:
            raise ValueError(f"a note is daemonized or left running, not {self.kind.value}")

    def to_data(self) -> dict[str, Any]:
        return {**asdict(self), "kind": self.kind.value}

    @classmethod
    def from_data(cls, data: dict[str, Any]) -> Note:
        return cls(TargetEventKind(data["kind"]), data["generation"], data["detail"], data["at"])


@dataclass(frozen=True)
class TargetState:
    """The target as its owner last recorded it.

    Attributes:
        generation: How many times it was restarted.
        status: Up, restarting, or down (exited, not restarted).
        host: Where it listens now.
        port: Where it listens now.
        pid: Its process, when the suite started it.
        exits: Every exit seen, oldest first.
        down_reason: Why it is down: no restart wanted, too many, or the restart failed.
        notes: It daemonized; a process outlived the run.
    """

    generation: int
    status: TargetStatus
    host: str
    port: int
    pid: int | None
    exits: tuple[Exit, ...] = ()
    down_reason: str = ""
    notes: tuple[Note, ...] = ()

    @property
    def address(self) -> Address:
        return Address(self.host, self.port)

    def to_data(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "status": self.status.value,
            "notes": [n.to_data() for n in self.notes],
        }

    @classmethod
    def from_data(cls, data: dict[str, Any]) -> TargetState:
        exits = tuple(
            Exit(e["generation"], e["how"], e["at"], tuple(e["stderr"]), e["restarted"])
            for e in data["exits"]
        )
        return cls(
            data["generation"],
            TargetStatus(data["status"]),
            data["host"],
            data["port"],
            data["pid"],
            exits,
            data["down_reason"],
            tuple(Note.from_data(n) for n in data.get("notes", ())),
        )


@dataclass(frozen=True)
class Unreachable:
    """A check found that the target no longer serves a fresh connection.

    Attributes:
        check: The check after which it was found.
        detail: What the probe saw, in words.
        at: When (seconds since the epoch).
        accepts: It accepted the probe's connection, and sent nothing back
            (:attr:`TargetEventKind.SILENT`); False: refused, or not accepted
            (:attr:`TargetEventKind.UNREACHABLE`).
    """

    check: str
    detail: str
    at: float
    accepts: bool = False

    @property
    def kind(self) -> TargetEventKind:
        return TargetEventKind.SILENT if self.accepts else TargetEventKind.UNREACHABLE

    def to_data(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_data(cls, data: dict[str, Any]) -> Unreachable:
        return cls(data["check"], data["detail"], data["at"], bool(data.get("accepts")))


@dataclass(frozen=True)
class Down:
    """The target exited and was not restarted.

    Attributes:
        how: How its last start ended (``exited with signal 9 (SIGKILL)``),
            or ``stopped`` when no exit was recorded.
        during: The check that claimed that exit, if one did.
        reason: Why it was not restarted (``--no-restart``...).
    """

    how: str
    during: str | None
    reason: str


@dataclass(frozen=True)
class NotUpAgain:
    """The target was still restarting after ``timeout`` seconds."""

    timeout: float


@dataclass(frozen=True)
class NeverStarted:
    """Nothing was ever recorded about the target."""


#: Why a check cannot run against a target (:meth:`~conformance.targets.health.Board.wait_ready`).
NotReady: TypeAlias = Unreachable | Down | NotUpAgain | NeverStarted


@dataclass(frozen=True)
class TargetEvent:
    """Something that happened to a target during the run, for the reports.

    Attributes:
        kind: What (:class:`TargetEventKind`).
        check: The check during which it happened, if one claimed it.
        detail: How: ``exited with signal 13 (SIGPIPE)``, or what the probe saw.
        at: When (seconds since the epoch).
        outcome: What the run did next: ``restarted (1 of at most 5)``,
            ``not restarted: --no-restart``, ``the remaining checks were skipped``.
        stderr: The target's last stderr lines, for an exit.
    """

    kind: TargetEventKind
    check: str | None
    detail: str
    at: float
    outcome: str
    stderr: tuple[str, ...] = field(default=())

    @classmethod
    def of_note(cls, note: Note) -> TargetEvent:
        """The event of ``note``, with what the run did about it."""
        return cls(note.kind, None, note.detail, note.at, _NOTE_OUTCOMES[note.kind])

    def line(self) -> str:
        """One line for people."""
        if self.kind in _NOTE_OUTCOMES:
            return f"{self.detail}; {self.outcome}"
        during = f" during {self.check}" if self.check else " between two checks"
        if self.kind is TargetEventKind.UNREACHABLE:
            return f"stopped answering{during} ({self.detail}); {self.outcome}"
        if self.kind is TargetEventKind.SILENT:
            return (
                f"accepts connections but stopped answering{during} ({self.detail}); {self.outcome}"
            )
        return f"{self.detail}{during}; {self.outcome}"

    def to_data(self) -> dict[str, Any]:
        return {**asdict(self), "kind": self.kind.value, "stderr": list(self.stderr)}

    @classmethod
    def from_data(cls, data: dict[str, Any]) -> TargetEvent:
        return cls(
            TargetEventKind(data["kind"]),
            data["check"],
            data["detail"],
            data["at"],
            data["outcome"],
            tuple(data.get("stderr", ())),
        )
