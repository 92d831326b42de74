"""What ``/proc`` says about a process: descriptors, their limit, CPU, memory, children, sockets.

How this works
--------------
Each reading is one function over a PID, and each file of ``/proc`` is parsed
in exactly one place here: ``stat`` by :func:`_stat_fields` (CPU time, parent),
``status`` by :func:`_status_bytes` (resident memory, its peak), ``fd/`` by
:func:`open_descriptors` and :func:`socket_owners`, ``limits`` by
:func:`descriptor_limit`, ``task/*/children`` by
:func:`children`, ``net/tcp*`` by :func:`socket_inode` and :func:`listening_inodes`.

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
"""

from __future__ import annotations

import ipaddress
import os
import sys
from pathlib import Path

__all__ = [
    "UNLIMITED",
    "accepted",
    "children",
    "cpu_seconds",
    "descriptor_limit",
    "listening_inodes",
    "open_descriptors",
    "parent_pid",
    "peak_resident_bytes",
    "resident_bytes",
    "socket_inode",
    "socket_owners",
]

PROC = Path("/proc")

_TICKS = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
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
    fields = _stat_fields(pid)
    if fields is None:
        return None
    return (int(fields[11]) + int(fields[12])) / _TICKS


def parent_pid(pid: int) -> int | None:
    """The PID of the parent of ``pid``, or None if the process is gone."""
    fields = _stat_fields(pid)
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


def _proc_address(host: str, port: int) -> str:
    """An address as ``/proc/net/tcp*`` writes it."""
    packed = ipaddress.ip_address(host).packed
    words = [packed[i : i + 4][::-1].hex().upper() for i in range(0, len(packed), 4)]
    return f"{''.join(words)}:{port:04X}"


def socket_inode(local: tuple[str, int], remote: tuple[str, int]) -> int | None:
    """The inode of the TCP socket bound to ``local`` and connected to ``remote``.

    Args:
        local: The socket's own address, ``(host, port)``.
        remote: Its peer's address.

    Returns:
        The inode, or None if no such socket is listed (or it is in TIME_WAIT).
    """
    family = "tcp6" if ":" in local[0] else "tcp"
    want = (_proc_address(*local), _proc_address(*remote))
    try:
        lines = (PROC / "net" / family).read_text().splitlines()[1:]
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if len(fields) > 9 and (fields[1], fields[2]) == want and fields[9] != "0":
            return int(fields[9])
    return None


#: The state of a listening socket in ``/proc/net/tcp*`` (``TCP_LISTEN``).
_LISTEN = "0A"


def listening_inodes(host: str, port: int) -> set[int]:
    """The inodes of the sockets listening on ``port`` at ``host`` (or at any address).

    Returns:
        Every match in ``/proc/net/tcp`` and ``tcp6``: a server bound to
        ``host`` itself, or to the wildcard address; empty when none is listed.
    """
    try:
        wanted = {_proc_address(host, port)}
    except ValueError:
        wanted = set()  # A host name: matched by port on the wildcard only.
    wanted |= {_proc_address("0.0.0.0", port), _proc_address("::", port)}
    found: set[int] = set()
    for family in ("tcp", "tcp6"):
        try:
            lines = (PROC / "net" / family).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            listening = len(fields) > 9 and fields[3] == _LISTEN and fields[1] in wanted
            if listening and fields[9] != "0":
                found.add(int(fields[9]))
    return found


def socket_owners(inode: int | set[int], limit: int = 100_000) -> set[int]:
    """The processes holding a descriptor on socket ``inode`` (or on any of a set of them).

    Args:
        inode: The socket's inode (see :func:`socket_inode`), or several.
        limit: Look at about this many descriptors at most, over all processes.

    Returns:
        The PIDs found, among the processes whose descriptors this user may list.
    """
    targets = {f"socket:[{i}]" for i in ({inode} if isinstance(inode, int) else inode)}
    owners: set[int] = set()
    if not targets:
        return owners
    seen = 0
    for proc in PROC.iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fds = list((proc / "fd").iterdir())
        except OSError:
            continue  # Another user's process, or gone.
        for fd in fds:
            seen += 1
            try:
                if os.readlink(fd) in targets:
                    owners.add(int(proc.name))
                    break
            except OSError:
                continue
        if seen > limit:
            break
    return owners


def accepted(server: tuple[str, int], client: tuple[str, int]) -> bool | None:
    """Whether the server has accepted the connection from ``client``, as its kernel lists it.

    Args:
        server: The address the client connected to.
        client: The client's own address (``getsockname``).

    Returns:
        True when a process holds the server's end, False when it still waits
        in the listener's accept queue (inode 0), None when the server's end is
        not listed here (another host or network namespace) or has closed.
    """
    wanted = set()
    for local, remote in ((server, client), _mapped(server, client)):
        try:
            wanted.add((_proc_address(*local), _proc_address(*remote)))
        except ValueError:
            continue
    for family in ("tcp", "tcp6"):
        try:
            lines = (PROC / "net" / family).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and (fields[1], fields[2]) in wanted and fields[3] == _ESTABLISHED:
                return fields[9] != "0"
    return None


#: The state of an established connection in ``/proc/net/tcp*`` (``TCP_ESTABLISHED``).
_ESTABLISHED = "01"


def _mapped(
    server: tuple[str, int], client: tuple[str, int]
) -> tuple[tuple[str, int], tuple[str, int]]:
    """The pair as an IPv6 socket serving IPv4 lists it (``::ffff:a.b.c.d``)."""
    return (f"::ffff:{server[0]}", server[1]), (f"::ffff:{client[0]}", client[1])
