"""The kill matrix: every check of the catalogue against every broken server.

    python tools/kill_matrix.py                    # Markdown on stdout
    python tools/kill_matrix.py --json matrix.json # and JSON in a file
    python tools/kill_matrix.py --servers crashes_on_reset --checks ECHO-RESET-1

Each broken server in ``fixtures/servers/broken/`` has one bug and declares,
in its module-level ``CAUGHT_BY`` tuple, the checks that must catch it. A
check *catches* a server when it fails against it (a SHOULD that fails
counts: it is reported, as non-strict). Every cell runs against a fresh
server, so a server that one check crashed cannot make the next look caught.

Cells: ``**X**`` declared and caught; ``x`` caught, not declared; ``MISSED``
declared but not caught; ``.`` not caught, not declared.

Exit status: 0 when every declared check caught its server, 1 otherwise.
Every server is stopped by its PID (its process group) after its check.
"""

from __future__ import annotations

import argparse
import ast
import json
import multiprocessing
import shlex
import sys
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from conformance import properties  # noqa: E402
from conformance.catalogue import CATALOGUE, by_id  # noqa: E402
from conformance.checks import Check, Outcome, Setup, run_check  # noqa: E402
from conformance.errors import TargetError  # noqa: E402
from conformance.target import TargetSpec, start_target  # noqa: E402

__all__ = [
    "BROKEN",
    "BrokenServer",
    "Cell",
    "broken_servers",
    "catches",
    "main",
    "markdown",
    "run_against",
]

BROKEN = ROOT / "fixtures" / "servers" / "broken"


@dataclass(frozen=True)
class BrokenServer:
    """One broken server: its name (the file's stem), its path, the checks that must catch it."""

    name: str
    path: Path
    caught_by: tuple[str, ...]

    def spec(self) -> TargetSpec:
        """The ``--spawn`` target that runs it with this Python on a free port."""
        command = f"{shlex.quote(sys.executable)} {shlex.quote(str(self.path))} --port {{port}}"
        return TargetSpec("spawn", command)


def _caught_by(path: Path) -> tuple[str, ...]:
    """The ``CAUGHT_BY`` tuple of a server module, read without importing it.

    Raises:
        ValueError: The module has no ``CAUGHT_BY`` tuple of strings.
    """
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in tree.body:
        if (
            isinstance(node, ast.Assign)
            and len(node.targets) == 1
            and isinstance(node.targets[0], ast.Name)
            and node.targets[0].id == "CAUGHT_BY"
        ):
            value = ast.literal_eval(node.value)
            if isinstance(value, tuple) and value and all(isinstance(v, str) for v in value):
                return tuple(by_id(v).id for v in value)
    raise ValueError(f"{path}: no CAUGHT_BY = ('ECHO-...', ...) tuple at module level")


def broken_servers(directory: Path = BROKEN) -> list[BrokenServer]:
    """Every broken server in ``directory`` (modules named ``_*`` are shared code)."""
    return [
        BrokenServer(path.stem, path, _caught_by(path))
        for path in sorted(directory.glob("*.py"))
        if not path.name.startswith("_")
    ]


def run_against(spec: TargetSpec, check: Check, start_timeout: float = 20.0) -> Outcome:
    """Start ``spec`` afresh, run ``check`` against it, stop it.

    Raises:
        TargetError: The server did not start listening.
    """
    # Property checks search with the ci profile: derandomized, so every run of
    # the matrix draws the same scenarios.
    properties.set_profile("ci")
    with start_target(spec, start_timeout=start_timeout) as running:
        setup = Setup(
            running.address,
            server_pid=running.pid,
            replay=f"reactor-conformance run --spawn {shlex.quote(spec.value)}",
        )
        return run_check(check, setup)


def catches(server: BrokenServer, check: Check) -> Outcome:
    """Run ``check`` against a fresh ``server``; the check catches it when the outcome fails."""
    return run_against(server.spec(), check)


@dataclass(frozen=True)
class Cell:
    """One cell of the matrix."""

    server: str
    check: str
    declared: bool
    caught: bool
    seconds: float
    reason: str = ""

    @property
    def mark(self) -> str:
        if self.declared:
            return "**X**" if self.caught else "MISSED"
        return "x" if self.caught else "."


def _cell(server: BrokenServer, check_id: str) -> Cell:
    check = by_id(check_id)
    start = time.monotonic()
    try:
        outcome = catches(server, check)
    except TargetError as exc:
        return Cell(server.name, check.id, check.id in server.caught_by, False, 0.0, str(exc))
    first = outcome.report.splitlines()[1:2] if outcome.report else []
    return Cell(
        server.name,
        check.id,
        check.id in server.caught_by,
        not outcome.passed,
        time.monotonic() - start,
        first[0].strip() if first else "",
    )


def run_matrix(servers: Sequence[BrokenServer], checks: Sequence[Check], jobs: int) -> list[Cell]:
    """Every (server, check) cell, ``jobs`` at a time in worker processes."""
    pairs = [(s, c.id) for s in servers for c in checks]
    if jobs <= 1:
        return [_cell(s, c) for s, c in pairs]
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
        return list(pool.map(_cell, [s for s, _ in pairs], [c for _, c in pairs]))


def short(check_id: str) -> str:
    return check_id.removeprefix("ECHO-")


def markdown(
    servers: Sequence[BrokenServer], checks: Sequence[Check], cells: Iterable[Cell]
) -> str:
    """The matrix as a Markdown table: a row per broken server, a column per check."""
    by_pair = {(c.server, c.check): c for c in cells}
    lines = [
        "| broken server | " + " | ".join(short(c.id) for c in checks) + " |",
        "|---|" + "---|" * len(checks),
    ]
    for server in servers:
        marks = [by_pair[(server.name, c.id)].mark for c in checks]
        lines.append(f"| `{server.name}` | " + " | ".join(marks) + " |")
    counts = [str(sum(by_pair[(s.name, c.id)].caught for s in servers)) for c in checks]
    lines.append("| servers caught | " + " | ".join(counts) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Run every check against every broken server and print the kill matrix."
    )
    parser.add_argument("--servers", default="", metavar="NAME,...", help="Only these servers")
    parser.add_argument("--checks", default="", metavar="ID,...", help="Only these checks")
    parser.add_argument(
        "-j", "--jobs", type=int, default=2, help="Cells run at once (default: %(default)s)"
    )
    parser.add_argument("--json", metavar="PATH", help="Also write the matrix as JSON to PATH")
    args = parser.parse_args(argv)
    servers = broken_servers()
    wanted = {n.strip() for n in args.servers.split(",") if n.strip()}
    unknown = wanted - {s.name for s in servers}
    if unknown:
        parser.error(f"unknown broken server(s) {', '.join(sorted(unknown))}")
    if wanted:
        servers = [s for s in servers if s.name in wanted]
    ids = [i for i in args.checks.split(",") if i.strip()]
    checks = [by_id(i) for i in ids] if ids else list(CATALOGUE)
    start = time.monotonic()
    cells = run_matrix(servers, checks, max(1, args.jobs))
    print(markdown(servers, checks, cells))
    missed = [c for c in cells if c.declared and not c.caught]
    print(
        f"\n{len(servers)} broken servers x {len(checks)} checks in "
        f"{time.monotonic() - start:.0f}s; {len(missed)} declared catch(es) missed",
        file=sys.stderr,
    )
    for cell in missed:
        print(f"MISSED: {cell.check} did not catch {cell.server} {cell.reason}", file=sys.stderr)
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "servers": {s.name: list(s.caught_by) for s in servers},
                    "checks": [c.id for c in checks],
                    "cells": [asdict(c) for c in cells],
                },
                indent=2,
            )
            + "\n"
        )
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
