"""The event loop: one selector, one thread, callbacks and timers.

How this works
--------------
An ``EventLoop`` owns one poller (``epoll`` on Linux, ``poll`` elsewhere) and is
run by exactly one thread (the *loop thread*), the one that calls
:meth:`EventLoop.run`. Each registered descriptor has a callback that receives
the ready event mask (:data:`READ`, :data:`WRITE`, and :data:`ERROR` bits for a
hang-up or an error, which the callback must treat as "try the I/O and see");
one turn of the loop is::

    poll(timeout) -> run the callback of every ready descriptor
                    -> run the timers that are due
                    -> run the callbacks queued by other threads

Other threads never touch the selector. They hand work to the loop with
:meth:`EventLoop.call_soon_threadsafe`, which appends to a deque and writes one
byte to a wakeup socketpair so that a loop blocked in ``select`` returns at
once (muduo's ``runInLoop`` / ``queueInLoop``).

A callback that raises is logged and the loop goes on: one bad connection
must not stop the others.

Thread rules: methods whose name ends in ``_threadsafe``, and :meth:`stop`, may
be called from any thread (and from a signal handler running on the loop
thread). Every other method runs on the loop thread and says so with
:meth:`assert_in_loop_thread` where a mistake would corrupt state.

The poller is used directly rather than through ``selectors``: the hot path
of a reactor is "poll, then call one function per ready descriptor", and the
selector's key objects and event translation cost more than the rest of a
small echo.

Facts about the OS this relies on
---------------------------------
- epoll is used level-triggered: a socket with unread data is reported again
  on the next turn, so a callback may read once and return without losing the
  rest.
- ``EPOLLIN``/``EPOLLOUT``/``EPOLLERR``/``EPOLLHUP`` have the same values as
  ``POLLIN``/``POLLOUT``/``POLLERR``/``POLLHUP``, so one set of masks serves
  both pollers. Hang-up and error are reported whatever was asked for.
- Since PEP 475, ``select`` is retried after a signal handler runs, so a signal
  handler that wants the loop to notice something must write to the wakeup
  socket, which :meth:`stop` does.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import select
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

__all__ = ["EventLoop", "TimerHandle", "ReadyCallback", "READ", "WRITE", "ERROR"]

log = logging.getLogger(__name__)

#: What a registered descriptor's callback receives: the ready event mask.
ReadyCallback = Callable[[int], None]

#: Readable (or, with :data:`ERROR`, a hang-up or error to discover by reading).
READ = select.POLLIN
#: Writable.
WRITE = select.POLLOUT
#: Hang-up or error: reported whatever was asked for.
ERROR = select.POLLERR | select.POLLHUP

#: Size of the buffer each loop lends its connections for ``recv_into``.
READ_BUFFER_SIZE = 256 * 1024

#: Longest ``select`` timeout while timers wait, whatever their deadline.
_MAX_SELECT_TIMEOUT = 3600.0


class TimerHandle:
    """A callback scheduled with :meth:`EventLoop.call_later`.

    Only the loop thread may cancel it.
    """

    __slots__ = ("when", "callback", "cancelled")

    def __init__(self, when: float, callback: Callable[[], None]) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        """Stop the callback from running; harmless if it already ran."""
        self.cancelled = True


class EventLoop:
    """One selector driven by one thread.

    Args:
        name: A name for logs and for the thread that runs the loop.
    """

    def __init__(self, name: str = "loop") -> None:
        self.name = name
        self._poller = _Poller()
        self._callbacks: dict[int, ReadyCallback] = {}
        #: Scratch space for ``recv_into``: only ever used on the loop thread,
        #: and copied out before a handler sees the bytes.
        self.read_buffer = bytearray(READ_BUFFER_SIZE)
        self._pending: deque[Callable[[], None]] = deque()
        self._timers: list[tuple[float, int, TimerHandle]] = []
        self._timer_seq = itertools.count()
        self._thread_id: int | None = None
        self._stopping = False
        self._wakeup_armed = False  # a wakeup byte is on its way for this turn
        self._closed = False
        self._wakeup_r, self._wakeup_w = socket.socketpair()
        self._wakeup_r.setblocking(False)
        self._wakeup_w.setblocking(False)
        self.register(self._wakeup_r, READ, self._drain_wakeup)

    # -- thread rules ---------------------------------------------------

    def is_in_loop_thread(self) -> bool:
        """Return True when called on the thread that runs this loop.

        Before :meth:`run` starts, the thread that created nothing yet owns the
        loop, so every thread counts as the loop thread (setup code may
        register file objects before starting the loop).
        """
        return self._thread_id is None or self._thread_id == threading.get_ident()

    def assert_in_loop_thread(self) -> None:
        """Raise RuntimeError unless called on the loop thread."""
        if not self.is_in_loop_thread():
            raise RuntimeError(
                f"{self.name}: called from thread {threading.get_ident()}, "
                f"but this loop runs on thread {self._thread_id}"
            )

    # -- file objects ---------------------------------------------------

    def register(self, fileobj: socket.socket, events: int, callback: ReadyCallback) -> None:
        """Watch ``fileobj`` for ``events`` and call ``callback(mask)`` when ready."""
        fd = fileobj.fileno()
        self._poller.register(fd, events)
        self._callbacks[fd] = callback

    def modify(self, fileobj: socket.socket, events: int, callback: ReadyCallback) -> None:
        """Change the events watched for a registered ``fileobj``."""
        fd = fileobj.fileno()
        self._poller.modify(fd, events)
        self._callbacks[fd] = callback

    def unregister(self, fileobj: socket.socket) -> None:
        """Stop watching ``fileobj``; harmless if it is not registered or closed."""
        fd = fileobj.fileno()
        if self._callbacks.pop(fd, None) is not None:
            try:
                self._poller.unregister(fd)
            except (KeyError, OSError):
                pass  # Already gone from the poller.

    # -- callbacks and timers -------------------------------------------

    def call_soon_threadsafe(self, callback: Callable[..., None], *args: Any) -> None:
        """Run ``callback(*args)`` on the loop thread, soon. Any thread may call this."""
        if args:
            self._pending.append(lambda: callback(*args))
        else:
            self._pending.append(callback)
        # Append first, then look at the flag: the loop clears the flag before
        # it takes the callbacks, so either it takes this one in the turn it is
        # in, or the flag is clear and this call wakes it. One wakeup byte per
        # turn, not one per call.
        if not self._wakeup_armed:
            self._wakeup_armed = True
            self._wakeup()

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle:
        """Run ``callback()`` on the loop thread after ``delay`` seconds.

        Loop thread only.
        """
        self.assert_in_loop_thread()
        handle = TimerHandle(time.monotonic() + max(0.0, delay), callback)
        heapq.heappush(self._timers, (handle.when, next(self._timer_seq), handle))
        return handle

    def _wakeup(self) -> None:
        try:
            self._wakeup_w.send(b"\0")
        except (BlockingIOError, InterruptedError):
            pass  # The socket is full of wakeups already; one is enough.
        except OSError:
            pass  # Closed: the loop is gone and nothing will run anyway.

    def _drain_wakeup(self, mask: int) -> None:
        try:
            while self._wakeup_r.recv(4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    # -- running ----------------------------------------------------------

    def run(self) -> None:
        """Run the loop on the calling thread until :meth:`stop` is called."""
        if self._closed:
            raise RuntimeError(f"{self.name}: run() on a closed loop")
        self._thread_id = threading.get_ident()
        log.debug("%s: running", self.name)
        poll = self._poller.poll
        callbacks = self._callbacks
        pending = self._pending
        try:
            while not self._stopping:
                if pending:
                    timeout: float | None = 0.0
                elif self._timers:
                    timeout = min(
                        _MAX_SELECT_TIMEOUT, max(0.0, self._timers[0][0] - time.monotonic())
                    )
                else:
                    timeout = None
                for fd, mask in poll(timeout):
                    # A callback earlier in this batch may have unregistered fd.
                    callback = callbacks.get(fd)
                    if callback is None:
                        continue
                    try:
                        callback(mask)
                    except Exception:
                        log.exception("%s: callback for fd %d failed", self.name, fd)
                if self._timers:
                    self._run_due_timers()
                self._wakeup_armed = False
                for _ in range(len(pending)):
                    callback_ = pending.popleft()
                    try:
                        callback_()
                    except Exception:
                        log.exception("%s: callback %r failed", self.name, callback_)
        finally:
            log.debug("%s: stopped", self.name)

    def stop(self) -> None:
        """Make :meth:`run` return after the current turn. Any thread may call this."""
        self._stopping = True
        self._wakeup()

    def close(self) -> None:
        """Release the selector and the wakeup sockets. Call after :meth:`run` returned."""
        if self._closed:
            return
        self._closed = True
        self._poller.close()
        self._wakeup_r.close()
        self._wakeup_w.close()

    def _run_due_timers(self) -> None:
        now = time.monotonic()
        timers = self._timers
        while timers and timers[0][0] <= now:
            _, _, handle = heapq.heappop(timers)
            if not handle.cancelled:
                handle.cancelled = True
                try:
                    handle.callback()
                except Exception:
                    log.exception("%s: timer %r failed", self.name, handle.callback)


class _Poller:
    """``select.epoll`` where there is one, else ``select.poll``; timeouts in seconds."""

    def __init__(self) -> None:
        self._epoll = select.epoll() if hasattr(select, "epoll") else None
        self._poll = None if self._epoll is not None else select.poll()
        impl = self._epoll if self._epoll is not None else self._poll
        assert impl is not None
        self.register = impl.register
        self.modify = impl.modify
        self.unregister = impl.unregister
        if self._epoll is not None:
            self.poll: Callable[[float | None], list[tuple[int, int]]] = self._epoll.poll
        else:
            self.poll = self._poll_ms

    def _poll_ms(self, timeout: float | None) -> list[tuple[int, int]]:
        assert self._poll is not None
        return self._poll.poll(None if timeout is None else timeout * 1000.0)

    def close(self) -> None:
        if self._epoll is not None:
            self._epoll.close()
