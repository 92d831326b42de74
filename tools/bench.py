"""Benchmark echo servers side by side, under handlers of different cost.

Runs the same closed-loop ping-pong load (by default 64-byte messages over 50
connections, the median of 3 runs of 5 s after 1 s of priming) against each
server (the servers of one ``--work`` setting all started at once, their runs
interleaved), and prints a Markdown table: round trips per second, p50 and p99
latency, the server's CPU time per round trip (all its threads and
processes, from ``/proc``: what a round trip costs, whatever else the machine
runs), and ratios to the single reactor, to asyncio's Protocol echo server
and to a minimal C epoll echo server. Each server (all its threads and
processes) is pinned to CPU 0 and the load to CPU 1 where the machine has two
or more.

The load comes from the C ping-pong client (``tools/c/pingpong.c``, compiled
here with ``cc``), so that the client is not what limits the servers;
``--client python`` uses the project's own load generator
(``conformance.load``) instead, and then the C client's rate against the C
server is printed as the load generator's yardstick.

``--work none,block:1,cpu:200`` measures the four reference models (single,
pool with 4 workers, multi with 4 sub-reactor threads, multi with 2
sub-reactor processes) under each handler cost (``--work`` of the servers:
``block:MS`` blocks the handler's thread, ``cpu:US`` burns CPU); servers
without that dial (asyncio, uvloop, C) are measured under ``none`` only.

    python tools/bench.py
    python tools/bench.py --seconds 2 --runs 1 --targets single,pool,asyncio,c
    python tools/bench.py --work none,block:1,cpu:200 --seconds 2 --runs 3 --plot bench.png
    python tools/bench.py --client python --json bench.json

``--tls`` (with ``--client python`` only: the C client speaks no TLS) makes a
CA and a server certificate with trustme in a temporary directory, starts
every server with ``--tls-cert`` (the reference models with TLS in their
reactor, asyncio's ``ssl`` echo server beside them) and runs the load over
TLS; the table then adds each server's handshakes per second (over the
connecting phase and the run together) and their mean time, each
connection's handshake made at the start of each run.

    python tools/bench.py --tls --client python --seconds 2 --runs 3 --targets single,asyncio

Benchmark-only: nothing here runs in the tests.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from conformance.load import LoadSpec, run_load  # noqa: E402
from conformance.targets import procfs  # noqa: E402
from conformance.targets.spawn import Spawned, spawn_listening  # noqa: E402
from conformance.tls import TlsSettings  # noqa: E402
from reference.handler import Work  # noqa: E402

SERVER_CPU = 0
LOAD_CPU = 1
UVLOOP = (
    "import runpy, sys, uvloop; uvloop.install(); sys.argv[0] = {path!r}; "
    "runpy.run_path({path!r}, run_name='__main__')"
)
#: The servers, in table order.
ALL_TARGETS = ["single", "pool", "multi-thread", "multi-process", "asyncio", "uvloop", "c"]


@dataclass
class Target:
    """One server: how to start it, and its runs under each work setting."""

    name: str
    argv: list[str]
    takes_work: bool = False
    runs: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    skipped: str = ""

    def command(self, work: str) -> list[str]:
        return [*self.argv, "--work", work] if self.takes_work else self.argv

    def measured(self, work: str) -> bool:
        return bool(self.runs.get(work))

    def median(self, work: str, key: str) -> float:
        runs = self.runs.get(work, [])
        return statistics.median(run[key] for run in runs) if runs else 0.0


def targets(c_dir: Path | None, tls_cert: Path | None = None) -> dict[str, Target]:
    """The servers; with ``tls_cert``, each started with ``--tls-cert`` (the C server skipped)."""
    py = sys.executable
    ref = [py, "-m", "reference"]
    asyncio_echo = str(ROOT / "fixtures" / "servers" / "asyncio_echo.py")
    found = {
        "single": Target("single", [*ref, "single"], True),
        "pool": Target("pool", [*ref, "pool", "--workers", "4"], True),
        "multi-thread": Target("multi-thread", [*ref, "multi", "--sub-reactors", "4"], True),
        "multi-process": Target(
            "multi-process", [*ref, "multi", "--sub-reactors", "2", "--mode", "process"], True
        ),
        "asyncio": Target("asyncio", [py, asyncio_echo]),
        "uvloop": Target("uvloop", [py, "-c", UVLOOP.format(path=asyncio_echo)]),
        "c": Target("c", [str(c_dir / "echo_epoll")] if c_dir else []),
    }
    try:
        import uvloop  # noqa: F401
    except ImportError:
        found["uvloop"].skipped = "uvloop is not installed (pip install uvloop)"
    if c_dir is None:
        found["c"].skipped = "no C compiler"
    if tls_cert is not None:
        for target in found.values():
            target.argv = [*target.argv, "--tls-cert", str(tls_cert)]
        found["c"].skipped = "the C echo server speaks no TLS"
    return found


def make_certs(where: Path) -> tuple[Path, Path]:
    """A CA and a server certificate for 127.0.0.1 (trustme), as PEM files: (ca, server)."""
    try:
        import trustme
    except ImportError:
        raise SystemExit("bench.py: --tls needs trustme (pip install trustme)") from None
    ca = trustme.CA()
    ca_file, server_file = where / "ca.pem", where / "server.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    ca.issue_cert("127.0.0.1", "localhost").private_key_and_cert_chain_pem.write_to_path(
        str(server_file)
    )
    return ca_file, server_file


def build_c() -> Path | None:
    """Compile the C echo server and the C ping-pong client; None without a compiler."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return None
    out = Path(tempfile.mkdtemp(prefix="bench-c-"))
    for name in ("echo_epoll", "pingpong"):
        subprocess.run(
            [cc, "-O2", "-o", str(out / name), str(ROOT / "tools" / "c" / f"{name}.c")],
            check=True,
            timeout=120,
        )
    return out


def pinned(argv: list[str], cpu: int) -> list[str]:
    if shutil.which("taskset") and (os.cpu_count() or 1) > cpu:
        return ["taskset", "-c", str(cpu), *argv]
    return argv


def start_server(argv: list[str]) -> Spawned:
    """Start a server pinned to the server CPU and wait for its ``listening on`` line.

    Raises:
        TargetError: It exited, or printed no such line within 20 s.
    """
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return spawn_listening(pinned(argv, SERVER_CPU), timeout=20.0, env=env, cwd=ROOT)


def server_cpu(pid: int) -> float:
    """CPU seconds used so far by the server and its child processes."""
    pids = [pid, *(procfs.children(pid) or [])]
    return sum(procfs.cpu_seconds(p) or 0.0 for p in pids)


def python_run(host: str, port: int, seconds: float, args: argparse.Namespace) -> Run:
    """One run of the project's load generator: rate, latency, round trips."""
    spec = LoadSpec(
        host,
        port,
        connections=args.connections,
        size=args.size,
        duration=seconds,
        tls=args.tls_settings,
    )
    result = run_load(spec)
    if not result.ok:
        raise RuntimeError(f"load failed: {result.first_error}")
    lat = result.latency.summary()
    return Run(
        result.round_trips_per_second,
        lat["p50"],
        lat["p99"],
        result.round_trips,
        result.handshakes_per_second,
        result.handshake_ms_mean,
    )


def c_run(c_dir: Path, host: str, port: int, seconds: float, args: argparse.Namespace) -> Run:
    """One run of the C ping-pong client: rate, latency, round trips."""
    client = [str(c_dir / "pingpong"), host, str(port), str(args.connections), str(args.size)]
    out = subprocess.run(
        pinned([*client, str(seconds)], LOAD_CPU),
        capture_output=True,
        text=True,
        timeout=seconds + 60,
    )
    if out.returncode != 0:
        raise RuntimeError(f"C client failed ({out.returncode}): {out.stderr or out.stdout}")
    data = json.loads(out.stdout)
    return Run(data["rps"], data["p50_us"], data["p99_us"], data["round_trips"])


@dataclass
class Run:
    """What one run measured."""

    rps: float
    p50: float
    p99: float
    round_trips: int
    handshakes_per_second: float = 0.0
    handshake_ms: float = 0.0


def measure_together(
    chosen: list[Target], work: str, c_dir: Path | None, args: argparse.Namespace
) -> None:
    """Start every server of ``chosen`` under ``work``, then run the load on each in turn.

    The runs are interleaved (run 1 on each server, then run 2 on each...),
    so that a change in what else the machine runs hits every server alike;
    the idle servers wait in ``epoll_wait`` and cost nothing meanwhile.
    """
    with contextlib.ExitStack() as stack:
        servers: list[tuple[Target, Spawned]] = []
        for target in chosen:
            server = start_server(target.command(work))
            stack.callback(server.stop, 10.0)
            servers.append((target, server))
            target.runs[work] = []

        def one(server: Spawned, seconds: float) -> tuple[Run, float]:
            host, port = server.address
            before = server_cpu(server.pid)
            if args.client == "c":
                assert c_dir is not None
                run = c_run(c_dir, host, port, seconds, args)
            else:
                run = python_run(host, port, seconds, args)
            return run, server_cpu(server.pid) - before

        for target, server in servers:
            print(f"priming {target.name}, --work {work}...", file=sys.stderr, flush=True)
            one(server, args.prime)
        for i in range(args.runs):
            for target, server in servers:
                print(
                    f"run {i + 1}/{args.runs}: {target.name}, --work {work}...",
                    file=sys.stderr,
                    flush=True,
                )
                run, cpu = one(server, args.seconds)
                target.runs[work].append(
                    {
                        "rps": run.rps,
                        "p50": run.p50,
                        "p99": run.p99,
                        "cpu_us": cpu / max(1, run.round_trips) * 1e6,
                        "hs_per_s": run.handshakes_per_second,
                        "hs_ms": run.handshake_ms,
                    }
                )


def ratio(value: float, base: float) -> str:
    return f"{value / base:.2f}x" if base else "-"


def table(
    found: dict[str, Target], chosen: list[str], works: list[str], *, tls: bool = False
) -> str:
    lines = [
        "| work | server | round trips/s | p50 us | p99 us | server CPU us/trip "
        "| vs single | vs asyncio | vs C |" + (" handshakes/s | handshake ms |" if tls else ""),
        "|---|---|---:|---:|---:|---:|---:|---:|---:|" + ("---:|---:|" if tls else ""),
    ]
    for work in works:
        single = found["single"].median(work, "rps")
        base_asyncio = found["asyncio"].median(work, "rps")
        base_c = found["c"].median(work, "rps")
        for name in chosen:
            target = found[name]
            if target.skipped:
                if work == works[0]:
                    lines.append(f"| {work} | {name} | skipped: {target.skipped} | | | | | | |")
                continue
            if not target.measured(work):
                continue
            rps = target.median(work, "rps")
            lines.append(
                f"| {work} | {name} | {rps:,.0f} | {target.median(work, 'p50'):,.0f} "
                f"| {target.median(work, 'p99'):,.0f} | {target.median(work, 'cpu_us'):.1f} "
                f"| {ratio(rps, single)} "
                f"| {ratio(rps, base_asyncio)} | {ratio(rps, base_c)} |"
                + (
                    f" {target.median(work, 'hs_per_s'):,.0f} "
                    f"| {target.median(work, 'hs_ms'):.2f} |"
                    if tls
                    else ""
                )
            )
    return "\n".join(lines)


def plot(
    found: dict[str, Target], chosen: list[str], works: list[str], path: str, title: str
) -> None:
    """Grouped bars, one group per work setting: round trips/s, p99, CPU per trip; log scales."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in chosen if any(found[n].measured(w) for w in works)]
    fig, (left, right, cost) = plt.subplots(1, 3, figsize=(15, 4.4))
    width = 0.8 / max(1, len(names))
    for i, name in enumerate(names):
        xs = [w + (i - (len(names) - 1) / 2) * width for w in range(len(works))]
        target = found[name]
        for axis, key in ((left, "rps"), (right, "p99"), (cost, "cpu_us")):
            values = [target.median(w, key) if target.measured(w) else 0.0 for w in works]
            axis.bar(xs, values, width, label=name)
    for axis, label in (
        (left, "round trips/s (higher is better)"),
        (right, "p99 latency, us (lower is better)"),
        (cost, "server CPU per round trip, us (lower is better)"),
    ):
        axis.set_yscale("log")
        axis.set_title(label)
        axis.set_xticks(range(len(works)), [f"--work {w}" for w in works])
    left.legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)


def machine() -> str:
    cpus = os.cpu_count() or 1
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpus} CPUs{f' ({model})' if model else ''}, {platform.system()}, Python " + (
        platform.python_version()
    )


def work_list(text: str) -> list[str]:
    """Parse ``--work``: comma-separated settings, each as the servers' ``--work`` takes it."""
    works = []
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        try:
            works.append(str(Work.parse(item)))
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{item}: {exc}") from None
    if not works:
        raise argparse.ArgumentTypeError("give at least one setting, e.g. none,block:1,cpu:200")
    return works


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=50, help="Connections (default 50)")
    parser.add_argument("--size", type=int, default=64, help="Message size in bytes (default 64)")
    parser.add_argument("--seconds", type=float, default=5.0, help="Seconds per run (default 5)")
    parser.add_argument("--runs", type=int, default=3, help="Runs per server (default 3)")
    parser.add_argument("--prime", type=float, default=1.0, help="Unmeasured seconds first")
    parser.add_argument(
        "--targets",
        default=",".join(ALL_TARGETS),
        help="Comma-separated servers to measure (default: all)",
    )
    parser.add_argument(
        "--work",
        type=work_list,
        default=["none"],
        metavar="LIST",
        help="Comma-separated handler costs (none, block:MS, cpu:US) to measure the reference "
        "models under (default: none)",
    )
    parser.add_argument(
        "--client",
        choices=["c", "python"],
        default="c",
        help="Load from the C ping-pong client, or from the project's load generator (default: c)",
    )
    parser.add_argument(
        "--tls",
        action="store_true",
        help="Speak TLS to every server (certificates made here with trustme); "
        "needs --client python",
    )
    parser.add_argument("--json", metavar="PATH", help="Also write the figures as JSON")
    parser.add_argument(
        "--plot", metavar="PNG", help="Draw bars of throughput, p99 and CPU per round trip"
    )
    args = parser.parse_args(argv)
    chosen = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = [t for t in chosen if t not in ALL_TARGETS]
    if unknown:
        parser.error(
            f"unknown target(s) {', '.join(unknown)}; choose from {', '.join(ALL_TARGETS)}"
        )
    if args.tls and args.client == "c":
        parser.error("--tls needs --client python: the C ping-pong client speaks no TLS")
    c_dir = build_c()
    if args.client == "c" and c_dir is None:
        parser.error("the C client needs a C compiler (cc); install one or use --client python")
    tls_cert: Path | None = None
    args.tls_settings = None
    if args.tls:
        # Removed at exit (the object's finalizer), keys included.
        certs_dir = tempfile.TemporaryDirectory(prefix="bench-tls-")
        ca_file, tls_cert = make_certs(Path(certs_dir.name))
        args.tls_settings = TlsSettings(ca=str(ca_file))
    found = targets(c_dir, tls_cert)
    if (os.cpu_count() or 1) > LOAD_CPU and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {LOAD_CPU})
    for work in args.work:
        measure_together(
            [
                found[name]
                for name in chosen
                if not found[name].skipped and (work == "none" or found[name].takes_work)
            ],
            work,
            c_dir,
            args,
        )
    yardstick: list[float] = []
    if (
        args.client == "python"
        and not args.tls
        and c_dir is not None
        and found["c"].measured("none")
    ):
        print("measuring the C client against the C server...", file=sys.stderr, flush=True)
        yardstick_target = Target("c", found["c"].argv)
        measure_together([yardstick_target], "none", c_dir, _c_client(args))
        yardstick = [run["rps"] for run in yardstick_target.runs["none"]]
    client = "C ping-pong client" if args.client == "c" else "the project's load generator"
    header = (
        f"{args.connections} connections, {args.size}-byte ping-pong from {client}, median of "
        f"{args.runs} x {args.seconds:g}s; server on CPU {SERVER_CPU}, load on CPU {LOAD_CPU}; "
        f"{machine()}"
    )
    if args.tls_settings is not None:
        header += f"; over TLS: {args.tls_settings.describe()}"
    print(header + "\n")
    print(table(found, chosen, args.work, tls=args.tls))
    if yardstick:
        c_rps = statistics.median(yardstick)
        load_rps = found["c"].median("none", "rps")
        print(
            f"\nLoad generator vs C client, both against the C server: "
            f"{load_rps:,.0f} / {c_rps:,.0f} = {load_rps / c_rps:.2f}x"
        )
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "setup": header,
                    "works": args.work,
                    "servers": {
                        n: {"runs": found[n].runs, "skipped": found[n].skipped} for n in chosen
                    },
                    "c-client-yardstick": yardstick,
                },
                indent=2,
            )
            + "\n"
        )
    if args.plot:
        plot(found, chosen, args.work, args.plot, header)
    return 0


def _c_client(args: argparse.Namespace) -> argparse.Namespace:
    """``args`` with the C client chosen (for the yardstick run)."""
    return argparse.Namespace(**{**vars(args), "client": "c"})


if __name__ == "__main__":
    sys.exit(main())
