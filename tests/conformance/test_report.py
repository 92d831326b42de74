"""Bug reports: rendered from a failure, and read back into their fields."""

from __future__ import annotations

from conformance.harness import Divergence, Ending, Event, StepTimeout, Transcript
from conformance.oracle import Status, Verdict
from conformance.report import hex_excerpt, parse_excerpt, parse_failure, render_failure


def _report(failure: Divergence | StepTimeout, *others: Transcript) -> str:
    assert failure.transcript is not None
    return render_failure(
        check_line="ECHO-X-1 (MUST, basic; RFC 862): a title",
        failure=failure,
        transcripts=[failure.transcript, *others],
        replay="reactor-conformance run --target 127.0.0.1:7 --checks ECHO-X-1",
    )


def test_parse_failure_reads_back_the_divergence_of_a_rendered_report() -> None:
    sent = bytearray(b"ab\0cd" * 10)
    transcript = Transcript("c1", sent, bytearray(b"abX"), [Event(0.1, "send", 50)], Ending.FIN)
    failure = Divergence(
        "byte 2 differs",
        step="exchange 'one'",
        transcript=transcript,
        verdict=Verdict(Status.FAIL, 2, "expected 0x00, got 0x58"),
    )
    fields = parse_failure(_report(failure, Transcript("c2")))
    assert fields["kind"] == "Divergence"
    assert fields["step"] == "exchange 'one'"
    assert fields["message"] == "byte 2 differs"
    assert fields["connection"].startswith("connection c1: sent 50 bytes, received 3 bytes")
    divergence = fields["divergence"]
    assert divergence["what"] == "first divergent offset"
    assert divergence["offset"] == 2
    assert divergence["reason"] == "expected 0x00, got 0x58"
    assert divergence["sent"] == {"size": 50, "excerpt": hex_excerpt(sent, 2)}
    assert divergence["received"]["size"] == 3
    assert fields["events"] == "0.100s send 50"
    assert fields["other_connections"] == [
        "connection c2: sent 0 bytes, received 0 bytes, 0 events over 0.000s, ended: still open"
    ]
    assert fields["replay"] == "reactor-conformance run --target 127.0.0.1:7 --checks ECHO-X-1"


def test_parse_failure_without_a_divergence_leaves_it_none() -> None:
    transcript = Transcript("c1", bytearray(b"x"), bytearray(), [], Ending.TIMEOUT)
    fields = parse_failure(_report(StepTimeout("did not complete", transcript=transcript)))
    assert fields["kind"] == "StepTimeout"
    assert fields["step"] is None
    assert fields["divergence"] is None


def test_parse_excerpt_marks_the_divergent_cell_and_the_end() -> None:
    assert parse_excerpt(hex_excerpt(b"abcdef", 2, context=1)) == (1, ["62", "63"], 1)
    assert parse_excerpt(hex_excerpt(b"ab", 2)) == (0, ["61", "62", "end"], 2)
