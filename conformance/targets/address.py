"""TCP addresses: ``HOST:PORT`` parsed and printed, a free port, one probing connection."""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass

from conformance.errors import UsageError

__all__ = ["Address", "free_port", "parse_address", "probe"]

_ADDRESS = re.compile(r"^(?:\[(?P<v6>[^\]]+)\]|(?P<host>[^\[\]:\s]+)):(?P<port>\d+)$")


@dataclass(frozen=True)
class Address:
    """A TCP address; ``str()`` gives ``HOST:PORT``, with brackets for IPv6."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_address(text: str) -> Address:
    """Parse ``HOST:PORT`` or ``[IPV6]:PORT``.

    Raises:
        UsageError: The text is not of that form, or the port is out of range.
    """
    match = _ADDRESS.match(text.strip())
    if match is None:
        raise UsageError(
            f"malformed target {text!r}: expected HOST:PORT, "
            "for example 127.0.0.1:7000 or [::1]:7000"
        )
    port = int(match["port"])
    if not 1 <= port <= 65535:
        raise UsageError(f"malformed target {text!r}: port must be between 1 and 65535")
    return Address(match["v6"] or match["host"], port)


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago on ``host`` (the OS picks it)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def probe(address: Address, timeout: float = 2.0) -> OSError | None:
    """Try one connection to ``address``; return the error, or None if it was accepted."""
    try:
        with socket.create_connection((address.host, address.port), timeout=timeout):
            return None
    except OSError as exc:
        return exc
