"""``reactor-conformance``: exit codes 0, 1, 2, 3, one-line errors, reports and replays."""

from __future__ import annotations

import argparse
import json
import os
import re
import select
import shlex
import signal
import stat
import subprocess
import uuid
from pathlib import Path

import pytest

from conformance import __version__
from conformance.checks import CATALOGUE
from conformance.fronts.cli import build_parser
from conformance.run.options import OPTIONS, Front
from conformance.run.results import use_colour
from conformance.run.selection import select_checks
from conformance.targets.target import free_port
from tests.conformance.support import ASYNCIO_ECHO, broken_spawn, run_cli, spawn_command


def assert_one_line_error(
    result: subprocess.CompletedProcess[str], code: int, *needles: str
) -> None:
    assert result.returncode == code, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_list_names_every_check_with_level_and_spec_aligned() -> None:
    result = run_cli("list")
    assert result.returncode == 0
    everything = result.stdout.splitlines()
    lines = [line for line in everything if not line.startswith(" ")]
    assert len(lines) == len(CATALOGUE)
    rules = [line.split()[1] for line in everything if line.startswith(" ")]
    assert rules == [rule.id for check in CATALOGUE for rule in check.rules]
    assert "HALFCLOSE-CLOSE" in rules
    for line, check in zip(lines, CATALOGUE, strict=True):
        assert line.split()[:2] == [check.id, check.level.value]
        assert check.spec in line
    for column in ("level", "category", "spec"):
        starts = set()
        for line, check in zip(lines, CATALOGUE, strict=True):
            cell = check.level.value if column == "level" else str(getattr(check, column))
            starts.add(line.index(f" {cell}", len(check.id)))
        assert len(starts) == 1, (column, starts)


def test_help_has_examples_and_version_prints_it() -> None:
    for argv in (["--help"], ["run", "--help"]):
        result = run_cli(*argv)
        assert result.returncode == 0
        assert "examples:\n  reactor-conformance " in result.stdout
    assert "--report-html PATH" in run_cli("run", "--help").stdout
    version = run_cli("--version")
    assert version.returncode == 0
    assert version.stdout.strip() == f"reactor-conformance {__version__}"


def test_select_checks_takes_ids_and_patterns_in_catalogue_order() -> None:
    resets = [c.id for c in CATALOGUE if c.id.startswith("ECHO-RESET-")]
    assert len(resets) >= 2
    chosen = select_checks(["echo-reset-*", "ECHO-BASIC-1", "ECHO-BASIC-1"])
    assert [c.id for c in chosen] == ["ECHO-BASIC-1", *resets]
    echo = [c.id for c in CATALOGUE if c.id.startswith("ECHO-")]
    assert [c.id for c in select_checks(["ECHO-*"])] == echo


class _Stream:
    def __init__(self, tty: bool) -> None:
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def test_use_colour_only_on_a_terminal_without_no_color() -> None:
    assert use_colour(_Stream(True), {"TERM": "xterm"})
    assert not use_colour(_Stream(False), {"TERM": "xterm"})
    assert not use_colour(_Stream(True), {"TERM": "xterm", "NO_COLOR": "1"})
    assert not use_colour(_Stream(True), {"TERM": "dumb"})


def test_run_with_no_target_passes_against_the_reference_single_server() -> None:
    result = run_cli("run", "-n", "2", "--profile", "ci", nofile=1024)
    assert result.returncode == 0, result.stdout + result.stderr
    tls = [c for c in CATALOGUE if c.category == "tls"]  # Not selected without --tls.
    assert f"{len(CATALOGUE) - len(tls)} passed, 0 failed, 0 non-strict, 0 skipped" in result.stdout
    assert "reference single server" in result.stdout


def test_run_passes_against_the_asyncio_echo_server() -> None:
    result = run_cli(
        "run", "--spawn", spawn_command(ASYNCIO_ECHO), "-n", "auto", "--profile", "ci", "--strict",
        nofile=1024,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r" passed, 0 failed, 0 non-strict, 0 skipped in ", result.stdout)


def test_run_against_a_broken_server_exits_1_with_a_bug_report_and_a_replay() -> None:
    spawn = broken_spawn("truncates_at_nul")
    result = run_cli("run", "--spawn", spawn, "--checks", "ECHO-BASIC-1,ECHO-PARTIAL-2")
    assert result.returncode == 1, result.stdout + result.stderr
    out = result.stdout
    assert "PASS        ECHO-BASIC-1" in out
    assert "FAIL        ECHO-PARTIAL-2" in out
    for needle in (
        "FAILED ECHO-PARTIAL-2 (MUST",
        "Divergence at step",
        "first divergent offset",
        "sent 0x00",
        "sent     (1048576 bytes) @0x",
        "received (",
        "ended: ",
        "1 passed, 1 failed, 0 non-strict",
    ):
        assert needle in out, out
    replay_lines = [line for line in out.splitlines() if line.strip().startswith("replay: ")]
    assert len(replay_lines) == 1
    replay = shlex.split(replay_lines[0].split("replay: ", 1)[1])
    assert replay[:2] == ["reactor-conformance", "run"]
    assert replay[-2:] == ["--checks", "ECHO-PARTIAL-2"]
    # The replay runs just that check, against the same (re-spawned) server.
    again = run_cli(*replay[1:])
    assert again.returncode == 1
    assert "0 passed, 1 failed" in again.stdout


def test_run_non_strict_should_failure_passes_unless_strict() -> None:
    spawn = broken_spawn("ignores_half_close")
    lenient = run_cli("run", "--spawn", spawn, "--checks", "ECHO-HALFCLOSE-2")
    assert lenient.returncode == 0, lenient.stdout + lenient.stderr
    assert "NON-STRICT  ECHO-HALFCLOSE-2" in lenient.stdout
    assert "0 passed, 0 failed, 1 non-strict" in lenient.stdout
    strict = run_cli("run", "--spawn", spawn, "--checks", "ECHO-HALFCLOSE-2", "--strict")
    assert strict.returncode == 1, strict.stdout + strict.stderr
    assert "--strict --checks ECHO-HALFCLOSE-2" in strict.stdout


def test_run_unreachable_target_exits_3_with_one_line() -> None:
    port = free_port()
    result = run_cli("run", "--target", f"127.0.0.1:{port}")
    assert_one_line_error(result, 3, f"cannot connect to 127.0.0.1:{port}", "Connection refused")


def test_run_server_that_never_listens_exits_3_with_one_line() -> None:
    result = run_cli("run", "--spawn", "python -c 'import sys; sys.exit(4)'")
    assert_one_line_error(result, 3, "exited with code 4")


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--target", "nonsense"], "malformed target 'nonsense'"),
        (["--target", "[::1]"], "malformed target"),
        (["--checks", "ECHO-NOPE-9"], "unknown check 'ECHO-NOPE-9'"),
        (["--category", "nope"], "unknown category 'nope'"),
        (["--checks", "ECHO-BASC-1"], "did you mean ECHO-BASIC-1"),
        (["--checks", "NOPE-*"], "no check matches 'NOPE-*'"),
        (["--target", "127.0.0.1:1", "--spawn", ""], "--spawn needs a command"),
        (["--report-json", "/nonexistent-dir/report.json"], "does not exist"),
        (["--report-html", "."], "a directory"),
        (["--report-json", "/proc/self/report.json"], "cannot be written"),
        (["--junitxml", "/proc/self/junit.xml"], "cannot be written"),
        (["-n", "many"], "or 'auto'"),
        (["--reference", "bogus"], "unknown reference model 'bogus'"),
        (["--oracle", "no_such_module_xyz:Oracle"], "cannot import"),
        (["-n", "-1"], "must be at least 0"),
        (["--max-connections", "0"], "--max-connections 0: give a number of connections above 0"),
        (["--max-connections", "lots"], "--max-connections lots: not a whole number"),
        (["--max-connections", "1e99"], "not a whole number"),
        (["--oracle", ""], "bad oracle ''"),
        (["--oracle", "nope"], "give echo, discard or package.module:Class"),
        (["--oracle", "tests.conformance.raises_on_import:Oracle"], "RuntimeError: this module"),
        (["--oracle", "conformance.oracle:Nothing"], "conformance.oracle has no Nothing"),
        (["--protocol", ""], "unknown protocol ''"),
        (["--protocol", "nope"], "unknown protocol 'nope'"),
        (["--protocol", "tests.conformance.raises_on_import:Model"], "RuntimeError: this module"),
        (["--protocol", "os:path"], "is not a protocol model"),
        (["--checks", ""], "--checks '' names nothing"),
        (["--checks", ",,"], "--checks ',,' names nothing"),
        (["--category", " , "], "--category ' , ' names nothing"),
        (["--profile", "bogus"], "invalid choice: 'bogus'"),
        (["--scenario", "/nonexistent/scenario.json"], "cannot read scenario"),
        (["--scenario", "/"], "Is a directory"),
        (["--timeout", "abc"], "not a number of seconds"),
        (["--timeout", "0"], "above 0, or none"),
        (["--timeout", "nan"], "above 0, or none"),
        (["--server-nofile", "0"], "give a number of descriptors above 0"),
        (["--server-nofile", "lots"], "give a number of descriptors above 0"),
        (["--load-hosts", ""], "bad host ''"),
        (["--load-hosts", "bogus=x"], "give a popen or ssh= gateway"),
        (["--load-hosts", "popen*0"], "needs a positive count"),
        (["--artifacts", ""], "--artifacts '': give a directory"),
        (["--artifacts", "/proc/self/artifacts"], "cannot be made"),
        (["-n", ""], "or 'auto'"),
        (["--target", ""], "malformed target ''"),
        (["--target", "127.0.0.1:0"], "port must be between 1 and 65535"),
        (["--target", "127.0.0.1:99999"], "port must be between 1 and 65535"),
        (["--reference", ""], "unknown reference model ''"),
        (["--report-json", ""], "--report-json '': give a file name"),
        (["--junitxml", ""], "--junitxml '': give a file name"),
        (["--no-such-option"], "unrecognized arguments: --no-such-option"),
        (["--strict=yes"], "ignored explicit argument 'yes'"),
        (["--tls-ca", "/nonexistent/ca.pem"], "--tls: cannot read the CA file /nonexistent/ca.pem"),
        (["--tls-ca", "/etc/hostname"], "--tls: cannot read the CA file /etc/hostname"),
        (["--tls-ca", " "], "--tls-ca is empty"),
        (["--tls-key", "/etc/hostname"], "--tls-key needs --tls-cert"),
        (["--tls-insecure", "--tls-ca", "/etc/hostname"], "--tls-insecure verifies nothing"),
        (["--tls-cert", "/nonexistent/me.pem"], "cannot load the client certificate"),
        (["--tls-version", "1.1"], "invalid choice: '1.1'"),
    ],
)
def test_run_usage_errors_exit_2_with_one_line(argv: list[str], needle: str) -> None:
    assert_one_line_error(run_cli("run", *argv), 2, needle)


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["-c", "0"], "must be at least 1"),
        (["-c", "abc"], "not a whole number"),
        (["-c", "99999999"], "connections must be between 1 and 100000"),
        (["--size", "0"], "must be at least 1"),
        (["--size", "99999999999"], "size must be between 1 and 16777216 bytes"),
        (["--window", "99999999999"], "window must be between 1 and 67108864 bytes"),
        (["--mode", "bogus"], "invalid choice: 'bogus'"),
        (["--duration", "abc"], "invalid float value"),
        (["--rounds", "0"], "must be at least 1"),
        (["--procs", "100000"], "procs must be between 1 and 256"),
        (["--hosts", ""], "bad host ''"),
        (["--faults", "bogus"], "unknown fault 'bogus'"),
        (["--faults", "reset=200%"], "between 0% and 100%"),
        (["--faults", "connect-storm=abc"], "needs a count of connections"),
        (["--protocol", ""], "unknown protocol ''"),
        (["--protocol", "tests.conformance.raises_on_import:Model"], "RuntimeError: this module"),
        (["--seed", "abc"], "invalid int value"),
        (["--target", "nonsense"], "malformed target 'nonsense'"),
        (["--spawn", ""], "--spawn needs a command"),
        (["--reference", "nope"], "unknown reference model 'nope'"),
    ],
)
def test_load_usage_errors_exit_2_with_one_line(argv: list[str], needle: str) -> None:
    assert_one_line_error(run_cli("load", *argv), 2, needle)


@pytest.mark.parametrize(
    ("command", "front", "shared"),
    [
        ("run", Front.CLI, {option.flag for option in OPTIONS}),
        (
            "load",
            Front.LOAD,
            {"--target", "--spawn", "--reference", "--protocol"}
            | {option.flag for option in OPTIONS if option.flag.startswith("--tls")},
        ),
    ],
)
def test_flags_in_the_option_table_share_its_dest_and_default(
    command: str, front: Front, shared: set[str]
) -> None:
    (commands,) = (a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    rows = {option.flag: option for option in OPTIONS}
    found = {
        flag: action
        for action in commands.choices[command]._actions
        for flag in action.option_strings
        if flag in rows
    }
    assert set(found) == shared
    for flag, action in found.items():
        row = rows[flag]
        assert front in row.fronts, flag
        assert (action.dest, action.default) == (row.dest, row.default_for(front)), flag


@pytest.mark.parametrize("duration", ["nan", "inf", "-1", "0"])
def test_load_duration_that_is_not_a_positive_number_is_a_usage_error(duration: str) -> None:
    result = run_cli("load", "--duration", duration)
    assert_one_line_error(result, 2, "duration must be a positive number of seconds")


def test_run_usage_error_leaves_an_existing_report_untouched(tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    report.write_text("what the user had")
    result = run_cli("run", "--report-json", str(report), "--checks", "ECHO-NOPE-9")
    assert_one_line_error(result, 2, "unknown check")
    assert report.read_text() == "what the user had"
    fresh = tmp_path / "new.json"
    assert_one_line_error(run_cli("run", "--report-json", str(fresh), "--checks", "NOPE-*"), 2)
    assert not fresh.exists()


def _wait_gone(pid: int, timeout: float) -> bool:
    """Whether process ``pid`` (not a child of this one) ends within ``timeout`` seconds."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        ready, _, _ = select.select([fd], [], [], timeout)
        return bool(ready)
    finally:
        os.close(fd)


SIGNALS_ITS_PARENT = Path(__file__).parent / "servers" / "signals_its_parent.py"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_a_signal_mid_check_shows_the_verdicts_so_far_and_stops_the_server(
    signum: signal.Signals, tmp_path: Path
) -> None:
    # The server signals the run itself once ECHO-SIZE-2 has sent it 1 MiB: mid-check.
    pidfile = tmp_path / "server.pid"
    spawn = (
        f"{spawn_command(SIGNALS_ITS_PARENT)} --signal {signum.name[3:]} "
        f"--pidfile {shlex.quote(str(pidfile))}"
    )
    report = tmp_path / "report.json"
    result = run_cli(
        "run", "--spawn", spawn, "--checks", "ECHO-BASIC-1,ECHO-SIZE-2",
        "--report-json", str(report), timeout=120,
    )  # fmt: skip
    assert result.returncode == 128 + signum, result
    assert result.stderr.strip().splitlines() == [
        f"reactor-conformance: stopped by {signum.name}; the servers it started are stopped"
    ], result.stderr
    verdicts = {
        line.split()[1]: line.split()[0]
        for line in result.stdout.splitlines()
        if line.startswith(("PASS ", "FAIL ", "SKIPPED ", "ERROR "))
    }
    assert verdicts == {"ECHO-BASIC-1": "PASS", "ECHO-SIZE-2": "SKIPPED"}, result.stdout
    assert "ECHO-SIZE-2: not run" in result.stdout
    assert "1 passed, 0 failed, 0 non-strict, 1 skipped" in result.stdout
    assert json.loads(report.read_text())["summary"]["passed"] == 1
    assert _wait_gone(int(pidfile.read_text()), 10), "the spawned server outlived the run"


def _marked(variable: str, value: str) -> list[int]:
    """The PIDs of the processes whose environment has ``variable=value``."""
    wanted = f"{variable}={value}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if wanted in environ.split(b"\0"):
            found.append(int(entry.name))
    return found


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "--checks", "ECHO-BASIC-1,ECHO-SIZE-2"],
        ["run", "-n", "2", "--checks", "ECHO-BASIC-1,ECHO-SIZE-2"],
        ["load", "--procs", "2", "-c", "8", "--size", "4096", "--duration", "60"],
        ["load", "--hosts", "popen*2", "-c", "8", "--size", "4096", "--duration", "60"],
    ],
    ids=["run", "run-n-2", "load", "load-hosts"],
)
def test_a_run_killed_outright_leaves_no_process_behind(argv: list[str], tmp_path: Path) -> None:
    # The server SIGKILLs the run (no handler runs) mid-check or mid-load: the server, the
    # xdist workers and the load processes end with it (their parent-death signal).
    mark = uuid.uuid4().hex
    pidfile = tmp_path / "server.pid"
    spawn = (
        f"{spawn_command(SIGNALS_ITS_PARENT)} --signal KILL --pidfile {shlex.quote(str(pidfile))}"
    )
    result = run_cli(*argv, "--spawn", spawn, timeout=120, env={"CONFORMANCE_TEST_MARK": mark})
    assert result.returncode == -signal.SIGKILL, result
    server = int(pidfile.read_text())
    assert _wait_gone(server, 10), f"the spawned server {server} outlived the run"
    left = [pid for pid in _marked("CONFORMANCE_TEST_MARK", mark) if not _wait_gone(pid, 10)]
    assert not left, f"processes the run started outlived it: {left}"


def test_a_report_that_cannot_be_written_is_one_line_and_exit_4(tmp_path: Path) -> None:
    full = Path("/dev/full")
    if not full.exists() or not stat.S_ISCHR(full.stat().st_mode):
        pytest.skip("no /dev/full device here to fill a report's disk")
    html, artifacts = tmp_path / "report.html", tmp_path / "artifacts"
    result = run_cli(
        "run", "--checks", "ECHO-BASIC-1", "--report-json", str(full), "--junitxml", str(full),
        "--report-html", str(html), "--artifacts", str(artifacts),
    )  # fmt: skip
    assert result.returncode == 4, result
    assert "Traceback" not in result.stderr
    assert sorted(result.stderr.strip().splitlines()) == [
        "reactor-conformance: cannot write the JSON report /dev/full: No space left on device",
        "reactor-conformance: cannot write the JUnit report /dev/full: No space left on device",
    ]
    assert "PASS" in result.stdout
    assert f"HTML report: {html}" in result.stdout
    assert "ECHO-BASIC-1" in html.read_text()
