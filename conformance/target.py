"""Targets: the server under test, given as an address or as a command to start.

How this works
--------------
A :class:`TargetSpec` is what the user wrote: ``--target HOST:PORT`` (a server
already running), ``--spawn "CMD"`` (a command the suite starts), or
``--reference single|pool|multi`` (``python -m reference MODEL --port 0``).
With none, the suite tests the project's own single-reactor server.

:func:`start_target` turns a spec into a :class:`RunningTarget`: for a
command, it replaces ``{port}`` with a free port, or else waits for the
command to print ``listening on HOST:PORT``; either way it then waits, under a
deadline, until the address accepts a connection. Starting, reading the
command's output, waiting for that line and stopping its process group are
:mod:`conformance.spawn`'s; this module adds what only a target needs.
"""

from __future__ import annotations

import enum
import os
import re
import shlex
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from conformance.errors import TargetError, UsageError
from conformance.spawn import Spawned, spawn

__all__ = [
    "REFERENCE_MODELS",
    "Address",
    "RunningTarget",
    "TargetKind",
    "TargetSpec",
    "free_port",
    "parse_address",
    "probe",
    "start_target",
]

#: The models ``--reference`` accepts.
REFERENCE_MODELS = ("single", "pool", "multi")

_ADDRESS = re.compile(r"^(?:\[(?P<v6>[^\]]+)\]|(?P<host>[^\[\]:\s]+)):(?P<port>\d+)$")


@dataclass(frozen=True)
class Address:
    """A TCP address; ``str()`` gives ``HOST:PORT``, with brackets for IPv6."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_address(text: str) -> Address:
    """Parse ``HOST:PORT`` or ``[IPV6]:PORT``.

    Raises:
        UsageError: The text is not of that form, or the port is out of range.
    """
    match = _ADDRESS.match(text.strip())
    if match is None:
        raise UsageError(
            f"malformed target {text!r}: expected HOST:PORT, "
            "for example 127.0.0.1:7000 or [::1]:7000"
        )
    port = int(match["port"])
    if not 1 <= port <= 65535:
        raise UsageError(f"malformed target {text!r}: port must be between 1 and 65535")
    return Address(match["v6"] or match["host"], port)


class TargetKind(enum.StrEnum):
    """How the user named the target; each value is also its name in reports."""

    #: ``--target HOST:PORT``: a server already running.
    ADDRESS = "address"
    #: ``--spawn CMD``: a command the suite starts and stops.
    SPAWN = "spawn"
    #: ``--reference MODEL``: one of the project's own servers.
    REFERENCE = "reference"


@dataclass(frozen=True)
class TargetSpec:
    """The target as the user named it.

    Attributes:
        kind: How it is named; a string among :class:`TargetKind`'s values is
            taken as that kind.
        value: The address, the command, or the model name.

    Raises:
        ValueError: ``kind`` is none of :class:`TargetKind`'s values.
    """

    kind: TargetKind
    value: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", TargetKind(self.kind))

    @classmethod
    def default(cls) -> TargetSpec:
        """The project's own single-reactor server."""
        return cls(TargetKind.REFERENCE, "single")

    @classmethod
    def from_options(
        cls, target: str | None, spawn: str | None, reference: str | None
    ) -> TargetSpec:
        """Build a spec from the three options, at most one of which may be given.

        Raises:
            UsageError: More than one is given, or one is malformed.
        """
        given = [
            (k, v) for k, v in (("target", target), ("spawn", spawn), ("reference", reference))
        ]
        chosen = [(k, v) for k, v in given if v is not None]
        if len(chosen) > 1:
            names = " and ".join(f"--{k}" for k, _ in chosen)
            raise UsageError(f"{names} name two targets: give only one")
        if not chosen:
            return cls.default()
        kind, value = chosen[0]
        assert value is not None
        if kind == "target":
            parse_address(value)
            return cls(TargetKind.ADDRESS, value)
        if kind == "spawn":
            if not value.strip():
                raise UsageError("--spawn needs a command, for example --spawn 'my-server {port}'")
            try:
                shlex.split(value)
            except ValueError as exc:
                raise UsageError(f"--spawn {value!r}: cannot split the command ({exc})") from None
            return cls(TargetKind.SPAWN, value)
        if value not in REFERENCE_MODELS:
            raise UsageError(
                f"unknown reference model {value!r}: choose one of {', '.join(REFERENCE_MODELS)}"
            )
        return cls(TargetKind.REFERENCE, value)

    def options(self) -> list[str]:
        """The command-line options that name this target again."""
        flag = {
            TargetKind.ADDRESS: "--target",
            TargetKind.SPAWN: "--spawn",
            TargetKind.REFERENCE: "--reference",
        }[self.kind]
        return [flag, self.value]

    def describe(self) -> str:
        """The target in a few words, for reports."""
        if self.kind is TargetKind.ADDRESS:
            return self.value
        if self.kind is TargetKind.SPAWN:
            return f"spawned: {self.value}"
        return f"reference {self.value} server"


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago on ``host`` (the OS picks it)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def probe(address: Address, timeout: float = 2.0) -> OSError | None:
    """Try one connection to ``address``; return the error, or None if it was accepted."""
    try:
        with socket.create_connection((address.host, address.port), timeout=timeout):
            return None
    except OSError as exc:
        return exc


class RunningTarget:
    """A target that accepts connections, and the process behind it if the suite started it.

    Attributes:
        spec: How the user named it.
        address: Where it listens.
        server: The process the suite started, or None.
        proc: That process's :class:`subprocess.Popen`, or None.
        pid: Its PID, or None.
    """

    def __init__(self, spec: TargetSpec, address: Address, server: Spawned | None = None) -> None:
        self.spec = spec
        self.address = address
        self.server = server
        self.proc: subprocess.Popen[str] | None = server.proc if server is not None else None
        self.pid = server.pid if server is not None else None

    def stop(self, grace: float = 5.0) -> int | None:
        """Stop the process the suite started: SIGTERM to its group, then SIGKILL.

        Returns:
            Its exit code, or None when the suite started nothing.
        """
        return self.server.stop(grace) if self.server is not None else None

    def __enter__(self) -> RunningTarget:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _reference_command(model: str) -> list[str]:
    return [sys.executable, "-m", "reference", model, "--port", "0"]


def start_target(
    spec: TargetSpec, *, start_timeout: float = 20.0, stderr_log: Path | None = None
) -> RunningTarget:
    """Make the target ready: probe an address, or start a command and wait for it.

    Args:
        spec: The target.
        start_timeout: Seconds a started server has to accept a connection.
        stderr_log: A file that a started server's stderr is appended to.

    Returns:
        The running target; stop it with :meth:`RunningTarget.stop`.

    Raises:
        TargetError: Nothing accepts at the address, the command cannot be run,
            exits, or does not accept connections within ``start_timeout``.
    """
    if spec.kind is TargetKind.ADDRESS:
        address = parse_address(spec.value)
        error = probe(address, timeout=min(start_timeout, 5.0))
        if error is not None:
            raise TargetError(
                f"cannot connect to {address}: {_reason(error)} (is the server running there?)"
            )
        return RunningTarget(spec, address)
    env = dict(os.environ)
    fixed: Address | None = None
    if spec.kind is TargetKind.REFERENCE:
        argv = _reference_command(spec.value)
        # The reference package sits beside this one, installed or in a source tree.
        root = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    else:
        command = spec.value
        if "{port}" in command:
            fixed = Address("127.0.0.1", free_port())
            command = command.replace("{port}", str(fixed.port))
        argv = shlex.split(command)
    server = spawn(argv, env=env, stderr_log=stderr_log)
    running = RunningTarget(spec, fixed or Address("127.0.0.1", 0), server)
    deadline = time.monotonic() + start_timeout
    try:
        if fixed is None:
            running.address = Address(*server.wait_listening(start_timeout))
        _wait_accepting(running.address, server, deadline, start_timeout)
    except BaseException:
        running.stop()
        raise
    return running


def _wait_accepting(
    address: Address, server: Spawned, deadline: float, start_timeout: float
) -> None:
    """Probe the address until it accepts, the process exits, or the deadline passes."""
    while True:
        if not server.alive():
            raise TargetError(server.why_not_listening(start_timeout))
        error = probe(address, timeout=1.0)
        if error is None:
            return
        if time.monotonic() >= deadline:
            raise TargetError(
                f"{shlex.join(server.argv)} does not accept connections on {address} "
                f"within {start_timeout:g}s: {_reason(error)}"
            )
        try:
            server.proc.wait(0.05)  # Between probes, an exit ends the wait early.
        except subprocess.TimeoutExpired:
            pass


def _reason(exc: OSError) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    return exc.strerror or str(exc)
