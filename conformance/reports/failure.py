"""Failure reports a person can act on, built once as data.

A :class:`FailureReport` names the check and the step that failed, and for the
connection it failed on: what was sent (size and a hex excerpt around the
divergence), what came back, the first divergent offset, how the connection
ended, its last events, and the command that replays just that check against
the same target.

It is built once, where the failure happens (:meth:`FailureReport.build`),
and travels as plain data (:meth:`FailureReport.to_data`: an xdist worker's
test report carries it to the controller as a user property). Each report
renders it: the terminal and JUnit as text (:meth:`FailureReport.render`),
JSON as fields (:meth:`FailureReport.fields`), HTML from the fields and the
hex cells. Nothing reads the text back.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any

from conformance.rules import Level, Rule, by_rule_id
from conformance.transcript import FailureKind

if TYPE_CHECKING:
    from conformance.transcript import CheckFailure, Transcript

__all__ = ["ByteDivergence", "Excerpt", "FailureKind", "FailureReport", "hex_excerpt"]

#: Bytes shown on each side of a divergence.
CONTEXT = 16
#: Other connections listed by name in a report.
OTHERS_SHOWN = 4
#: Events of the failing connection listed.
EVENTS_SHOWN = 6


@dataclass(frozen=True)
class Excerpt:
    """Bytes of one side of a connection around an offset.

    Attributes:
        size: How many bytes that side had in all.
        start: The offset of the first cell.
        cells: Each byte in hex (``"61"``), and ``"end"`` where the data stops
            before the offset.
        marked: The index of the cell at the offset, if any.
    """

    size: int
    start: int
    cells: tuple[str, ...]
    marked: int | None

    @classmethod
    def around(cls, data: bytes | bytearray, offset: int, context: int = CONTEXT) -> Excerpt:
        """The bytes of ``data`` within ``context`` of ``offset``."""
        start = max(0, offset - context)
        stop = min(len(data), offset + context)
        cells = [f"{data[i]:02x}" for i in range(start, stop)]
        marked = offset - start if offset < len(data) else None
        if offset >= len(data):
            marked = len(cells)
            cells.append("end")
        return cls(len(data), start, tuple(cells), marked)

    def text(self) -> str:
        """For example ``@0x10: 61 62 [63] 64``."""
        words = [f"[{c}]" if i == self.marked else c for i, c in enumerate(self.cells)]
        return f"@0x{self.start:x}: " + " ".join(words)


def hex_excerpt(data: bytes | bytearray, offset: int, context: int = CONTEXT) -> str:
    """Hex of ``data`` around ``offset``, the byte at ``offset`` in brackets.

    Returns:
        For example ``@0x10: 61 62 [63] 64``; ``[end]`` where ``data`` stops
        before ``offset``.
    """
    return Excerpt.around(data, offset, context).text()


@dataclass(frozen=True)
class ByteDivergence:
    """Where what came back first differs from what the oracle expects.

    Attributes:
        what: ``first divergent offset`` (a wrong byte) or ``first byte still
            owed`` (a missing one).
        offset: The offset, in the connection's stream.
        reason: The oracle's words.
        sent: What was sent around the offset.
        received: What came back around the offset.
    """

    what: str
    offset: int
    reason: str
    sent: Excerpt
    received: Excerpt


@dataclass(frozen=True)
class FailureReport:
    """The bug report of one failed check.

    Attributes:
        check_line: The check: ID, level, category, spec, title.
        kind: What went wrong (:class:`FailureKind`).
        step: The step that failed, if known.
        message: How it went wrong.
        connection: A summary of the connection it failed on, if any.
        divergence: The first wrong or missing byte, if the oracle found one.
        bytes_seen: Without a divergence: the start of what was sent and the
            end of what came back, one line each.
        events: The connection's last events, if any.
        others: Summaries of the check's other connections.
        more: How many other connections are not listed.
        replay: The command that reruns just this check.
        seen: When the target exited or stopped answering during the check:
            what the check itself saw (its own failure's headline), if it failed.
        stderr: The last lines of the target's stderr, when it exited.
        rule: The rule broken (:mod:`conformance.rules`), when the check
            judges several.
        level: That rule's level, which decides the verdict; None: the check's.
    """

    check_line: str
    kind: FailureKind
    message: str
    replay: str
    step: str | None = None
    connection: str | None = None
    divergence: ByteDivergence | None = None
    bytes_seen: tuple[str, ...] = ()
    events: str | None = None
    others: tuple[str, ...] = ()
    more: int = 0
    seen: str | None = None
    stderr: tuple[str, ...] = ()
    rule: Rule | None = None
    level: Level | None = None

    @classmethod
    def build(
        cls,
        *,
        check_line: str,
        failure: CheckFailure,
        transcripts: Sequence[Transcript],
        replay: str,
    ) -> FailureReport:
        """The report of ``failure``.

        Args:
            check_line: The check: ID, level, category, spec, title.
            failure: What went wrong.
            transcripts: Every recorded connection of the check.
            replay: The command that reruns just this check.
        """
        transcript = failure.transcript
        connection = divergence = events = None
        bytes_seen: tuple[str, ...] = ()
        if transcript is not None:
            connection = transcript.summary()
            verdict = failure.verdict
            if verdict is not None and verdict.offset is not None:
                offset = verdict.offset
                divergence = ByteDivergence(
                    "first divergent offset" if verdict.failed else "first byte still owed",
                    offset,
                    verdict.reason,
                    Excerpt.around(transcript.sent, offset),
                    Excerpt.around(transcript.received, offset),
                )
            elif transcript.sent or transcript.received:
                bytes_seen = (
                    f"sent     {len(transcript.sent)} bytes, "
                    f"starting {_printable(transcript.sent[:24])}",
                    f"received {len(transcript.received)} bytes, "
                    f"ending {_printable(transcript.received[-24:])}",
                )
            tail = transcript.events[-EVENTS_SHOWN:]
            if tail:
                events = ", ".join(
                    f"{e.at:.3f}s {e.action}" + (f" {e.size}" if e.size else "") for e in tail
                )
        others = [t for t in transcripts if t is not transcript]
        rule = failure.rule
        return cls(
            check_line=check_line,
            kind=failure.kind,
            message=failure.message,
            replay=replay,
            step=failure.step,
            connection=connection,
            divergence=divergence,
            bytes_seen=bytes_seen,
            events=events,
            others=tuple(t.summary() for t in others[:OTHERS_SHOWN]),
            more=max(0, len(others) - OTHERS_SHOWN),
            rule=rule,
            level=rule.level if rule is not None else None,
        )

    def about_target(
        self, kind: FailureKind, message: str, stderr: Sequence[str] = ()
    ) -> FailureReport:
        """This report, led by what happened to the target (it exited, stopped answering)."""
        return replace(
            self,
            kind=kind,
            message=message,
            step=None,
            seen=self.headline(),
            stderr=tuple(stderr),
        )

    def headline(self) -> str:
        """What went wrong, where: ``Divergence at step 'x': byte 2 differs``."""
        where = f" at step {self.step!r}" if self.step else ""
        return f"{self.kind.value}{where}: {self.message}"

    def render(self) -> str:
        """The report as text, several lines."""
        lines = [f"FAILED {self.check_line}", f"  {self.headline()}"]
        if self.rule is not None:
            lines.append(f"  broke {self.rule.line}")
        if self.seen is not None:
            lines.append(f"  the check saw: {self.seen}")
        if self.connection is not None:
            lines.append(f"  {self.connection}")
        if self.divergence is not None:
            d = self.divergence
            lines.append(f"  {d.what}: {d.offset} ({d.reason})")
            lines.append(f"  sent     ({d.sent.size} bytes) {d.sent.text()}")
            lines.append(f"  received ({d.received.size} bytes) {d.received.text()}")
        lines += [f"  {line}" for line in self.bytes_seen]
        if self.events:
            lines.append(f"  last events: {self.events}")
        lines += [f"  also {other}" for other in self.others]
        if self.more:
            lines.append(f"  ... and {self.more} more connections")
        if self.stderr:
            lines.append(f"  the target's last {len(self.stderr)} stderr lines:")
            lines += [f"    | {line}" for line in self.stderr]
        lines.append(f"  replay: {self.replay}")
        return "\n".join(lines)

    def fields(self) -> dict[str, Any]:
        """The fields the JSON report shows (``conformance/report.schema.json``)."""
        divergence = None
        if self.divergence is not None:
            d = self.divergence
            divergence = {
                "what": d.what,
                "offset": d.offset,
                "reason": d.reason,
                "sent": {"size": d.sent.size, "excerpt": d.sent.text()},
                "received": {"size": d.received.size, "excerpt": d.received.text()},
            }
        others = list(self.others)
        if self.more:
            others.append(f"... and {self.more} more connections")
        return {
            "kind": self.kind.value,
            "step": self.step,
            "message": self.message,
            "connection": self.connection,
            "divergence": divergence,
            "events": self.events,
            "other_connections": others,
            "replay": self.replay,
            "seen": self.seen,
            "stderr": list(self.stderr),
            "rule": self.rule.id if self.rule is not None else None,
            "level": self.level.value if self.level is not None else None,
        }

    def to_data(self) -> dict[str, Any]:
        """Plain data (dicts, lists, strings, numbers) that :meth:`from_data` reads."""
        return {
            **asdict(self),
            "kind": self.kind.value,
            "rule": self.rule.id if self.rule is not None else None,
            "level": self.level.value if self.level is not None else None,
        }

    @classmethod
    def from_data(cls, data: Any) -> FailureReport:
        """The report that :meth:`to_data` gave ``data`` for."""
        values = dict(data)
        d = values.pop("divergence")
        divergence = None
        if d is not None:
            divergence = ByteDivergence(
                d["what"], d["offset"], d["reason"], _excerpt(d["sent"]), _excerpt(d["received"])
            )
        values["bytes_seen"] = tuple(values["bytes_seen"])
        values["others"] = tuple(values["others"])
        values["stderr"] = tuple(values.get("stderr", ()))
        values.setdefault("seen", None)
        values["kind"] = FailureKind(values["kind"])
        rule, level = values.pop("rule", None), values.pop("level", None)
        return cls(
            divergence=divergence,
            rule=by_rule_id(rule) if rule is not None else None,
            level=Level(level) if level is not None else None,
            **values,
        )


def _excerpt(data: dict[str, Any]) -> Excerpt:
    return Excerpt(data["size"], data["start"], tuple(data["cells"]), data["marked"])


def _printable(data: bytes | bytearray) -> str:
    return repr(bytes(data))
