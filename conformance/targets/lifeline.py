"""Processes the suite starts die with it, however it ends.

A run stopped by SIGINT, SIGTERM or SIGHUP stops its servers itself (the
``finally`` blocks of the session). A run killed outright (SIGKILL: a CI
job's timeout, the OOM killer) runs no code at all, so the child processes
carry the instruction themselves: Linux's parent-death signal
(``prctl(PR_SET_PDEATHSIG, SIGKILL)``), set in the child before ``exec`` for
spawned servers, at the start of each load process.

Facts about Linux this relies on
--------------------------------
- The parent-death signal is sent when the *thread* that created the child
  ends, not the process: a child must be started from a thread that lives as
  long as the child should (the main thread, or the thread that waits for it).
- It survives ``execve`` (except of a set-user-ID program) and ``setsid``; it is
  not inherited by the child's own children (a server's workers, a daemon).
- The parent may die before the child sets it: the child then sees another
  parent (``getppid()``) and ends itself.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys
from collections.abc import Callable

__all__ = ["die_with_parent"]

_PR_SET_PDEATHSIG = 1


def _load_prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        prctl: Callable[..., int] = libc.prctl
    except (OSError, AttributeError):
        return None
    return prctl


# Looked up once, in the parent: a child between fork and exec calls it and nothing else.
_prctl = _load_prctl()


def die_with_parent(parent: int) -> None:
    """Make this process get SIGKILL when its parent (PID ``parent``) ends.

    Safe between ``fork`` and ``exec`` (a ``preexec_fn``). Where the parent is
    already gone, this process ends at once. Does nothing where the system
    has no parent-death signal.
    """
    if _prctl is None:
        return
    _prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGKILL)
