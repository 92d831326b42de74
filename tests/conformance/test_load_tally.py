"""The load's tally: errors counted by kind and fault, the first kept, and when the run halts."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from conformance.load import ErrorKey, Fault, LoadResult, LoadSpec
from conformance.load.client import Client, ClientEvent, ClientState
from conformance.load.tally import Tally
from conformance.oracle import OracleError, Status


@pytest.fixture
def client() -> Iterator[Client]:
    a, b = socket.socketpair()
    with a, b:
        yield Client(7, a, b"", None)


def _tally(*, stop_on_error: bool = False, stop: threading.Event | None = None) -> Tally:
    return Tally(
        LoadResult(LoadSpec("127.0.0.1", 9)),
        stop_on_error=stop_on_error,
        stop=stop,
        oracle_name="upper",
    )


def test_Tally_error_keys_an_error_by_the_fault_its_connection_is_under(client: Client) -> None:
    tally = _tally()
    tally.error("mismatch", client, "byte 3 differs", offset=3)
    client.advance(ClientEvent.PAUSE_READING)
    tally.error("reset", client, "Connection reset by peer", offset=64)
    tally.error("reset", client, "Connection reset by peer", offset=128)
    tally.error("connect", None, "3 new connections not accepted within 10s", times=3)
    assert tally.result.errors == {
        ErrorKey("mismatch"): 1,
        ErrorKey("reset", Fault.SLOW_READER): 2,
        ErrorKey("connect"): 3,
    }
    assert tally.result.errors_by_name() == {
        "mismatch": 1,
        "reset after slow-reader": 2,
        "connect": 3,
    }
    assert tally.result.first_error == {
        "kind": "mismatch",
        "connection": 7,
        "detail": "byte 3 differs",
        "offset": 3,
    }
    assert not tally.halted


def test_Tally_error_reads_the_fault_from_the_state_it_is_given(client: Client) -> None:
    tally = _tally()
    client.advance(ClientEvent.HALF_CLOSE)
    state = client.state
    client.advance(ClientEvent.PEER_EOF)  # The EOF closes it: the fault is the state before.
    assert client.state is ClientState.CLOSED
    tally.error("eof", client, "server closed the connection", offset=0, state=state)
    assert tally.result.errors == {ErrorKey("eof", Fault.HALF_CLOSE): 1}
    first = tally.result.first_error
    assert first is not None
    assert (first["kind"], first["fault"]) == ("eof after half-close", "half-close")


def test_Tally_error_halts_the_run_only_with_stop_on_error(client: Client) -> None:
    tally = _tally(stop_on_error=True)
    tally.error("stalled", client, "nothing came back", offset=0)
    assert tally.halted


def test_Tally_oracle_failed_and_cannot_judge_halt_and_say_why(client: Client) -> None:
    tally = _tally()
    tally.oracle_failed(OracleError("the oracle raised ValueError"))
    tally.oracle_failed(OracleError("a second time"))
    assert tally.halted
    assert tally.result.oracle_error == "the oracle raised ValueError"
    other = _tally()
    other.cannot_judge(client, Status.PASS)
    assert other.halted
    assert other.result.unjudged is not None
    assert other.result.unjudged.startswith("the oracle upper cannot judge a reply as it comes")
    assert "on connection 7" in other.result.unjudged
    assert not other.result.errors


def test_Tally_stop_requested_halts_once_the_stop_event_is_set() -> None:
    stop = threading.Event()
    tally = _tally(stop=stop)
    assert not tally.stop_requested()
    assert not tally.halted
    assert not tally.result.stopped
    stop.set()
    assert tally.stop_requested()
    assert tally.halted
    assert tally.result.stopped
    assert not _tally().stop_requested()  # No stop event: never stopped.
