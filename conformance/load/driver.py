"""The driver: one load process's connections and what each does on each event.

How this works
--------------
A :class:`Driver` opens its share of the run's connections, registers them
with one ``select.epoll``, and sends, receives and checks for each; the loop
(:mod:`conformance.load.loop`) calls it on each event. Each connection is a
:class:`~conformance.load.client.Client` whose state the driver moves through
the client's table; faults (:mod:`conformance.load.faults`) strike between
rounds.

- *ping-pong*: each connection sends one message of ``size`` bytes, waits
  until all of it came back, checks it, records the round trip's latency, and
  sends the next. Messages differ from round to round (a sliding window over a
  random pattern), so a stale, repeated or reordered message never passes.
- *stream*: each connection keeps up to ``window`` bytes in flight, sending
  from a random pattern and checking what comes back.

Each connection's oracle says what a correct server owes for each message
(``expected_reply``, see :mod:`conformance.load.spec`); every byte received
is compared with the byte owed at the same offset of the stream, and the first
difference is reported with its connection and offset. With an oracle that
owes nothing (discard), any byte back is an error, and a round ends when the
socket has taken the whole message: the driver asks for write readiness only
then (:meth:`Driver.await_writable`), so round trips count messages handed
to the kernel and the server must keep reading for them to go on.

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

from conformance.load.client import Client, ClientEvent, ClientState
from conformance.load.faults import inject_after_round
from conformance.load.result import LoadResult
from conformance.load.spec import LoadSpec, reply_oracle
from conformance.oracle import EchoOracle

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
_REPLIED = ClientEvent.REPLIED


class Driver:
    """The connections of one load process and the loop that drives them.

    Args:
        spec: The whole run's spec.
        first: The run-wide index of this process's first connection.
        count: How many connections this process drives.
    """

    def __init__(self, spec: LoadSpec, first: int, count: int) -> None:
        self.spec = spec
        self.first = first
        self.count = count
        self.rng = random.Random(spec.seed * 1_000_003 + first)
        self.ep = select.epoll()
        self.clients: dict[int, Client] = {}
        self.next_index = first
        self.result = LoadResult(spec)
        #: Latencies (us) of measured round trips not yet in the histogram.
        self.latencies: list[int] = []
        self.draining = False
        self.stopped = False  # an error with stop_on_error: end the run now
        self.stream = spec.mode == "stream"
        self.size = spec.size
        #: No faults and no round count: after a round trip, just send the next.
        self.plain = not spec.faults.any and spec.rounds is None and not self.stream
        self.storm_left = 0
        self.pattern_len = (
            spec.size + PATTERN_SHIFTS if spec.mode == "pingpong" else 2 * max(spec.window, 65536)
        )

    # -- connections --------------------------------------------------------------

    def connect_all(self) -> None:
        """Open this process's connections (blocking connects, before the clock starts)."""
        _raise_fd_limit(self.count + 64)
        for _ in range(self.count):
            self.open_client()

    def open_client(self) -> Client | None:
        index = self.next_index
        self.next_index += 1
        try:
            sock = socket.create_connection(
                (self.spec.host, self.spec.port), timeout=self.spec.connect_timeout
            )
        except OSError as exc:
            self.error("connect", None, f"connect failed: {exc}")
            return None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        oracle = reply_oracle(self.spec.oracle)
        # Echo owes the message itself: no call per round (None tells the client so).
        echoes = type(oracle).expected_reply is EchoOracle.expected_reply
        reply = None if echoes else oracle.expected_reply
        client = Client(index, sock, self.rng.randbytes(self.pattern_len), reply)
        client.last_progress = time.monotonic()
        self.clients[client.fd] = client
        self.ep.register(client.fd, _IN)
        self.result.connections_opened += 1
        return client

    def drop(self, client: Client, *, rst: bool = False) -> None:
        client.advance(ClientEvent.ABORT)
        self.clients.pop(client.fd, None)
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

    def replace(self, client: Client, *, rst: bool = False) -> None:
        self.drop(client, rst=rst)
        if not self.draining:
            new = self.open_client()
            if new is not None:
                self.send_next(new, time.monotonic_ns())

    def set_events(self, client: Client, events: int) -> None:
        if events != client.events:
            self.ep.modify(client.fd, events)
            client.events = events

    def error(self, kind: str, client: Client | None, detail: str, **extra: Any) -> None:
        self.result.errors[kind] += 1
        if self.spec.stop_on_error:
            self.stopped = True
        if self.result.first_error is None:
            self.result.first_error = {
                "kind": kind,
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
            if client.expect:  # Wait for the reply; with nothing owed, see on_writable.
                self.set_events(client, client.events & ~_OUT)
            if self.stream:
                self.top_up(client)
        else:
            client.out = out[n:]

    def send_next(self, client: Client, now_ns: int) -> None:
        """Ping-pong: start the next round trip."""
        shift = client.rounds % PATTERN_SHIFTS  # a window sliding over the pattern
        message = client.pattern[shift : shift + self.size]
        reply = client.reply
        client.expect += message if reply is None else reply(message)
        client.sent_at = now_ns
        client.measured = True
        self.send(client, message)
        if not client.expect:
            self.await_writable(client)

    def top_up(self, client: Client) -> None:
        """Stream: send until ``window`` bytes are in flight."""
        if self.draining:
            return
        plen = len(client.pattern) // 2
        room = self.spec.window - len(client.expect)  # at most a window per call, owed or not
        while client.out is None and room > 0:
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
        if client.expect or not client.events & _IN:
            return  # Owed a reply after all, or a slow reader's pause (it resumes at a tick).
        if self.stream:
            self.top_up(client)
        elif client.state is not _IDLE:
            self.round_done(client)

    # -- receiving --------------------------------------------------------------

    def on_readable(self, client: Client) -> None:
        # Ask for no more than is owed (or a little, to catch extra bytes): a
        # large recv allocates a large buffer on every call.
        try:
            data = client.sock.recv(min(len(client.expect), _READ_SIZE) or 4096)
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
        elif client.expect:
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
        if state is _HALF_CLOSED and not client.expect:
            self.result.observed["half-close-echoed"] += 1
        else:
            self.error(
                "eof",
                client,
                f"server closed the connection with {len(client.expect)} bytes still owed",
                offset=client.verified,
            )
        self.replace(client)

    def io_error(self, client: Client, exc: OSError) -> None:
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
