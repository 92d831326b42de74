"""The whole catalogue against each hostile server ends as the server declares.

Each server in ``fixtures/servers/hostile/`` declares, in its module-level
``EXPECT`` dict (read without importing it), how ``reactor-conformance run
--profile ci -n 2`` must end against it:

- ``exit``: the exit code;
- ``events``: the kinds of target events the run must report (``exited``,
  ``unreachable``, ``silent``), each naming a check that FAILs for it;
- ``max_failed``: the most checks that may FAIL (what happened to the target
  is reported once, not as a cascade of refused connections);
- ``bound``: the seconds the whole run must end within.

And nothing the run started outlives it: a few seconds after it ends, no
process started since the test began listens on the target's port (a
daemon, a worker that left its group).

No check may end in ERROR. The subprocess timeout is only a guard, past the
bound.
"""

from __future__ import annotations

import ast
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from conformance.targets.strays import listeners, start_ticks
from tests.conformance.support import SERVERS, run_cli, spawn_command

HOSTILE = SERVERS / "hostile"


def _expect(path: Path) -> dict[str, Any]:
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in tree.body:
        if isinstance(node, ast.Assign) and [
            t.id for t in node.targets if isinstance(t, ast.Name)
        ] == ["EXPECT"]:
            found: dict[str, Any] = ast.literal_eval(node.value)
            return found
    raise AssertionError(f"{path}: no EXPECT = {{...}} at module level")


SERVER_FILES = sorted(p for p in HOSTILE.glob("*.py") if not p.name.startswith("_"))


def test_every_hostile_server_declares_how_the_run_ends() -> None:
    assert len(SERVER_FILES) >= 9
    for path in SERVER_FILES:
        expect = _expect(path)
        assert set(expect) == {"exit", "events", "max_failed", "bound"}, path.name
        assert expect["exit"] in (0, 1, 3), path.name
        assert set(expect["events"]) <= {"exited", "unreachable", "silent"}, path.name


@pytest.mark.timeout(900)
@pytest.mark.parametrize("path", SERVER_FILES, ids=[p.stem for p in SERVER_FILES])
def test_the_catalogue_against_a_hostile_server_ends_as_declared(
    path: Path, tmp_path: Path
) -> None:
    expect = _expect(path)
    report = tmp_path / "report.json"
    started = time.monotonic()
    result = run_cli(
        "run", "--spawn", spawn_command(path), "--profile", "ci", "-n", "2",
        "--report-json", str(report),
        timeout=expect["bound"] + 120,
    )  # fmt: skip
    took = time.monotonic() - started
    out = result.stdout + result.stderr
    assert "Traceback" not in result.stderr, out
    assert result.returncode == expect["exit"], out
    assert took < expect["bound"], f"{path.stem}: {took:.0f}s, declared {expect['bound']}s\n{out}"
    data = json.loads(report.read_text())
    (target,) = data["targets"]
    verdicts = {r["id"]: r["verdict"] for r in target["results"]}
    assert "ERROR" not in verdicts.values(), out
    failed = [check for check, verdict in verdicts.items() if verdict == "FAIL"]
    assert len(failed) <= expect["max_failed"], out
    kinds = {event["kind"] for event in target["events"]}
    assert set(expect["events"]) <= kinds, out
    for event in target["events"]:
        if event["check"] is not None:
            assert verdicts[event["check"]] == "FAIL", event
    # Nothing the run started outlives it: no process started since this test
    # listens on the target's port a few seconds after the run ended.
    host, port = target["address"].rsplit(":", 1)
    since = start_ticks(os.getpid())
    assert since is not None
    deadline = time.monotonic() + 5.0
    while left := listeners(host.strip("[]"), int(port), since):
        assert time.monotonic() < deadline, f"{path.stem}: left running: {left}\n{out}"
        time.sleep(0.05)  # Polling /proc for the processes to be gone, under the deadline.
