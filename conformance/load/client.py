"""One load connection: its socket, what it owes and is owed, and its state.

How this works
--------------
A :class:`Client` is plain state and does no I/O; the driver
(:mod:`conformance.load.driver`) does. ``expect`` holds the bytes the server
still owes, in order (what its oracle's ``expected_reply`` said for each
message sent); ``out`` what the socket has not taken yet.
:meth:`Client.receive` checks what came back against what is owed and takes
it off. A connection judged by its oracle's verdict
(:class:`~conformance.load.spec.Judging` ``VERDICT``) has a
:class:`VerdictJudge` instead, and ``expect`` stays empty: the judge's
``owes`` says whether a reply is still owed (:meth:`Client.owes` asks either).
Its life is one enum and one table (below): the driver moves it with
:meth:`Client.advance`, and an event the table does not allow raises
:class:`IllegalTransition` naming the state and the event.

The table is looked up off the hot path only. A ping-pong connection with no
faults and no round count stays ``ACTIVE`` round after round (the table's
``(ACTIVE, REPLIED) -> ACTIVE``), so the driver's fast path does not look it up.
"""

from __future__ import annotations

import enum
import select
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

from conformance.oracle import Judgement, Oracle, Status, first_difference

if TYPE_CHECKING:
    from conformance.protocols import LoadConnection

__all__ = [
    "Client",
    "ClientEvent",
    "ClientState",
    "IllegalTransition",
    "VerdictJudge",
    "WrongBytes",
]


class ClientState(enum.Enum):
    """Where a load connection is in its life."""

    ACTIVE = "active"  # sending and checking round after round
    SLOW_READER = "slow-reader"  # sent a burst, stopped reading for a while
    HALF_CLOSED = "half-closed"  # sent its last message and FIN; owed the reply
    IDLE = "idle"  # done: its rounds are counted, or the run is draining
    CLOSED = "closed"  # socket closed, out of the run


class ClientEvent(enum.Enum):
    """What moves a load connection from one state to another."""

    REPLIED = "replied"  # everything owed came back: a round is complete
    PAUSE_READING = "pause-reading"  # the slow-reader fault
    HALF_CLOSE = "half-close"  # the half-close fault: shutdown(SHUT_WR)
    FINISH = "finish"  # its rounds are done, or the run is draining
    PEER_EOF = "peer-eof"  # recv returned b""
    ABORT = "abort"  # an error, a wrong byte, a reset, a stall, or the end of the run


# The state table. Rules:
# - a round completes in every live state but IDLE, which is owed nothing;
#   a slow reader is back to ACTIVE once its burst came back, and a
#   half-closed connection is done once its last reply came back;
# - faults and FINISH strike only between rounds, that is in ACTIVE;
# - the peer's EOF ends any live connection (an error unless it was owed nothing
#   after a half-close, which the driver decides);
# - ABORT ends any connection at once, and is harmless after the end.
_TRANSITIONS: dict[tuple[ClientState, ClientEvent], ClientState] = {
    (ClientState.ACTIVE, ClientEvent.REPLIED): ClientState.ACTIVE,
    (ClientState.ACTIVE, ClientEvent.PAUSE_READING): ClientState.SLOW_READER,
    (ClientState.ACTIVE, ClientEvent.HALF_CLOSE): ClientState.HALF_CLOSED,
    (ClientState.ACTIVE, ClientEvent.FINISH): ClientState.IDLE,
    (ClientState.SLOW_READER, ClientEvent.REPLIED): ClientState.ACTIVE,
    (ClientState.HALF_CLOSED, ClientEvent.REPLIED): ClientState.CLOSED,
    (ClientState.ACTIVE, ClientEvent.PEER_EOF): ClientState.CLOSED,
    (ClientState.SLOW_READER, ClientEvent.PEER_EOF): ClientState.CLOSED,
    (ClientState.HALF_CLOSED, ClientEvent.PEER_EOF): ClientState.CLOSED,
    (ClientState.IDLE, ClientEvent.PEER_EOF): ClientState.CLOSED,
    (ClientState.ACTIVE, ClientEvent.ABORT): ClientState.CLOSED,
    (ClientState.SLOW_READER, ClientEvent.ABORT): ClientState.CLOSED,
    (ClientState.HALF_CLOSED, ClientEvent.ABORT): ClientState.CLOSED,
    (ClientState.IDLE, ClientEvent.ABORT): ClientState.CLOSED,
    (ClientState.CLOSED, ClientEvent.ABORT): ClientState.CLOSED,
}


class IllegalTransition(RuntimeError):
    """An event arrived that the state table does not allow in this state."""


class WrongBytes(NamedTuple):
    """What came back is not what was owed: an error for the result."""

    kind: str  # "extra-bytes" or "mismatch"
    detail: str
    fields: dict[str, Any]  # offset, and for a mismatch the bytes on both sides (hex)


class VerdictJudge:
    """One connection's oracle, asked for its verdict after every message sent and read received.

    ``owes`` is True while the verdict is PENDING (a reply is still owed).

    Args:
        oracle: The connection's own oracle (guarded: what it raises is
            :class:`~conformance.oracle.OracleError`).
    """

    __slots__ = ("oracle", "owes", "reason")

    def __init__(self, oracle: Oracle) -> None:
        self.oracle = oracle
        self.owes = False
        self.reason = ""  # the last PENDING verdict's words

    def sent(self, data: bytes) -> WrongBytes | None:
        """Tell the oracle ``data`` went out; what is wrong, if its verdict is FAIL already."""
        self.oracle.sent(data)
        return self._ask()

    def received(self, data: bytes) -> WrongBytes | None:
        """Tell the oracle ``data`` came back; what is wrong, if its verdict is FAIL."""
        self.oracle.received(data)
        return self._ask()

    def finish(self) -> Judgement:
        """The exchange is over (the peer's bytes are all in): the oracle's last verdict."""
        self.oracle.finish()
        verdict = self.oracle.verdict()
        self.owes = verdict.status is Status.PENDING
        return verdict

    def _ask(self) -> WrongBytes | None:
        verdict = self.oracle.verdict()
        if verdict.status is Status.FAIL:
            self.owes = False
            fields: dict[str, Any] = {"offset": verdict.offset}
            return WrongBytes("mismatch", verdict.reason or "the oracle says FAIL", fields)
        self.owes = verdict.status is Status.PENDING
        self.reason = verdict.reason
        return None


class Client:
    """One connection of a load process.

    Args:
        index: The connection's number in the whole run (for error reports).
        sock: A connected, non-blocking socket.
        pattern: Random bytes the connection's messages are cut from.
        reply: The connection's oracle's ``expected_reply``: what a correct
            server owes for the bytes sent; None when that is the bytes
            themselves (echo), so the hot path makes no call.
        source: Under a protocol model, where the connection's requests come
            from, each with the exact reply it is owed (then ``pattern`` and
            ``reply`` are unused); None: messages are cut from ``pattern``.
        judge: The connection's oracle, asked for its verdict (then ``reply``
            is unused and ``expect`` stays empty); None: replies are compared
            with the bytes owed.
    """

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
        "reply",
        "source",
        "judge",
        "tls",
    )

    def __init__(
        self,
        index: int,
        sock: socket.socket,
        pattern: bytes,
        reply: Callable[[bytes], bytes] | None,
        source: LoadConnection | None = None,
        judge: VerdictJudge | None = None,
    ) -> None:
        self.index = index
        self.sock = sock
        self.fd = sock.fileno()
        self.pattern = pattern
        #: Owed by the server and not received yet: bytes on the fast path, else a bytearray.
        self.expect: bytes | bytearray = b""
        #: What the socket has not taken yet (then the driver asks for write readiness).
        self.out: memoryview | None = None
        self.state = ClientState.ACTIVE
        self.rounds = 0
        self.sent_at = 0  # monotonic_ns when the current round began
        self.verified = 0  # bytes received and found right: the stream offset of expect[0]
        self.stream_pos = 0
        self.resume_at = 0.0  # when a slow reader reads again
        self.last_progress = 0.0
        self.events = select.EPOLLIN  # the interest registered with epoll
        self.measured = True  # the current round's latency counts
        self.reply = reply
        self.source = source
        self.judge = judge
        #: Over TLS, the connection's :class:`~conformance.load.tls_driver.TlsSession`.
        self.tls: Any = None

    def owes(self) -> bool:
        """Whether the server still owes this connection a reply (or part of one)."""
        judge = self.judge
        return bool(self.expect) if judge is None else judge.owes

    def owed_words(self) -> str:
        """What is owed, in a few words, for an error's detail."""
        judge = self.judge
        if judge is None:
            return f"{len(self.expect)} bytes still owed"
        return f"a reply still owed (the oracle: {judge.reason or 'PENDING'})"

    def advance(self, event: ClientEvent) -> ClientState:
        """Move to the state the table gives for ``event``.

        Args:
            event: What happened.

        Returns:
            The new state.

        Raises:
            IllegalTransition: The table does not allow ``event`` in this state.
        """
        try:
            state = self.state = _TRANSITIONS[(self.state, event)]
        except KeyError:
            raise IllegalTransition(
                f"load connection {self.index}: event {event.value!r} is not allowed "
                f"in state {self.state.value!r}"
            ) from None
        return state

    def receive(self, data: bytes) -> WrongBytes | None:
        """Check ``data`` (non-empty) against the start of what is owed and take it off.

        Args:
            data: Bytes just received.

        Returns:
            None when they are right (``verified`` then counts them), else what
            is wrong, with its offset in the stream.
        """
        if self.judge is not None:
            wrong = self.judge.received(data)
            if wrong is None:
                self.verified += len(data)
            elif wrong.fields["offset"] is None:  # The oracle did not say where.
                wrong.fields["offset"] = self.verified
            return wrong
        expect = self.expect
        if not isinstance(expect, bytearray):
            expect = self.expect = bytearray(expect)
        n = len(data)
        if n > len(expect):
            return WrongBytes(
                "extra-bytes",
                f"{n - len(expect)} bytes more than were sent",
                {"offset": self.verified + len(expect)},
            )
        if data != (expect if n == len(expect) else expect[:n]):
            at = first_difference(data, expect)
            offset = self.verified + at
            return WrongBytes(
                "mismatch",
                f"byte {offset} differs",
                {
                    "offset": offset,
                    "expected": bytes(expect[at : at + 16]).hex(),
                    "received": data[at : at + 16].hex(),
                },
            )
        if n == len(expect):
            expect.clear()
        else:
            del expect[:n]
        self.verified += n
        return None
