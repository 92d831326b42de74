"""``reactor-conformance load``: put load on one server, every byte verified.

The command starts (or reaches) the target, runs :func:`conformance.load.run_load`
with the options as a :class:`~conformance.load.LoadSpec`, and prints the
result's summary (or JSON). With ``--hosts`` the load runs from those execnet
gateways instead (:mod:`conformance.load.hosts`): stderr names each host's
load process once all are ready, and the result lists every host. With
``--tls`` (the run's ``--tls*`` options, from the one option table) every load
connection speaks TLS: the header says which, and the summary (and ``--json``)
adds the handshakes completed, per second, and their mean time. Exit 0
when nothing went wrong, 1 otherwise (a host that failed mid-run included),
2 on a usage error, 3 when the target or a host cannot be reached.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from conformance.errors import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    TargetError,
    UsageError,
)
from conformance.load import Faults, LoadError, LoadSpec, format_json, run_load
from conformance.load.hosts import HostError, HostsResult, parse_hosts, run_hosts, share_out
from conformance.run.plan import TARGET_DESTS, Front, add_options
from conformance.targets.target import TargetSpec, start_target
from conformance.tls import TlsSettings, tls_from_options
from reference.cli import at_least

__all__ = ["add_load_parser", "load"]

_positive = at_least(1)
#: The ``--tls*`` options of the option table.
_TLS_DESTS = frozenset(
    {"tls", "tls_ca", "tls_insecure", "tls_server_name", "tls_cert", "tls_key", "tls_version"}
)


def add_load_parser(commands: Any) -> None:
    """Add the ``load`` sub-command to ``commands`` (``add_subparsers``' result)."""
    load_parser = commands.add_parser(
        "load",
        help="Put load on a server, verifying every byte",
        description="Put load on a server from many connections, verify every byte echoed, "
        "and report round trips/s, MB/s, latency percentiles, errors and the server's "
        "liveness at the end. Exit 0 when nothing went wrong, 1 otherwise.",
        epilog="Examples: reactor-conformance load --reference single -c 200 --duration 10; "
        "reactor-conformance load --target 127.0.0.1:7000 --faults reset=1%,half-close=1%,"
        "slow-reader=1%,connect-storm=500 --json",
    )
    load_parser.add_argument(
        "-c", "--connections", type=_positive, default=50, help="Connections (default: %(default)s)"
    )
    load_parser.add_argument(
        "--size", type=_positive, default=64, help="Ping-pong message size in bytes (default: 64)"
    )
    load_parser.add_argument(
        "--mode",
        choices=["pingpong", "stream"],
        default="pingpong",
        help="Closed-loop ping-pong, or streaming with a window in flight (default: %(default)s)",
    )
    load_parser.add_argument(
        "--window",
        type=_positive,
        default=64 * 1024,
        help="Stream mode: bytes in flight per connection (default: %(default)s)",
    )
    load_parser.add_argument(
        "--duration", type=float, default=5.0, help="Seconds of load (default: %(default)s)"
    )
    load_parser.add_argument(
        "--rounds",
        type=_positive,
        help="Ping-pong: stop each connection after N round trips (--duration still bounds it)",
    )
    load_parser.add_argument(
        "--procs", type=_positive, default=1, help="Load processes (default: %(default)s)"
    )
    load_parser.add_argument(
        "--hosts",
        action="append",
        default=[],
        metavar="SPEC",
        help="Run the load from this execnet gateway: popen (a new interpreter here), "
        "ssh=USER@HOST (python3 there, or //python=PATH; //ssh_config=FILE for ssh -F), "
        "with *N load processes there (default: --procs); repeat once per host. A host "
        "needs only Python 3.11+: the load generator is sent to it",
    )
    load_parser.add_argument(
        "--faults",
        default="",
        metavar="SPEC",
        help="Faults during the load: reset=P%%,half-close=P%%,slow-reader=P%%,connect-storm=N",
    )
    # The options it shares with run, and its target, come from the option table.
    add_options(load_parser.add_argument, Front.LOAD, only=frozenset({"protocol"}))
    tls_group = load_parser.add_argument_group(
        "TLS (each load connection speaks TLS; the summary adds handshakes/s)"
    )
    add_options(tls_group.add_argument, Front.LOAD, only=_TLS_DESTS)
    load_parser.add_argument("--seed", type=int, default=1, help="Seed of payloads and faults")
    load_parser.add_argument("--json", action="store_true", help="Print the result as JSON")
    load_parser.set_defaults(command=load)
    group = load_parser.add_argument_group("target (default: the reference single-reactor server)")
    add_options(group.add_argument, Front.LOAD, only=TARGET_DESTS)


def load(args: argparse.Namespace) -> int:
    """``reactor-conformance load``: start the target, run the load, report."""
    try:
        spec = TargetSpec.from_options(args.target, args.spawn, args.reference)
        faults = Faults.parse(args.faults)
        tls = tls_from_options(args)
        hosts = parse_hosts(args.hosts)
        if hosts:
            share_out(LoadSpec("127.0.0.1", 1, **_load_settings(args, faults, tls)), hosts)
        else:
            LoadSpec("127.0.0.1", 1, **_load_settings(args, faults, tls)).validate()
    except (UsageError, ValueError) as exc:
        print(f"reactor-conformance: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        running = start_target(spec)
    except TargetError as exc:
        print(f"reactor-conformance: target unreachable: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    address = running.address
    tty = sys.stderr.isatty()

    def progress(elapsed: float, trips: int, nbytes: int) -> None:
        if tty:
            rate = trips / elapsed if elapsed else 0.0
            sys.stderr.write(
                f"\r{elapsed:6.1f}s  {trips:,} round trips  {rate:,.0f}/s  "
                f"{nbytes / 1e6:,.1f} MB verified "
            )
            sys.stderr.flush()

    load_spec = LoadSpec(address.host, address.port, **_load_settings(args, faults, tls))
    try:
        if not args.json:
            where = f" from {len(hosts)} host{'s' if len(hosts) > 1 else ''}" if hosts else ""
            over = "" if tls is None else f" over TLS: {tls.describe()}"
            print(f"reactor-conformance: load on {spec.describe()} at {address}{where}{over}")
        if hosts:
            return _report(
                run_hosts(load_spec, hosts, progress=progress, on_ready=_say_ready), args.json
            )
        result = run_load(load_spec, progress=progress)
    except HostError as exc:
        print(f"reactor-conformance: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except LoadError as exc:
        print(f"reactor-conformance: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        if tty:
            sys.stderr.write("\n")
        running.stop()
    if args.json:
        print(format_json(result))
    else:
        print(result.summary_line())
        if result.first_error is not None:
            print(f"first error: {result.first_error}")
    return EXIT_OK if result.ok else EXIT_FAILED


def _say_ready(pids: dict[str, int]) -> None:
    where = ", ".join(f"{label} pid {pid}" for label, pid in pids.items())
    print(f"reactor-conformance: hosts ready, go: {where}", file=sys.stderr, flush=True)


def _report(result: HostsResult, as_json: bool) -> int:
    if as_json:
        print(json.dumps(result.to_data(), indent=2, sort_keys=True))
    else:
        print(result.summary_line())
        if result.result.first_error is not None:
            print(f"first error: {result.result.first_error}")
    return EXIT_OK if result.ok else EXIT_FAILED


def _load_settings(
    args: argparse.Namespace, faults: Faults, tls: TlsSettings | None
) -> dict[str, Any]:
    return {
        "connections": args.connections,
        "size": args.size,
        "mode": args.mode,
        "window": args.window,
        "duration": args.duration,
        "rounds": args.rounds,
        "procs": args.procs,
        "faults": faults,
        "seed": args.seed,
        "model": args.protocol,
        "tls": tls,
    }
