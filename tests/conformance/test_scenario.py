"""Saved scenarios: what ``--scenario`` replays, where, and what it refuses before anything runs."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from conformance.properties.scenario import (
    FORMAT,
    HalfClose,
    Scenario,
    Script,
    Send,
    read_saved,
    to_json,
)
from tests.conformance.support import broken_spawn, run_cli

NUL_SEND = {"send": base64.b64encode(b"a\0b").decode(), "chunks": []}


def _file(tmp_path: Path, data: dict[str, Any] | str, name: str = "s.json") -> str:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return str(path)


def _saved(check: str, *steps: dict[str, Any]) -> dict[str, Any]:
    return {"format": FORMAT, "check": check, "connections": [{"rcvbuf": None, "steps": steps}]}


def test_a_saved_scenario_names_the_check_it_was_saved_from() -> None:
    scenario = Scenario((Script((Send(b"a\0b"), HalfClose())),))
    saved = read_saved(to_json(scenario, check="PROP-HALFCLOSE-1"))
    assert (saved.scenario, saved.check) == (scenario, "PROP-HALFCLOSE-1")
    assert saved.skip_reason("PROP-HALFCLOSE-1", "s.json") is None
    why = saved.skip_reason("PROP-ECHO-1", "s.json")
    assert why is not None
    assert "saved from PROP-HALFCLOSE-1, not from PROP-ECHO-1" in why


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"format": "reactor-conformance scenario 9", "connections": []}, "unknown format"),
        ({"connections": [{"steps": [NUL_SEND]}]}, 'no "format" field'),
        (_saved("PROP-ECHO-1"), "no connection with a step"),
        ({"format": FORMAT, "check": "PROP-ECHO-1", "connections": []}, "no connection"),
        ({"format": FORMAT, "connections": [{"steps": [NUL_SEND]}]}, "does not name the check"),
        (_saved("PROP-ECHO-1", {"read": 0}), "at least 1 byte"),
        (_saved("PROP-ECHO-1", {"pause": float("nan")}), "number of seconds"),
        (_saved("PROP-ECHO-1", {"send": "not base64!"}), "not a scenario file"),
        ([1, 2], "not a scenario file"),
    ],
)
def test_read_saved_refuses_what_cannot_be_replayed(data: Any, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        read_saved(json.dumps(data))


def _one_line_usage_error(argv: list[str], needle: str) -> None:
    result = run_cli("run", "--spawn", broken_spawn("truncates_at_nul"), *argv, timeout=60)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stdout == ""  # Refused before anything ran.
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("reactor-conformance: error: "), lines
    assert needle in lines[0]


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"format": "something else", "connections": []}, "unknown format 'something else'"),
        ("{not json", "not a scenario file"),
        (_saved("PROP-ECHO-1"), "no connection with a step: there is nothing to replay"),
        ({"format": FORMAT, "connections": [{"steps": [NUL_SEND]}]}, "name the check it was"),
        (_saved("ECHO-BASIC-1", NUL_SEND), "saved from 'ECHO-BASIC-1', which is not a property"),
        (_saved("PROP-HALFCLOSE-1", NUL_SEND), "add --checks PROP-HALFCLOSE-1"),
    ],
)
def test_cli_scenario_that_cannot_be_replayed_is_a_one_line_usage_error(
    tmp_path: Path, data: dict[str, Any] | str, needle: str
) -> None:
    checks = "PROP-ECHO-1,PROP-CONCURRENT-1,PROP-BACKPRESSURE-1"
    _one_line_usage_error(["--checks", checks, "--scenario", _file(tmp_path, data)], needle)


def test_cli_scenario_that_cannot_be_read_is_a_one_line_usage_error(tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.json")
    _one_line_usage_error(["--checks", "PROP-ECHO-1", "--scenario", missing], "cannot read")
    _one_line_usage_error(["--checks", "PROP-ECHO-1", "--scenario", str(tmp_path)], "cannot read")


def _verdicts(report: Path) -> dict[str, dict[str, str]]:
    (target,) = json.loads(report.read_text())["targets"]
    return {r["id"]: r for r in target["results"]}


@pytest.mark.timeout(180)
def test_cli_scenario_from_another_check_is_skipped_there_and_replayed_in_its_own(
    tmp_path: Path,
) -> None:
    scenario = _file(tmp_path, _saved("PROP-HALFCLOSE-1", NUL_SEND, {"half_close": True}))
    report = tmp_path / "r.json"
    checks = "PROP-ECHO-1,PROP-CONCURRENT-1,PROP-BACKPRESSURE-1,PROP-HALFCLOSE-1"
    result = run_cli(
        "run", "--spawn", broken_spawn("truncates_at_nul"), "--checks", checks,
        "--scenario", scenario, "--report-json", str(report),
    )  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    results = _verdicts(report)
    for check in ("PROP-ECHO-1", "PROP-CONCURRENT-1", "PROP-BACKPRESSURE-1"):
        assert results[check]["verdict"] == "SKIPPED", results[check]
        assert (
            f"the scenario {scenario} was saved from PROP-HALFCLOSE-1, not from {check}"
            in results[check]["details"]
        )
    # Its own check replays it: the NUL cuts the echo short.
    assert results["PROP-HALFCLOSE-1"]["verdict"] == "FAIL", results["PROP-HALFCLOSE-1"]


@pytest.mark.timeout(180)
def test_cli_replayed_failure_is_saved_again_with_its_check(tmp_path: Path) -> None:
    scenario = _file(tmp_path, _saved("PROP-ECHO-1", NUL_SEND))
    artifacts = tmp_path / "artifacts"
    result = run_cli(
        "run", "--spawn", broken_spawn("truncates_at_nul"), "--checks", "PROP-ECHO-1",
        "--scenario", scenario, "--artifacts", str(artifacts),
    )  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    assert "FAIL        PROP-ECHO-1" in result.stdout
    (saved,) = artifacts.glob("scenario-*.json")
    again = read_saved(saved.read_text())
    assert again.check == "PROP-ECHO-1"
    assert again.scenario == read_saved(Path(scenario).read_text()).scenario
