"""How often the suite's verdicts differ between runs against one server.

    python tools/flake_rate.py --runs 30 --reference single
    python tools/flake_rate.py --runs 10 --spawn 'my-server --port {port}' -n 2 --profile ci
    python tools/flake_rate.py --runs 5 --target 127.0.0.1:7000 --checks 'ECHO-RESET-*' --out flake

How this works
--------------
Each run is ``reactor-conformance run TARGET -n N [--profile P] [--checks ...]
--report-json DIR/run-K.json`` in a subprocess of this Python (``python -m
conformance``, with this checkout first on ``PYTHONPATH``), its output kept in
``DIR/run-K.log``. The options are checked here first (the target, the check
selection), so that a mistake is one usage error, not N failed runs. A run
still going after ``--timeout`` seconds gets SIGTERM, on which the CLI stops
the servers it started (they lead process groups of their own) and writes what
it has; SIGKILL goes to the run's process group if it is still there
:data:`GRACE` seconds later. The tool then goes on with the next run.

The verdicts of each run (check ID -> PASS, FAIL, NON-STRICT or SKIPPED) are
read from its JSON report. A run that timed out, or wrote no report (it
crashed, or could not reach the target), or a report that cannot be read, has
no verdicts. :func:`differing` compares the runs: a pure function of the
verdict maps, tested without running anything.

Output: one progress line per run (exit code, counts, seconds); then each check
whose verdict was not the same in every run, with its count per verdict and,
for every run that differed from the most common verdict, the path of that
run's report; then the runs without a report; then one summary line.

Exit status: 0 when every run wrote its report and every check had the same
verdict in all of them; 1 otherwise; 2 on a usage error (also when a run
rejected the options); 128 plus the signal's number when SIGINT, SIGTERM or
SIGHUP stopped it (the run in progress is stopped, the finished ones reported).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from conformance.errors import EXIT_USAGE, UsageError  # noqa: E402
from conformance.run.profiles import PROFILES  # noqa: E402
from conformance.run.results import Verdict, format_counts  # noqa: E402
from conformance.run.selection import select_checks, split_list  # noqa: E402
from conformance.targets.spawn import no_input  # noqa: E402
from conformance.targets.target import TargetKind, TargetSpec  # noqa: E402
from reference.cli import at_least  # noqa: E402

__all__ = ["ABSENT", "GRACE", "Differences", "Run", "differing", "main", "read_verdicts"]

#: Seconds a timed-out run has, after SIGTERM, to stop its servers before SIGKILL.
GRACE = 20.0

#: The outcome of a check that a run's report lacks while another run's has it.
ABSENT = "ABSENT"

_PROG = "flake_rate"


@dataclass(frozen=True)
class Differences:
    """What differed between runs.

    Attributes:
        checks: Each check whose verdict was not the same in every run with a
            report, in the order first seen: verdict -> the run numbers (from
            1) that had it, the most common verdict first.
        missing: The numbers of the runs without a report.
    """

    checks: dict[str, dict[str, list[int]]]
    missing: list[int]

    def __bool__(self) -> bool:
        return bool(self.checks or self.missing)


def differing(runs: Sequence[Mapping[str, str] | None]) -> Differences:
    """Compare the verdicts of several runs of the same checks.

    Args:
        runs: Per run, in order, its verdicts (check ID -> verdict), or None
            when it has no report. Run numbers count from 1.

    Returns:
        The checks whose verdict differed between the runs that have a
        report (a check one of them lacks has :data:`ABSENT` there), and the
        runs without a report. Both empty when every run agreed.
    """
    seen: dict[str, None] = {}
    for verdicts in runs:
        seen.update(dict.fromkeys(verdicts or {}))
    checks: dict[str, dict[str, list[int]]] = {}
    for check in seen:
        by_verdict: dict[str, list[int]] = {}
        for number, verdicts in enumerate(runs, start=1):
            if verdicts is not None:
                by_verdict.setdefault(verdicts.get(check, ABSENT), []).append(number)
        if len(by_verdict) > 1:
            # Stable: among equally common verdicts, the one seen first leads.
            ordered = sorted(by_verdict.items(), key=lambda item: -len(item[1]))
            checks[check] = dict(ordered)
    missing = [number for number, verdicts in enumerate(runs, start=1) if verdicts is None]
    return Differences(checks, missing)


def read_verdicts(report: Path) -> dict[str, str]:
    """The verdicts in the JSON report at ``report``: check ID -> verdict.

    Raises:
        OSError: It cannot be read.
        ValueError: It is not JSON, or not a report of one target.
    """
    data = json.loads(report.read_text(encoding="utf-8"))
    try:
        (target,) = data["targets"]
        verdicts = {str(r["id"]): Verdict(r["verdict"]).value for r in target["results"]}
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"not a report of one target ({exc!r})") from None
    return verdicts


@dataclass(frozen=True)
class Run:
    """One run of the suite, finished or stopped.

    Attributes:
        number: Its number, from 1.
        seconds: How long it ran (wall clock, starting the server included).
        exit_code: Its exit code; None when it timed out.
        report: Where its JSON report is (or would be).
        log: Its stdout and stderr.
        verdicts: Check ID -> verdict; None when it has no report.
        problem: Why it has no report; empty when it has one.
    """

    number: int
    seconds: float
    exit_code: int | None
    report: Path
    log: Path
    verdicts: dict[str, str] | None
    problem: str = ""

    def progress(self, total: int) -> str:
        """Its progress line: ``run K/N: exit 0, 2 passed, ..., 1.6s``."""
        if self.exit_code is None:
            outcome = self.problem
        elif self.verdicts is None:
            outcome = f"exit {self.exit_code}, {self.problem}"
        else:
            counts = Counter(Verdict(v) for v in self.verdicts.values())
            outcome = f"exit {self.exit_code}, {format_counts(counts)}"
        return f"run {self.number}/{total}: {outcome}, {self.seconds:.1f}s"


class _Stopped(KeyboardInterrupt):
    """SIGTERM or SIGHUP arrived: unwind as SIGINT does, so the run in progress is stopped."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _stop_on_signal(signum: int, frame: FrameType | None) -> None:
    raise _Stopped(signum)


def _signal_group(pid: int, signum: int) -> None:
    try:
        os.killpg(pid, signum)
    except ProcessLookupError:
        pass  # The group is already gone.


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the run's group, SIGKILL after :data:`GRACE`, then to what is left of it."""
    _signal_group(proc.pid, signal.SIGTERM)
    try:
        proc.wait(GRACE)
    except subprocess.TimeoutExpired:
        _signal_group(proc.pid, signal.SIGKILL)
        proc.wait()
    # Workers of the run (pytest-xdist's) that outlived it.
    _signal_group(proc.pid, signal.SIGKILL)


def run_once(argv: list[str], number: int, out: Path, timeout: float) -> Run:
    """Run ``argv`` plus ``--report-json DIR/run-K.json`` and read its report.

    Args:
        argv: The command, without the report option.
        number: The run's number (K).
        out: The directory of the reports and logs.
        timeout: Seconds before the run is stopped.

    Returns:
        The run. A stale report of an earlier use of ``out`` is removed first,
        so that a run that writes none is never credited with it.
    """
    report = out / f"run-{number}.json"
    log = out / f"run-{number}.log"
    report.unlink(missing_ok=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    start = time.monotonic()
    with log.open("wb") as sink, no_input() as stdin:
        proc = subprocess.Popen(
            [*argv, "--report-json", str(report)],
            stdin=stdin,
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        try:
            code: int | None = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            code = None
            _stop(proc)
        except BaseException:
            _stop(proc)
            raise
    seconds = time.monotonic() - start
    if code is None:
        return Run(number, seconds, None, report, log, None, f"timed out after {timeout:g}s")
    if not report.exists():
        return Run(number, seconds, code, report, log, None, "no report")
    try:
        verdicts = read_verdicts(report)
    except (OSError, ValueError) as exc:
        return Run(number, seconds, code, report, log, None, f"unreadable report: {exc}")
    return Run(number, seconds, code, report, log, verdicts)


def _last_line(log: Path) -> str:
    """The last line a run wrote (its error, when it ended with one)."""
    try:
        with log.open("rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 4096))
            tail = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    lines = [line.strip() for line in tail.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def table(differences: Differences, runs: Sequence[Run]) -> list[str]:
    """The lines that list what differed: checks, then the runs without a report."""
    lines: list[str] = []
    by_number = {run.number: run for run in runs}
    if differences.checks:
        width = max(len(check) for check in differences.checks)
        lines.append("checks with differing verdicts:")
        for check, by_verdict in differences.checks.items():
            counts = "  ".join(
                f"{verdict} {len(numbers)}" for verdict, numbers in by_verdict.items()
            )
            lines.append(f"  {check:<{width}}  {counts}")
            for verdict, numbers in list(by_verdict.items())[1:]:
                for number in numbers:
                    lines.append(f"      run {number} {verdict}: {by_number[number].report}")
    if differences.missing:
        lines.append("runs without a report:")
        for number in differences.missing:
            run = by_number[number]
            said = _last_line(run.log)
            lines.append(f"  run {number}: {run.problem}; log: {run.log}")
            if said:
                lines.append(f"      {said}")
    return lines


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def summary(runs: Sequence[Run], differences: Differences, target: str) -> str:
    """The last line: how many runs, against what, how many checks differed, how long."""
    checks = _plural(len(differences.checks), "check")
    line = f"{_plural(len(runs), 'run')} against {target}: {checks} with differing verdicts"
    if differences.missing:
        line += f", {_plural(len(differences.missing), 'run')} without a report"
    seconds = [run.seconds for run in runs]
    if seconds:
        line += f"; {sum(seconds):.1f}s in all, median {statistics.median(seconds):.1f}s a run"
    return line


def _workers(text: str) -> str:
    if text == "auto":
        return text
    try:
        return str(at_least(0)(text))
    except argparse.ArgumentTypeError as exc:
        raise argparse.ArgumentTypeError(f"{exc}, or 'auto'") from None


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The parser of the tool."""
    parser = argparse.ArgumentParser(
        prog=f"python tools/{_PROG}.py",
        description="Run the conformance suite N times against one server and list every "
        "check whose verdict differed between runs. Exit 0 when none did, 1 when one did "
        "or a run wrote no report, 2 on a usage error.",
    )
    parser.add_argument(
        "--runs", type=at_least(1), required=True, metavar="N", help="How many runs (at least 1)"
    )
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--target", metavar="HOST:PORT", help="Test the server listening there")
    target.add_argument(
        "--spawn",
        metavar="CMD",
        help="Start CMD for each run and test it ({port} is replaced by a free port)",
    )
    target.add_argument("--reference", metavar="MODEL", help="Test a reference server")
    parser.add_argument(
        "-n",
        "--workers",
        type=_workers,
        default="0",
        metavar="N|auto",
        help="Each run's checks in N processes, or 'auto' (default: %(default)s)",
    )
    parser.add_argument(
        "--profile",
        choices=list(PROFILES),
        help="Size of the property checks' search; ci searches the same way in each run "
        "(default: the CLI's)",
    )
    parser.add_argument(
        "--checks",
        nargs="+",
        metavar="ID",
        help="Only these checks: IDs or patterns, separated by spaces or commas",
    )
    parser.add_argument(
        "--timeout",
        type=_seconds,
        default=900.0,
        metavar="SECONDS",
        help="Stop a run after this long and go on with the next (default: %(default)g)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        help="Keep the reports and logs here (default: a new temporary directory)",
    )
    return parser


def _describe(spec: TargetSpec) -> str:
    return spec.value if spec.kind is TargetKind.SPAWN else spec.describe()


def _run_argv(args: argparse.Namespace, spec: TargetSpec) -> list[str]:
    argv = ["run", *spec.options(), "-n", args.workers]
    if args.profile is not None:
        argv += ["--profile", args.profile]
    if args.checks:
        argv += ["--checks", ",".join(args.checks)]
    return argv


def main(argv: Sequence[str] | None = None) -> int:
    """Run the suite ``--runs`` times, print what differed; the exit status of the tool."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        spec = TargetSpec.from_options(args.target, args.spawn, args.reference)
        select_checks([name for text in args.checks or () for name in split_list(text)])
    except UsageError as exc:
        parser.error(str(exc))
    if args.out is not None and args.out.exists() and not args.out.is_dir():
        parser.error(f"--out {args.out}: not a directory; give a directory, or a new path")
    try:
        if args.out is None:
            out = Path(tempfile.mkdtemp(prefix="flake-rate-"))
        else:
            out = args.out
            out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        parser.error(f"--out {args.out}: cannot be created ({exc.strerror or exc})")
    out = out.resolve()
    command = _run_argv(args, spec)
    print(
        f"{_PROG}: {args.runs} runs of reactor-conformance {shlex.join(command)}; reports in {out}",
        flush=True,
    )
    for stopping in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(stopping, _stop_on_signal)
    runs: list[Run] = []
    stopped: int | None = None
    try:
        for number in range(1, args.runs + 1):
            run = run_once(
                [sys.executable, "-m", "conformance", *command], number, out, args.timeout
            )
            runs.append(run)
            print(run.progress(args.runs), flush=True)
            if run.exit_code == EXIT_USAGE:
                print(
                    f"{_PROG}: reactor-conformance rejected the options (exit {EXIT_USAGE}); "
                    f"see {run.log}",
                    file=sys.stderr,
                )
                return EXIT_USAGE
    except KeyboardInterrupt as exc:
        stopped = exc.signum if isinstance(exc, _Stopped) else int(signal.SIGINT)
    differences = differing([run.verdicts for run in runs])
    lines = table(differences, runs)
    if lines:
        print()
        print("\n".join(lines))
    print()
    print(summary(runs, differences, _describe(spec)))
    if stopped is not None:
        name = signal.Signals(stopped).name
        print(f"{_PROG}: stopped by {name} after {len(runs)} runs", file=sys.stderr)
        return 128 + stopped
    return 1 if differences else 0


if __name__ == "__main__":
    sys.exit(main())
