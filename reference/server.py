"""The server: a listening socket, an acceptor, and the connections it made.

How this works
--------------
``Server`` ties the core together. Its *main loop* runs the
:class:`~reference.acceptor.Acceptor`; every accepted socket becomes a
:class:`~reference.connection.Connection` owned by the loop that
:meth:`Server.pick_loop` chooses (the main loop itself in the single-reactor
model, a sub-reactor in the multi-reactor model). A server without a listener
only adopts sockets accepted elsewhere (a sub-reactor process). The server keeps,
per loop, the set of connections that loop owns; each set is touched only on
its own loop's thread.

Stopping (:meth:`Server.stop`, safe from any thread or a signal handler):
the acceptor closes, then every loop stops its own connections
(:meth:`~reference.connection.Connection.stop_in_loop`): each takes no more
input, sends all it owes for what it had read, sends its FIN, then reads and
discards until the peer's EOF (a lingering close, so that no unread input turns
the close into a reset that drops what the kernel still had to send). A loop
stops once its connections are all closed or the grace period is over,
whichever comes first. At the deadline a connection that still owed bytes is
reset (the peer sees RST after what it got); one that had sent everything and
its FIN, and only waited for the peer's EOF, is just closed.

TLS: a server given an ``ssl.SSLContext`` makes every accepted socket a
:class:`~reference.tls.TlsConnection` instead of a plain
:class:`~reference.connection.Connection`; the choice is made once per
connection, when it is adopted, so the plaintext path never looks at TLS.

Errors a model reports to its command line: :class:`StartError` (it cannot
start as asked: an address it cannot listen on, too few descriptors for the
loops it was asked for; a usage error) and :class:`ServeError` (it started,
then could no longer serve at all).

Facts about the OS this relies on
---------------------------------
- Every loop holds descriptors of its own (a poller and a wakeup pair), before
  any connection; a process has ``RLIMIT_NOFILE`` of them in all, counted from
  the lowest free number, so a limit too small for the loops asked for fails
  with ``EMFILE`` while they are created. :func:`check_descriptors` says so
  first, in words.
- ``/proc/self/fd`` lists the descriptors a process has open (Linux).
"""

from __future__ import annotations

import errno
import logging
import os
import resource
import socket
import ssl
from collections.abc import Sequence
from dataclasses import dataclass

from reference.acceptor import Acceptor
from reference.connection import (
    DEFAULT_HIGH_WATER,
    DEFAULT_LINGER,
    DEFAULT_LOW_WATER,
    DEFAULT_READ_SIZE,
    Connection,
    ConnState,
)
from reference.handler import HandlerFactory
from reference.loop import EventLoop
from reference.tls import DEFAULT_HANDSHAKE_TIMEOUT, TlsConnection

__all__ = [
    "ConnectionOptions",
    "ListenError",
    "ServeError",
    "Server",
    "StartError",
    "bind_listener",
    "check_descriptors",
    "format_address",
    "open_descriptors",
    "DEFAULT_GRACE",
    "LOOP_DESCRIPTORS",
]

log = logging.getLogger(__name__)

#: Seconds a stopping server keeps flushing what it owes (and waiting for its
#: peers' EOF) before it closes what is left.
DEFAULT_GRACE = 2.0


#: Descriptors each event loop holds: its poller and its wakeup socketpair.
LOOP_DESCRIPTORS = 3
#: Descriptors a process keeps free beyond what it was asked for (logging, a
#: module that opens a file, a connection or two).
_DESCRIPTOR_RESERVE = 8


class StartError(Exception):
    """The server cannot start as it was asked to; the message says why, in one line."""


class ListenError(StartError):
    """The server cannot listen where it was asked to; the message says why."""


class ServeError(Exception):
    """The server started but can no longer serve at all; the message says why, in one line."""


@dataclass(frozen=True)
class ConnectionOptions:
    """Flow-control settings given to every connection (and its TLS deadline, over TLS)."""

    high_water: int = DEFAULT_HIGH_WATER
    low_water: int = DEFAULT_LOW_WATER
    read_size: int = DEFAULT_READ_SIZE
    linger: float = DEFAULT_LINGER
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT


def open_descriptors() -> int:
    """How many descriptors this process has open now (an estimate where /proc is missing)."""
    try:
        return len(os.listdir("/proc/self/fd")) - 1  # less the one listdir used
    except OSError:
        return 16


def check_descriptors(needed: int, what: str) -> None:
    """Make sure this process may open ``needed`` more descriptors, and some to spare.

    Args:
        needed: Descriptors about to be opened.
        what: What needs them, for the message ("30 sub-reactor threads").

    Raises:
        StartError: The descriptor limit (``ulimit -n``) leaves too few free.
    """
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return
    in_use = open_descriptors()
    if in_use + needed + _DESCRIPTOR_RESERVE > soft:
        raise StartError(
            f"too few file descriptors for {what}: they need {needed} and {_DESCRIPTOR_RESERVE} "
            f"to spare, but the limit is {soft} (ulimit -n) and {in_use} are in use; "
            "raise the limit or ask for fewer sub-reactors"
        )


def format_address(host: str, port: int) -> str:
    """Format an address as ``HOST:PORT``, with brackets around an IPv6 host."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def bind_listener(host: str, port: int, *, backlog: int = socket.SOMAXCONN) -> socket.socket:
    """Create a non-blocking TCP socket listening on ``host:port``.

    Args:
        host: A host name or an IPv4/IPv6 address.
        port: A port number; 0 lets the OS pick a free one.
        backlog: Length of the queue of connections not yet accepted.

    Returns:
        The listening socket.

    Raises:
        ListenError: The host does not resolve, or the address cannot be bound.
    """
    where = format_address(host, port)
    try:
        infos = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise ListenError(f"cannot listen on {where}: unknown host ({exc.strerror})") from None
    except UnicodeError:
        raise ListenError(f"cannot listen on {where}: not a valid host name") from None
    family, type_, proto, _, sockaddr = infos[0]
    sock = socket.socket(family, type_, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(sockaddr)
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        reason = {
            errno.EADDRINUSE: "address already in use (is another server running there?)",
            errno.EADDRNOTAVAIL: "address not available on this machine",
            errno.EACCES: "permission denied (ports below 1024 need privileges)",
        }.get(exc.errno or 0, exc.strerror or str(exc))
        raise ListenError(f"cannot listen on {where}: {reason}") from None
    sock.setblocking(False)
    return sock


class Server:
    """Owns the connections of one or more loops; accepts them on the main loop.

    Args:
        loop: The main loop: it runs the acceptor.
        handler_factory: Makes the handler of each new connection.
        listener: A bound, listening socket (see :func:`bind_listener`); None
            for a server that only adopts sockets accepted elsewhere (a
            sub-reactor process).
        options: Flow-control settings for every connection.
        sub_loops: Loops that own connections instead of the main loop, each
            run by its own thread by whoever created them. Empty: the main loop
            owns every connection (the single-reactor model).
        tls: A server-side TLS context (see :func:`reference.tls.server_context`):
            every connection speaks TLS. None: plain TCP.
    """

    def __init__(
        self,
        loop: EventLoop,
        handler_factory: HandlerFactory,
        *,
        listener: socket.socket | None = None,
        options: ConnectionOptions | None = None,
        sub_loops: Sequence[EventLoop] = (),
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.loop = loop
        self.tls = tls
        self.handler_factory = handler_factory
        self.options = options or ConnectionOptions()
        self.sub_loops = tuple(sub_loops)
        self.acceptor = None if listener is None else Acceptor(loop, listener, self._on_accept)
        self._owners = self.sub_loops or (loop,)
        self._next = 0
        self._connections: dict[EventLoop, set[Connection]] = {lp: set() for lp in self._owners}
        self._stopping: set[EventLoop] = set()
        self._stop_requests = 0
        log.info(
            "%s: connections stop reading above %d bytes of unsent replies and read again "
            "at %d (high and low water)",
            loop.name,
            self.options.high_water,
            self.options.low_water,
        )
        if tls is not None:
            log.info(
                "%s: connections speak TLS; a client has %.1fs to complete its handshake",
                loop.name,
                self.options.handshake_timeout,
            )

    # -- running -----------------------------------------------------------

    @property
    def address(self) -> tuple[str, int]:
        """The host and port the server listens on."""
        if self.acceptor is None:
            raise RuntimeError("this server adopts connections; it does not listen")
        host, port = self.acceptor.sock.getsockname()[:2]
        return host, port

    def start(self) -> None:
        """Start accepting. Call on the main loop's thread, before or while it runs."""
        if self.acceptor is not None:
            self.acceptor.start()

    @property
    def stop_requested(self) -> bool:
        """True once :meth:`stop` has been called."""
        return self._stop_requests > 0

    def stop(self, grace: float = DEFAULT_GRACE) -> None:
        """Stop accepting, close every connection within ``grace`` seconds, stop the loops.

        Every connection takes no more input, sends what it owes, its FIN, and
        waits for its peer's EOF; at the deadline what is left is closed (reset
        if it still owed bytes). Any thread, or a signal handler, may call
        this. A second call stops at once, dropping whatever is still unsent.
        """
        self._stop_requests += 1
        if self._stop_requests > 1:
            grace = 0.0
        self.loop.call_soon_threadsafe(self._stop_in_main_loop, grace)

    def pick_loop(self) -> EventLoop:
        """Choose the loop that will own the next connection: round-robin."""
        owners = self._owners
        loop = owners[self._next % len(owners)]
        self._next += 1
        return loop

    def connection_count(self, loop: EventLoop) -> int:
        """How many connections ``loop`` owns now. Call on that loop's thread."""
        return len(self._connections[loop])

    # -- accepting -----------------------------------------------------------

    def _on_accept(self, sock: socket.socket, peer: object) -> None:
        loop = self.pick_loop()
        if loop is self.loop:
            self.adopt(loop, sock, peer)
        else:
            loop.call_soon_threadsafe(self.adopt, loop, sock, peer)

    def adopt(self, loop: EventLoop, sock: socket.socket, peer: object) -> None:
        """Make ``sock`` a connection owned by ``loop``. Run on ``loop``'s thread."""
        if loop in self._stopping:
            sock.close()
            return
        opts = self.options
        conn: Connection
        if self.tls is None:
            conn = Connection(
                loop,
                sock,
                self.handler_factory(),
                peer=peer,
                on_closed=self._on_closed,
                high_water=opts.high_water,
                low_water=opts.low_water,
                read_size=opts.read_size,
                linger=opts.linger,
            )
        else:
            conn = TlsConnection(
                loop,
                sock,
                self.handler_factory(),
                context=self.tls,
                handshake_timeout=opts.handshake_timeout,
                peer=peer,
                on_closed=self._on_closed,
                high_water=opts.high_water,
                low_water=opts.low_water,
                read_size=opts.read_size,
                linger=opts.linger,
            )
        self._connections[loop].add(conn)
        log.debug("%r: accepted", conn)
        conn.start()

    def _on_closed(self, conn: Connection) -> None:
        owned = self._connections[conn.loop]
        owned.discard(conn)
        if not owned and conn.loop in self._stopping:
            conn.loop.stop()

    # -- stopping --------------------------------------------------------------

    def _stop_in_main_loop(self, grace: float) -> None:
        if self.acceptor is not None and self.acceptor.sock.fileno() != -1:
            self.acceptor.close()
        log.info("closing connections (grace %.1fs)", grace)
        for loop in self._owners:
            if loop is self.loop:
                self._drain(loop, grace)
            else:
                loop.call_soon_threadsafe(self._drain, loop, grace)
        if self.loop not in self._owners:
            self.loop.stop()

    def _drain(self, loop: EventLoop, grace: float) -> None:
        """Stop ``loop``'s connections gracefully; stop ``loop`` when done. On ``loop``."""
        self._stopping.add(loop)
        owned = self._connections[loop]
        for conn in list(owned):
            if grace > 0:
                conn.stop_in_loop()
            else:
                conn.abort()
        if not owned:
            loop.stop()
            return

        def give_up() -> None:
            if owned:
                lingering = sum(conn.state is ConnState.LINGERING for conn in owned)
                if lingering:
                    log.info(
                        "%s: %d connections sent all they owed, but their peers did not "
                        "close; closed",
                        loop.name,
                        lingering,
                    )
                if len(owned) > lingering:
                    log.warning(
                        "%s: %d connections still flushing, dropped (reset)",
                        loop.name,
                        len(owned) - lingering,
                    )
                for conn in list(owned):
                    conn.abort()
            loop.stop()

        loop.call_later(grace, give_up)
