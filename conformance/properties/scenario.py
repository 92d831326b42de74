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

A saved scenario (``--scenario FILE``) says which check it was saved from
(``"check"``): a check searches for scenarios of its own kind (half-closes
for PROP-HALFCLOSE-1, resets for PROP-ALIVE-1), so another check's scenario
would not test what it claims. :func:`read_saved` reads one and refuses,
with one line, what cannot be replayed at all (not JSON, an unknown
``format``, no connection with a step, no check named);
:meth:`SavedScenario.skip_reason` says why a check does not replay one
saved from another.
"""

from __future__ import annotations

import base64
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "FORMAT",
    "HalfClose",
    "Pause",
    "Read",
    "Reconnect",
    "Reset",
    "SavedScenario",
    "Scenario",
    "Script",
    "Send",
    "Step",
    "StopReading",
    "describe",
    "from_json",
    "read_saved",
    "to_json",
]

#: The ``format`` a scenario file carries; a file with another is refused.
FORMAT = "reactor-conformance scenario 1"


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


def _seconds(value: Any) -> float:
    seconds = float(value)
    if not (math.isfinite(seconds) and seconds >= 0):
        raise ValueError(f"a pause must be a number of seconds, got {value!r}")
    return seconds


def _size(value: Any) -> int:
    size = int(value)
    if size < 1:
        raise ValueError(f"a size must be at least 1 byte, got {value!r}")
    return size


def _step_from_dict(item: dict[str, Any]) -> Step:
    if "send" in item:
        data = base64.b64decode(item["send"], validate=True)
        return Send(data, tuple(_size(c) for c in item.get("chunks", ())))
    if "pause" in item:
        return Pause(_seconds(item["pause"]))
    if "read" in item:
        return Read(_size(item["read"]))
    if "stop_reading" in item:
        return StopReading(_seconds(item["stop_reading"]))
    if "half_close" in item:
        return HalfClose()
    if "reset" in item:
        return Reset()
    if "reconnect" in item:
        return Reconnect()
    raise ValueError(f"unknown step in scenario file: {item!r}")


def to_json(scenario: Scenario, *, check: str | None = None) -> str:
    """The scenario as JSON (payloads in base64).

    Args:
        scenario: The scenario.
        check: The ID of the check it is saved from; a file without one is
            not replayed by ``--scenario``.
    """
    data: dict[str, Any] = {"format": FORMAT}
    if check is not None:
        data["check"] = check
    data["connections"] = [
        {"rcvbuf": script.rcvbuf, "steps": [_step_to_dict(s) for s in script.steps]}
        for script in scenario.connections
    ]
    return json.dumps(data, indent=1)


def _parse(text: str) -> tuple[Scenario, dict[str, Any]]:
    try:
        data = json.loads(text)
        if not isinstance(data, dict) or "format" not in data:
            raise ValueError('no "format" field')
        if data["format"] != FORMAT:
            raise ValueError(f"unknown format {data['format']!r}, this version reads {FORMAT!r}")
        scenario = Scenario(
            tuple(
                Script(
                    tuple(_step_from_dict(s) for s in c["steps"]),
                    None if c.get("rcvbuf") is None else _size(c["rcvbuf"]),
                )
                for c in data["connections"]
            )
        )
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise ValueError(f"not a scenario file: {exc}") from None
    return scenario, data


def from_json(text: str) -> Scenario:
    """Read a scenario written by :func:`to_json`.

    Raises:
        ValueError: The text is not such a scenario; the message says where.
    """
    return _parse(text)[0]


@dataclass(frozen=True)
class SavedScenario:
    """A scenario file as ``--scenario`` replays it: the scenario and the check it came from."""

    scenario: Scenario
    check: str

    def skip_reason(self, check: str, path: Path | str) -> str | None:
        """Why ``check`` does not replay this scenario, or None when it does (its own)."""
        if check == self.check:
            return None
        return (
            f"does not apply: the scenario {path} was saved from {self.check}, not from "
            f"{check}; a check replays only its own scenarios (add --checks {self.check})"
        )


def read_saved(text: str) -> SavedScenario:
    """Read a saved scenario, refusing one that cannot be replayed at all.

    Raises:
        ValueError: In one line: it is not a scenario file (not JSON, an
            unknown format, a malformed step), has no connection with a
            step (nothing to replay), or names no check it was saved from.
    """
    scenario, data = _parse(text)
    if not any(script.steps for script in scenario.connections):
        raise ValueError("the scenario has no connection with a step: there is nothing to replay")
    check = data.get("check")
    if not isinstance(check, str) or not check:
        raise ValueError(
            'the scenario does not name the check it was saved from ("check"); '
            "a check saves its failing scenarios with it: rerun the check to get one"
        )
    return SavedScenario(scenario, check)
