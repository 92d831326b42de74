"""The sending half of a driver: what each connection sends next, and what the socket refused.

How this works
--------------
:class:`Sender` is the base of :class:`~conformance.load.driver.Driver`: the
driver reacts to events (what came back, an EOF, an error) and decides when a
connection sends; the sender decides what it sends and gets it out.

- *ping-pong* (:meth:`Sender.send_next`): one message of ``size`` bytes per
  round. Messages differ from round to round (a window sliding over the
  connection's random pattern, ``PATTERN_SHIFTS`` positions), so a stale,
  repeated or reordered message never passes. What the message is owed is
  added to the connection's ``expect`` before it goes out (or its oracle is
  told of it, when its verdict judges: before the bytes can come back).
- *stream* (:meth:`Sender.top_up`): send until ``window`` bytes are in flight.
- A protocol model with requests of its own gives each message and the bytes
  it is owed (``next_request``).

Sends never block: :meth:`Sender.send` sends what the socket takes and keeps
the rest in the connection's ``out``, asking for write readiness only while
``out`` holds bytes (:meth:`Sender.flush` sends more when it comes). With an
oracle that owes nothing (discard), a round ends when the socket has taken
the whole message: :meth:`Sender.await_writable` asks for write readiness
then, so round trips count messages handed to the kernel and the server must
keep reading for them to go on.

A send that fails, or a message the oracle fails at once, ends the
connection: that is the driver's to do (:meth:`Sender.io_error`,
:meth:`Sender.wrong_bytes`), as the sender only sends.
"""

from __future__ import annotations

import abc
import random
import select
import socket

from conformance.load.client import Client, ClientState, WrongBytes
from conformance.load.spec import LoadSpec

__all__ = ["PATTERN_SHIFTS", "Sender"]

PATTERN_SHIFTS = 251  # distinct ping-pong messages before one repeats

_OUT = select.EPOLLOUT
_CLOSED = ClientState.CLOSED  # looked up once, not per send


class Sender(abc.ABC):
    """What the connections of one load process send, and the bytes their sockets refused.

    Args:
        spec: The whole run's spec.
        ep: The epoll the connections are registered with.
        rng: Where the protocol model's requests are drawn from.
    """

    def __init__(self, spec: LoadSpec, ep: select.epoll, rng: random.Random) -> None:
        self.spec = spec
        self.ep = ep
        self.rng = rng
        self.size = spec.size
        self.stream = spec.mode == "stream"
        self.draining = False  # the time is up: no new data goes out

    @abc.abstractmethod
    def io_error(self, client: Client, exc: OSError) -> None:
        """``client``'s socket failed with ``exc``: record the error, replace the connection."""

    @abc.abstractmethod
    def wrong_bytes(self, client: Client, wrong: WrongBytes) -> None:
        """``client``'s exchange went wrong (``wrong``): record it, replace the connection."""

    def set_events(self, client: Client, events: int) -> None:
        """Watch ``client`` for ``events`` (epoll flags), unless it is closed."""
        if events != client.events and client.state is not _CLOSED:
            self.ep.modify(client.fd, events)
            client.events = events

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

    def send_now(self, client: Client, data: bytes) -> None:
        """A fault's burst: send what the socket takes of ``data`` now; drop the rest and errors."""
        try:
            client.sock.send(data)
        except OSError:
            pass

    def no_half_close(self, client: Client) -> str | None:
        """Why ``client`` cannot half-close and still be owed its reply; None: it can."""
        return None

    def shutdown_write(self, client: Client) -> None:
        """Half-close ``client``: ``shutdown(SHUT_WR)``, its FIN after what it sent.

        Raises:
            OSError: The socket failed.
        """
        client.sock.shutdown(socket.SHUT_WR)

    def flush(self, client: Client) -> None:
        """At write readiness: send more of what the socket refused before."""
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
                    self.wrong_bytes(client, wrong)
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
