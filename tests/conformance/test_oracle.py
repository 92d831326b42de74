"""Oracles, without a network: fed bytes, they say PASS, FAIL with an offset, or PENDING."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from conformance.errors import UsageError
from conformance.oracle import (
    DiscardOracle,
    EchoOracle,
    Oracle,
    OracleError,
    ReplyOracle,
    Status,
    first_difference,
    guarded,
)
from conformance.protocols import (
    Capability,
    EchoModel,
    OracleModel,
    load_model,
    model_name,
    run_model,
)
from tests.conformance.example_oracles import ReceivedRaises


def test_EchoOracle_is_pending_until_everything_came_back() -> None:
    o = EchoOracle()
    o.sent(b"ab")
    o.received(b"a")
    verdict = o.verdict()
    assert verdict.pending
    assert verdict.offset == 1
    o.received(b"b")
    assert o.verdict().passed


def test_EchoOracle_passes_an_empty_exchange() -> None:
    o = EchoOracle()
    o.finish()
    assert o.verdict().passed


def test_EchoOracle_fails_at_the_first_wrong_byte() -> None:
    o = EchoOracle()
    o.sent(b"hello\0world")
    o.received(b"hello")
    o.received(b"\0wXrld")
    verdict = o.verdict()
    assert verdict.status is Status.FAIL
    assert verdict.offset == 7
    assert "0x6f" in verdict.reason
    assert "0x58" in verdict.reason


def test_EchoOracle_failure_sticks_even_if_more_bytes_come() -> None:
    o = EchoOracle()
    o.sent(b"abc")
    o.received(b"x")
    o.received(b"bc")
    assert o.verdict().offset == 0
    assert o.verdict().failed


def test_EchoOracle_fails_on_extra_bytes() -> None:
    o = EchoOracle()
    o.sent(b"abc")
    o.received(b"abcd")
    verdict = o.verdict()
    assert verdict.failed
    assert verdict.offset == 3
    assert "more than were sent" in verdict.reason


def test_EchoOracle_turns_pending_into_failure_when_finished() -> None:
    o = EchoOracle()
    o.sent(b"abcdef")
    o.received(b"abc")
    assert o.verdict().pending
    o.finish()
    verdict = o.verdict()
    assert verdict.failed
    assert verdict.offset == 3
    assert "3 of 6 bytes never echoed" in verdict.reason


def test_EchoOracle_compares_large_streams_chunk_by_chunk() -> None:
    data = bytes(range(256)) * 8192  # 2 MiB
    o = EchoOracle()
    o.sent(data)
    for i in range(0, len(data), 65536):
        o.received(data[i : i + 65536])
    assert o.verdict().passed
    o.received(b"\0")
    assert o.verdict().offset == len(data)


def test_DiscardOracle_passes_silence_and_fails_any_reply() -> None:
    o = DiscardOracle()
    o.sent(b"x" * 100)
    assert o.verdict().passed
    o.received(b"y")
    verdict = o.verdict()
    assert verdict.failed
    assert verdict.offset == 0


@given(
    prefix=st.binary(max_size=10_000),
    a=st.binary(max_size=50),
    b=st.binary(max_size=50),
)
def test_first_difference_finds_the_first_differing_offset(
    prefix: bytes, a: bytes, b: bytes
) -> None:
    left, right = prefix + a, prefix + b
    expected = next(
        (i for i, (x, y) in enumerate(zip(left, right, strict=False)) if x != y),
        min(len(left), len(right)),
    )
    assert first_difference(left, right) == expected


@given(data=st.binary(max_size=2000), cuts=st.lists(st.integers(0, 2000), max_size=10))
def test_EchoOracle_passes_any_split_of_a_correct_echo(data: bytes, cuts: list[int]) -> None:
    o = EchoOracle()
    o.sent(data)
    edges = sorted({0, len(data), *(c for c in cuts if c <= len(data))})
    for start, stop in zip(edges, edges[1:], strict=False):
        o.received(data[start:stop])
        assert not o.verdict().failed
    o.finish()
    assert o.verdict().passed


def test_an_oracle_is_a_model_of_the_builtins_or_a_user_class() -> None:
    assert type(run_model(oracle="echo")) is EchoModel
    discard = run_model(oracle="discard")
    assert isinstance(discard, OracleModel)
    assert discard.factory is DiscardOracle
    user = run_model(oracle="conformance.oracle:EchoOracle")
    assert isinstance(user, OracleModel)
    assert isinstance(user.oracle(), Oracle)
    assert user.capabilities == EchoModel.capabilities  # It owes replies, as echo does.
    assert Capability.REPLIES not in discard.capabilities


def test_a_model_of_an_oracle_is_named_oracle_and_its_spec() -> None:
    discard = load_model("oracle:discard")
    assert isinstance(discard, OracleModel)
    assert discard.factory is DiscardOracle
    assert model_name(discard) == "oracle:discard"
    assert model_name(load_model("oracle:echo")) == "echo"


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("nonsense", "package.module:Class"),
        ("no_such_module_xyz:Oracle", "cannot import"),
        ("conformance.oracle:Nothing", "conformance.oracle has no Nothing"),
        ("conformance.oracle:Judgement", "failed"),
        ("conformance.errors:UsageError", "needs methods"),
    ],
)
def test_an_oracle_that_cannot_be_loaded_is_one_line(spec: str, needle: str) -> None:
    with pytest.raises(UsageError) as info:
        run_model(oracle=spec)
    message = str(info.value)
    assert message.startswith(f"bad oracle {spec!r}: ")
    assert needle in message
    assert "\n" not in message
    if ":" in spec:  # The model's own name for it says the same.
        with pytest.raises(UsageError, match="^bad oracle .*" + needle):
            load_model(f"oracle:{spec}")


@pytest.mark.parametrize(("factory", "owed"), [(EchoOracle, b"abc\0"), (DiscardOracle, b"")])
def test_ReplyOracle_expected_reply_says_what_is_owed_and_changes_nothing(
    factory: type[EchoOracle] | type[DiscardOracle], owed: bytes
) -> None:
    o = factory()
    assert isinstance(o, ReplyOracle)
    assert o.expected_reply(b"ab") + o.expected_reply(b"c\0") == o.expected_reply(b"abc\0") == owed
    assert o.verdict().passed


class LoudEcho(EchoOracle):
    """A user's oracle, named by module:Class."""


def test_the_model_of_a_user_oracle_is_read_back_by_its_name() -> None:
    model = run_model(oracle=f"{__name__}:LoudEcho")
    assert model_name(model) == f"oracle:{__name__}:LoudEcho"
    again = load_model(model_name(model))
    assert isinstance(again, OracleModel)
    assert again.factory is LoudEcho


class _Sulks(EchoOracle):
    """A user's oracle whose own code fails when a byte comes back."""

    def received(self, data: bytes) -> None:
        raise KeyError("sulk")


class _Shouts(_Sulks):
    def expected_reply(self, data: bytes) -> bytes:
        raise ValueError("no reply")


def test_guarded_turns_what_a_user_oracle_raises_into_OracleError() -> None:
    o = guarded(_Sulks)()
    o.sent(b"ab")
    assert o.verdict().pending
    with pytest.raises(OracleError, match=r"_Sulks raised in received\(\): KeyError: 'sulk'"):
        o.received(b"a")
    assert not isinstance(guarded(ReceivedRaises)(), ReplyOracle)  # None where it had none.
    reply = guarded(_Shouts)()
    assert isinstance(reply, ReplyOracle)
    with pytest.raises(OracleError, match=r"raised in expected_reply\(\): ValueError"):
        reply.expected_reply(b"x")
    assert guarded(EchoOracle) is EchoOracle  # The suite's own code: no call in between.


def test_model_name_of_an_oracle_is_a_name_that_loads_back_to_the_same_factory() -> None:
    assert model_name(run_model(oracle="echo")) == "echo"
    assert model_name(run_model(oracle=f"{__name__}:_Sulks")) == f"oracle:{__name__}:_Sulks"

    class Local(EchoOracle):
        pass

    with pytest.raises(ValueError, match="inside a function"):  # No other process can make it.
        model_name(OracleModel(Local, "Local"))


def test_Verdict_is_the_old_name_of_Judgement_for_users_oracles() -> None:
    import conformance.oracle

    assert conformance.oracle.Verdict is conformance.oracle.Judgement
    assert EchoOracle().verdict() == conformance.oracle.Verdict(Status.PASS)
