"""The TLS checks: each passes over TLS against every reference model and asyncio's ``ssl`` echo,
is SKIPPED without ``--tls``, and the matrix starts broken TLS servers with certificates.

Certificates come from trustme (made per test module, never committed); each
broken TLS server's own catch is in ``test_broken_servers.py``.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from conformance.checks import CATALOGUE, Check, Setup, by_id, run_check
from conformance.targets.target import RunningTarget, TargetKind, TargetSpec
from conformance.tls import TlsSettings, TlsVersion
from tests.conformance.support import (
    ASYNCIO_ECHO,
    BROKEN,
    broken_spawn,
    run_cli,
    serving,
    spawn_command,
)
from tools.matrix import BrokenServer, Certificates, broken_servers, run_against

TLS_CHECKS = [check for check in CATALOGUE if check.category == "tls"]
IDS = [check.id for check in TLS_CHECKS]


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return Certificates.make(tmp_path_factory.mktemp("certs"))


def servers(certs: Certificates) -> dict[str, TargetSpec]:
    tls = f"--tls-cert {certs.server}"
    models = {
        model: TargetSpec(
            TargetKind.SPAWN, f"{sys.executable} -m reference {model} --port {{port}} {tls}"
        )
        for model in ("single", "pool", "multi")
    }
    return models | {
        "asyncio": TargetSpec(TargetKind.SPAWN, f"{spawn_command(ASYNCIO_ECHO)} {tls}")
    }


def test_the_tls_category_holds_the_tls_checks_each_with_an_rfc_8446_section() -> None:
    assert IDS == [
        "TLS-RECORDS-1",
        "TLS-TRICKLE-1",
        "TLS-HANDSHAKE-1",
        "TLS-HANDSHAKE-2",
        "TLS-STORM-1",
        "TLS-WRITE-1",
        "TLS-CLOSE-1",
        "TLS-KEYUPDATE-1",
    ]
    for check in TLS_CHECKS:
        assert check.spec.startswith("RFC 8446 §"), check.id


@pytest.mark.parametrize("server", ["single", "pool", "multi", "asyncio"])
@pytest.mark.parametrize("check", TLS_CHECKS, ids=IDS)
def test_tls_check_passes_over_tls(certs: Certificates, server: str, check: Check) -> None:
    outcome = run_against(servers(certs)[server], check, tls=certs.settings())
    assert outcome.passed, outcome.report or outcome.unmeasured or outcome.error


@pytest.fixture(scope="module")
def plain_broken() -> Iterator[RunningTarget]:
    """A plain server that any probe would fail: a TLS check must not even probe it."""
    with serving(TargetSpec(TargetKind.SPAWN, broken_spawn("appends_to_replies"))) as running:
        yield running


@pytest.mark.parametrize("check", TLS_CHECKS, ids=IDS)
def test_tls_check_is_skipped_without_tls_with_the_reason(
    check: Check, plain_broken: RunningTarget
) -> None:
    outcome = run_check(check, Setup(plain_broken.address))
    assert (outcome.failure, outcome.error) == (None, None), outcome.report or outcome.error
    assert outcome.unmeasured is not None
    assert outcome.unmeasured.startswith("needs --tls: "), outcome.unmeasured


def test_the_cli_says_skipped_needs_tls_never_pass() -> None:
    result = run_cli("run", "--checks", "TLS-*", "--reference", "single")
    assert result.returncode == 0, result.stdout + result.stderr
    for check_id in IDS:
        assert f"SKIPPED     {check_id}" in result.stdout, result.stdout
        assert f"{check_id}: needs --tls: " in result.stdout
    assert "0 passed" in result.stdout


def test_close_notify_is_not_measured_over_tls_1_2(certs: Certificates) -> None:
    settings = TlsSettings(ca=str(certs.ca), version=TlsVersion.TLS_1_2)
    outcome = run_against(servers(certs)["single"], by_id("TLS-CLOSE-1"), tls=settings)
    assert outcome.failure is None, outcome.report
    assert outcome.unmeasured is not None
    assert "TLSv1.2 has no half-close" in outcome.unmeasured


def test_the_records_check_fails_with_what_the_server_holds(certs: Certificates) -> None:
    (server,) = [s for s in broken_servers(BROKEN) if s.name == "tls_one_record_per_event"]
    outcome = run_against(server.spec(certs), by_id("TLS-RECORDS-1"), tls=certs.settings())
    assert outcome.failure is not None
    assert "came back, then nothing: the 200 records came in one TCP segment" in outcome.report
    assert "--tls --tls-ca" in outcome.report  # The replay speaks TLS too.


def test_broken_servers_reads_tls_and_spec_adds_the_certificate(
    tmp_path: Path, certs: Certificates
) -> None:
    (tmp_path / "bug.py").write_text(
        'CAUGHT_BY = ("TLS-CLOSE-1",)\nREASON = r"without close_notify"\nTLS = True\n'
    )
    (tmp_path / "plain.py").write_text('CAUGHT_BY = ("ECHO-BASIC-1",)\nREASON = r"differs"\n')
    bug, plain = broken_servers(tmp_path)
    assert (bug.tls, plain.tls) == (True, False)
    assert bug.spec(certs).value.endswith(f"--port {{port}} --tls-cert {certs.server}")
    assert plain.spec(certs).value.endswith("--port {port}")
    with pytest.raises(ValueError, match="speaks TLS: it needs certificates"):
        bug.spec()


def test_broken_servers_rejects_a_tls_flag_that_is_not_a_bool(tmp_path: Path) -> None:
    (tmp_path / "bug.py").write_text(
        'CAUGHT_BY = ("TLS-CLOSE-1",)\nREASON = r"without close_notify"\nTLS = "yes"\n'
    )
    with pytest.raises(ValueError, match="TLS must be True or False"):
        broken_servers(tmp_path)


def test_every_tls_check_is_declared_by_a_broken_tls_server() -> None:
    tls_servers: list[BrokenServer] = [s for s in broken_servers(BROKEN) if s.tls]
    assert {c for s in tls_servers for c in s.caught_by} == set(IDS)
    assert all(s.name.startswith("tls_") for s in tls_servers)
