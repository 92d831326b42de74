"""The pytest plugin: nothing for ordinary runs; one item per check; xdist groups."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from xml.etree import ElementTree

import pytest

from conformance.checks import CATALOGUE
from conformance.targets.target import RunningTarget, TargetSpec, free_port
from tests.conformance.support import broken_spawn, run_pytest, serving


@pytest.fixture(scope="module")
def reference_single() -> Iterator[RunningTarget]:
    with serving(TargetSpec.default()) as running:
        yield running


def test_plugin_adds_nothing_to_an_ordinary_run() -> None:
    plain = run_pytest("tests/conformance/test_oracle.py", "--collect-only", "-q", "-p", "no:xdist")
    assert plain.returncode == 0, plain.stdout + plain.stderr
    assert "conformance/__init__.py" not in plain.stdout
    assert "ECHO-" not in plain.stdout
    collected = [line for line in plain.stdout.splitlines() if "::" in line]
    assert collected
    assert all(line.startswith("tests/conformance/test_oracle.py::") for line in collected)


def test_plugin_refuses_a_target_without_the_suite() -> None:
    result = run_pytest("tests/conformance/test_oracle.py", "--target", "127.0.0.1:9")
    assert result.returncode == 4
    assert "add --pyargs conformance" in result.stderr


def test_plugin_max_connections_that_is_not_a_count_is_a_usage_error() -> None:
    result = run_pytest("--pyargs", "conformance", "--max-connections", "0", "-p", "no:xdist")
    assert result.returncode == 4, result.stdout + result.stderr
    assert "--max-connections 0: give a number of connections above 0" in result.stderr


def test_plugin_collects_one_item_per_selected_check(reference_single: RunningTarget) -> None:
    result = run_pytest(
        "--pyargs",
        "conformance",
        "--target",
        str(reference_single.address),
        "--collect-only",
        "-q",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    items = re.findall(r"::((?:ECHO|PROP|TLS)-[A-Z]+-\d+)", result.stdout)
    assert items == [c.id for c in CATALOGUE if c.category != "tls"]  # TLS-*: with --tls


def test_plugin_never_runs_heavy_checks_at_once_under_xdist(
    reference_single: RunningTarget, tmp_path: Path
) -> None:
    heavy = [c.id for c in CATALOGUE if c.heavy][:4]
    light = [c.id for c in CATALOGUE if not c.heavy][:4]
    junit = tmp_path / "junit.xml"
    result = run_pytest(
        "--pyargs",
        "conformance",
        "--target",
        str(reference_single.address),
        "--checks",
        ",".join(heavy + light),
        "-n",
        "2",
        "--dist",
        "loadgroup",
        f"--junitxml={junit}",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    spans: dict[str, tuple[float, float]] = {}
    for case in ElementTree.parse(junit).getroot().iter("testcase"):
        props = {p.get("name"): p.get("value") for p in case.iter("property")}
        spans[str(props["conformance_check"])] = (
            float(str(props["conformance_started"])),
            float(str(props["conformance_finished"])),
        )
    assert sorted(spans) == sorted(heavy + light)
    runs = sorted(spans[c] for c in heavy)
    for (_, end), (start, _) in zip(runs, runs[1:], strict=False):
        assert end <= start + 0.05, runs  # Each heavy check starts after the last ended.


def test_plugin_unreachable_target_exits_3() -> None:
    result = run_pytest("--pyargs", "conformance", "--target", f"127.0.0.1:{free_port()}")
    assert result.returncode == 3
    assert "target unreachable" in result.stderr


def test_plugin_reports_a_failed_should_as_non_strict_unless_strict() -> None:
    args = [
        "--pyargs",
        "conformance",
        "--spawn",
        broken_spawn("ignores_half_close"),
        "--checks",
        "ECHO-HALFCLOSE-2,ECHO-BASIC-1",
        "-p",
        "no:xdist",
    ]
    lenient = run_pytest(*args)
    assert lenient.returncode == 0, lenient.stdout + lenient.stderr
    assert "1 passed, 1 non-strict" in lenient.stdout
    assert "failed SHOULD and MAY checks (non-strict)" in lenient.stdout
    assert "replay: pytest --pyargs conformance --spawn" in lenient.stdout
    strict = run_pytest(*args, "--conformance-strict")
    assert strict.returncode == 1
    assert "FAILED ECHO-HALFCLOSE-2 (SHOULD" in strict.stdout


def test_plugin_writes_reports_from_the_xdist_controller(
    reference_single: RunningTarget, tmp_path: Path
) -> None:
    import json

    import jsonschema

    from conformance.reports.json_report import load_schema

    checks = [c.id for c in CATALOGUE if c.heavy][:1] + [c.id for c in CATALOGUE if not c.heavy][:2]
    paths = {name: tmp_path / name for name in ("r.json", "r.html", "junit.xml")}
    result = run_pytest(
        "--pyargs",
        "conformance",
        "--target",
        str(reference_single.address),
        "--spawn",
        broken_spawn("ignores_half_close"),
        "--checks",
        ",".join([*checks, "ECHO-HALFCLOSE-2"]),
        "-n",
        "2",
        "--dist",
        "loadgroup",
        f"--report-json={paths['r.json']}",
        f"--report-html={paths['r.html']}",
        f"--junitxml={paths['junit.xml']}",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(paths["r.json"].read_text())
    jsonschema.validate(report, load_schema())
    names = [t["name"] for t in report["targets"]]
    assert names == [str(reference_single.address), "ignores_half_close"]
    verdicts = {(t["name"], r["id"]): r["verdict"] for t in report["targets"] for r in t["results"]}
    assert len(verdicts) == 2 * 4
    assert verdicts[("ignores_half_close", "ECHO-HALFCLOSE-2")] == "NON-STRICT"
    assert verdicts[(names[0], "ECHO-HALFCLOSE-2")] == "PASS"
    assert "conformance verdicts per target" in result.stdout
    assert f"conformance json report: {paths['r.json']}" in result.stdout
    assert paths["r.html"].read_text().startswith("<!DOCTYPE html>")
    junit = ElementTree.parse(paths["junit.xml"]).getroot()
    # Heavy checks are grouped by xdist (node ID "...@group"); JUnit still names them by ID.
    assert sorted(str(c.get("name")) for c in junit.iter("testcase")) == sorted(
        [*checks, "ECHO-HALFCLOSE-2"] * 2
    )
