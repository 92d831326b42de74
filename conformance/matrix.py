"""The kill matrix: checks against deliberately broken servers, each cell on a fresh server.

How this works
--------------
A broken server is a Python module with one bug that declares, in its
module-level ``CAUGHT_BY`` tuple, the checks that must catch it (read
without importing it, :func:`broken_servers`). A check *catches* a server
when it fails against it (a SHOULD that fails counts: it is reported, as
non-strict). Every cell (:func:`run_matrix`) runs against a fresh server, so
a server that one check crashed cannot make the next look caught; each server
is stopped by its process group after its check. Property checks search with
the ``ci`` profile (derandomized), so every run draws the same scenarios.

Cells (:meth:`Cell.mark`): ``**X**`` declared and caught; ``x`` caught, not
declared; ``MISSED`` declared but not caught; ``.`` not caught, not declared.
The meta test (``tests/conformance/test_broken_servers.py``) and the maintainer
script ``tools/kill_matrix.py`` both use this module.
"""

from __future__ import annotations

import ast
import multiprocessing
import shlex
import sys
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from conformance.checks import Check, Outcome, Setup, by_id, run_check
from conformance.errors import TargetError
from conformance.oracle import load_oracle
from conformance.profiles import PROFILES
from conformance.target import TargetKind, TargetSpec, start_target

__all__ = [
    "BrokenServer",
    "Cell",
    "broken_servers",
    "catches",
    "markdown",
    "run_against",
    "run_matrix",
]


@dataclass(frozen=True)
class BrokenServer:
    """One broken server: its name (the file's stem), its path, the checks that must catch it.

    ``oracle`` is what judges it (its module's ``ORACLE``; default ``echo``).
    """

    name: str
    path: Path
    caught_by: tuple[str, ...]
    oracle: str = "echo"

    def spec(self) -> TargetSpec:
        """The ``--spawn`` target that runs it with this Python on a free port."""
        command = f"{shlex.quote(sys.executable)} {shlex.quote(str(self.path))} --port {{port}}"
        return TargetSpec(TargetKind.SPAWN, command)


def _module_string(path: Path, name: str) -> str | None:
    """The string assigned to ``name`` at module level in ``path``, read without importing it."""
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in tree.body:
        if (
            isinstance(node, ast.Assign)
            and [t.id for t in node.targets if isinstance(t, ast.Name)] == [name]
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
        ):
            return node.value.value
    return None


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


def broken_servers(directory: Path) -> list[BrokenServer]:
    """Every broken server in ``directory`` (modules named ``_*`` are shared code)."""
    return [
        BrokenServer(
            path.stem,
            path,
            _caught_by(path),
            _module_string(path, "ORACLE") or "echo",
        )
        for path in sorted(directory.glob("*.py"))
        if not path.name.startswith("_")
    ]


def run_against(
    spec: TargetSpec, check: Check, start_timeout: float = 20.0, *, oracle: str = "echo"
) -> Outcome:
    """Start ``spec`` afresh, run ``check`` against it (judged by ``oracle``), stop it.

    Raises:
        TargetError: The server did not start listening.
    """
    # Property checks search with the ci profile: derandomized, so every run of
    # the matrix draws the same scenarios.
    with start_target(spec, start_timeout=start_timeout) as running:
        flag = f" --oracle {oracle}" if oracle != "echo" else ""
        setup = Setup(
            running.address,
            load_oracle(oracle),
            replay=f"reactor-conformance run --spawn {shlex.quote(spec.value)}{flag}",
            profile=PROFILES["ci"],
        )
        return run_check(check, setup)


def catches(server: BrokenServer, check: Check) -> Outcome:
    """Run ``check`` against a fresh ``server``; the check catches it when it makes a bug report.

    An outcome with an error (a fault in the suite) is no catch.
    """
    return run_against(server.spec(), check, oracle=server.oracle)


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
    if outcome.error is not None:
        # A fault in the suite is no catch: the cell says so instead.
        raise RuntimeError(f"{check.id} against {server.name}: {outcome.error}")
    return Cell(
        server.name,
        check.id,
        check.id in server.caught_by,
        outcome.failure is not None,
        time.monotonic() - start,
        outcome.failure.headline().split("\n", 1)[0] if outcome.failure is not None else "",
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
