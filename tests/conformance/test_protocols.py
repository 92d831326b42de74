"""Protocol models, without a network: framing, verdicts at exact offsets, splits, load, names."""

from __future__ import annotations

import pickle
import random
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conformance.errors import UsageError
from conformance.oracle import DiscardOracle, EchoOracle, Judgement, Oracle, Status
from conformance.protocols import (
    MODELS,
    Capability,
    ConnectionModel,
    DiscardModel,
    EchoModel,
    Expected,
    InvalidRequest,
    LoadConnection,
    Match,
    MemcachedModel,
    ProtocolModel,
    RespModel,
    load_model,
    model_name,
    skip_reason,
    unique_prefix,
)
from conformance.protocols.memcached import MemcachedConnection, Request, Set, strtoull
from conformance.protocols.resp import Command, Key, RespConnection, encode_command
from tests.helpers import ROOT

_SLOW = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _resp_oracle() -> Oracle:
    return RespModel().oracle()


def _mc_oracle() -> Oracle:
    return MemcachedModel().oracle()


def _feed(oracle: Oracle, sent: bytes, received: bytes, *, finish: bool = True) -> Judgement:
    oracle.sent(sent)
    oracle.received(received)
    if finish:
        oracle.finish()
    return oracle.verdict()


# -- capabilities -----------------------------------------------------------------


def test_skip_reason_names_the_model_the_capability_and_why() -> None:
    assert skip_reason(RespModel(), Capability.HALF_CLOSE) == (
        "does not apply: the resp model does not promise half-close semantics "
        "(redis closes the connection at the client's EOF)"
    )
    assert skip_reason(DiscardModel(), Capability.REPLIES) == (
        "does not apply: the discard model does not promise replies "
        "(a discard server sends nothing back)"
    )
    assert skip_reason(MemcachedModel(), Capability.ANY_BYTES) is not None


def test_skip_reason_is_none_for_what_a_model_promises() -> None:
    for capability in Capability:
        assert skip_reason(EchoModel(), capability) is None
    assert skip_reason(RespModel(), Capability.REPLIES) is None
    assert skip_reason(MemcachedModel(), Capability.REPLIES) is None


# -- RESP ---------------------------------------------------------------------------


def test_RespModel_oracle_is_pending_until_the_reply_is_whole() -> None:
    o = _resp_oracle()
    o.sent(encode_command([b"PING"]))
    assert o.verdict().pending
    assert o.verdict().offset == 0
    o.received(b"+PO")
    assert o.verdict().pending
    assert o.verdict().offset == 3
    o.received(b"NG\r\n")
    assert o.verdict().passed


def test_RespModel_oracle_models_set_get_incr_del_per_key() -> None:
    sent = b"".join(
        encode_command(args)
        for args in (
            [b"GET", b"a"],
            [b"SET", b"a", b"x\r\n\0y"],
            [b"GET", b"a"],
            [b"INCR", b"a"],
            [b"INCR", b"n"],
            [b"set", b"n", b"41"],
            [b"incr", b"n"],
            [b"SET", b"m", b"9223372036854775807"],
            [b"INCR", b"m"],
            [b"DEL", b"a", b"a", b"n", b"zz"],
            [b"ECHO", b""],
            [b"PING", b"hi"],
        )
    )
    received = (
        b"$-1\r\n+OK\r\n$5\r\nx\r\n\0y\r\n-ERR value is not an integer or out of range\r\n"
        b":1\r\n+OK\r\n:42\r\n+OK\r\n-ERR increment or decrement would overflow\r\n"
        b":2\r\n$0\r\n\r\n$2\r\nhi\r\n"
    )
    assert _feed(_resp_oracle(), sent, received).passed


@pytest.mark.parametrize("value", [b"01", b"+1", b"-0", b" 1", b"1 ", b"1\0", b"", b"1.5"])
def test_RespConnection_incr_refuses_what_redis_does_not_read_as_an_integer(value: bytes) -> None:
    conn = RespConnection()
    conn.apply((b"SET", b"k", value))
    assert conn.apply((b"INCR", b"k")) == Expected.exact(
        b"-ERR value is not an integer or out of range\r\n"
    )


def test_RespModel_oracle_fails_at_the_first_wrong_byte_and_names_the_request() -> None:
    sent = encode_command([b"SET", b"c0:k1", b"abc"]) + encode_command([b"GET", b"c0:k1"])
    verdict = _feed(_resp_oracle(), sent, b"+OK\r\n$3\r\nabd\r\n")
    assert verdict.status is Status.FAIL
    assert verdict.offset == 11
    assert "request 1 (GET c0:k1)" in verdict.reason
    assert "$3\\r\\nabc\\r\\n" in verdict.reason
    assert "$3\\r\\nabd" in verdict.reason


def test_RespModel_oracle_fails_a_missing_reply_at_the_end_of_the_exchange() -> None:
    sent = encode_command([b"PING"]) + encode_command([b"GET", b"k"])
    o = _resp_oracle()
    verdict = _feed(o, sent, b"+PONG\r\n$-", finish=False)
    assert verdict.pending
    assert verdict.offset == 9
    o.finish()
    verdict = o.verdict()
    assert verdict.failed
    assert verdict.offset == 9
    assert "1 reply owed, the first to request 1 (GET k)" in verdict.reason
    assert "$-1" in verdict.reason


def test_RespModel_oracle_fails_an_extra_reply_where_it_begins() -> None:
    verdict = _feed(_resp_oracle(), encode_command([b"PING"]), b"+PONG\r\n+PONG\r\n")
    assert verdict.failed
    assert verdict.offset == 7
    assert "bytes came that no request asked for" in verdict.reason
    assert "+PONG" in verdict.reason


def test_RespModel_oracle_fails_reordered_replies_at_the_first_byte_that_differs() -> None:
    sent = b"".join(
        encode_command(a)
        for a in ([b"SET", b"a", b"1"], [b"SET", b"b", b"2"], [b"GET", b"a"], [b"GET", b"b"])
    )
    verdict = _feed(_resp_oracle(), sent, b"+OK\r\n+OK\r\n$1\r\n2\r\n$1\r\n1\r\n")
    assert verdict.failed
    assert verdict.offset == 14
    assert "request 2 (GET a)" in verdict.reason


def test_RespModel_oracle_judges_an_unknown_command_by_its_prefix_only() -> None:
    sent = encode_command([b"FROB", b"a"])
    reply = b"-ERR unknown command 'FROB', with args beginning with: 'a' \r\n"
    assert _feed(_resp_oracle(), sent, reply).passed
    verdict = _feed(_resp_oracle(), encode_command([b"PING"]) + sent, b"+PONG\r\n-ERR unknowX\r\n")
    assert verdict.failed
    assert verdict.offset == 7  # the start of the reply: only a pattern is known
    assert "does not fit its pattern" in verdict.reason
    assert "request 1 (FROB a)" in verdict.reason


def test_RespModel_oracle_waits_for_a_pattern_reply_cut_at_every_byte() -> None:
    sent = encode_command([b"FROB"]) + encode_command([b"PING"])
    reply = b"-ERR unknown command 'FROB', with args beginning with: \r\n+PONG\r\n"
    for cut in range(len(reply) + 1):
        o = _resp_oracle()
        o.sent(sent)
        o.received(reply[:cut])
        assert o.verdict().status is (Status.PASS if cut == len(reply) else Status.PENDING)
        o.received(reply[cut:])
        o.finish()
        assert o.verdict().passed, cut


def test_RespModel_oracle_fails_a_pattern_line_that_never_ends() -> None:
    o = _resp_oracle()
    o.sent(encode_command([b"FROB"]))
    o.received(b"-ERR unknown command " + b"x" * (70 * 1024))
    verdict = o.verdict()
    assert verdict.failed
    assert verdict.offset == 0
    assert "without its CRLF" in verdict.reason


def test_RespModel_oracle_owes_nothing_for_an_empty_array() -> None:
    assert _feed(_resp_oracle(), b"*0\r\n" + encode_command([b"PING"]), b"+PONG\r\n").passed


def test_RespModel_oracle_refuses_bytes_that_are_not_requests() -> None:
    o = _resp_oracle()
    with pytest.raises(InvalidRequest, match="array of bulk strings"):
        o.sent(b"PING\r\n")
    with pytest.raises(InvalidRequest, match="SET with options"):
        _resp_oracle().sent(encode_command([b"SET", b"k", b"v", b"NX"]))


def test_unique_prefix_is_a_valid_prefix_of_its_own_each_time() -> None:
    prefixes = {unique_prefix(3) for _ in range(100)}
    assert len(prefixes) == 100
    for prefix in prefixes:
        assert prefix.endswith("-c3")
        assert (
            MemcachedModel()
            .encode([Set(0, b"v")], prefix=prefix)
            .startswith(b"set " + prefix.encode() + b":k0 ")
        )


def test_RespModel_encode_makes_keys_unique_to_the_connection() -> None:
    data = RespModel().encode([Command((b"GET", Key(2)))], prefix="run7-c3")
    assert data == encode_command([b"GET", b"run7-c3:k2"])
    for bad in ("", "a b", "é", "x" * 201, "a\nb"):
        with pytest.raises(ValueError, match="bad key prefix"):
            RespModel().encode([], prefix=bad)


# -- memcached ---------------------------------------------------------------------


def test_MemcachedModel_oracle_models_set_get_delete_incr() -> None:
    sent = (
        b"get k\r\nset k 7 0 3\r\na\r\n\r\nget k\r\ndelete k\r\ndelete k\r\n"
        b"incr n 1\r\nset n 0 0 2\r\n41\r\nincr n 1\r\nincr n x\r\nset w 0 0 3\r\nabc\r\n"
        b"incr w 1\r\nbogus\r\nget k n\r\n"
    )
    received = (
        b"END\r\nSTORED\r\nVALUE k 7 3\r\na\r\n\r\nEND\r\nDELETED\r\nNOT_FOUND\r\n"
        b"NOT_FOUND\r\nSTORED\r\n42\r\nCLIENT_ERROR invalid numeric delta argument\r\nSTORED\r\n"
        b"CLIENT_ERROR cannot increment or decrement non-numeric value\r\nERROR\r\n"
        b"VALUE n 0 2\r\n42\r\nEND\r\n"
    )
    assert _feed(_mc_oracle(), sent, received).passed


def test_MemcachedConnection_incr_pads_a_shorter_number_in_place_as_memcached_does() -> None:
    conn = MemcachedConnection()
    conn.items[b"k"] = (3, b"007")
    assert conn.apply(conn.parse_request(bytearray(b"incr k 1\r\n"))[0]) == Expected.exact(  # type: ignore[index]
        b"8\r\n"
    )
    assert conn.items[b"k"] == (3, b"8  ")
    conn.items[b"k"] = (0, b"18446744073709551615")
    conn.apply(conn.parse_request(bytearray(b"incr k 1\r\n"))[0])  # type: ignore[index]
    assert conn.items[b"k"] == (0, b"0" + b" " * 19)
    conn.items[b"k"] = (0, b"99")
    conn.apply(conn.parse_request(bytearray(b"incr k 1\r\n"))[0])  # type: ignore[index]
    assert conn.items[b"k"] == (0, b"100")


@pytest.mark.parametrize(
    ("text", "number"),
    [
        (b"12", 12),
        (b" 12", 12),
        (b"+12", 12),
        (b"-0", 0),
        (b"12\0a", 12),
        (b"12 x", 12),
        (b"-1", None),
        (b"12a", None),
        (b"", None),
        (b"-", None),
        (b"18446744073709551615", 2**64 - 1),
        (b"18446744073709551616", None),
    ],
)
def test_strtoull_reads_as_memcached_does(text: bytes, number: int | None) -> None:
    assert strtoull(text) == number


def test_MemcachedModel_oracle_judges_version_by_its_prefix() -> None:
    assert _feed(_mc_oracle(), b"version\r\n", b"VERSION 1.6.18\r\n").passed
    verdict = _feed(_mc_oracle(), b"get k\r\nversion\r\n", b"END\r\nVERSIO 1\r\n")
    assert verdict.failed
    assert verdict.offset == 5
    assert "a line beginning b'VERSION '" in verdict.reason


def test_MemcachedModel_oracle_frames_a_set_cut_at_every_byte() -> None:
    sent = b"set k 1 0 4\r\n\r\n\r\n\r\nget k\r\n"
    received = b"STORED\r\nVALUE k 1 4\r\n\r\n\r\n\r\nEND\r\n"
    for cut in range(len(sent) + 1):
        o = _mc_oracle()
        o.sent(sent[:cut])
        o.sent(sent[cut:])
        assert _feed(o, b"", received).passed, cut


def test_MemcachedModel_requests_refuse_values_over_the_item_limit() -> None:
    with pytest.raises(ValueError, match="at most 1000000 bytes"):
        MemcachedModel().requests(max_value=2_000_000)


def _stored(data: bytes) -> list[bytes]:
    connection, buf, values = MemcachedConnection(), bytearray(data), []
    while buf:
        parsed = connection.parse_request(buf)
        assert not isinstance(parsed, int)
        request, length = parsed
        del buf[:length]
        values += [request.data] if request.data is not None else []
    return values


@settings(max_examples=200)
@given(MemcachedModel().requests(max_size=24, max_value=64), st.integers(1, 3), st.randoms())
def test_MemcachedModel_never_stores_a_value_of_white_space_alone(
    requests: tuple[Request, ...], size: int, rng: random.Random
) -> None:
    """memcached's incr reads such a value past its end, into stale memory: undefined."""
    load = MemcachedModel().load_connection("c0")
    data = MemcachedModel().encode(requests, prefix="c0")
    data += b"".join(load.next_request(rng, size)[0] for _ in range(50))
    assert [value for value in _stored(data) if value.isspace()] == []


# -- any split, the same verdict ----------------------------------------------------


@dataclass(frozen=True)
class _Reply:
    start: int
    end: int
    match: Match


def _replies(conn: ConnectionModel, stream: bytes) -> tuple[bytes, list[_Reply]]:
    """What a correct server sends for ``stream``: a pattern's line filled in."""
    buf = bytearray(stream)
    out = bytearray()
    spans = []
    while buf:
        parsed = conn.parse_request(buf)
        assert not isinstance(parsed, int)
        request, length = parsed
        del buf[:length]
        expected = conn.apply(request)
        if expected is None or not expected.data:
            continue
        start = len(out)
        out += expected.data if expected.match is Match.EXACT else expected.data + b"x y\r\n"
        spans.append(_Reply(start, len(out), expected.match))
    return bytes(out), spans


def _cuts(data: bytes, sizes: Sequence[int]) -> list[bytes]:
    parts, pos, i = [], 0, 0
    while pos < len(data):
        size = sizes[i % len(sizes)] if sizes else len(data)
        parts.append(data[pos : pos + size])
        pos += size
        i += 1
    return parts


_CONNECTIONS: dict[str, Callable[[], ConnectionModel]] = {
    "resp": RespConnection,
    "memcached": MemcachedConnection,
}


@st.composite
def _exchanges(draw: st.DrawFn) -> tuple[str, bytes, bytes, list[_Reply]]:
    name = draw(st.sampled_from(sorted(_CONNECTIONS)))
    model = MODELS[name]()
    requests = draw(model.requests(max_size=12, max_value=300))
    sent = model.encode(requests, prefix="c0")
    received, spans = _replies(_CONNECTIONS[name](), sent)
    return name, sent, received, spans


def _mutations(received: bytes) -> st.SearchStrategy[tuple[str, int]]:
    kinds = ["none", "extra"]
    if received:
        kinds += ["flip", "cut"]
    return st.tuples(st.sampled_from(kinds), st.integers(0, max(0, len(received) - 1)))


def _mutate(received: bytes, kind: str, at: int) -> bytes:
    if kind == "flip":
        return received[:at] + bytes([received[at] ^ 0x01]) + received[at + 1 :]
    if kind == "cut":
        return received[:at]
    if kind == "extra":
        return received + b"+OK\r\n"
    return received


def _whole(name: str, sent: bytes, received: bytes) -> Judgement:
    return _feed(MODELS[name]().oracle(), sent, received)


@_SLOW
@given(
    _exchanges().flatmap(lambda x: st.tuples(st.just(x), _mutations(x[2]))),
    st.lists(st.integers(1, 64), max_size=6),
    st.lists(st.integers(1, 64), max_size=6),
)
def test_ReplyStreamOracle_gives_the_same_verdict_for_any_split(
    exchange: tuple[tuple[str, bytes, bytes, list[_Reply]], tuple[str, int]],
    send_sizes: list[int],
    recv_sizes: list[int],
) -> None:
    (name, sent, good, spans), (kind, at) = exchange
    received = _mutate(good, kind, at)
    whole = _whole(name, sent, received)
    o = MODELS[name]().oracle()
    for part in _cuts(sent, send_sizes):
        o.sent(part)
    for part in _cuts(received, recv_sizes):
        o.received(part)
    o.finish()
    assert o.verdict() == whole
    if kind == "none":
        assert whole.passed
    elif kind == "extra":
        assert whole.failed
        assert whole.offset == len(good)
    elif kind == "cut":
        assert whole.failed
        assert whole.offset == at
    else:
        span = next(s for s in spans if s.start <= at < s.end)
        if span.match is Match.EXACT:
            assert whole.failed
            assert whole.offset == at
        # A pattern's line may take another byte, or lose its CRLF and take the next reply.


@_SLOW
@given(_exchanges(), st.data())
def test_ReplyStreamOracle_passes_replies_interleaved_with_requests(
    exchange: tuple[str, bytes, bytes, list[_Reply]], data: st.DataObject
) -> None:
    """Each reply may arrive as soon as its request is whole: pipelined or in lock step."""
    name, sent, received, _ = exchange
    conn = _CONNECTIONS[name]()
    o = MODELS[name]().oracle()
    buf = bytearray(sent)
    out = 0
    while buf:
        parsed = conn.parse_request(buf)
        assert not isinstance(parsed, int)
        request, length = parsed
        expected = conn.apply(request)
        piece = bytes(buf[:length])
        del buf[:length]
        cut = data.draw(st.integers(0, len(piece)))
        o.sent(piece[:cut])
        o.sent(piece[cut:])
        if expected is not None and expected.data:
            size = len(expected.data) if expected.match is Match.EXACT else len(expected.data) + 5
            reply = received[out : out + size]
            out += size
            split = data.draw(st.integers(0, len(reply)))
            o.received(reply[:split])
            o.received(reply[split:])
    o.finish()
    assert o.verdict().passed, o.verdict()


def test_ReplyStreamOracle_judges_16_MiB_streams_quickly() -> None:
    value = random.Random(3).randbytes(16 * 1024 * 1024)
    sent = encode_command([b"SET", b"k", value]) + encode_command([b"GET", b"k"])
    reply = b"+OK\r\n$%d\r\n%s\r\n" % (len(value), value)
    begun = time.monotonic()
    o = _resp_oracle()
    for i in range(0, len(sent), 65536):
        o.sent(sent[i : i + 65536])
    for i in range(0, len(reply), 65536):
        o.received(reply[i : i + 65536])
    o.finish()
    assert o.verdict().passed
    o = _resp_oracle()
    o.sent(sent)
    bad = bytearray(reply)
    bad[-100] ^= 0xFF
    for i in range(0, len(bad), 65536):
        o.received(bytes(bad[i : i + 65536]))
    assert o.verdict().offset == len(reply) - 100
    assert time.monotonic() - begun < 10.0


# -- load ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("size", [1, 64, 100_000])
def test_load_connection_owes_what_the_oracle_expects(name: str, size: int) -> None:
    model = load_model(name)
    load = model.load_connection("load-c5")
    assert isinstance(load, LoadConnection)
    rng = random.Random(size)
    oracle = model.oracle()
    owed = bytearray()
    for _ in range(200 if size < 100_000 else 20):
        request, reply = load.next_request(rng, size)
        oracle.sent(request)
        oracle.received(reply)
        owed += reply
        assert not oracle.verdict().failed, oracle.verdict()
    oracle.finish()
    assert oracle.verdict().passed
    if Capability.REPLIES in model.capabilities:
        assert owed


def test_load_connection_of_resp_uses_its_prefix_and_both_replies_of_incr() -> None:
    load = RespModel().load_connection("p9")
    rng = random.Random(1)
    requests = b"".join(load.next_request(rng, 8)[0] for _ in range(400))
    assert b"p9:k0" in requests
    assert b"p9:k1" in requests
    assert b"INCR" in requests


# -- names --------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(MODELS))
def test_load_model_and_model_name_round_trip_and_pickle(name: str) -> None:
    model = load_model(name)
    assert isinstance(model, ProtocolModel)
    assert model.name == name
    assert model_name(model) == name
    again = pickle.loads(pickle.dumps(model))
    assert type(again) is type(model)
    load = pickle.loads(pickle.dumps(model.load_connection("c1")))
    assert isinstance(load, LoadConnection)


def test_echo_and_discard_models_use_the_oracles_themselves() -> None:
    assert type(EchoModel().oracle()) is EchoOracle
    assert type(DiscardModel().oracle()) is DiscardOracle


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("nope", "unknown protocol 'nope': give echo, discard, resp, memcached"),
        ("no_such_module_xyz:Model", "cannot import no_such_module_xyz (ModuleNotFoundError"),
        ("conformance.protocols:NoSuchModel", "conformance.protocols has no NoSuchModel"),
        ("conformance.oracle:EchoOracle", "EchoOracle is not a protocol model"),
        ("tests.conformance.test_protocols:NeedsArguments", "NeedsArguments() failed (TypeError"),
        ("tests.conformance.test_protocols:BadCapabilities", "members of conformance.protocols"),
        (":Model", "unknown protocol"),
    ],
)
def test_load_model_says_what_is_wrong(spec: str, message: str) -> None:
    with pytest.raises(UsageError) as info:
        load_model(spec)
    assert message in str(info.value)


def test_load_model_takes_a_class_or_a_model_object() -> None:
    by_class = load_model("conformance.protocols.resp:RespModel")
    assert isinstance(by_class, RespModel)
    assert model_name(by_class) == "resp"
    assert isinstance(load_model("tests.conformance.test_protocols:A_MODEL"), RespModel)


def test_model_name_refuses_a_class_other_processes_cannot_import() -> None:
    class Local(RespModel):
        name = "local"

    with pytest.raises(ValueError, match="inside a function"):
        model_name(Local())


class NeedsArguments(RespModel):
    def __init__(self, size: int) -> None:
        self.size = size


class BadCapabilities(RespModel):
    capabilities = frozenset({"replies"})  # type: ignore[arg-type]


A_MODEL = RespModel()


# -- strategies ------------------------------------------------------------------------


def test_requests_shrink_to_one_small_request() -> None:
    from hypothesis import find

    found = find(
        MemcachedModel().requests(max_value=100_000),
        lambda rs: any(isinstance(r, Set) and len(r.value) > 5000 for r in rs),
        settings=settings(max_examples=2000, database=None),
    )
    assert len(found) == 1
    assert isinstance(found[0], Set)
    assert len(found[0].value) == 5001
    assert found[0].key == 0
    assert found[0].flags == 0


def test_models_and_their_load_need_no_hypothesis() -> None:
    # A load host has the standard library only: a model draws requests with
    # Hypothesis, and its load does not.
    code = (
        "import random, sys\n"
        "sys.modules['hypothesis'] = None\n"
        "from conformance.protocols import MODELS, load_model, unique_prefix\n"
        "import conformance.load\n"
        "for name in MODELS:\n"
        "    load_model(name).load_connection(unique_prefix(0)).next_request(random.Random(0), 8)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
