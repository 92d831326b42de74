"""ECHO-LIMIT-1 against real servers started under a descriptor limit, and its parts.

Correct servers run under ``ulimit -n 1024`` (``sh -c 'ulimit -n 1024 && exec
...'``) so that the check can hold more connections than they have
descriptors; ``exits_on_emfile`` sets that limit itself and must fail. A
limit the check cannot exceed makes it SKIPPED with the reason, never PASS.
"""

from __future__ import annotations

import json
import os
import resource
import shlex
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from conformance.checks import Setup, by_id, run_check
from conformance.checks.limits import CAP, MARGIN, raised_descriptor_limit, server_limit
from conformance.harness import Harness
from conformance.targets import procfs
from conformance.targets.target import Address, RunningTarget, TargetKind, TargetSpec, free_port
from tests.conformance.support import ASYNCIO_ECHO, ROOT, broken_spawn, serving
from tools.matrix import run_against

LIMIT = by_id("ECHO-LIMIT-1")
PYTHON = shlex.quote(sys.executable)


def under_limit(command: str, nofile: int = 1024) -> TargetSpec:
    """``command`` started under a soft and hard descriptor limit of ``nofile``."""
    return TargetSpec(
        TargetKind.SPAWN, f"sh -c {shlex.quote(f'ulimit -n {nofile} && exec {command}')}"
    )


CORRECT_UNDER_1024 = {
    "single": under_limit(f"{PYTHON} -m reference single --port {{port}}"),
    "pool": under_limit(f"{PYTHON} -m reference pool --port {{port}}"),
    "multi": under_limit(f"{PYTHON} -m reference multi --mode thread --port {{port}}"),
    "asyncio": under_limit(f"{PYTHON} {shlex.quote(str(ASYNCIO_ECHO))} --port {{port}}"),
}


@pytest.mark.parametrize("name", list(CORRECT_UNDER_1024))
def test_LIMIT_correct_server_under_1024_descriptors_passes(name: str) -> None:
    outcome = run_against(CORRECT_UNDER_1024[name], LIMIT)
    assert outcome.passed, outcome.report or outcome.unmeasured or outcome.error


def test_LIMIT_server_that_exits_on_emfile_fails_naming_the_exit() -> None:
    spec = TargetSpec(TargetKind.SPAWN, broken_spawn("exits_on_emfile"))
    outcome = run_against(spec, LIMIT)
    assert outcome.failure is not None, outcome.unmeasured or outcome.error
    report = outcome.report
    assert "exited while the check held" in report, report
    assert "against the 1024 descriptors it may hold" in report, report
    assert report.rstrip().endswith("--checks ECHO-LIMIT-1")


def test_LIMIT_is_skipped_with_the_reason_when_the_server_may_hold_too_many() -> None:
    nofile = CAP + 1
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard < nofile:
        pytest.skip(f"the hard descriptor limit here ({hard}) is below {nofile}")
    spec = under_limit(f"{PYTHON} -m reference single --port {{port}}", nofile)
    with serving(spec) as running:
        outcome = run_check(LIMIT, Setup(running.address))
    assert outcome.failure is None, outcome.report
    assert outcome.error is None, outcome.error
    assert not outcome.passed
    assert outcome.unmeasured is not None
    assert f"it may hold {nofile} descriptors" in outcome.unmeasured
    assert f"takes {nofile + MARGIN} connections" in outcome.unmeasured
    assert "ulimit -n 1024" in outcome.unmeasured


def test_LIMIT_is_skipped_when_the_suite_cannot_open_enough(tmp_path: Path) -> None:
    """The suite itself runs under 512 descriptors: it cannot exceed a server's 1024."""
    spec = under_limit(f"{PYTHON} -m reference single --port {{port}}")
    report = tmp_path / "report.json"
    with serving(spec) as running:
        argv = [
            sys.executable, "-m", "conformance", "run", "--target", str(running.address),
            "--checks", "ECHO-LIMIT-1", "--report-json", str(report),
        ]  # fmt: skip
        result = subprocess.run(
            ["sh", "-c", f"ulimit -n 512 && exec {shlex.join(argv)}"],
            capture_output=True, text=True, timeout=120, cwd=ROOT, stdin=subprocess.DEVNULL,
            env=dict(os.environ, PYTHONPATH=str(ROOT)),
        )  # fmt: skip
    out = result.stdout + result.stderr
    assert result.returncode == 0, out  # SKIPPED with a reason fails nothing...
    (target,) = json.loads(report.read_text())["targets"]
    (entry,) = target["results"]
    assert entry["verdict"] == "SKIPPED", entry  # ...and passes nothing either.
    assert "more than this check opens" in entry["details"], entry
    assert "its own limit is 512" in entry["details"], entry
    assert "ulimit -Hn" in entry["details"], entry


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as sock:
        yield sock


def test_server_limit_adds_up_the_limits_of_the_listening_processes(
    listener: socket.socket,
) -> None:
    harness = Harness(Address(*listener.getsockname()[:2]), max_connections=77)
    limit = server_limit(harness)
    assert limit.measured
    assert limit.holders == {os.getpid()}  # This process holds the listening socket.
    assert os.getpid() in limit.pids
    assert limit.total == sum(procfs.descriptor_limit(pid) or 0 for pid in limit.pids)
    assert "RLIMIT_NOFILE" in limit.source


def test_server_limit_is_max_connections_when_no_process_is_visible() -> None:
    harness = Harness(Address("127.0.0.1", free_port()), max_connections=77)
    limit = server_limit(harness)  # Nothing listens there: no process to read.
    assert not limit.measured
    assert limit.total == 77
    assert "--max-connections 77" in limit.source


def test_raised_descriptor_limit_raises_the_soft_limit_and_puts_it_back() -> None:
    before = resource.getrlimit(resource.RLIMIT_NOFILE)
    soft, hard = before
    lowered = min(soft, 1024)
    resource.setrlimit(resource.RLIMIT_NOFILE, (lowered, hard))
    try:
        with raised_descriptor_limit() as limit:
            now = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
            assert limit == procfs.descriptor_limit(os.getpid()) == now
            assert now > lowered
            assert hard == resource.RLIM_INFINITY or now == hard
        assert resource.getrlimit(resource.RLIMIT_NOFILE) == (lowered, hard)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, before)


@pytest.fixture
def single_under_1024() -> Iterator[RunningTarget]:
    with serving(CORRECT_UNDER_1024["single"]) as running:
        yield running


def test_server_limit_reads_the_limit_a_server_was_started_under(
    single_under_1024: RunningTarget,
) -> None:
    limit = server_limit(Harness(single_under_1024.address))
    assert limit.total == 1024
    assert len(limit.holders) == 1
