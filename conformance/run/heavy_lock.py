"""The lock that keeps the heavy checks against one target from running at once.

Heavy checks (thousands of connections, hundreds of MiB) measure the server
alone: two at once against one target would measure each other. The plugin
gives them one xdist group, and this lock holds whatever the scheduler does.
"""

from __future__ import annotations

import fcntl
import os
import re
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from conformance.targets.address import Address

__all__ = ["heavy_lock"]


@contextmanager
def heavy_lock(address: Address, timeout: float = 900.0) -> Iterator[None]:
    """Hold the lock that keeps heavy checks against ``address`` from running at once.

    ``xdist_group`` already sends them to one worker, but only while xdist's
    grouping works (pytest-xdist 3.8 loses the groups under pytest 9.2); the
    lock, a ``flock`` on a file named after the target, holds across every
    process on this machine whatever the scheduler does.

    Raises:
        TimeoutError: The lock was not free within ``timeout`` seconds.
    """
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", str(address))
    path = Path(tempfile.gettempdir()) / f"reactor-conformance-heavy-{name}.lock"
    deadline = time.monotonic() + timeout
    with _open_lock(path) as lock:
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise TimeoutError(
                        f"another heavy check held {path} for {timeout:g}s"
                    ) from None
                time.sleep(0.02)  # Polling a lock held by another process, bounded.
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _open_lock(path: Path) -> IO[bytes]:
    """``path`` opened for ``flock``: read-only, so that one another user made serves too.

    In a sticky world-writable directory (``/tmp``) Linux refuses an ``O_CREAT``
    open of a file another user owns (``fs.protected_regular``), even one that
    exists; ``flock`` needs no write access. So open the file as it is, and
    create it only where it is not there yet.
    """
    try:
        return open(path, "rb")
    except FileNotFoundError:
        pass
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:  # Another process made it in between.
        return open(path, "rb")
    return os.fdopen(fd, "rb")
