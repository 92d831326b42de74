"""Oracles as a user writes them, for an "upper-case echo" server, and a few that misbehave.

Run one as ``--oracle tests.conformance.example_oracles:UpperEchoOracle``
(from the repository root, or with it on ``PYTHONPATH``), against
``fixtures/servers/upper_echo.py``. Their tests are in ``test_load_oracle.py``.

- :class:`UpperEchoOracle`: every byte comes back upper-cased
  (``bytes.upper``), in order, and nothing else. It has the four methods
  only, so the load asks it for its verdict after every read;
- :class:`UpperEchoReplyOracle`: the same, and it says in advance what each
  message is owed (``expected_reply``), so the load compares bytes;
- :class:`ReceivedRaises`, :class:`VerdictRaises`: their own code fails once
  a byte comes back (a fault on the judging side: an ERROR, never a verdict);
- :class:`JudgesAtTheEnd`: PENDING until told the exchange is over, so it
  cannot say when a reply is complete: the load cannot judge with it.
"""

from __future__ import annotations

from conformance.oracle import Judgement, Status, first_difference

__all__ = [
    "JudgesAtTheEnd",
    "ReceivedRaises",
    "UpperEchoOracle",
    "UpperEchoReplyOracle",
    "VerdictRaises",
]


class UpperEchoOracle:
    """Every byte sent comes back upper-cased, in order, and nothing else."""

    def __init__(self) -> None:
        self._owed = bytearray()  # upper-cased bytes sent and not received yet
        self._right = 0  # bytes received and right
        self._finished = False
        self._failure: Judgement | None = None

    def sent(self, data: bytes) -> None:
        self._owed += data.upper()

    def received(self, data: bytes) -> None:
        if self._failure is not None:
            return
        n = min(len(data), len(self._owed))
        at = first_difference(data[:n], self._owed[:n])
        if at < n:
            offset = self._right + at
            self._failure = Judgement(
                Status.FAIL,
                offset,
                f"byte {offset} differs: expected 0x{self._owed[at]:02x}, "
                f"received 0x{data[at]:02x}",
            )
        elif len(data) > n:
            offset = self._right + n
            self._failure = Judgement(
                Status.FAIL, offset, f"{len(data) - n} bytes more than were owed"
            )
        else:
            del self._owed[:n]
            self._right += n

    def finish(self) -> None:
        self._finished = True

    def verdict(self) -> Judgement:
        if self._failure is not None:
            return self._failure
        if not self._owed:
            return Judgement(Status.PASS)
        if self._finished:
            return Judgement(
                Status.FAIL, self._right, f"the exchange ended with {len(self._owed)} bytes owed"
            )
        return Judgement(Status.PENDING, self._right, f"{len(self._owed)} bytes not back yet")


class UpperEchoReplyOracle(UpperEchoOracle):
    """:class:`UpperEchoOracle` that also says what each message is owed."""

    def expected_reply(self, data: bytes) -> bytes:
        return data.upper()


class ReceivedRaises(UpperEchoOracle):
    """Fails in its own code as soon as a byte comes back."""

    def received(self, data: bytes) -> None:
        raise RuntimeError("this oracle cannot read")


class VerdictRaises(UpperEchoOracle):
    """Fails in its own code when asked for a verdict once a byte came back."""

    def received(self, data: bytes) -> None:
        super().received(data)
        self._seen = True

    def verdict(self) -> Judgement:
        if getattr(self, "_seen", False):
            raise ZeroDivisionError("no verdict today")
        return super().verdict()


class JudgesAtTheEnd(UpperEchoOracle):
    """Says PENDING until told the exchange is over, then judges all of it."""

    def verdict(self) -> Judgement:
        if not self._finished:
            return Judgement(Status.PENDING, None, "judged at the end of the exchange")
        return super().verdict()
