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
  that has no listener: it adopts the sockets that arrive on its channel.

Flow control, end to end: a sub-reactor near its descriptor limit stops
reading its channel (the sockets wait in the channel, none is lost); when every
channel is full, the main process keeps the socket it holds and pauses its
acceptor (clients wait in the backlog) until a channel is writable again.

Life and death: the channel is also the life line. When the main process stops
it closes the channels; each sub-reactor sees EOF, flushes its connections for
the grace period and exits, and the main process reaps it (killing it if it
overstays). When a sub-reactor dies, its channel reads EOF in the main
process, which logs it and sends new connections to the living ones. When the
main process dies, the sub-reactors see EOF and stop. SIGINT is ignored in
the sub-reactors, so a Ctrl-C on the terminal stops the whole server through
the main process, in order.

Facts about the OS this relies on
---------------------------------
- A descriptor in flight in an ``SCM_RIGHTS`` message belongs to neither
  process until it is received; if the receiver is out of descriptors,
  ``recvmsg`` sets ``MSG_CTRUNC`` and the kernel closes the ones it could not
  install, so a sub-reactor must stop receiving before it runs out.
- ``SOCK_SEQPACKET`` keeps message boundaries: one receive is one socket.
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
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import FrameType

from reference.acceptor import Acceptor
from reference.handler import HANDLERS, NO_WORK, HandlerFactory, Work, with_work
from reference.loop import ERROR, READ, WRITE, EventLoop, TimerHandle
from reference.server import DEFAULT_GRACE, ConnectionOptions, Server

__all__ = ["ProcessReactor", "sub_reactor_main"]

log = logging.getLogger(__name__)

#: Descriptors a sub-reactor keeps free for its own use (logging, a selector...).
_FD_RESERVE = 8
#: Seconds between looks at the descriptor count while a sub-reactor is full.
_FULL_RETRY = 0.1
#: Seconds to wait for a sub-reactor beyond the grace period before killing it.
_EXIT_SLACK = 5.0
#: ``send_fds`` errors that mean "this channel is full for now".
_CHANNEL_FULL = frozenset({errno.EAGAIN, errno.EWOULDBLOCK, errno.ETOOMANYREFS, errno.ENOBUFS})


@dataclass
class _SubReactor:
    """The main process's view of one sub-reactor process."""

    index: int
    process: subprocess.Popen[bytes]
    channel: socket.socket
    on_ready: Callable[[int], None]
    alive: bool = True


class ProcessReactor:
    """A main loop that accepts, and N sub-reactor processes that serve.

    Args:
        listener: A bound, listening socket.
        handler: The name of the handler in :data:`reference.handler.HANDLERS`
            (a name, since the sub-reactor processes look it up themselves).
        sub_reactors: Number of sub-reactor processes.
        verbose: Let the sub-reactors log debug messages.
        work: What the handler costs per message (see
            :class:`reference.handler.Work`); the sub-reactors build the same.
    """

    def __init__(
        self,
        listener: socket.socket,
        handler: str,
        *,
        sub_reactors: int,
        verbose: bool = False,
        work: Work = NO_WORK,
    ) -> None:
        if sub_reactors < 1:
            raise ValueError(f"need at least 1 sub-reactor, got {sub_reactors}")
        self.loop = EventLoop("main")
        self.acceptor = Acceptor(self.loop, listener, self._on_accept)
        host, port = listener.getsockname()[:2]
        self.address: tuple[str, int] = (host, port)
        self._handler = handler
        self._work = work
        self._verbose = verbose
        self._subs: list[_SubReactor] = []
        self._next = 0
        self._held: deque[socket.socket] = deque()  # accepted, no channel had room yet
        self._grace = DEFAULT_GRACE
        try:
            for index in range(1, sub_reactors + 1):
                self._subs.append(self._spawn(index))
        except BaseException:
            self._close_channels()
            self._reap()
            raise

    # -- life cycle -----------------------------------------------------------

    def serve_forever(self) -> None:
        """Accept until :meth:`stop`, then stop and reap the sub-reactors."""
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

    def _close_channels(self) -> None:
        for sub in self._subs:
            self.loop.unregister(sub.channel)
            sub.channel.close()  # EOF: the sub-reactor flushes and exits.

    def stop(self, grace: float = DEFAULT_GRACE) -> None:
        """Stop accepting, stop every sub-reactor. Any thread or a signal handler."""
        self._grace = grace
        self.loop.call_soon_threadsafe(self._stop_in_loop)

    def _stop_in_loop(self) -> None:
        if self.acceptor.sock.fileno() != -1:
            self.acceptor.close()
        self.loop.stop()

    def _spawn(self, index: int) -> _SubReactor:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
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
            "--work",
            str(self._work),
        ]
        if self._verbose:
            argv.append("-v")
        try:
            process = subprocess.Popen(argv, pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL)
        finally:
            theirs.close()
        ours.setblocking(False)
        sub = _SubReactor(index, process, ours, lambda mask: self._on_channel(sub, mask))
        self.loop.register(ours, READ, sub.on_ready)
        log.info("sub-reactor %d: pid %d", index, process.pid)
        return sub

    def _reap(self) -> None:
        for sub in self._subs:
            try:
                code = sub.process.wait(self._grace + _EXIT_SLACK)
            except subprocess.TimeoutExpired:
                log.error(
                    "sub-reactor %d (pid %d) did not stop; killing it", sub.index, sub.process.pid
                )
                sub.process.kill()
                code = sub.process.wait()
            log.debug("sub-reactor %d (pid %d) exited with %d", sub.index, sub.process.pid, code)

    # -- handing sockets over -------------------------------------------------

    def _on_accept(self, sock: socket.socket, peer: object) -> None:
        if self._held or not self._hand_over(sock):
            self._held.append(sock)
            self.acceptor.pause()
            self._watch_channels()

    def _hand_over(self, sock: socket.socket) -> bool:
        """Pass ``sock`` to the next living sub-reactor with room; False if none has."""
        living = [sub for sub in self._subs if sub.alive]
        if not living:
            log.error("no sub-reactor is alive; closing a new connection")
            sock.close()
            return True
        for _ in range(len(living)):
            sub = living[self._next % len(living)]
            self._next += 1
            try:
                socket.send_fds(sub.channel, [b"c"], [sock.fileno()])
            except OSError as exc:
                if exc.errno in _CHANNEL_FULL:
                    continue
                self._lost(sub, f"channel failed: {exc}")
                return self._hand_over(sock)
            sock.close()
            return True
        return False

    def _watch_channels(self) -> None:
        """Watch the channels for write room (while sockets are held) and for death."""
        events = READ | (WRITE if self._held else 0)
        for sub in self._subs:
            if sub.alive:
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
                self._lost(sub, "channel closed")
                return
        if mask & WRITE and self._held:
            while self._held and self._hand_over(self._held[0]):
                self._held.popleft()
            if not self._held:
                self._watch_channels()
                self.acceptor.resume()

    def _lost(self, sub: _SubReactor, why: str) -> None:
        if not sub.alive:
            return
        sub.alive = False
        self.loop.unregister(sub.channel)
        code = sub.process.poll()
        living = sum(s.alive for s in self._subs)
        log.error(
            "sub-reactor %d (pid %d) is gone (%s, exit code %s); new connections go to the "
            "%d living",
            sub.index,
            sub.process.pid,
            why,
            code,
            living,
        )


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
        self.capacity = max(1, soft - _open_descriptors() - _FD_RESERVE)
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


def _open_descriptors() -> int:
    try:
        return len(os.listdir("/proc/self/fd")) - 1  # less the one listdir used
    except OSError:
        return 16


def sub_reactor_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of a sub-reactor process (started by :class:`ProcessReactor`)."""
    parser = argparse.ArgumentParser(prog="reference sub-reactor")
    parser.add_argument("--channel-fd", type=int, required=True)
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--handler", choices=sorted(HANDLERS), required=True)
    parser.add_argument("--work", type=Work.parse, default=NO_WORK)
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # The main process stops us, in order.
    factory: HandlerFactory = with_work(HANDLERS[args.handler], args.work)
    loop = EventLoop(f"sub-{args.index}")
    log.info("%s: serving %s, work %s", loop.name, args.handler, args.work)
    server = Server(loop, factory, options=ConnectionOptions())
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
