"""The single-reactor model: one loop, on one thread, does everything.

The main loop accepts, reads, runs the handler and writes. It is the simplest
arrangement of the core and the fastest for light handlers, since nothing
crosses a thread.
"""

from __future__ import annotations

import socket

from reference.handler import HandlerFactory
from reference.loop import EventLoop
from reference.server import DEFAULT_GRACE, ConnectionOptions, Server

__all__ = ["SingleReactor"]


class SingleReactor:
    """One loop that accepts and serves every connection.

    Args:
        listener: A bound, listening socket.
        handler_factory: Makes the handler of each connection.
        options: Flow-control settings for every connection.
    """

    def __init__(
        self,
        listener: socket.socket,
        handler_factory: HandlerFactory,
        *,
        options: ConnectionOptions | None = None,
    ) -> None:
        self.loop = EventLoop("main")
        self.server = Server(self.loop, listener, handler_factory, options=options)
        self.address = self.server.address

    def serve_forever(self) -> None:
        """Serve on the calling thread until :meth:`stop`."""
        self.server.start()
        try:
            self.loop.run()
        finally:
            self.loop.close()

    def stop(self, grace: float = DEFAULT_GRACE) -> None:
        """Stop serving; see :meth:`reference.server.Server.stop`. Any thread."""
        self.server.stop(grace)
