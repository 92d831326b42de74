"""The suite under a protocol model: real redis-server and memcached, and the reference handlers.

Each test runs the CLI (``reactor-conformance run`` or ``load``) as a user does,
with ``--protocol``, against a real server; a test is skipped, saying why, where
that server is not installed.
"""

from __future__ import annotations

import json
import random
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

from conformance.harness import Harness
from conformance.protocols import (
    TEMPLATE,
    Capability,
    EchoModel,
    RespModel,
    fresh_keys,
    request_stream,
    template_prefix,
)
from conformance.targets.target import Address
from tests.conformance.support import run_cli

REDIS = "redis-server --port {port} --bind 127.0.0.1 --save '' --appendonly no"
# memcached refuses to run as root unless told which user to be; as another user -u is ignored.
MEMCACHED = "memcached -l 127.0.0.1 -p {port} -U 0 -u nobody"


def _needs(program: str) -> None:
    if shutil.which(program) is None:
        pytest.skip(f"{program} is not installed (Debian: apt-get install {program})")


def _verdicts(report: Path) -> dict[str, dict[str, Any]]:
    data = json.loads(report.read_text())
    return {entry["id"]: entry for entry in data["targets"][0]["results"]}


def test_Harness_payload_is_the_same_random_bytes_under_echo() -> None:
    h = Harness(Address("127.0.0.1", 1))
    assert h.payload(1000, 7) == random.Random(7).randbytes(1000)
    assert h.message(b"ping\n") == b"ping\n"


def test_Harness_payload_under_resp_is_whole_requests_with_keys_of_their_own() -> None:
    model = RespModel()
    h = Harness(Address("127.0.0.1", 1), model)
    first, second = h.payload(100_000, 3), h.payload(100_000, 3)
    assert len(first) >= 100_000
    for stream in (first, second, h.message(b"hello")):
        oracle = model.oracle()
        oracle.sent(stream)  # Raises InvalidRequest unless it is whole RESP requests.
        assert oracle.verdict().pending
    # The same seed, other keys: a replay never meets the keys an earlier run left.
    assert first != second
    assert len(first) == len(second)


def test_fresh_keys_replace_the_template_prefix_and_keep_the_framing() -> None:
    model = RespModel()
    stream = request_stream(model, 5000, 1, prefix=template_prefix())
    assert TEMPLATE in stream
    fresh = fresh_keys(stream, b"0123456789ab")
    assert TEMPLATE not in fresh
    assert len(fresh) == len(stream)
    oracle = model.oracle()
    oracle.sent(fresh)
    assert oracle.verdict().pending
    with pytest.raises(ValueError, match="12 hex digits"):
        fresh_keys(stream, b"short")


def test_request_stream_under_echo_is_random_bytes_and_echo_takes_any_bytes() -> None:
    assert Capability.ANY_BYTES in EchoModel().capabilities
    assert request_stream(EchoModel(), 64, 5) == random.Random(5).randbytes(64)


def test_run_protocol_resp_judges_real_redis_and_skips_what_does_not_apply(
    tmp_path: Path,
) -> None:
    _needs("redis-server")
    report = tmp_path / "report.json"
    checks = (
        "ECHO-BASIC-1,ECHO-BASIC-3,ECHO-SIZE-1,ECHO-SIZE-2,ECHO-PARTIAL-1,ECHO-PIPELINE-1,"
        "ECHO-FAIR-2,ECHO-RESET-2,ECHO-HALFCLOSE-1,ECHO-LOAD-1,PROP-ECHO-1,PROP-BACKPRESSURE-1"
    )
    result = run_cli(
        "run", "--spawn", REDIS, "--protocol", "resp", "--profile", "ci", "--checks", checks,
        "--report-json", str(report), timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "the checks speak the resp protocol model" in result.stdout
    verdicts = _verdicts(report)
    skipped = {"ECHO-BASIC-3", "ECHO-HALFCLOSE-1"}
    for check_id, entry in verdicts.items():
        expected = "SKIPPED" if check_id in skipped else "PASS"
        assert entry["verdict"] == expected, (check_id, entry)
    assert verdicts["ECHO-BASIC-3"]["details"] == (
        "does not apply: the resp model does not promise any byte string as a valid request "
        "stream (requests are RESP arrays of bulk strings)"
    )
    assert (
        "redis closes the connection at the client's EOF"
        in (verdicts["ECHO-HALFCLOSE-1"]["details"])
    )
    assert json.loads(report.read_text())["protocol"] == "resp"


def test_run_protocol_resp_redis_buffers_replies_for_a_client_that_does_not_read(
    tmp_path: Path,
) -> None:
    # A real deviation, written down in the README: Redis's default
    # client-output-buffer-limit for normal clients is 0 0 0 (none), so it keeps
    # reading a pipeline whose replies pile up, and its memory grows with them.
    _needs("redis-server")
    report = tmp_path / "report.json"
    result = run_cli(
        "run", "--spawn", REDIS, "--protocol", "resp", "--checks", "ECHO-MEM-1",
        "--report-json", str(report), timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr  # a SHOULD: non-strict
    entry = _verdicts(report)["ECHO-MEM-1"]
    assert entry["verdict"] == "NON-STRICT", entry
    assert "does not stop reading when its replies pile up" in entry["failure"]["message"]


def test_run_protocol_memcached_judges_real_memcached(tmp_path: Path) -> None:
    _needs("memcached")
    report = tmp_path / "report.json"
    checks = (
        "ECHO-BASIC-1,ECHO-BASIC-4,ECHO-SIZE-1,ECHO-PARTIAL-2,ECHO-PIPELINE-1,ECHO-MANY-1,"
        "ECHO-RESET-3,ECHO-LOAD-2,PROP-CONCURRENT-1,PROP-HALFCLOSE-1"
    )
    result = run_cli(
        "run", "--spawn", MEMCACHED, "--protocol", "memcached", "--profile", "ci",
        "--checks", checks, "--report-json", str(report), timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    skipped = {"ECHO-BASIC-4", "PROP-HALFCLOSE-1"}
    for check_id, entry in _verdicts(report).items():
        assert entry["verdict"] == ("SKIPPED" if check_id in skipped else "PASS"), entry


@pytest.mark.parametrize(("handler", "protocol"), [("resp", "resp"), ("memcached", "memcached")])
def test_run_protocol_the_reference_handlers_pass_and_the_half_close_checks_skip(
    tmp_path: Path, handler: str, protocol: str
) -> None:
    report = tmp_path / "report.json"
    spawn = f"{sys.executable} -m reference pool --port {{port}} --handler {handler}"
    result = run_cli(
        "run", "--spawn", spawn, "--protocol", protocol, "--profile", "ci", "--checks",
        "ECHO-PARTIAL-*,ECHO-FAIR-*,ECHO-MEM-1,PROP-ALIVE-1,ECHO-HALFCLOSE-2",
        "--report-json", str(report), timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    for check_id, entry in _verdicts(report).items():
        expected = "SKIPPED" if check_id == "ECHO-HALFCLOSE-2" else "PASS"
        assert entry["verdict"] == expected, entry


def test_load_protocol_resp_checks_every_reply_of_the_reference_handler() -> None:
    spawn = f"{sys.executable} -m reference single --port {{port}} --handler resp"
    result = run_cli(
        "load", "--spawn", spawn, "--protocol", "resp", "-c", "4", "--rounds", "50",
        "--size", "300", "--json", timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    data = json.loads(result.stdout)
    assert data["ok"] is True
    assert data["round_trips"] == 200
    assert data["bytes_verified"] > 0
    assert data["server_alive"] is True


def test_load_protocol_resp_against_redis_from_two_popen_hosts() -> None:
    _needs("redis-server")
    result = run_cli(
        "load", "--spawn", REDIS, "--protocol", "resp", "-c", "4", "--rounds", "30",
        "--hosts", "popen", "--hosts", "popen", "--json", timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    data = json.loads(result.stdout)
    assert data["round_trips"] == 120
    assert [h["round_trips"] for h in data["hosts"]] == [60, 60]


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (["run", "--protocol", "nope"], "unknown protocol 'nope': give echo, discard, resp"),
        (
            ["run", "--protocol", "resp", "--oracle", "discard"],
            "--protocol resp judges replies with its own oracle",
        ),
        (
            ["load", "--protocol", "resp", "--faults", "half-close=5%"],
            "half-close faults judge what is owed after the client's FIN, but the resp model "
            "does not promise half-close semantics",
        ),
    ],
)
def test_cli_protocol_bad_use_is_one_line_and_exit_2(argv: list[str], line: str) -> None:
    result = run_cli(*argv, timeout=60)
    assert result.returncode == 2, result.stdout + result.stderr
    assert line in result.stderr
    assert "Traceback" not in result.stderr


def test_resp_load_requests_are_what_the_parser_reads_from_their_bytes() -> None:
    from conformance.protocols.resp import RespConnection, RespModel

    rng = random.Random(4)
    for _ in range(500):
        request, data = RespModel().load_request(rng, rng.randrange(1, 300), b"p-c0")
        assert RespConnection().parse_request(bytearray(data)) == (request, len(data))
