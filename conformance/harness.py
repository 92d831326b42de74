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

A step on a connection also has a progress deadline: while the oracle says
bytes are owed, some byte must move on it, either way, at least every
:data:`STALL_AFTER` seconds (each send and each read pushes the deadline
back, :meth:`Connection.progressed`). A server that holds what it owes is
then judged :class:`Stalled` in seconds, not at the end of the step's whole
deadline, which stays for a transfer that is slow but keeps moving. Both are
liveness findings: nothing came in time. A data rule (RFC 862,
HALFCLOSE-DATA) fails only on a byte that differs, is added, or is missing
when the server ends the connection.

Each connection keeps a :class:`~conformance.transcript.Transcript`: every
byte sent and received, an event list with times relative to the start of
the check, and how the connection ended. Each connection also feeds its own
oracle; a wrong byte raises :class:`~conformance.transcript.Divergence` at
once, with the verdict. The transcript and failure types live in
:mod:`conformance.transcript` (plain data) and are re-exported here.

Facts about TCP the steps rely on:

- ``SO_RCVBUF`` must be set before ``connect`` to shrink the advertised
  window; Linux doubles the value and clamps it to a minimum.
- ``SO_LINGER`` on with a zero timeout makes ``close`` send RST, not FIN.
- After the peer's RST, ``recv`` raises ``ECONNRESET``; ``send`` raises
  ``EPIPE`` or ``ECONNRESET``.
"""

from __future__ import annotations

import math
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import trio

from conformance.client import STALL_AFTER, Connection
from conformance.protocols import EchoModel, ProtocolModel, message_for, request_stream
from conformance.run.profiles import DEFAULT, Profile
from conformance.streams import ClientStream, PlainStream, TlsStream
from conformance.targets.target import Address
from conformance.tls import TlsRecordError, TlsSettings, client_context, handshake_failure
from conformance.transcript import (
    CheckFailure,
    Divergence,
    Ending,
    Event,
    Stalled,
    StepTimeout,
    Transcript,
)

__all__ = [
    "CheckFailure",
    "Connection",
    "Divergence",
    "Ending",
    "Event",
    "DEFAULT_MAX_CONNECTIONS",
    "STALL_AFTER",
    "Harness",
    "Stalled",
    "StepTimeout",
    "Transcript",
]

#: Seconds a step may take unless it says otherwise.
DEFAULT_STEP_TIMEOUT = 5.0

#: How many connections a server is taken to hold at most when its own
#: descriptor limit cannot be read (``--max-connections``).
DEFAULT_MAX_CONNECTIONS = 2048


class Harness:
    """Opens connections to one target and runs steps on them under deadlines.

    Args:
        address: The target.
        model: The protocol the server speaks (``--protocol``, or the oracle
            ``--oracle`` names): what :meth:`payload` and :meth:`message`
            send, and each connection's oracle; echo by default.
        step_timeout: Default deadline of a step, in seconds.
        profile: How hard property checks search (:mod:`conformance.run.profiles`).
        scenario: A saved scenario that property checks replay instead of searching.
        artifacts: Where a check keeps what it leaves (a failing scenario);
            None: a folder in the temporary directory.
        max_connections: How many connections the server is taken to hold
            at most when its descriptor limit cannot be read (``--max-connections``);
            None: not given, :data:`DEFAULT_MAX_CONNECTIONS` is assumed, and a
            check that rests on it is not measured.
        load_hosts: The execnet gateways the load checks run from
            (``--load-hosts``); empty: this process.
        tls: Speak TLS on every connection, with these settings (``--tls``);
            None: plain TCP.
    """

    def __init__(
        self,
        address: Address,
        model: ProtocolModel | None = None,
        *,
        step_timeout: float = DEFAULT_STEP_TIMEOUT,
        profile: Profile = DEFAULT,
        scenario: Path | None = None,
        artifacts: Path | None = None,
        max_connections: int | None = None,
        load_hosts: tuple[str, ...] = (),
        tls: TlsSettings | None = None,
    ) -> None:
        self.address = address
        self.tls = tls
        self.model: ProtocolModel = model if model is not None else EchoModel()
        self.max_connections = max_connections
        self.load_hosts = load_hosts
        self.artifacts = artifacts
        self.step_timeout = step_timeout
        self.profile = profile
        self.scenario = scenario
        self.transcripts: list[Transcript] = []
        #: What a check could not measure (the server's process not visible...):
        #: a check that otherwise passed is SKIPPED with these reasons, never PASS.
        self.unmeasured: list[str] = []
        self.connections: list[Connection] = []
        self.current_step: str | None = None
        #: When the check's own deadline passes (``time.monotonic()``): what a
        #: search on another thread must fit in. Infinite outside a check.
        self.ends_at = math.inf
        self._start = time.monotonic()

    def not_measured(self, reason: str) -> None:
        """Record that part of the check could not be measured, and why.

        The check goes on (what it can measure may still fail it); if nothing
        fails, its verdict is SKIPPED with ``reason``, never PASS.
        """
        self.unmeasured.append(reason)

    def payload(self, size: int, seed: int, *, connection: int = 0) -> bytes:
        """About ``size`` bytes for one connection to send, in the run's protocol.

        Under echo (any model whose every byte string is a request): exactly
        ``size`` random bytes from ``seed``. Under another model: whole
        requests of that size or a little more, with keys of their own
        (:func:`~conformance.protocols.request_stream`).
        """
        return request_stream(self.model, size, seed, connection=connection)

    def message(self, data: bytes) -> bytes:
        """``data`` itself where any bytes are a request, else one short request in its place."""
        return message_for(self.model, data)

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
        watch: bool = True,
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
            watch: Give the step the progress deadline on ``conn``; False: only
                its own deadline (a step that is itself a short wait for a slow
                server's first reply, such as the liveness probe).

        Raises:
            StepTimeout: The deadline passed; the connection's ending is TIMEOUT.
            Stalled: Bytes were owed on ``conn`` and none moved either way for
                :data:`STALL_AFTER` seconds.
        """
        seconds = self.step_timeout if timeout is None else timeout
        self.current_step = name
        progress = trio.CancelScope()
        try:
            with trio.fail_after(seconds) as scope:
                if conn is None or not watch:
                    yield scope
                else:
                    with conn.watching(progress):
                        yield scope
        except TlsRecordError as exc:
            if exc.step is None:  # Raised under the stream, which knows no step.
                exc.step = name
                exc.transcript = conn.transcript if conn is not None else None
            raise
        except trio.TooSlowError:
            assert conn is None or not progress.cancelled_caught
            what = (
                f"nothing arrived for {seconds:g}s"
                if idle
                else f"did not complete within {seconds:g}s"
            )
            raise StepTimeout(
                f"liveness: {what}{_where(conn)}",
                step=name,
                transcript=conn.transcript if conn is not None else None,
                verdict=conn.oracle.verdict() if conn is not None else None,
            ) from None
        if conn is not None and progress.cancelled_caught:
            raise Stalled(
                f"liveness: nothing moved either way for {STALL_AFTER:g}s while bytes "
                f"were owed{_where(conn)}",
                step=name,
                transcript=conn.transcript,
                verdict=conn.oracle.verdict(),
            )

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
        handshake: bool = True,
    ) -> Connection:
        """Open a connection to the target.

        Args:
            name: Names the connection in steps and reports.
            rcvbuf: ``SO_RCVBUF`` to set before connecting (a small window).
            nodelay: Set ``TCP_NODELAY`` so every write leaves at once.
            record: Keep its transcript for the report (storms turn this off).
            timeout: Deadline of the connect step.
            handshake: Over TLS, run the handshake as a step of its own; False:
                leave it to the check (:meth:`handshake`, or the stream's own
                primitives: a ClientHello cut short, bytes that are not TLS).

        Raises:
            CheckFailure: The target refused or reset the connection.
            StepTimeout: The connect did not complete in time.
        """
        transcript = Transcript(name)
        if record:
            self.transcripts.append(transcript)
        family = socket.AF_INET6 if ":" in self.address.host else socket.AF_INET
        raw = socket.socket(family, socket.SOCK_STREAM)
        sock = trio.socket.from_stdlib_socket(raw)
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        if nodelay:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        stream: ClientStream = PlainStream(sock)
        if self.tls is not None:
            hostname = self.tls.server_hostname(self.address.host)
            stream = TlsStream(sock, raw, client_context(self.tls), hostname)
        conn = Connection(self, name, stream, transcript, self.model.oracle())
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
        if handshake and self.tls is not None:
            await self.handshake(conn, timeout=timeout)
        return conn

    async def handshake(
        self, conn: Connection, *, trickle: float | None = None, timeout: float | None = None
    ) -> None:
        """The TLS handshake of a connection just made, as a step of its own.

        Args:
            conn: A connection made with ``handshake=False``, over TLS.
            trickle: Send the client's handshake one byte per TCP segment,
                this many seconds apart (:meth:`TlsStream.handshake`).
            timeout: The step's deadline.

        Raises:
            CheckFailure: The handshake failed; the message says which side said so.
        """
        stream = conn.stream
        assert isinstance(stream, TlsStream), "a handshake needs a TLS connection"
        step = f"TLS handshake on {conn.name}" + (" (trickled)" if trickle else "")
        with self.step(step, conn, timeout):
            try:
                await stream.handshake(trickle=trickle)
            except OSError as exc:  # ssl.SSLError is an OSError too.
                conn.transcript.end(
                    Ending.RST if isinstance(exc, ConnectionResetError) else Ending.FIN
                )
                stream.close()
                raise CheckFailure(
                    f"the TLS handshake on {conn.name} failed: {handshake_failure(exc)}",
                    step=step,
                    transcript=conn.transcript,
                ) from None
        conn.transcript.events.append(Event(self.elapsed(), f"TLS handshake ({stream.version})"))


def _where(conn: Connection | None) -> str:
    """The connection a step failed on, with what went each way; ends it as timed out."""
    if conn is None:
        return ""
    conn.transcript.end(Ending.TIMEOUT)
    return (
        f" on connection {conn.name} ({len(conn.transcript.sent)} bytes sent, "
        f"{len(conn.transcript.received)} received)"
    )
