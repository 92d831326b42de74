"""Reference TCP servers built on the Reactor pattern, on the standard library.

One core (:class:`EventLoop`, :class:`Connection`, :class:`Acceptor`,
:class:`Server`) and the models that arrange it:

- :class:`SingleReactor`: one loop accepts and serves every connection.
"""

from reference.acceptor import Acceptor
from reference.connection import Connection, ConnState
from reference.handler import HANDLERS, DiscardHandler, EchoHandler, Handler, Transport
from reference.loop import EventLoop
from reference.server import ConnectionOptions, ListenError, Server, bind_listener
from reference.single import SingleReactor

__all__ = [
    "Acceptor",
    "Connection",
    "ConnState",
    "ConnectionOptions",
    "DiscardHandler",
    "EchoHandler",
    "EventLoop",
    "HANDLERS",
    "Handler",
    "ListenError",
    "Server",
    "SingleReactor",
    "Transport",
    "bind_listener",
]
