"""The load generator over TLS: real TLS servers as subprocesses, every byte exact.

Certificates come from trustme, made per test module (never committed).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from conformance.load import ErrorKey, Faults, LoadSpec, run_load
from conformance.load.driver import Driver
from conformance.load.faults import HALF_CLOSE_SKIPPED
from conformance.load.hosts import parse_hosts, run_hosts
from conformance.load.remote import spec_from_data, spec_to_data
from conformance.load.tls_driver import TlsDriver, make_driver
from conformance.targets.spawn import Spawned, spawn_listening
from conformance.tls import TlsSettings, TlsVersion
from tests.helpers import ROOT

from .support import ASYNCIO_ECHO, run_cli


class Certs:
    """A CA and a server certificate for 127.0.0.1, as PEM files, and a CA that did not sign it."""

    def __init__(self, where: Path) -> None:
        ca = trustme.CA()
        self.ca = where / "ca.pem"
        self.other_ca = where / "other-ca.pem"
        self.server = where / "server.pem"
        ca.cert_pem.write_to_path(str(self.ca))
        trustme.CA().cert_pem.write_to_path(str(self.other_ca))
        ca.issue_cert("127.0.0.1", "localhost").private_key_and_cert_chain_pem.write_to_path(
            str(self.server)
        )

    def reference(self) -> list[str]:
        return [sys.executable, "-m", "reference", "single", "--port", "0"] + self.tls_args()

    def asyncio_echo(self) -> list[str]:
        return [sys.executable, str(ASYNCIO_ECHO), "--port", "0"] + self.tls_args()

    def tls_args(self) -> list[str]:
        return ["--tls-cert", str(self.server)]


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return Certs(tmp_path_factory.mktemp("certs"))


def _serve(argv: list[str]) -> Iterator[Spawned]:
    with spawn_listening(argv, cwd=ROOT, keep=None) as server:
        yield server


@pytest.fixture(scope="module")
def reference_tls(certs: Certs) -> Iterator[Spawned]:
    yield from _serve(certs.reference())


@pytest.fixture(scope="module")
def asyncio_tls(certs: Certs) -> Iterator[Spawned]:
    yield from _serve(certs.asyncio_echo())


@pytest.fixture(scope="module")
def plaintext(certs: Certs) -> Iterator[Spawned]:
    yield from _serve([sys.executable, "-m", "reference", "single", "--port", "0"])


def _spec(server: Spawned, tls: TlsSettings, **settings: Any) -> LoadSpec:
    host, port = server.address
    return LoadSpec(host, port, tls=tls, **settings)


@pytest.mark.parametrize("which", ["reference_tls", "asyncio_tls"])
@pytest.mark.parametrize("procs", [1, 2])
def test_run_load_over_tls_checks_every_byte_and_counts_the_handshakes(
    request: pytest.FixtureRequest, certs: Certs, which: str, procs: int
) -> None:
    server: Spawned = request.getfixturevalue(which)
    spec = _spec(
        server, TlsSettings(ca=str(certs.ca)), connections=20, rounds=30, size=100,
        duration=20.0, procs=procs,
    )  # fmt: skip
    result = run_load(spec)
    assert result.ok, result.summary_line()
    assert result.round_trips == 20 * 30
    assert result.bytes_verified == 20 * 30 * 100
    assert result.handshakes == 20
    assert result.handshake_seconds > 0
    assert result.server_alive is True
    data = result.to_data()
    assert data["handshakes"] == 20
    assert data["spec"]["tls"]["ca"] == str(certs.ca)
    assert "20 TLS handshakes" in result.summary_line()


def test_run_load_over_tls_streams_every_byte_exact(reference_tls: Spawned, certs: Certs) -> None:
    spec = _spec(
        reference_tls, TlsSettings(ca=str(certs.ca)), connections=4, mode="stream",
        window=100_000, duration=1.0,
    )  # fmt: skip
    result = run_load(spec)
    assert result.ok, result.summary_line()
    assert result.bytes_verified > 1_000_000


@pytest.mark.parametrize(
    ("fault", "observed"),
    [
        ("reset", None),
        ("half-close", "half-close-echoed"),
        ("slow-reader", "slow-reader-served"),
    ],
)
def test_faults_over_tls_1_3_leave_the_rest_exact(
    reference_tls: Spawned, certs: Certs, fault: str, observed: str | None
) -> None:
    tls = TlsSettings(ca=str(certs.ca), version=TlsVersion.TLS_1_3)
    faults = Faults.parse(f"{fault}=5%")
    spec = _spec(reference_tls, tls, connections=20, duration=1.5, faults=faults)
    result = run_load(spec)
    assert result.ok, (result.summary_line(), result.first_error)
    assert result.injected[fault] > 0
    if observed is not None:
        assert result.observed[observed] > 0
    # Each replaced connection made a handshake of its own.
    assert result.handshakes == result.connections_opened


def test_half_close_over_tls_1_2_is_skipped_and_counted_as_such(
    asyncio_tls: Spawned, certs: Certs
) -> None:
    tls = TlsSettings(ca=str(certs.ca), version=TlsVersion.TLS_1_2)
    faults = Faults(half_close=0.05, reset=0.02)
    result = run_load(_spec(asyncio_tls, tls, connections=10, duration=1.0, faults=faults))
    assert result.ok, (result.summary_line(), result.first_error)
    assert result.injected["half-close"] == 0
    assert result.observed[HALF_CLOSE_SKIPPED] > 0
    assert result.injected["reset"] > 0


def test_an_untrusted_certificate_is_a_handshake_error_not_a_reset(
    reference_tls: Spawned, certs: Certs
) -> None:
    spec = _spec(reference_tls, TlsSettings(ca=str(certs.other_ca)), connections=5, duration=1.0)
    result = run_load(spec)
    assert not result.ok
    assert result.errors == {ErrorKey("handshake"): 5}
    assert result.first_error is not None
    assert result.first_error["kind"] == "handshake"
    assert "the client rejected the server's certificate" in result.first_error["detail"]
    assert result.handshakes == 0


def test_a_plaintext_server_is_a_handshake_error_not_a_reset(
    plaintext: Spawned, certs: Certs
) -> None:
    spec = _spec(plaintext, TlsSettings(ca=str(certs.ca)), connections=5, duration=1.0)
    result = run_load(spec)
    assert not result.ok
    assert set(result.errors) == {ErrorKey("handshake")}
    assert result.first_error is not None
    assert result.first_error["detail"].startswith("TLS handshake failed: ")
    assert result.server_alive is False  # The probe speaks TLS too.


def test_the_load_over_tls_runs_from_a_popen_host(reference_tls: Spawned, certs: Certs) -> None:
    spec = _spec(reference_tls, TlsSettings(ca=str(certs.ca)), connections=10, rounds=20,
                 duration=20.0)  # fmt: skip
    outcome = run_hosts(spec, parse_hosts(["popen"]))
    assert outcome.ok, outcome.summary_line()
    assert outcome.result.round_trips == 200
    assert outcome.result.handshakes == 10


def test_a_spec_with_tls_travels_as_plain_data_and_picks_the_tls_driver() -> None:
    tls = TlsSettings(ca="/ca.pem", server_name="example", version=TlsVersion.TLS_1_3)
    spec = LoadSpec("127.0.0.1", 1, tls=tls)
    data = spec_to_data(spec)
    assert data["tls"] == tls.to_data()
    json.dumps(data)  # Plain data: nothing but JSON types.
    assert spec_from_data(data) == spec
    plain = make_driver(LoadSpec("127.0.0.1", 1), 0, 1)
    try:
        assert type(plain) is Driver
        assert plain.plain  # The plain fast path is untouched.
    finally:
        plain.ep.close()


def test_the_tls_driver_takes_every_event_off_the_fast_path(certs: Certs) -> None:
    driver = make_driver(LoadSpec("127.0.0.1", 1, tls=TlsSettings(ca=str(certs.ca))), 0, 1)
    try:
        assert isinstance(driver, TlsDriver)
        assert not driver.plain
    finally:
        driver.ep.close()


def test_load_cli_over_tls_reports_handshakes_per_second(certs: Certs) -> None:
    spawn = f"{sys.executable} -m reference single --port {{port}} --tls-cert {certs.server}"
    result = run_cli(
        "load", "--tls", "--tls-ca", str(certs.ca), "--spawn", spawn, "-c", "10",
        "--duration", "1",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"over TLS: TLS 1.2 or 1.3, certificates verified against {certs.ca}" in result.stdout
    assert "10 TLS handshakes" in result.stdout
    assert "/s (mean" in result.stdout
    as_json = run_cli(
        "load", "--tls-ca", str(certs.ca), "--spawn", spawn, "-c", "4", "--duration", "0.5",
        "--json",
    )  # fmt: skip
    assert as_json.returncode == 0, as_json.stdout + as_json.stderr
    data = json.loads(as_json.stdout)
    assert data["handshakes"] == 4
    assert data["handshakes_per_second"] > 0


def test_load_cli_refuses_contradicting_tls_options(certs: Certs) -> None:
    result = run_cli("load", "--tls-insecure", "--tls-ca", str(certs.ca), "-c", "2")
    assert result.returncode == 2
    assert "--tls-insecure verifies nothing" in result.stderr


def test_run_over_tls_passes_the_load_check(certs: Certs) -> None:
    spawn = f"{sys.executable} -m reference single --port {{port}} --tls-cert {certs.server}"
    result = run_cli(
        "run", "--tls", "--tls-ca", str(certs.ca), "--checks", "ECHO-LOAD-1", "--spawn", spawn
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "PASS        ECHO-LOAD-1" in result.stdout
