"""The ``reactor-conformance`` command.

Sub-commands:

- ``run``: run the catalogue against a target. A thin front over the pytest
  plugin: it checks the options, starts the target once, builds the pytest
  arguments, runs pytest in-process (``-n N`` for xdist), then prints its own
  summary: one line per check and the bug report of each failure.
- ``list``: the catalogue (ID, level, category, spec reference, title).
- ``load``: put load on a target with :mod:`conformance.load` (every byte
  verified, faults on demand) and report throughput, latency and errors.
- ``serve MODEL``: run a reference server (the options of
  ``python -m reference``, defined once in :mod:`reference.cli`).

Exit codes of ``run``: 0 every MUST passed (and every SHOULD under
``--strict``), 1 a check failed, 2 usage error, 3 target unreachable or never
listening. Every error is one line on stderr.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from conformance import __version__
from conformance.catalogue import CATALOGUE, CATEGORIES, select
from conformance.checks import Check
from conformance.errors import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    TargetError,
    UsageError,
)
from conformance.load import Faults, LoadError, LoadSpec, format_json, run_load
from conformance.oracle import load_oracle
from conformance.target import REFERENCE_MODELS, TargetSpec, start_target
from reference.cli import ArgumentParser, add_model_parsers, serve

__all__ = ["build_parser", "main"]


def _count(text: str) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def _positive(text: str) -> int:
    value = _count(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_target_options(parser: argparse.ArgumentParser, *, oracle: bool = True) -> None:
    """The options that name the server under test (at most one of them)."""
    group = parser.add_argument_group("target (default: the reference single-reactor server)")
    group.add_argument("--target", metavar="HOST:PORT", help="Test the server listening there")
    group.add_argument(
        "--spawn",
        metavar="CMD",
        help="Start CMD and test it: {port} is replaced by a free port, or CMD prints "
        "'listening on HOST:PORT'; it is stopped at the end",
    )
    group.add_argument(
        "--reference",
        metavar="MODEL",
        help=f"Test a reference server: {', '.join(REFERENCE_MODELS)}",
    )
    if not oracle:
        return
    parser.add_argument(
        "--oracle",
        default="echo",
        metavar="SPEC",
        help="What the server should answer: echo, discard or package.module:Class "
        "(default: %(default)s)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``reactor-conformance``."""
    parser = ArgumentParser(
        prog="reactor-conformance",
        description="Reference Reactor-pattern TCP servers and a conformance suite.",
        epilog="Example: reactor-conformance run --spawn 'my-server --port {port}'",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)

    run_parser = commands.add_parser(
        "run",
        help="Run the conformance checks against a server",
        description="Run the conformance checks against a server and report each one.",
    )
    add_target_options(run_parser)
    run_parser.add_argument("--checks", metavar="ID,...", help="Run only these checks")
    run_parser.add_argument(
        "--category", metavar="NAME,...", help=f"Run only these: {', '.join(CATEGORIES)}"
    )
    run_parser.add_argument(
        "--strict", action="store_true", help="A failed SHOULD or MAY fails the run"
    )
    run_parser.add_argument(
        "-n",
        "--workers",
        type=_count,
        default=0,
        metavar="N",
        help="Run checks in N processes (pytest-xdist); 0 runs them here (default: 0)",
    )
    run_parser.add_argument(
        "--junitxml", metavar="PATH", help="Also write a JUnit XML report to PATH"
    )
    run_parser.set_defaults(command=run)

    list_parser = commands.add_parser(
        "list", help="List the checks", description="List the checks of the catalogue."
    )
    list_parser.set_defaults(command=list_checks)

    load_parser = commands.add_parser(
        "load",
        help="Put load on a server, verifying every byte",
        description="Put load on a server from many connections, verify every byte echoed, "
        "and report round trips/s, MB/s, latency percentiles, errors and the server's "
        "liveness at the end. Exit 0 when nothing went wrong, 1 otherwise.",
        epilog="Examples: reactor-conformance load --reference single -c 200 --duration 10; "
        "reactor-conformance load --target 127.0.0.1:7000 --faults reset=1%%,half-close=1%%,"
        "slow-reader=1%%,connect-storm=500 --json",
    )
    add_target_options(load_parser, oracle=False)
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
        "--faults",
        default="",
        metavar="SPEC",
        help="Faults during the load: reset=P%%,half-close=P%%,slow-reader=P%%,connect-storm=N",
    )
    load_parser.add_argument("--seed", type=int, default=1, help="Seed of payloads and faults")
    load_parser.add_argument("--json", action="store_true", help="Print the result as JSON")
    load_parser.set_defaults(command=load)

    serve_parser = commands.add_parser(
        "serve",
        help="Run a reference server",
        description="Run a reference server until SIGINT or SIGTERM.",
    )
    models = serve_parser.add_subparsers(title="models", metavar="MODEL", required=True)
    add_model_parsers(models)
    serve_parser.set_defaults(command=serve)
    return parser


def list_checks(args: argparse.Namespace) -> int:
    """Print the catalogue, one check a line."""
    width = max(len(c.id) for c in CATALOGUE)
    for check in CATALOGUE:
        print(
            f"{check.id:<{width}}  {check.level.value:<6}  {check.category:<13}  "
            f"{check.spec}: {check.title}"
        )
    return EXIT_OK


@dataclass
class _Result:
    check: str
    outcome: str
    duration: float
    report: str = ""


@dataclass(eq=False)
class _Collector:
    """A pytest plugin object, in this process only: keeps each check's report."""

    results: dict[str, _Result] = field(default_factory=dict)

    def pytest_runtest_logreport(self, report: object) -> None:
        import pytest

        from conformance.plugin import REPORT, nonstrict_report

        assert isinstance(report, pytest.TestReport)
        props = dict(report.user_properties)
        check_id = str(props.get("conformance_check", report.nodeid))
        if report.when == "call" or report.failed:
            outcome = "FAIL" if report.failed else "PASS"
            text = str(props.get(REPORT, report.longreprtext)) if report.failed else ""
            nonstrict = nonstrict_report(report)
            if nonstrict is not None:
                outcome, text = "NON-STRICT", nonstrict
            previous = self.results.get(check_id)
            if previous is None or previous.outcome == "PASS":
                self.results[check_id] = _Result(check_id, outcome, report.duration, text)


def _replay_prefix(spec: TargetSpec, oracle: str, strict: bool) -> str:
    words = ["reactor-conformance", "run", *spec.options()]
    if oracle != "echo":
        words += ["--oracle", oracle]
    if strict:
        words.append("--strict")
    return shlex.join(words)


def run(args: argparse.Namespace) -> int:
    """``reactor-conformance run``: check the options, start the target, run pytest."""
    try:
        spec = TargetSpec.from_options(args.target, args.spawn, args.reference)
        ids = [i for i in (args.checks or "").split(",") if i.strip()]
        cats = [c for c in (args.category or "").split(",") if c.strip()]
        checks = select(ids, cats)
        load_oracle(args.oracle)
    except UsageError as exc:
        print(f"reactor-conformance: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if not checks:
        print("reactor-conformance: error: no check selected", file=sys.stderr)
        return EXIT_USAGE
    try:
        running = start_target(spec)
    except TargetError as exc:
        print(f"reactor-conformance: target unreachable: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    try:
        return _run_pytest(args, spec, running.address, running.pid, checks)
    finally:
        running.stop()


def _run_pytest(
    args: argparse.Namespace,
    spec: TargetSpec,
    address: object,
    pid: int | None,
    checks: list[Check],
) -> int:
    import pytest

    replay = _replay_prefix(spec, args.oracle, args.strict)
    argv = [
        "-p", "conformance.plugin",
        "-p", "no:cacheprovider",
        # pytest-benchmark, where installed, warns under xdist; nothing here is a benchmark.
        "-p", "no:benchmark",
        "-c", os.devnull,
        "--rootdir", os.getcwd(),
        "--pyargs", "conformance",
        "--target", str(address),
        "--oracle", args.oracle,
        "--checks", ",".join(c.id for c in checks),
        "--conformance-replay", replay,
        "-q", "--no-header", "--tb=no", "-rN",
        # The suite is imported already (this command); nothing in it relies on assert rewriting.
        "--assert=plain",
    ]  # fmt: skip
    if pid is not None:
        argv += ["--conformance-server-pid", str(pid)]
    if args.strict:
        argv.append("--conformance-strict")
    if args.workers:
        argv += ["-n", str(args.workers), "--dist", "loadgroup"]
    if args.junitxml:
        argv += ["--junitxml", args.junitxml]
    collector = _Collector()
    print(f"reactor-conformance: {len(checks)} checks against {spec.describe()} at {address}")
    start = time.monotonic()
    code = pytest.main(argv, plugins=[collector])
    elapsed = time.monotonic() - start
    if code not in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED) or not collector.results:
        print(f"reactor-conformance: error: pytest ended with {code!r}", file=sys.stderr)
        return EXIT_USAGE if code == pytest.ExitCode.USAGE_ERROR else EXIT_FAILED
    return _summarise(collector, checks, elapsed, args.strict)


def _summarise(collector: _Collector, checks: list[Check], elapsed: float, strict: bool) -> int:
    print()
    failing = False
    for check in checks:
        result = collector.results.get(check.id)
        outcome = result.outcome if result else "NOT RUN"
        duration = f"{result.duration:6.2f}s" if result else "      -"
        print(f"{outcome:<10}  {check.id:<17} {check.level.value:<6} {duration}  {check.title}")
        if outcome in ("FAIL", "NOT RUN"):
            failing = True
    reports = [r for r in collector.results.values() if r.report]
    for result in reports:
        print()
        print(result.report)
    counts = {
        word: sum(1 for r in collector.results.values() if r.outcome == word)
        for word in ("PASS", "FAIL", "NON-STRICT")
    }
    print()
    print(
        f"reactor-conformance: {counts['PASS']} passed, {counts['FAIL']} failed, "
        f"{counts['NON-STRICT']} non-strict in {elapsed:.1f}s" + (" (strict)" if strict else "")
    )
    return EXIT_FAILED if failing else EXIT_OK


def load(args: argparse.Namespace) -> int:
    """``reactor-conformance load``: start the target, run the load, report."""
    try:
        spec = TargetSpec.from_options(args.target, args.spawn, args.reference)
        faults = Faults.parse(args.faults)
        LoadSpec("127.0.0.1", 1, **_load_settings(args, faults)).validate()
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

    try:
        if not args.json:
            print(f"reactor-conformance: load on {spec.describe()} at {address}")
        result = run_load(
            LoadSpec(address.host, address.port, **_load_settings(args, faults)),
            progress=progress,
        )
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


def _load_settings(args: argparse.Namespace, faults: Faults) -> dict[str, Any]:
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
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``reactor-conformance``."""
    args = build_parser().parse_args(argv)
    try:
        result: int = args.command(args)
    except BrokenPipeError:
        # The reader went away (``| head``): stop quietly, as other tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED
    return result
