"""The key-value store that the RESP and memcached handlers share within a server.

One :class:`Store` serves every connection of one server process. In the pool
model handlers run on worker threads, several at once, so every read-modify-
write (INCR, incr, set-if-absent) must hold :attr:`Store.lock` for its whole
length; a plain lookup holds it too, so that a reader never sees half of a
change made of two steps.

In the multi model's process mode each sub-reactor process has a store of its
own: a key set on a connection served by one process is not seen by a
connection served by another (each process is a separate cache, as separate
memcached servers are).
"""

from __future__ import annotations

import threading
from typing import Generic, TypeVar

__all__ = ["Store"]

V = TypeVar("V")


class Store(Generic[V]):
    """A dict of binary keys, and the lock that guards it.

    Any thread may use it, holding :attr:`lock` while it reads or changes
    :attr:`items`.
    """

    __slots__ = ("items", "lock")

    def __init__(self) -> None:
        self.items: dict[bytes, V] = {}
        self.lock = threading.Lock()

    def __len__(self) -> int:
        with self.lock:
            return len(self.items)
