"""Failure reports a person can act on.

A report names the check and the step that failed, and for the connection it
failed on: what was sent (size and a hex excerpt around the divergence), what
came back, the first divergent offset, how the connection ended, its last
events, and the command that replays just that check against the same target.

The text is what crosses process boundaries (a pytest report property under
xdist); :func:`parse_failure` reads it back into the fields the JSON and HTML
reports show. The two functions are kept side by side so that they agree.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from conformance.harness import CheckFailure, Transcript

__all__ = ["hex_excerpt", "parse_excerpt", "parse_failure", "render_failure"]

#: Bytes shown on each side of a divergence.
CONTEXT = 16


def hex_excerpt(data: bytes | bytearray, offset: int, context: int = CONTEXT) -> str:
    """Hex of ``data`` around ``offset``, the byte at ``offset`` in brackets.

    Returns:
        For example ``@0x10: 61 62 [63] 64``; ``(end)`` where ``data`` stops
        before ``offset``.
    """
    start = max(0, offset - context)
    stop = min(len(data), offset + context)
    parts = []
    for i in range(start, stop):
        text = f"{data[i]:02x}"
        parts.append(f"[{text}]" if i == offset else text)
    if offset >= len(data):
        parts.append("[end]")
    return f"@0x{start:x}: " + " ".join(parts)


def _printable(data: bytes | bytearray) -> str:
    return repr(bytes(data))


def render_failure(
    *,
    check_line: str,
    failure: CheckFailure,
    transcripts: Sequence[Transcript],
    replay: str,
) -> str:
    """The bug report of one failed check.

    Args:
        check_line: The check: ID, level, category, spec, title.
        failure: What went wrong.
        transcripts: Every recorded connection of the check.
        replay: The command that reruns just this check.

    Returns:
        Several lines of text.
    """
    lines = [f"FAILED {check_line}"]
    kind = type(failure).__name__
    where = f" at step {failure.step!r}" if failure.step else ""
    lines.append(f"  {kind}{where}: {failure.message}")
    transcript = failure.transcript
    if transcript is not None:
        lines.append(f"  {transcript.summary()}")
        verdict = failure.verdict
        if verdict is not None and verdict.offset is not None:
            offset = verdict.offset
            what = "first divergent offset" if verdict.failed else "first byte still owed"
            lines.append(f"  {what}: {offset} ({verdict.reason})")
            lines.append(
                f"  sent     ({len(transcript.sent)} bytes) {hex_excerpt(transcript.sent, offset)}"
            )
            lines.append(
                f"  received ({len(transcript.received)} bytes) "
                f"{hex_excerpt(transcript.received, offset)}"
            )
        elif transcript.sent or transcript.received:
            lines.append(
                f"  sent     {len(transcript.sent)} bytes, "
                f"starting {_printable(transcript.sent[:24])}"
            )
            lines.append(
                f"  received {len(transcript.received)} bytes, "
                f"ending {_printable(transcript.received[-24:])}"
            )
        tail = transcript.events[-6:]
        if tail:
            events = ", ".join(
                f"{e.at:.3f}s {e.action}" + (f" {e.size}" if e.size else "") for e in tail
            )
            lines.append(f"  last events: {events}")
    others = [t for t in transcripts if t is not transcript]
    if others:
        shown = others[:4]
        for other in shown:
            lines.append(f"  also {other.summary()}")
        if len(others) > len(shown):
            lines.append(f"  ... and {len(others) - len(shown)} more connections")
    lines.append(f"  replay: {replay}")
    return "\n".join(lines)


_HEADLINE = re.compile(
    r"^  (?P<kind>[A-Za-z_]\w*)"
    r"(?: at step (?P<step>'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"))?: (?P<message>.*)$"
)
_OFFSET = re.compile(
    r"^  (?P<what>first divergent offset|first byte still owed): (?P<offset>\d+)"
    r"(?: \((?P<reason>.*)\))?$"
)
_EXCERPT = re.compile(r"^  (?P<side>sent|received) +\((?P<size>\d+) bytes\) (?P<excerpt>@0x.*)$")


def parse_excerpt(excerpt: str) -> tuple[int, list[str], int | None]:
    """Split a :func:`hex_excerpt` into its start, its byte cells and the marked cell.

    Returns:
        The offset of the first cell, the cells (``"61"``, or ``"end"`` past the
        data), and the index of the bracketed cell, or None.
    """
    head, _, body = excerpt.partition(": ")
    start = int(head.removeprefix("@0x") or "0", 16)
    cells: list[str] = []
    marked: int | None = None
    for word in body.split():
        if word.startswith("[") and word.endswith("]"):
            marked = len(cells)
            word = word[1:-1]
        cells.append(word)
    return start, cells, marked


def parse_failure(report: str) -> dict[str, Any]:
    """Read a report made by :func:`render_failure` back into its fields.

    Args:
        report: The text of one bug report.

    Returns:
        ``kind``, ``step``, ``message``, ``connection`` (the summary of the
        connection it failed on), ``divergence`` (``what``, ``offset``,
        ``reason``, ``sent`` and ``received``, each with ``size`` and
        ``excerpt``; or None), ``events``, ``other_connections`` and
        ``replay``. A field the report lacks is None (a list: empty).
    """
    fields: dict[str, Any] = {
        "kind": None,
        "step": None,
        "message": None,
        "connection": None,
        "divergence": None,
        "events": None,
        "other_connections": [],
        "replay": None,
    }
    divergence: dict[str, Any] = {}
    for line in report.splitlines()[1:]:
        if fields["kind"] is None and (match := _HEADLINE.match(line)):
            fields["kind"] = match["kind"]
            fields["message"] = match["message"]
            if match["step"]:
                try:
                    fields["step"] = str(ast.literal_eval(match["step"]))
                except (ValueError, SyntaxError):
                    fields["step"] = match["step"]
        elif line.startswith("  connection ") and fields["connection"] is None:
            fields["connection"] = line.strip()
        elif match := _OFFSET.match(line):
            divergence["what"] = match["what"]
            divergence["offset"] = int(match["offset"])
            divergence["reason"] = match["reason"] or ""
        elif match := _EXCERPT.match(line):
            divergence[match["side"]] = {"size": int(match["size"]), "excerpt": match["excerpt"]}
        elif line.startswith("  last events: "):
            fields["events"] = line.removeprefix("  last events: ")
        elif line.startswith("  also ") or line.startswith("  ... and "):
            fields["other_connections"].append(line.strip().removeprefix("also "))
        elif line.startswith("  replay: "):
            fields["replay"] = line.removeprefix("  replay: ")
    if "offset" in divergence and "sent" in divergence and "received" in divergence:
        fields["divergence"] = {
            key: divergence[key] for key in ("what", "offset", "reason", "sent", "received")
        }
    return fields
