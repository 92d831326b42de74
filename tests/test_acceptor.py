"""Acceptor: drains the backlog on one readiness event; obeys its owner's pause at once."""

from __future__ import annotations

import collections
import contextlib
import errno
import os
import resource
import socket
from collections.abc import Callable, Iterator

from reference.acceptor import Acceptor
from reference.loop import EventLoop
from reference.server import bind_listener

#: The acceptor's pause after an out-of-resources error, short for the tests.
RETRY_DELAY = 0.02


def run_one_turn(loop: EventLoop) -> None:
    """Run ``loop`` for one turn: select reports what is ready, then the queued stop runs."""
    loop.call_soon_threadsafe(loop.stop)
    loop.run()


#: A step of a scenario: runs on the loop; returns how long the loop runs before
#: the next step (None: one more turn).
Step = Callable[[], float | None]


def run_steps(loop: EventLoop, *steps: Step) -> None:
    """Run ``steps`` on ``loop``, in order, with one turn of I/O (or more) between them.

    Each step runs as a timer, so the loop dispatches the descriptors that
    are ready in between: a step returning None gives the next one a single
    turn later; one returning a delay lets the loop run that long first (an
    observation window, not a synchronisation). The first error a step raises
    stops the loop and is raised here.
    """
    left = collections.deque(steps)
    errors: list[BaseException] = []

    def next_step() -> None:
        try:
            delay = left.popleft()()
        except BaseException as exc:  # Raised below, on the test's own stack.
            errors.append(exc)
            loop.stop()
            return
        if left:
            loop.call_later(delay or 0.0, next_step)
        else:
            loop.stop()

    loop.call_later(0.0, next_step)
    loop.run()
    if errors:
        raise errors[0]


@contextlib.contextmanager
def descriptors_exhausted() -> Iterator[None]:
    """Within the block, every descriptor this process may open is in use (EMFILE).

    Lowers the soft limit to just above the highest descriptor open now and
    fills every free number below it; afterwards closes them and restores the
    limit.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    highest = max(int(name) for name in os.listdir("/proc/self/fd"))
    fillers: list[int] = []
    resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 1, hard))
    try:
        while True:
            try:
                fillers.append(os.open(os.devnull, os.O_RDONLY))
            except OSError as exc:
                if exc.errno != errno.EMFILE:
                    raise
                break
        yield
    finally:
        for fd in fillers:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@contextlib.contextmanager
def pending_clients(count: int) -> Iterator[tuple[socket.socket, list[socket.socket]]]:
    """A listener with ``count`` connections waiting in its backlog; all closed afterwards."""
    listener = bind_listener("127.0.0.1", 0)
    clients: list[socket.socket] = []
    try:
        clients += [
            socket.create_connection(listener.getsockname(), timeout=5) for _ in range(count)
        ]
        yield listener, clients
    finally:
        for sock in clients:
            sock.close()
        listener.close()


def test_Acceptor_drains_every_pending_connection_in_one_turn() -> None:
    listener = bind_listener("127.0.0.1", 0)
    clients = [socket.create_connection(listener.getsockname(), timeout=5) for _ in range(200)]
    accepted: list[socket.socket] = []
    loop = EventLoop("accept")
    acceptor = Acceptor(loop, listener, lambda sock, peer: accepted.append(sock))
    acceptor.start()
    run_one_turn(loop)
    try:
        assert len(accepted) == len(clients)
    finally:
        acceptor.close()
        loop.close()
        for sock in accepted + clients:
            sock.close()


def test_Acceptor_pause_from_on_accept_takes_effect_at_once() -> None:
    accepted: list[socket.socket] = []
    loop = EventLoop("accept")
    pause_at_once = True

    def on_accept(sock: socket.socket, peer: object) -> None:
        accepted.append(sock)
        if pause_at_once:
            acceptor.pause()

    with pending_clients(10) as (listener, clients):
        acceptor = Acceptor(loop, listener, on_accept)

        def paused_after_one() -> None:
            assert len(accepted) == 1, "accepted more in the turn its owner paused it"
            assert acceptor.paused_by_owner
            assert not acceptor.accepting

        def still_one() -> None:
            assert len(accepted) == 1, "accepted while paused"
            nonlocal pause_at_once
            pause_at_once = False
            acceptor.resume()

        def all_accepted() -> None:
            assert len(accepted) == len(clients)

        try:
            run_steps(loop, acceptor.start, paused_after_one, still_one, all_accepted)
        finally:
            acceptor.close()
            loop.close()
            for sock in accepted:
                sock.close()


def test_Acceptor_resource_retry_does_not_lift_an_owner_pause() -> None:
    accepted: list[socket.socket] = []
    loop = EventLoop("accept")
    exhausted = contextlib.ExitStack()
    with pending_clients(3) as (listener, clients), exhausted:
        acceptor = Acceptor(
            loop, listener, lambda sock, peer: accepted.append(sock), retry_delay=RETRY_DELAY
        )

        def start_without_descriptors() -> None:
            exhausted.enter_context(descriptors_exhausted())
            acceptor.start()

        def paused_for_resources_then_by_owner() -> float:
            exhausted.close()
            assert acceptor.resource_errors >= 1
            assert acceptor.paused_for_resources
            assert not accepted
            acceptor.pause()  # The owner: nowhere to put connections.
            return RETRY_DELAY * 5

        def retry_came_and_went() -> None:
            assert not acceptor.paused_for_resources, "the retry timer has not run yet"
            assert not acceptor.accepting, "the retry ended the owner's pause"
            assert not accepted
            acceptor.resume()
            assert acceptor.accepting

        def all_accepted() -> None:
            assert len(accepted) == len(clients)

        try:
            run_steps(
                loop,
                start_without_descriptors,
                paused_for_resources_then_by_owner,
                retry_came_and_went,
                all_accepted,
            )
        finally:
            acceptor.close()
            loop.close()
            for sock in accepted:
                sock.close()


def test_Acceptor_owner_resume_does_not_lift_a_resource_pause() -> None:
    accepted: list[socket.socket] = []
    loop = EventLoop("accept")
    exhausted = contextlib.ExitStack()
    with pending_clients(3) as (listener, clients), exhausted:
        acceptor = Acceptor(
            loop, listener, lambda sock, peer: accepted.append(sock), retry_delay=RETRY_DELAY
        )

        def start_without_descriptors() -> None:
            exhausted.enter_context(descriptors_exhausted())
            acceptor.start()

        def owner_pauses_and_resumes() -> float:
            exhausted.close()
            assert acceptor.paused_for_resources
            acceptor.pause()
            acceptor.resume()  # The owner has room again, but descriptors were short.
            assert not acceptor.accepting, "accepting again before the retry delay"
            return RETRY_DELAY * 5

        def all_accepted_after_retry() -> None:
            assert acceptor.accepting
            assert len(accepted) == len(clients)

        try:
            run_steps(
                loop,
                start_without_descriptors,
                owner_pauses_and_resumes,
                all_accepted_after_retry,
            )
        finally:
            acceptor.close()
            loop.close()
            for sock in accepted:
                sock.close()
