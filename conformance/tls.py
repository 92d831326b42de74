"""TLS as the client sees it: the settings a run takes, their context, why a handshake failed.

How this works
--------------
``--tls`` and the options beside it become one :class:`TlsSettings`: plain,
frozen data, so that it travels as it is to xdist workers, load processes and
load hosts, each of which makes its own ``ssl.SSLContext`` from it
(:meth:`TlsSettings.context`, once per process: a context with the system's
trust store costs tens of milliseconds to make, a connection from a shared one
microseconds).

The connections themselves are sans-I/O: an ``ssl.SSLObject`` between two
memory BIOs, driven by the harness (:mod:`conformance.streams`) or by the load
generator's epoll loop. Nothing here touches a socket.

:func:`handshake_failure` says why a handshake failed and which side said so:
an OpenSSL reason with ``ALERT`` in it is an alert the server sent; any other
reason is the client's own finding (a certificate it does not trust, a reply
that is not TLS at all), and a connection that ended or was reset during the
handshake is the server leaving without a word.
"""

from __future__ import annotations

import enum
import functools
import ssl
from dataclasses import asdict, dataclass
from typing import Any

from conformance.errors import UsageError
from conformance.transcript import CheckFailure

__all__ = [
    "TlsRecordError",
    "TlsSettings",
    "TlsVersion",
    "client_context",
    "handshake_failure",
    "tls_from_options",
]


class TlsVersion(enum.Enum):
    """A TLS version a run can pin (``--tls-version``): only that one is offered."""

    TLS_1_2 = "1.2"
    TLS_1_3 = "1.3"

    @property
    def ssl_version(self) -> ssl.TLSVersion:
        return ssl.TLSVersion.TLSv1_2 if self is TlsVersion.TLS_1_2 else ssl.TLSVersion.TLSv1_3


class TlsRecordError(CheckFailure):
    """The server's records could not be read (a bad MAC, a header that is not TLS, an alert).

    A failure of the server's, not a reset: the harness's step gives it its
    step and transcript.
    """

    @classmethod
    def of(cls, exc: ssl.SSLError) -> TlsRecordError:
        reason = exc.reason or type(exc).__name__
        if "ALERT" in reason:
            why = f"the server sent the alert {reason.split('ALERT_', 1)[-1].lower()}"
        else:
            why = (
                "the server's ciphertext was cut, lost or reordered on the way "
                "(a record that does not decrypt, or bytes that are no record)"
            )
        return cls(f"the TLS record layer failed: {reason} ({exc}): {why}")


@dataclass(frozen=True)
class TlsSettings:
    """How the client speaks TLS to the target.

    Attributes:
        ca: A PEM file of the certificates to trust; ``None``: the system's store.
        insecure: Do not verify the server's certificate nor its name.
        server_name: The name to send (SNI) and to verify the certificate
            against; ``None``: the target's host.
        cert: A PEM file with the client's certificate (and its key, unless
            ``key`` names another file), for servers that ask for one.
        key: The client certificate's private key.
        version: Offer only this version; ``None``: what the library allows
            (TLS 1.2 and 1.3).
    """

    ca: str | None = None
    insecure: bool = False
    server_name: str | None = None
    cert: str | None = None
    key: str | None = None
    version: TlsVersion | None = None

    def context(self) -> ssl.SSLContext:
        """A client context for these settings.

        Raises:
            ValueError: A file cannot be read or holds no certificate or key
                (the message names the file and the reason).
        """
        try:
            context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=self.ca)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"cannot read the CA file {self.ca}: {_why(exc)}") from None
        if self.insecure:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if self.cert is not None:
            try:
                context.load_cert_chain(self.cert, self.key)
            except (OSError, ssl.SSLError) as exc:
                files = self.cert if self.key is None else f"{self.cert} and {self.key}"
                raise ValueError(
                    f"cannot load the client certificate {files}: {_why(exc)}"
                ) from None
        if self.version is not None:
            context.minimum_version = context.maximum_version = self.version.ssl_version
        return context

    def server_hostname(self, host: str) -> str:
        """The name the client sends and verifies for a target at ``host``."""
        return self.server_name or host

    def flags(self) -> list[str]:
        """The command-line options that give these settings (for a replay command)."""
        words = ["--tls"]
        for flag, value in (
            ("--tls-ca", self.ca),
            ("--tls-server-name", self.server_name),
            ("--tls-cert", self.cert),
            ("--tls-key", self.key),
            ("--tls-version", self.version.value if self.version else None),
        ):
            if value is not None:
                words += [flag, value]
        if self.insecure:
            words.append("--tls-insecure")
        return words

    def to_data(self) -> dict[str, Any]:
        """Plain data that :meth:`from_data` reads."""
        data = asdict(self)
        data["version"] = self.version.value if self.version else None
        return data

    @classmethod
    def from_data(cls, data: dict[str, Any]) -> TlsSettings:
        version = data.get("version")
        return cls(**{**data, "version": TlsVersion(version) if version else None})

    def describe(self) -> str:
        """One line for a run's header: what the client offers and what it trusts."""
        version = f"TLS {self.version.value} only" if self.version else "TLS 1.2 or 1.3"
        if self.insecure:
            trust = "the server's certificate NOT verified (--tls-insecure)"
        else:
            trust = f"certificates verified against {self.ca or 'the system store'}"
        parts = [version, trust]
        if self.server_name:
            parts.append(f"server name {self.server_name}")
        if self.cert:
            parts.append(f"client certificate {self.cert}")
        return ", ".join(parts)


def tls_from_options(values: Any) -> TlsSettings | None:
    """The TLS settings ``--tls`` and the options beside it give; None: plain TCP.

    Any ``--tls-*`` option implies ``--tls``. The files are read now, so that a
    missing or malformed one ends the run before it starts.

    Raises:
        UsageError: The options contradict each other, or a file cannot be used.
    """
    if isinstance(values.tls, TlsSettings):  # check_server(tls=...)
        return _usable(values.tls)
    given = {
        "ca": values.tls_ca,
        "server_name": values.tls_server_name,
        "cert": values.tls_cert,
        "key": values.tls_key,
        "version": values.tls_version,
    }
    if not values.tls and not values.tls_insecure and all(v is None for v in given.values()):
        return None
    for flag, value in (("--tls-ca", given["ca"]), ("--tls-server-name", given["server_name"])):
        if value is not None and not value.strip():
            raise UsageError(f"{flag} is empty: give a file or a name, or leave it out")
    if given["key"] is not None and given["cert"] is None:
        raise UsageError("--tls-key needs --tls-cert: the key of which certificate?")
    if values.tls_insecure and given["ca"] is not None:
        raise UsageError("--tls-insecure verifies nothing: leave out --tls-ca, or it")
    settings = TlsSettings(
        ca=given["ca"],
        insecure=bool(values.tls_insecure),
        server_name=given["server_name"],
        cert=given["cert"],
        key=given["key"],
        version=TlsVersion(given["version"]) if given["version"] is not None else None,
    )
    return _usable(settings)


def _usable(settings: TlsSettings) -> TlsSettings:
    try:
        client_context(settings)
    except ValueError as exc:
        raise UsageError(f"--tls: {exc}") from None
    return settings


@functools.cache
def client_context(settings: TlsSettings) -> ssl.SSLContext:
    """The client context for ``settings``, made once per process and shared."""
    return settings.context()


def handshake_failure(exc: BaseException) -> str:
    """Why a TLS handshake failed, and which side said so, in one clause.

    ``exc`` is what the handshake raised: an ``ssl.SSLError`` (or one of its
    kinds) or an ``OSError`` from the socket beneath.
    """
    if isinstance(exc, ssl.SSLCertVerificationError):
        hint = (
            ": give its CA with --tls-ca, or --tls-insecure"
            if exc.verify_code in _UNTRUSTED
            else ""
        )
        return f"the client rejected the server's certificate ({exc.verify_message}{hint})"
    if isinstance(exc, ssl.SSLEOFError):
        return "the server closed the connection during the handshake, without an alert"
    if isinstance(exc, ssl.SSLError):
        reason = exc.reason or str(exc)
        if "ALERT" in reason:
            alert = reason.split("ALERT_", 1)[-1].lower()
            return f"the server sent the alert {alert} ({reason})"
        if reason in _NOT_TLS:
            return f"the server did not answer in TLS ({reason}: is TLS on at this port?)"
        if reason == "UNEXPECTED_MESSAGE":
            return (
                "the client refused the server's handshake (UNEXPECTED_MESSAGE: a message "
                "out of place, or the client's own ClientHello sent back by a plain echo server)"
            )
        return f"the client refused the server's handshake ({reason})"
    if isinstance(exc, ConnectionResetError):
        return "the server reset the connection during the handshake"
    if isinstance(exc, OSError):
        return f"the connection failed during the handshake ({exc.strerror or exc})"
    return f"{type(exc).__name__}: {exc}"


#: X509 verify codes of a chain the client does not trust (unknown issuer, self-signed).
_UNTRUSTED = frozenset({18, 19, 20, 21})
#: OpenSSL's reasons when the first bytes from the server are no TLS record at all.
_NOT_TLS = frozenset({"WRONG_VERSION_NUMBER", "HTTP_REQUEST", "PACKET_LENGTH_TOO_LONG"})


def _why(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        return exc.reason or str(exc)
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return str(exc)
