"""Scenarios as plain data: what each client connection does, step by step.

How this works
--------------
A :class:`Scenario` is one or more connections, each a :class:`Script`: a
tuple of steps, run in order on that connection while the connections run at
the same time. A reader runs beside each connection's steps, so replies come
back while it still sends (data in flight both ways).

Steps:

- :class:`Send` ``data``, in writes of ``chunks`` sizes (cycled; empty: as
  much as the socket takes);
- :class:`Pause` for some seconds (pacing only; no verdict depends on time);
- :class:`Read` sets the reader's buffer size from now on;
- :class:`StopReading` for some seconds (the server must hold or pause);
- :class:`HalfClose`: ``shutdown(SHUT_WR)``; the rest of the script is empty;
- :class:`Reset`: close with RST; nothing is owed on it any more;
- :class:`Reconnect`: wait for everything owed, close, open a new connection.

Scenarios are frozen dataclasses, print as a short step list
(:func:`describe`), and round-trip through JSON (:func:`to_json`,
:func:`from_json`) so a failing one can be saved and replayed exactly.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

__all__ = [
    "HalfClose",
    "Pause",
    "Read",
    "Reconnect",
    "Reset",
    "Scenario",
    "Script",
    "Send",
    "Step",
    "StopReading",
    "describe",
    "from_json",
    "to_json",
]


@dataclass(frozen=True)
class Send:
    data: bytes
    chunks: tuple[int, ...] = ()


@dataclass(frozen=True)
class Pause:
    seconds: float


@dataclass(frozen=True)
class Read:
    size: int


@dataclass(frozen=True)
class StopReading:
    seconds: float


@dataclass(frozen=True)
class HalfClose:
    pass


@dataclass(frozen=True)
class Reset:
    pass


@dataclass(frozen=True)
class Reconnect:
    pass


Step = Send | Pause | Read | StopReading | HalfClose | Reset | Reconnect


@dataclass(frozen=True)
class Script:
    """What one connection does; ``rcvbuf`` gives it a tiny receive window.

    With a tiny window the server's ``send`` returns short as soon as the
    client stops reading: the partial-write path of the server is exercised.
    """

    steps: tuple[Step, ...]
    rcvbuf: int | None = None


@dataclass(frozen=True)
class Scenario:
    """Connections that run at the same time against one server."""

    connections: tuple[Script, ...]

    @property
    def bytes_sent(self) -> int:
        return sum(
            len(step.data) for script in self.connections for step in script.steps
            if isinstance(step, Send)
        )  # fmt: skip


def _preview(data: bytes) -> str:
    head = data[:8].hex()
    return f"{len(data)} bytes ({head}{'...' if len(data) > 8 else ''})"


def describe_step(step: Step) -> str:
    """One step as a short line."""
    match step:
        case Send(data, chunks):
            how = f" in writes of {list(chunks)}" if chunks else ""
            return f"send {_preview(data)}{how}"
        case Pause(seconds):
            return f"pause {seconds * 1000:.0f} ms"
        case Read(size):
            return f"read with a {size}-byte buffer"
        case StopReading(seconds):
            return f"stop reading for {seconds * 1000:.0f} ms"
        case HalfClose():
            return "half-close (shutdown SHUT_WR), expect the rest then FIN"
        case Reset():
            return "reset (RST)"
        case Reconnect():
            return "wait for the replies, close, reconnect"
    raise AssertionError(f"unknown step {step!r}")


def describe(scenario: Scenario) -> str:
    """The scenario as a short, numbered step list, one block per connection."""
    lines = []
    for i, script in enumerate(scenario.connections, 1):
        window = f" (receive buffer {script.rcvbuf} bytes)" if script.rcvbuf else ""
        lines.append(f"connection {i}{window}:")
        if not script.steps:
            lines.append("  (connect, then close)")
        for n, step in enumerate(script.steps, 1):
            lines.append(f"  {n}. {describe_step(step)}")
    return "\n".join(lines)


def _step_to_dict(step: Step) -> dict[str, Any]:
    match step:
        case Send(data, chunks):
            return {"send": base64.b64encode(data).decode(), "chunks": list(chunks)}
        case Pause(seconds):
            return {"pause": seconds}
        case Read(size):
            return {"read": size}
        case StopReading(seconds):
            return {"stop_reading": seconds}
        case HalfClose():
            return {"half_close": True}
        case Reset():
            return {"reset": True}
        case Reconnect():
            return {"reconnect": True}
    raise AssertionError(f"unknown step {step!r}")


def _step_from_dict(item: dict[str, Any]) -> Step:
    if "send" in item:
        return Send(base64.b64decode(item["send"]), tuple(int(c) for c in item.get("chunks", ())))
    if "pause" in item:
        return Pause(float(item["pause"]))
    if "read" in item:
        return Read(int(item["read"]))
    if "stop_reading" in item:
        return StopReading(float(item["stop_reading"]))
    if "half_close" in item:
        return HalfClose()
    if "reset" in item:
        return Reset()
    if "reconnect" in item:
        return Reconnect()
    raise ValueError(f"unknown step in scenario file: {item!r}")


def to_json(scenario: Scenario) -> str:
    """The scenario as JSON (payloads in base64)."""
    data = {
        "format": "reactor-conformance scenario 1",
        "connections": [
            {"rcvbuf": script.rcvbuf, "steps": [_step_to_dict(s) for s in script.steps]}
            for script in scenario.connections
        ],
    }
    return json.dumps(data, indent=1)


def from_json(text: str) -> Scenario:
    """Read a scenario written by :func:`to_json`.

    Raises:
        ValueError: The text is not such a scenario; the message says where.
    """
    try:
        data = json.loads(text)
        connections = data["connections"]
        return Scenario(
            tuple(
                Script(tuple(_step_from_dict(s) for s in c["steps"]), c.get("rcvbuf"))
                for c in connections
            )
        )
    except (KeyError, TypeError, json.JSONDecodeError, ValueError) as exc:
        raise ValueError(f"not a scenario file: {exc}") from None
