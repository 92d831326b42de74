"""What the checks learn from the server's listening socket, through ``/proc`` and ``sock_diag``.

- The resource checks measure a server whose sockets are all in
  ``/proc/net/tcp6``: ``fixtures/servers/hostile/listens_ipv4_mapped.py``
  listens on an IPv6 socket bound to ``::ffff:127.0.0.1`` (as a Java server
  does) and serves the suite's IPv4 connections there, its listener and its
  end of each connection listed IPv4-mapped in ``tcp6``, none in ``tcp``. The
  checks must find it there and measure it: PASS, not SKIPPED.
- A load check that fails the way an overflowing accept queue makes it fail
  names the backlog as the cause only when it can be: the server's listener
  is here, queues fewer connections than the load opens, and the kernel
  counted overflows meanwhile. The broken server ``small_backlog.py`` shows
  the whole path (``tests/conformance/test_broken_servers.py``); here, each
  condition is held to against a real listener.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest

from conformance.checks.load import _backlog_overflowed
from conformance.harness import Harness
from conformance.load import LoadSpec
from conformance.targets import procfs
from conformance.targets.target import Address
from tests.conformance.support import SERVERS, run_cli, spawn_command

MAPPED = SERVERS / "hostile" / "listens_ipv4_mapped.py"

#: Each finds the server's process by its sockets (ECHO-LIMIT-1 reads its limit, 1024 here).
MEASURING = ("ECHO-STORM-1", "ECHO-STORM-2", "ECHO-CPU-1", "ECHO-MEM-1", "ECHO-LIMIT-1")


def _ipv4_mapped_listener_possible() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.bind(("::ffff:127.0.0.1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(
    not _ipv4_mapped_listener_possible(), reason="no IPv6 socket can bind ::ffff:127.0.0.1 here"
)
@pytest.mark.timeout(300)
def test_resource_checks_measure_a_server_listening_on_an_ipv4_mapped_address(
    tmp_path: Path,
) -> None:
    report = tmp_path / "report.json"
    result = run_cli(
        "run", "--spawn", spawn_command(MAPPED), "--checks", ",".join(MEASURING),
        "--report-json", str(report), "--artifacts", str(tmp_path / "artifacts"),
        timeout=280, nofile=1024,
    )  # fmt: skip
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    (target,) = json.loads(report.read_text())["targets"]
    assert target["address"].startswith("127.0.0.1:")  # The suite connects over IPv4.
    verdicts = {entry["id"]: (entry["verdict"], entry["details"]) for entry in target["results"]}
    # SKIPPED would say "the server's process is not visible from here" (or, for
    # ECHO-LIMIT-1, "its limit is not visible"): each was measured instead.
    assert verdicts == {check_id: ("PASS", "") for check_id in MEASURING}, out
    assert f"{len(MEASURING)} passed, 0 failed, 0 non-strict, 0 skipped" in out


STALLED_AT_ONCE: dict[str, Any] = {
    "kind": "stalled",
    "connection": 3,
    "offset": 0,
    "detail": "nothing came back",
}


@pytest.fixture
def counted() -> int:
    """A ``ListenOverflows`` reading taken one overflow ago: the counter grew since."""
    now = procfs.listen_overflows()
    if now is None:
        pytest.skip("/proc/net/netstat has no TcpExt ListenOverflows here")
    return now - 1


def _note(listener: socket.socket, first: dict[str, Any], before: int | None) -> str:
    host, port = listener.getsockname()[:2]
    harness = Harness(Address(host, port))
    return _backlog_overflowed(harness, LoadSpec(host, port, connections=200), first, before)


def test_a_load_failure_names_a_small_backlog_that_overflowed(counted: int) -> None:
    with socket.create_server(("127.0.0.1", 0), backlog=5) as listener:
        note = _note(listener, STALLED_AT_ONCE, counted)
        connect = {"kind": "connect", "connection": None, "detail": "not accepted within 10s"}
        assert _note(listener, connect, counted) == note
    assert note.startswith("A listen backlog overflowed ")
    assert "on this machine during this check" in note
    assert "the server listens with a backlog of 5 while this check opens 200 connections" in note


@pytest.mark.parametrize(
    ("backlog", "first", "grew"),
    [
        (1024, STALLED_AT_ONCE, True),  # Its queue holds all 200: the overflows were not its.
        (5, {**STALLED_AT_ONCE, "offset": 64}, True),  # It had answered: not a queue's doing.
        (5, {"kind": "mismatch", "offset": 0, "detail": "byte 0 differs"}, True),
        (5, {**STALLED_AT_ONCE, "kind": "stalled after slow-reader"}, True),
        (5, STALLED_AT_ONCE, False),  # The counter did not grow (other processes may bump it).
    ],
    ids=["large-backlog", "answered", "mismatch", "fault", "no-overflow"],
)
def test_a_load_failure_blames_no_backlog_unless_it_can_have_overflowed(
    counted: int, backlog: int, first: dict[str, Any], grew: bool
) -> None:
    with socket.create_server(("127.0.0.1", 0), backlog=backlog) as listener:
        # Not grown: a reading above any the counter will reach meanwhile.
        assert _note(listener, first, counted if grew else counted + 10**9) == ""


def test_a_load_failure_blames_no_backlog_when_the_listener_is_not_here(counted: int) -> None:
    with socket.create_server(("127.0.0.1", 0), backlog=5) as listener:
        host, port = listener.getsockname()[:2]
    # Closed: nothing listens at that address on this machine now.
    harness = Harness(Address(host, port))
    spec = LoadSpec(host, port, connections=200)
    assert _backlog_overflowed(harness, spec, STALLED_AT_ONCE, counted) == ""
