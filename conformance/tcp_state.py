"""What the kernel says of one TCP socket's state (``TCP_INFO``, Linux)."""

from __future__ import annotations

import socket

import trio

__all__ = ["fin_acknowledged"]

#: ``tcpi_state`` of a socket whose FIN the peer has acknowledged (linux/tcp_states.h).
_TCP_FIN_WAIT2 = 5


async def fin_acknowledged(sock: trio.socket.SocketType, timeout: float) -> bool:
    """Wait until the peer's kernel has taken our FIN (``FIN_WAIT2``); False if not in time.

    Our FIN leaves only after every byte queued before it, so this also says
    that the peer's kernel holds everything we sent. Linux only
    (``TCP_INFO``); elsewhere it returns False at once.
    """
    info = getattr(socket, "TCP_INFO", None)
    if info is None:
        return False
    with trio.move_on_after(timeout):
        while True:
            try:
                state = sock.getsockopt(socket.IPPROTO_TCP, info, 8)[0]
            except OSError:
                return False
            if state == _TCP_FIN_WAIT2:
                return True
            await trio.sleep(0.01)  # Polling the kernel's state, bounded by the timeout.
    return False
