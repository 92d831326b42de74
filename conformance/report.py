"""Failure reports a person can act on.

A report names the check and the step that failed, and for the connection it
failed on: what was sent (size and a hex excerpt around the divergence), what
came back, the first divergent offset, how the connection ended, its last
events, and the command that replays just that check against the same target.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from conformance.harness import CheckFailure, Transcript

__all__ = ["hex_excerpt", "render_failure"]

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
