"""The load generator: many connections, every byte verified, faults on demand.

How this works
--------------
Each load process drives its share of the connections from one raw ``epoll``
loop (no trio, no selector objects: the generator must not be the
bottleneck), and ``--procs N`` spreads the connections over N processes.

- *ping-pong*: each connection sends one message of ``size`` bytes, waits
  until all of it came back, checks it, records the round trip's latency, and
  sends the next. Messages differ from round to round (a sliding window over a
  random pattern), so a stale, repeated or reordered message never passes.
- *stream*: each connection keeps up to ``window`` bytes in flight, sending
  from a random pattern and checking what comes back.

Every byte received is compared with the byte sent at the same offset of the
stream; the first difference is reported with its connection and offset.
When the time (or the count) is up, no new data is sent and every connection
waits for what it is owed, up to a deadline; what is still missing then is an
error ("stalled"), so no byte goes unchecked.

Faults (``--faults reset=1%,half-close=1%,slow-reader=1%,connect-storm=500``):
after a round trip, a connection may reset (send, then close with RST before
reading the reply), half-close (send, ``shutdown(SHUT_WR)``, expect the whole
reply), or stop reading for a while after sending a burst, so that the server
must hold or pause. A reset or half-closed connection is replaced by a new
one. ``connect-storm=N`` opens and at once closes N more connections, spread
over the run. The other connections must stay byte-exact, and the server must
still answer a fresh connection at the end.
"""

from __future__ import annotations

import errno
import json
import multiprocessing
import multiprocessing.connection
import random
import resource
import select
import socket
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from conformance.histogram import Histogram

__all__ = ["Faults", "LoadSpec", "LoadResult", "run_load", "probe_alive"]

_IN = select.EPOLLIN
_OUT = select.EPOLLOUT
_ERR = select.EPOLLERR | select.EPOLLHUP
_TICK = 0.1  # seconds between housekeeping passes (progress, stalls, faults)
_READ_SIZE = 256 * 1024
_SLOW_PAUSE = 0.2  # seconds a slow reader stops reading
_PATTERN_SHIFTS = 251  # distinct messages before a ping-pong message repeats

Mode = Literal["pingpong", "stream"]


@dataclass(frozen=True)
class Faults:
    """Faults to inject while the load runs."""

    reset: float = 0.0  # probability, after each round trip
    half_close: float = 0.0
    slow_reader: float = 0.0
    connect_storm: int = 0  # extra connections opened and closed at once, in all

    @property
    def any(self) -> bool:
        return bool(self.reset or self.half_close or self.slow_reader or self.connect_storm)

    @classmethod
    def parse(cls, text: str) -> Faults:
        """Parse ``reset=1%,half-close=0.5%,slow-reader=1%,connect-storm=500``.

        Raises:
            ValueError: Saying which part is wrong and what is expected.
        """
        values: dict[str, Any] = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            name, sep, raw = part.partition("=")
            key = name.strip().replace("-", "_")
            if not sep or key not in {"reset", "half_close", "slow_reader", "connect_storm"}:
                raise ValueError(
                    f"unknown fault {part!r}: expected reset=P%, half-close=P%, "
                    "slow-reader=P% or connect-storm=N"
                )
            raw = raw.strip()
            if key == "connect_storm":
                if not raw.isdigit():
                    raise ValueError(f"connect-storm needs a count of connections, got {raw!r}")
                values[key] = int(raw)
                continue
            try:
                number = float(raw[:-1]) / 100.0 if raw.endswith("%") else float(raw)
            except ValueError:
                raise ValueError(f"{name} needs a percentage like 1%, got {raw!r}") from None
            if not 0.0 <= number <= 1.0:
                raise ValueError(f"{name} must be between 0% and 100%, got {raw!r}")
            values[key] = number
        faults = cls(**values)
        if faults.reset + faults.half_close + faults.slow_reader > 1.0:
            raise ValueError("the fault probabilities add up to more than 100%")
        return faults


@dataclass(frozen=True)
class LoadSpec:
    """What load to put on which server.

    ``duration`` bounds the run in seconds; ``rounds`` (ping-pong only) stops
    each connection after that many round trips instead, with ``duration``
    then as the upper bound.
    """

    host: str
    port: int
    connections: int = 50
    size: int = 64
    mode: Mode = "pingpong"
    window: int = 64 * 1024
    duration: float = 5.0
    rounds: int | None = None
    procs: int = 1
    faults: Faults = field(default_factory=Faults)
    seed: int = 1
    connect_timeout: float = 10.0
    drain_timeout: float = 10.0
    stop_on_error: bool = False

    def validate(self) -> None:
        """Raise ValueError naming the first setting out of range."""
        if not 1 <= self.connections <= 100_000:
            raise ValueError(f"connections must be between 1 and 100000, got {self.connections}")
        if self.size < 1:
            raise ValueError(f"size must be at least 1 byte, got {self.size}")
        if self.window < 1:
            raise ValueError(f"window must be at least 1 byte, got {self.window}")
        if self.duration <= 0:
            raise ValueError(f"duration must be positive, got {self.duration}")
        if self.rounds is not None and self.rounds < 1:
            raise ValueError(f"rounds must be at least 1, got {self.rounds}")
        if not 1 <= self.procs <= 256:
            raise ValueError(f"procs must be between 1 and 256, got {self.procs}")
        if self.procs > self.connections:
            raise ValueError(f"procs ({self.procs}) cannot exceed connections")
        if self.mode not in ("pingpong", "stream"):
            raise ValueError(f"mode must be pingpong or stream, got {self.mode!r}")


@dataclass
class LoadResult:
    """What a load run measured and saw."""

    spec: LoadSpec
    seconds: float = 0.0
    round_trips: int = 0
    bytes_verified: int = 0
    latency: Histogram = field(default_factory=Histogram)
    errors: Counter[str] = field(default_factory=Counter)
    first_error: dict[str, Any] | None = None
    injected: Counter[str] = field(default_factory=Counter)
    observed: Counter[str] = field(default_factory=Counter)
    connections_opened: int = 0
    server_alive: bool | None = None

    @property
    def ok(self) -> bool:
        """No byte went wrong, nothing stalled, and the server answered at the end."""
        return not self.errors and self.server_alive is not False

    @property
    def round_trips_per_second(self) -> float:
        return self.round_trips / self.seconds if self.seconds else 0.0

    @property
    def megabytes_per_second(self) -> float:
        return self.bytes_verified / self.seconds / 1e6 if self.seconds else 0.0

    def to_dict(self) -> dict[str, Any]:
        spec = asdict(self.spec)
        return {
            "target": f"{self.spec.host}:{self.spec.port}",
            "spec": spec,
            "ok": self.ok,
            "seconds": round(self.seconds, 3),
            "round_trips": self.round_trips,
            "round_trips_per_second": round(self.round_trips_per_second, 1),
            "bytes_verified": self.bytes_verified,
            "megabytes_per_second": round(self.megabytes_per_second, 3),
            "latency_us": self.latency.summary(),
            "errors": dict(self.errors),
            "first_error": self.first_error,
            "faults_injected": dict(self.injected),
            "faults_observed": dict(self.observed),
            "connections_opened": self.connections_opened,
            "server_alive": self.server_alive,
        }

    def summary_line(self) -> str:
        lat = self.latency.summary()
        line = (
            f"{self.round_trips} round trips in {self.seconds:.2f}s "
            f"({self.round_trips_per_second:,.0f}/s, "
            f"{self.megabytes_per_second:.1f} MB/s verified); "
            f"latency us p50 {lat['p50']} p90 {lat['p90']} p99 {lat['p99']} "
            f"p99.9 {lat['p99.9']} max {lat['max']}; "
            f"errors {sum(self.errors.values())}"
        )
        if self.injected:
            line += f"; injected {dict(self.injected)}; observed {dict(self.observed)}"
        if self.server_alive is not None:
            line += f"; server {'alive' if self.server_alive else 'NOT answering'} at the end"
        return line


# -- one load process ---------------------------------------------------------------

_ACTIVE, _SLOW, _HALF, _IDLE = range(4)


class _Client:
    __slots__ = (
        "index",
        "sock",
        "fd",
        "pattern",
        "expect",
        "out",
        "state",
        "rounds",
        "sent_at",
        "verified",
        "stream_pos",
        "resume_at",
        "last_progress",
        "events",
        "measured",
    )

    def __init__(self, index: int, sock: socket.socket, pattern: bytes) -> None:
        self.index = index
        self.sock = sock
        self.fd = sock.fileno()
        self.pattern = pattern
        #: Sent and not yet received back: bytes on the fast path, else a bytearray.
        self.expect: bytes | bytearray = b""
        self.out: memoryview | None = None
        self.state = _ACTIVE
        self.rounds = 0
        self.sent_at = 0
        self.verified = 0
        self.stream_pos = 0
        self.resume_at = 0.0
        self.last_progress = 0.0
        self.events = _IN
        self.measured = True


class _Share:
    """The connections of one load process and the loop that drives them."""

    def __init__(self, spec: LoadSpec, first: int, count: int) -> None:
        self.spec = spec
        self.first = first
        self.count = count
        self.rng = random.Random(spec.seed * 1_000_003 + first)
        self.ep = select.epoll()
        self.clients: dict[int, _Client] = {}
        self.next_index = first
        self.result = LoadResult(spec)
        self.hist = self.result.latency
        self.draining = False
        self.stopped = False  # an error with stop_on_error: end the run now
        self.stream = spec.mode == "stream"
        self.size = spec.size
        #: No faults and no round count: after a round trip, just send the next.
        self.plain = not spec.faults.any and spec.rounds is None and not self.stream
        self.storm_left = 0
        self.pattern_len = (
            spec.size + _PATTERN_SHIFTS if spec.mode == "pingpong" else 2 * max(spec.window, 65536)
        )

    # -- connections --------------------------------------------------------------

    def open_client(self) -> _Client | None:
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
        pattern = self.rng.randbytes(self.pattern_len)
        client = _Client(index, sock, pattern)
        client.last_progress = time.monotonic()
        self.clients[client.fd] = client
        self.ep.register(client.fd, _IN)
        self.result.connections_opened += 1
        return client

    def drop(self, client: _Client, *, rst: bool = False) -> None:
        self.clients.pop(client.fd, None)
        try:
            self.ep.unregister(client.fd)
        except OSError:
            pass
        if rst:
            try:
                client.sock.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
                )
            except OSError:
                pass
        client.sock.close()

    def replace(self, client: _Client, *, rst: bool = False) -> None:
        self.drop(client, rst=rst)
        if not self.draining:
            new = self.open_client()
            if new is not None:
                self.send_next(new, time.monotonic_ns())

    def set_events(self, client: _Client, events: int) -> None:
        if events != client.events:
            self.ep.modify(client.fd, events)
            client.events = events

    def error(self, kind: str, client: _Client | None, detail: str, **extra: Any) -> None:
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

    def send(self, client: _Client, data: bytes | memoryview) -> None:
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
            self.set_events(client, (client.events | _OUT))

    def flush(self, client: _Client) -> None:
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
            self.set_events(client, client.events & ~_OUT)
            if self.spec.mode == "stream":
                self.top_up(client)
        else:
            client.out = out[n:]

    def send_next(self, client: _Client, now_ns: int) -> None:
        """Ping-pong: start the next round trip."""
        shift = client.rounds % _PATTERN_SHIFTS
        message = client.pattern[shift : shift + self.spec.size]
        client.expect += message
        client.sent_at = now_ns
        client.measured = True
        self.send(client, message)

    def top_up(self, client: _Client) -> None:
        """Stream: send until ``window`` bytes are in flight."""
        window = self.spec.window
        plen = len(client.pattern) // 2
        while client.out is None and len(client.expect) < window and not self.draining:
            start = client.stream_pos % plen
            size = min(window - len(client.expect), 65536)
            chunk = client.pattern[start : start + size]
            client.stream_pos += size
            client.expect += chunk
            self.send(client, chunk)

    # -- receiving --------------------------------------------------------------

    def on_readable(self, client: _Client) -> None:
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

    def on_data(self, client: _Client, data: bytes) -> None:
        """Check what came back against what was sent, then move the connection on."""
        if not data:
            self.on_eof(client)
            return
        expect = client.expect
        if not isinstance(expect, bytearray):
            expect = client.expect = bytearray(expect)
        n = len(data)
        if n > len(expect):
            self.error(
                "extra-bytes",
                client,
                f"{n - len(expect)} bytes more than were sent",
                offset=client.verified + len(expect),
            )
            self.replace(client, rst=True)
            return
        if data != (expect if n == len(expect) else expect[:n]):
            at = next(i for i in range(n) if data[i] != expect[i])
            self.error(
                "mismatch",
                client,
                f"byte {client.verified + at} differs",
                offset=client.verified + at,
                expected=bytes(expect[at : at + 16]).hex(),
                received=data[at : at + 16].hex(),
            )
            self.replace(client, rst=True)
            return
        if n == len(expect):
            expect.clear()
        else:
            del expect[:n]
        client.verified += n
        self.result.bytes_verified += n
        if self.stream:
            client.last_progress = time.monotonic()
            self.top_up(client)
            return
        if expect:
            if client.state == _SLOW:
                client.last_progress = time.monotonic()
            return
        # A round trip is complete.
        now_ns = time.monotonic_ns()
        if client.measured:
            self.hist.record((now_ns - client.sent_at) // 1000)
            self.result.round_trips += 1
        client.rounds += 1
        state = client.state
        if state == _ACTIVE and self.plain:
            # The common case, kept short: no faults, no count, not draining.
            shift = client.rounds % _PATTERN_SHIFTS
            message = client.pattern[shift : shift + self.size]
            expect += message
            client.sent_at = now_ns
            self.send(client, message)
        elif state == _HALF:
            self.result.observed["half-close-echoed"] += 1
            self.replace(client)
        elif state == _SLOW:
            self.result.observed["slow-reader-served"] += 1
            client.state = _ACTIVE
            self.after_round(client, now_ns)
        else:
            self.after_round(client, now_ns)

    def after_round(self, client: _Client, now_ns: int) -> None:
        spec = self.spec
        if self.draining or (spec.rounds is not None and client.rounds >= spec.rounds):
            client.state = _IDLE
            return
        faults = spec.faults
        if faults.any:
            roll = self.rng.random()
            if roll < faults.reset:
                self.inject_reset(client)
                return
            roll -= faults.reset
            if roll < faults.half_close:
                self.inject_half_close(client, now_ns)
                return
            roll -= faults.half_close
            if roll < faults.slow_reader:
                self.inject_slow_reader(client, now_ns)
                return
        self.send_next(client, now_ns)

    def on_eof(self, client: _Client) -> None:
        if client.state == _HALF and not client.expect:
            self.result.observed["half-close-echoed"] += 1
            self.replace(client)
            return
        self.error(
            "eof",
            client,
            f"server closed the connection with {len(client.expect)} bytes still owed",
            offset=client.verified,
        )
        self.replace(client)

    def io_error(self, client: _Client, exc: OSError) -> None:
        kind = "reset" if exc.errno in (errno.ECONNRESET, errno.EPIPE) else "socket"
        self.error(kind, client, f"{exc.strerror or exc}", offset=client.verified)
        self.replace(client, rst=True)

    # -- faults -------------------------------------------------------------------

    def inject_reset(self, client: _Client) -> None:
        self.result.injected["reset"] += 1
        burst = client.pattern[: self.spec.size] * max(1, 65536 // self.spec.size)
        try:
            client.sock.send(burst)  # Replies queued at the server when the RST lands.
        except OSError:
            pass
        self.replace(client, rst=True)

    def inject_half_close(self, client: _Client, now_ns: int) -> None:
        self.result.injected["half-close"] += 1
        self.send_next(client, now_ns)
        client.measured = False
        client.state = _HALF
        if client.out is None:
            try:
                client.sock.shutdown(socket.SHUT_WR)
            except OSError as exc:
                self.io_error(client, exc)
        else:  # Rare: a message larger than the socket takes; keep it simple.
            client.state = _ACTIVE

    def inject_slow_reader(self, client: _Client, now_ns: int) -> None:
        self.result.injected["slow-reader"] += 1
        count = max(16, (256 * 1024) // self.spec.size)
        for _ in range(count):
            self.send_next(client, now_ns)
            client.rounds += 1
        client.rounds -= 1  # the round that completes the burst counts it
        client.measured = False
        client.state = _SLOW
        client.resume_at = time.monotonic() + _SLOW_PAUSE
        self.set_events(client, client.events & ~_IN)

    def housekeeping(self, now: float) -> None:
        for client in list(self.clients.values()):
            if client.state == _SLOW and not client.events & _IN and now >= client.resume_at:
                self.set_events(client, client.events | _IN)
                client.last_progress = now
            elif client.expect and now - self.progress_time(client) > self.spec.drain_timeout:
                self.error(
                    "stalled",
                    client,
                    f"nothing came back for {self.spec.drain_timeout:.0f}s with "
                    f"{len(client.expect)} bytes owed",
                    offset=client.verified,
                )
                self.drop(client, rst=True)  # A new connection would most likely stall too.
        if self.storm_left > 0 and not self.draining:
            self.storm(now)

    def progress_time(self, client: _Client) -> float:
        """When ``client`` last made progress (ping-pong: when its round began)."""
        if self.stream or client.state == _SLOW:
            return client.last_progress
        return max(client.last_progress, client.sent_at / 1e9)

    def storm(self, now: float) -> None:
        per_tick = max(1, int(self.spec.faults.connect_storm * _TICK / self.spec.duration) + 1)
        for _ in range(min(per_tick, self.storm_left)):
            self.storm_left -= 1
            self.result.injected["connect-storm"] += 1
            try:
                with socket.create_connection(
                    (self.spec.host, self.spec.port), timeout=self.spec.connect_timeout
                ):
                    pass
            except OSError as exc:
                self.error("connect", None, f"storm connect failed: {exc}")

    # -- the run -----------------------------------------------------------------

    def add_fast(self, trips: int, total_us: int, max_us: int) -> None:
        """Fold in the round trips the hot path counted in local variables."""
        self.result.round_trips += trips
        self.result.bytes_verified += trips * self.size
        self.hist.count += trips
        self.hist.total += total_us
        self.hist.max = max(self.hist.max, max_us)

    def connect_all(self) -> None:
        _raise_fd_limit(self.count + 64)
        for _ in range(self.count):
            self.open_client()

    def run(self, on_progress: Callable[[int, int], None] | None) -> LoadResult:
        spec = self.spec
        share = self.count / spec.connections
        self.storm_left = round(spec.faults.connect_storm * share)
        start = time.monotonic()
        end = start + spec.duration
        now_ns = time.monotonic_ns()
        for client in list(self.clients.values()):
            if spec.mode == "stream":
                self.top_up(client)
            else:
                self.send_next(client, now_ns)
        next_tick = start + _TICK
        drain_end = 0.0
        clients = self.clients
        poll = self.ep.poll
        hist = self.hist
        counts = hist.counts
        size = spec.size
        shifts = _PATTERN_SHIFTS
        monotonic_ns = time.monotonic_ns
        fast_trips = fast_total = fast_max = 0
        plain = self.plain  # (every connection is ACTIVE while it holds)
        while True:
            for fd, ev in poll(_TICK):
                found = clients.get(fd)
                if found is None:
                    continue
                client = found
                if plain and ev == _IN:
                    # The hot path of ping-pong, inlined: a whole message back
                    # in one read, recorded, and the next one sent.
                    try:
                        data = client.sock.recv(len(client.expect) or 4096)
                    except (BlockingIOError, InterruptedError):
                        continue
                    except OSError as exc:
                        self.io_error(client, exc)
                        continue
                    if data != client.expect or client.out is not None:
                        self.on_data(client, data)
                        continue
                    now_ns = monotonic_ns()
                    us = (now_ns - client.sent_at) // 1000
                    if us < 128:
                        counts[us if us > 0 else 0] += 1
                    else:
                        sh = us.bit_length() - 7
                        counts[(sh << 6) + (us >> sh)] += 1
                    fast_trips += 1
                    fast_total += us
                    if us > fast_max:
                        fast_max = us
                    client.verified += size
                    rounds = client.rounds = client.rounds + 1
                    shift = rounds % shifts
                    message = client.expect = client.pattern[shift : shift + size]
                    client.sent_at = now_ns
                    try:
                        sent = client.sock.send(message)
                    except (BlockingIOError, InterruptedError):
                        sent = 0
                    except OSError as exc:
                        self.io_error(client, exc)
                        continue
                    if sent != size:
                        client.out = memoryview(message)[sent:]
                        self.set_events(client, client.events | _OUT)
                    continue
                if ev & _OUT and client.out is not None:
                    self.flush(client)
                    if client.fd not in clients:
                        continue
                if ev & (_IN | _ERR) and client.events & _IN:
                    self.on_readable(client)
            now = time.monotonic()
            if now >= next_tick:
                next_tick = now + _TICK
                if fast_trips:
                    self.add_fast(fast_trips, fast_total, fast_max)
                    fast_trips = fast_total = fast_max = 0
                self.housekeeping(now)
                if on_progress is not None:
                    on_progress(self.result.round_trips, self.result.bytes_verified)
            if not self.draining:
                done_counting = spec.rounds is not None and all(
                    c.state == _IDLE for c in clients.values()
                )
                if now >= end or done_counting:
                    self.draining = True
                    self.plain = plain = False
                    self.result.seconds = now - start
                    if fast_trips:  # The next tick would add them after the clock stopped.
                        self.add_fast(fast_trips, fast_total, fast_max)
                        fast_trips = fast_total = fast_max = 0
                    drain_end = now + spec.drain_timeout
            if self.stopped:
                if not self.result.seconds:
                    self.result.seconds = now - start
                break
            if self.draining:
                owed = [c for c in clients.values() if c.expect or c.out is not None]
                if not owed:
                    break
                if now >= drain_end:
                    for client in owed:
                        self.error(
                            "stalled",
                            client,
                            f"{len(client.expect)} bytes still owed when the run ended",
                            offset=client.verified,
                        )
                    break
        for client in list(clients.values()):
            self.drop(client)
        self.ep.close()
        return self.result


def _raise_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        want = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        except (ValueError, OSError):
            pass


# -- several processes ----------------------------------------------------------------


def _process_main(
    spec: LoadSpec, first: int, count: int, pipe: multiprocessing.connection.Connection
) -> None:
    share = _Share(spec, first, count)
    share.connect_all()
    pipe.send(("ready", share.result.connections_opened))
    if not pipe.poll(spec.connect_timeout * 3 + 30):
        return
    pipe.recv()
    last = [0.0]

    def progress(trips: int, nbytes: int) -> None:
        now = time.monotonic()
        if now - last[0] >= 0.5:
            last[0] = now
            pipe.send(("progress", trips, nbytes))

    result = share.run(progress)
    pipe.send(("done", _result_to_wire(result)))


def _result_to_wire(result: LoadResult) -> dict[str, Any]:
    return {
        "seconds": result.seconds,
        "round_trips": result.round_trips,
        "bytes_verified": result.bytes_verified,
        "latency": result.latency.to_dict(),
        "errors": dict(result.errors),
        "first_error": result.first_error,
        "injected": dict(result.injected),
        "observed": dict(result.observed),
        "connections_opened": result.connections_opened,
    }


def _merge(spec: LoadSpec, parts: list[dict[str, Any]]) -> LoadResult:
    result = LoadResult(spec)
    for part in parts:
        result.seconds = max(result.seconds, part["seconds"])
        result.round_trips += part["round_trips"]
        result.bytes_verified += part["bytes_verified"]
        result.latency.merge([Histogram.from_dict(part["latency"])])
        result.errors.update(part["errors"])
        if result.first_error is None:
            result.first_error = part["first_error"]
        result.injected.update(part["injected"])
        result.observed.update(part["observed"])
        result.connections_opened += part["connections_opened"]
    return result


class LoadError(Exception):
    """The load could not run at all (a load process failed to start or answer)."""


def run_load(
    spec: LoadSpec, *, progress: Callable[[float, int, int], None] | None = None
) -> LoadResult:
    """Run the load ``spec`` describes and check the server is alive afterwards.

    Args:
        spec: The target and the load.
        progress: Called now and then with (elapsed seconds, round trips, bytes).

    Returns:
        The merged result of every load process.

    Raises:
        ValueError: ``spec`` is out of range.
        LoadError: A load process died or never answered.
    """
    spec.validate()
    started = time.monotonic()
    if spec.procs == 1:
        share = _Share(spec, 0, spec.connections)
        share.connect_all()
        run_start = time.monotonic()

        def one(trips: int, nbytes: int) -> None:
            if progress is not None:
                progress(time.monotonic() - run_start, trips, nbytes)

        result = share.run(one)
    else:
        result = _run_processes(spec, progress, started)
    result.server_alive = probe_alive(spec.host, spec.port)
    return result


def _run_processes(
    spec: LoadSpec, progress: Callable[[float, int, int], None] | None, started: float
) -> LoadResult:
    ctx = multiprocessing.get_context("spawn")
    base, extra = divmod(spec.connections, spec.procs)
    procs: list[tuple[Any, multiprocessing.connection.Connection]] = []
    first = 0
    try:
        for i in range(spec.procs):
            count = base + (1 if i < extra else 0)
            ours, theirs = ctx.Pipe()
            proc = ctx.Process(
                target=_process_main, args=(spec, first, count, theirs), name=f"load-{i + 1}"
            )
            proc.start()
            theirs.close()
            procs.append((proc, ours))
            first += count
        ready_by = time.monotonic() + spec.connect_timeout * 3 + 30
        for proc, pipe in procs:
            if not pipe.poll(max(0.0, ready_by - time.monotonic())):
                raise LoadError(f"load process {proc.name} did not connect in time")
            try:
                pipe.recv()
            except EOFError:
                raise LoadError(
                    f"load process {proc.name} died while connecting (exit code {proc.exitcode})"
                ) from None
        for _, pipe in procs:
            pipe.send("go")
        run_start = time.monotonic()
        parts: dict[int, dict[str, Any]] = {}
        progress_by: dict[int, tuple[int, int]] = {}
        done_by = run_start + spec.duration + spec.drain_timeout + 30
        while len(parts) < len(procs):
            left = done_by - time.monotonic()
            if left <= 0:
                raise LoadError("load processes did not finish in time")
            pipes = [pipe for i, (_, pipe) in enumerate(procs) if i not in parts]
            for ready in multiprocessing.connection.wait(pipes, timeout=min(left, 1.0)):
                i = next(k for k, (_, p) in enumerate(procs) if p is ready)
                try:
                    message = procs[i][1].recv()
                except EOFError:
                    raise LoadError(f"load process {procs[i][0].name} died") from None
                if message[0] == "progress":
                    progress_by[i] = (message[1], message[2])
                    if progress is not None:
                        trips = sum(t for t, _ in progress_by.values())
                        nbytes = sum(b for _, b in progress_by.values())
                        progress(time.monotonic() - run_start, trips, nbytes)
                elif message[0] == "done":
                    parts[i] = message[1]
        return _merge(spec, [parts[i] for i in range(len(procs))])
    finally:
        for proc, pipe in procs:
            proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join(5)
            pipe.close()


def probe_alive(host: str, port: int, *, timeout: float = 5.0) -> bool:
    """True when a fresh connection gets a short probe echoed back within ``timeout``."""
    probe = b"alive?\0\xff"
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(probe)
            got = b""
            deadline = time.monotonic() + timeout
            while len(got) < len(probe) and time.monotonic() < deadline:
                chunk = sock.recv(len(probe) - len(got))
                if not chunk:
                    break
                got += chunk
            return got == probe
    except OSError:
        return False


def format_json(result: LoadResult) -> str:
    return json.dumps(result.to_dict(), indent=2, sort_keys=True)
