"""Acceptor: drains the backlog on one readiness event."""

from __future__ import annotations

import socket

from reference.acceptor import Acceptor
from reference.loop import EventLoop
from reference.server import bind_listener


def test_Acceptor_drains_every_pending_connection_in_one_turn() -> None:
    listener = bind_listener("127.0.0.1", 0)
    clients = [socket.create_connection(listener.getsockname(), timeout=5) for _ in range(200)]
    accepted: list[socket.socket] = []
    loop = EventLoop("accept")
    acceptor = Acceptor(loop, listener, lambda sock, peer: accepted.append(sock))
    acceptor.start()
    # One turn: select reports the listener once, then the queued stop runs.
    loop.call_soon_threadsafe(loop.stop)
    loop.run()
    try:
        assert len(accepted) == len(clients)
    finally:
        acceptor.close()
        loop.close()
        for sock in accepted + clients:
            sock.close()
