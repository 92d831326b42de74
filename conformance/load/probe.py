"""The liveness probe: does the server still answer a fresh connection, rightly?

How this works
--------------
:func:`probe_alive` connects (never waiting past its deadline, and looking at
the stop event every ``SLICE`` seconds), sends a short probe, and judges the
reply as a load connection's is judged. Over TLS (``tls``) the same exchange
runs through :class:`TlsProbeSocket`: a sans-I/O ``ssl.SSLObject`` over the
non-blocking socket, its handshake first, every wait under the same deadline;
``shutdown`` is ``close_notify`` then the FIN. A handshake that fails is a
server that does not answer.
"""

from __future__ import annotations

import random
import select
import socket
import ssl
import time

from conformance.load.connector import StopEvent, wait_connected, wait_ready
from conformance.load.spec import judging
from conformance.oracle import EchoOracle, Oracle
from conformance.protocols import Capability, EchoModel, ProtocolModel, unique_prefix
from conformance.tls import TlsSettings, client_context

__all__ = ["PROBE_TIMEOUT", "TlsProbeSocket", "probe_alive"]

PROBE_TIMEOUT = 5.0  # seconds, at most, for the liveness probe's connect and its reply


class TlsProbeSocket:
    """A connected non-blocking socket spoken to in TLS, with the socket calls the probe makes.

    ``recv`` raises ``BlockingIOError`` as a non-blocking socket does; the
    probe waits on the socket itself (``recv`` leaves no plaintext behind).

    Args:
        sock: The connected, non-blocking socket.
        settings: The run's TLS settings.
        host: The target's host (the default server name).
    """

    def __init__(self, sock: socket.socket, settings: TlsSettings, host: str) -> None:
        self.sock = sock
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.obj = client_context(settings).wrap_bio(
            self.incoming, self.outgoing, server_hostname=settings.server_hostname(host)
        )
        self.out = b""  # ciphertext the socket has not taken yet

    def handshake(self, deadline: float, stop: StopEvent | None) -> bool:
        """Run the handshake by ``deadline``; False when it failed or did not end in time."""
        while True:
            try:
                self.obj.do_handshake()
            except ssl.SSLWantReadError:
                if not self.drain(deadline, stop) or not wait_ready(
                    self.sock, select.POLLIN, deadline, stop
                ):
                    return False
                self._fill()
                continue
            except (ssl.SSLError, OSError):
                return False
            return self.drain(deadline, stop)

    def drain(self, deadline: float, stop: StopEvent | None) -> bool:
        """Send every byte of ciphertext made so far, by ``deadline``."""
        self.out += self.outgoing.read()
        while self.out:
            if not wait_ready(self.sock, select.POLLOUT, deadline, stop):
                return False
            try:
                self.out = self.out[self.sock.send(self.out) :]
            except (BlockingIOError, InterruptedError):
                continue
        return True

    def send(self, data: bytes | memoryview) -> int:
        """Take all of ``data``; its ciphertext goes out with the next ``drain``."""
        if data:
            self.obj.write(data)
        self.out += self.outgoing.read()
        try:
            self.out = self.out[self.sock.send(self.out) :]
        except (BlockingIOError, InterruptedError):
            pass
        return len(data)

    def recv(self, size: int) -> bytes:
        """Plaintext already received (b"" at the server's end); ``BlockingIOError``: none yet."""
        self._fill()
        chunks: list[bytes] = []
        while True:
            try:
                piece = self.obj.read(size)
            except ssl.SSLWantReadError:
                break
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                piece = b""
            if not piece:
                if chunks:
                    break
                return b""
            chunks.append(piece)
        if not chunks:
            raise BlockingIOError("no plaintext yet")
        return b"".join(chunks)

    def shutdown(self, how: int) -> None:
        """``close_notify``, then ``shutdown(how)`` once the socket took it."""
        try:
            self.obj.unwrap()
        except ssl.SSLWantReadError:
            pass
        self.send(b"")
        if not self.out:
            self.sock.shutdown(how)

    def _fill(self) -> None:
        while True:
            try:
                data = self.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                return
            if not data:
                self.incoming.write_eof()
                return
            self.incoming.write(data)


def probe_alive(
    host: str,
    port: int,
    *,
    timeout: float = PROBE_TIMEOUT,
    stop: StopEvent | None = None,
    model: ProtocolModel | None = None,
    tls: TlsSettings | None = None,
) -> bool:
    """Whether a fresh connection gets the right answer to a short probe.

    Args:
        host: The server's address.
        port: The server's port.
        timeout: Seconds for the whole probe: connect, send and reply.
        stop: Looked at between two ``SLICE``-second waits; when set, the
            probe gives up (and says False).
        model: The load's model (default: echo). With requests of its own,
            the probe is one of them, owed its exact reply; else a few raw
            bytes, judged by its oracle as a load connection's are: it is told
            the probe and every read, and its verdict says whether the reply
            is right and complete.
        tls: Speak TLS with these settings (None: plain TCP); a handshake
            that fails, or does not end by the deadline, is a server that
            does not answer.

    Returns:
        True when the reply came back right within ``timeout``; when nothing
        is owed (discard), when the server answered the probe and our FIN
        with its own FIN and no byte. A reply the oracle still calls PENDING
        at the deadline is judged as the exchange's end: PASS then is True.

    Raises:
        OracleError: The oracle's own code raised (a user's oracle, guarded).
    """
    model = model if model is not None else EchoModel()
    if Capability.ANY_BYTES not in model.capabilities:
        probe, owed = model.load_connection(unique_prefix(0)).next_request(random.Random(0), 8)
        judge: Oracle = EchoOracle()
        judge.sent(owed)  # Owed exactly these bytes: judged as their echo.
        owes = bool(owed)
    else:
        # Ends in CRLF, as the checks' own liveness message: a server that answers
        # only whole lines is alive if it answers this.
        probe = b"still alive?\0\xff\r\n"
        judge = judging(model)[0]()
        judge.sent(probe)
        owes = Capability.REPLIES in model.capabilities
    deadline = time.monotonic() + timeout
    try:
        with wait_connected(host, port, deadline, stop) as raw:
            sock: socket.socket | TlsProbeSocket = raw
            if tls is not None:
                sock = TlsProbeSocket(raw, tls, host)
                if not sock.handshake(deadline, stop):
                    return False
            out = memoryview(probe)
            while out:
                if not wait_ready(raw, select.POLLOUT, deadline, stop):
                    return False
                try:
                    out = out[sock.send(out) :]
                except (BlockingIOError, InterruptedError):
                    continue
            if isinstance(sock, TlsProbeSocket) and not sock.drain(deadline, stop):
                return False
            verdict = judge.verdict()
            if not owes:
                sock.shutdown(socket.SHUT_WR)  # Nothing owed: the server's FIN answers ours.
            while not verdict.failed and wait_ready(raw, select.POLLIN, deadline, stop):
                try:
                    chunk = sock.recv(4096)
                except (BlockingIOError, InterruptedError):
                    continue
                if not chunk:
                    judge.finish()
                    return judge.verdict().passed
                judge.received(chunk)
                verdict = judge.verdict()
                if owes and verdict.passed:
                    return True
            if verdict.pending and not (stop is not None and stop.is_set()):
                judge.finish()  # At the deadline: the oracle's last word on what came.
                return judge.verdict().passed
            return False
    except OSError:
        return False
