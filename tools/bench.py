"""Benchmark echo servers side by side with the project's load generator.

Runs the same closed-loop ping-pong load (by default 64-byte messages over 50
connections, the median of 3 runs of 5 s after 1 s of priming) against each
server in one run, and prints a Markdown table with ratios to asyncio's
Protocol echo server and to a minimal C epoll echo server. Each server is
pinned to CPU 0 and the load to CPU 1 where the machine has two or more.

It also runs a small C ping-pong client against the C server, the yardstick
for the load generator itself (the "load generator vs C client" line).

    python tools/bench.py
    python tools/bench.py --seconds 2 --runs 1 --targets single,asyncio,c
    python tools/bench.py --json bench.json --plot bench.png

Benchmark-only: nothing here runs in the tests.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from conformance.load import LoadSpec, run_load  # noqa: E402
from conformance.spawn import Spawned, spawn_listening  # noqa: E402

SERVER_CPU = 0
LOAD_CPU = 1
UVLOOP = (
    "import runpy, sys, uvloop; uvloop.install(); sys.argv[0] = {path!r}; "
    "runpy.run_path({path!r}, run_name='__main__')"
)


@dataclass
class Target:
    name: str
    argv: list[str]
    runs: list[dict[str, Any]] = field(default_factory=list)
    skipped: str = ""

    def median(self, key: str) -> float:
        return statistics.median(run[key] for run in self.runs) if self.runs else 0.0


def targets(c_dir: Path | None) -> dict[str, Target]:
    py = sys.executable
    asyncio_echo = str(ROOT / "fixtures" / "servers" / "asyncio_echo.py")
    found = {
        "single": Target("single", [py, "-m", "reference", "single"]),
        "pool": Target("pool", [py, "-m", "reference", "pool", "--workers", "4"]),
        "multi-thread": Target(
            "multi-thread", [py, "-m", "reference", "multi", "--sub-reactors", "2"]
        ),
        "multi-process": Target(
            "multi-process",
            [py, "-m", "reference", "multi", "--sub-reactors", "2", "--mode", "process"],
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
    return found


def build_c() -> Path | None:
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


def measure(target: Target, args: argparse.Namespace) -> None:
    server = start_server(target.argv)
    try:
        host, port = server.address
        spec = LoadSpec(host, port, connections=args.connections, size=args.size)
        run_load(
            LoadSpec(
                spec.host,
                spec.port,
                connections=spec.connections,
                size=spec.size,
                duration=args.prime,
            )
        )
        for _ in range(args.runs):
            result = run_load(
                LoadSpec(
                    spec.host,
                    spec.port,
                    connections=spec.connections,
                    size=spec.size,
                    duration=args.seconds,
                )
            )
            if not result.ok:
                raise RuntimeError(f"{target.name}: load failed: {result.first_error}")
            lat = result.latency.summary()
            target.runs.append(
                {"rps": result.round_trips_per_second, "p50": lat["p50"], "p99": lat["p99"]}
            )
    finally:
        server.stop(grace=10.0)


def c_client(c_dir: Path, args: argparse.Namespace) -> list[float]:
    server = start_server([str(c_dir / "echo_epoll")])
    try:
        host, port = server.address
        client = [
            str(c_dir / "pingpong"),
            host,
            str(port),
            str(args.connections),
            str(args.size),
        ]
        subprocess.run(
            pinned([*client, str(args.prime)], LOAD_CPU),
            capture_output=True,
            timeout=60,
            check=True,
        )
        rates = []
        for _ in range(args.runs):
            out = subprocess.run(
                pinned([*client, str(args.seconds)], LOAD_CPU),
                capture_output=True,
                text=True,
                timeout=args.seconds + 60,
                check=True,
            )
            rates.append(float(json.loads(out.stdout)["rps"]))
        return rates
    finally:
        server.stop(grace=10.0)


def table(found: dict[str, Target], chosen: list[str], yardstick: list[float]) -> str:
    base_asyncio = found["asyncio"].median("rps") if "asyncio" in chosen else 0.0
    base_c = found["c"].median("rps") if "c" in chosen else 0.0
    lines = [
        "| server | round trips/s (median) | p50 us | p99 us | vs asyncio | vs C |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name in chosen:
        target = found[name]
        if target.skipped:
            lines.append(f"| {name} | skipped: {target.skipped} | | | | |")
            continue
        rps = target.median("rps")
        va = f"{rps / base_asyncio:.2f}x" if base_asyncio else "-"
        vc = f"{rps / base_c:.2f}x" if base_c else "-"
        lines.append(
            f"| {name} | {rps:,.0f} | {target.median('p50'):.0f} | {target.median('p99'):.0f} "
            f"| {va} | {vc} |"
        )
    if yardstick and base_c:
        c_rps = statistics.median(yardstick)
        lines.append("")
        lines.append(
            f"Load generator vs C client, both against the C server: "
            f"{base_c:,.0f} / {c_rps:,.0f} = {base_c / c_rps:.2f}x"
        )
    return "\n".join(lines)


def plot(found: dict[str, Target], chosen: list[str], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in chosen if not found[n].skipped]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    left.bar(names, [found[n].median("rps") for n in names])
    left.set_title("round trips/s (higher is better)")
    right.bar(names, [found[n].median("p99") for n in names])
    right.set_title("p99 latency, us (lower is better)")
    for axis in (left, right):
        axis.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    fig.savefig(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=50, help="Connections (default 50)")
    parser.add_argument("--size", type=int, default=64, help="Message size in bytes (default 64)")
    parser.add_argument("--seconds", type=float, default=5.0, help="Seconds per run (default 5)")
    parser.add_argument("--runs", type=int, default=3, help="Runs per server (default 3)")
    parser.add_argument("--prime", type=float, default=1.0, help="Unmeasured seconds first")
    parser.add_argument(
        "--targets",
        default="single,pool,multi-thread,multi-process,asyncio,uvloop,c",
        help="Comma-separated servers to measure",
    )
    parser.add_argument("--json", metavar="PATH", help="Also write the figures as JSON")
    parser.add_argument("--plot", metavar="PNG", help="Draw throughput and latency bars")
    args = parser.parse_args(argv)
    c_dir = build_c()
    found = targets(c_dir)
    chosen = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = [t for t in chosen if t not in found]
    if unknown:
        parser.error(f"unknown target(s) {', '.join(unknown)}; choose from {', '.join(found)}")
    if (os.cpu_count() or 1) > LOAD_CPU and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {LOAD_CPU})
    for name in chosen:
        if not found[name].skipped:
            print(f"measuring {name}...", file=sys.stderr, flush=True)
            measure(found[name], args)
    yardstick = c_client(c_dir, args) if c_dir and "c" in chosen else []
    print(
        f"{args.connections} connections, {args.size}-byte ping-pong, median of {args.runs} "
        f"x {args.seconds:g}s; server on CPU {SERVER_CPU}, load on CPU {LOAD_CPU}\n"
    )
    print(table(found, chosen, yardstick))
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {n: {"runs": found[n].runs, "skipped": found[n].skipped} for n in chosen}
                | {"c-client": yardstick},
                indent=2,
            )
        )
    if args.plot:
        plot(found, chosen, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
