"""Benchmark the load from several hosts against the load from one process.

Runs the same closed-loop ping-pong load (64-byte messages over 64
connections by default) against each server, from: this process
(``run_load``, one load process), 1, 2 and 4 ``popen`` hosts (``load
--hosts popen``, one load process each), and one ``ssh=`` host (a
throwaway sshd on 127.0.0.1 that this script starts, or ``--ssh SPEC``);
and, as the yardstick, the C ping-pong client (``tools/c/pingpong.c``).
The runs of one server are interleaved (each load in turn, ``--runs``
rounds, after one second of priming) and the median kept. Prints a Markdown
table: aggregate round trips per second, the ratio to the load from one
process, and p99 latency (merged bucket by bucket across hosts).

The servers: the C epoll echo server (``tools/c/echo_epoll.c``), the
reference ``multi --mode process`` with ``--sub-reactors`` N (default: the
CPU count, at most 8), and, with ``--reuseport N``, N asyncio Protocol echo
processes sharing the port through ``SO_REUSEPORT``.

Nothing is pinned: the hosts, the server and the script share the machine's
CPUs, which is the point on a machine with many and the limit on one with
two (say which in the note that quotes the figures).

    python tools/bench_hosts.py
    python tools/bench_hosts.py --seconds 3 --runs 3 --hosts 1,2,4,8 --reuseport 8

Benchmark-only: nothing here runs in the tests.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from conformance.load import LoadSpec, run_load  # noqa: E402
from conformance.load.hosts import parse_hosts, run_hosts  # noqa: E402
from conformance.targets.spawn import Spawned, spawn_listening  # noqa: E402
from tests.conformance.support import SshdUnavailable, sshd  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import build_c  # noqa: E402

REUSEPORT_ECHO = """
import asyncio, socket, sys
class Echo(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport
    def data_received(self, data):
        self.transport.write(data)
async def main(port):
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Echo, "127.0.0.1", port, reuse_port=True, backlog=1024)
    port = server.sockets[0].getsockname()[1]
    print(f"listening on 127.0.0.1:{port}", flush=True)
    await server.serve_forever()
asyncio.run(main(int(sys.argv[1])))
"""


@dataclass
class Row:
    """One load against one server: its runs."""

    server: str
    load: str
    rps: list[float] = field(default_factory=list)
    p99: list[float] = field(default_factory=list)
    error: str = ""

    def median(self, values: list[float]) -> float:
        return statistics.median(values) if values else 0.0


def start(argv: list[str]) -> Spawned:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return spawn_listening(argv, timeout=20.0, env=env, cwd=ROOT)


@contextlib.contextmanager
def reuseport_servers(count: int) -> Iterator[tuple[str, int]]:
    """``count`` asyncio echo processes listening on one port through SO_REUSEPORT."""
    first = start([sys.executable, "-c", REUSEPORT_ECHO, "0"])
    # Port 0 gives each its own port: take the first one's and start the rest on it.
    first.stop()
    port = first.address[1]
    spawned = [start([sys.executable, "-c", REUSEPORT_ECHO, str(port)]) for _ in range(count)]
    try:
        yield "127.0.0.1", port
    finally:
        for one in spawned:
            one.stop()


def one_process(host: str, port: int, args: argparse.Namespace) -> tuple[float, float]:
    spec = LoadSpec(host, port, connections=args.connections, size=args.size,
                    duration=args.seconds)  # fmt: skip
    result = run_load(spec)
    if not result.ok:
        raise RuntimeError(f"load failed: {result.first_error}")
    return result.round_trips_per_second, result.latency.summary()["p99"]


def from_hosts(hosts: list[str]) -> Callable[[str, int, argparse.Namespace], tuple[float, float]]:
    def run(host: str, port: int, args: argparse.Namespace) -> tuple[float, float]:
        spec = LoadSpec(host, port, connections=args.connections, size=args.size,
                        duration=args.seconds)  # fmt: skip
        outcome = run_hosts(spec, parse_hosts(hosts))
        if not outcome.ok:
            raise RuntimeError(f"load failed: {outcome.summary_line()}")
        return outcome.result.round_trips_per_second, outcome.result.latency.summary()["p99"]

    return run


def c_client(c_dir: Path) -> Callable[[str, int, argparse.Namespace], tuple[float, float]]:
    def run(host: str, port: int, args: argparse.Namespace) -> tuple[float, float]:
        argv = [str(c_dir / "pingpong"), host, str(port), str(args.connections), str(args.size),
                str(args.seconds)]  # fmt: skip
        out = subprocess.run(argv, capture_output=True, text=True, timeout=args.seconds + 60)
        if out.returncode != 0:
            raise RuntimeError(f"C client failed: {out.stderr or out.stdout}")
        data = json.loads(out.stdout)
        return float(data["rps"]), float(data["p99_us"])

    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="Seconds per run")
    parser.add_argument("--runs", type=int, default=3, help="Rounds of runs (median kept)")
    parser.add_argument("--connections", type=int, default=64, help="Connections in all")
    parser.add_argument("--size", type=int, default=64, help="Message size in bytes")
    parser.add_argument("--hosts", default="1,2,4", help="Counts of popen hosts to measure")
    parser.add_argument("--ssh", help="An ssh= host spec (default: a throwaway local sshd)")
    parser.add_argument("--sub-reactors", type=int, default=min(8, os.cpu_count() or 1))
    parser.add_argument("--reuseport", type=int, default=0,
                        help="Also measure N asyncio processes on SO_REUSEPORT")  # fmt: skip
    parser.add_argument("--json", type=Path, help="Write the rows as JSON here")
    args = parser.parse_args(argv)

    c_dir = build_c()
    with contextlib.ExitStack() as stack:
        ssh = args.ssh
        if ssh is None:
            try:
                server = stack.enter_context(sshd())
                ssh = server.gateway(extra=" -I -S")
            except SshdUnavailable as exc:
                print(f"no ssh host: {exc}", file=sys.stderr)
        loads: list[tuple[str, Callable[[str, int, argparse.Namespace], tuple[float, float]]]]
        loads = [("one process (run_load)", one_process)]
        for count in (int(n) for n in args.hosts.split(",")):
            loads.append((f"{count} popen host{'s' if count > 1 else ''}",
                          from_hosts(["popen"] * count)))  # fmt: skip
        if ssh is not None:
            loads.append(("1 ssh host (127.0.0.1)", from_hosts([ssh])))
        if c_dir is not None:
            loads.append(("C ping-pong client", c_client(c_dir)))

        servers: list[tuple[str, Callable[[], contextlib.AbstractContextManager[tuple[str, int]]]]]
        servers = []
        if c_dir is not None:
            servers.append(("C epoll echo", lambda: _spawned([str(c_dir / "echo_epoll")])))
        multi = [sys.executable, "-m", "reference", "multi", "--mode", "process",
                 "--sub-reactors", str(args.sub_reactors)]  # fmt: skip
        servers.append((f"multi --mode process --sub-reactors {args.sub_reactors}",
                        lambda: _spawned(multi)))  # fmt: skip
        if args.reuseport:
            servers.append((f"{args.reuseport} asyncio processes, SO_REUSEPORT",
                            lambda: reuseport_servers(args.reuseport)))  # fmt: skip

        rows: list[Row] = []
        for name, make in servers:
            own = [Row(name, label) for label, _ in loads]
            rows += own
            with make() as (host, port):
                one_process(host, port, argparse.Namespace(**{**vars(args), "seconds": 1.0}))
                for _ in range(args.runs):
                    for row, (_, run) in zip(own, loads, strict=True):
                        try:
                            rps, p99 = run(host, port, args)
                        except RuntimeError as exc:
                            row.error = str(exc)[:200]
                            continue
                        row.rps.append(rps)
                        row.p99.append(p99)
                        print(f"{name} / {row.load}: {rps:,.0f}/s p99 {p99:,.0f} us",
                              file=sys.stderr, flush=True)  # fmt: skip
    print(table(rows, args))
    if args.json is not None:
        args.json.write_text(json.dumps([row.__dict__ for row in rows], indent=2))
    return 0


@contextlib.contextmanager
def _spawned(argv: list[str]) -> Iterator[tuple[str, int]]:
    server = start(argv)
    try:
        yield server.address
    finally:
        server.stop()


def table(rows: list[Row], args: argparse.Namespace) -> str:
    lines = [
        f"{os.cpu_count()} CPUs; {args.connections} connections in all, {args.size}-byte "
        f"ping-pong, median of {args.runs} runs of {args.seconds:g} s",
        "",
        "| server | load from | round trips/s | vs one process | p99 (us) |",
        "|---|---|---:|---:|---:|",
    ]
    base: dict[str, float] = {}
    for row in rows:
        rps = row.median(row.rps)
        base.setdefault(row.server, rps)
        ratio = f"{rps / base[row.server]:.2f}x" if base[row.server] else "-"
        if row.error and not row.rps:
            lines.append(f"| {row.server} | {row.load} | failed: {row.error} | | |")
            continue
        lines.append(f"| {row.server} | {row.load} | {rps:,.0f} | {ratio} | "
                     f"{row.median(row.p99):,.0f} |")  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
