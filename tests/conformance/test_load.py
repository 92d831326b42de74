"""The load generator: every byte verified, faults injected, bad servers caught."""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import execnet
import pytest

from conformance.checks import Setup, by_id, run_check
from conformance.errors import UsageError
from conformance.load import (
    ErrorKey,
    Fault,
    Faults,
    LoadResult,
    LoadSpec,
    format_json,
    run_load,
)
from conformance.load.client import Client, ClientEvent, ClientState, IllegalTransition
from conformance.load.driver import Driver
from conformance.load.histogram import Histogram
from conformance.load.spec import Mode
from conformance.oracle import Judgement, Oracle, Status
from conformance.rules import HALFCLOSE_DATA
from conformance.targets.target import Address
from tests.helpers import ROOT, ServerProcess


@pytest.fixture(scope="module")
def single() -> Iterator[ServerProcess]:
    with ServerProcess(["single"]) as server:
        yield server


def test_Faults_parse_reads_percentages_and_counts() -> None:
    faults = Faults.parse("reset=1%, half-close=0.5%,slow-reader=2%,connect-storm=300")
    assert faults == Faults(reset=0.01, half_close=0.005, slow_reader=0.02, connect_storm=300)
    assert Faults.parse("") == Faults()
    assert not Faults().any


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("explode=1%", "unknown fault"),
        ("reset=lots", "percentage"),
        ("reset=150%", "between 0% and 100%"),
        ("connect-storm=many", "count"),
        ("reset=60%,half-close=60%", "more than 100%"),
    ],
)
def test_Faults_parse_rejects_bad_input_with_a_reason(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Faults.parse(text)


def test_LoadSpec_validate_names_the_bad_setting() -> None:
    with pytest.raises(ValueError, match="connections"):
        LoadSpec("127.0.0.1", 1, connections=0).validate()
    with pytest.raises(ValueError, match="procs"):
        LoadSpec("127.0.0.1", 1, connections=2, procs=3).validate()


class TranscriptOnly:
    """An oracle that can judge a transcript but cannot say what each message is owed."""

    def sent(self, data: bytes) -> None:
        pass

    def received(self, data: bytes) -> None:
        pass

    def finish(self) -> None:
        pass

    def verdict(self) -> Judgement:
        return Judgement(Status.PASS)


def test_LoadSpec_validate_refuses_stream_mode_to_an_oracle_that_cannot_say_what_is_owed() -> None:
    assert isinstance(TranscriptOnly(), Oracle)
    name = f"{__name__}:TranscriptOnly"
    LoadSpec("127.0.0.1", 1, model=f"oracle:{name}").validate()  # Ping-pong: judged by its verdict.
    with pytest.raises(ValueError, match="expected_reply"):
        LoadSpec("127.0.0.1", 1, model=f"oracle:{name}", mode="stream").validate()


def test_LoadSpec_validate_refuses_an_oracle_it_cannot_load() -> None:
    with pytest.raises(UsageError, match="cannot import"):
        LoadSpec("127.0.0.1", 1, model="oracle:no_such_module_xyz:Oracle").validate()


def test_Client_advance_follows_the_table_and_names_an_illegal_transition() -> None:
    a, b = socket.socketpair()
    with a, b:
        client = Client(7, a, b"pattern", bytes)
        assert client.advance(ClientEvent.PAUSE_READING) is ClientState.SLOW_READER
        assert client.advance(ClientEvent.REPLIED) is ClientState.ACTIVE
        assert client.advance(ClientEvent.FINISH) is ClientState.IDLE
        with pytest.raises(IllegalTransition, match="'replied'.*'idle'"):
            client.advance(ClientEvent.REPLIED)
        assert client.advance(ClientEvent.ABORT) is ClientState.CLOSED
        assert client.advance(ClientEvent.ABORT) is ClientState.CLOSED


def test_Client_receive_takes_what_is_owed_and_names_the_first_wrong_byte() -> None:
    a, b = socket.socketpair()
    with a, b:
        client = Client(0, a, b"", bytes)
        client.expect = b"abcdef"
        assert client.receive(b"abc") is None
        assert (client.verified, bytes(client.expect)) == (3, b"def")
        wrong = client.receive(b"dXf")
        assert wrong is not None
        assert (wrong.kind, wrong.fields["offset"]) == ("mismatch", 4)
        extra = client.receive(b"defg")
        assert extra is not None
        assert (extra.kind, extra.fields["offset"]) == ("extra-bytes", 6)


def test_LoadResult_data_is_the_json_and_reads_back_for_merging() -> None:
    spec = LoadSpec("127.0.0.1", 9, faults=Faults(reset=0.5))
    parts = []
    for trips in (3, 5):
        part = LoadResult(spec, seconds=1.5 + trips, round_trips=trips, bytes_verified=64 * trips)
        part.latency.record_many(range(100 * trips, 100 * trips + trips))
        part.injected["reset"] += trips
        parts.append(LoadResult.from_data(spec, json.loads(format_json(part))))
    merged = LoadResult.merged(spec, parts)
    assert (merged.round_trips, merged.seconds, merged.injected["reset"]) == (8, 6.5, 8)
    whole = Histogram()
    whole.record_many([300, 301, 302, 500, 501, 502, 503, 504])
    assert merged.latency.counts == whole.counts
    data = json.loads(format_json(merged))
    assert data["spec"]["oracle"] == "echo"
    assert data["latency_us"] == whole.summary()
    assert "8 round trips in 6.50s" in merged.summary_line()


def test_ErrorKey_reads_as_its_kind_and_the_fault_it_came_after() -> None:
    assert str(ErrorKey("reset")) == "reset"
    assert str(ErrorKey("reset", Fault.SLOW_READER)) == "reset after slow-reader"
    assert str(ErrorKey("eof", Fault.HALF_CLOSE)) == "eof after half-close"
    assert ErrorKey("eof", Fault.HALF_CLOSE) == ErrorKey("eof", Fault.HALF_CLOSE)
    assert ErrorKey("eof") != ErrorKey("eof", Fault.HALF_CLOSE)


def test_LoadResult_errors_travel_as_plain_lists_and_read_back_as_keys() -> None:
    spec = LoadSpec("127.0.0.1", 9)
    part = LoadResult(spec)
    part.errors[ErrorKey("reset", Fault.SLOW_READER)] += 2
    part.errors[ErrorKey("connect")] += 3
    data = part.to_data()
    assert data["errors"] == [["reset", "slow-reader", 2], ["connect", None, 3]]
    # As --json and a load process (pickle) and a host (execnet) send it.
    for wire in (
        json.loads(format_json(part)),
        pickle.loads(pickle.dumps(data)),
        execnet.loads(execnet.dumps(data)),
    ):
        back = LoadResult.from_data(spec, wire)
        assert back.errors == part.errors
    merged = LoadResult.merged(spec, [part, LoadResult.from_data(spec, data)])
    assert merged.errors == {ErrorKey("reset", Fault.SLOW_READER): 4, ErrorKey("connect"): 6}
    assert merged.errors_by_name() == {"reset after slow-reader": 4, "connect": 6}
    assert "errors 10" in merged.summary_line()


def test_LoadResult_json_names_the_model_as_the_options_do() -> None:
    for model, oracle, protocol in (
        ("echo", "echo", "echo"),
        ("oracle:discard", "discard", "echo"),
        ("resp", "echo", "resp"),
    ):
        data = json.loads(format_json(LoadResult(LoadSpec("127.0.0.1", 9, model=model))))
        assert (data["spec"]["oracle"], data["spec"]["protocol"]) == (oracle, protocol)
        assert "model" not in data["spec"]


def test_run_load_pingpong_counts_verified_round_trips(single: ServerProcess) -> None:
    host, port = single.address
    result = run_load(LoadSpec(host, port, connections=20, size=100, rounds=50, duration=30))
    assert result.ok, result.to_data()
    assert result.round_trips == 20 * 50
    assert result.bytes_verified == 20 * 50 * 100
    assert result.latency.count == result.round_trips
    assert result.server_alive is True


def test_run_load_stream_verifies_every_byte(single: ServerProcess) -> None:
    host, port = single.address
    result = run_load(LoadSpec(host, port, connections=8, mode="stream", duration=0.5))
    assert result.ok, result.to_data()
    assert result.bytes_verified > 1_000_000


def test_run_load_with_faults_keeps_the_others_exact(single: ServerProcess) -> None:
    host, port = single.address
    faults = Faults(reset=0.02, half_close=0.02, slow_reader=0.01, connect_storm=100)
    result = run_load(LoadSpec(host, port, connections=50, duration=1.5, faults=faults))
    assert result.ok, result.to_data()
    for kind in ("reset", "half-close", "slow-reader", "connect-storm"):
        assert result.injected[kind] > 0, (kind, result.injected)
    assert result.observed["half-close-echoed"] == result.injected["half-close"]
    assert result.observed["slow-reader-served"] == result.injected["slow-reader"]
    assert result.server_alive is True


def test_run_load_in_several_processes_merges_their_results(single: ServerProcess) -> None:
    host, port = single.address
    result = run_load(LoadSpec(host, port, connections=30, rounds=20, duration=30, procs=2))
    assert result.ok, result.to_data()
    assert result.round_trips == 30 * 20
    assert result.connections_opened == 30


@pytest.fixture(scope="module")
def discard() -> Iterator[ServerProcess]:
    with ServerProcess(["single", "--handler", "discard"]) as server:
        yield server


@pytest.mark.parametrize("mode", ["pingpong", "stream"])
@pytest.mark.parametrize("model", ["oracle:discard", "discard"])  # --oracle, --protocol
def test_run_load_with_the_discard_oracle_passes_a_discard_server(
    discard: ServerProcess, mode: Mode, model: str
) -> None:
    host, port = discard.address
    rounds = 40 if mode == "pingpong" else None
    spec = LoadSpec(host, port, connections=5, mode=mode, rounds=rounds, duration=0.5, model=model)
    result = run_load(spec)
    assert result.ok, result.to_data()
    assert result.bytes_verified == 0
    if mode == "pingpong":
        assert result.round_trips == 5 * 40
    assert result.server_alive is True


def test_run_load_with_the_discard_oracle_and_faults_keeps_going(discard: ServerProcess) -> None:
    host, port = discard.address
    faults = Faults(reset=0.02, half_close=0.02, slow_reader=0.02, connect_storm=20)
    spec = LoadSpec(host, port, connections=10, duration=0.8, faults=faults, model="oracle:discard")
    result = run_load(spec)
    assert result.ok, result.to_data()
    assert result.observed["half-close-echoed"] == result.injected["half-close"]
    assert result.observed["slow-reader-served"] == result.injected["slow-reader"]


def test_run_load_with_the_discard_oracle_fails_an_echo_server(single: ServerProcess) -> None:
    host, port = single.address
    result = run_load(LoadSpec(host, port, connections=3, duration=0.3, model="oracle:discard"))
    assert result.errors[ErrorKey("extra-bytes")] >= 1, result.to_data()
    assert result.first_error is not None
    assert result.first_error["offset"] == 0
    assert result.server_alive is False  # the probe came back, where nothing is owed


class CorruptingEcho:
    """An echo server on a thread that flips one byte at stream offset 5000."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = self.listener.getsockname()
        self.threads: list[threading.Thread] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            thread = threading.Thread(target=self._serve, args=(sock,), daemon=True)
            thread.start()
            self.threads.append(thread)

    @staticmethod
    def _serve(sock: socket.socket) -> None:
        offset = 0
        with sock:
            while True:
                try:
                    data = bytearray(sock.recv(65536))
                except OSError:
                    return
                if not data:
                    return
                if offset <= 5000 < offset + len(data):
                    data[5000 - offset] ^= 0xFF
                offset += len(data)
                try:
                    sock.sendall(data)
                except OSError:
                    return

    def close(self) -> None:
        self.listener.close()


def test_run_load_reports_the_first_corrupted_byte() -> None:
    server = CorruptingEcho()
    try:
        host, port = server.address
        result = run_load(LoadSpec(host, port, connections=3, size=64, duration=0.5))
    finally:
        server.close()
    assert not result.ok
    assert result.errors[ErrorKey("mismatch")] >= 1
    assert result.first_error is not None
    assert result.first_error["kind"] == "mismatch"
    assert result.first_error["offset"] == 5000


class DropsAfterHalfClose(CorruptingEcho):
    """An echo server on threads that, when the peer's FIN follows a message, drops its reply.

    After each read it looks (without waiting) for the end of the stream; a
    message with the FIN right behind it is not echoed: data loss on
    half-closed connections only, the others are served exactly.
    """

    @staticmethod
    def _serve(sock: socket.socket) -> None:
        with sock:
            while True:
                try:
                    data = sock.recv(65536)
                    if not data:
                        return
                    # Wait (bounded) for what follows; b"" there is the peer's FIN.
                    ready, _, _ = select.select([sock], [], [], 0.02)
                    if ready and sock.recv(1, socket.MSG_PEEK) == b"":
                        return
                    sock.sendall(data)
                except OSError:
                    return


def test_errors_on_half_closed_connections_are_counted_apart_and_judged_by_their_rule() -> None:
    server = DropsAfterHalfClose()
    try:
        host, port = server.address
        result = run_load(
            LoadSpec(
                host,
                port,
                connections=4,
                size=64,
                duration=3.0,
                faults=Faults(half_close=0.3),
                stop_on_error=True,
            )
        )
        outcome = run_check(by_id("ECHO-LOAD-3"), Setup(Address(host, port)))
    finally:
        server.close()
    assert set(result.errors) == {ErrorKey("eof", Fault.HALF_CLOSE)}, result.to_data()
    assert result.first_error is not None
    assert result.first_error["fault"] == "half-close"
    assert outcome.failure is not None
    assert outcome.failure.rule is HALFCLOSE_DATA
    assert "eof after half-close" in outcome.failure.message
    assert outcome.level.value == "MUST"


def test_run_load_reports_a_server_that_stops_answering() -> None:
    with socket.create_server(("127.0.0.1", 0)) as silent:  # Accepts (backlog), never reads.
        host, port = silent.getsockname()
        result = run_load(
            LoadSpec(host, port, connections=2, duration=0.3, drain_timeout=0.5, connect_timeout=2)
        )
    assert result.errors[ErrorKey("stalled")] == 2, result.to_data()
    assert result.server_alive is False


@contextmanager
def never_accepting() -> Iterator[tuple[str, int]]:
    """A listener that never accepts, its accept queue full: a connect to it hangs."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        address = listener.getsockname()
        held: list[socket.socket] = []
        try:
            # Linux queues backlog + 1 connections, then drops SYNs: connect until one hangs.
            while len(held) < 16:
                try:
                    held.append(socket.create_connection(address, timeout=0.5))
                except TimeoutError:
                    break
            else:
                pytest.fail("the accept queue never filled")
            yield address
        finally:
            for sock in held:
                sock.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("stop_on_error", [False, True])
def test_run_load_ends_at_the_connect_deadline_when_the_server_never_accepts(
    stop_on_error: bool,
) -> None:
    with never_accepting() as (host, port):
        spec = LoadSpec(
            host,
            port,
            connections=50,
            connect_timeout=2,
            duration=3,
            stop_on_error=stop_on_error,
        )
        start = time.monotonic()
        result = run_load(spec)
        took = time.monotonic() - start
    assert took < 7, result.to_data()  # the connect deadline and the probe's, 2s each
    assert result.errors == {ErrorKey("connect"): 50}, result.to_data()
    assert result.first_error is not None
    assert result.first_error["detail"] == "50 of 50 connections not accepted within 2s"
    assert result.connections_opened == 0
    assert result.server_alive is False
    assert not result.ok


@pytest.mark.timeout(30)
@pytest.mark.parametrize(("stop_on_error", "errors"), [(False, 50), (True, 1)])
def test_run_load_at_a_refused_port_ends_at_once(stop_on_error: bool, errors: int) -> None:
    with socket.socket() as bound:  # Bound, never listening: every connect is refused.
        bound.bind(("127.0.0.1", 0))
        host, port = bound.getsockname()
        spec = LoadSpec(host, port, connections=50, duration=30, stop_on_error=stop_on_error)
        start = time.monotonic()
        result = run_load(spec)
        took = time.monotonic() - start
    assert took < 2, result.to_data()
    assert result.errors == {ErrorKey("connect"): errors}, result.to_data()
    assert result.first_error is not None
    assert "refused" in result.first_error["detail"]
    assert result.server_alive is False


@pytest.mark.timeout(60)
def test_run_load_adds_up_the_errors_of_its_processes_by_key() -> None:
    with socket.socket() as bound:  # Bound, never listening: every connect is refused.
        bound.bind(("127.0.0.1", 0))
        host, port = bound.getsockname()
        result = run_load(LoadSpec(host, port, connections=50, duration=30, procs=2))
    assert result.errors == {ErrorKey("connect"): 50}, result.to_data()
    assert result.first_error is not None
    assert result.first_error["kind"] == "connect"


def _stop_while_running(spec: LoadSpec) -> tuple[LoadResult, float]:
    """Run ``spec`` on a thread; once it reports progress, stop it from this thread.

    Returns:
        Its result, and the seconds from the stop to the end of ``run_load``.
    """
    stop = threading.Event()
    running = threading.Event()
    ended: list[tuple[LoadResult, float]] = []

    def load() -> None:
        result = run_load(spec, progress=lambda *_: running.set(), stop=stop)
        ended.append((result, time.monotonic()))

    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    assert running.wait(30), "the load never made progress"
    stopped_at = time.monotonic()
    stop.set()
    thread.join(30)
    assert ended, "run_load did not end after the stop"
    result, end = ended[0]
    return result, end - stopped_at


@pytest.mark.timeout(60)
@pytest.mark.parametrize("procs", [1, 2])
def test_run_load_ends_soon_after_the_stop_event_with_a_partial_result(
    single: ServerProcess, procs: int
) -> None:
    host, port = single.address
    spec = LoadSpec(host, port, connections=10, duration=60, procs=procs)
    result, took = _stop_while_running(spec)
    assert took < (1.0 if procs == 1 else 2.5), took  # a tick; with processes, their grace
    assert result.stopped
    assert not result.errors, result.to_data()
    assert result.round_trips > 0
    assert result.seconds < 30
    assert result.server_alive is None
    assert not result.ok
    assert "STOPPED" in result.summary_line()
    assert LoadResult.from_data(result.spec, result.to_data()).stopped


@pytest.mark.timeout(60)
def test_run_load_stops_while_connecting() -> None:
    with never_accepting() as (host, port):
        spec = LoadSpec(host, port, connections=50, connect_timeout=60, duration=60)
        stop = threading.Event()
        ended: list[tuple[LoadResult, float]] = []
        thread = threading.Thread(
            target=lambda: ended.append((run_load(spec, stop=stop), time.monotonic())),
            daemon=True,
        )
        thread.start()
        stopped_at = time.monotonic()
        stop.set()
        thread.join(30)
    assert ended, "run_load did not end after the stop"
    result, end = ended[0]
    assert end - stopped_at < 1.0
    assert result.stopped
    assert result.connections_opened == 0
    assert not result.errors, result.to_data()


class ResettingEcho:
    """An echo server on a thread that resets each connection after echoing ``limit`` bytes."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = self.listener.getsockname()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(sock,), daemon=True).start()

    def _serve(self, sock: socket.socket) -> None:
        echoed = 0
        with sock:
            while echoed < self.limit:
                try:
                    data = sock.recv(65536)
                    if not data:
                        return
                    sock.sendall(data)
                except OSError:
                    return
                echoed += len(data)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00" * 2)

    def close(self) -> None:
        self.listener.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("mode", "faults"),
    [("stream", Faults()), ("pingpong", Faults(slow_reader=0.5, half_close=0.1))],
)
def test_run_load_never_acts_on_a_dropped_connection(mode: Mode, faults: Faults) -> None:
    server = ResettingEcho(limit=300_000)
    try:
        host, port = server.address
        spec = LoadSpec(
            host, port, connections=4, mode=mode, size=512, window=1 << 20, duration=1.0,
            faults=faults,
        )  # fmt: skip
        result = run_load(spec)
    finally:
        server.close()
    # An error's key is its kind and the fault it came after (a reset may strike a slow reader).
    kinds = {key.kind for key, count in result.errors.items() if count}
    assert "reset" in kinds, result.to_data()
    # A send or a poll on a socket the driver closed would be a "socket" error (EBADF).
    assert kinds <= {"reset", "eof"}, result.to_data()


def test_Driver_top_up_stops_at_a_connection_dropped_by_a_reset() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        host, port = listener.getsockname()
        driver = Driver(LoadSpec(host, port, connections=1, mode="stream", window=1 << 20), 0, 1)
        try:
            driver.connect_all()
            (client,) = driver.clients.values()
            peer, _ = listener.accept()
            peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00" * 2)
            peer.close()  # RST
            ready, _, _ = select.select([client.sock], [], [], 10)
            assert ready, "the reset never arrived"
            driver.running = True
            driver.top_up(client)  # The first send fails; nothing more goes to that socket.
            assert driver.result.errors == {ErrorKey("reset"): 1}
            assert client.state is ClientState.CLOSED
            assert driver.clients == {}
            assert len(driver.connector.pending) == 1  # its replacement, connecting
        finally:
            driver.connector.close_all()
            driver.ep.close()


@pytest.mark.timeout(90)
def test_load_check_fails_within_its_deadline_when_the_server_never_accepts() -> None:
    check = by_id("ECHO-LOAD-1")
    with never_accepting() as (host, port):
        outcome = run_check(check, Setup(Address(host, port)))
    assert not outcome.passed
    assert outcome.duration < 30, outcome.duration  # its own deadline is 120s
    assert "200 of 200 connections not accepted within 10s" in outcome.report, outcome.report


@pytest.mark.timeout(60)
def test_load_check_cut_by_its_deadline_stops_its_load_within_a_second() -> None:
    check = dataclasses.replace(by_id("ECHO-LOAD-1"), timeout=2.0)
    # The kernel completes every connect; nothing is ever read or answered.
    with socket.create_server(("127.0.0.1", 0), backlog=512) as silent:
        outcome = run_check(check, Setup(Address(*silent.getsockname())))
        cut_at = time.monotonic()
        assert not outcome.passed
        assert outcome.duration < 4, outcome.duration
        # The load's thread, left behind with its stop event set, closes its connections.
        silent.settimeout(5)
        held = [silent.accept()[0] for _ in range(200)]
        try:
            while held:
                left = cut_at + 1.5 - time.monotonic()
                ready, _, _ = select.select(held, [], [], max(0.0, left))
                assert ready, f"{len(held)} load connections still open 1.5s after the deadline"
                for sock in ready:
                    try:
                        data = sock.recv(65536)
                    except OSError:  # (a reset ends it as well)
                        data = b""
                    if not data:
                        held.remove(sock)
                        sock.close()
        finally:
            for sock in held:
                sock.close()


def _cli(*argv: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-m", "conformance", *argv],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=ROOT,
    )


def test_cli_load_reports_json_and_exits_0_on_a_correct_server() -> None:
    result = _cli("load", "--reference", "single", "-c", "10", "--rounds", "30", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] is True
    assert report["round_trips"] == 300
    assert report["server_alive"] is True
    assert set(report["latency_us"]) == {"p50", "p90", "p99", "p99.9", "max"}


def test_cli_load_exits_1_when_bytes_go_wrong() -> None:
    broken = ROOT / "fixtures" / "servers" / "broken" / "truncates_at_nul.py"
    result = _cli(
        "load", "--spawn", f"{sys.executable} {broken} --port {{port}}", "-c", "2", "--duration",
        "0.5", "--size", "300",
    )  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    assert "first error:" in result.stdout


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--faults", "explode=1%"], "unknown fault"),
        (["-c", "0"], "--connections"),
        (["--target", "nowhere"], "malformed target"),
    ],
)
def test_cli_load_bad_input_is_one_line_and_exit_2(argv: list[str], needle: str) -> None:
    result = _cli("load", *argv)
    assert result.returncode == 2
    assert needle in result.stderr
    assert len(result.stderr.splitlines()) == 1
    assert "Traceback" not in result.stderr
