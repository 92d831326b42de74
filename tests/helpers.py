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
import threading
import time
from collections.abc import Sequence
from pathlib import Path

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
_LISTENING = re.compile(r"^listening on \[?([^\]]+?)\]?:(\d+)$")


class ServerProcess:
    """A reference server run as ``python -m reference ARGV`` with ``-v``.

    Its stdout and stderr are read by two threads into line lists, so a test
    can wait for a log line. Stopped by its PID, and killed if it will not stop.

    Args:
        argv: The arguments after ``python -m reference``.
        prefix: Python code run before the server (for example a resource limit).
        entry: The module whose ``main`` takes ``argv``.
        start_timeout: Seconds to wait for the ``listening on`` line.
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
        env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
        self.argv = [sys.executable, "-c", code, *argv, "--port", "0", "-v"]
        self.proc = subprocess.Popen(
            self.argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=ROOT,
        )
        self.pid = self.proc.pid
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._changed = threading.Condition()
        self._readers = [
            threading.Thread(target=self._pump, args=(self.proc.stdout, self.stdout), daemon=True),
            threading.Thread(target=self._pump, args=(self.proc.stderr, self.stderr), daemon=True),
        ]
        for reader in self._readers:
            reader.start()
        try:
            line = self._wait_for(self.stdout, _LISTENING, start_timeout, "the 'listening on' line")
        except BaseException:
            self.kill()
            raise
        match = _LISTENING.match(line)
        assert match is not None
        self.address = (match.group(1), int(match.group(2)))

    def _pump(self, stream: object, lines: list[str]) -> None:
        assert hasattr(stream, "readline")
        for line in iter(stream.readline, ""):
            with self._changed:
                lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def _wait_for(
        self, lines: list[str], pattern: re.Pattern[str], timeout: float, what: str, start: int = 0
    ) -> str:
        deadline = time.monotonic() + timeout
        seen = start
        with self._changed:
            while True:
                for line in lines[seen:]:
                    if pattern.search(line):
                        return line
                seen = len(lines)
                if self.proc.poll() is not None and not any(r.is_alive() for r in self._readers):
                    raise AssertionError(
                        f"server exited with {self.proc.returncode} before {what}; "
                        f"stderr:\n" + "\n".join(self.stderr[-20:])
                    )
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(
                        f"no {what} within {timeout}s; stderr:\n" + "\n".join(self.stderr[-20:])
                    )
                self._changed.wait(left)

    def wait_for_log(self, pattern: str, timeout: float = 20.0, *, start: int = 0) -> re.Match[str]:
        """Wait for a stderr line matching ``pattern`` (from line ``start`` on)."""
        regex = re.compile(pattern)
        line = self._wait_for(self.stderr, regex, timeout, f"log line matching {pattern!r}", start)
        match = regex.search(line)
        assert match is not None
        return match

    def log_matches(self, pattern: str) -> list[re.Match[str]]:
        """Every stderr line so far that matches ``pattern``."""
        regex = re.compile(pattern)
        with self._changed:
            lines = list(self.stderr)
        return [m for m in map(regex.search, lines) if m is not None]

    def alive(self) -> bool:
        return self.proc.poll() is None

    def pids(self) -> list[int]:
        """The server's PID and those of its child processes (Linux /proc)."""
        children = Path(f"/proc/{self.pid}/task/{self.pid}/children")
        try:
            return [self.pid, *map(int, children.read_text().split())]
        except OSError:
            return [self.pid]

    def cpu_seconds(self) -> float:
        """User plus system CPU time the server and its children have used so far."""
        total = 0
        for pid in self.pids():
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
            except OSError:
                continue  # Exited meanwhile.
            fields = stat.rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        return total / os.sysconf("SC_CLK_TCK")

    def peak_rss(self) -> int:
        """The largest peak resident memory (VmHWM) of the server and its children, in bytes."""
        peak = 0
        for pid in self.pids():
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            for line in status.splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]) * 1024)
        return peak

    def signal_and_wait(self, signum: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        """Send ``signum`` and wait for the exit; return the exit code."""
        self.proc.send_signal(signum)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"server did not exit within {timeout}s of {signal.Signals(signum).name}"
            ) from None

    def kill(self) -> None:
        """Kill the server if it still runs, and reap it."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        for reader in self._readers:
            reader.join(10)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()

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
