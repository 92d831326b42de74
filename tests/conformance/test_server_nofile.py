"""``--server-nofile``: the descriptor limit the servers the suite starts begin with.

Real processes: the limit is read from ``/proc/PID/limits`` of the started
server; the CLI and the pytest plugin take the option from the same table.
"""

from __future__ import annotations

import argparse
import json
import resource
import shlex
import sys
from pathlib import Path

import pytest

from conformance.checks import by_id
from conformance.errors import UsageError
from conformance.run.plan import Front, RunPlan, add_options, plan_from_options
from conformance.targets import procfs
from conformance.targets.spawn import soft_nofile, spawn_listening
from conformance.targets.target import (
    SERVER_NOFILE,
    TargetKind,
    TargetSpec,
    server_nofile,
    server_nofile_header,
    start_target,
)
from tests.conformance.support import run_cli, run_pytest

#: Listens, prints so, and waits on a pipe nobody writes.
LISTENS = (
    "import os, socket\n"
    "s = socket.create_server(('127.0.0.1', 0))\n"
    "print('listening on 127.0.0.1:%d' % s.getsockname()[1], flush=True)\n"
    "r, w = os.pipe(); os.read(r, 1)\n"
)
SOFT, HARD = resource.getrlimit(resource.RLIMIT_NOFILE)


def _options(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_options(parser.add_argument, Front.CLI)
    return parser.parse_args([*argv])


def test_server_nofile_is_a_number_above_zero_or_inherit() -> None:
    assert server_nofile(None) == SERVER_NOFILE == 1024
    assert server_nofile("4096") == 4096
    assert server_nofile("inherit") is None
    for text in ("0", "-1", "many", "1.5", ""):
        with pytest.raises(UsageError, match=f"--server-nofile {text}: give a number"):
            server_nofile(text)


def test_plan_carries_server_nofile_to_workers_and_into_replays() -> None:
    assert plan_from_options(_options(), Front.CLI).server_nofile == SERVER_NOFILE
    plan = plan_from_options(_options("--server-nofile", "inherit"), Front.CLI)
    assert plan.server_nofile is None
    assert RunPlan.from_data(json.loads(json.dumps(plan.to_data()))).server_nofile is None
    spec = TargetSpec.default()
    assert plan.replay_prefix(spec).endswith("--server-nofile inherit")
    base = RunPlan(targets=(spec,), names=("reference-single",), checks=(by_id("ECHO-BASIC-1"),))
    assert "--server-nofile" not in base.replay_prefix(spec)
    other = RunPlan(base.targets, base.names, base.checks, server_nofile=2048)
    assert other.replay_prefix(spec).endswith("--server-nofile 2048")


def test_server_nofile_header_names_the_limit_and_the_option() -> None:
    assert server_nofile_header(1024) == (
        "spawned servers start with a soft descriptor limit of 1024 (--server-nofile)"
    )
    assert "inherit the suite's soft descriptor limit" in server_nofile_header(None)
    if HARD != resource.RLIM_INFINITY:
        assert server_nofile_header(HARD + 1) == (
            f"spawned servers start with a soft descriptor limit of {HARD} "
            f"(--server-nofile {HARD + 1}, capped at the hard limit)"
        )


@pytest.mark.parametrize("nofile", [100, 1024, None])
def test_a_spawned_server_starts_under_the_limit_it_is_given(nofile: int | None) -> None:
    with spawn_listening([sys.executable, "-c", LISTENS], timeout=10.0) as plain:
        inherited = procfs.descriptor_limit(plain.pid)
    spec = TargetSpec(TargetKind.SPAWN, shlex.join([sys.executable, "-c", LISTENS]))
    with start_target(spec, nofile=nofile) as running:
        assert running.pid is not None
        assert procfs.descriptor_limit(running.pid) == (
            inherited if nofile is None else soft_nofile(nofile)
        )


@pytest.mark.skipif(HARD == resource.RLIM_INFINITY, reason="no hard descriptor limit here")
def test_a_limit_above_the_hard_one_is_capped_at_it() -> None:
    assert soft_nofile(HARD + 1) == HARD
    with start_target(TargetSpec.default(), nofile=HARD + 1) as running:
        assert running.pid is not None
        assert procfs.descriptor_limit(running.pid) == HARD


@pytest.mark.parametrize("value", ["0", "lots"])
def test_a_bad_server_nofile_is_a_one_line_usage_error(value: str) -> None:
    result = run_cli("run", "--server-nofile", value, "--checks", "ECHO-BASIC-1", timeout=60)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert f"--server-nofile {value}: give a number of descriptors" in result.stderr


def test_the_pytest_plugin_takes_server_nofile_too() -> None:
    result = run_pytest("--pyargs", "conformance", "--server-nofile", "0", timeout=60)
    assert result.returncode == pytest.ExitCode.USAGE_ERROR, result.stdout + result.stderr
    assert "--server-nofile 0: give a number of descriptors" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.timeout(300)
def test_LIMIT_is_measured_against_the_reference_server_by_default(tmp_path: Path) -> None:
    """The suite's own limit may be far above 1024; the server's is 1024 all the same."""
    report = tmp_path / "report.json"
    command = f"{sys.executable} -m reference single --port {{port}}"
    result = run_cli(
        "run", "--spawn", command, "--checks", "ECHO-LIMIT-1", "--report-json", str(report),
        timeout=240,
    )  # fmt: skip
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "spawned servers start with a soft descriptor limit of 1024 (--server-nofile)" in out
    (target,) = json.loads(report.read_text())["targets"]
    (entry,) = target["results"]
    assert entry["verdict"] == "PASS", entry
