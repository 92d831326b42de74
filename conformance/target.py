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
deadline, until the address accepts a connection. The command runs in a new
session (its own process group); :meth:`RunningTarget.stop` sends SIGTERM to
that group, waits, then SIGKILL. Its stdout and stderr are drained by two
threads so it never blocks on a full pipe, and the last lines of stderr are
kept for the error message of a server that died.
"""

from __future__ import annotations

import collections
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from conformance.errors import TargetError, UsageError

__all__ = [
    "REFERENCE_MODELS",
    "Address",
    "RunningTarget",
    "TargetSpec",
    "free_port",
    "parse_address",
    "probe",
    "start_target",
]

#: The models ``--reference`` accepts.
REFERENCE_MODELS = ("single", "pool", "multi")

_LISTENING = re.compile(r"listening on (\[[^\]]+\]|[^\s:]+):(\d+)\s*$")
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


@dataclass(frozen=True)
class TargetSpec:
    """The target as the user named it.

    Attributes:
        kind: ``address``, ``spawn`` or ``reference``.
        value: The address, the command, or the model name.
    """

    kind: str
    value: str

    @classmethod
    def default(cls) -> TargetSpec:
        """The project's own single-reactor server."""
        return cls("reference", "single")

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
            return cls("address", value)
        if kind == "spawn":
            if not value.strip():
                raise UsageError("--spawn needs a command, for example --spawn 'my-server {port}'")
            try:
                shlex.split(value)
            except ValueError as exc:
                raise UsageError(f"--spawn {value!r}: cannot split the command ({exc})") from None
            return cls("spawn", value)
        if value not in REFERENCE_MODELS:
            raise UsageError(
                f"unknown reference model {value!r}: choose one of {', '.join(REFERENCE_MODELS)}"
            )
        return cls("reference", value)

    def options(self) -> list[str]:
        """The command-line options that name this target again."""
        flag = {"address": "--target", "spawn": "--spawn", "reference": "--reference"}[self.kind]
        return [flag, self.value]

    def describe(self) -> str:
        if self.kind == "address":
            return self.value
        if self.kind == "spawn":
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
        pid: The process the suite started, or None.
    """

    def __init__(
        self,
        spec: TargetSpec,
        address: Address,
        proc: subprocess.Popen[str] | None = None,
        drains: list[_Drain] | None = None,
    ) -> None:
        self.spec = spec
        self.address = address
        self.proc = proc
        self.pid = proc.pid if proc is not None else None
        self._drains = drains or []

    def stop(self, grace: float = 5.0) -> int | None:
        """Stop the process the suite started: SIGTERM to its group, then SIGKILL.

        Returns:
            Its exit code, or None when the suite started nothing.
        """
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            _signal_group(proc.pid, signal.SIGTERM)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                _signal_group(proc.pid, signal.SIGKILL)
                proc.wait(grace)
        # Children of a forking server (socat fork) share its group; SIGKILL ends
        # any that outlived their parent.
        _signal_group(proc.pid, signal.SIGKILL)
        for drain in self._drains:
            drain.join(grace)
        return proc.returncode

    def __enter__(self) -> RunningTarget:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _signal_group(pid: int, signum: int) -> None:
    try:
        os.killpg(pid, signum)
    except ProcessLookupError:
        pass  # The group is already gone.


class _Drain(threading.Thread):
    """Reads one pipe of the server to its end, keeping the last lines."""

    def __init__(self, stream: IO[str], keep: int = 20) -> None:
        super().__init__(daemon=True)
        self.stream = stream
        self.lines: collections.deque[str] = collections.deque(maxlen=keep)
        self.first: list[str] = []
        self.changed = threading.Condition()
        self.ended = False

    def run(self) -> None:
        try:
            for line in iter(self.stream.readline, ""):
                with self.changed:
                    self.lines.append(line.rstrip("\n"))
                    if len(self.first) < 20:
                        self.first.append(line.rstrip("\n"))
                    self.changed.notify_all()
        except ValueError:
            pass  # The pipe was closed under us at stop.
        finally:
            with self.changed:
                self.ended = True
                self.changed.notify_all()
            self.stream.close()

    def wait_listening(self, deadline: float) -> Address | None:
        """The address of the first ``listening on`` line, or None at EOF or the deadline."""
        seen = 0
        with self.changed:
            while True:
                for line in self.first[seen:]:
                    match = _LISTENING.search(line)
                    if match is not None:
                        return Address(match[1].strip("[]"), int(match[2]))
                seen = len(self.first)
                left = deadline - time.monotonic()
                if self.ended or left <= 0:
                    return None
                self.changed.wait(min(left, 0.2))


def _reference_command(model: str) -> list[str]:
    return [sys.executable, "-m", "reference", model, "--port", "0"]


def start_target(spec: TargetSpec, *, start_timeout: float = 20.0) -> RunningTarget:
    """Make the target ready: probe an address, or start a command and wait for it.

    Args:
        spec: The target.
        start_timeout: Seconds a started server has to accept a connection.

    Returns:
        The running target; stop it with :meth:`RunningTarget.stop`.

    Raises:
        TargetError: Nothing accepts at the address, the command cannot be run,
            exits, or does not accept connections within ``start_timeout``.
    """
    if spec.kind == "address":
        address = parse_address(spec.value)
        error = probe(address, timeout=min(start_timeout, 5.0))
        if error is not None:
            raise TargetError(
                f"cannot connect to {address}: {_reason(error)} (is the server running there?)"
            )
        return RunningTarget(spec, address)
    if spec.kind == "reference":
        argv = _reference_command(spec.value)
        fixed: Address | None = None
    else:
        fixed = None
        command = spec.value
        if "{port}" in command:
            fixed = Address("127.0.0.1", free_port())
            command = command.replace("{port}", str(fixed.port))
        argv = shlex.split(command)
    return _spawn(spec, argv, fixed, start_timeout)


def _spawn(
    spec: TargetSpec, argv: list[str], fixed: Address | None, start_timeout: float
) -> RunningTarget:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if spec.kind == "reference":
        # The reference package sits beside this one, installed or in a source tree.
        root = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
            env=env,
            start_new_session=True,
        )
    except OSError as exc:
        raise TargetError(f"cannot start {shlex.join(argv)}: {_reason(exc)}") from None
    assert proc.stdout is not None
    assert proc.stderr is not None
    out, err = _Drain(proc.stdout), _Drain(proc.stderr)
    out.start()
    err.start()
    running = RunningTarget(spec, fixed or Address("127.0.0.1", 0), proc, [out, err])
    deadline = time.monotonic() + start_timeout
    try:
        if fixed is None:
            found = out.wait_listening(deadline)
            if found is None:
                raise TargetError(_never_listened(argv, proc, err, start_timeout))
            running.address = found
        _wait_accepting(running, argv, err, deadline, start_timeout)
    except BaseException:
        running.stop()
        raise
    return running


def _wait_accepting(
    running: RunningTarget, argv: list[str], err: _Drain, deadline: float, start_timeout: float
) -> None:
    """Probe the address until it accepts, the process exits, or the deadline passes."""
    assert running.proc is not None
    while True:
        if running.proc.poll() is not None:
            raise TargetError(_never_listened(argv, running.proc, err, start_timeout))
        error = probe(running.address, timeout=1.0)
        if error is None:
            return
        if time.monotonic() >= deadline:
            raise TargetError(
                f"{shlex.join(argv)} does not accept connections on {running.address} "
                f"within {start_timeout:g}s: {_reason(error)}"
            )
        # Waiting for a process we cannot observe otherwise; bounded by the deadline.
        with err.changed:
            err.changed.wait(0.05)


def _never_listened(
    argv: list[str], proc: subprocess.Popen[str], err: _Drain, timeout: float
) -> str:
    try:
        code: int | None = proc.wait(1.0)  # Its stdout ended: it is exiting, or has.
    except subprocess.TimeoutExpired:
        code = None
    err.join(1.0)  # Its last stderr lines, when it exited.
    what = f"exited with code {code}" if code is not None else f"did not listen within {timeout:g}s"
    tail = " | ".join(list(err.lines)[-3:])
    return f"{shlex.join(argv)} {what}" + (f"; stderr: {tail}" if tail else "")


def _reason(exc: OSError) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    return exc.strerror or str(exc)
