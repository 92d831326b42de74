"""Stopping a run on a signal, cleanly, even in the middle of a check's trio run.

SIGINT, SIGTERM and SIGHUP (and the run's own watchdog, SIGALRM) must unwind
a run as KeyboardInterrupt does, so that every ``finally`` stops its target
and pytest writes the reports of the checks that ran. Raising from the signal handler is safe
between checks, but not inside ``trio.run``: the exception can land inside
trio's own bookkeeping (the handler runs wherever the main thread is, most
often in ``epoll_wait``), and the run is then abandoned half-way with pages of
"must be called from async context" tracebacks. Trio's own SIGINT handler
knows where it is safe to raise, but raises inside whichever task runs, so a
check's nursery wraps it in an exception group, and it handles SIGINT only.

So every check's trio run goes through :func:`run_trio`: while it runs, a
signal cancels it (``TrioToken.run_sync_soon`` is safe to call from a signal
handler), the check unwinds through its own ``finally`` blocks and closes its
connections, and :class:`Stopped` is raised once ``trio.run`` has returned.
Outside a trio run the handler raises :class:`Stopped` at once.
"""

from __future__ import annotations

import signal
from collections.abc import Awaitable, Callable
from types import FrameType

import trio

__all__ = ["Stopped", "install", "requested", "run_trio", "stop_on_signal"]


class Stopped(KeyboardInterrupt):
    """A stopping signal arrived: unwind as SIGINT does, so every ``finally`` stops its target."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


_seen: list[int] = []
_running: list[tuple[trio.lowlevel.TrioToken, trio.CancelScope]] = []


def requested() -> int | None:
    """The last stopping signal received in this process, if any."""
    return _seen[-1] if _seen else None


def stop_on_signal(signum: int, frame: FrameType | None) -> None:
    """The signal handler: cancel the running check, else raise :class:`Stopped` here."""
    _seen.append(signum)
    if _running:
        token, scope = _running[-1]
        try:
            token.run_sync_soon(scope.cancel)
        except trio.RunFinishedError:
            pass
        else:
            return
    raise Stopped(signum)


def install() -> None:
    """Stop this process's run on SIGTERM, SIGHUP and SIGINT; forget signals seen before.

    SIGINT only where it raises KeyboardInterrupt now (Python's default): one
    ignored (a command started with ``&`` by a non-interactive shell) stays
    ignored.
    """
    _seen.clear()
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, stop_on_signal)
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, stop_on_signal)


def run_trio(async_fn: Callable[[], Awaitable[object]]) -> None:
    """``trio.run(async_fn)``, cancelled by a stopping signal, which then raises :class:`Stopped`.

    Raises:
        Stopped: A stopping signal arrived before or while the run ran.
    """
    before = len(_seen)
    depth = len(_running)

    async def main() -> None:
        with trio.CancelScope() as scope:
            # Registered until trio.run has returned: a signal during its teardown
            # still only asks to cancel (harmless then), never raises inside it.
            _running.append((trio.lowlevel.current_trio_token(), scope))
            await async_fn()

    try:
        trio.run(main)
    except BaseException:
        if len(_seen) > before:
            raise Stopped(_seen[-1]) from None
        raise
    finally:
        del _running[depth:]
    if len(_seen) > before:
        raise Stopped(_seen[-1])
