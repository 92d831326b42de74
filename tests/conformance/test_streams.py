"""The client's streams over real sockets: TLS that keeps TCP's semantics, and its failures.

Each test runs a small trio TLS server in the same ``trio.run`` as the
harness (``trio.SSLStream``, server side), with certificates made by trustme.
"""

from __future__ import annotations

import functools
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import trio
import trustme

from conformance.harness import CheckFailure, Ending, Harness
from conformance.streams import MAX_RECORD, TlsStream
from conformance.targets.target import Address
from conformance.tls import TlsSettings, TlsVersion, client_context, handshake_failure

Handler = Callable[[trio.SSLStream[trio.SocketStream]], Awaitable[None]]


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def server_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    return context


@pytest.fixture(scope="module")
def trusting(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> TlsSettings:
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return TlsSettings(ca=str(path))


async def echo_then_close_notify(stream: trio.SSLStream[trio.SocketStream]) -> None:
    """Echo until the client's close_notify, then send what is owed and our own close_notify."""
    async for data in stream:
        await stream.send_all(data)
    await stream.aclose()


async def echo_then_fin_only(stream: trio.SSLStream[trio.SocketStream]) -> None:
    """Echo, then end with a bare FIN: truncation, as far as the client can tell."""
    async for data in stream:
        await stream.send_all(data)
    await stream.transport_stream.aclose()


async def never_reads(stream: trio.SSLStream[trio.SocketStream]) -> None:
    await stream.do_handshake()
    await trio.sleep_forever()


def run_with_server(
    server_context: ssl.SSLContext,
    handler: Handler,
    body: Callable[[Harness], Awaitable[None]],
    tls: TlsSettings,
) -> None:
    async def main() -> None:
        async with trio.open_nursery() as nursery:

            async def serve(tcp: trio.SocketStream) -> None:
                stream = trio.SSLStream(tcp, server_context, server_side=True)
                try:
                    await handler(stream)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass

            listeners = await nursery.start(
                functools.partial(trio.serve_tcp, serve, 0, host="127.0.0.1")
            )
            port = listeners[0].socket.getsockname()[1]
            harness = Harness(Address("127.0.0.1", port), step_timeout=5.0, tls=tls)
            try:
                with trio.fail_after(20):
                    await body(harness)
            finally:
                harness.close_all()
                nursery.cancel_scope.cancel()

    trio.run(main)


@pytest.mark.parametrize("version", list(TlsVersion))
def test_TlsStream_echoes_binary_data_byte_for_byte(
    server_context: ssl.SSLContext, trusting: TlsSettings, version: TlsVersion
) -> None:
    payload = bytes(range(256)) * 4096 + b"\0" * 1000  # 1 MiB and more, NUL-heavy
    settings = TlsSettings(ca=trusting.ca, version=version)

    async def body(harness: Harness) -> None:
        conn = await harness.connect("c1")
        assert isinstance(conn.stream, TlsStream)
        assert conn.stream.version == f"TLSv{version.value}"
        await conn.exchange(payload)
        conn.conclude()
        assert bytes(conn.transcript.received) == payload

    run_with_server(server_context, echo_then_close_notify, body, settings)


def test_TlsStream_half_close_sends_close_notify_then_reads_what_is_owed(
    server_context: ssl.SSLContext, trusting: TlsSettings
) -> None:
    payload = b"x" * 300_000

    async def body(harness: Harness) -> None:
        conn = await harness.connect("c1")
        await conn.send(payload)
        await conn.shutdown_write()
        assert await conn.expect_eof() is Ending.FIN
        assert bytes(conn.transcript.received) == payload
        assert conn.stream.close_notify is True
        assert "close_notify, FIN" in [event.action for event in conn.transcript.events]

    run_with_server(server_context, echo_then_close_notify, body, trusting)


def test_TlsStream_tells_a_bare_FIN_from_a_close_notify(
    server_context: ssl.SSLContext, trusting: TlsSettings
) -> None:
    async def body(harness: Harness) -> None:
        conn = await harness.connect("c1")
        await conn.send(b"hello")
        await conn.shutdown_write()
        await conn.expect_eof()
        assert bytes(conn.transcript.received) == b"hello"
        assert conn.stream.close_notify is False
        assert "FIN without close_notify" in [event.action for event in conn.transcript.events]

    run_with_server(server_context, echo_then_fin_only, body, trusting)


def test_TlsStream_sending_to_a_server_that_never_reads_stops_with_one_record_pending(
    server_context: ssl.SSLContext, trusting: TlsSettings
) -> None:
    """Back-pressure reaches the sender: the stream never buffers ciphertext without bound."""

    async def body(harness: Harness) -> None:
        conn = await harness.connect("c1", rcvbuf=4096)
        sent = await conn.send_until_blocked(b"y" * (64 << 20), stall=0.5)
        assert 0 < sent < 64 << 20
        assert isinstance(conn.stream, TlsStream)
        assert len(conn.stream.pending) <= MAX_RECORD + 256

    run_with_server(server_context, never_reads, body, trusting)


def test_a_certificate_the_client_does_not_trust_fails_the_handshake_step_with_the_reason(
    server_context: ssl.SSLContext,
) -> None:
    async def body(harness: Harness) -> None:
        with pytest.raises(CheckFailure) as failure:
            await harness.connect("c1")
        assert failure.value.step == "TLS handshake on c1"
        assert "the client rejected the server's certificate" in str(failure.value)

    untrusted = TlsSettings(ca=None)  # The system store does not know trustme's CA.
    run_with_server(server_context, echo_then_close_notify, body, untrusted)


def test_insecure_settings_accept_any_certificate(server_context: ssl.SSLContext) -> None:
    async def body(harness: Harness) -> None:
        conn = await harness.connect("c1")
        await conn.exchange(b"ping")
        conn.conclude()

    run_with_server(server_context, echo_then_close_notify, body, TlsSettings(insecure=True))


def test_a_server_that_does_not_speak_TLS_is_said_to_be_so(trusting: TlsSettings) -> None:
    async def plain(tcp: trio.SocketStream) -> None:
        await tcp.receive_some(1)
        await tcp.send_all(b"-ERR unknown command\r\n")
        await tcp.aclose()

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(
                functools.partial(trio.serve_tcp, plain, 0, host="127.0.0.1")
            )
            port = listeners[0].socket.getsockname()[1]
            harness = Harness(Address("127.0.0.1", port), step_timeout=5.0, tls=trusting)
            with pytest.raises(CheckFailure, match="did not answer in TLS"):
                await harness.connect("c1")
            harness.close_all()
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_TlsSettings_name_the_file_they_cannot_read(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"cannot read the CA file .*missing\.pem"):
        TlsSettings(ca=str(tmp_path / "missing.pem")).context()
    with pytest.raises(ValueError, match=r"cannot load the client certificate .*nope\.pem"):
        TlsSettings(insecure=True, cert=str(tmp_path / "nope.pem")).context()


def test_client_context_is_made_once_per_settings(trusting: TlsSettings) -> None:
    assert client_context(trusting) is client_context(TlsSettings(ca=trusting.ca))


@pytest.mark.parametrize(
    ("error", "says"),
    [
        (ssl.SSLEOFError(8, "EOF"), "closed the connection during the handshake"),
        (ConnectionResetError(104, "Connection reset by peer"), "reset the connection"),
    ],
)
def test_handshake_failure_names_the_side(error: OSError, says: str) -> None:
    assert says in handshake_failure(error)
