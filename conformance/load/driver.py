"""The driver: one load process's connections and what each does on each event.

How this works
--------------
A :class:`Driver` opens its share of the run's connections, registers them
with one ``select.epoll``, and sends, receives and checks for each; the loop
(:mod:`conformance.load.loop`) calls it on each event. Each connection is a
:class:`~conformance.load.client.Client` whose state the driver moves through
the client's table; faults (:mod:`conformance.load.faults`) strike between
rounds. Three parts, one job each:

- the driver (here): opening, replacing and dropping connections, and the
  event handlers (readable, writable, EOF, an error);
- its base, :class:`~conformance.load.sending.Sender`: what each connection
  sends next (a ping-pong message, a stream's window) and the bytes its
  socket refused, queued until it is writable;
- its :class:`~conformance.load.tally.Tally`: the errors counted by kind and
  fault, the first error, and whether the run must halt.

Connects never wait (:mod:`conformance.load.connector`): :meth:`Driver.connect_all`
starts them all, a batch at a time, under one deadline for the whole set, and a
connection replaced during the run is connected by the loop like any event.
A stop event (``stop``), looked at every tick while connecting, running and
draining, ends the run early with what it measured so far (``stopped``).
A client is acted on only while it is still the driver's: a dropped one is
``CLOSED`` and its descriptor may already serve a new connection.

- *ping-pong*: each connection sends one message of ``size`` bytes, waits
  until all of it came back, checks it, records the round trip's latency, and
  sends the next.
- *stream*: each connection keeps up to ``window`` bytes in flight, sending
  from a random pattern and checking what comes back.

Each connection's oracle judges what comes back (:func:`~conformance.load.spec.judging`):
either it says what a correct server owes for each message (echo, or its
``expected_reply``) and every byte received is compared with the byte owed at
the same offset of the stream, or it is told every message and every read and
its verdict says whether the reply is wrong, still owed or complete. The
first difference is reported with its connection and offset. With an oracle
that owes nothing (discard), any byte back is an error, and a round ends when
the socket has taken the whole message (:meth:`Driver.on_writable`).

A user's oracle that raises (:class:`~conformance.oracle.OracleError`) ends
the run (:meth:`~conformance.load.tally.Tally.oracle_failed`): the result says
so, and judges nothing.

Facts about the OS this relies on
---------------------------------
- epoll is level-triggered here: a connection with unread bytes is reported
  on every ``poll`` until they are read, so one ``recv`` per event is enough.
- ``EPOLLERR``/``EPOLLHUP`` come whatever was asked for; the ``recv`` or
  ``send`` that follows says what went wrong.
- ``SO_LINGER`` with a zero timeout makes ``close`` send RST and drop what is
  queued, in both directions.
"""

from __future__ import annotations

import errno
import random
import resource
import select
import socket
import time

from conformance.load.client import Client, ClientEvent, ClientState, VerdictJudge, WrongBytes
from conformance.load.connector import CONNECT_BATCH, Connecting, Connector, StopEvent
from conformance.load.faults import TICK, inject_after_round
from conformance.load.result import LoadResult
from conformance.load.sending import PATTERN_SHIFTS, Sender
from conformance.load.spec import Judging, LoadSpec, judging
from conformance.load.tally import Tally
from conformance.oracle import EchoOracle, OracleError, OracleFactory, ReplyOracle
from conformance.protocols import Capability, unique_prefix

__all__ = ["Driver"]

_IN = select.EPOLLIN
_OUT = select.EPOLLOUT
_READ_SIZE = 256 * 1024
_LINGER_RST = b"\x01\x00\x00\x00\x00\x00\x00\x00"  # struct linger {on, 0 s}

# Looked up once, not per event.
_SLOW_READER = ClientState.SLOW_READER
_HALF_CLOSED = ClientState.HALF_CLOSED
_IDLE = ClientState.IDLE
_REPLIED = ClientEvent.REPLIED


class Driver(Sender):
    """The connections of one load process and the loop that drives them.

    Args:
        spec: The whole run's spec.
        first: The run-wide index of this process's first connection.
        count: How many connections this process drives.
        stop: When set, the run ends within a tick, keeping what it measured.
    """

    def __init__(
        self, spec: LoadSpec, first: int, count: int, stop: StopEvent | None = None
    ) -> None:
        super().__init__(spec, select.epoll(), random.Random(spec.seed * 1_000_003 + first))
        self.first = first
        self.count = count
        self.connector = Connector(self.ep, spec.host, spec.port)
        self.clients: dict[int, Client] = {}
        self.next_index = first
        self.result = LoadResult(spec)
        #: Latencies (us) of measured round trips not yet in the histogram.
        self.latencies: list[int] = []
        self.running = False  # the clock runs: a new connection starts sending at once
        self.started = 0.0  # when the clock started (monotonic)
        model = spec.protocol()
        #: The protocol model whose requests the connections send; None: random bytes.
        self.model = None if Capability.ANY_BYTES in model.capabilities else model
        #: Makes each connection's oracle, and how it judges (random bytes only).
        self.oracle: OracleFactory = EchoOracle
        self.judging = Judging.ECHO
        if self.model is None:
            self.oracle, self.judging = judging(model)
        #: Counts the errors, and says when the run must halt (``tally.halted``).
        self.tally = Tally(
            self.result, stop_on_error=spec.stop_on_error, stop=stop, oracle_name=model.name
        )
        #: No faults, no round count, bytes owed known: after a round trip, just send the next.
        self.plain = (
            not spec.faults.any
            and spec.rounds is None
            and not self.stream
            and self.judging is not Judging.VERDICT
        )
        self.storm_left = 0
        self.pattern_len = (
            spec.size + PATTERN_SHIFTS if spec.mode == "pingpong" else 2 * max(spec.window, 65536)
        )
        if self.model is not None:
            self.pattern_len = 0

    # -- connections --------------------------------------------------------------

    def connect_all(self) -> None:
        """Open this process's connections, before the clock starts, under one deadline.

        At most ``CONNECT_BATCH`` connects are under way at once, and all of
        them together have ``spec.connect_timeout`` seconds: those not
        connected by then are one error of kind ``connect`` that counts them.
        With ``stop_on_error`` the first failure ends the phase (and the run);
        so does the stop event, within a tick. Connects still under way then
        are abandoned.
        """
        began = time.monotonic()
        try:
            self._connect_all()
        except OracleError as exc:
            self.tally.oracle_failed(exc)
            self.connector.close_all()
        self.result.connect_seconds = time.monotonic() - began

    def _connect_all(self) -> None:
        spec, tally = self.spec, self.tally
        _raise_fd_limit(self.count + CONNECT_BATCH + 64)  # (storm connects come on top)
        deadline = time.monotonic() + spec.connect_timeout
        pending = self.connector.pending
        left = self.count
        while not tally.halted:
            while left and len(pending) < CONNECT_BATCH and not tally.halted:
                left -= 1
                self.connect(deadline)
            if not pending:
                break  # All started and over, or halted by a failure.
            now = time.monotonic()
            if now >= deadline:
                missing = len(pending) + left
                tally.error(
                    "connect",
                    None,
                    f"{missing} of {self.count} connections not accepted within "
                    f"{spec.connect_timeout:g}s",
                    times=missing,
                )
                break
            if tally.stop_requested():
                break
            for fd, _ in self.ep.poll(min(TICK, deadline - now)):
                self.on_connected(fd)
                if tally.halted:
                    break
        self.connector.close_all()

    def connect(self, deadline: float, *, storm: bool = False) -> None:
        """Start a connect for a new connection (or a storm's): :meth:`on_connected` ends it."""
        index = None
        if not storm:
            index = self.next_index
            self.next_index += 1
        failed = self.connector.start(index, deadline)
        if failed is not None:
            self.connect_failed(index, failed)

    def on_connected(self, fd: int) -> None:
        """A connect under way is over (or its descriptor had an event): add the connection."""
        done = self.connector.finish(fd)
        if done is None:
            return
        attempt, failed = done
        if failed is not None:
            self.connect_failed(attempt.index, failed)
            return
        if attempt.index is None:  # A storm connection: open, and at once closed.
            attempt.sock.close()
            return
        client = self.add_client(attempt.index, attempt.sock)
        if self.running:
            self.start(client, time.monotonic_ns())

    def connect_failed(self, index: int | None, exc: OSError) -> None:
        what = "connect" if index is not None else "storm connect"
        self.tally.error("connect", None, f"{what} failed: {exc}")

    def connects_expired(self, now: float) -> None:
        """At a tick: the connects past their deadline are errors, one per kind and tick."""
        late = self.connector.expire(now)
        if late:
            self.late_connects(late)

    def late_connects(self, late: list[Connecting]) -> None:
        """Connects taken off past their deadline: errors, one per kind."""
        storms = sum(1 for attempt in late if attempt.index is None)
        timeout = f"within {self.spec.connect_timeout:g}s"
        tally = self.tally
        if len(late) > storms:
            n = len(late) - storms
            tally.error("connect", None, f"{n} new connections not accepted {timeout}", times=n)
        if storms:
            tally.error(
                "connect", None, f"{storms} storm connections not accepted {timeout}", times=storms
            )

    def add_client(self, index: int, sock: socket.socket) -> Client:
        """A connected socket joins the run as connection ``index``."""
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.model is not None:
            source = self.model.load_connection(unique_prefix(index))
            client = Client(index, sock, b"", None, source)
        else:
            pattern = self.rng.randbytes(self.pattern_len)
            if self.judging is Judging.ECHO:
                # Echo owes the message itself: no call per round (None tells the client so).
                client = Client(index, sock, pattern, None)
            else:
                oracle = self.oracle()
                if isinstance(oracle, ReplyOracle) and self.judging is Judging.REPLY:
                    client = Client(index, sock, pattern, oracle.expected_reply)
                else:
                    client = Client(index, sock, pattern, None, judge=VerdictJudge(oracle))
        client.last_progress = time.monotonic()
        self.clients[client.fd] = client
        self.ep.register(client.fd, _IN)
        self.result.connections_opened += 1
        return client

    def start(self, client: Client, now_ns: int) -> None:
        """The run's first message (or window) on a connection."""
        if self.stream:
            self.top_up(client)
        else:
            self.send_next(client, now_ns)

    def drop(self, client: Client, *, rst: bool = False) -> bool:
        """Take ``client`` out of the run and close its socket.

        Returns:
            False when it was out already (then nothing is touched: its
            descriptor may serve another connection by now).
        """
        client.advance(ClientEvent.ABORT)
        if self.clients.get(client.fd) is not client:
            return False
        del self.clients[client.fd]
        try:
            self.ep.unregister(client.fd)
        except OSError:
            pass
        if rst:
            try:
                client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
            except OSError:
                pass
        client.sock.close()
        return True

    def replace(self, client: Client, *, rst: bool = False) -> None:
        """Drop ``client`` and, unless the run is draining, connect a new one in its place."""
        if self.drop(client, rst=rst) and not self.draining:
            self.connect(time.monotonic() + self.spec.connect_timeout)

    # -- events -------------------------------------------------------------------

    def on_writable(self, client: Client) -> None:
        if client.out is not None:
            self.flush(client)
            return
        # Write interest with nothing queued comes from await_writable: nothing is
        # owed (a protocol with no replies) and the socket took all that was sent.
        self.set_events(client, client.events & ~_OUT)
        if client.owes() or not client.events & _IN:
            return  # Owed a reply after all, or a slow reader's pause (it resumes at a tick).
        if self.stream:
            self.top_up(client)
        elif client.state is not _IDLE:
            self.round_done(client)

    def on_readable(self, client: Client) -> None:
        # Ask for no more than is owed (or a little, to catch extra bytes): a
        # large recv allocates a large buffer on every call.
        size = min(len(client.expect), _READ_SIZE) or (4096 if client.judge is None else 65536)
        try:
            data = client.sock.recv(size)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self.io_error(client, exc)
            return
        self.on_data(client, data)

    def on_data(self, client: Client, data: bytes) -> None:
        """Check what came back against what is owed, then move the connection on."""
        if not data:
            self.on_eof(client)
            return
        wrong = client.receive(data)
        if wrong is not None:
            self.wrong_bytes(client, wrong)
            return
        self.result.bytes_verified += len(data)
        if self.stream:
            client.last_progress = time.monotonic()
            self.top_up(client)
        elif client.expect or (client.judge is not None and client.judge.owes):
            if client.state is _SLOW_READER:
                client.last_progress = time.monotonic()
        else:
            self.round_done(client)

    def round_done(self, client: Client) -> None:
        """Ping-pong: everything owed came back; record it and move on."""
        now_ns = time.monotonic_ns()
        if client.measured:
            self.latencies.append((now_ns - client.sent_at) // 1000)
        client.rounds += 1
        state = client.state
        client.advance(_REPLIED)
        if state is _HALF_CLOSED:
            self.result.observed["half-close-echoed"] += 1
            self.replace(client)
            return
        if state is _SLOW_READER:
            self.result.observed["slow-reader-served"] += 1
        self.after_round(client, now_ns)

    def after_round(self, client: Client, now_ns: int) -> None:
        spec = self.spec
        if self.draining or (spec.rounds is not None and client.rounds >= spec.rounds):
            client.advance(ClientEvent.FINISH)
            return
        if spec.faults.any and inject_after_round(self, client, now_ns):
            return
        self.send_next(client, now_ns)

    def on_eof(self, client: Client) -> None:
        state = client.state
        client.advance(ClientEvent.PEER_EOF)
        owed = client.owed_words()
        done = state is _HALF_CLOSED and not client.owes()
        if state is _HALF_CLOSED and client.judge is not None:
            # After its FIN the exchange is over: the oracle's last word judges it.
            verdict = client.judge.finish()
            done = verdict.passed
            owed = f"a wrong or short reply (the oracle: {verdict.reason})"
            if verdict.pending:  # Not judged: neither an error nor a pass.
                self.tally.cannot_judge(client, verdict.status)
                self.replace(client)
                return
        if done:
            self.result.observed["half-close-echoed"] += 1
        else:
            self.tally.error(
                "eof",
                client,
                f"server closed the connection with {owed}",
                offset=client.verified,
                state=state,
            )
        self.replace(client)

    def io_error(self, client: Client, exc: OSError) -> None:
        if self.clients.get(client.fd) is not client:
            return  # Dropped already: this error is about the socket it closed.
        kind = "reset" if exc.errno in (errno.ECONNRESET, errno.EPIPE) else "socket"
        self.tally.error(kind, client, f"{exc.strerror or exc}", offset=client.verified)
        self.replace(client, rst=True)

    def wrong_bytes(self, client: Client, wrong: WrongBytes) -> None:
        self.tally.error(wrong.kind, client, wrong.detail, **wrong.fields)
        self.replace(client, rst=True)


def _raise_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        want = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        except (ValueError, OSError):
            pass
