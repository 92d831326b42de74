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
:mod:`conformance.targets.spawn`'s; this module adds what only a target needs:

- The descriptor limit a started server begins with (``--server-nofile``,
  :data:`SERVER_NOFILE` by default), set before it runs.
- A server that daemonizes: the command exits 0 while a process it started
  listens on the port the run handed out. :meth:`RunningTarget.follow_daemon`
  finds that process by its listening socket and its start time
  (:mod:`conformance.targets.strays`) and makes it the target's process: its
  PID is the one the run watches, measures and stops
  (:mod:`conformance.targets.daemons`). The port is the proof that the
  process is the run's: a command that prints its port is not followed (its
  port was not handed out by the run).
- :meth:`RunningTarget.stop` stops, after the command's group and session,
  every process that listens on the handed-out port and started after the
  command, and the sessions those processes lead: nothing the run started
  outlives it.
"""

from __future__ import annotations

import enum
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from conformance.errors import TargetError, UsageError
from conformance.targets.address import Address, free_port, parse_address, probe
from conformance.targets.daemons import FollowsDaemon
from conformance.targets.procfs import listening_inodes
from conformance.targets.spawn import (
    SERVER_NOFILE,
    Spawned,
    server_nofile,
    server_nofile_header,
    spawn,
)
from conformance.targets.strays import (
    listeners,
    session_members,
    sessions_of,
    start_ticks,
)

__all__ = [
    "REFERENCE_MODELS",
    "SERVER_NOFILE",
    "Address",
    "RunningTarget",
    "TargetKind",
    "TargetSpec",
    "free_port",
    "parse_address",
    "probe",
    "server_nofile",
    "server_nofile_header",
    "start_target",
]

#: The models ``--reference`` accepts.
REFERENCE_MODELS = ("single", "pool", "multi")


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


class RunningTarget(FollowsDaemon):
    """A target that accepts connections, and the process behind it if the suite started it.

    Attributes:
        spec: How the user named it.
        address: Where it listens.
        server: The process the suite started, or None.
        proc: That process's :class:`subprocess.Popen`, or None.
        handed_out: Whether the run gave the command its port (``{port}``).
        daemon: The process the command daemonized into, once followed
            (:meth:`follow`); None until then.
        left: The processes (``{pid: start time}``) that :meth:`stop` could not end.
    """

    def __init__(
        self,
        spec: TargetSpec,
        address: Address,
        server: Spawned | None = None,
        *,
        handed_out: bool = False,
    ) -> None:
        self.spec = spec
        self.address = address
        self.server = server
        self.proc: subprocess.Popen[str] | None = server.proc if server is not None else None
        self.handed_out = handed_out
        self.daemon: int | None = None
        self._daemon_started = 0
        self._followed_at = 0.0
        self.left: dict[int, int] = {}

    @property
    def pid(self) -> int | None:
        """The target's process: the daemon once followed, else the one started; None if neither."""
        if self.daemon is not None:
            return self.daemon
        return self.server.pid if self.server is not None else None

    def alive(self) -> bool:
        """Whether the target's process (the daemon, once followed) still runs.

        A followed daemon that ended at once may hand the target on (:meth:`_hand_on`).
        """
        if self.daemon is not None:
            return start_ticks(self.daemon) == self._daemon_started or self._hand_on()
        return self.server is not None and self.server.alive()

    def stop(self, grace: float = 5.0) -> int | None:
        """Stop everything the suite started for this target.

        The command's process group, then its session's processes that left
        the group (:meth:`Spawned.stop`), then, by PID, the followed daemon,
        every process that listens on the port the run handed out and
        started after the command, and the processes of the sessions those
        lead. What still runs after SIGKILL is kept in :attr:`left`.

        Returns:
            The command's exit code, or None when the suite started nothing.
        """
        server = self.server
        if server is None:
            return None
        code = server.stop(grace, self._strays, self._port_held if self.handed_out else None)
        self.left |= server.left
        return code

    def _port_held(self) -> bool:
        """Whether a socket still listens on the target's port (someone holds it)."""
        return bool(listening_inodes(self.address.host, self.address.port))

    def _strays(self) -> dict[int, int]:
        """The followed daemon, the handed-out port's listeners, and their sessions' processes."""
        server = self.server
        if server is None or server.started is None:
            return {}
        found: dict[int, int] = {}
        if self.daemon is not None and self.alive():
            found[self.daemon] = self._daemon_started
        if self.handed_out:
            found |= listeners(self.address.host, self.address.port, server.started)
        if found:
            found |= session_members(sessions_of(found), server.started)
        return found

    def __enter__(self) -> RunningTarget:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _reference_command(model: str) -> list[str]:
    return [sys.executable, "-m", "reference", model, "--port", "0"]


def start_target(
    spec: TargetSpec,
    *,
    start_timeout: float = 20.0,
    stderr_log: Path | None = None,
    nofile: int | None = None,
) -> RunningTarget:
    """Make the target ready: probe an address, or start a command and wait for it.

    A command that exits 0 while a process it started listens on the port
    the run handed out has daemonized: that process is followed
    (:meth:`RunningTarget.follow`).

    Args:
        spec: The target.
        start_timeout: Seconds a started server has to accept a connection.
        stderr_log: A file that a started server's stderr is appended to.
        nofile: The soft descriptor limit a started server begins with
            (capped at the hard limit); None: the suite's own.

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
        root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    else:
        command = spec.value
        if "{port}" in command:
            fixed = Address("127.0.0.1", free_port())
            command = command.replace("{port}", str(fixed.port))
        argv = shlex.split(command)
    server = spawn(argv, env=env, stderr_log=stderr_log, nofile=nofile)
    running = RunningTarget(
        spec, fixed or Address("127.0.0.1", 0), server, handed_out=fixed is not None
    )
    deadline = time.monotonic() + start_timeout
    try:
        if fixed is None:
            running.address = Address(*server.wait_listening(start_timeout))
        _wait_accepting(running, deadline, start_timeout)
    except BaseException:
        running.stop()
        raise
    return running


def _wait_accepting(running: RunningTarget, deadline: float, start_timeout: float) -> None:
    """Probe the address until it accepts, the process exits, or the deadline passes.

    A command that exits 0 is followed into its daemon, if one listens on
    its port before the deadline.
    """
    server = running.server
    assert server is not None
    address = running.address
    while True:
        if not running.alive():
            if running.daemon is not None:
                raise TargetError(
                    f"{shlex.join(server.argv)} daemonized (PID {running.daemon}), and its "
                    f"daemon exited before it accepted connections on {address}"
                )
            if not running.follow_daemon(max(deadline - time.monotonic(), 0.0)):
                raise TargetError(_not_listening(running, start_timeout))
            continue
        error = probe(address, timeout=1.0)
        if error is None:
            return
        if time.monotonic() >= deadline:
            raise TargetError(
                f"{shlex.join(server.argv)} does not accept connections on {address} "
                f"within {start_timeout:g}s: {_reason(error)}"
            )
        if running.daemon is not None:
            running.wait_daemon(0.05)  # Between probes, an exit ends the wait early.
            continue
        try:
            server.proc.wait(0.05)
        except subprocess.TimeoutExpired:
            pass


def _not_listening(running: RunningTarget, start_timeout: float) -> str:
    """Why a started command is not listening: its exit, and for an exit with 0, what was sought."""
    server = running.server
    assert server is not None
    why = server.why_not_listening(start_timeout)
    if server.proc.returncode != 0:
        return why
    if running.handed_out:
        return (
            f"{why}; nothing it started listens on {running.address} "
            f"within {start_timeout:g}s (a server that daemonizes is followed to its daemon)"
        )
    return (
        f"{why}; if it daemonizes, give it its port with {{port}} so that the suite "
        "can find its daemon by that port"
    )


def _reason(exc: OSError) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    return exc.strerror or str(exc)
