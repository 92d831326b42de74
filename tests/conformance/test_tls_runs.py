"""Whole runs over TLS (``--tls``): every front, a reference model with TLS in its reactor,
asyncio's ``ssl`` echo server, and targets that do not speak TLS as the run expects.

Certificates come from trustme (made per test module, never committed).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import trustme

import conformance
from conformance.run.results import Verdict
from conformance.tls import TlsSettings

from .support import ASYNCIO_ECHO, run_cli, run_pytest


class Certs:
    """A CA and a server certificate for 127.0.0.1, as PEM files."""

    def __init__(self, where: Path) -> None:
        ca = trustme.CA()
        self.ca = where / "ca.pem"
        self.server = where / "server.pem"
        ca.cert_pem.write_to_path(str(self.ca))
        ca.issue_cert("127.0.0.1", "localhost").private_key_and_cert_chain_pem.write_to_path(
            str(self.server)
        )

    def reference(self, model: str = "single") -> str:
        """The ``--spawn`` command of a reference model speaking TLS."""
        return f"{sys.executable} -m reference {model} --port {{port}} --tls-cert {self.server}"

    def asyncio_echo(self) -> str:
        return f"{sys.executable} {ASYNCIO_ECHO} --port {{port}} --tls-cert {self.server}"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return Certs(tmp_path_factory.mktemp("certs"))


CHECKS = "ECHO-BASIC-*,ECHO-SIZE-2,ECHO-PARTIAL-3,ECHO-HALFCLOSE-*,ECHO-RESET-2,PROP-HALFCLOSE-1"


@pytest.mark.parametrize("model", ["single", "pool", "multi"])
def test_run_over_tls_passes_a_reference_model_the_load_included(certs: Certs, model: str) -> None:
    result = run_cli(
        "run", "--tls", "--tls-ca", str(certs.ca), "--checks", f"{CHECKS},ECHO-LOAD-1",
        "--spawn", certs.reference(model),
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"over TLS: TLS 1.2 or 1.3, certificates verified against {certs.ca}" in result.stdout
    verdicts = {
        words[1]: words[0]
        for words in (line.split() for line in result.stdout.splitlines())
        if len(words) > 2 and words[1].startswith(("ECHO-", "PROP-"))
    }
    assert set(verdicts.values()) == {"PASS"}, result.stdout
    assert "ECHO-LOAD-1" in verdicts


def test_run_over_tls_passes_asyncio_ssl_echo_pinned_to_tls_1_2(certs: Certs) -> None:
    result = run_cli(
        "run", "--tls", "--tls-insecure", "--tls-version", "1.2", "--checks", CHECKS,
        "--spawn", certs.asyncio_echo(),
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "TLS 1.2 only, the server's certificate NOT verified (--tls-insecure)" in result.stdout


def test_a_plaintext_server_under_tls_is_unreachable_with_the_reason(certs: Certs) -> None:
    result = run_cli("run", "--tls", "--tls-ca", str(certs.ca), "--reference", "single")
    assert result.returncode == 3, result.stdout + result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith("reactor-conformance: target unreachable: reference-single: ")
    assert "no TLS handshake" in line


def test_a_certificate_the_client_does_not_trust_is_named_with_what_to_do(certs: Certs) -> None:
    result = run_cli("run", "--tls", "--checks", "ECHO-BASIC-1", "--spawn", certs.reference())
    assert result.returncode == 3, result.stdout + result.stderr
    assert "the client rejected the server's certificate" in result.stderr
    assert "give its CA with --tls-ca, or --tls-insecure" in result.stderr


def test_the_pytest_plugin_runs_over_tls_on_xdist_workers(certs: Certs) -> None:
    result = run_pytest(
        "--pyargs", "conformance", "-n", "2", "--tls", "--tls-ca", str(certs.ca),
        "--checks", "ECHO-BASIC-1,ECHO-HALFCLOSE-1,ECHO-FAIR-2", "--spawn", certs.reference(),
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 passed" in result.stdout


def test_check_server_takes_tls_settings(certs: Certs) -> None:
    results = conformance.check_server(
        certs.asyncio_echo(),
        # Not a half-close check: asyncio's ssl transport may drop what it still owes
        # after the client's close_notify (the README's TLS section).
        checks=["ECHO-BASIC-1", "ECHO-SIZE-1"],
        tls=TlsSettings(ca=str(certs.ca)),
    )
    (target,) = results.targets
    assert [target.result(c).verdict for c in results.checks] == [Verdict.PASS, Verdict.PASS]
    assert "--tls --tls-ca" in target.replay


def test_over_tls_1_2_the_half_close_checks_are_skipped_with_the_rfc(certs: Certs) -> None:
    """TLS 1.2 has no half-close: the checks that rest on one are not measured, never FAIL."""
    result = run_cli(
        "run", "--tls", "--tls-ca", str(certs.ca), "--tls-version", "1.2",
        "--checks", "ECHO-HALFCLOSE-1,ECHO-BASIC-1,PROP-HALFCLOSE-1", "--spawn", certs.reference(),
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ECHO-HALFCLOSE-1: TLSv1.2 has no half-close" in result.stdout
    # The property check's scenarios each end at their half-close: the search measured
    # everything else, and says so, never PASS.
    assert "PROP-HALFCLOSE-1: TLSv1.2 has no half-close" in result.stdout
    assert "RFC 5246 §7.2.1" in result.stdout
