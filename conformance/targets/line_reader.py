"""Reading a child's pipe line by line in a thread, keeping its first and last lines.

A server's stdout and stderr must be read all the time (a pipe holds 64 KiB;
a server whose pipe is full blocks), and the lines a run needs are the first
ones (the ``listening on`` line) and the last ones (what it said before it
exited). :class:`LineReader` reads one pipe to its end in a daemon thread,
keeps the first :data:`HEAD` lines and the last ``keep``, lets a caller wait
for a line that matches a pattern, and copies every line to a
:class:`~conformance.targets.capped_log.CappedLog` when given one. A line is read at
most :data:`MAX_LINE` characters at a time, so a process that writes without
newlines costs bounded memory. :func:`parse_listening` reads the line every
server of this project prints once it listens (``listening on HOST:PORT``).
"""

from __future__ import annotations

import collections
import itertools
import re
import threading
import time
from typing import IO

from conformance.targets.capped_log import CappedLog

__all__ = ["HEAD", "LISTENING", "MAX_LINE", "LineReader", "parse_listening"]

#: How many first lines of each stream a reader always keeps.
HEAD = 20

#: Longest line read at once (in characters): a server that writes without
#: newlines has its output cut into lines of this length, not read whole.
MAX_LINE = 64 * 1024


#: The line a server prints once it listens: ``listening on HOST:PORT``, the
#: host in brackets when it is IPv6.
LISTENING = re.compile(r"listening on (\[[^\]]+\]|[^\s:]+):(\d+)\s*$")


def parse_listening(line: str) -> tuple[str, int] | None:
    """The ``(host, port)`` of a ``listening on HOST:PORT`` line, or None for another line."""
    match = LISTENING.search(line)
    if match is None:
        return None
    return match[1].strip("[]"), int(match[2])


class LineReader(threading.Thread):
    """Reads one pipe of a process to its end, line by line, and keeps the lines.

    Lines are numbered from 0 in the order they came. The reader keeps the
    first :data:`HEAD` lines and the last ``keep`` ones (every line when
    ``keep`` is None); :meth:`wait_for` looks only at lines it kept. It closes
    the pipe at EOF.

    Args:
        stream: The pipe, in text mode.
        keep: How many of the last lines to keep; None keeps every line.
        name: The thread's name.
        copy: Where every line is also written, as it comes (a log file, its
            start and end kept); the reader closes it at EOF.
    """

    def __init__(
        self,
        stream: IO[str],
        *,
        keep: int | None = 20,
        name: str = "reader",
        copy: CappedLog | None = None,
    ) -> None:
        super().__init__(daemon=True, name=name)
        self._stream = stream
        self._copy = copy
        self._head: list[str] = []
        self._tail: collections.deque[str] = collections.deque(maxlen=keep)
        self._count = 0
        self._changed = threading.Condition()
        self.ended = False

    def run(self) -> None:
        try:
            for raw in iter(lambda: self._stream.readline(MAX_LINE), ""):
                line = raw.rstrip("\n")
                if self._copy is not None:
                    self._copy.write_line(line)
                with self._changed:
                    if len(self._head) < HEAD:
                        self._head.append(line)
                    self._tail.append(line)
                    self._count += 1
                    self._changed.notify_all()
        except (ValueError, OSError):
            pass  # The pipe was closed under us.
        finally:
            with self._changed:
                self.ended = True
                self._changed.notify_all()
            self._stream.close()
            if self._copy is not None:
                self._copy.close()

    def __len__(self) -> int:
        """How many lines came so far, kept or not."""
        with self._changed:
            return self._count

    def lines(self) -> list[str]:
        """The last lines kept (every line so far when ``keep`` is None)."""
        with self._changed:
            return list(self._tail)

    def _kept_since(self, start: int) -> list[str]:
        """The kept lines numbered ``start`` or more, in order (the lock held)."""
        first_in_tail = self._count - len(self._tail)
        from_head = self._head[start:first_in_tail]
        from_tail = itertools.islice(self._tail, max(start - first_in_tail, 0), None)
        return [*from_head, *from_tail]

    def wait_for(
        self, pattern: re.Pattern[str], timeout: float, *, start: int = 0
    ) -> re.Match[str] | None:
        """Wait for a line that matches ``pattern`` (searched anywhere in the line).

        Args:
            pattern: What to look for.
            timeout: Seconds to wait at most.
            start: Look only at lines numbered ``start`` or more (for example
                ``len(reader)`` taken before an action).

        Returns:
            The first match, or None when the stream ended or the time ran out
            first (:attr:`ended` tells which).
        """
        deadline = time.monotonic() + timeout
        seen = start
        with self._changed:
            while True:
                for line in self._kept_since(seen):
                    match = pattern.search(line)
                    if match is not None:
                        return match
                seen = max(seen, self._count)
                left = deadline - time.monotonic()
                if self.ended or left <= 0:
                    return None
                self._changed.wait(left)
