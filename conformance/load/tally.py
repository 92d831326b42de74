"""The tally: what one load process holds against the server, and when the run must halt.

How this works
--------------
The driver and the loop find things out; the :class:`Tally` writes them into
the process's :class:`~conformance.load.result.LoadResult`, and nothing else
does: it is the driver's verdict bookkeeping, with no I/O.

- :meth:`Tally.error` counts an error under its
  :class:`~conformance.load.result.ErrorKey`: its kind, and the fault the
  connection was under (a half-closed connection, a slow reader: the
  client's state, or the one it had before the event that ended it). The
  run's first error is kept with its details (its connection, its byte
  offset...). With ``stop_on_error`` an error halts the run.
- :meth:`Tally.oracle_failed` (a user's oracle raised) and
  :meth:`Tally.cannot_judge` (an oracle's verdict cannot say when a reply
  is complete) halt it too: the result says why, and judges nothing.
- :meth:`Tally.stop_requested` looks at the stop event, once a tick: when it
  is set, the run halts and its result is ``stopped``.

``halted`` is what the driver's phases and the loop look at to end the run.
"""

from __future__ import annotations

from typing import Any

from conformance.load.client import Client, ClientState
from conformance.load.connector import StopEvent
from conformance.load.result import ErrorKey, LoadResult
from conformance.load.spec import Fault
from conformance.oracle import OracleError, Status

__all__ = ["Tally"]

#: The fault a connection in this state was struck by.
_FAULT_OF = {ClientState.HALF_CLOSED: Fault.HALF_CLOSE, ClientState.SLOW_READER: Fault.SLOW_READER}


class Tally:
    """The errors of one load process, its first error, and whether the run must halt.

    Args:
        result: The process's result, which the tally writes into.
        stop_on_error: Whether the first error halts the run.
        stop: When set, :meth:`stop_requested` halts the run.
        oracle_name: The name the oracle goes by, for :meth:`cannot_judge`.
    """

    __slots__ = ("halted", "oracle_name", "result", "stop", "stop_on_error")

    def __init__(
        self,
        result: LoadResult,
        *,
        stop_on_error: bool,
        stop: StopEvent | None,
        oracle_name: str,
    ) -> None:
        self.result = result
        self.stop_on_error = stop_on_error
        self.stop = stop
        self.oracle_name = oracle_name
        #: An error with stop_on_error, an oracle that failed, or the stop event: end the run now.
        self.halted = False

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

        Args:
            kind: What went wrong: ``connect``, ``reset``, ``mismatch``...
            client: The connection it went wrong on; None for a connect.
            detail: What happened, in words.
            times: How many errors this one stands for (connects that timed out).
            state: The state the fault is read from (default: the client's
                state now): an error on a half-closed connection or a slow
                reader is counted under that fault (:class:`ErrorKey`'s
                ``after``), so that a check can judge the fault connections
                by the rules of their fault and the others by its own.
            extra: More details for the first error (its offset, the bytes).
        """
        if state is None and client is not None:
            state = client.state
        after = _FAULT_OF.get(state) if state is not None else None
        key = ErrorKey(kind, after)
        if after is not None:
            extra["fault"] = after.value
        self.result.errors[key] += times
        if self.stop_on_error:
            self.halted = True
        if self.result.first_error is None:
            self.result.first_error = {
                "kind": str(key),
                "connection": None if client is None else client.index,
                "detail": detail,
                **extra,
            }

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
