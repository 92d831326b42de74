"""Asking the server for new keys mid-stream: a TLS 1.3 KeyUpdate, update_requested.

Python's ``ssl`` module has no call for it; libssl has ``SSL_key_update``,
which queues the message for the next ``SSL_do_handshake``. This module
reaches it through ctypes: the ``SSL *`` of an ``ssl.SSLObject`` is read from
CPython 3.11's object layout (``PySSLSocket``: the object header, the socket,
then ``SSL *``), and trusted only when libssl itself says that it belongs to
the object's own context (``SSL_get_SSL_CTX``). Where any of this does not
hold (another Python, a libssl without the call), :func:`request_key_update`
says why, and the check that needs it is not measured.
"""

from __future__ import annotations

import ctypes
import ssl
import sys

__all__ = ["request_key_update"]

_POINTER = ctypes.sizeof(ctypes.c_void_p)
#: ``SSL_KEY_UPDATE_REQUESTED``: the peer must update its sending keys too.
_UPDATE_REQUESTED = 1


def request_key_update(tls: ssl.SSLObject) -> str | None:
    """Queue a KeyUpdate asking the peer to update its keys too; None, or why it cannot.

    The message goes out with the next ``tls.do_handshake()``.
    """
    if sys.implementation.name != "cpython" or sys.version_info[:2] != (3, 11):
        return f"sending a TLS KeyUpdate is known to work on CPython 3.11 only, not {sys.version}"
    try:
        import _ssl

        lib = ctypes.CDLL(_ssl.__file__)
        update = lib.SSL_key_update
        context_of = lib.SSL_get_SSL_CTX
    except (ImportError, OSError, AttributeError) as exc:
        return f"libssl's SSL_key_update cannot be reached from Python's ssl module ({exc})"
    update.argtypes = [ctypes.c_void_p, ctypes.c_int]
    update.restype = ctypes.c_int
    context_of.argtypes = [ctypes.c_void_p]
    context_of.restype = ctypes.c_void_p
    inner = getattr(tls, "_sslobj", None)
    if inner is None:
        return "the ssl.SSLObject has no _sslobj: an unknown layout"
    handle = ctypes.c_void_p.from_address(id(inner) + 3 * _POINTER).value
    context = ctypes.c_void_p.from_address(id(tls.context) + 2 * _POINTER).value
    if not handle or not context or context_of(handle) != context:
        return "the SSL object's layout is not the one expected: no KeyUpdate sent"
    if update(handle, _UPDATE_REQUESTED) != 1:
        return "libssl refused to queue a KeyUpdate (SSL_key_update)"
    return None
