"""The harness: the only part of the suite that touches sockets (trio).

How this works
--------------
A check body gets a :class:`Harness` for one target. It opens named
connections (:meth:`Harness.connect`) and runs *steps* on them: send these
bytes in these chunks, read with this buffer size until the oracle is
satisfied, half-close, reset, close. Every step runs under a deadline
(:meth:`Harness.step`); a step that misses it raises :class:`StepTimeout`
naming the step and the connection, so a server that hangs fails the check
instead of hanging the run.

Each connection keeps a :class:`Transcript`: every byte sent and received,
an event list with times relative to the start of the check, and how the
connection ended (:class:`Ending`). Each connection also feeds its own
oracle; a wrong byte raises :class:`Divergence` at once, with the verdict.

Facts about TCP the steps rely on:

- ``SO_RCVBUF`` must be set before ``connect`` to shrink the advertised
  window; Linux doubles the value and clamps it to a minimum.
- ``SO_LINGER`` on with a zero timeout makes ``close`` send RST, not FIN.
- After the peer's RST, ``recv`` raises ``ECONNRESET``; ``send`` raises
  ``EPIPE`` or ``ECONNRESET``.
"""

from __future__ import annotations

import enum
import socket
import struct
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import trio

from conformance.oracle import Oracle, OracleFactory, Verdict
from conformance.profiles import DEFAULT, Profile
from conformance.target import Address

__all__ = [
    "CheckFailure",
    "Connection",
    "Divergence",
    "Ending",
    "Event",
    "Harness",
    "StepTimeout",
    "Transcript",
]

#: Seconds a step may take unless it says otherwise.
DEFAULT_STEP_TIMEOUT = 5.0


class Ending(enum.Enum):
    """How a connection ended, as the client saw it."""

    OPEN = "still open"
    FIN = "FIN from the server"
    RST = "RST from the server"
    TIMEOUT = "timed out"
    CLIENT_CLOSE = "closed by the client"
    CLIENT_RESET = "reset by the client"
    REFUSED = "refused"


@dataclass(frozen=True)
class Event:
    """One thing that happened on a connection, ``at`` seconds after the check began."""

    at: float
    action: str
    size: int = 0


@dataclass
class Transcript:
    """What happened on one connection."""

    name: str
    sent: bytearray = field(default_factory=bytearray)
    received: bytearray = field(default_factory=bytearray)
    events: list[Event] = field(default_factory=list)
    ending: Ending = Ending.OPEN

    def end(self, ending: Ending) -> None:
        """Record how the connection ended; the first ending wins."""
        if self.ending is Ending.OPEN:
            self.ending = ending

    def summary(self) -> str:
        last = self.events[-1].at if self.events else 0.0
        return (
            f"connection {self.name}: sent {len(self.sent)} bytes, received "
            f"{len(self.received)} bytes, {len(self.events)} events over {last:.3f}s, "
            f"ended: {self.ending.value}"
        )


class CheckFailure(Exception):
    """A check failed; the message says how.

    Attributes:
        step: The step that failed, if any.
        transcript: The connection it failed on, if any.
        verdict: The oracle's verdict, for a wrong byte.
    """

    def __init__(
        self,
        message: str,
        *,
        step: str | None = None,
        transcript: Transcript | None = None,
        verdict: Verdict | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.step = step
        self.transcript = transcript
        self.verdict = verdict


class StepTimeout(CheckFailure):
    """A step missed its deadline: the server hung, or is far too slow."""


class Divergence(CheckFailure):
    """The oracle found a wrong, missing or extra byte."""


class Harness:
    """Opens connections to one target and runs steps on them under deadlines.

    Args:
        address: The target.
        oracle_factory: Makes one oracle per connection.
        server_pid: The target's process, when the suite started it (for
            checks that look at its descriptors); None otherwise.
        step_timeout: Default deadline of a step, in seconds.
        profile: How hard property checks search (:mod:`conformance.profiles`).
        scenario: A saved scenario that property checks replay instead of searching.
    """

    def __init__(
        self,
        address: Address,
        oracle_factory: OracleFactory,
        *,
        server_pid: int | None = None,
        step_timeout: float = DEFAULT_STEP_TIMEOUT,
        profile: Profile = DEFAULT,
        scenario: Path | None = None,
    ) -> None:
        self.address = address
        self.oracle_factory = oracle_factory
        self.server_pid = server_pid
        self.step_timeout = step_timeout
        self.profile = profile
        self.scenario = scenario
        self.transcripts: list[Transcript] = []
        self.connections: list[Connection] = []
        self.current_step: str | None = None
        self._start = time.monotonic()

    def elapsed(self) -> float:
        """Seconds since the harness was made."""
        return time.monotonic() - self._start

    @contextmanager
    def step(
        self,
        name: str,
        conn: Connection | None = None,
        timeout: float | None = None,
        *,
        idle: bool = False,
    ) -> Iterator[trio.CancelScope]:
        """Run the body of the ``with`` as step ``name`` under a deadline.

        Args:
            name: What the step does, for the report.
            conn: The connection it runs on, if any.
            timeout: Seconds; default: the harness's step timeout.
            idle: The deadline is on progress: the body pushes it back by
                ``timeout`` each time a byte arrives (``yield``-ed scope's
                deadline), so a slow transfer that keeps moving is not a hang.
                The check's own deadline still bounds the whole.

        Raises:
            StepTimeout: The deadline passed; the connection's ending is TIMEOUT.
        """
        seconds = self.step_timeout if timeout is None else timeout
        self.current_step = name
        try:
            with trio.fail_after(seconds) as scope:
                yield scope
        except trio.TooSlowError:
            where = ""
            if conn is not None:
                conn.transcript.end(Ending.TIMEOUT)
                where = (
                    f" on connection {conn.name} ({len(conn.transcript.sent)} bytes sent, "
                    f"{len(conn.transcript.received)} received)"
                )
            what = (
                f"nothing arrived for {seconds:g}s"
                if idle
                else f"did not complete within {seconds:g}s"
            )
            raise StepTimeout(
                f"{what}{where}",
                step=name,
                transcript=conn.transcript if conn is not None else None,
                verdict=conn.oracle.verdict() if conn is not None else None,
            ) from None

    def close_all(self) -> None:
        """Close every connection still open (the end of a check, passed or failed)."""
        for conn in self.connections:
            conn.close()
        self.connections.clear()

    async def connect(
        self,
        name: str,
        *,
        rcvbuf: int | None = None,
        nodelay: bool = True,
        record: bool = True,
        timeout: float | None = None,
    ) -> Connection:
        """Open a connection to the target.

        Args:
            name: Names the connection in steps and reports.
            rcvbuf: ``SO_RCVBUF`` to set before connecting (a small window).
            nodelay: Set ``TCP_NODELAY`` so every write leaves at once.
            record: Keep its transcript for the report (storms turn this off).
            timeout: Deadline of the connect step.

        Raises:
            CheckFailure: The target refused or reset the connection.
            StepTimeout: The connect did not complete in time.
        """
        transcript = Transcript(name)
        if record:
            self.transcripts.append(transcript)
        family = socket.AF_INET6 if ":" in self.address.host else socket.AF_INET
        sock = trio.socket.socket(family, socket.SOCK_STREAM)
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        if nodelay:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = Connection(self, name, sock, transcript, self.oracle_factory())
        self.connections.append(conn)
        with self.step(f"connect {name}", conn, timeout):
            try:
                await sock.connect((self.address.host, self.address.port))
            except OSError as exc:
                sock.close()
                transcript.end(Ending.REFUSED)
                raise CheckFailure(
                    f"cannot connect {name} to {self.address}: {exc.strerror or exc}",
                    step=f"connect {name}",
                    transcript=transcript,
                ) from None
        transcript.events.append(Event(self.elapsed(), "connect"))
        return conn


class Connection:
    """One client connection, its transcript and its oracle. Made by :meth:`Harness.connect`."""

    def __init__(
        self,
        harness: Harness,
        name: str,
        sock: trio.socket.SocketType,
        transcript: Transcript,
        oracle: Oracle,
    ) -> None:
        self.harness = harness
        self.name = name
        self.sock = sock
        self.transcript = transcript
        self.oracle = oracle

    # -- sending -----------------------------------------------------------

    async def send(
        self,
        data: bytes,
        *,
        chunks: Sequence[int] | None = None,
        pause: float = 0.0,
        pause_every: int = 0,
        step: str | None = None,
        timeout: float | None = None,
    ) -> None:
        """Send all of ``data`` as one step.

        Args:
            data: The bytes.
            chunks: Sizes of the successive writes, cycled; default: as much
                as the socket takes.
            pause: Seconds to pause after every ``pause_every`` writes (pacing
                the writes, so the server sees them one by one).
            pause_every: How many writes between pauses; 0 never pauses.
            step: The step's name; default describes the write.
            timeout: The step's deadline.

        Raises:
            CheckFailure: The server reset the connection.
            StepTimeout: The server stopped reading for longer than the deadline.
        """
        name = step or f"send {len(data)} bytes on {self.name}"
        view = memoryview(data)
        sizes = list(chunks or [len(data) or 1])
        offset = turn = 0
        with self.harness.step(name, self, timeout):
            while offset < len(view):
                size = sizes[turn % len(sizes)]
                turn += 1
                chunk = view[offset : offset + size]
                self.oracle.sent(bytes(chunk))  # Before the bytes can come back.
                while chunk:
                    n = await self._send_some(chunk, name)
                    self.transcript.sent += chunk[:n]
                    self.transcript.events.append(Event(self.harness.elapsed(), "send", n))
                    chunk = chunk[n:]
                    offset += n
                if pause and pause_every and turn % pause_every == 0:
                    await trio.sleep(pause)

    async def _send_some(self, chunk: memoryview, step: str) -> int:
        try:
            return await self.sock.send(chunk)
        except OSError as exc:
            self.transcript.end(Ending.RST)
            raise CheckFailure(
                f"the server reset connection {self.name} while it was sending "
                f"({exc.strerror or exc})",
                step=step,
                transcript=self.transcript,
            ) from None

    async def send_until_blocked(
        self, data: bytes, *, stall: float = 0.3, step: str | None = None, timeout: float = 20.0
    ) -> int:
        """Send ``data`` until the socket stops taking bytes for ``stall`` seconds.

        That is the server applying back-pressure: it holds replies it cannot
        deliver, or stopped reading. Nothing may be read on this connection
        meanwhile. Returns the number of bytes sent; all of ``data`` sent
        without a stall is fine too.
        """
        name = step or f"send on {self.name} until the server stops reading"
        view = memoryview(data)
        offset = 0
        with self.harness.step(name, self, timeout):
            while offset < len(view):
                chunk = view[offset : offset + 65536]
                with trio.move_on_after(stall) as scope:
                    n = await self._send_some(chunk, name)
                if scope.cancelled_caught:
                    return offset
                # Nothing is read on this connection meanwhile, so recording
                # after the send cannot miss an early reply.
                self.oracle.sent(bytes(chunk[:n]))
                self.transcript.sent += chunk[:n]
                self.transcript.events.append(Event(self.harness.elapsed(), "send", n))
                offset += n
        return offset

    # -- receiving ---------------------------------------------------------

    async def recv_some(self, max_bytes: int = 65536) -> bytes:
        """One ``recv``; b"" on FIN or RST, which the transcript records. Not a step."""
        try:
            data = await self.sock.recv(max_bytes)
        except OSError:
            self.transcript.end(Ending.RST)
            self.transcript.events.append(Event(self.harness.elapsed(), "RST"))
            return b""
        if not data:
            self.transcript.end(Ending.FIN)
            self.transcript.events.append(Event(self.harness.elapsed(), "FIN"))
            return b""
        self.transcript.received += data
        self.transcript.events.append(Event(self.harness.elapsed(), "recv", len(data)))
        self.oracle.received(data)
        return data

    def _judge(self, step: str) -> Verdict:
        verdict = self.oracle.verdict()
        if verdict.failed:
            raise Divergence(verdict.reason, step=step, transcript=self.transcript, verdict=verdict)
        return verdict

    async def settle(
        self,
        *,
        read_size: int = 65536,
        pause: float = 0.0,
        pause_every: int = 0,
        step: str | None = None,
        timeout: float | None = None,
        idle: bool = False,
    ) -> None:
        """Read until the oracle has no pending bytes, as one step.

        With ``idle``, ``timeout`` bounds the wait for each next byte instead
        of the whole read (see :meth:`Harness.step`).

        Raises:
            Divergence: A wrong or extra byte, or the server closed while it
                still owed bytes.
            StepTimeout: The server did not deliver in time.
        """
        name = step or f"read the reply on {self.name}"
        reads = 0
        seconds = self.harness.step_timeout if timeout is None else timeout
        with self.harness.step(name, self, seconds, idle=idle) as scope:
            while self._judge(name).pending:
                if not await self.recv_some(read_size):
                    self.oracle.finish()
                    self._judge(name)
                    return
                if idle:
                    scope.deadline = trio.current_time() + seconds
                reads += 1
                if pause and pause_every and reads % pause_every == 0:
                    await trio.sleep(pause)

    async def expect_eof(
        self, *, read_size: int = 65536, step: str | None = None, timeout: float | None = None
    ) -> Ending:
        """Read until the server ends the connection, then judge the whole exchange.

        Returns:
            How it ended: FIN or RST.

        Raises:
            Divergence: What came back before the end was wrong or short.
            StepTimeout: The server never closed its side.
        """
        name = step or f"read {self.name} until the server closes"
        with self.harness.step(name, self, timeout):
            while await self.recv_some(read_size):
                self._judge(name)
        self.oracle.finish()
        self._judge(name)
        return self.transcript.ending

    async def exchange(
        self,
        data: bytes,
        *,
        chunks: Sequence[int] | None = None,
        send_pause: float = 0.0,
        send_pause_every: int = 0,
        read_size: int = 65536,
        read_pause: float = 0.0,
        read_pause_every: int = 0,
        timeout: float | None = None,
    ) -> None:
        """Send ``data`` while reading the reply, both at once, until nothing is owed.

        The reader judges every chunk as it comes, so a wrong byte fails at
        once; it stops when the writer is done, and what is still owed is read
        by :meth:`settle`.

        Raises:
            Divergence: A wrong, missing or extra byte.
            StepTimeout: The writer or the reader missed the deadline.
            CheckFailure: The server reset the connection while we sent.
        """
        name = f"read the reply to {len(data)} bytes on {self.name} while sending"
        read_scope = trio.CancelScope()

        async def reader() -> None:
            reads = 0
            with read_scope:
                while await self.recv_some(read_size):
                    self._judge(name)
                    reads += 1
                    if read_pause and read_pause_every and reads % read_pause_every == 0:
                        await trio.sleep(read_pause)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            await self.send(
                data,
                chunks=chunks,
                pause=send_pause,
                pause_every=send_pause_every,
                timeout=timeout,
            )
            read_scope.cancel()
        await self.settle(
            read_size=read_size,
            step=f"read the rest of the reply to {len(data)} bytes on {self.name}",
            timeout=timeout,
        )

    def conclude(self, step: str | None = None) -> None:
        """Declare the exchange over and judge it (missing bytes now fail)."""
        self.oracle.finish()
        self._judge(step or f"judge {self.name}")

    # -- ending ------------------------------------------------------------

    async def shutdown_write(self) -> None:
        """Half-close: send FIN, keep reading."""
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            self.transcript.end(Ending.RST)
            raise CheckFailure(
                f"cannot half-close {self.name}: {exc.strerror or exc}",
                step=f"half-close {self.name}",
                transcript=self.transcript,
            ) from None
        self.transcript.events.append(Event(self.harness.elapsed(), "shutdown SHUT_WR"))
        await trio.lowlevel.checkpoint()

    def reset(self) -> None:
        """Close with RST instead of FIN (``SO_LINGER`` with a zero timeout)."""
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass  # Already reset by the server; closing is all that is left.
        self.sock.close()
        self.transcript.end(Ending.CLIENT_RESET)
        self.transcript.events.append(Event(self.harness.elapsed(), "reset"))

    def close(self) -> None:
        """Close normally (FIN)."""
        if self.sock.fileno() != -1:
            self.sock.close()
            self.transcript.end(Ending.CLIENT_CLOSE)
            self.transcript.events.append(Event(self.harness.elapsed(), "close"))
