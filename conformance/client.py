"""One client connection of the harness: sends, reads and closes, each as a step.

A :class:`Connection` is made by :meth:`conformance.harness.Harness.connect`;
every method runs as one step of its harness (under the step's deadline) and
records what it did in the connection's transcript, and everything it reads
goes through the connection's own oracle. The connection sees its harness
through :class:`Steps` alone (its steps and its clock), so this module does not
import the harness that imports it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Protocol

import trio

from conformance.oracle import Judgement, Oracle
from conformance.rules import CLOSE_WITHIN, HALFCLOSE_CLOSE, HALFCLOSE_DATA
from conformance.streams import ClientStream
from conformance.transcript import (
    CheckFailure,
    Divergence,
    Ending,
    Event,
    NotMeasurable,
    StepTimeout,
    Transcript,
)

__all__ = ["Connection", "Steps"]

#: Seconds a step that is owed bytes may see no byte move either way (see the harness).
STALL_AFTER = 3.0


class Steps(Protocol):
    """What a connection needs of its harness (:class:`conformance.harness.Harness`)."""

    #: Default deadline of a step, in seconds.
    step_timeout: float

    def elapsed(self) -> float:
        """Seconds since the harness was made."""
        ...

    def step(
        self,
        name: str,
        conn: Connection | None = None,
        timeout: float | None = None,
        *,
        idle: bool = False,
        watch: bool = True,
    ) -> AbstractContextManager[trio.CancelScope]:
        """Run the body of the ``with`` as step ``name`` under a deadline."""
        ...


#: The event of the server's end, by whether its ``close_notify`` came first (TLS).
_FIN_EVENT = {None: "FIN", True: "close_notify, FIN", False: "FIN without close_notify"}


class Connection:
    """One client connection, its transcript and its oracle. Made by :meth:`Harness.connect`."""

    def __init__(
        self,
        harness: Steps,
        name: str,
        stream: ClientStream,
        transcript: Transcript,
        oracle: Oracle,
    ) -> None:
        self.harness = harness
        self.name = name
        self.stream = stream
        #: The TCP socket beneath the stream (its options, names and state).
        self.sock = stream.sock
        self.transcript = transcript
        self.oracle = oracle
        #: The progress deadlines of the steps running on this connection.
        self._watches: list[trio.CancelScope] = []

    # -- progress ----------------------------------------------------------

    @contextmanager
    def watching(self, progress: trio.CancelScope) -> Iterator[None]:
        """Run the block under ``progress``, a step's progress deadline on this connection.

        While bytes are owed, the deadline is :data:`STALL_AFTER` seconds after
        the last byte that moved either way; while nothing is owed, there is
        none. Bytes that move push it back (:meth:`progressed`).
        """
        self._watches.append(progress)
        try:
            self.progressed()
            with progress:
                yield
        finally:
            self._watches.remove(progress)

    def progressed(self) -> None:
        """A byte moved, or the step began: set the progress deadlines anew."""
        if not self._watches:
            return
        owed = self.oracle.verdict().pending
        deadline = trio.current_time() + STALL_AFTER if owed else math.inf
        for progress in self._watches:
            progress.deadline = deadline

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
                    self.progressed()
                    chunk = chunk[n:]
                    offset += n
                if pause and pause_every and turn % pause_every == 0:
                    await trio.sleep(pause)

    async def _send_some(self, chunk: memoryview, step: str) -> int:
        try:
            return await self.stream.send_some(chunk)
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
                self.progressed()
                offset += n
        return offset

    # -- receiving ---------------------------------------------------------

    async def recv_some(self, max_bytes: int = 65536) -> bytes:
        """One ``recv``; b"" on FIN or RST, which the transcript records. Not a step."""
        try:
            data = await self.stream.receive_some(max_bytes)
        except OSError:
            self.transcript.end(Ending.RST)
            self.transcript.events.append(Event(self.harness.elapsed(), "RST"))
            return b""
        if not data:
            self.transcript.end(Ending.FIN)
            ended = _FIN_EVENT[self.stream.close_notify]
            self.transcript.events.append(Event(self.harness.elapsed(), ended))
            return b""
        self.transcript.received += data
        self.transcript.events.append(Event(self.harness.elapsed(), "recv", len(data)))
        self.oracle.received(data)
        self.progressed()
        return data

    def _judge(self, step: str) -> Judgement:
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
        watch: bool = True,
    ) -> None:
        """Read until the oracle has no pending bytes, as one step.

        With ``idle``, ``timeout`` bounds the wait for each next byte instead
        of the whole read (see :meth:`Harness.step`); ``watch=False`` drops
        the step's progress deadline.

        Raises:
            Divergence: A wrong or extra byte, or the server closed while it
                still owed bytes.
            StepTimeout: The server did not deliver in time.
        """
        name = step or f"read the reply on {self.name}"
        reads = 0
        seconds = self.harness.step_timeout if timeout is None else timeout
        with self.harness.step(name, self, seconds, idle=idle, watch=watch) as scope:
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

    async def expect_quiet(self, seconds: float, *, step: str | None = None) -> None:
        """Read for ``seconds`` more, when all that is owed came back: nothing else may come
        (else :class:`Divergence`: the oracle judges the extra byte)."""
        name = step or f"nothing more comes back on {self.name} for {seconds:g}s"
        with trio.move_on_after(seconds):
            while await self.recv_some():
                self._judge(name)
        self._judge(name)

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

    async def expect_owed_then_fin(
        self,
        *,
        read_size: int = 65536,
        pause: float = 0.0,
        pause_every: int = 0,
        step: str | None = None,
        timeout: float | None = None,
    ) -> None:
        """After this client's FIN: read all that is owed, then the server's FIN.

        ``pause`` seconds every ``pause_every`` reads make a slow reader: the
        server's replies then wait in its own buffer, not only in the kernel's.

        The two parts are judged by their own rules (:mod:`conformance.rules`):
        a byte lost or added, or a server that stops delivering while it
        still owes bytes (``timeout`` bounds the wait for each next byte),
        breaks HALFCLOSE-DATA (MUST); a server that then ends with an RST, or
        does not close within :data:`~conformance.rules.CLOSE_WITHIN`
        seconds, breaks HALFCLOSE-CLOSE (SHOULD).

        Raises:
            CheckFailure: Naming the rule broken.
        """
        name = step or f"read what {self.name} is owed after its FIN"
        try:
            await self.settle(
                read_size=read_size,
                pause=pause,
                pause_every=pause_every,
                step=name,
                timeout=timeout,
                idle=True,
            )
        except CheckFailure as exc:
            raise exc.under(HALFCLOSE_DATA) from None
        owed = len(self.transcript.received)
        close = f"the server closes {self.name} within {CLOSE_WITHIN:g}s once nothing is owed"
        try:
            with self.harness.step(close, self, CLOSE_WITHIN):
                while await self.recv_some(read_size):
                    self._judge(close)
            self.oracle.finish()
            self._judge(close)
        except StepTimeout:
            raise CheckFailure(
                f"the server sent all it owed after the client's FIN ({owed} bytes) but did "
                f"not close its side within {CLOSE_WITHIN:g}s",
                step=close,
                transcript=self.transcript,
                rule=HALFCLOSE_CLOSE,
            ) from None
        except CheckFailure as exc:
            raise exc.under(HALFCLOSE_DATA) from None
        if self.transcript.ending is Ending.RST:
            raise CheckFailure(
                f"the server sent all it owed after the client's FIN ({owed} bytes), then "
                "ended with an RST, not a FIN",
                step=close,
                transcript=self.transcript,
                rule=HALFCLOSE_CLOSE,
            )

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
        """Half-close: send FIN (over TLS, ``close_notify`` first), keep reading.

        Raises:
            NotMeasurable: The stream has no half-close (TLS 1.2).
            CheckFailure: The socket refused (the server reset the connection).
        """
        if self.stream.no_half_close is not None:
            raise NotMeasurable(self.stream.no_half_close)
        try:
            await self.stream.send_eof()
        except OSError as exc:
            self.transcript.end(Ending.RST)
            raise CheckFailure(
                f"cannot half-close {self.name}: {exc.strerror or exc}",
                step=f"half-close {self.name}",
                transcript=self.transcript,
            ) from None
        self.transcript.events.append(Event(self.harness.elapsed(), "shutdown SHUT_WR"))

    def reset(self) -> None:
        """Close with RST instead of FIN (``SO_LINGER`` with a zero timeout)."""
        self.stream.reset()
        self.transcript.end(Ending.CLIENT_RESET)
        self.transcript.events.append(Event(self.harness.elapsed(), "reset"))

    def close(self) -> None:
        """Close normally (FIN)."""
        if self.sock.fileno() != -1:
            self.stream.close()
            self.transcript.end(Ending.CLIENT_CLOSE)
            self.transcript.events.append(Event(self.harness.elapsed(), "close"))
