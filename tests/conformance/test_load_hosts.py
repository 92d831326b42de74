"""Load from several hosts: real popen gateways against a real echo server."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import execnet
import pytest

import conformance
from conformance.errors import UsageError
from conformance.load import ErrorKey, Fault, Faults, LoadResult, LoadSpec, remote
from conformance.load import hosts as hosts_module
from conformance.load.hosts import (
    HostError,
    HostEvent,
    HostReport,
    HostSpec,
    HostState,
    IllegalHostTransition,
    parse_hosts,
    run_hosts,
    share_out,
)
from conformance.load.spec import Mode
from conformance.targets.procfs import children
from tests.conformance.support import Sshd, SshdUnavailable, broken_spawn, run_cli, sshd
from tests.helpers import ROOT, ServerProcess

# An interpreter that starts but cannot import the project: no site-packages
# (-S), no current directory on sys.path (-I).
_NO_PROJECT = f"popen//python={sys.executable} -I -S"


@pytest.fixture(scope="module")
def single() -> Iterator[ServerProcess]:
    with ServerProcess(["single"]) as server:
        yield server


@pytest.fixture(scope="module")
def ssh_server() -> Iterator[Sshd]:
    """A throwaway sshd on 127.0.0.1 (skipped, with sshd's reason, where none can start)."""
    try:
        with sshd() as server:
            yield server
    except SshdUnavailable as exc:
        pytest.skip(f"no sshd for the ssh gateway tests: {exc}")


def test_HostSpec_parse_reads_the_gateway_and_its_load_processes() -> None:
    assert HostSpec.parse("popen") == HostSpec("popen")
    assert HostSpec.parse("popen*2") == HostSpec("popen", 2)
    assert HostSpec.parse("popen//python=python3*3") == HostSpec("popen//python=python3", 3)
    # ssh= runs python3 unless it names an interpreter; reports name its destination.
    h2 = HostSpec.parse("ssh=-p 2222 me@h2*4")
    assert h2 == HostSpec("ssh=-p 2222 me@h2//python=python3", 4)
    assert h2.name == "ssh=me@h2"
    assert HostSpec.parse("ssh=h3//python=/opt/py/bin/python").gateway.count("python=") == 1
    assert HostSpec.parse("popen*2").name == "popen"


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("popen*0", "positive count"),
        ("popen*x", "positive count"),
        ("*2", "execnet spec"),
        ("ssh", "ssh= needs a destination"),
        ("socket=127.0.0.1:8888", "give a popen or ssh= gateway"),
        ("_bad", "bad host"),
    ],
)
def test_HostSpec_parse_refuses_bad_specs_with_a_reason(text: str, needle: str) -> None:
    with pytest.raises(UsageError, match=needle):
        HostSpec.parse(text)


def test_HostReport_advance_follows_the_table_and_an_ended_host_stays() -> None:
    report = HostReport("popen", LoadSpec("127.0.0.1", 1))
    with pytest.raises(IllegalHostTransition, match="popen: GO is illegal in state STARTING"):
        report.advance(HostEvent.GO)
    report.advance(HostEvent.READY)
    report.advance(HostEvent.GO)
    assert report.state is HostState.RUNNING
    report.advance(HostEvent.DONE)
    report.fail("closed")  # its channel's close, after its result
    assert report.ended
    assert report.to_data()["state"] == "done"
    assert report.error is None


def test_HostReport_reads_a_hosts_errors_from_its_plain_data_and_names_them() -> None:
    spec = LoadSpec("127.0.0.1", 1)
    part = LoadResult(spec, round_trips=12)
    part.errors[ErrorKey("reset", Fault.SLOW_READER)] += 2
    report = HostReport("popen", spec)
    report.advance(HostEvent.READY)
    report.advance(HostEvent.GO)
    # What the host sends over its channel, as execnet carries it.
    hosts_module._receive(report, ("done", execnet.loads(execnet.dumps(part.to_data()))), True)
    assert report.result is not None
    assert report.result.errors == {ErrorKey("reset", Fault.SLOW_READER): 2}
    assert report.summary() == "popen: 12 round trips, errors {'reset after slow-reader': 2}"
    assert report.to_data()["errors"] == [["reset", "slow-reader", 2]]


def test_share_out_shares_connections_by_load_processes_and_labels_repeats() -> None:
    spec = LoadSpec("127.0.0.1", 1, connections=10, procs=1, seed=7)
    shared = share_out(spec, parse_hosts(["popen*3", "popen", "popen"]))
    assert [label for label, _ in shared] == ["popen", "popen#2", "popen#3"]
    assert [own.procs for _, own in shared] == [3, 1, 1]
    assert [own.connections for _, own in shared] == [6, 2, 2]
    assert len({own.seed for _, own in shared}) == 3
    assert shared[0][1].seed == 7
    with pytest.raises(ValueError, match="at least the load processes"):
        share_out(LoadSpec("127.0.0.1", 1, connections=3), parse_hosts(["popen*2", "popen*2"]))


def test_run_hosts_two_popen_hosts_merge_their_results(single: ServerProcess) -> None:
    host, port = single.address
    spec = LoadSpec(host, port, connections=6, size=100, rounds=40, duration=20.0)
    pids: dict[str, int] = {}
    started = time.monotonic()
    outcome = run_hosts(spec, parse_hosts(["popen*2", "popen"]), on_ready=pids.update)
    assert time.monotonic() - started < 20
    assert outcome.ok, outcome.summary_line()
    assert not outcome.partial
    result = outcome.result
    assert [h.label for h in outcome.hosts] == ["popen", "popen#2"]
    assert [h.spec.connections for h in outcome.hosts] == [4, 2]
    parts = [h.result for h in outcome.hosts]
    assert all(part is not None for part in parts)
    assert [part.round_trips for part in parts if part] == [4 * 40, 2 * 40]
    assert result.round_trips == 6 * 40
    assert result.bytes_verified == 6 * 40 * 100 == sum(p.bytes_verified for p in parts if p)
    assert result.latency.count == 6 * 40
    assert result.connections_opened == 6
    assert result.server_alive is True
    assert not result.errors
    # Each host ran in its own interpreter, not this one.
    assert set(pids) == {"popen", "popen#2"}
    assert os.getpid() not in pids.values()
    assert len(set(pids.values())) == 2
    data = outcome.to_data()
    assert data["ok"] is True
    assert data["partial"] is False
    assert [h["round_trips"] for h in data["hosts"]] == [160, 80]
    assert [h["state"] for h in data["hosts"]] == ["done", "done"]
    line = outcome.summary_line()
    assert "240 round trips" in line
    assert "hosts: popen: 160 round trips, errors 0; popen#2: 80 round trips, errors 0" in line


@pytest.mark.parametrize(
    ("mode", "faults"),
    [
        ("stream", Faults(connect_storm=40)),
        ("pingpong", Faults(reset=0.05, half_close=0.05, connect_storm=40)),
    ],
)
def test_run_hosts_modes_and_faults_are_shared_and_named_per_host(
    single: ServerProcess, mode: Mode, faults: Faults
) -> None:
    host, port = single.address
    spec = LoadSpec(host, port, connections=4, mode=mode, window=4096, duration=0.6, faults=faults)
    outcome = run_hosts(spec, parse_hosts(["popen", "popen"]))
    assert outcome.ok, outcome.summary_line()
    parts = [h.result for h in outcome.hosts if h.result is not None]
    assert len(parts) == 2
    assert all(part.bytes_verified > 0 for part in parts)
    assert outcome.result.bytes_verified == sum(part.bytes_verified for part in parts)
    # The storm is 40 connections in all, not 40 per host.
    assert [h.spec.faults.connect_storm for h in outcome.hosts] == [20, 20]
    assert outcome.result.injected["connect-storm"] == 40
    assert outcome.result.injected == parts[0].injected + parts[1].injected
    hosts = outcome.to_data()["hosts"]
    assert [h["faults_injected"] for h in hosts] == [dict(p.injected) for p in parts]


def test_run_hosts_a_stop_ends_every_host_early_and_the_result_is_stopped(
    single: ServerProcess,
) -> None:
    host, port = single.address
    spec = LoadSpec(host, port, connections=4, duration=30.0)
    stop = threading.Event()

    def stop_once_running(elapsed: float, trips: int, nbytes: int) -> None:
        if trips > 0:
            stop.set()

    started = time.monotonic()
    outcome = run_hosts(
        spec, parse_hosts(["popen", "popen"]), progress=stop_once_running, stop=stop
    )
    assert time.monotonic() - started < 10
    assert [h.state for h in outcome.hosts] == [HostState.DONE, HostState.DONE]
    assert all(h.result is not None and h.result.stopped for h in outcome.hosts)
    assert outcome.result.stopped
    assert not outcome.ok
    assert "STOPPED" in outcome.summary_line()


def test_run_hosts_a_missing_python_is_one_host_error(single: ServerProcess) -> None:
    host, port = single.address
    spec = LoadSpec(host, port, connections=3, duration=5.0)
    before = set(children(os.getpid()) or ())
    started = time.monotonic()
    with pytest.raises(HostError, match=r"^host popen//python=/nonexistent: python not found$"):
        run_hosts(spec, parse_hosts(["popen", "popen", "popen//python=/nonexistent"]))
    assert time.monotonic() - started < 10
    # The hosts that did start (or were starting) are ended with the run.
    assert set(children(os.getpid()) or ()) <= before


def test_run_hosts_a_host_that_never_gets_ready_is_one_host_error_in_time(
    single: ServerProcess,
) -> None:
    host, port = single.address
    spec = LoadSpec(host, port, connections=2, duration=5.0, connect_timeout=1.0)
    # An "interpreter" that never answers execnet's bootstrap.
    hung = "popen//python=sh -c 'exec sleep 60'"
    before = set(children(os.getpid()) or ())
    started = time.monotonic()
    try:
        never = f"^host {re.escape(hung)}: did not become ready in time \\(11s\\)$"
        with pytest.raises(HostError, match=never):
            run_hosts(spec, parse_hosts(["popen", hung]))
        assert time.monotonic() - started < 1.0 + 10.0 + 3 + 3 + 3
    finally:
        for pid in set(children(os.getpid()) or ()) - before:
            os.kill(pid, signal.SIGKILL)  # the sleep this test started, through the gateway


def test_run_hosts_a_host_without_the_project_runs_the_copy_it_is_sent(
    single: ServerProcess,
) -> None:
    # No site-packages and no project on sys.path: only what the controller sends.
    # Two load processes, so the spawned ones import the sent copy too.
    host, port = single.address
    spec = LoadSpec(host, port, connections=4, size=64, rounds=20, duration=10.0)
    outcome = run_hosts(spec, parse_hosts([_NO_PROJECT + "*2"]))
    assert outcome.ok, outcome.summary_line()
    assert outcome.result.round_trips == 4 * 20


def test_run_hosts_a_host_that_cannot_import_what_it_is_sent_says_not_importable(
    single: ServerProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    host, port = single.address
    spec = LoadSpec(host, port, connections=2, duration=5.0)
    files = remote.package_files()
    del files["conformance/load/spec.py"]
    monkeypatch.setattr(hosts_module, "package_files", lambda: files)
    version = re.escape(conformance.__version__)
    with pytest.raises(
        HostError,
        match=f"reactor-conformance {version} not importable: ModuleNotFoundError: .*spec",
    ):
        run_hosts(spec, parse_hosts([_NO_PROJECT]))


def test_package_files_are_what_a_host_needs_and_no_execnet() -> None:
    files = remote.package_files()
    assert "conformance/load/remote.py" in files
    assert "conformance/load/hosts.py" not in files
    assert not any("import execnet" in source for source in files.values())
    assert sum(len(source) for source in files.values()) < 400_000


def test_run_hosts_a_host_killed_mid_run_is_named_and_the_others_kept(
    single: ServerProcess,
) -> None:
    host, port = single.address
    duration = 2.0
    spec = LoadSpec(host, port, connections=4, duration=duration, drain_timeout=2.0)
    pids: dict[str, int] = {}
    killed: list[int] = []

    def kill_once_running(elapsed: float, trips: int, nbytes: int) -> None:
        if not killed and trips > 0:
            killed.append(pids["popen#2"])
            os.kill(pids["popen#2"], signal.SIGKILL)

    started = time.monotonic()
    outcome = run_hosts(
        spec, parse_hosts(["popen", "popen"]), progress=kill_once_running, on_ready=pids.update
    )
    took = time.monotonic() - started
    assert killed, "no progress came before the end"
    # Bound: start + duration + drain + probe + grace; the survivor runs its full time.
    assert took < duration + spec.drain_timeout + 5 + 10 + 20
    survivor, victim = outcome.hosts
    assert victim.state is HostState.FAILED
    assert victim.error == f"died mid-run (pid {killed[0]})"
    assert survivor.state is HostState.DONE
    assert survivor.result is not None
    assert survivor.result.round_trips > 0
    assert outcome.partial
    assert not outcome.ok
    assert outcome.result.round_trips == survivor.result.round_trips
    assert "popen#2: FAILED (died mid-run" in outcome.summary_line()
    assert "PARTIAL" in outcome.summary_line()


def test_run_hosts_a_host_that_stops_answering_is_given_up_within_the_bound(
    single: ServerProcess,
) -> None:
    host, port = single.address
    spec = LoadSpec(host, port, connections=4, duration=0.5, drain_timeout=0.5, connect_timeout=1.0)
    bound = 0.5 + 0.5 + 1.0 + 5.0  # duration + drain + probe + grace
    before = set(children(os.getpid()) or ())
    pids: dict[str, int] = {}
    frozen: list[int] = []

    def freeze_once_running(elapsed: float, trips: int, nbytes: int) -> None:
        if not frozen and trips > 0:
            frozen.append(pids["popen#2"])
            os.kill(pids["popen#2"], signal.SIGSTOP)

    started = time.monotonic()
    outcome = run_hosts(
        spec, parse_hosts(["popen", "popen"]), progress=freeze_once_running, on_ready=pids.update
    )
    took = time.monotonic() - started
    assert frozen, "no progress came before the end"
    assert bound - 1 < took < bound + 3 + 5  # + the start and the gateways' exit grace
    survivor, victim = outcome.hosts
    assert victim.state is HostState.FAILED
    assert victim.error == "did not answer in time (7s)"
    assert survivor.state is HostState.DONE
    assert outcome.partial
    assert not outcome.ok
    # The frozen host's process was killed with the group, not left behind.
    assert set(children(os.getpid()) or ()) <= before


def test_cli_load_hosts_json_lists_every_host() -> None:
    result = run_cli(
        "load", "--reference", "single", "-c", "4", "--rounds", "20", "--hosts", "popen",
        "--hosts", "popen", "--json", timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] is True
    assert report["partial"] is False
    assert report["round_trips"] == 80
    assert [h["host"] for h in report["hosts"]] == ["popen", "popen#2"]
    assert [h["round_trips"] for h in report["hosts"]] == [40, 40]
    assert "hosts ready, go: popen pid " in result.stderr


@pytest.mark.parametrize(
    ("hosts", "code", "line"),
    [
        (
            ["popen", "popen//python=/nonexistent"],
            3,
            "reactor-conformance: host popen//python=/nonexistent: python not found",
        ),
        (["popen*0"], 2, "reactor-conformance: error: bad host 'popen*0'"),
        (["ssh="], 2, "ssh= needs a destination"),
        (["popen", "popen*2"], 2, "connections (2) must be at least the load processes"),
    ],
)
def test_cli_load_hosts_bad_host_is_one_line_and_a_clear_exit(
    hosts: list[str], code: int, line: str
) -> None:
    argv = [arg for spec in hosts for arg in ("--hosts", spec)]
    result = run_cli("load", "--reference", "single", "-c", "2", *argv, timeout=60)
    assert result.returncode == code, result.stdout + result.stderr
    assert line in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr


def test_cli_load_hosts_a_host_killed_mid_run_exits_1_naming_it() -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    argv = [sys.executable, "-m", "conformance", "load", "--reference", "single", "-c", "4"]
    argv += ["--duration", "3", "--hosts", "popen", "--hosts", "popen"]
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT
    )
    lines: queue.Queue[str] = queue.Queue()
    stderr = proc.stderr
    assert stderr is not None

    def read_lines() -> None:
        for line in stderr:
            lines.put(line)

    reader = threading.Thread(target=read_lines)
    reader.start()
    try:
        deadline = time.monotonic() + 40
        ready = ""
        while "hosts ready" not in ready:
            ready = lines.get(timeout=max(0.1, deadline - time.monotonic()))
        victim = int(ready.rsplit("popen#2 pid ", 1)[1].split()[0])
        os.kill(victim, signal.SIGKILL)
        out, _ = proc.communicate(timeout=40)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        reader.join(10)
    assert proc.returncode == 1, out
    assert f"popen#2: FAILED (died mid-run (pid {victim}))" in out
    assert "PARTIAL" in out
    assert "popen: " in out


def test_run_hosts_an_ssh_host_and_a_popen_host_merge_their_results(
    single: ServerProcess, ssh_server: Sshd
) -> None:
    # Through a real sshd, to an interpreter that has only what it is sent.
    host, port = single.address
    spec = LoadSpec(host, port, connections=6, size=100, rounds=30, duration=20.0)
    pids: dict[str, int] = {}
    ssh = ssh_server.gateway(extra=" -I -S") + "*2"
    outcome = run_hosts(spec, parse_hosts([ssh, "popen"]), on_ready=pids.update)
    assert outcome.ok, outcome.summary_line()
    assert [h.label for h in outcome.hosts] == [f"ssh={Sshd.HOST}", "popen"]
    assert [h.result.round_trips for h in outcome.hosts if h.result] == [4 * 30, 2 * 30]
    assert outcome.result.round_trips == 6 * 30
    assert outcome.result.bytes_verified == 6 * 30 * 100
    # The ssh host's load ran in a process that sshd started, not one of ours.
    assert pids[f"ssh={Sshd.HOST}"] not in set(children(os.getpid()) or ())


@pytest.mark.parametrize(
    ("python", "port", "why"),
    [
        ("/nonexistent/python3", None, "/nonexistent/python3 not found"),
        (sys.executable, 1, "ssh failed: .*(refused|closed|reset)"),
    ],
)
def test_run_hosts_an_ssh_host_that_cannot_run_says_why_in_one_host_error(
    single: ServerProcess, ssh_server: Sshd, python: str, port: int | None, why: str
) -> None:
    host, server_port = single.address
    spec = LoadSpec(host, server_port, connections=2, duration=5.0)
    gateway = ssh_server.gateway(python)
    if port is not None:  # the same host and key, on a port where no sshd listens
        gateway = f"ssh=-p {port} {Sshd.HOST}//ssh_config={ssh_server.config}//python={python}"
    started = time.monotonic()
    with pytest.raises(HostError, match=f"^host ssh={Sshd.HOST}: {why}"):
        run_hosts(spec, parse_hosts(["popen", gateway]))
    assert time.monotonic() - started < 15


def test_run_hosts_an_ssh_host_killed_mid_run_is_named_and_the_others_kept(
    single: ServerProcess, ssh_server: Sshd
) -> None:
    host, port = single.address
    spec = LoadSpec(host, port, connections=4, duration=2.0, drain_timeout=2.0)
    label = f"ssh={Sshd.HOST}"
    pids: dict[str, int] = {}
    killed: list[int] = []

    def kill_once_running(elapsed: float, trips: int, nbytes: int) -> None:
        if not killed and trips > 0:
            killed.append(pids[label])
            os.kill(pids[label], signal.SIGKILL)  # the host's worker, started by sshd

    outcome = run_hosts(
        spec,
        parse_hosts(["popen", ssh_server.gateway()]),
        progress=kill_once_running,
        on_ready=pids.update,
    )
    assert killed, "no progress came before the end"
    survivor, victim = outcome.hosts
    assert victim.label == label
    assert victim.state is HostState.FAILED
    assert victim.error == f"died mid-run (pid {killed[0]})"
    assert survivor.state is HostState.DONE
    assert outcome.partial
    assert f"{label}: FAILED (died mid-run" in outcome.summary_line()


def test_cli_run_load_hosts_a_load_check_fails_from_the_hosts_and_names_them(
    tmp_path: Path,
) -> None:
    report = tmp_path / "report.json"
    result = run_cli(
        "run", "--spawn", broken_spawn("one_at_a_time"), "--checks", "ECHO-LOAD-1",
        "--load-hosts", "popen", "--load-hosts", "popen", "--report-json", str(report),
        timeout=120,
    )  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    assert "the load checks run from popen, popen" in result.stdout
    assert "step '200 connections x 200 round trips, every byte checked, from popen, popen'" in (
        result.stdout
    )
    assert "hosts: popen: " in result.stdout
    assert "popen#2: " in result.stdout
    assert "--load-hosts popen --load-hosts popen --checks ECHO-LOAD-1" in result.stdout
    data = json.loads(report.read_text())
    assert data["load_hosts"] == ["popen", "popen"]
    assert data["targets"][0]["results"][0]["verdict"] == "FAIL"


def test_cli_run_load_hosts_a_host_that_cannot_start_skips_the_load_checks_saying_why(
    tmp_path: Path,
) -> None:
    report = tmp_path / "report.json"
    result = run_cli(
        "run", "--reference", "single", "--checks", "ECHO-LOAD-1", "--load-hosts",
        "popen//python=/nonexistent", "--report-json", str(report), timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    # The text summary says why, as the JSON report does.
    assert "skipped, and why:\n  ECHO-LOAD-1: the load from popen//python=/nonexistent " in (
        result.stdout
    )
    (entry,) = json.loads(report.read_text())["targets"][0]["results"]
    assert entry["verdict"] == "SKIPPED"
    assert entry["details"] == (
        "the load from popen//python=/nonexistent could not start: "
        "host popen//python=/nonexistent: python not found"
    )


def test_cli_run_load_hosts_a_bad_spec_is_a_usage_error() -> None:
    result = run_cli("run", "--reference", "single", "--load-hosts", "popen*0", timeout=60)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "bad host 'popen*0'" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_run_load_hosts_over_ssh_pass_the_reference_server(ssh_server: Sshd) -> None:
    result = run_cli(
        "run", "--reference", "single", "--checks", "ECHO-LOAD-1,ECHO-LOAD-3",
        "--load-hosts", ssh_server.gateway(extra=" -I -S") + "*2", timeout=180,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("PASS") == 2, result.stdout
