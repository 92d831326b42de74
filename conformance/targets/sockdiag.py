"""What the kernel's socket diagnostics say that ``/proc`` does not: a listener's backlog.

How this works
--------------
:func:`listen_backlogs` finds the sockets listening at an address by their
inodes in ``/proc/net/tcp*`` (:func:`conformance.targets.procfs.listening_inodes`),
then asks the kernel for the backlog of every listening TCP socket over
netlink (one dump per address family) and keeps those inodes' backlogs. It
is what ``ss -l`` shows as Send-Q.

Facts about the OS this relies on
---------------------------------
- The backlog given to ``listen()`` (capped at ``net.core.somaxconn``) is
  given only by ``sock_diag`` (``NETLINK_SOCK_DIAG``,
  ``inet_diag_msg.idiag_wqueue`` of a socket in ``TCP_LISTEN``), which any
  user may ask about any socket of its network namespace; ``tx_queue`` in
  ``/proc/net/tcp`` reads 0 for a listener.
- A sandbox may refuse netlink sockets: every reading is then empty, never
  an error.
"""

from __future__ import annotations

import socket
import struct

from conformance.targets.procfs import LISTEN, listening_inodes

__all__ = ["listen_backlogs"]

#: ``NETLINK_SOCK_DIAG`` and its one request (``linux/sock_diag.h``, ``linux/inet_diag.h``).
_NETLINK_SOCK_DIAG = 4
_SOCK_DIAG_BY_FAMILY = 20
_NLM_F_REQUEST_DUMP = 0x1 | 0x300
_NLMSG_ERROR = 2
_NLMSG_DONE = 3
#: ``nlmsghdr``: length, type, flags, sequence, port.
_HEADER = struct.Struct("=IHHII")
#: ``inet_diag_req_v2``: family, protocol, extensions, pad, states; the socket id left zero.
_REQUEST = struct.Struct("=BBBBI48x")
#: ``inet_diag_msg``: family, state, timer, retransmits, the socket id (skipped),
#: expires, rqueue, wqueue, uid, inode.
_MESSAGE = struct.Struct("=BBBB48xIIIII")


def _listen_backlogs_by_inode() -> dict[int, int]:
    """The backlog of every listening TCP socket here, by inode (empty if netlink is refused)."""
    found: dict[int, int] = {}
    try:
        diag = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, _NETLINK_SOCK_DIAG)
    except (OSError, AttributeError):  # Not Linux, or a sandbox that refuses netlink.
        return found
    with diag:
        diag.settimeout(2.0)
        for sequence, family in enumerate((socket.AF_INET, socket.AF_INET6), 1):
            request = _REQUEST.pack(family, socket.IPPROTO_TCP, 0, 0, 1 << int(LISTEN, 16))
            header = _HEADER.pack(
                _HEADER.size + len(request), _SOCK_DIAG_BY_FAMILY, _NLM_F_REQUEST_DUMP, sequence, 0
            )
            try:
                diag.send(header + request)
                _read_dump(diag, found)
            except OSError:
                break  # (A timeout): what the other dump would read could be this one's rest.
    return found


def _read_dump(diag: socket.socket, found: dict[int, int]) -> None:
    """Read one dump's messages into ``found`` (inode: wqueue) until its end."""
    while True:
        data = diag.recv(1 << 16)
        if not data:
            return
        offset = 0
        while offset + _HEADER.size <= len(data):
            length, kind = _HEADER.unpack_from(data, offset)[:2]
            if kind in (_NLMSG_DONE, _NLMSG_ERROR) or length < _HEADER.size:
                return
            body = offset + _HEADER.size
            if length >= _HEADER.size + _MESSAGE.size:
                fields = _MESSAGE.unpack_from(data, body)
                found[fields[-1]] = fields[-3]
            offset += (length + 3) & ~3


def listen_backlogs(host: str, port: int) -> list[int]:
    """The backlogs of the sockets listening at ``host:port``, as given to ``listen()``.

    The sockets are those of :func:`listening_inodes` (several with
    ``SO_REUSEPORT``); each backlog is as the kernel holds it, capped at
    ``net.core.somaxconn``.

    Returns:
        One backlog per socket, smallest first; empty when none is listed or
        the kernel's socket diagnostics cannot be read here.
    """
    inodes = listening_inodes(host, port)
    if not inodes:
        return []
    backlogs = _listen_backlogs_by_inode()
    return sorted(backlogs[inode] for inode in inodes if inode in backlogs)
