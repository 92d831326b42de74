"""The HTML report: one self-contained page, parsed; rendered by Chromium where installed."""

from __future__ import annotations

import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from conformance.checks import CATALOGUE
from conformance.reports.failure import ByteDivergence, Excerpt, FailureKind, FailureReport
from conformance.reports.html_report import render_html
from conformance.run.results import CheckResult, RunResults, TargetRun, Verdict

PASS, FAIL, NON_STRICT, SKIPPED = (
    Verdict.PASS,
    Verdict.FAIL,
    Verdict.NON_STRICT,
    Verdict.SKIPPED,
)

CHROMIUM = Path("/usr/bin/chromium")

REPORT = FailureReport(
    check_line="ECHO-BASIC-4 (MUST, basic; RFC 862): NUL-heavy payloads come back unchanged",
    kind=FailureKind.DIVERGENCE,
    message="the echo stopped",
    replay="reactor-conformance run --target 127.0.0.1:9 --checks ECHO-BASIC-4",
    step="exchange 1 on c1",
    connection="connection c1: sent 4 bytes, received 1 bytes, 2 events over 0.010s, "
    "ended: FIN from the server",
    divergence=ByteDivergence(
        "first divergent offset",
        1,
        "missing bytes",
        Excerpt(4, 0, ("61", "00", "62", "63"), 1),
        Excerpt(1, 0, ("61", "end"), 1),
    ),
)


class PageParser(HTMLParser):
    """Collects what the tests look at: ids' text, table headings, rows, marked bytes, assets."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[tuple[str, str | None]] = []
        self.texts: dict[str, list[str]] = {}
        self.headings: list[str] = []
        self.row_ids: list[str] = []
        self.marked: list[str] = []
        self.external: list[str] = []
        self.selects: dict[str, list[str]] = {}
        self._in_head = False
        self._in_mark = False
        self._select: str | None = None

    @classmethod
    def parse(cls, text: str) -> PageParser:
        parser = cls()
        parser.feed(text)
        parser.close()
        return parser

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attr = dict(attrs)
        for name in ("src", "href"):
            value = attr.get(name)
            if value is not None and not value.startswith("#"):
                self.external.append(value)
        if tag == "link":
            self.external.append(str(attr.get("href")))
        if tag == "select":
            self._select = attr.get("id")
            self.selects[str(self._select)] = []
        if tag == "option" and self._select is not None:
            self.selects[self._select].append(str(attr.get("value")))
        if tag == "th" and any(t == "thead" for t, _ in self.stack):
            self.headings.append("")
            self._in_head = True
        if tag == "tr" and any(i == "checks" for _, i in self.stack) and attr.get("id"):
            self.row_ids.append(str(attr["id"]))
        self._in_mark = tag == "td" and attr.get("class") == "mark"
        if self._in_mark:
            self.marked.append("")
        if tag not in ("br", "meta", "input"):
            self.stack.append((tag, attr.get("id")))

    def handle_endtag(self, tag: str) -> None:
        if tag == "select":
            self._select = None
        if tag == "th":
            self._in_head = False
        if tag == "td":
            self._in_mark = False
        while self.stack:
            top, _ = self.stack.pop()
            if top == tag:
                break

    def handle_data(self, data: str) -> None:
        for _, ident in self.stack:
            if ident is not None:
                self.texts.setdefault(ident, []).append(data)
        if self._in_head:
            self.headings[-1] += data
        if self._in_mark:
            self.marked[-1] += data

    def text_of(self, ident: str) -> str:
        return " ".join("".join(self.texts.get(ident, [])).split())


def sample_run() -> RunResults:
    checks = list(CATALOGUE[:4])
    one = TargetRun("alpha", "address", "127.0.0.1:9", "127.0.0.1:9", "127.0.0.1:9", "replay-a")
    two = TargetRun("beta<&>", "reference", "single", "127.0.0.1:10", "reference single server")
    verdicts = [(PASS, PASS), (NON_STRICT, PASS), (SKIPPED, PASS), (FAIL, PASS)]
    for check, (first, second) in zip(checks, verdicts, strict=True):
        failure = REPORT if first in (FAIL, NON_STRICT) else None
        one.results[check.id] = CheckResult(check, first, 0.5, failure, replay=one.replay_of(check))
        two.results[check.id] = CheckResult(check, second, 0.25)
    return RunResults(checks, [one, two], started=1_700_000_000.0, finished=1_700_000_003.0)


def test_render_html_is_self_contained_with_summary_table_and_filters() -> None:
    run = sample_run()
    page = PageParser.parse(render_html(run))
    assert page.external == []
    summary = page.text_of("summary")
    assert summary.startswith("FAILED: 5 passed, 1 failed, 1 non-strict, 1 skipped")
    assert "alpha" in summary
    assert "beta<&>" in summary  # Escaped in the page, read back as text.
    assert page.headings[4:] == ["alpha", "beta<&>"]
    assert page.row_ids == [f"c-{c.id}" for c in run.checks]
    assert page.selects["filter-verdict"] == ["", *(v.value for v in Verdict)]
    assert page.selects["filter-category"][0] == ""
    assert set(page.selects["filter-category"][1:]) == {c.category for c in run.checks}


def test_render_html_shows_each_failure_with_hex_and_replay() -> None:
    run = sample_run()
    page = PageParser.parse(render_html(run))
    failures = page.text_of("failures")
    assert failures.count("against alpha") == 2  # The FAIL and the NON-STRICT.
    assert "Divergence at step exchange 1 on c1: the echo stopped" in failures
    assert "expected (sent) (4 bytes) @0x0" in failures
    assert page.marked == ["00", "end"] * 2
    assert "Replay: replay-a --checks " + run.checks[3].id in failures


def test_render_html_passing_run_says_passed_and_lists_no_failure() -> None:
    check = CATALOGUE[0]
    target = TargetRun("only", "address", "h:1", "h:1", "h:1")
    target.results[check.id] = CheckResult(check, PASS, 0.1)
    page = PageParser.parse(render_html(RunResults([check], [target])))
    assert page.text_of("summary").startswith("PASSED: 1 passed, 0 failed")
    assert page.text_of("failures") == "FailuresNone."


@pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is not installed")
def test_render_html_in_headless_chromium_shows_the_summary(tmp_path: Path) -> None:
    page = tmp_path / "report.html"
    page.write_text(render_html(sample_run()), encoding="utf-8")
    home = tmp_path / "home"
    home.mkdir()
    result = subprocess.run(
        [
            str(CHROMIUM),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            f"--user-data-dir={home}",
            "--dump-dom",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={"HOME": str(home), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr
    dom = PageParser.parse(result.stdout)
    assert dom.text_of("summary").startswith("FAILED: 5 passed, 1 failed, 1 non-strict, 1 skipped")
    # The script ran: it counted the rows the filters show.
    assert dom.text_of("shown") == "4"


def test_chromium_is_found_only_where_installed() -> None:
    assert CHROMIUM.exists() == (shutil.which("chromium") == str(CHROMIUM))
