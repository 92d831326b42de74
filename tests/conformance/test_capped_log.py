"""A server's stderr log keeps its start and its end, and says what it dropped."""

from __future__ import annotations

import re
from pathlib import Path

from conformance.targets.capped_log import CappedLog
from tests.conformance.support import run_cli, spawn_command
from tests.helpers import ROOT

FLOODS_STDERR = ROOT / "fixtures" / "servers" / "floods_stderr.py"


def test_a_short_log_is_written_whole(tmp_path: Path) -> None:
    path = tmp_path / "s.log"
    log = CappedLog(path, head=100, tail=50)
    for n in range(5):
        log.write_line(f"line {n}")
    log.close()
    assert path.read_text() == "".join(f"line {n}\n" for n in range(5))
    assert log.dropped == 0


def test_a_long_log_keeps_its_head_and_tail_and_counts_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "s.log"
    log = CappedLog(path, head=100, tail=50)
    lines = [f"line {n:04d}" for n in range(1000)]  # 10 bytes each with the newline
    for line in lines:
        log.write_line(line)
    assert path.stat().st_size == 100  # the head is on disk as it comes
    log.close()
    text = path.read_text()
    head, marker, tail = text.split("\n", 10)[:10], text.split("\n")[10], text.split("\n")[11:-1]
    assert head == lines[:10]
    assert marker == (
        "--- 9850 bytes (985 lines) of stderr dropped here: the log keeps its first "
        "100 bytes and the last 50 bytes of each run"
    )
    assert tail == lines[-5:]
    assert log.dropped == 9850


def test_a_restart_appends_only_its_tail_once_the_head_is_full(tmp_path: Path) -> None:
    path = tmp_path / "s.log"
    for run in range(3):
        log = CappedLog(path, head=100, tail=50)
        for n in range(100):
            log.write_line(f"run {run} {n:02d}")
        log.close()
    text = path.read_text()
    assert text.startswith("run 0 00\n")
    assert text.count("dropped here") == 3
    assert text.endswith("".join(f"run 2 {n:02d}\n" for n in range(95, 100)))
    assert len(text) < 100 + 3 * (50 + 120)


def test_a_line_longer_than_the_tail_keeps_its_end(tmp_path: Path) -> None:
    path = tmp_path / "s.log"
    log = CappedLog(path, head=0, tail=10)
    log.write_line("a" * 100 + "END")
    log.close()
    assert path.read_text().endswith("\naaaaaaEND\n")
    assert log.dropped == 94


def test_a_run_against_a_server_flooding_stderr_keeps_a_few_mib(tmp_path: Path) -> None:
    artifacts = tmp_path / "artifacts"
    result = run_cli(
        "run", "--spawn", spawn_command(FLOODS_STDERR), "--artifacts", str(artifacts),
        "--checks", "ECHO-BASIC-*,ECHO-SIZE-*,ECHO-MANY-1", timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result
    (log,) = artifacts.glob("*.stderr.log")
    assert log.stat().st_size <= 2 * (1 << 20) + 4096
    text = log.read_text()
    assert text.startswith("--- ")
    assert "floods_stderr: line 0 " in text
    dropped = re.search(r"--- (\d+) bytes \((\d+) lines\) of stderr dropped here", text)
    assert dropped is not None, text[-500:]
    assert int(dropped[1]) > 1 << 20
    assert text.endswith("x\n")
