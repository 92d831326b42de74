"""The ``reactor-conformance`` command.

Sub-commands:

- ``run``: run the catalogue against one target or several side by side. A
  thin front over the pytest plugin: it checks the options, starts each target
  once, builds the pytest arguments, runs pytest in-process (``-n N`` or
  ``-n auto`` for xdist) with pytest's own terminal output off, shows a
  progress line (on a terminal), then prints its summary from the plugin's
  results (:mod:`conformance.fronts.console`): the verdicts (a column per target),
  the bug report of each failure, the counts, and the paths of the reports
  written (``--report-json``, ``--report-html``, ``--junitxml``).
- ``list``: the catalogue (ID, level, category, spec reference, title).
- ``load``: put load on a target with :mod:`conformance.load` (every byte
  verified, faults on demand) and report throughput, latency and errors.
- ``serve MODEL``: run a reference server (the options of
  ``python -m reference``, defined once in :mod:`reference.cli`).

Exit codes of ``run``: 0 every MUST passed (and every SHOULD under
``--strict``), 1 a check failed, 2 usage error, 3 target unreachable or never
listening, 4 a report could not be written, 128 plus the signal's number when
one stopped the run (the verdicts so far are shown). Every error is one line
on stderr.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from conformance.checks import CATALOGUE
from conformance.errors import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    TargetError,
    UsageError,
)
from conformance.fronts.console import Progress, summarise
from conformance.fronts.invoke import run_pytest
from conformance.fronts.load_command import add_load_parser
from conformance.run.plan import (
    TARGET_DESTS,
    Front,
    add_options,
    check_report_path,
    plan_from_options,
)
from conformance.run.results import (
    use_colour,
)
from conformance.run.session import PlannedRun, ReportFile, ReportKind, Session
from conformance.run.stopping import Stopped, install, requested, stop_on_signal
from conformance.targets.target import TargetKind, server_nofile_header
from conformance.version import __version__
from reference.cli import ArgumentParser, add_model_parsers, at_least, serve

__all__ = ["build_parser", "main"]


_count = at_least(0)
_positive = at_least(1)


def _workers(text: str) -> str:
    if text == "auto":
        return text
    try:
        return str(_count(text))
    except argparse.ArgumentTypeError as exc:
        raise argparse.ArgumentTypeError(f"{exc}, or 'auto'") from None


_RUN_EXAMPLES = """\
examples:
  reactor-conformance run --spawn 'my-server --port {port}'
  reactor-conformance run --target 127.0.0.1:7000 --checks 'ECHO-BASIC-*,ECHO-RESET-1'
  reactor-conformance run -n auto --reference single --reference pool --reference multi
  reactor-conformance run --spawn "socat TCP-LISTEN:{port},reuseaddr,fork EXEC:cat" \\
      --report-json report.json --report-html report.html --junitxml junit.xml
"""

_MAIN_EXAMPLES = """\
examples:
  reactor-conformance list
  reactor-conformance run --spawn 'my-server --port {port}'
  reactor-conformance run -n auto --target 127.0.0.1:7000 --report-html report.html
  reactor-conformance load --reference single -c 200 --duration 10
  reactor-conformance serve pool --port 7000

'reactor-conformance COMMAND --help' describes each command.
"""


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``reactor-conformance``."""
    parser = ArgumentParser(
        prog="reactor-conformance",
        description="Reference Reactor-pattern TCP servers and a conformance suite.",
        epilog=_MAIN_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)

    run_parser = commands.add_parser(
        "run",
        help="Run the conformance checks against one server or several",
        description="Run the conformance checks against one server, or several side by side, "
        "and report each check: PASS, FAIL, NON-STRICT (a failed SHOULD or MAY) or SKIPPED. "
        "Exit 0 when every target passed every MUST (every check under --strict), 1 when one "
        "failed, 2 on a usage error, 3 when a target cannot be reached, 4 when a report "
        "cannot be written.",
        epilog=_RUN_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    targets = run_parser.add_argument_group(
        "targets (repeat any of these to test several side by side; default: reference single)"
    )
    reports = run_parser.add_argument_group("reports")

    def add(*flags: str, **settings: Any) -> None:
        dest = settings["dest"]
        group = targets if dest in TARGET_DESTS else reports if dest.startswith("report_") else None
        (group or run_parser).add_argument(*flags, **settings)

    add_options(add, Front.CLI)
    run_parser.add_argument(
        "-n",
        "--workers",
        type=_workers,
        default="0",
        metavar="N|auto",
        help="Run checks in N processes, or one per CPU with 'auto' (pytest-xdist); "
        "0 runs them here (default: 0)",
    )
    reports.add_argument(
        "--junitxml", metavar="PATH", help="Write a JUnit XML report to PATH (test name: check ID)"
    )
    run_parser.set_defaults(command=run)

    list_parser = commands.add_parser(
        "list",
        help="List the checks",
        description="List the checks of the catalogue: ID, level, category, spec, title, "
        "and the rules a check judges at their own levels.",
    )
    list_parser.set_defaults(command=list_checks)

    add_load_parser(commands)

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
    """Print the catalogue, one check a line, in aligned columns."""
    widths = [
        max(len(c.id) for c in CATALOGUE),
        max(len(c.level.value) for c in CATALOGUE),
        max(len(c.category) for c in CATALOGUE),
    ]
    for check in CATALOGUE:
        cells = (check.id, check.level.value, check.category)
        row = "  ".join(f"{cell:<{w}}" for cell, w in zip(cells, widths, strict=True))
        print(f"{row}  {check.spec}: {check.title}")
        for rule in check.rules:
            print(f"{'':<{widths[0]}}  judges {rule.line}")
    return EXIT_OK


def _error(message: str, code: int) -> int:
    print(f"reactor-conformance: {message}", file=sys.stderr)
    return code


def run(args: argparse.Namespace) -> int:
    """``reactor-conformance run``: the plan, its session, pytest, the summary."""
    try:
        plan = plan_from_options(args, Front.CLI)
        check_report_path(args.junitxml, "--junitxml")
    except UsageError as exc:
        return _error(f"error: {exc}", EXIT_USAGE)
    session = Session(plan)
    try:
        session.start()
    except TargetError as exc:
        return _error(f"target unreachable: {exc}", EXIT_UNREACHABLE)
    try:
        return _run_pytest(args, session)
    finally:
        session.stop()


#: Workers per CPU beyond which ``-n`` is capped: checks wait on the network, not the
#: CPU, but each worker is a Python process with the whole suite imported.
WORKERS_PER_CPU = 4


def _worker_count(requested: str, items: int) -> tuple[int, str | None]:
    """The xdist workers for ``-n REQUESTED`` with ``items`` checks to run, and why it was capped.

    ``auto`` is one per CPU this process may run on. A count above the checks
    to run, or above :data:`WORKERS_PER_CPU` per CPU, is capped (the line
    returned says so); 0 runs the checks in this process.
    """
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cpus = cpus or 1
    wanted = cpus if requested == "auto" else int(requested)
    if wanted == 0:
        return 0, None
    limit = max(1, min(items, WORKERS_PER_CPU * cpus))
    if wanted <= limit:
        return wanted, None
    if requested == "auto":
        return limit, None
    why = (
        f"{items} check{'s' if items != 1 else ''} to run"
        if limit == items
        else f"{WORKERS_PER_CPU} per CPU on {cpus} CPUs"
    )
    return limit, f"-n {requested} capped at {limit} worker{'s' if limit != 1 else ''} ({why})"


def _run_pytest(args: argparse.Namespace, session: Session) -> int:
    argv = [
        "-p", "no:cacheprovider",
        # This command prints its own progress and summary.
        "-p", "no:terminal",
        "--pyargs", "conformance",
        # The suite is imported already (this command); nothing in it relies on assert rewriting.
        "--assert=plain",
    ]  # fmt: skip
    workers, fewer = _worker_count(args.workers, len(session.plan.checks) * len(session.targets))
    if workers:
        argv += ["-n", str(workers), "--dist", "loadgroup"]
    plan = session.plan
    plugins: list[object] = [PlannedRun(session)]
    if sys.stderr.isatty():
        plugins.append(
            Progress(len(plan.checks) * len(plan.targets), use_colour(sys.stderr, os.environ))
        )
    for target in session.targets:
        print(
            f"reactor-conformance: {len(plan.checks)} checks against {target.name} "
            f"({target.spec.describe()}) at {target.address}"
        )
        for note in session.board.notes(target.name) if session.board is not None else ():
            print(f"reactor-conformance: {target.name}: {note.detail}")
    if any(t.spec.kind is not TargetKind.ADDRESS for t in session.targets):
        print(f"reactor-conformance: {server_nofile_header(plan.server_nofile)}")
    if plan.protocol != "echo":
        print(f"reactor-conformance: the checks speak the {plan.protocol} protocol model")
    if plan.load_hosts:
        print(f"reactor-conformance: the load checks run from {', '.join(plan.load_hosts)}")
    if plan.tls is not None:
        print(f"reactor-conformance: over TLS: {plan.tls.describe()}")
    if fewer:
        print(f"reactor-conformance: {fewer}")
    bound = plan.bound()
    capped = f" (--timeout {plan.timeout:g}s)" if plan.timeout is not None else ""
    print(f"reactor-conformance: the run ends within at most {bound:.0f}s{capped}")
    sys.stdout.flush()
    with tempfile.TemporaryDirectory(prefix="reactor-conformance-") as scratch:
        # pytest writes the JUnit report here; it is copied to --junitxml at the end, where
        # a failure (a full disk) is one line, not a traceback that loses the other reports.
        junit = Path(scratch) / "junit.xml"
        if args.junitxml:
            argv += ["--junitxml", str(junit)]
        with _watchdog(bound):
            code = run_pytest(argv, plugins=plugins)
        if args.junitxml:
            _deliver(junit, args.junitxml, session)
    results = session.results
    if code == pytest.ExitCode.INTERRUPTED:
        # pytest took the signal's KeyboardInterrupt and wrote the partial reports.
        if results is not None:
            summarise(results, session, use_colour(sys.stdout, os.environ))
            sys.stdout.flush()
        raise Stopped(requested() or signal.SIGINT)
    if code not in (EXIT_OK, EXIT_FAILED) or results is None:
        return _error(
            f"error: pytest ended with exit code {code}",
            EXIT_USAGE if code == pytest.ExitCode.USAGE_ERROR else EXIT_FAILED,
        )
    code = summarise(results, session, use_colour(sys.stdout, os.environ))
    if session.artifacts is not None and any(session.artifacts.iterdir()):
        print(f"reactor-conformance: artifacts (scenarios, server logs): {session.artifacts}")
    return code


def _deliver(written: Path, path: str, session: Session) -> None:
    """Copy the JUnit report pytest wrote to ``path``; record whether that worked."""
    try:
        shutil.copyfile(written, path)
    except OSError as exc:
        session.unwritten.append(ReportFile(ReportKind.JUNIT, path, exc.strerror or str(exc)))
    else:
        session.written.append(ReportFile(ReportKind.JUNIT, path))


def _discard_stdout() -> None:
    """Send what is still buffered for stdout nowhere, so that exiting does not fail again.

    Into ``/dev/null`` where this user can write it; elsewhere (it is a regular
    file only root may write on some machines) into an unlinked temporary file.
    """
    try:
        sink = os.open(os.devnull, os.O_WRONLY)
    except OSError:
        with tempfile.TemporaryFile() as spare:
            sink = os.dup(spare.fileno())
    os.dup2(sink, sys.stdout.fileno())
    os.close(sink)


@contextmanager
def _watchdog(bound: float) -> Iterator[None]:
    """End the run (as SIGTERM does: partial reports, servers stopped) if it passes ``bound``.

    Every check has its deadline, so this fires only when the suite itself
    hangs; the run then still ends, within the bound it printed, plus a minute.
    """
    previous = signal.signal(signal.SIGALRM, stop_on_signal)
    signal.setitimer(signal.ITIMER_REAL, bound + 60.0)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``reactor-conformance``.

    ``run`` and ``load`` start servers: SIGTERM and SIGHUP (like SIGINT) end
    them, through the same ``finally`` that stops their targets, and pytest
    writes the reports of the checks that ran. The exit code is then 128 plus
    the signal's number.
    """
    args = build_parser().parse_args(argv)
    if args.command is not serve:
        install()
    try:
        result: int = args.command(args)
    except BrokenPipeError:
        # The reader went away (``| head``): stop quietly, as other tools do.
        _discard_stdout()
        return EXIT_FAILED
    except KeyboardInterrupt as exc:
        signum = exc.signum if isinstance(exc, Stopped) else requested() or int(signal.SIGINT)
        if signum == signal.SIGALRM:
            return _error(
                "the run passed the bound it printed and was stopped (a fault in the suite: "
                "please report it); the servers it started are stopped",
                EXIT_FAILED,
            )
        name = signal.Signals(signum).name
        return _error(f"stopped by {name}; the servers it started are stopped", 128 + signum)
    return result
