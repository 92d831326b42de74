"""Real servers in subprocesses and blocking clients with deadlines, for the tests.

Nothing here sleeps to wait: every wait is for an event (a line of output, a
byte, an exit) under a deadline, and a missed deadline raises with what was
awaited.
"""

from __future__ import annotations

import os
import re
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from conformance.targets import procfs
from conformance.targets.spawn import spawn_listening

__all__ = [
    "ROOT",
    "ServerProcess",
    "connect",
    "exchange",
    "recv_exactly",
    "recv_until_eof",
    "reset",
]

ROOT = Path(__file__).resolve().parent.parent


class ServerProcess:
    """A reference server run as ``python -m reference ARGV`` with ``-v``.

    Started and stopped by :mod:`conformance.targets.spawn`, which keeps every line of
    its stdout and stderr here, so a test can wait for a log line. Its
    readings (CPU, memory, children) come from :mod:`conformance.targets.procfs`.

    Args:
        argv: The arguments after ``python -m reference``.
        prefix: Python code run before the server (for example a resource limit).
        entry: The module whose ``main`` takes ``argv``.
        start_timeout: Seconds to wait for the ``listening on`` line.

    Raises:
        TargetError: The server exited, or printed no ``listening on`` line
            within ``start_timeout``.
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        prefix: str = "",
        entry: str = "reference.cli",
        start_timeout: float = 20.0,
    ) -> None:
        code = f"{prefix}\nimport sys\nfrom {entry} import main\nsys.exit(main(sys.argv[1:]))"
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        self.argv = [sys.executable, "-c", code, *argv, "--port", "0", "-v"]
        self.spawned = spawn_listening(
            self.argv, timeout=start_timeout, env=env, cwd=ROOT, keep=None
        )
        self.proc = self.spawned.proc
        self.pid = self.spawned.pid
        self.address = self.spawned.address

    @property
    def stdout(self) -> list[str]:
        """Every stdout line so far."""
        return self.spawned.stdout.lines()

    @property
    def stderr(self) -> list[str]:
        """Every stderr line so far (its log)."""
        return self.spawned.stderr.lines()

    def wait_for_log(self, pattern: str, timeout: float = 20.0, *, start: int = 0) -> re.Match[str]:
        """Wait for a stderr line matching ``pattern`` (from line ``start`` on).

        Raises:
            AssertionError: The server exited first.
            TimeoutError: No such line within ``timeout``.
        """
        log = self.spawned.stderr
        match = log.wait_for(re.compile(pattern), timeout, start=start)
        if match is not None:
            return match
        last = "\n".join(log.lines()[-20:])
        what = f"log line matching {pattern!r}"
        if log.ended:
            code = self.proc.wait(10)
            raise AssertionError(f"server exited with {code} before {what}; stderr:\n{last}")
        raise TimeoutError(f"no {what} within {timeout}s; stderr:\n{last}")

    def log_matches(self, pattern: str) -> list[re.Match[str]]:
        """Every stderr line so far that matches ``pattern``."""
        regex = re.compile(pattern)
        return [m for m in map(regex.search, self.stderr) if m is not None]

    def alive(self) -> bool:
        return self.spawned.alive()

    def pids(self) -> list[int]:
        """The server's PID and those of its child processes."""
        return [self.pid, *(procfs.children(self.pid) or [])]

    def cpu_seconds(self) -> float:
        """User plus system CPU time the server and its children have used so far."""
        return sum(procfs.cpu_seconds(pid) or 0.0 for pid in self.pids())

    def peak_rss(self) -> int:
        """The largest peak resident memory (VmHWM) of the server and its children, in bytes."""
        return max((procfs.peak_resident_bytes(pid) or 0 for pid in self.pids()), default=0)

    def signal_and_wait(self, signum: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        """Send ``signum`` to the server alone and wait for its exit; return the exit code."""
        self.proc.send_signal(signum)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            last = "\n".join(self.stderr[-30:])  # Its log (-v) says which step it was in.
            raise AssertionError(
                f"server did not exit within {timeout}s of {signal.Signals(signum).name}; "
                f"stderr:\n{last}"
            ) from None

    def kill(self) -> None:
        """Kill the server (and its process group) if it still runs, and reap it.

        Children that outlived a server that already exited are left running,
        so that a test can see them.
        """
        self.spawned.kill()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()


def connect(address: tuple[str, int], *, timeout: float = 10.0) -> socket.socket:
    """A blocking client socket with ``timeout`` on every operation."""
    sock = socket.create_connection(address, timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def reset(sock: socket.socket) -> None:
    """Close ``sock`` with an RST instead of a FIN (SO_LINGER with a zero timeout)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    sock.close()


def exchange(
    sock: socket.socket,
    payload: bytes,
    *,
    chunks: Sequence[int] | None = None,
    read_size: int = 65536,
    expect: int | None = None,
    half_close: bool = False,
    timeout: float = 60.0,
) -> bytes:
    """Send ``payload`` while reading what comes back, both at once.

    Args:
        sock: A connected socket (its blocking mode is restored afterwards).
        payload: What to send.
        chunks: Sizes of the successive writes (cycled); default: as much as
            the socket takes.
        read_size: Size of each ``recv``.
        expect: Stop once this many bytes came back (default ``len(payload)``).
        half_close: Shut down the write side once everything is sent, and read
            until EOF instead of stopping at ``expect`` bytes.
        timeout: Seconds for the whole exchange.

    Returns:
        The bytes received.

    Raises:
        TimeoutError: Saying how much was sent and received when time ran out.
    """
    expect = len(payload) if expect is None else expect
    received = bytearray()
    view = memoryview(payload)
    sent = 0
    sizes = list(chunks or [len(payload) or 1])
    turn = 0
    old_timeout = sock.gettimeout()
    sock.setblocking(False)
    deadline = time.monotonic() + timeout
    eof = False
    try:
        with selectors.DefaultSelector() as sel:
            sel.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
            write_done = False
            if not payload and half_close:
                sock.shutdown(socket.SHUT_WR)
                write_done = True
            while True:
                done_reading = eof if half_close else len(received) >= expect
                if done_reading and write_done:
                    return bytes(received)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(
                        f"exchange timed out after {timeout}s: sent {sent} of {len(payload)} "
                        f"bytes, received {len(received)} of {expect}"
                    )
                events = selectors.EVENT_READ | (0 if write_done else selectors.EVENT_WRITE)
                sel.modify(sock, events)
                for _, mask in sel.select(left):
                    if mask & selectors.EVENT_READ:
                        data = sock.recv(read_size)
                        if not data:
                            eof = True
                            if not half_close:
                                raise AssertionError(
                                    f"server closed after {len(received)} of {expect} bytes"
                                )
                            write_done = True
                        received += data
                    if mask & selectors.EVENT_WRITE and not write_done:
                        size = sizes[turn % len(sizes)]
                        turn += 1
                        try:
                            sent += sock.send(view[sent : sent + size])
                        except BlockingIOError:
                            pass
                        if sent == len(payload):
                            write_done = True
                            if half_close:
                                sock.shutdown(socket.SHUT_WR)
    finally:
        if sock.fileno() != -1:
            sock.settimeout(old_timeout)


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    """Read exactly ``n`` bytes (the socket's own timeout bounds each read)."""
    data = bytearray()
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise AssertionError(f"EOF after {len(data)} of {n} bytes")
        data += chunk
    return bytes(data)


def recv_until_eof(sock: socket.socket, *, limit: int = 1 << 30) -> bytes:
    """Read until the peer's FIN (the socket's own timeout bounds each read)."""
    data = bytearray()
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return bytes(data)
        data += chunk
        if len(data) > limit:
            raise AssertionError(f"more than {limit} bytes before EOF")
