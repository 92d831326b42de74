"""A server's stderr log that keeps its start and its end, whatever the server writes.

A server that writes to stderr in a loop can fill a disk in minutes (120 MB
in 4 s is easy). :class:`CappedLog` writes the first :data:`HEAD_BYTES` of a
log file as they come, then keeps only the last :data:`TAIL_BYTES` in memory,
and on :meth:`CappedLog.close` writes a line saying how much was dropped,
then that tail. A file shared by several runs of one server (its restarts)
shares one head: a later run whose file is already past the head keeps only
its tail.
"""

from __future__ import annotations

import collections
from pathlib import Path

__all__ = ["HEAD_BYTES", "TAIL_BYTES", "CappedLog"]

#: Bytes of a log file written as they come.
HEAD_BYTES = 1 << 20
#: Bytes of the end of one run's stderr kept once the head is full.
TAIL_BYTES = 1 << 20


class CappedLog:
    """Appends lines to ``path``: its first :data:`HEAD_BYTES`, then the last :data:`TAIL_BYTES`.

    Sizes count UTF-8 bytes; a line longer than the tail is cut to its end.
    Not thread-safe: one writer (the thread that reads the server's stderr).

    Args:
        path: The log file, appended to.
        head: Bytes of the file written as they come (counting what it holds already).
        tail: Bytes of the end kept once the head is full.
    """

    def __init__(self, path: Path, *, head: int = HEAD_BYTES, tail: int = TAIL_BYTES) -> None:
        self._file = path.open("ab")
        self._head = head
        self._head_left = max(0, head - self._file.tell())
        self._tail_size = tail
        self._tail: collections.deque[bytes] = collections.deque()
        self._tail_bytes = 0
        self._dropped_bytes = 0
        self._dropped_lines = 0

    def write_line(self, line: str) -> None:
        """Add one line (without its newline)."""
        data = line.encode("utf-8", "replace") + b"\n"
        if self._head_left >= len(data) and not self._tail:
            self._file.write(data)
            self._file.flush()
            self._head_left -= len(data)
            return
        self._head_left = 0
        if len(data) > self._tail_size:
            self._dropped_bytes += len(data) - self._tail_size
            data = data[-self._tail_size :]
        self._tail.append(data)
        self._tail_bytes += len(data)
        while self._tail_bytes > self._tail_size:
            gone = self._tail.popleft()
            self._tail_bytes -= len(gone)
            self._dropped_bytes += len(gone)
            self._dropped_lines += 1

    @property
    def dropped(self) -> int:
        """Bytes dropped so far (between the head and the tail kept)."""
        return self._dropped_bytes

    def close(self) -> None:
        """Write what was dropped, then the tail, and close the file."""
        if self._file.closed:
            return
        try:
            if self._dropped_bytes:
                self._file.write(
                    f"--- {self._dropped_bytes} bytes ({self._dropped_lines} lines) of stderr "
                    f"dropped here: the log keeps its first {_size(self._head)} and "
                    f"the last {_size(self._tail_size)} of each run\n".encode()
                )
            self._file.writelines(self._tail)
        finally:
            self._tail.clear()
            self._file.close()


def _size(n: int) -> str:
    return f"{n >> 20} MiB" if n >= 1 << 20 and n % (1 << 20) == 0 else f"{n} bytes"
