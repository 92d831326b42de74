"""What the checks learn from the server's listening socket, through ``/proc``.

- The resource checks measure a server whose sockets are all in
  ``/proc/net/tcp6``: ``fixtures/servers/hostile/listens_ipv4_mapped.py``
  listens on an IPv6 socket bound to ``::ffff:127.0.0.1`` (as a Java server
  does) and serves the suite's IPv4 connections there, its listener and its
  end of each connection listed IPv4-mapped in ``tcp6``, none in ``tcp``. The
  checks must find it there and measure it: PASS, not SKIPPED.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

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
