"""tools/flake_rate.py: its comparison of verdicts, a short real run, its usage errors."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

from tests.helpers import ROOT

TOOL = ROOT / "tools" / "flake_rate.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("flake_rate", TOOL)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # Registered first: dataclasses look their module up while the file runs.
    sys.modules["flake_rate"] = module
    spec.loader.exec_module(module)
    return module


flake_rate = _load()
differing = flake_rate.differing
ABSENT = flake_rate.ABSENT


def run_tool(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(TOOL), *argv],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
    )


def test_differing_is_empty_when_every_run_agrees() -> None:
    run = {"ECHO-BASIC-1": "PASS", "ECHO-RESET-1": "FAIL"}
    differences = differing([dict(run), dict(run), dict(run)])
    assert differences.checks == {}
    assert differences.missing == []
    assert not differences


def test_differing_counts_each_verdict_with_its_runs_most_common_first() -> None:
    runs: list[dict[str, str] | None] = [
        {"ECHO-BASIC-1": "PASS", "PROP-ECHO-1": "FAIL"},
        {"ECHO-BASIC-1": "PASS", "PROP-ECHO-1": "PASS"},
        {"ECHO-BASIC-1": "PASS", "PROP-ECHO-1": "PASS"},
        {"ECHO-BASIC-1": "PASS", "PROP-ECHO-1": "NON-STRICT"},
    ]
    differences = differing(runs)
    assert differences.checks == {"PROP-ECHO-1": {"PASS": [2, 3], "FAIL": [1], "NON-STRICT": [4]}}
    assert list(differences.checks["PROP-ECHO-1"]) == ["PASS", "FAIL", "NON-STRICT"]
    assert differences.missing == []
    assert differences


def test_differing_keeps_the_first_seen_verdict_first_on_a_tie() -> None:
    differences = differing([{"ECHO-LOAD-1": "FAIL"}, {"ECHO-LOAD-1": "PASS"}])
    assert list(differences.checks["ECHO-LOAD-1"].items()) == [("FAIL", [1]), ("PASS", [2])]


def test_differing_lists_a_run_without_a_report_apart_from_the_checks() -> None:
    runs: list[dict[str, str] | None] = [
        {"ECHO-BASIC-1": "PASS", "ECHO-BASIC-3": "PASS"},
        None,
        {"ECHO-BASIC-1": "PASS", "ECHO-BASIC-3": "PASS"},
    ]
    differences = differing(runs)
    assert differences.checks == {}
    assert differences.missing == [2]
    assert differences
    everything_missing = differing([None, None])
    assert everything_missing.checks == {}
    assert everything_missing.missing == [1, 2]


def test_differing_marks_a_check_a_report_lacks_as_absent() -> None:
    differences = differing(
        [{"ECHO-BASIC-1": "PASS", "ECHO-BASIC-3": "PASS"}, {"ECHO-BASIC-1": "PASS"}, None]
    )
    assert differences.checks == {"ECHO-BASIC-3": {"PASS": [1], ABSENT: [2]}}
    assert differences.missing == [3]


def test_flake_rate_two_agreeing_runs_exit_0(tmp_path: Path) -> None:
    out = tmp_path / "reports"
    result = run_tool(
        "--runs", "2",
        "--reference", "single",
        "--checks", "ECHO-BASIC-1", "ECHO-BASIC-3",
        "--out", str(out),
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.strip().splitlines()
    assert str(out) in lines[0]
    progress = [line for line in lines if line.startswith("run ")]
    assert [line.split(":")[0] for line in progress] == ["run 1/2", "run 2/2"]
    assert all("exit 0, 2 passed, 0 failed" in line for line in progress), progress
    assert lines[-1].startswith(
        "2 runs against reference single server: 0 checks with differing verdicts;"
    ), lines[-1]
    assert "median" in lines[-1]
    assert "checks with differing verdicts:" not in result.stdout
    for number in (1, 2):
        assert flake_rate.read_verdicts(out / f"run-{number}.json") == {
            "ECHO-BASIC-1": "PASS",
            "ECHO-BASIC-3": "PASS",
        }


def test_flake_rate_usage_errors_exit_2_without_traceback() -> None:
    cases = [
        (["--runs", "0", "--reference", "single"], "--runs: must be at least 1, got 0"),
        (["--runs", "2"], "one of the arguments --target --spawn --reference is required"),
        (["--runs", "2", "--reference", "single", "--checks", "NO-SUCH-1"], "unknown check"),
    ]
    for argv, needle in cases:
        result = run_tool(*argv)
        assert result.returncode == 2, (argv, result)
        assert "Traceback" not in result.stderr
        assert needle in result.stderr.strip().splitlines()[-1], result.stderr
        assert result.stdout == ""
