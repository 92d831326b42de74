"""The load generator with the RESP model against redis-server, beside redis-benchmark.

Starts one ``redis-server`` (no persistence) and, in turns (``--runs`` rounds,
the median kept), measures:

- ``redis-benchmark -c C -n N -t ping,set,get --csv`` (Debian's redis-tools,
  the C client Redis users trust; closed loop, no pipelining): requests per
  second and p99 for each of PING, SET and GET;
- ``reactor-conformance load --protocol resp -c C --size 3`` (3-byte values,
  redis-benchmark's default), with 1 and with ``--procs`` load processes:
  round trips per second and p99, every reply checked byte for byte against
  the RESP model (a mix of SET, GET, INCR, DEL, PING and ECHO on keys of each
  connection's own).

Prints a Markdown table with each rate's ratio to redis-benchmark's (the mean
of its PING, SET and GET rates). Nothing is pinned: redis, the client and
this script share the machine's CPUs.

    python tools/bench_redis.py
    python tools/bench_redis.py --seconds 5 --runs 3 --procs 2 --connections 50

Benchmark-only: nothing here runs in the tests.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from conformance.load import LoadSpec, run_load  # noqa: E402
from conformance.targets.target import TargetKind, TargetSpec, start_target  # noqa: E402

REDIS = "redis-server --port {port} --bind 127.0.0.1 --save '' --appendonly no"


def redis_benchmark(port: int, args: argparse.Namespace) -> dict[str, tuple[float, float]]:
    """redis-benchmark's rate and p99 (us) for PING (multi-bulk), SET and GET."""
    requests = max(10_000, int(args.rate_guess * args.seconds))
    argv = ["redis-benchmark", "-p", str(port), "-c", str(args.connections), "-n",
            str(requests), "-t", "ping,set,get", "--csv"]  # fmt: skip
    out = subprocess.run(argv, capture_output=True, text=True, timeout=args.seconds * 20 + 60)
    if out.returncode != 0:
        raise RuntimeError(f"redis-benchmark failed: {out.stderr or out.stdout}")
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    return {
        row["test"]: (float(row["rps"]), float(row["p99_latency_ms"]) * 1000)
        for row in rows
        if row["test"] in ("PING_MBULK", "SET", "GET")
    }


def our_load(port: int, procs: int, args: argparse.Namespace) -> tuple[float, float]:
    spec = LoadSpec("127.0.0.1", port, connections=args.connections, size=3,
                    duration=args.seconds, procs=procs, model="resp")  # fmt: skip
    result = run_load(spec)
    if not result.ok:
        raise RuntimeError(f"load failed: {result.summary_line()}")
    return result.round_trips_per_second, result.latency.summary()["p99"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="Seconds per run (about)")
    parser.add_argument("--runs", type=int, default=3, help="Rounds of runs (median kept)")
    parser.add_argument("--connections", type=int, default=50, help="Connections (-c)")
    parser.add_argument("--procs", type=int, default=min(2, os.cpu_count() or 1),
                        help="Load processes of the second load run")  # fmt: skip
    parser.add_argument("--rate-guess", type=float, default=40_000,
                        help="Requests/s to size redis-benchmark's -n by")  # fmt: skip
    args = parser.parse_args(argv)
    for tool in ("redis-server", "redis-benchmark"):
        if shutil.which(tool) is None:
            print(f"{tool} is not installed (Debian: redis-server, redis-tools)", file=sys.stderr)
            return 2
    server = start_target(TargetSpec(TargetKind.SPAWN, REDIS), start_timeout=20.0)
    bench: dict[str, list[tuple[float, float]]] = {}
    ours: dict[int, list[tuple[float, float]]] = {1: [], args.procs: []}
    try:
        port = server.address.port
        for _ in range(args.runs):
            for test, figures in redis_benchmark(port, args).items():
                bench.setdefault(test, []).append(figures)
            for procs in ours:
                ours[procs].append(our_load(port, procs, args))
    finally:
        server.stop()
    print(table(bench, ours, args))
    return 0


def _median(runs: list[tuple[float, float]], i: int) -> float:
    return statistics.median(run[i] for run in runs)


def table(
    bench: dict[str, list[tuple[float, float]]],
    ours: dict[int, list[tuple[float, float]]],
    args: argparse.Namespace,
) -> str:
    base = statistics.mean(_median(runs, 0) for runs in bench.values())
    lines = [
        f"{os.cpu_count()} CPUs; {args.connections} connections, 3-byte values, median of "
        f"{args.runs} runs of about {args.seconds:g} s; ratios to redis-benchmark's mean "
        f"of PING, SET and GET ({base:,.0f}/s)",
        "",
        "| client | requests/s | vs redis-benchmark | p99 (us) |",
        "|---|---:|---:|---:|",
    ]
    for test, runs in bench.items():
        rate = _median(runs, 0)
        lines.append(f"| redis-benchmark -t {test.lower()} | {rate:,.0f} | "
                     f"{rate / base:.2f}x | {_median(runs, 1):,.0f} |")  # fmt: skip
    for procs, runs in ours.items():
        rate = _median(runs, 0)
        what = f"load --protocol resp, {procs} process{'es' if procs > 1 else ''}"
        lines.append(f"| {what}, every reply checked | {rate:,.0f} | {rate / base:.2f}x | "
                     f"{_median(runs, 1):,.0f} |")  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
