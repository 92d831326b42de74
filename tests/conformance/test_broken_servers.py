"""The suite against deliberately broken servers, and against correct ones.

Each broken server in ``fixtures/servers/broken/`` declares, in its
``CAUGHT_BY`` tuple, the checks that must catch its bug; each pair runs
against a fresh server and the check must fail. The correct servers (the
three reference models, socat's fork+cat, the asyncio echo) must pass the
checks added to catch those bugs, and a quick subset of the others: the whole
catalogue against each correct server is ``tox -e conformance-*``.
"""

from __future__ import annotations

import shutil
import sys

import pytest

from conformance.checks import CATALOGUE, by_id
from conformance.matrix import BrokenServer, broken_servers, catches, run_against
from conformance.target import TargetKind, TargetSpec
from tests.conformance.support import ASYNCIO_ECHO, BROKEN, spawn_command

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
    assert outcome.report.startswith(f"FAILED {check_id} (")


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
