"""The multi-reactor model in process mode: sub-reactors in worker processes.

How this works
--------------
In CPython one process runs Python on one core at a time, so the thread mode
of the multi model (:class:`reference.reactor.Reactor` with sub-reactors)
shares one core. The process mode really uses several:

- The *main process* runs a main loop with the acceptor and nothing else. It
  starts N *sub-reactor processes* (``subprocess`` with ``pass_fds``, so no
  loop or selector is ever shared through ``fork``), each connected to it by a
  Unix ``SOCK_SEQPACKET`` socketpair, the *channel*.
- Each accepted socket is passed, round-robin, to a living sub-reactor with
  ``socket.send_fds`` (one message per socket), and the main process closes
  its own copy. The sub-reactor owns the connection for its whole life.
- Round-robin, not least-connections: the main process would need a message
  back from every sub-reactor on every close to know their counts, and with
  many similar connections round-robin spreads them as evenly.
- A sub-reactor process runs one loop with a :class:`~reference.server.Server`
  that has no listener: it adopts the sockets that arrive on its channel, with
  the connection options (high and low water...) the main process was given,
  passed on its command line. Over TLS, it is given the certificate's and the
  key's paths, and builds its own ``ssl.SSLContext`` from them (a context
  cannot be passed to another process).

Flow control, end to end: a sub-reactor near its descriptor limit stops
reading its channel (the sockets wait in the channel, none is lost); when every
channel is full (or no sub-reactor is running), the main process keeps the one
socket it holds and pauses its acceptor, at once: the other clients wait in the
kernel's backlog, not in the main process, until a channel is writable again.

Supervision, as a master process does it: the channel is also the life line.
When a sub-reactor dies, its channel reads EOF in the main process, which
reaps it, logs how it ended, and starts another in its place after a backoff
(0.1 s, doubling for each death in the last minute). The connections the dead
process owned die with it: their sockets were in that process alone. A
sub-reactor that dies more than :data:`MAX_RESTARTS` times within
:data:`RESTART_WINDOW` seconds is not restarted; when none is left that can
run, the main process stops and :meth:`ProcessReactor.serve_forever` raises
:class:`~reference.server.ServeError` saying why (the command line prints it
as one line and exits 1), rather than accepting connections it cannot serve.

Stopping: when the main process stops it closes the channels; each sub-reactor
sees EOF, flushes its connections for the grace period and exits, and the main
process reaps it (killing it if it overstays). When the main process dies, the
sub-reactors see EOF and stop. SIGINT is ignored in the sub-reactors, so a
Ctrl-C on the terminal stops the whole server through the main process, in
order.

For tests only: a sub-reactor started with the environment variable
:data:`EXIT_AT_START_ENV` set to a number exits at once with that code, a
sub-reactor that cannot start.

Facts about the OS this relies on
---------------------------------
- A descriptor in flight in an ``SCM_RIGHTS`` message belongs to neither
  process until it is received; if the receiver is out of descriptors,
  ``recvmsg`` sets ``MSG_CTRUNC`` and the kernel closes the ones it could not
  install, so a sub-reactor must stop receiving before it runs out. Those in
  flight to a process that dies are closed by the kernel with its channel.
- ``SOCK_SEQPACKET`` keeps message boundaries: one receive is one socket.
- A process's descriptors are closed as it exits, a little before it can be
  reaped: the channel's EOF may come before ``waitpid`` has an exit status, so
  the main process polls for it for a short while instead of blocking its loop.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import FrameType

from reference.acceptor import Acceptor
from reference.handler import HANDLERS, NO_WORK, HandlerFactory, Work, with_work
from reference.loop import ERROR, READ, WRITE, EventLoop, TimerHandle
from reference.server import (
    DEFAULT_GRACE,
    LOOP_DESCRIPTORS,
    ConnectionOptions,
    ServeError,
    Server,
    StartError,
    check_descriptors,
    open_descriptors,
)
from reference.tls import DEFAULT_HANDSHAKE_TIMEOUT, TlsFiles

__all__ = [
    "EXIT_AT_START_ENV",
    "MAX_RESTARTS",
    "RESTART_WINDOW",
    "ProcessReactor",
    "sub_reactor_main",
]

log = logging.getLogger(__name__)

#: A sub-reactor that dies more often than this within :data:`RESTART_WINDOW`
#: seconds is not started again.
MAX_RESTARTS = 5
#: Seconds over which a sub-reactor's deaths are counted.
RESTART_WINDOW = 60.0
#: Set to a number in a sub-reactor's environment, it makes the sub-reactor exit
#: at start with that code. For tests: a sub-reactor that cannot start.
EXIT_AT_START_ENV = "REFERENCE_SUB_REACTOR_EXIT_AT_START"

#: Seconds before the first restart of a sub-reactor; doubled for every other
#: death within the window.
_FIRST_RESTART_DELAY = 0.1
#: Descriptors a sub-reactor keeps free for its own use (logging, a selector...).
_FD_RESERVE = 8
#: Descriptors the main process holds for each sub-reactor (its channel), and
#: for a moment while it starts one (the other end, the pipe ``subprocess`` uses).
_SUB_DESCRIPTORS = 1
_SPAWN_DESCRIPTORS = 3
#: Seconds between looks at the descriptor count while a sub-reactor is full.
_FULL_RETRY = 0.1
#: Seconds to wait for a sub-reactor beyond the grace period before killing it.
_EXIT_SLACK = 5.0
#: Seconds between looks for the exit status of a sub-reactor whose channel closed.
_EXIT_POLL = 0.01
#: ``send_fds`` errors that mean "this channel is full for now".
_CHANNEL_FULL = frozenset({errno.EAGAIN, errno.EWOULDBLOCK, errno.ETOOMANYREFS, errno.ENOBUFS})


def _describe_exit(code: int) -> str:
    """Say how a process ended from its ``Popen.returncode``."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


@dataclass
class _SubReactor:
    """The main process's view of one sub-reactor process."""

    index: int
    process: subprocess.Popen[bytes]
    channel: socket.socket
    on_ready: Callable[[int], None] = lambda mask: None
    alive: bool = True  # its channel takes sockets
    exit_code: int | None = None  # once reaped


@dataclass
class _Slot:
    """One of the N places for a sub-reactor, and the deaths of those that held it."""

    index: int
    sub: _SubReactor | None = None
    deaths: deque[float] = field(default_factory=deque)  # times, within the window
    restart: TimerHandle | None = None
    given_up: bool = False


class ProcessReactor:
    """A main loop that accepts, and N sub-reactor processes that serve, kept running.

    Args:
        listener: A bound, listening socket.
        handler: The name of the handler in :data:`reference.handler.HANDLERS`
            (a name, since the sub-reactor processes look it up themselves).
        sub_reactors: Number of sub-reactor processes.
        options: Flow-control settings for every connection, passed on to each
            sub-reactor.
        verbose: Let the sub-reactors log debug messages.
        work: What the handler costs per message (see
            :class:`reference.handler.Work`); the sub-reactors build the same.
        tls: The certificate and key every connection speaks TLS with; each
            sub-reactor loads them itself. None: plain TCP.

    Raises:
        StartError: The descriptor limit is too small for ``sub_reactors``
            channels, or a sub-reactor process cannot be started.
    """

    def __init__(
        self,
        listener: socket.socket,
        handler: str,
        *,
        sub_reactors: int,
        options: ConnectionOptions | None = None,
        verbose: bool = False,
        work: Work = NO_WORK,
        tls: TlsFiles | None = None,
    ) -> None:
        if sub_reactors < 1:
            raise ValueError(f"need at least 1 sub-reactor, got {sub_reactors}")
        check_descriptors(
            LOOP_DESCRIPTORS + _SUB_DESCRIPTORS * sub_reactors + _SPAWN_DESCRIPTORS,
            f"{sub_reactors} sub-reactor processes",
        )
        self.loop = EventLoop("main")
        self.acceptor = Acceptor(self.loop, listener, self._on_accept)
        host, port = listener.getsockname()[:2]
        self.address: tuple[str, int] = (host, port)
        self._handler = handler
        self._options = options or ConnectionOptions()
        self._work = work
        self._tls = tls.absolute() if tls is not None else None
        self._verbose = verbose
        self._slots = [_Slot(index) for index in range(1, sub_reactors + 1)]
        self._next = 0
        self._held: deque[socket.socket] = deque()  # accepted, no channel had room yet
        self._grace = DEFAULT_GRACE
        self._stopping = False
        self._failure: str | None = None
        try:
            for slot in self._slots:
                slot.sub = self._spawn(slot.index)
        except BaseException as exc:
            self._close_channels()
            self._reap()
            if isinstance(exc, OSError):
                what = exc.strerror or str(exc)
                raise StartError(f"cannot start the sub-reactor processes: {what}") from None
            raise

    # -- life cycle -----------------------------------------------------------

    def serve_forever(self) -> None:
        """Accept until :meth:`stop`, then stop and reap the sub-reactors.

        Raises:
            ServeError: No sub-reactor could be kept running; the message says why.
        """
        try:
            self.acceptor.start()
            self.loop.run()
        finally:
            for sock in self._held:
                sock.close()
            self._held.clear()
            self._close_channels()
            self.loop.close()
            self._reap()
        if self._failure is not None:
            raise ServeError(self._failure)

    def _close_channels(self) -> None:
        for slot in self._slots:
            if slot.sub is not None and slot.sub.alive:
                slot.sub.alive = False
                self.loop.unregister(slot.sub.channel)
                slot.sub.channel.close()  # EOF: the sub-reactor flushes and exits.

    def stop(self, grace: float = DEFAULT_GRACE) -> None:
        """Stop accepting, stop every sub-reactor. Any thread or a signal handler."""
        self._grace = grace
        self.loop.call_soon_threadsafe(self._stop_in_loop)

    def _stop_in_loop(self) -> None:
        self._stopping = True
        for slot in self._slots:
            if slot.restart is not None:
                slot.restart.cancel()
                slot.restart = None
        if self.acceptor.sock.fileno() != -1:
            self.acceptor.close()
        self.loop.stop()

    def _spawn(self, index: int) -> _SubReactor:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        opts = self._options
        argv = [
            sys.executable,
            "-c",
            "import sys; from reference.multi import sub_reactor_main; "
            "sys.exit(sub_reactor_main(sys.argv[1:]))",
            "--channel-fd",
            str(theirs.fileno()),
            "--index",
            str(index),
            "--handler",
            self._handler,
            "--high-water",
            str(opts.high_water),
            "--low-water",
            str(opts.low_water),
            "--read-size",
            str(opts.read_size),
            "--linger",
            repr(opts.linger),
            "--work",
            str(self._work),
        ]
        if self._tls is not None:
            argv += ["--tls-cert", self._tls.cert]
            if self._tls.key is not None:
                argv += ["--tls-key", self._tls.key]
            argv += ["--handshake-timeout", repr(opts.handshake_timeout)]
        if self._verbose:
            argv.append("-v")
        # A closed pipe as stdin, not /dev/null: where that is a regular file
        # only root may write, subprocess.DEVNULL (opened read-write) fails.
        no_input, closed = os.pipe()
        os.close(closed)
        try:
            process = subprocess.Popen(argv, pass_fds=[theirs.fileno()], stdin=no_input)
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
            os.close(no_input)
        ours.setblocking(False)
        sub = _SubReactor(index, process, ours)
        sub.on_ready = lambda mask: self._on_channel(sub, mask)
        self.loop.register(ours, READ | (WRITE if self._held else 0), sub.on_ready)
        log.info("sub-reactor %d: pid %d", index, process.pid)
        return sub

    def _reap(self) -> None:
        for slot in self._slots:
            sub = slot.sub
            if sub is None or sub.exit_code is not None:
                continue
            try:
                code = sub.process.wait(self._grace + _EXIT_SLACK)
            except subprocess.TimeoutExpired:
                log.error(
                    "sub-reactor %d (pid %d) did not stop; killing it", sub.index, sub.process.pid
                )
                sub.process.kill()
                code = sub.process.wait()
            sub.exit_code = code
            log.debug("sub-reactor %d (pid %d) exited with %d", sub.index, sub.process.pid, code)

    # -- handing sockets over -------------------------------------------------

    def _on_accept(self, sock: socket.socket, peer: object) -> None:
        if self._held or not self._hand_over(sock):
            self._held.append(sock)
            if not self.acceptor.paused_by_owner:
                log.debug("no sub-reactor can take a connection now; accepts paused")
            self.acceptor.pause()  # At once: the other clients wait in the backlog.
            self._watch_channels()

    def _living(self) -> list[_SubReactor]:
        return [slot.sub for slot in self._slots if slot.sub is not None and slot.sub.alive]

    def _hand_over(self, sock: socket.socket) -> bool:
        """Pass ``sock`` to the next living sub-reactor with room; False if none has."""
        living = self._living()
        for _ in range(len(living)):
            sub = living[self._next % len(living)]
            self._next += 1
            try:
                socket.send_fds(sub.channel, [b"c"], [sock.fileno()])
            except OSError as exc:
                if exc.errno in _CHANNEL_FULL:
                    continue
                self._channel_lost(sub, f"channel failed: {exc}")
                return self._hand_over(sock)
            sock.close()
            return True
        return False

    def _watch_channels(self) -> None:
        """Watch the channels for write room (while sockets are held) and for death."""
        events = READ | (WRITE if self._held else 0)
        for sub in self._living():
            self.loop.modify(sub.channel, events, sub.on_ready)

    def _on_channel(self, sub: _SubReactor, mask: int) -> None:
        if mask & (READ | ERROR):
            try:
                data = sub.channel.recv(1)
            except (BlockingIOError, InterruptedError):
                data = b"?"
            except OSError:
                data = b""
            if not data:
                self._channel_lost(sub, "channel closed")
                return
        if mask & WRITE and self._held:
            while self._held and self._hand_over(self._held[0]):
                self._held.popleft()
            if not self._held:
                self._watch_channels()
                log.debug("a sub-reactor has room again; accepting")
                self.acceptor.resume()

    # -- supervising ------------------------------------------------------------

    def _channel_lost(self, sub: _SubReactor, why: str) -> None:
        """``sub`` takes no more sockets; wait for its exit, then replace it."""
        if not sub.alive:
            return
        sub.alive = False
        self.loop.unregister(sub.channel)
        sub.channel.close()
        log.debug("sub-reactor %d (pid %d): %s", sub.index, sub.process.pid, why)
        self._await_exit(sub, time.monotonic() + _EXIT_SLACK)

    def _await_exit(self, sub: _SubReactor, deadline: float) -> None:
        code = sub.process.poll()
        if code is None:
            if time.monotonic() < deadline:
                self.loop.call_later(_EXIT_POLL, lambda: self._await_exit(sub, deadline))
                return
            log.error(
                "sub-reactor %d (pid %d) lost its channel but did not exit; killing it",
                sub.index,
                sub.process.pid,
            )
            sub.process.kill()
            code = sub.process.wait()
        sub.exit_code = code
        how = _describe_exit(code)
        log.error(
            "sub-reactor %d (pid %d) is gone (%s); the connections it owned are lost",
            sub.index,
            sub.process.pid,
            how,
        )
        self._count_death(self._slots[sub.index - 1], f"sub-reactor {sub.index}, {how}")

    def _count_death(self, slot: _Slot, how: str) -> None:
        """Start ``slot``'s sub-reactor again after a backoff, or give up on it."""
        if self._stopping:
            return
        now = time.monotonic()
        slot.deaths.append(now)
        while slot.deaths[0] <= now - RESTART_WINDOW:
            slot.deaths.popleft()
        if len(slot.deaths) > MAX_RESTARTS:
            slot.given_up = True
            log.error(
                "sub-reactor %d died %d times within %.0fs; not starting it again",
                slot.index,
                len(slot.deaths),
                RESTART_WINDOW,
            )
            if all(s.given_up for s in self._slots):
                self._failure = (
                    f"no sub-reactor can run: each died {MAX_RESTARTS + 1} times within "
                    f"{RESTART_WINDOW:.0f}s (last: {how})"
                )
                self._stop_in_loop()
            return
        delay = _FIRST_RESTART_DELAY * 2 ** (len(slot.deaths) - 1)
        log.warning(
            "starting sub-reactor %d again in %.1fs (death %d of %d allowed within %.0fs)",
            slot.index,
            delay,
            len(slot.deaths),
            MAX_RESTARTS,
            RESTART_WINDOW,
        )
        slot.restart = self.loop.call_later(delay, lambda: self._restart(slot))

    def _restart(self, slot: _Slot) -> None:
        slot.restart = None
        if self._stopping:
            return
        try:
            slot.sub = self._spawn(slot.index)
        except OSError as exc:
            what = exc.strerror or str(exc)
            log.error("cannot start sub-reactor %d: %s", slot.index, what)
            self._count_death(slot, f"sub-reactor {slot.index}, could not be started: {what}")


# -- the sub-reactor process ------------------------------------------------------


class _Inbox:
    """The sub-reactor's end of the channel: adopts each socket that arrives.

    Stops receiving while the process is near its descriptor limit, so that no
    socket in flight is ever dropped by the kernel for want of a descriptor.
    """

    def __init__(self, loop: EventLoop, channel: socket.socket, server: Server) -> None:
        self.loop = loop
        self.channel = channel
        self.server = server
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        self.capacity = max(1, soft - open_descriptors() - _FD_RESERVE)
        self._receiving = False
        self._retry: TimerHandle | None = None
        channel.setblocking(False)

    def start(self) -> None:
        if not self._receiving:
            self.loop.register(self.channel, READ, self._on_ready)
            self._receiving = True

    def close(self) -> None:
        if self._receiving:
            self.loop.unregister(self.channel)
            self._receiving = False
        if self._retry is not None:
            self._retry.cancel()
        self.channel.close()

    def _on_ready(self, mask: int) -> None:
        while True:
            if self.server.connection_count(self.loop) >= self.capacity:
                self._full()
                return
            try:
                msg, fds, flags, _ = socket.recv_fds(self.channel, 16, 1)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.error("%s: channel failed: %s", self.loop.name, exc)
                msg, fds, flags = b"", [], 0
            if flags & socket.MSG_CTRUNC:
                log.error("%s: a connection was lost in transit (no descriptor)", self.loop.name)
            for fd in fds:
                sock = socket.socket(fileno=fd)
                try:
                    peer: object = sock.getpeername()
                except OSError:
                    peer = None
                self.server.adopt(self.loop, sock, peer)
            if not msg:
                log.info("%s: the main process closed the channel; stopping", self.loop.name)
                self.close()
                if not self.server.stop_requested:  # A SIGTERM of our own may have come first.
                    self.server.stop()
                return

    def _full(self) -> None:
        self.loop.unregister(self.channel)
        self._receiving = False
        log.warning(
            "%s: out of descriptors (%d connections, room for %d); new connections wait "
            "in the channel",
            self.loop.name,
            self.server.connection_count(self.loop),
            self.capacity,
        )
        self._retry = self.loop.call_later(_FULL_RETRY, self._try_again)

    def _try_again(self) -> None:
        self._retry = None
        if self.server.connection_count(self.loop) < self.capacity:
            log.warning("%s: taking connections again", self.loop.name)
            self.start()
        else:
            self._retry = self.loop.call_later(_FULL_RETRY, self._try_again)


def sub_reactor_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of a sub-reactor process (started by :class:`ProcessReactor`)."""
    parser = argparse.ArgumentParser(prog="reference sub-reactor")
    parser.add_argument("--channel-fd", type=int, required=True)
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--handler", choices=sorted(HANDLERS), required=True)
    parser.add_argument("--high-water", type=int, required=True)
    parser.add_argument("--low-water", type=int, required=True)
    parser.add_argument("--read-size", type=int, required=True)
    parser.add_argument("--linger", type=float, required=True)
    parser.add_argument("--work", type=Work.parse, default=NO_WORK)
    parser.add_argument("--tls-cert")
    parser.add_argument("--tls-key")
    parser.add_argument("--handshake-timeout", type=float, default=DEFAULT_HANDSHAKE_TIMEOUT)
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    exit_at_start = os.environ.get(EXIT_AT_START_ENV)
    if exit_at_start:
        log.error("sub-%d: %s=%s: exiting at start", args.index, EXIT_AT_START_ENV, exit_at_start)
        return int(exit_at_start)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # The main process stops us, in order.
    tls = None
    if args.tls_cert is not None:
        try:
            tls = TlsFiles(args.tls_cert, args.tls_key).context()
        except ValueError as exc:
            log.error("sub-%d: %s", args.index, exc)
            return 1
    factory: HandlerFactory = with_work(HANDLERS[args.handler], args.work)
    loop = EventLoop(f"sub-{args.index}")
    options = ConnectionOptions(
        high_water=args.high_water,
        low_water=args.low_water,
        read_size=args.read_size,
        linger=args.linger,
        handshake_timeout=args.handshake_timeout,
    )
    log.info("%s: serving %s, work %s", loop.name, args.handler, args.work)
    server = Server(loop, factory, options=options, tls=tls)
    inbox = _Inbox(loop, socket.socket(fileno=args.channel_fd), server)

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        server.stop()

    signal.signal(signal.SIGTERM, on_sigterm)
    inbox.start()
    try:
        loop.run()
    finally:
        if inbox.channel.fileno() != -1:
            inbox.close()
        loop.close()
    return 0
