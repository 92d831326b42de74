"""The suite against deliberately broken servers, and against correct ones.

Each broken server in ``fixtures/servers/broken/`` declares, in its
``CAUGHT_BY`` tuple, the checks that must catch its bug, and in ``REASON`` the
pattern their failure reports must match; each pair runs against a fresh
server and the check must fail, for that reason. The correct servers (the
three reference models, socat's fork+cat, the asyncio echo) must pass the
checks added to catch those bugs, and a quick subset of the others: the whole
catalogue against each correct server is ``tox -e conformance-*``.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from conformance.checks import CATALOGUE, by_id
from conformance.targets.target import TargetKind, TargetSpec
from tests.conformance.support import ASYNCIO_ECHO, BROKEN, spawn_command
from tools.matrix import BrokenServer, Cell, broken_servers, catches, run_against

SERVERS = broken_servers(BROKEN)

DECLARED = [(server, check_id) for server in SERVERS for check_id in server.caught_by]

SOCAT = "socat TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork,backlog=1024 EXEC:cat"

CORRECT: dict[str, TargetSpec] = {
    "single": TargetSpec(TargetKind.REFERENCE, "single"),
    "pool": TargetSpec(TargetKind.REFERENCE, "pool"),
    "multi": TargetSpec(TargetKind.REFERENCE, "multi"),
    "socat": TargetSpec(TargetKind.SPAWN, SOCAT),
    "asyncio": TargetSpec(TargetKind.SPAWN, spawn_command(ASYNCIO_ECHO)),
}

#: Against the correct servers: the checks added with the broken servers, and a
#: quick subset of the rest (one per kind of bug: bytes, order, close, reset).
CORRECT_CHECKS = (
    "ECHO-BASIC-1",
    "ECHO-BASIC-4",
    "ECHO-DUPLEX-1",
    "ECHO-HALFCLOSE-1",
    "ECHO-HALFCLOSE-3",
    "ECHO-RESET-1",
    "ECHO-RESET-3",
    "ECHO-CPU-1",
    "ECHO-MEM-1",
)


def test_every_broken_server_declares_known_checks() -> None:
    names = {server.name for server in SERVERS}
    assert {
        "truncates_at_nul",
        "sends_fixed_buffer",
        "ignores_short_send",
        "edge_triggered_single_read",
        "reorders_chunks",
        "writes_from_workers",
        "closes_on_eof",
        "spins_after_half_close",
        "crashes_on_reset",
        "exits_on_emfile",
        "buffers_without_limit",
        "one_at_a_time",
        "blocks_in_send",
    } <= names
    for server in SERVERS:
        assert server.caught_by, server.name
        assert len(set(server.caught_by)) == len(server.caught_by), server.name


def test_broken_tls_servers_are_read_as_tls() -> None:
    assert {server.name for server in SERVERS if server.tls} == {
        "tls_blocking_handshake",
        "tls_closes_on_empty_read",
        "tls_drops_unsent_remainder",
        "tls_leaks_failed_handshakes",
        "tls_no_close_notify",
        "tls_one_record_per_event",
        "tls_spins_on_handshake",
    }


def test_every_check_catches_some_broken_server() -> None:
    declared = {check_id for server in SERVERS for check_id in server.caught_by}
    assert [c.id for c in CATALOGUE if c.id not in declared] == []


@pytest.mark.parametrize(
    ("server", "check_id"), DECLARED, ids=[f"{s.name}-{c}" for s, c in DECLARED]
)
def test_declared_check_catches_the_broken_server(server: BrokenServer, check_id: str) -> None:
    outcome = catches(server, by_id(check_id))
    assert outcome.error is None, outcome.error  # A fault in the suite is no catch.
    assert not outcome.passed, (
        f"{check_id} passed against {server.name}, which it must catch; replay: "
        f"{sys.executable} tools/kill_matrix.py --servers {server.name} --checks {check_id}"
    )
    report = outcome.report
    assert report.startswith(f"FAILED {check_id} (")
    assert server.explains(report), (
        f"{check_id} caught {server.name} for another reason than its REASON "
        f"{server.reason!r}; the report:\n{report}"
    )
    # The reason names the failure: not the check (the first line), nor the
    # server's file (in the replay command, the last line).
    lines = report.splitlines()
    assert not server.explains(lines[0]), (server.reason, lines[0])
    assert not server.explains(lines[-1]), (server.reason, lines[-1])


def write_server(directory: Path, body: str, name: str = "bug.py") -> None:
    (directory / name).write_text('"""A broken server, as far as the matrix reads it."""\n' + body)


def test_broken_servers_reads_reason(tmp_path: Path) -> None:
    write_server(tmp_path, 'CAUGHT_BY = ("ECHO-BASIC-1",)\nREASON = r"byte \\d+ differs"\n')
    write_server(tmp_path, "CAUGHT_BY = ()\n", name="_shared.py")
    [server] = broken_servers(tmp_path)
    assert (server.name, server.caught_by, server.reason) == (
        "bug",
        ("ECHO-BASIC-1",),
        r"byte \d+ differs",
    )
    assert server.explains("FAILED ECHO-BASIC-1 (...)\n  Divergence: byte 12 differs: sent 0x00")
    assert not server.explains("FAILED ECHO-BASIC-1 (...)\n  StepTimeout: did not complete")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('CAUGHT_BY = ("ECHO-BASIC-1",)\n', "no REASON"),
        ('CAUGHT_BY = ("ECHO-BASIC-1",)\nREASON = r"byte (\\d+ differs"\n', "not a valid regular"),
        ('CAUGHT_BY = ("ECHO-BASIC-1",)\nREASON = {"ECHO-BASIC-1": "x"}\n', "string literal"),
        ('CAUGHT_BY = ("ECHO-BASIC-1",)\nREASON = "a" + "b"\n', "string literal"),
        ('CAUGHT_BY = ("ECHO-BASIC-1",)\nREASON = r".*"\n', "matches the empty string"),
        ('CAUGHT_BY = ("ECHO-BASIC-1",)\nREASON = r"reset|"\n', "matches the empty string"),
    ],
    ids=["missing", "invalid-regex", "dict", "expression", "anything", "empty-alternative"],
)
def test_broken_servers_rejects_a_bad_reason(tmp_path: Path, body: str, message: str) -> None:
    write_server(tmp_path, body)
    with pytest.raises(ValueError, match=message) as info:
        broken_servers(tmp_path)
    assert str(tmp_path / "bug.py") in str(info.value)


@pytest.mark.parametrize(
    ("declared", "caught", "for_reason", "mark", "holds"),
    [
        (True, True, True, "**X**", True),
        (True, True, False, "WRONG", False),
        (True, False, False, "MISSED", False),
        (False, True, True, "x", True),
        (False, True, False, "x", True),
        (False, False, False, ".", True),
    ],
)
def test_Cell_mark_says_whether_a_declared_catch_was_for_its_reason(
    declared: bool, caught: bool, for_reason: bool, mark: str, holds: bool
) -> None:
    cell = Cell("bug", "ECHO-BASIC-1", declared, caught, 0.1, "Divergence: ...", for_reason)
    assert (cell.mark, cell.holds) == (mark, holds)


CORRECT_PAIRS = [(name, check_id) for name in CORRECT for check_id in CORRECT_CHECKS]


@pytest.mark.parametrize(
    ("name", "check_id"), CORRECT_PAIRS, ids=[f"{n}-{c}" for n, c in CORRECT_PAIRS]
)
def test_correct_server_passes(name: str, check_id: str) -> None:
    if name == "socat" and shutil.which("socat") is None:
        pytest.skip("socat is not installed")
    check = by_id(check_id)
    outcome = run_against(CORRECT[name], check)
    assert outcome.passed, outcome.report
