"""A check that cannot see what it measures says SKIPPED and why; it never passes by default.

The resource checks find the server's processes by its sockets. Hidden: the
suite runs as another user (``nobody``, through ``setpriv``) than the server
(this user), so ``/proc/PID/fd`` of the server cannot be listed, as for a
server of another user, in a container or on another host.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from conformance.checks import CATALOGUE, by_id
from conformance.checks.resources import server_processes
from conformance.harness import Harness
from conformance.run.heavy_lock import heavy_lock
from conformance.targets.target import RunningTarget, TargetKind, TargetSpec
from tests.conformance.support import (
    ROOT,
    as_nobody,
    directory_for_others,
    environment_for_nobody,
    python_for_nobody,
    run_cli,
    serving,
)

RESOURCE_CHECKS = ("ECHO-STORM-1", "ECHO-STORM-2", "ECHO-CPU-1", "ECHO-MEM-1")


@pytest.fixture
def single() -> Iterator[RunningTarget]:
    with serving(TargetSpec(TargetKind.REFERENCE, "single")) as running:
        yield running


def test_the_server_is_found_by_its_listening_socket_not_its_pid(
    single: RunningTarget,
) -> None:
    harness = Harness(single.address)
    assert server_processes(harness) == {single.pid}


def test_a_server_behind_a_wrapper_is_found_by_its_socket() -> None:
    wrapper = ROOT / "fixtures" / "servers" / "broken" / "leaks_behind_a_wrapper.py"
    spec = TargetSpec(TargetKind.SPAWN, f"{sys.executable} {wrapper} --port {{port}}")
    with serving(spec) as running:
        found = server_processes(Harness(running.address))
        assert len(found) == 1
        assert running.pid not in found  # The wrapper holds no socket: its grandchild does.


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    with directory_for_others() as path:
        yield path


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None,
    reason="needs root and setpriv to run the suite as another user than the server",
)
@pytest.mark.timeout(300)
def test_resource_checks_are_skipped_with_the_reason_when_the_server_is_hidden(
    single: RunningTarget, shared_dir: Path
) -> None:
    report = shared_dir / "report.json"
    # An earlier run as root against the same address left its heavy-check lock file.
    with heavy_lock(single.address):
        pass
    env = environment_for_nobody(shared_dir)
    python, why = python_for_nobody(shared_dir, env)
    if python is None:
        pytest.skip(why)
    result = subprocess.run(
        as_nobody(
            python, "-m", "conformance", "run", "--target", str(single.address),
            "--checks", ",".join(RESOURCE_CHECKS), "--report-json", str(report),
            "--artifacts", str(shared_dir / "artifacts"),
        ),
        capture_output=True, text=True, timeout=240, env=env, cwd=shared_dir,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    (target,) = json.loads(report.read_text())["targets"]
    for entry in target["results"]:
        assert entry["verdict"] == "SKIPPED", entry
        assert "not measured" in entry["details"], entry
        assert "the server's process is not visible from here" in entry["details"], entry
    assert f"0 passed, 0 failed, 0 non-strict, {len(RESOURCE_CHECKS)} skipped" in out


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None,
    reason="needs root and setpriv to run the suite as another user than the server",
)
@pytest.mark.timeout(300)
def test_LIMIT_against_a_hidden_server_is_skipped_unless_its_limit_is_given(
    shared_dir: Path,
) -> None:
    env = environment_for_nobody(shared_dir)
    python, why = python_for_nobody(shared_dir, env)
    if python is None:
        pytest.skip(why)
    command = f"ulimit -n 1024 && exec {sys.executable} -m reference single --port {{port}}"
    spec = TargetSpec(TargetKind.SPAWN, f"sh -c '{command}'")
    verdicts = {}
    with serving(spec) as running:
        for extra in ((), ("--max-connections", "1024")):
            report = shared_dir / f"limit{len(extra)}.json"
            result = subprocess.run(
                as_nobody(
                    python, "-m", "conformance", "run", "--target",
                    str(running.address), "--checks", "ECHO-LIMIT-1", *extra,
                    "--report-json", str(report), "--artifacts", str(shared_dir / "artifacts"),
                ),
                capture_output=True, text=True, timeout=240, env=env, cwd=shared_dir,
                stdin=subprocess.DEVNULL,
            )  # fmt: skip
            assert result.returncode == 0, result.stdout + result.stderr
            (target,) = json.loads(report.read_text())["targets"]
            (entry,) = target["results"]
            verdicts[extra] = entry
    skipped = verdicts[()]
    assert skipped["verdict"] == "SKIPPED", skipped
    assert "its limit is not visible from here" in skipped["details"], skipped
    assert "pass --max-connections N" in skipped["details"], skipped
    assert verdicts[("--max-connections", "1024")]["verdict"] == "PASS"


def test_the_same_checks_measure_a_visible_server(single: RunningTarget) -> None:
    from conformance.checks import Setup, run_check

    for check_id in ("ECHO-STORM-2", "ECHO-CPU-1"):
        outcome = run_check(by_id(check_id), Setup(single.address))
        assert outcome.passed, outcome.unmeasured or outcome.report


@pytest.mark.timeout(300)
def test_a_discard_server_under_the_discard_oracle_passes_and_names_what_does_not_apply(
    tmp_path: Path,
) -> None:
    report = tmp_path / "report.json"
    discard = f"{sys.executable} -m reference single --handler discard --port {{port}}"
    result = run_cli(
        "run", "--spawn", discard, "--oracle", "discard", "--profile", "ci", "-n", "2",
        "--report-json", str(report), timeout=280,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    (target,) = json.loads(report.read_text())["targets"]
    skipped = {r["id"]: r["details"] for r in target["results"] if r["verdict"] == "SKIPPED"}
    # ECHO-LIMIT-1 is SKIPPED too when the server may hold more descriptors than it opens.
    limit = skipped.pop("ECHO-LIMIT-1", None)
    assert limit is None or "more than this check opens" in limit, limit
    # The TLS checks run with --tls only: a plain run does not select them.
    assert set(skipped) == {c.id for c in CATALOGUE if c.needs_replies and c.category != "tls"}
    assert set(skipped) >= {"ECHO-LOAD-1", "ECHO-LOAD-2", "ECHO-LOAD-3", "ECHO-MEM-1"}
    for details in skipped.values():
        assert "does not apply: it rests on the server's replies" in details
        assert "discard oracle owes none" in details
