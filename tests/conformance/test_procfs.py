"""/proc readings, each against a real process: a child this test starts, or itself."""

from __future__ import annotations

import os
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conformance.targets import procfs
from conformance.targets.sockdiag import listen_backlogs

#: A child that obeys one command per message on a SOCK_SEQPACKET socket:
#: ``open N`` opens N more sockets, ``connect PORT`` connects to 127.0.0.1:PORT
#: (or ``connect6 PORT`` to [::1]:PORT) and holds the connection, ``burn S``
#: spends S seconds of CPU, ``limit N`` sets its soft descriptor limit to N;
#: each answers ``ok``. It exits at EOF.
CHILD = """
import resource, socket, sys, time
ctl = socket.socket(fileno=int(sys.argv[1]))
held = []
while True:
    words = ctl.recv(64).split()
    if not words:
        break
    if words[0] == b"open":
        held += [socket.socket() for _ in range(int(words[1]))]
    elif words[0] == b"burn":
        start = time.process_time()
        while time.process_time() - start < float(words[1]):
            pass
    elif words[0] == b"connect":
        held.append(socket.create_connection(("127.0.0.1", int(words[1]))))
    elif words[0] == b"connect6":
        held.append(socket.create_connection(("::1", int(words[1]))))
    elif words[0] == b"limit":
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        resource.setrlimit(resource.RLIMIT_NOFILE, (int(words[1]), hard))
    ctl.send(b"ok")
"""


class Child:
    """The child process and its end of the command socket."""

    def __init__(self) -> None:
        self.ctl, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.ctl.settimeout(10.0)  # Every answer comes within this, or the test fails.
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(theirs.fileno())],
            pass_fds=[theirs.fileno()],
            stdin=subprocess.DEVNULL,
        )
        theirs.close()
        self.pid = self.proc.pid

    def ask(self, command: str) -> None:
        self.ctl.send(command.encode())
        assert self.ctl.recv(64) == b"ok"

    def close(self) -> None:
        self.ctl.close()  # EOF: the child exits.
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def child() -> Iterator[Child]:
    started = Child()
    try:
        started.ask("open 0")  # It runs its loop: its descriptors are all open.
        yield started
    finally:
        started.close()


def _missing_pid() -> int:
    """A PID no process can have: above the kernel's largest."""
    return int(Path("/proc/sys/kernel/pid_max").read_text()) + 1


def test_open_descriptors_counts_those_a_child_opens(child: Child) -> None:
    before = procfs.open_descriptors(child.pid)
    assert before is not None
    assert before >= 4  # stdin, stdout, stderr, the command socket
    child.ask("open 5")
    assert procfs.open_descriptors(child.pid) == before + 5


def test_descriptor_limit_is_the_soft_limit_in_force(child: Child) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert procfs.descriptor_limit(os.getpid()) == soft
    assert procfs.descriptor_limit(child.pid) == soft  # Inherited.
    lower = min(soft, hard, 200)
    child.ask(f"limit {lower - 1}")
    assert procfs.descriptor_limit(child.pid) == lower - 1  # The soft limit, not the hard one.


def test_cpu_seconds_and_memory_of_this_process_are_positive() -> None:
    pid = os.getpid()
    cpu = procfs.cpu_seconds(pid)
    rss = procfs.resident_bytes(pid)
    peak = procfs.peak_resident_bytes(pid)
    assert cpu is not None
    assert cpu > 0  # Importing pytest alone costs more than a clock tick.
    assert rss is not None
    assert peak is not None
    assert 0 < rss <= peak


def test_cpu_seconds_of_a_child_grows_by_what_it_spends(child: Child) -> None:
    before = procfs.cpu_seconds(child.pid)
    assert before is not None
    child.ask("burn 0.3")
    after = procfs.cpu_seconds(child.pid)
    assert after is not None
    assert after - before >= 0.25  # The clock ticks 100 times a second: 0.01s granularity.


def test_parent_pid_and_children_name_each_other(child: Child) -> None:
    assert procfs.parent_pid(child.pid) == os.getpid()
    found = procfs.children(os.getpid())
    assert found is not None
    assert child.pid in found
    assert procfs.children(child.pid) == []


def test_socket_owners_finds_the_child_holding_a_connection(child: Child) -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(10.0)
        child.ask(f"connect {server.getsockname()[1]}")
        conn, peer = server.accept()
        with conn:
            inode = procfs.socket_inode(peer[:2], conn.getsockname()[:2])
            assert inode is not None
            assert procfs.socket_owners(inode) == {child.pid}
            ours = procfs.socket_inode(conn.getsockname()[:2], peer[:2])
            assert ours is not None
            assert ours != inode
            assert procfs.socket_owners(ours) == {os.getpid()}


def test_socket_inode_reads_ipv6_addresses(child: Child) -> None:
    try:
        server = socket.create_server(("::1", 0), family=socket.AF_INET6)
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback here: {exc}")
    with server:
        server.settimeout(10.0)
        child.ask(f"connect6 {server.getsockname()[1]}")
        conn, peer = server.accept()
        with conn:
            inode = procfs.socket_inode(peer[:2], conn.getsockname()[:2])
            assert inode is not None
            assert procfs.socket_owners(inode) == {child.pid}


def test_socket_inode_is_None_for_a_connection_that_does_not_exist() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        assert procfs.socket_inode(("127.0.0.1", port), ("127.0.0.1", 1)) is None


def test_every_reading_of_a_missing_pid_is_None() -> None:
    pid = _missing_pid()
    assert procfs.open_descriptors(pid) is None
    assert procfs.descriptor_limit(pid) is None
    assert procfs.cpu_seconds(pid) is None
    assert procfs.parent_pid(pid) is None
    assert procfs.resident_bytes(pid) is None
    assert procfs.peak_resident_bytes(pid) is None
    assert procfs.children(pid) is None


def test_readings_of_a_child_that_exited_are_None() -> None:
    gone = Child()
    pid = gone.pid
    gone.close()  # Exited and reaped.
    assert procfs.cpu_seconds(pid) is None
    assert procfs.open_descriptors(pid) is None


@pytest.mark.parametrize(("bind", "ask"), [("127.0.0.1", "127.0.0.1"), ("0.0.0.0", "127.0.0.1")])
def test_listening_inodes_finds_a_listener_at_its_address_or_the_wildcard(
    bind: str, ask: str
) -> None:
    with socket.socket() as listener:
        listener.bind((bind, 0))
        port = listener.getsockname()[1]
        assert procfs.listening_inodes(ask, port) == set()  # Bound, not yet listening.
        listener.listen(8)
        inode = int(os.readlink(f"/proc/self/fd/{listener.fileno()}")[len("socket:[") : -1])
        assert procfs.listening_inodes(ask, port) == {inode}
        assert procfs.socket_owners({inode}) == {os.getpid()}
    assert procfs.listening_inodes(ask, port) == set()


def test_accepted_tells_a_connection_in_the_accept_queue_from_an_accepted_one() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        server = listener.getsockname()
        with socket.create_connection(server, timeout=5) as client:
            assert procfs.accepted(server, client.getsockname()) is False
            ours, _ = listener.accept()
            with ours:
                assert procfs.accepted(server, client.getsockname()) is True
    assert procfs.accepted(("192.0.2.1", 9), ("192.0.2.2", 9)) is None


def test_accepted_sees_an_ipv6_listener_that_serves_ipv4() -> None:
    with socket.socket(socket.AF_INET6) as listener:
        listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        listener.bind(("::", 0))
        listener.listen(8)
        server = ("127.0.0.1", listener.getsockname()[1])
        with socket.create_connection(server, timeout=5) as client:
            assert procfs.accepted(server, client.getsockname()) is False
            ours, _ = listener.accept()
            with ours:
                assert procfs.accepted(server, client.getsockname()) is True


def _inode(sock: socket.socket) -> int:
    """The inode of ``sock``, from its link in ``/proc/self/fd``."""
    return int(os.readlink(f"/proc/self/fd/{sock.fileno()}")[len("socket:[") : -1])


def _ipv6_listener(bind: str, *, v6only: bool = False) -> socket.socket:
    """A bound, not yet listening, IPv6 socket; the test skips where IPv6 is missing."""
    sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(v6only))
        sock.bind((bind, 0))
    except OSError as exc:
        sock.close()
        pytest.skip(f"cannot bind an IPv6 socket to {bind} here: {exc}")
    return sock


@pytest.mark.parametrize("bind", ["::ffff:127.0.0.1", "::", "::ffff:0.0.0.0"])
def test_listening_inodes_finds_an_ipv6_listener_that_serves_ipv4(bind: str) -> None:
    with _ipv6_listener(bind) as listener:
        port = listener.getsockname()[1]
        assert procfs.listening_inodes("127.0.0.1", port) == set()  # Bound, not yet listening.
        listener.listen(8)
        inode = _inode(listener)
        assert procfs.listening_inodes("127.0.0.1", port) == {inode}
        assert procfs.listening_inodes("::ffff:127.0.0.1", port) == {inode}
        assert procfs.socket_owners({inode}) == {os.getpid()}
    assert procfs.listening_inodes("127.0.0.1", port) == set()


def test_listening_inodes_keeps_each_family_to_its_own_addresses() -> None:
    with socket.create_server(("127.0.0.1", 0)) as ipv4:
        port = ipv4.getsockname()[1]
        assert procfs.listening_inodes("127.0.0.1", port) == {_inode(ipv4)}
        assert procfs.listening_inodes("127.0.0.2", port) == set()
        assert procfs.listening_inodes("::1", port) == set()  # An IPv4 listener serves no [::1].
    with socket.create_server(("0.0.0.0", 0)) as wildcard:
        port = wildcard.getsockname()[1]
        assert procfs.listening_inodes("127.0.0.1", port) == {_inode(wildcard)}
        assert procfs.listening_inodes("::1", port) == set()
    with _ipv6_listener("::1") as ipv6:
        ipv6.listen(8)
        port = ipv6.getsockname()[1]
        assert procfs.listening_inodes("::1", port) == {_inode(ipv6)}
        assert procfs.listening_inodes("127.0.0.1", port) == set()


@pytest.mark.parametrize("bind", ["::ffff:127.0.0.1", "::"])
def test_socket_inode_finds_both_ends_of_an_ipv4_connection_to_an_ipv6_listener(
    bind: str,
) -> None:
    with _ipv6_listener(bind) as listener:
        listener.listen(8)
        listener.settimeout(10.0)
        port = listener.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port), timeout=10.0) as client:
            accepted, _ = listener.accept()
            with accepted:
                assert accepted.getsockname()[0] == "::ffff:127.0.0.1"  # Listed in tcp6.
                # As the suite asks: the pair its own IPv4 socket sees, the other way round.
                server_end = procfs.socket_inode(client.getpeername(), client.getsockname())
                assert server_end == _inode(accepted)
                assert procfs.socket_inode(client.getsockname(), client.getpeername()) == (
                    _inode(client)
                )


@pytest.mark.parametrize(("bind", "backlog"), [("127.0.0.1", 7), ("::ffff:127.0.0.1", 9)])
def test_listen_backlogs_reads_the_backlog_given_to_listen(bind: str, backlog: int) -> None:
    sock = _ipv6_listener(bind) if ":" in bind else socket.create_server((bind, 0), backlog=backlog)
    with sock:
        sock.listen(backlog)
        port = sock.getsockname()[1]
        assert listen_backlogs("127.0.0.1", port) == [backlog]
        assert listen_backlogs("::1", port) == []  # Nothing listens there.


def test_listen_backlogs_are_capped_at_somaxconn() -> None:
    somaxconn = int(Path("/proc/sys/net/core/somaxconn").read_text())
    with socket.create_server(("127.0.0.1", 0), backlog=somaxconn + 100) as sock:
        assert listen_backlogs("127.0.0.1", sock.getsockname()[1]) == [somaxconn]


def test_listen_overflows_grows_when_an_accept_queue_overflows() -> None:
    before = procfs.listen_overflows()
    assert before is not None
    # Backlog 0: the kernel queues one connection; nothing is accepted, so the
    # next handshakes find the queue full.
    with socket.create_server(("127.0.0.1", 0), backlog=0) as listener:
        clients = [socket.socket() for _ in range(8)]
        try:
            for client in clients:
                client.setblocking(False)
                client.connect_ex(listener.getsockname())
            deadline = time.monotonic() + 10.0
            while (procfs.listen_overflows() or 0) <= before:
                assert time.monotonic() < deadline, "no overflow counted within 10s"
                time.sleep(0.02)  # Handshakes are the kernel's: poll the counter, bounded.
        finally:
            for client in clients:
                client.close()
