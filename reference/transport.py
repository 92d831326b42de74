"""What a protocol handler may do to its connection: the :class:`Transport`.

Its own module, below :mod:`reference.handler` and the protocol handlers
(:mod:`reference.resp`, :mod:`reference.memcache`) alike, so that the handlers
the registry in :mod:`reference.handler` names do not import that registry.
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["Transport"]


class Transport(Protocol):
    """What a handler may do to its connection."""

    def send(self, data: bytes) -> None:
        """Queue ``data`` for the peer, in order. Any thread may call this."""

    def close(self) -> None:
        """Flush what is queued, then close. Any thread may call this."""
