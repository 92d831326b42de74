"""The probe after a failed check: does the target still serve a fresh connection at all?

A check that failed may have failed because the server is gone or stuck, not
because of the bug it looks for. The session asks this probe, and the judge
(:mod:`conformance.run.judge`) tells the two apart: unreachable (refused, not
accepted, left in the accept queue) or silent (accepted, and nothing at all
comes back), else served. Over TLS (``--tls``) the probe speaks TLS, so a
handshake answered at all counts as served.
"""

from __future__ import annotations

import contextlib
import socket
import time
from dataclasses import dataclass

from conformance.checks.base import LIVENESS_PAYLOAD, Setup
from conformance.protocols import Capability, message_for
from conformance.targets.address import Address
from conformance.targets.procfs import accepted
from conformance.tls import TlsSettings, client_context, handshake_failure

__all__ = ["PROBE_TIMEOUT", "Silence", "handshake_refused", "unanswered"]

#: Seconds the probe waits to connect, and then for any answer.
PROBE_TIMEOUT = 5.0


@dataclass(frozen=True)
class Silence:
    """Why a target did not serve the probe's fresh connection.

    Attributes:
        detail: What the probe saw, in words.
        accepts: The server accepted the connection (and sent nothing back);
            False: refused, not accepted, or waiting in the accept queue.
    """

    detail: str
    accepts: bool


def unanswered(setup: Setup) -> Silence | None:
    """Why the target does not serve a fresh connection at all, or None when it does.

    Served means: the connection is accepted and, when the model owes a
    reply to a short message, anything at all comes back (bytes, FIN or
    RST) within :data:`PROBE_TIMEOUT` seconds. Whether the reply is right
    is the checks' business, not this probe's. A connection that the
    kernel completed but that still waits in the listener's accept queue
    (``/proc/net/tcp``) was not accepted: the server is unreachable, not
    silent.
    """
    owes = Capability.REPLIES in setup.model.capabilities
    message = message_for(setup.model, LIVENESS_PAYLOAD)
    address = setup.address
    began = time.monotonic()
    try:
        sock = socket.create_connection((address.host, address.port), timeout=PROBE_TIMEOUT)
    except TimeoutError:
        return Silence(
            f"a fresh connection to {address} was not accepted within {PROBE_TIMEOUT:g}s",
            accepts=False,
        )
    except OSError as exc:
        return Silence(f"a fresh connection to {address}: {exc.strerror or exc}", False)
    with contextlib.ExitStack() as stack:
        stream: socket.socket = stack.enter_context(sock)
        ends = sock.getpeername()[:2], sock.getsockname()[:2]  # Before TLS takes the socket.
        if not owes and setup.tls is None:
            return None
        # The connect, the handshake and the reply share the probe's time.
        stream.settimeout(max(0.5, PROBE_TIMEOUT - (time.monotonic() - began)))
        sent = f"a {len(message)}-byte message"
        try:
            if setup.tls is not None:
                sent = "a TLS ClientHello"
                hostname = setup.tls.server_hostname(address.host)
                context = client_context(setup.tls)
                stream = stack.enter_context(context.wrap_socket(sock, server_hostname=hostname))
                if not owes:
                    return None
                sent = f"a {len(message)}-byte message over TLS"
            stream.sendall(message)
            stream.recv(1)
        except TimeoutError:
            if accepted(*ends) is False:
                return Silence(
                    f"a fresh connection to {address} still waits in its listen queue "
                    f"after {PROBE_TIMEOUT:g}s: the server does not accept",
                    accepts=False,
                )
            return Silence(
                f"a fresh connection to {address} was accepted and got nothing back "
                f"within {PROBE_TIMEOUT:g}s of {sent}",
                accepts=True,
            )
        except OSError:
            pass  # A reset, a TLS alert: an answer; something is there.
    return None


def handshake_refused(address: Address, tls: TlsSettings) -> str | None:
    """Why a TLS handshake with the target at ``address`` fails, or None when it completes.

    A run over TLS begins with one: a target that does not speak TLS (or not
    with these settings) is unreachable for every check, and is said to be so
    once, before the checks.
    """
    try:
        sock = socket.create_connection((address.host, address.port), timeout=PROBE_TIMEOUT)
    except OSError as exc:
        return f"cannot connect to {address}: {exc.strerror or exc}"
    hostname = tls.server_hostname(address.host)
    try:
        with client_context(tls).wrap_socket(sock, server_hostname=hostname):
            return None
    except TimeoutError:
        return f"no TLS handshake with {address} within {PROBE_TIMEOUT:g}s (does it speak TLS?)"
    except OSError as exc:
        return f"no TLS handshake with {address}: {handshake_failure(exc)}"
    finally:
        sock.close()
