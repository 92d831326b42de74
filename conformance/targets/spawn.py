"""Spawning a server: start a command, wait for its ``listening on`` line, stop its group.

How this works
--------------
:func:`spawn` starts a command (an argv list, or a string split as a shell
would split it, never run by a shell) in a new session, so that it leads a
process group of its own, and returns a :class:`Spawned`. Two
:class:`~conformance.targets.line_reader.LineReader` threads read its stdout and
stderr line by line, so it never blocks on a full pipe, and keep the lines
for whoever waits for one:
:meth:`Spawned.wait_listening` waits, under a deadline, for the
``listening on HOST:PORT`` line every server of this project prints (see
DESIGN.md), and raises :class:`~conformance.errors.TargetError` saying whether
the process exited first (with its code and its last stderr lines) or the
deadline passed. :func:`spawn_listening` does both, and stops the process when
the wait fails.

:meth:`Spawned.stop` sends SIGTERM to the group, waits, then SIGKILL, and
SIGKILL once more for any process of the group that outlived its leader (the
children of a forking server); then it stops, by PID, the processes of the
command's session that left its group (``setpgid``) and started after it,
looking again until two looks find none (:func:`conformance.targets.strays.stop_found`:
a server stopped while it forks). :meth:`Spawned.kill` is the short way for a
test's teardown: SIGKILL to the group while its leader runs, nothing once the
leader is gone, so that a test can still see a child its server left behind.

``nofile`` (``--server-nofile``, :func:`server_nofile`) sets the command's soft
``RLIMIT_NOFILE`` in the child, between ``fork`` and ``exec``, so that the
server runs under it from its first instruction. The child also gets the
parent-death signal there
(:mod:`conformance.targets.lifeline`): a suite killed outright (SIGKILL) leaves no
server behind. A process must be spawned from a thread that lives as long as
the server should (the main thread, or a target's keeper thread).

Three users share this module: the suite's targets (:mod:`conformance.targets.target`
adds ``{port}`` and waits until the address accepts), the project's own tests
and the benchmark tools.

Facts about the OS this relies on
---------------------------------
- ``start_new_session=True`` runs ``setsid()`` in the child: its PID is its
  process group's ID, and the processes it forks join that group unless they
  call ``setsid()`` themselves. ``killpg`` reaches every member, even after
  the leader exited, as long as one member lives.
- A pipe holds 64 KiB on Linux; a writer whose reader does not read blocks.
- Reading a pipe gives EOF only once every holder of its write end has closed
  it: the process and every child that inherited it. So EOF on stdout means
  the server is exiting or has exited, but a server's exit alone does not
  give EOF while a child of it lives.
- ``preexec_fn`` runs in the child after ``fork`` (and after ``setsid``),
  before ``exec``; a resource limit and the parent-death signal set there are
  inherited by the program exec'd. Only a plain ``setrlimit`` and ``prctl``
  with values computed beforehand run there: the child of a threaded parent
  must not take locks.
- SIGTERM may be caught or ignored; SIGKILL cannot be, and a killed process is
  reaped by ``wait`` at once unless it is stuck in the kernel.
"""

from __future__ import annotations

import os
import resource
import shlex
import signal
import subprocess
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

from conformance.errors import TargetError, UsageError
from conformance.targets.capped_log import CappedLog
from conformance.targets.lifeline import die_with_parent
from conformance.targets.line_reader import LISTENING, LineReader, parse_listening
from conformance.targets.strays import session_members, start_ticks, stop_found

__all__ = [
    "INHERIT",
    "SERVER_NOFILE",
    "Spawned",
    "no_input",
    "server_nofile",
    "server_nofile_header",
    "soft_nofile",
    "spawn",
    "spawn_listening",
]

#: The soft descriptor limit a started server begins with unless ``--server-nofile``
#: says otherwise: the common default (``ulimit -n``), so that ECHO-LIMIT-1 can exceed it.
SERVER_NOFILE = 1024
#: What ``--server-nofile`` takes to keep the suite's own limit.
INHERIT = "inherit"

#: How many stderr lines an error message quotes.
_QUOTED = 3


@contextmanager
def no_input() -> Iterator[int]:
    """A descriptor to give a child as its stdin, on which a read gives EOF at once.

    It is the read end of a pipe whose write end is closed, not ``/dev/null``:
    on some machines that is a regular file only root may write, and
    ``subprocess.DEVNULL`` opens it for reading and writing. The descriptor is
    closed when the block ends (the child keeps its own copy).
    """
    read_end, write_end = os.pipe()
    os.close(write_end)
    try:
        yield read_end
    finally:
        os.close(read_end)


class Spawned:
    """A process started by :func:`spawn`, leading its own process group.

    Attributes:
        argv: The command, as run.
        proc: The process.
        pid: Its PID, which is also its process group's ID and its session's.
        started: Its start time in clock ticks since boot
            (:func:`~conformance.targets.strays.start_ticks`): whatever it starts starts
            then or later. None where ``/proc`` cannot tell.
        stdout: The reader of its stdout.
        stderr: The reader of its stderr.
        left: The processes (``{pid: start time}``) that :meth:`stop` could
            not end, even with SIGKILL.
    """

    def __init__(
        self,
        argv: list[str],
        proc: subprocess.Popen[str],
        keep: int | None,
        stderr_log: CappedLog | None = None,
    ) -> None:
        assert proc.stdout is not None
        assert proc.stderr is not None
        self.argv = argv
        self.proc = proc
        self.pid = proc.pid
        self.started = start_ticks(proc.pid)
        self.left: dict[int, int] = {}
        self.stdout = LineReader(proc.stdout, keep=keep, name=f"stdout of {proc.pid}")
        self.stderr = LineReader(
            proc.stderr, keep=keep, name=f"stderr of {proc.pid}", copy=stderr_log
        )
        self._address: tuple[str, int] | None = None
        self.stdout.start()
        self.stderr.start()

    @property
    def address(self) -> tuple[str, int]:
        """The ``(host, port)`` of its ``listening on`` line.

        Raises:
            RuntimeError: :meth:`wait_listening` has not seen the line yet.
        """
        if self._address is None:
            raise RuntimeError(
                f"{shlex.join(self.argv)} has not been seen listening: call wait_listening first"
            )
        return self._address

    def alive(self) -> bool:
        """Whether the process (the group's leader) still runs."""
        return self.proc.poll() is None

    def wait_listening(self, timeout: float) -> tuple[str, int]:
        """Wait for the ``listening on HOST:PORT`` line on its stdout.

        Args:
            timeout: Seconds to wait at most.

        Returns:
            The ``(host, port)`` it printed (also kept as :attr:`address`).

        Raises:
            TargetError: Its stdout ended (it exited) or ``timeout`` passed
                first; the message says which, with its last stderr lines.
        """
        match = self.stdout.wait_for(LISTENING, timeout)
        if match is None:
            raise TargetError(self.why_not_listening(timeout))
        found = parse_listening(match.string)
        assert found is not None
        self._address = found
        return found

    def why_not_listening(self, timeout: float) -> str:
        """Say what became of a process that is not listening, for an error message.

        Args:
            timeout: The seconds it was given, to name in the message.

        Returns:
            ``ARGV exited with code N`` or ``ARGV did not listen within Ts``,
            followed by its last stderr lines.
        """
        try:
            code: int | None = self.proc.wait(1.0)  # Its stdout ended: it is exiting, or has.
        except subprocess.TimeoutExpired:
            code = None
        self.stderr.join(1.0)  # Its last stderr lines, when it exited.
        what = (
            f"exited with code {code}"
            if code is not None
            else f"did not listen within {timeout:g}s"
        )
        tail = " | ".join(self.stderr.lines()[-_QUOTED:])
        return f"{shlex.join(self.argv)} {what}" + (f"; stderr: {tail}" if tail else "")

    def stop(
        self,
        grace: float = 5.0,
        strays: Callable[[], dict[int, int]] | None = None,
        held: Callable[[], bool] | None = None,
    ) -> int:
        """Stop the group: SIGTERM, ``grace`` seconds, SIGKILL; then SIGKILL to any survivor.

        Then the processes of its session that left the group (and started
        after it), and those ``strays`` finds, are stopped by PID, before the
        readers are joined (they may hold its pipes); those that still run are
        in :attr:`left`.

        Args:
            grace: Seconds to wait after each signal.
            strays: Finds more processes to stop by PID (``{pid: start time}``),
                once the group is gone.
            held: Whether something those processes held is held still (then
                it looks for them again; :func:`~conformance.targets.strays.stop_found`).

        Returns:
            The leader's exit code (negative: the signal that ended it).

        Raises:
            subprocess.TimeoutExpired: It did not end even after SIGKILL.
        """
        if self.proc.poll() is None:
            _signal_group(self.pid, signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                _signal_group(self.pid, signal.SIGKILL)
                self.proc.wait(grace)
        # Children of a forking server (socat fork) share its group; SIGKILL ends
        # any that outlived their leader.
        _signal_group(self.pid, signal.SIGKILL)
        if self.started is not None:
            started = self.started

            def find() -> dict[int, int]:
                found = session_members([self.pid], started)
                return found | strays() if strays is not None else found

            self.left |= stop_found(find, grace, held)
        self._join_readers(grace)
        return self.proc.returncode

    def kill(self, grace: float = 10.0) -> int:
        """SIGKILL the group if its leader still runs, and reap the leader.

        Processes that outlived a leader that had already exited are left alone,
        so that a caller can still see them.

        Args:
            grace: Seconds to wait for the leader's end and for the readers.

        Returns:
            The leader's exit code (negative: the signal that ended it).
        """
        if self.proc.poll() is None:
            _signal_group(self.pid, signal.SIGKILL)
        self.proc.wait(grace)
        self._join_readers(grace)
        return self.proc.returncode

    def _join_readers(self, timeout: float) -> None:
        # A pipe still held by a process outside the group keeps its reader
        # going; it is a daemon thread and closes the pipe at EOF.
        for reader in (self.stdout, self.stderr):
            reader.join(timeout)

    def __enter__(self) -> Spawned:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _signal_group(pid: int, signum: int) -> None:
    try:
        os.killpg(pid, signum)
    except ProcessLookupError:
        pass  # The group is already gone.


def soft_nofile(nofile: int) -> int:
    """The soft descriptor limit a server asked to start under ``nofile`` gets: at most the hard."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return nofile if hard == resource.RLIM_INFINITY else min(nofile, hard)


def server_nofile(text: str | int | None) -> int | None:
    """The limit of ``--server-nofile``: descriptors above 0, or None for ``inherit``.

    Args:
        text: The option's value; None (not given) is :data:`SERVER_NOFILE`.

    Raises:
        UsageError: It is neither.
    """
    if text is None:
        return SERVER_NOFILE
    if isinstance(text, str) and text.strip() == INHERIT:
        return None
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise UsageError(
            f"--server-nofile {text}: give a number of descriptors above 0, for example "
            f"{SERVER_NOFILE}, or {INHERIT} to keep the suite's own limit"
        )
    return value


def server_nofile_header(nofile: int | None) -> str:
    """What a run's header says of the descriptor limit its started servers begin with."""
    if nofile is None:
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        limit = "no limit" if soft == resource.RLIM_INFINITY else str(soft)
        return (
            f"spawned servers inherit the suite's soft descriptor limit ({limit}) "
            f"(--server-nofile {INHERIT})"
        )
    soft = soft_nofile(nofile)
    capped = f" {nofile}, capped at the hard limit" if soft != nofile else ""
    return f"spawned servers start with a soft descriptor limit of {soft} (--server-nofile{capped})"


def _before_exec(nofile: int | None) -> Callable[[], None]:
    """What the child runs before ``exec``: die with this process, start under ``nofile``.

    ``nofile`` None keeps this process's descriptor limit.
    """
    parent = os.getpid()
    limits = (
        None
        if nofile is None
        else (soft_nofile(nofile), resource.getrlimit(resource.RLIMIT_NOFILE)[1])
    )

    def prepare() -> None:
        die_with_parent(parent)
        if limits is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, limits)

    return prepare


def spawn(
    command: Sequence[str] | str,
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    keep: int | None = 20,
    stderr_log: Path | None = None,
    nofile: int | None = None,
) -> Spawned:
    """Start ``command`` in a process group of its own, its output read by two threads.

    Args:
        command: An argv list, or a string split as a shell would split it
            (``shlex.split``; no shell runs it).
        env: Its environment (default: this one's); ``PYTHONUNBUFFERED=1`` is
            added, so a Python server's lines come as it prints them.
        cwd: Its working directory (default: this one's).
        keep: How many of the last lines of each stream to keep; None keeps all.
        stderr_log: A file that its stderr is appended to: the first MiB of
            the file and the last MiB of this run's stderr
            (:class:`~conformance.targets.capped_log.CappedLog`).
        nofile: The soft descriptor limit (``RLIMIT_NOFILE``) it starts under,
            capped at the hard limit (:func:`soft_nofile`); None: this process's.

    Returns:
        The running process; stop it with :meth:`Spawned.stop`.

    Raises:
        TargetError: The command cannot be run (no such program, not executable).
    """
    argv = shlex.split(command) if isinstance(command, str) else list(command)
    full_env = dict(os.environ if env is None else env, PYTHONUNBUFFERED="1")
    try:
        with no_input() as stdin:
            proc = subprocess.Popen(
                argv,
                stdin=stdin,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                errors="replace",
                env=full_env,
                cwd=cwd,
                start_new_session=True,
                preexec_fn=_before_exec(nofile),
            )
    except OSError as exc:
        raise TargetError(f"cannot start {shlex.join(argv)}: {exc.strerror or exc}") from None
    log: CappedLog | None = None
    if stderr_log is not None:
        log = CappedLog(stderr_log)
        log.write_line(f"--- {shlex.join(argv)} (pid {proc.pid})")
    return Spawned(argv, proc, keep, log)


def spawn_listening(
    command: Sequence[str] | str,
    *,
    timeout: float = 20.0,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    keep: int | None = 20,
) -> Spawned:
    """Start ``command`` and wait for its ``listening on`` line; stop it if none comes.

    Args:
        command: As for :func:`spawn`.
        timeout: Seconds to wait for the line.
        env: As for :func:`spawn`.
        cwd: As for :func:`spawn`.
        keep: As for :func:`spawn`.

    Returns:
        The process, listening at :attr:`Spawned.address`.

    Raises:
        TargetError: It cannot be run, exits first, or prints no such line
            within ``timeout``.
    """
    spawned = spawn(command, env=env, cwd=cwd, keep=keep)
    try:
        spawned.wait_listening(timeout)
    except BaseException:
        spawned.stop()
        raise
    return spawned
