"""What ``/proc`` says about a process: descriptors, their limit, CPU, memory, children, sockets.

And about TCP sockets: who holds a listener or a connection, whether a
connection was accepted, and how often an accept queue overflowed.

How this works
--------------
Each reading is one function over a PID, and each file of ``/proc`` is parsed
in exactly one place here: the list of processes by :func:`process_ids`,
``cmdline`` by :func:`command_line`, ``stat`` by :func:`stat_fields` (CPU
time, parent, session, start time),
``status`` by :func:`_status_bytes` (resident memory, its peak), ``fd/`` by
:func:`open_descriptors` and :func:`socket_owners`, ``limits`` by
:func:`descriptor_limit`, ``task/*/children`` by
:func:`children`, ``net/tcp*`` by :func:`_tcp_sockets` (for :func:`socket_inode`,
:func:`listening_inodes` and :func:`accepted`), ``net/netstat`` by
:func:`listen_overflows`. The backlog of a listening socket is not in
``/proc`` at all: :mod:`conformance.targets.sockdiag` reads it.

A process can exit between two readings, or belong to another user; every
reading then returns None (or an empty set of owners) rather than raising, so
a caller that watches a server says "cannot see it" instead of crashing. Only
Linux has these files; elsewhere every reading is None.

Facts about ``/proc`` these rely on
-----------------------------------
- ``/proc/PID/stat``: the command name is in parentheses and may itself hold
  spaces and parentheses, so the fields are counted after the *last* ``)``.
  From there, field 4 is the parent's PID, fields 14 and 15 (``utime``,
  ``stime``) are the CPU time of every thread, in clock ticks
  (``SC_CLK_TCK``, 100 a second on Linux).
- ``/proc/PID/status``: ``VmRSS`` is the resident memory and ``VmHWM`` its
  peak ("high water mark"), both in kB.
- ``/proc/PID/fd/`` holds one link per open descriptor; listing it needs the
  rights to ptrace the process (the same user, in practice). A socket's link
  reads ``socket:[INODE]``.
- ``/proc/PID/limits``: one line per resource limit, in columns padded with
  spaces: the name (itself several words), the soft limit, the hard limit and
  the units, for example ``Max open files  1024  524288  files``; a limit
  without a bound reads ``unlimited``. Anyone may read it, unlike ``fd/``.
- ``/proc/PID/task/TID/children`` lists the children forked by thread TID
  (Linux 3.5+, ``CONFIG_PROC_CHILDREN``), so a process's children are the
  union over its threads.
- ``/proc/net/tcp`` and ``tcp6``: addresses are hex, each 32-bit word in
  network order read as a little-endian word (``0100007F:1F90`` is
  127.0.0.1:8080); the tenth field is the socket's inode (0 for a socket in
  TIME_WAIT, which no process holds, and for a connection that waits in its
  listener's accept queue: the kernel completed the handshake, the server has
  not called ``accept``).
- An IPv6 socket serves IPv4 too unless ``IPV6_V6ONLY`` is set (off by
  default on Linux: ``net.ipv6.bindv6only`` is 0). Its IPv4 peers and its own
  IPv4 addresses are then listed in ``tcp6``, IPv4-mapped: 127.0.0.1 as
  ``::ffff:127.0.0.1``, written ``0000000000000000FFFF00000100007F``. So a
  server listening on ``::`` (dual-stack) or on ``::ffff:127.0.0.1`` serves
  a client of 127.0.0.1, and both its listener and its end of each
  connection are in ``tcp6`` (the JVM opens its sockets so: an IPv4 address
  is bound IPv4-mapped, the wildcard of ``new InetSocketAddress(port)`` as
  ``::``). ``tcp6`` does not say whether ``IPV6_V6ONLY`` is set, so a
  listener on ``::`` is taken to serve IPv4 as well.
- For a listening socket, the fifth field's second half (``rx_queue``) is the
  length of its accept queue; the first half (``tx_queue``) is *not* its
  backlog (it reads 0): :mod:`conformance.targets.sockdiag` asks the kernel for that.
- ``/proc/net/netstat`` holds pairs of lines, names then values, each line
  opening with its group (``TcpExt:``). ``ListenOverflows`` counts, for the
  whole network namespace since boot, each time a handshake's SYN or final
  ACK was dropped because a listener's accept queue was full (Linux queues
  ``backlog + 1``); the client retries the SYN after 1 s, 3 s, 7 s... or
  thinks itself connected and retransmits its data, so the connection looks
  stalled. A counter for the whole machine (its network namespace): any
  listener there bumps it.
"""

from __future__ import annotations

import ipaddress
import os
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

__all__ = [
    "command_line",
    "process_ids",
    "LISTEN",
    "UNLIMITED",
    "accepted",
    "children",
    "cpu_seconds",
    "descriptor_limit",
    "listen_overflows",
    "listening_inodes",
    "open_descriptors",
    "parent_pid",
    "peak_resident_bytes",
    "resident_bytes",
    "socket_inode",
    "socket_owners",
    "stat_fields",
]

PROC = Path("/proc")

_TICKS = os.sysconf("SC_CLK_TCK")


def process_ids() -> Iterator[int]:
    """The PIDs ``/proc`` lists now (processes may end while the caller looks at them)."""
    for entry in PROC.iterdir():
        if entry.name.isdigit():
            yield int(entry.name)


def command_line(pid: int) -> str:
    """The command line of ``pid``, its arguments joined by spaces ('' if it cannot be read)."""
    try:
        raw = (PROC / str(pid) / "cmdline").read_bytes()
    except OSError:
        return ""
    return raw.rstrip(b"\0").replace(b"\0", b" ").decode(errors="replace")


def stat_fields(pid: int) -> list[str] | None:
    """The fields of ``/proc/PID/stat`` after the command name (field 3 first); None if gone."""
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def cpu_seconds(pid: int) -> float | None:
    """CPU seconds (user + system, every thread) used by ``pid`` so far.

    Returns:
        The seconds, or None if the process is gone or cannot be read.
    """
    fields = stat_fields(pid)
    if fields is None:
        return None
    return (int(fields[11]) + int(fields[12])) / _TICKS


def parent_pid(pid: int) -> int | None:
    """The PID of the parent of ``pid``, or None if the process is gone."""
    fields = stat_fields(pid)
    return None if fields is None else int(fields[1])


def _status_bytes(pid: int, key: str) -> int | None:
    """The ``KEY:  N kB`` line of ``/proc/PID/status`` in bytes; None if absent or gone."""
    try:
        text = (PROC / str(pid) / "status").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1]) * 1024
    return None


def resident_bytes(pid: int) -> int | None:
    """The resident memory of ``pid`` in bytes (``VmRSS``); None if it cannot be read."""
    return _status_bytes(pid, "VmRSS")


def peak_resident_bytes(pid: int) -> int | None:
    """The peak resident memory of ``pid`` in bytes (``VmHWM``); None if it cannot be read."""
    return _status_bytes(pid, "VmHWM")


def open_descriptors(pid: int) -> int | None:
    """How many descriptors process ``pid`` holds.

    Returns:
        The count, or None if the process is gone or another user's.
    """
    try:
        return len(os.listdir(PROC / str(pid) / "fd"))
    except OSError:
        return None


#: What :func:`descriptor_limit` returns for a process whose limit reads ``unlimited``.
UNLIMITED = sys.maxsize


def descriptor_limit(pid: int) -> int | None:
    """The soft limit on the descriptors process ``pid`` may hold (``Max open files``).

    It is the limit that ``open``, ``socket`` and ``accept`` fail at with
    ``EMFILE``: the one in force, not the hard limit the process could raise it to.

    Returns:
        The limit; :data:`UNLIMITED` if it has none; None if the process is
        gone or its limits cannot be read.
    """
    try:
        text = (PROC / str(pid) / "limits").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("Max open files"):
            soft = line.removeprefix("Max open files").split()[0]
            return UNLIMITED if soft == "unlimited" else int(soft)
    return None


def children(pid: int) -> list[int] | None:
    """The PIDs of the processes that ``pid`` forked (from any of its threads), not yet reaped.

    Returns:
        The children, in no particular order, or None if ``pid`` is gone or the
        kernel does not list children.
    """
    task_dir = PROC / str(pid) / "task"
    try:
        # The main thread's file first: without it, the kernel lists no children.
        found = [int(child) for child in (task_dir / str(pid) / "children").read_text().split()]
        tasks = [task for task in task_dir.iterdir() if task.name != str(pid)]
    except OSError:
        return None
    for task in tasks:
        try:
            found += [int(child) for child in (task / "children").read_text().split()]
        except OSError:
            continue  # The thread ended meanwhile.
    return found


def _numeric(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """``host`` as an address; an IPv4-mapped IPv6 address as the IPv4 address it maps.

    Raises:
        ValueError: ``host`` is not a numeric address (a host name).
    """
    ip = ipaddress.ip_address(host)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _proc_addresses(host: str, port: int) -> set[str]:
    """The ways ``/proc/net/tcp*`` may write an address: ``HEX:PORT``, in either file.

    An IPv4 address (or an IPv4-mapped one) is written as itself in ``tcp``
    and IPv4-mapped in ``tcp6``; another IPv6 address only as itself.

    Raises:
        ValueError: ``host`` is not a numeric address.
    """
    ip = _numeric(host)
    forms = [ip.packed]
    if ip.version == 4:
        forms.append(ipaddress.IPv6Address(f"::ffff:{ip}").packed)
    found = set()
    for packed in forms:
        words = [packed[i : i + 4][::-1].hex().upper() for i in range(0, len(packed), 4)]
        found.add(f"{''.join(words)}:{port:04X}")
    return found


def _tcp_sockets(*, held: bool = True) -> Iterator[list[str]]:
    """The fields of each socket in ``/proc/net/tcp`` then ``tcp6`` held by some process.

    ``held=False``: every socket listed, those that no process holds (inode 0)
    too. A file that cannot be read gives none.
    """
    for family in ("tcp", "tcp6"):
        try:
            lines = (PROC / "net" / family).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and (fields[9] != "0" or not held):  # 0: held by no process.
                yield fields


def socket_inode(local: tuple[str, int], remote: tuple[str, int]) -> int | None:
    """The inode of the TCP socket bound to ``local`` and connected to ``remote``.

    An IPv4 pair is also looked for IPv4-mapped in ``tcp6``: the server's end
    of a connection a dual-stack listener accepted from an IPv4 client.

    Args:
        local: The socket's own address, ``(host, port)``, numeric.
        remote: Its peer's address.

    Returns:
        The inode, or None if no such socket is listed (or it is in TIME_WAIT).
    """
    ours, theirs = _proc_addresses(*local), _proc_addresses(*remote)
    for fields in _tcp_sockets():
        if fields[1] in ours and fields[2] in theirs:
            return int(fields[9])
    return None


#: The state of a listening socket in ``/proc/net/tcp*`` (``TCP_LISTEN``).
LISTEN = "0A"


def _serving(host: str, port: int) -> set[str]:
    """The local addresses (``HEX:PORT``) at which a listener serves clients of ``host:port``.

    ``host`` itself and the wildcard of its family; for IPv4, ``::`` too (a
    dual-stack listener). A host name is matched on the wildcards only.
    """
    wildcards = _proc_addresses("0.0.0.0", port) | _proc_addresses("::", port)
    try:
        ip = _numeric(host)
    except ValueError:
        return wildcards
    if ip.version == 6:
        wildcards = _proc_addresses("::", port)  # An IPv4 listener serves no IPv6 client.
    return _proc_addresses(host, port) | wildcards


def listening_inodes(host: str, port: int) -> set[int]:
    """The inodes of the sockets listening on ``port`` at ``host`` (or at any address).

    Returns:
        Every match in ``/proc/net/tcp`` and ``tcp6``: a server bound to
        ``host`` itself (for IPv4, as itself or IPv4-mapped), or to the
        wildcard address (``::`` serves IPv4 as well); empty when none is listed.
    """
    wanted = _serving(host, port)
    return {
        int(fields[9]) for fields in _tcp_sockets() if fields[3] == LISTEN and fields[1] in wanted
    }


def socket_owners(
    inode: int | set[int], limit: int = 100_000, pids: Iterable[int] | None = None
) -> set[int]:
    """The processes holding a descriptor on socket ``inode`` (or on any of a set of them).

    Args:
        inode: The socket's inode (see :func:`socket_inode`), or several.
        limit: Look at about this many descriptors at most, over all processes.
        pids: Look only at these processes (default: every one ``/proc`` lists).

    Returns:
        The PIDs found, among the processes whose descriptors this user may list.
    """
    targets = {f"socket:[{i}]" for i in ({inode} if isinstance(inode, int) else inode)}
    owners: set[int] = set()
    if not targets:
        return owners
    seen = 0
    for pid in process_ids() if pids is None else pids:
        try:
            fds = list((PROC / str(pid) / "fd").iterdir())
        except OSError:
            continue  # Another user's process, or gone.
        for fd in fds:
            seen += 1
            try:
                if os.readlink(fd) in targets:
                    owners.add(pid)
                    break
            except OSError:
                continue
        if seen > limit:
            break
    return owners


def accepted(server: tuple[str, int], client: tuple[str, int]) -> bool | None:
    """Whether the server has accepted the connection from ``client``, as its kernel lists it.

    Args:
        server: The address the client connected to, numeric.
        client: The client's own address (``getsockname``).

    Returns:
        True when a process holds the server's end, False when it still waits
        in the listener's accept queue (inode 0), None when the server's end is
        not listed here (another host or network namespace) or has closed.
    """
    try:
        ours, theirs = _proc_addresses(*server), _proc_addresses(*client)
    except ValueError:
        return None
    for fields in _tcp_sockets(held=False):
        if fields[1] in ours and fields[2] in theirs and fields[3] == _ESTABLISHED:
            return fields[9] != "0"
    return None


#: The state of an established connection in ``/proc/net/tcp*`` (``TCP_ESTABLISHED``).
_ESTABLISHED = "01"


def listen_overflows() -> int | None:
    """How many times a listener's accept queue overflowed on this machine (``ListenOverflows``).

    A system-wide counter (every listener of this network namespace, since
    boot): compare two readings, and mind that other processes bump it too.

    Returns:
        The count, or None if ``/proc/net/netstat`` cannot be read or lacks it.
    """
    try:
        lines = (PROC / "net" / "netstat").read_text().splitlines()
    except OSError:
        return None
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:") and values.startswith("TcpExt:"):
            table = dict(zip(names.split()[1:], values.split()[1:], strict=False))
            count = table.get("ListenOverflows")
            return None if count is None else int(count)
    return None
