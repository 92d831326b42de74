"""The driver: one load process's connections and what each does on each event.

How this works
--------------
A :class:`Driver` opens its share of the run's connections, registers them
with one ``select.epoll``, and sends, receives and checks for each; the loop
(:mod:`conformance.load.loop`) calls it on each event. Each connection is a
:class:`~conformance.load.client.Client` whose state the driver moves through
the client's table; faults (:mod:`conformance.load.faults`) strike between
rounds.

Connects never wait (:mod:`conformance.load.connector`): :meth:`Driver.connect_all`
starts them all, a batch at a time, under one deadline for the whole set, and a
connection replaced during the run is connected by the loop like any event.
A stop event (``stop``), looked at every tick while connecting, running and
draining, ends the run early with what it measured so far (``stopped``).
A client is acted on only while it is still the driver's: a dropped one is
``CLOSED`` and its descriptor may already serve a new connection.

- *ping-pong*: each connection sends one message of ``size`` bytes, waits
  until all of it came back, checks it, records the round trip's latency, and
  sends the next. Messages differ from round to round (a sliding window over a
  random pattern), so a stale, repeated or reordered message never passes.
- *stream*: each connection keeps up to ``window`` bytes in flight, sending
  from a random pattern and checking what comes back.

Each connection's oracle judges what comes back (:func:`~conformance.load.spec.judging`):
either it says what a correct server owes for each message (echo, or its
``expected_reply``) and every byte received is compared with the byte owed at
the same offset of the stream, or it is told every message and every read and
its verdict says whether the reply is wrong, still owed or complete. The
first difference is reported with its connection and offset. With an oracle
that owes nothing (discard), any byte back is an error, and a round ends when
the socket has taken the whole message: the driver asks for write readiness
only then (:meth:`Driver.await_writable`), so round trips count messages
handed to the kernel and the server must keep reading for them to go on.

A user's oracle that raises (:class:`~conformance.oracle.OracleError`) ends
the run (:meth:`Driver.oracle_failed`): the result says so, and judges nothing.

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
from typing import Any

from conformance.load.client import Client, ClientEvent, ClientState, VerdictJudge
from conformance.load.connector import CONNECT_BATCH, Connector, StopEvent
from conformance.load.faults import TICK, inject_after_round
from conformance.load.result import ErrorKey, LoadResult
from conformance.load.spec import Fault, Judging, LoadSpec, judging
from conformance.oracle import EchoOracle, OracleError, OracleFactory, ReplyOracle, Status
from conformance.protocols import Capability, unique_prefix

__all__ = ["Driver"]

_IN = select.EPOLLIN
_OUT = select.EPOLLOUT
_ERR = select.EPOLLERR | select.EPOLLHUP
_READ_SIZE = 256 * 1024
PATTERN_SHIFTS = 251  # distinct ping-pong messages before one repeats
_LINGER_RST = b"\x01\x00\x00\x00\x00\x00\x00\x00"  # struct linger {on, 0 s}

# Looked up once, not per event.
_SLOW_READER = ClientState.SLOW_READER
_HALF_CLOSED = ClientState.HALF_CLOSED
_IDLE = ClientState.IDLE
_CLOSED = ClientState.CLOSED

#: The fault a connection in this state was struck by.
_FAULT_OF = {_HALF_CLOSED: Fault.HALF_CLOSE, _SLOW_READER: Fault.SLOW_READER}
_REPLIED = ClientEvent.REPLIED


class Driver:
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
        self.spec = spec
        self.first = first
        self.count = count
        self.stop = stop
        self.rng = random.Random(spec.seed * 1_000_003 + first)
        self.ep = select.epoll()
        self.connector = Connector(self.ep, spec.host, spec.port)
        self.clients: dict[int, Client] = {}
        self.next_index = first
        self.result = LoadResult(spec)
        #: Latencies (us) of measured round trips not yet in the histogram.
        self.latencies: list[int] = []
        self.running = False  # the clock runs: a new connection starts sending at once
        self.started = 0.0  # when the clock started (monotonic)
        self.draining = False
        self.halted = False  # an error with stop_on_error, or the stop event: end the run now
        self.stream = spec.mode == "stream"
        self.size = spec.size
        model = spec.protocol()
        #: The protocol model whose requests the connections send; None: random bytes.
        self.model = None if Capability.ANY_BYTES in model.capabilities else model
        #: Makes each connection's oracle, and how it judges (random bytes only).
        self.oracle: OracleFactory = EchoOracle
        self.judging = Judging.ECHO
        if self.model is None:
            self.oracle, self.judging = judging(model)
        self.oracle_name = model.name
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
        try:
            self._connect_all()
        except OracleError as exc:
            self.oracle_failed(exc)
            self.connector.close_all()

    def _connect_all(self) -> None:
        spec = self.spec
        _raise_fd_limit(self.count + CONNECT_BATCH + 64)  # (storm connects come on top)
        deadline = time.monotonic() + spec.connect_timeout
        pending = self.connector.pending
        left = self.count
        while not self.halted:
            while left and len(pending) < CONNECT_BATCH and not self.halted:
                left -= 1
                self.connect(deadline)
            if not pending:
                break  # All started and over, or halted by a failure.
            now = time.monotonic()
            if now >= deadline:
                missing = len(pending) + left
                self.error(
                    "connect",
                    None,
                    f"{missing} of {self.count} connections not accepted within "
                    f"{spec.connect_timeout:g}s",
                    times=missing,
                )
                break
            if self.stop_requested():
                break
            for fd, _ in self.ep.poll(min(TICK, deadline - now)):
                self.on_connected(fd)
                if self.halted:
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
        self.error("connect", None, f"{what} failed: {exc}")

    def connects_expired(self, now: float) -> None:
        """At a tick: the connects past their deadline are errors, one per kind and tick."""
        late = self.connector.expire(now)
        if not late:
            return
        storms = sum(1 for attempt in late if attempt.index is None)
        timeout = f"within {self.spec.connect_timeout:g}s"
        if len(late) > storms:
            n = len(late) - storms
            self.error("connect", None, f"{n} new connections not accepted {timeout}", times=n)
        if storms:
            self.error(
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

    def oracle_failed(self, exc: OracleError) -> None:
        """The oracle's own code raised: the run ends, and its result says why."""
        if self.result.oracle_error is None:
            self.result.oracle_error = str(exc)
        self.halted = True

    def cannot_judge(self, client: Client, how: Status) -> None:
        """``client``'s oracle could not tell whether its reply is complete: the run ends."""
        if self.result.unjudged is None:
            self.result.unjudged = (
                f"the oracle {self.oracle_name} cannot judge a reply as it comes: on "
                f"connection {client.index} its verdict stayed PENDING after "
                f"{client.verified} bytes came back and nothing more came, and was "
                f"{how.value} once told the exchange was over; the load needs a verdict "
                "that turns PASS as soon as a reply is complete, or expected_reply(data)"
            )
        self.halted = True

    def stop_requested(self) -> bool:
        """Whether the stop event is set; if so, the run is halted and its result ``stopped``."""
        if self.stop is None or not self.stop.is_set():
            return False
        self.halted = True
        self.result.stopped = True
        return True

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

    def set_events(self, client: Client, events: int) -> None:
        if events != client.events and client.state is not _CLOSED:
            self.ep.modify(client.fd, events)
            client.events = events

    def error(
        self,
        kind: str,
        client: Client | None,
        detail: str,
        *,
        times: int = 1,
        state: ClientState | None = None,
        **extra: Any,
    ) -> None:
        """Count ``times`` errors of ``kind``; the run's first is kept with its details.

        An error on a connection a fault struck (half-closed, a slow reader;
        ``state``, default: the client's state now) is counted under that
        fault (:class:`~conformance.load.result.ErrorKey`'s ``after``), so that
        a check can judge the fault connections by the rules of their fault
        and the others by its own.
        """
        if state is None and client is not None:
            state = client.state
        after = _FAULT_OF.get(state) if state is not None else None
        key = ErrorKey(kind, after)
        if after is not None:
            extra["fault"] = after.value
        self.result.errors[key] += times
        if self.spec.stop_on_error:
            self.halted = True
        if self.result.first_error is None:
            self.result.first_error = {
                "kind": str(key),
                "connection": None if client is None else client.index,
                "detail": detail,
                **extra,
            }

    # -- sending -----------------------------------------------------------------

    def send(self, client: Client, data: bytes | memoryview) -> None:
        """Send ``data`` after whatever is still queued; queue what the socket refuses."""
        if client.out is not None:
            client.out = memoryview(bytes(client.out) + bytes(data))
            return
        try:
            n = client.sock.send(data)
        except (BlockingIOError, InterruptedError):
            n = 0
        except OSError as exc:
            self.io_error(client, exc)
            return
        if n < len(data):
            client.out = memoryview(data)[n:]
            self.set_events(client, client.events | _OUT)

    def flush(self, client: Client) -> None:
        out = client.out
        assert out is not None
        try:
            n = client.sock.send(out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self.io_error(client, exc)
            return
        if n == len(out):
            client.out = None
            if client.owes():  # Wait for the reply; with nothing owed, see on_writable.
                self.set_events(client, client.events & ~_OUT)
            if self.stream:
                self.top_up(client)
        else:
            client.out = out[n:]

    def send_next(self, client: Client, now_ns: int) -> None:
        """Ping-pong: start the next round trip."""
        if client.source is not None:
            message, owed = client.source.next_request(self.rng, self.size)
            client.expect += owed
        else:
            shift = client.rounds % PATTERN_SHIFTS  # a window sliding over the pattern
            message = client.pattern[shift : shift + self.size]
            judge = client.judge
            if judge is not None:
                wrong = judge.sent(message)  # Before the bytes can come back.
                if wrong is not None:
                    self.error(wrong.kind, client, wrong.detail, **wrong.fields)
                    self.replace(client, rst=True)
                    return
            else:
                reply = client.reply
                client.expect += message if reply is None else reply(message)
        client.sent_at = now_ns
        client.measured = True
        self.send(client, message)
        if not client.expect and (client.judge is None or not client.judge.owes):
            self.await_writable(client)  # Nothing owed (discard), or not any more.

    def top_up(self, client: Client) -> None:
        """Stream: send until ``window`` bytes are in flight."""
        if self.draining:
            return
        plen = len(client.pattern) // 2
        room = self.spec.window - len(client.expect)  # at most a window per call, owed or not
        while client.source is not None and client.out is None and room > 0:
            if client.state is _CLOSED:
                return
            request, owed = client.source.next_request(self.rng, min(self.size, room))
            client.stream_pos += len(request)
            client.expect += owed
            room -= max(len(request), len(owed))
            self.send(client, request)
        while client.out is None and room > 0 and client.state is not _CLOSED:
            start = client.stream_pos % plen
            size = min(room, 65536)
            chunk = client.pattern[start : start + size]
            client.stream_pos += size
            client.expect += chunk if client.reply is None else client.reply(chunk)
            room -= size
            self.send(client, chunk)
        if not client.expect:
            self.await_writable(client)

    def await_writable(self, client: Client) -> None:
        """Nothing owed, nothing queued: let the next write readiness move ``client`` on."""
        if client.out is None and client.state is not _CLOSED:
            self.set_events(client, client.events | _OUT)

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

    # -- receiving --------------------------------------------------------------

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
            self.error(wrong.kind, client, wrong.detail, **wrong.fields)
            self.replace(client, rst=True)
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
                self.cannot_judge(client, verdict.status)
                self.replace(client)
                return
        if done:
            self.result.observed["half-close-echoed"] += 1
        else:
            self.error(
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
        self.error(kind, client, f"{exc.strerror or exc}", offset=client.verified)
        self.replace(client, rst=True)


def _raise_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        want = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        except (ValueError, OSError):
            pass
