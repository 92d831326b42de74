"""Reference TCP servers built on the Reactor pattern, on the standard library.

One core (:class:`EventLoop`, :class:`Connection`, :class:`Acceptor`,
:class:`Server`) and the models that arrange it:

- :class:`Reactor`: a main loop that accepts, with optional sub-reactor
  threads (*multi*, thread mode) or a worker pool (*pool*); neither is *single*.
- :class:`ProcessReactor`: the *multi* model with sub-reactor processes.

Any of them speaks TLS when given a certificate: each connection is then a
:class:`TlsConnection` (:mod:`reference.tls`).
"""

from reference.acceptor import Acceptor
from reference.connection import Connection, ConnState
from reference.handler import HANDLERS, DiscardHandler, EchoHandler, Handler, Transport
from reference.loop import EventLoop
from reference.memcache import MemcacheHandler
from reference.multi import ProcessReactor
from reference.reactor import LoopPool, Reactor
from reference.resp import RespHandler
from reference.server import ConnectionOptions, ListenError, Server, bind_listener
from reference.tls import TlsConnection, TlsFiles, server_context
from reference.workers import PooledHandler, Strand, WorkerPool

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
    "MemcacheHandler",
    "Server",
    "LoopPool",
    "PooledHandler",
    "ProcessReactor",
    "Reactor",
    "RespHandler",
    "Strand",
    "TlsConnection",
    "TlsFiles",
    "WorkerPool",
    "Transport",
    "bind_listener",
    "server_context",
]
