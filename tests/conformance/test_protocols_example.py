"""A protocol model as a user writes one: a line protocol in about 40 lines, and its tests.

``SAY <word>`` is answered with the word in capitals, ``COUNT`` with how many
lines this connection has sent, both CRLF-terminated. Run it as
``--protocol tests.conformance.test_protocols_example:ShoutModel``.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from hypothesis import given
from hypothesis import strategies as st

from conformance.protocols import (
    Capability,
    Expected,
    ReplyModel,
    load_model,
    model_name,
    skip_reason,
)


class ShoutConnection:
    """The server as one connection sees it: lines, and how many came."""

    def __init__(self) -> None:
        self.lines = 0

    def parse_request(self, buf: bytearray) -> tuple[bytes, int] | int:
        end = buf.find(b"\r\n")
        return (bytes(buf[:end]), end + 2) if end >= 0 else len(buf) + 1

    def apply(self, line: bytes) -> Expected:
        self.lines += 1
        if line == b"COUNT":
            return Expected.exact(b"%d\r\n" % self.lines)
        return Expected.exact(line.removeprefix(b"SAY ").upper() + b"\r\n")

    def describe(self, line: bytes) -> str:
        return line[:40].decode("ascii", "backslashreplace")


class ShoutModel(ReplyModel[bytes]):
    name = "shout"
    capabilities = frozenset({Capability.REPLIES, Capability.HALF_CLOSE})
    lacks = {Capability.ANY_BYTES: "requests are lines"}

    def connection(self) -> ShoutConnection:
        return ShoutConnection()

    def request(self, max_value: int) -> st.SearchStrategy[bytes]:
        words = st.binary(max_size=max_value).map(lambda b: bytes(97 + c % 26 for c in b))
        return st.one_of(st.just(b"COUNT"), words.map(lambda w: b"SAY " + w))

    def encode_request(self, line: bytes, prefix: bytes) -> bytes:
        return line + b"\r\n"

    def load_request(self, rng: random.Random, size: int, prefix: bytes) -> bytes:
        return b"SAY " + bytes(rng.choices(b"abcdefxyz", k=size)) + b"\r\n"


# -- its tests ---------------------------------------------------------------------------


def test_ShoutModel_loads_by_name_and_names_itself() -> None:
    model = load_model("tests.conformance.test_protocols_example:ShoutModel")
    assert isinstance(model, ShoutModel)
    assert model_name(model) == "tests.conformance.test_protocols_example:ShoutModel"
    assert skip_reason(model, Capability.ANY_BYTES) == (
        "does not apply: the shout model does not promise any byte string as a valid "
        "request stream (requests are lines)"
    )


def _answers(lines: Sequence[bytes]) -> bytes:
    return b"".join(
        b"%d\r\n" % (i + 1) if line == b"COUNT" else line[4:].upper() + b"\r\n"
        for i, line in enumerate(lines)
    )


@given(ShoutModel().requests(), st.integers(0, 200))
def test_ShoutModel_oracle_passes_right_answers_cut_anywhere(
    lines: tuple[bytes, ...], cut: int
) -> None:
    o = ShoutModel().oracle()
    sent = ShoutModel().encode(lines, prefix="c0")
    reply = _answers(lines)
    o.sent(sent[:cut])
    o.sent(sent[cut:])
    o.received(reply[:cut])
    o.received(reply[cut:])
    o.finish()
    assert o.verdict().passed


def test_ShoutModel_oracle_fails_a_wrong_count_at_its_byte() -> None:
    o = ShoutModel().oracle()
    o.sent(b"SAY hi\r\nCOUNT\r\n")
    o.received(b"HI\r\n3\r\n")
    verdict = o.verdict()
    assert verdict.failed
    assert verdict.offset == 4
    assert "request 1 (COUNT)" in verdict.reason


def test_ShoutModel_load_owes_the_word_in_capitals() -> None:
    load = ShoutModel().load_connection("c1")
    request, reply = load.next_request(random.Random(1), 5)
    assert request[4:-2].upper() + b"\r\n" == reply
