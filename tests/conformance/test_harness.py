"""The harness over real sockets: transcripts, endings, deadlines that name the step.

Each test runs a small trio server in the same ``trio.run`` as the harness,
so the server's behaviour (echo, silence, reset, a wrong byte) is exact.
"""

from __future__ import annotations

import functools
import socket
import struct
from collections.abc import Awaitable, Callable

import pytest
import trio

from conformance.checks import Check, Level, Setup, run_check
from conformance.harness import (
    STALL_AFTER,
    CheckFailure,
    Divergence,
    Ending,
    Harness,
    Stalled,
    StepTimeout,
)
from conformance.rules import HALFCLOSE_DATA
from conformance.targets.target import Address

Handler = Callable[[trio.SocketStream], Awaitable[None]]


async def echo(stream: trio.SocketStream) -> None:
    async for data in stream:
        await stream.send_all(data)
    await stream.aclose()


async def silent(stream: trio.SocketStream) -> None:
    async for _ in stream:
        pass


async def reset_after_first_read(stream: trio.SocketStream) -> None:
    await stream.receive_some(1)
    stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    await stream.aclose()


async def flips_byte_3(stream: trio.SocketStream) -> None:
    seen = 0
    async for data in stream:
        reply = bytearray(data)
        if seen <= 3 < seen + len(data):
            reply[3 - seen] ^= 0xFF
        seen += len(data)
        await stream.send_all(bytes(reply))


async def trickles(stream: trio.SocketStream) -> None:
    """Echoes one byte every 50 ms: slow, but never stalled."""
    async for data in stream:
        for i in range(len(data)):
            await trio.sleep(0.05)  # The server's behaviour under test: a slow sender.
            await stream.send_all(data[i : i + 1])


def with_server(handler: Handler, body: Callable[[Harness], Awaitable[None]]) -> Harness:
    """Serve ``handler`` on 127.0.0.1, run ``body`` with a harness for it; return the harness.

    Raises:
        The first exception ``body`` raised, out of any exception group.
    """
    result: list[Harness] = []
    errors: list[BaseException] = []

    async def main() -> None:
        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                serve = functools.partial(trio.serve_tcp, handler, 0, host="127.0.0.1")
                listeners = await nursery.start(serve)
                port = listeners[0].socket.getsockname()[1]
                harness = Harness(Address("127.0.0.1", port), step_timeout=0.5)
                result.append(harness)
                try:
                    await body(harness)
                except Exception as exc:  # Re-raised below, outside the nursery.
                    errors.append(exc)
                finally:
                    harness.close_all()
                    nursery.cancel_scope.cancel()

    trio.run(main)
    if errors:
        raise _leaf(errors[0])
    return result[0]


def _leaf(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def test_Harness_records_a_whole_exchange_and_the_servers_FIN() -> None:
    async def body(h: Harness) -> None:
        conn = await h.connect("c1")
        await conn.exchange(bytes(range(256)) * 100, chunks=[1000, 7])
        await conn.shutdown_write()
        assert await conn.expect_eof() is Ending.FIN

    h = with_server(echo, body)
    (transcript,) = h.transcripts
    assert bytes(transcript.sent) == bytes(range(256)) * 100
    assert transcript.received == transcript.sent
    assert transcript.ending is Ending.FIN
    actions = [e.action for e in transcript.events]
    assert actions[0] == "connect"
    assert "shutdown SHUT_WR" in actions
    assert actions[-2:] == ["FIN", "close"]
    assert all(b.at >= a.at for a, b in zip(transcript.events, transcript.events[1:], strict=False))


def test_Harness_step_that_hangs_fails_naming_the_step_and_connection() -> None:
    async def body(h: Harness) -> None:
        conn = await h.connect("quiet")
        await conn.send(b"hello?")
        await conn.settle(step="wait for the echo of hello")

    with pytest.raises(StepTimeout) as info:
        with_server(silent, body)
    failure = info.value
    assert failure.step == "wait for the echo of hello"
    assert "within 0.5s on connection quiet" in failure.message
    assert failure.transcript is not None
    assert failure.transcript.ending is Ending.TIMEOUT
    assert failure.verdict is not None
    assert failure.verdict.pending


def test_Connection_settle_idle_deadline_is_on_progress_not_on_the_whole() -> None:
    payload = bytes(range(20))  # 1 s of trickle against a 0.5 s step timeout.

    async def whole(h: Harness) -> None:
        conn = await h.connect("c1")
        await conn.send(payload)
        await conn.settle(step="read it all")

    async def idle(h: Harness) -> None:
        conn = await h.connect("c1")
        await conn.send(payload)
        await conn.settle(step="read it all", idle=True)

    with pytest.raises(StepTimeout, match="did not complete within 0.5s"):
        with_server(trickles, whole)
    (transcript,) = with_server(trickles, idle).transcripts
    assert bytes(transcript.received) == payload
    with pytest.raises(StepTimeout, match="nothing arrived for 0.5s") as caught:
        with_server(silent, idle)
    assert caught.value.step == "read it all"


async def holds_after_the_first_byte(stream: trio.SocketStream) -> None:
    """Echoes the first byte of the connection, then holds every other byte; never closes."""
    first = True
    async for data in stream:
        if first:
            await stream.send_all(data[:1])
            first = False
    await trio.sleep_forever()  # After the client's FIN: neither the rest nor a FIN.


def test_Harness_step_owed_bytes_that_stop_moving_fails_as_a_stall_before_its_deadline() -> None:
    async def body(h: Harness) -> None:
        conn = await h.connect("held")
        await conn.send(b"hello?")
        await conn.settle(step="wait for the echo", timeout=60.0)

    with pytest.raises(Stalled) as info:
        with_server(holds_after_the_first_byte, body)
    failure = info.value
    assert failure.liveness
    assert failure.step == "wait for the echo"
    assert f"nothing moved either way for {STALL_AFTER:g}s while bytes were owed" in (
        failure.message
    )
    assert "on connection held (6 bytes sent, 1 received)" in failure.message
    assert failure.verdict is not None
    assert failure.verdict.pending


def test_Harness_a_slow_transfer_that_keeps_moving_is_not_a_stall() -> None:
    payload = bytes(range(30))  # 1.5 s of trickle, one byte every 50 ms.

    async def body(h: Harness) -> None:
        conn = await h.connect("c1")
        await conn.send(payload)
        await conn.settle(step="read it all", timeout=20.0)

    (transcript,) = with_server(trickles, body).transcripts
    assert bytes(transcript.received) == payload


def test_Harness_nothing_owed_means_no_stall() -> None:
    async def body(h: Harness) -> None:
        conn = await h.connect("c1")
        await conn.send(b"x")
        await conn.settle()
        with h.step("wait on a connection that owes nothing", conn, timeout=STALL_AFTER + 1):
            await trio.sleep(STALL_AFTER + 0.5)  # Waiting is what the step does.

    with_server(echo, body)


def test_a_stall_after_the_FIN_is_liveness_not_a_data_rule() -> None:
    async def body(h: Harness) -> None:
        conn = await h.connect("c1")
        await conn.send(b"abc")
        await conn.shutdown_write()
        await conn.expect_owed_then_fin(timeout=60.0)

    with pytest.raises(Stalled) as info:
        with_server(holds_after_the_first_byte, body)
    assert info.value.rule is None  # Not HALFCLOSE-DATA: nothing was lost, nothing came.
    assert info.value.under(HALFCLOSE_DATA).rule is None


def test_Harness_sees_the_servers_RST_and_judges_what_is_missing() -> None:
    async def body(h: Harness) -> None:
        conn = await h.connect("c1")
        await conn.send(b"x" * 10)
        await conn.settle()

    with pytest.raises(Divergence) as info:
        with_server(reset_after_first_read, body)
    failure = info.value
    assert failure.transcript is not None
    assert failure.transcript.ending is Ending.RST
    assert failure.verdict is not None
    assert failure.verdict.offset == 0
    assert "10 of 10 bytes never echoed" in failure.message


def test_Harness_fails_at_once_on_a_wrong_byte_with_its_offset() -> None:
    async def body(h: Harness) -> None:
        conn = await h.connect("c1")
        await conn.exchange(b"abcdefgh" * 1000)

    with pytest.raises(Divergence) as info:
        with_server(flips_byte_3, body)
    assert info.value.verdict is not None
    assert info.value.verdict.offset == 3


def test_Harness_connect_to_a_closed_port_fails_as_refused() -> None:
    async def main() -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        harness = Harness(Address("127.0.0.1", port))
        with pytest.raises(CheckFailure, match="cannot connect c1"):
            await harness.connect("c1")
        assert harness.transcripts[0].ending is Ending.REFUSED

    trio.run(main)


def test_run_check_runs_liveness_after_a_fault_check() -> None:
    """A fault check that passes still fails if the server stopped serving."""

    async def nothing(h: Harness) -> None:
        await trio.lowlevel.checkpoint()

    fault = Check("TEST-FAULT-1", "t", "test", Level.MUST, "none", nothing, fault=True)
    plain = Check("TEST-PLAIN-1", "t", "test", Level.MUST, "none", nothing)
    with socket.create_server(("127.0.0.1", 0)) as listener:  # Accepts into the backlog only.
        setup = Setup(Address("127.0.0.1", listener.getsockname()[1]))
        assert run_check(plain, setup).passed
        outcome = run_check(fault, setup)
    assert not outcome.passed
    assert "liveness after the fault" in outcome.report
    assert "replay: reactor-conformance run --target 127.0.0.1:" in outcome.report
    assert outcome.report.rstrip().endswith("--checks TEST-FAULT-1")


def test_run_check_bounds_the_whole_check_by_its_timeout() -> None:
    async def forever(h: Harness) -> None:
        await trio.sleep_forever()

    check = Check("TEST-HANG-1", "t", "test", Level.MUST, "none", forever, timeout=0.3)
    outcome = run_check(check, Setup(Address("127.0.0.1", 9)))
    assert not outcome.passed
    assert outcome.duration < 5
    assert "whole check did not complete within 0.3s" in outcome.report
