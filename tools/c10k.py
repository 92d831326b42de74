"""C10K: hold 10,000 concurrent connections to each reference server, every byte checked.

    python tools/c10k.py                      # every model, 10,000 connections
    python tools/c10k.py --connections 2000 --models single

Each connection does a few ping-pong round trips while all of them are open;
the load generator checks every byte. The open-file limit is raised to the
hard limit where it is too low; when even that is too low, the run is skipped
with the reason. Loopback only; bounded in time.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

from bench import start_server  # noqa: E402
from conformance.load import LoadSpec, run_load  # noqa: E402

MODELS = {
    "single": ["single"],
    "pool": ["pool", "--workers", "4"],
    "multi-thread": ["multi", "--sub-reactors", "2"],
    "multi-process": ["multi", "--sub-reactors", "2", "--mode", "process"],
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=10_000, help="Default 10000")
    parser.add_argument("--rounds", type=int, default=3, help="Round trips per connection")
    parser.add_argument("--procs", type=int, default=2, help="Load processes (default 2)")
    parser.add_argument("--models", default=",".join(MODELS), help="Comma-separated models")
    args = parser.parse_args(argv)
    # The server and every load process each hold about their share of descriptors.
    needed = args.connections + 256
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < needed:
        print(f"skipped: the open-file hard limit is {hard}, {needed} are needed")
        return 0
    if soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    print("| model | connections | round trips | all exact | server alive | seconds |")
    print("|---|---:|---:|---|---|---:|")
    failed = False
    for name in args.models.split(","):
        server = start_server([sys.executable, "-m", "reference", *MODELS[name]])
        try:
            host, port = server.address
            started = time.monotonic()
            result = run_load(
                LoadSpec(
                    host,
                    port,
                    connections=args.connections,
                    rounds=args.rounds,
                    duration=120,
                    procs=args.procs,
                    connect_timeout=30,
                )
            )
            took = time.monotonic() - started
        finally:
            server.stop(grace=10.0)
        failed |= not result.ok
        print(
            f"| {name} | {result.connections_opened:,} | {result.round_trips:,} | "
            f"{'yes' if not result.errors else f'NO: {result.errors_by_name()}'} | "
            f"{'yes' if result.server_alive else 'NO'} | {took:.1f} |",
            flush=True,
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
