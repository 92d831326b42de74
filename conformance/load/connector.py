"""Connects that never wait on the server: the load generator's :class:`Connector`.

How this works
--------------
A :class:`Connector` starts connects without waiting for them: each socket is
non-blocking, ``connect_ex`` returns at once, and the socket is registered
with the driver's epoll for write readiness. When that comes (or an error),
the driver calls :meth:`Connector.finish`, which reads ``SO_ERROR`` and hands
the socket back connected, or the error. Each connect carries a deadline, and
:meth:`Connector.expire` takes off, closed, those past it: so no connect
holds up the loop, and a server that never accepts costs one deadline, not
one timeout per connection.

The host is resolved once, at the first connect; connects go to its first
address and, until one of them succeeds, a refused address gives way to the
next, as ``socket.create_connection`` does (a numeric host, as targets
usually are, has just one).

Outside the loop, :func:`wait_connected` and :func:`wait_ready` wait for one
socket (the liveness probe) under a deadline, in slices of ``SLICE`` seconds
so that a stop event (:class:`StopEvent`) is seen between two.

Facts about the OS this relies on
---------------------------------
- A non-blocking ``connect`` returns ``EINPROGRESS``; the socket becomes
  writable when the handshake is over, and ``SO_ERROR`` then says how it
  ended (0: connected). On loopback a refusal may come at once instead.
- The handshake is the kernel's: a connect completes once the connection is
  in the server's accept queue, whether the server calls ``accept`` or not.
- A full accept queue does not refuse: Linux drops the SYN and the client
  sends it again, for about two minutes (``net.ipv4.tcp_syn_retries``). Only
  a deadline of ours ends such a connect.
- ``SO_ERROR`` is 0 while a connect is still under way as well; ``getpeername``
  (``ENOTCONN`` until connected) tells the two apart.
- Closing a socket takes it out of every epoll it was registered with (no
  other descriptor refers to it here).
"""

from __future__ import annotations

import errno
import os
import select
import socket
import time
from typing import Any, Protocol

__all__ = [
    "CONNECT_BATCH",
    "SLICE",
    "Connecting",
    "Connector",
    "StopEvent",
    "wait_connected",
    "wait_ready",
]

#: Connects under way at once, at most: a burst of SYNs larger than the server's
#: accept queue would be dropped and sent again only a second later.
CONNECT_BATCH = 256
#: Seconds: the longest a wait here lasts before it looks at the stop event again.
SLICE = 0.1

_UNDER_WAY = frozenset({errno.EINPROGRESS, errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR})
# Errors after which the host's next address is worth a try.
_NEXT_ADDRESS = frozenset(
    {
        errno.ECONNREFUSED,
        errno.EADDRNOTAVAIL,
        errno.EAFNOSUPPORT,
        errno.ENETUNREACH,
        errno.EHOSTUNREACH,
    }
)


class StopEvent(Protocol):
    """What the load generator polls to end early: a ``threading.Event`` or a
    ``multiprocessing`` one."""

    def is_set(self) -> bool: ...


class Connecting:
    """One connect under way.

    Attributes:
        sock: The non-blocking socket.
        fd: Its descriptor (the key in :attr:`Connector.pending`).
        index: The run-wide index of the connection it opens; None for a
            connect-storm connection, closed as soon as it is open.
        deadline: ``time.monotonic()`` by which it must be connected.
        address: Which of the host's addresses it went to.
        session: Over TLS, the connection's TLS once its TCP connect is done
            (its handshake under way; :mod:`conformance.load.tls_driver`); else None.
    """

    __slots__ = ("sock", "fd", "index", "deadline", "address", "session")

    def __init__(
        self, sock: socket.socket, index: int | None, deadline: float, address: int
    ) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.index = index
        self.deadline = deadline
        self.address = address
        self.session: Any = None


class Connector:
    """Non-blocking connects to one server, registered with one epoll, each under a deadline.

    Args:
        ep: The epoll the caller polls; each connecting socket is registered
            there for ``EPOLLOUT`` until :meth:`finish` or :meth:`expire`.
        host: The server's host.
        port: The server's port.
    """

    def __init__(self, ep: select.epoll, host: str, port: int) -> None:
        self.ep = ep
        self.host = host
        self.port = port
        #: The connects under way, by descriptor.
        self.pending: dict[int, Connecting] = {}
        self._addresses: list[tuple[int, Any]] = []
        self._address = 0  # the address new connects go to
        self._settled = False  # a connect succeeded: stay with its address

    def start(self, index: int | None, deadline: float) -> OSError | None:
        """Start a connect; it is pending until :meth:`finish` or :meth:`expire`.

        Args:
            index: The connection's run-wide index; None for a storm connection.
            deadline: ``time.monotonic()`` by which it must be connected.

        Returns:
            None when it is under way; the error when it failed at once (the
            host does not resolve, no descriptor is left, the server refused).
        """
        try:
            if not self._addresses:
                self._addresses = [
                    (family, sockaddr)
                    for family, _, _, _, sockaddr in socket.getaddrinfo(
                        self.host, self.port, type=socket.SOCK_STREAM
                    )
                ]
            address = self._address
            family, sockaddr = self._addresses[address]
            sock = socket.socket(family, socket.SOCK_STREAM)
        except OSError as exc:
            return exc
        sock.setblocking(False)
        err = sock.connect_ex(sockaddr)
        if err and err not in _UNDER_WAY:
            sock.close()
            if self._give_way(address, err):
                return self.start(index, deadline)
            return OSError(err, os.strerror(err))
        attempt = Connecting(sock, index, deadline, address)
        self.ep.register(attempt.fd, select.EPOLLOUT)
        self.pending[attempt.fd] = attempt
        return None

    def finish(self, fd: int) -> tuple[Connecting, OSError | None] | None:
        """Take the connect on ``fd`` off the pending set, if it is over.

        Args:
            fd: A descriptor the epoll reported (write readiness or an error).

        Returns:
            ``(connect, None)`` when it connected (its socket non-blocking, no
            longer registered); ``(connect, error)`` when it failed (its socket
            closed); None when ``fd`` is no connect of ours, when it is still
            under way (an event meant for an earlier socket with the same
            descriptor), or when it was started again on the host's next address.
        """
        attempt = self.pending.get(fd)
        if attempt is None:
            return None
        sock = attempt.sock
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if not err:
            try:
                sock.getpeername()
            except OSError as exc:
                if exc.errno == errno.ENOTCONN:
                    return None
                err = exc.errno or errno.ECONNABORTED
        self._forget(attempt)
        if not err:
            self._settled = True
            return attempt, None
        sock.close()
        if self._give_way(attempt.address, err):
            failed = self.start(attempt.index, attempt.deadline)
            return None if failed is None else (attempt, failed)
        return attempt, OSError(err, os.strerror(err))

    def expire(self, now: float) -> list[Connecting]:
        """Take off, closed, every connect whose deadline has passed.

        Args:
            now: ``time.monotonic()``.

        Returns:
            Those connects, in the order they were started.
        """
        late = [attempt for attempt in self.pending.values() if attempt.deadline <= now]
        for attempt in late:
            self._forget(attempt)
            attempt.sock.close()
        return late

    def close_all(self) -> int:
        """Abandon every connect still under way.

        Returns:
            How many there were.
        """
        left = list(self.pending.values())
        for attempt in left:
            self._forget(attempt)
            attempt.sock.close()
        return len(left)

    def _forget(self, attempt: Connecting) -> None:
        del self.pending[attempt.fd]
        try:
            self.ep.unregister(attempt.fd)
        except (OSError, ValueError):  # (ValueError: the epoll is closed)
            pass

    def _give_way(self, address: int, err: int) -> bool:
        """Until a connect succeeds, a refused address gives way to the host's next one.

        Returns:
            True when the connect should be started again (on the new address).
        """
        if self._settled or err not in _NEXT_ADDRESS:
            return False
        if address == self._address and address + 1 < len(self._addresses):
            self._address += 1
        return address < self._address


def wait_connected(
    host: str, port: int, deadline: float, stop: StopEvent | None = None
) -> socket.socket:
    """Connect to ``host:port`` by ``deadline``, unless ``stop`` is set first.

    Args:
        host: The server's host.
        port: The server's port.
        deadline: ``time.monotonic()`` by which the connect must be done.
        stop: Looked at every ``SLICE`` seconds; when set, give up.

    Returns:
        The connected socket, non-blocking.

    Raises:
        TimeoutError: Not connected by ``deadline``, or ``stop`` was set.
        OSError: The connect failed.
    """
    with select.epoll() as ep:
        connector = Connector(ep, host, port)
        failed = connector.start(None, deadline)
        if failed is not None:
            raise failed
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or (stop is not None and stop.is_set()):
                connector.close_all()
                raise TimeoutError(f"not connected to {host}:{port} in time")
            for fd, _ in ep.poll(min(left, SLICE)):
                done = connector.finish(fd)
                if done is not None:
                    attempt, failed = done
                    if failed is not None:
                        raise failed
                    return attempt.sock


def wait_ready(
    sock: socket.socket, events: int, deadline: float, stop: StopEvent | None = None
) -> bool:
    """Wait until ``sock`` is ready for ``events``, by ``deadline``, unless ``stop`` is set.

    Args:
        sock: A socket.
        events: ``select.POLLIN`` and/or ``select.POLLOUT``.
        deadline: ``time.monotonic()`` by which it must be ready.
        stop: Looked at every ``SLICE`` seconds; when set, give up.

    Returns:
        True when it is ready (or in error: the next call on it says which);
        False when the deadline passed or ``stop`` was set first.
    """
    poller = select.poll()
    poller.register(sock, events)
    while not (stop is not None and stop.is_set()):
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        if poller.poll(min(left, SLICE) * 1000):
            return True
    return False
