"""Bug reports: built once as data, rendered as text, carried as plain data."""

from __future__ import annotations

import json

from conformance.harness import Divergence, Ending, Event, StepTimeout, Transcript
from conformance.oracle import Judgement, Status
from conformance.reports.failure import Excerpt, FailureKind, FailureReport, hex_excerpt

REPLAY = "reactor-conformance run --target 127.0.0.1:7 --checks ECHO-X-1"


def _report(failure: Divergence | StepTimeout, *others: Transcript) -> FailureReport:
    assert failure.transcript is not None
    return FailureReport.build(
        check_line="ECHO-X-1 (MUST, basic; RFC 862): a title",
        failure=failure,
        transcripts=[failure.transcript, *others],
        replay=REPLAY,
    )


def _divergence() -> tuple[bytearray, Divergence]:
    sent = bytearray(b"ab\0cd" * 10)
    transcript = Transcript("c1", sent, bytearray(b"abX"), [Event(0.1, "send", 50)], Ending.FIN)
    failure = Divergence(
        "byte 2 differs",
        step="exchange 'one'",
        transcript=transcript,
        verdict=Judgement(Status.FAIL, 2, "expected 0x00, got 0x58"),
    )
    return sent, failure


def test_FailureReport_build_keeps_the_divergence_as_fields() -> None:
    sent, failure = _divergence()
    fields = _report(failure, Transcript("c2")).fields()
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
    assert fields["replay"] == REPLAY


def test_FailureReport_render_is_a_bug_report() -> None:
    _, failure = _divergence()
    lines = _report(failure).render().splitlines()
    assert lines[0] == "FAILED ECHO-X-1 (MUST, basic; RFC 862): a title"
    assert lines[1] == "  Divergence at step \"exchange 'one'\": byte 2 differs"
    assert "  first divergent offset: 2 (expected 0x00, got 0x58)" in lines
    assert "  received (3 bytes) @0x0: 61 62 [58]" in lines
    assert lines[-1] == f"  replay: {REPLAY}"


def test_FailureReport_travels_as_plain_data() -> None:
    _, failure = _divergence()
    others = [Transcript(f"c{i}") for i in range(2, 9)]
    report = _report(failure, *others)
    data = json.loads(json.dumps(report.to_data()))
    assert FailureReport.from_data(data) == report
    assert report.more == len(others) - len(report.others)
    assert "  ... and 3 more connections" in report.render().splitlines()


def test_FailureReport_without_a_divergence_shows_the_bytes_seen() -> None:
    transcript = Transcript("c1", bytearray(b"x"), bytearray(), [], Ending.TIMEOUT)
    report = _report(StepTimeout("did not complete", transcript=transcript))
    assert report.kind is FailureKind.STEP_TIMEOUT
    assert report.step is None
    assert report.divergence is None
    assert report.fields()["divergence"] is None
    assert report.bytes_seen[0] == "sent     1 bytes, starting b'x'"


def test_Excerpt_marks_the_divergent_cell_and_the_end() -> None:
    assert Excerpt.around(b"abcdef", 2, context=1) == Excerpt(6, 1, ("62", "63"), 1)
    assert Excerpt.around(b"ab", 2) == Excerpt(2, 0, ("61", "62", "end"), 2)
    assert hex_excerpt(b"ab", 2) == "@0x0: 61 62 [end]"
