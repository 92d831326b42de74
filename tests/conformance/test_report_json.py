"""A run against two targets side by side writes JSON, HTML and JUnit reports that agree."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from typing import Any
from xml.etree import ElementTree

import jsonschema
import pytest

from conformance.reports.json_report import FORMAT, load_schema
from tests.conformance.support import ASYNCIO_ECHO, broken_spawn, run_cli, spawn_command
from tests.conformance.test_report_html import PageParser

CHECKS = ["ECHO-BASIC-1", "ECHO-PARTIAL-2"]


@dataclass(frozen=True)
class Run:
    result: subprocess.CompletedProcess[str]
    report: dict[str, Any]
    html: str
    junit: ElementTree.Element


@pytest.fixture(scope="module")
def side_by_side(tmp_path_factory: pytest.TempPathFactory) -> Run:
    out = tmp_path_factory.mktemp("reports")
    result = run_cli(
        "run",
        "--spawn",
        spawn_command(ASYNCIO_ECHO),
        "--spawn",
        broken_spawn("truncates_at_nul"),
        "--checks",
        ",".join(CHECKS),
        "-n",
        "2",
        "--report-json",
        str(out / "report.json"),
        "--report-html",
        str(out / "report.html"),
        "--junitxml",
        str(out / "junit.xml"),
    )
    assert result.returncode == 1, result.stdout + result.stderr
    return Run(
        result,
        json.loads((out / "report.json").read_text()),
        (out / "report.html").read_text(),
        ElementTree.parse(out / "junit.xml").getroot(),
    )


def validator() -> jsonschema.Draft202012Validator:
    schema = load_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())


def test_report_json_is_valid_against_the_schema(side_by_side: Run) -> None:
    validator().validate(side_by_side.report)
    assert side_by_side.report["format"] == FORMAT


def test_report_json_schema_rejects_a_wrong_verdict_and_a_missing_field(side_by_side: Run) -> None:
    broken = json.loads(json.dumps(side_by_side.report))
    broken["targets"][0]["results"][0]["verdict"] = "MAYBE"
    with pytest.raises(jsonschema.ValidationError):
        validator().validate(broken)
    del broken["targets"][0]["results"][0]["replay"]
    assert len(list(validator().iter_errors(broken))) == 2


def test_report_json_has_each_target_side_by_side(side_by_side: Run) -> None:
    report = side_by_side.report
    assert report["ok"] is False
    assert [c["id"] for c in report["checks"]] == CHECKS
    echo, broken = report["targets"]
    assert (echo["name"], broken["name"]) == ("asyncio_echo", "truncates_at_nul")
    assert echo["ok"] is True
    assert echo["summary"] == {"passed": 2, "failed": 0, "non_strict": 0, "skipped": 0, "errors": 0}
    assert broken["summary"] == {
        "passed": 1,
        "failed": 1,
        "non_strict": 0,
        "skipped": 0,
        "errors": 0,
    }
    assert [r["verdict"] for r in broken["results"]] == ["PASS", "FAIL"]
    for target in report["targets"]:
        assert target["kind"] == "spawn"
        for result in target["results"]:
            assert result["replay"].startswith("reactor-conformance run --spawn ")
            assert result["replay"].endswith(f"--checks {result['id']}")
            assert result["duration"] > 0


def test_report_json_failure_has_the_scenario_and_first_divergence(side_by_side: Run) -> None:
    failed = side_by_side.report["targets"][1]["results"][1]
    assert failed["id"] == "ECHO-PARTIAL-2"
    assert failed["details"].startswith("FAILED ECHO-PARTIAL-2 (MUST")
    failure = failed["failure"]
    assert failure["kind"] == "Divergence"
    assert failure["step"]
    assert failure["connection"].startswith("connection ")
    divergence = failure["divergence"]
    assert divergence["what"] == "first divergent offset"
    assert divergence["sent"]["size"] == 1024 * 1024
    assert "[00]" in divergence["sent"]["excerpt"]
    assert failure["replay"] == failed["replay"]


def test_report_junit_names_each_test_by_its_check_id(side_by_side: Run) -> None:
    cases = list(side_by_side.junit.iter("testcase"))
    names = sorted((str(c.get("classname")).rsplit(".", 1)[-1], str(c.get("name"))) for c in cases)
    assert names == sorted((t, c) for t in ("asyncio_echo", "truncates_at_nul") for c in CHECKS)
    failed = [c.get("name") for c in cases if c.find("failure") is not None]
    assert failed == ["ECHO-PARTIAL-2"]


def test_report_summary_has_a_column_per_target_and_the_report_paths(side_by_side: Run) -> None:
    out = side_by_side.result.stdout
    lines = out.splitlines()
    header = next(line for line in lines if line.startswith("check "))
    assert header.split() == ["check", "level", "asyncio_echo", "truncates_at_nul"]
    row = next(line for line in lines if line.startswith("ECHO-PARTIAL-2 "))
    assert row.split() == ["ECHO-PARTIAL-2", "MUST", "PASS", "FAIL"]
    assert "asyncio_echo: 2 passed, 0 failed, 0 non-strict, 0 skipped" in out
    assert "truncates_at_nul: 1 passed, 1 failed, 0 non-strict, 0 skipped" in out
    assert "reactor-conformance: 3 passed, 1 failed, 0 non-strict, 0 skipped in " in out
    for kind in ("JSON", "HTML", "JUnit"):
        assert f"reactor-conformance: {kind} report: " in out
    assert "\x1b[" not in out  # Not a terminal: no colour.


def test_report_html_of_the_run_shows_both_targets_and_the_failure(side_by_side: Run) -> None:
    page = PageParser.parse(side_by_side.html)
    assert page.headings == ["ID", "Level", "Category", "Check", "asyncio_echo", "truncates_at_nul"]
    assert page.row_ids == [f"c-{c}" for c in CHECKS]
    assert "3 passed, 1 failed, 0 non-strict, 0 skipped" in page.text_of("summary")
    failures = page.text_of("failures")
    assert "ECHO-PARTIAL-2 against truncates_at_nul: FAIL" in failures
    assert "reactor-conformance run --spawn" in failures
    assert page.marked == ["00", page.marked[1]]
    assert page.external == []
