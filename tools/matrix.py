"""The kill matrix: checks against deliberately broken servers, each cell on a fresh server.

How this works
--------------
A broken server is a Python module with one bug that declares, at module
level, the checks that must catch it and why (both read without importing
it, :func:`broken_servers`):

- ``CAUGHT_BY``: a tuple of check IDs;
- ``REASON``: one regular expression (a string literal, ``r"..."``) that the
  rendered failure report (:attr:`Outcome.report`, ``FailureReport.render()``)
  of *every* check in ``CAUGHT_BY`` must match, with :func:`re.search`, case
  sensitive (``(?i)`` in the pattern makes it insensitive). It names why the
  bug fails the check (``byte \\d+ differs``, ``descriptor leak``), not the
  check: catchers that fail with different messages share one pattern by
  alternation (``cannot connect \\w+ to|ended: (?:RST|FIN) from the server``).
  It must not match the empty string (it would match any report), and should
  not match the report's first line (the check) nor its last (the replay
  command, which holds the server's file name): the meta test holds it to that.

A check *catches* a server when it fails against it (a SHOULD that fails
counts: it is reported, as non-strict), and catches it *for its reason* when
its report also matches ``REASON``. Every cell (:func:`run_matrix`) runs
against a fresh server, so a server that one check crashed cannot make the
next look caught; each server is stopped by its process group after its
check. Property checks search with the ``ci`` profile (derandomized), so
every run draws the same scenarios.

Cells (:meth:`Cell.mark`): ``**X**`` declared and caught for its reason;
``WRONG`` declared and caught for another reason (a declared catch that
does not hold: it counts as missed); ``MISSED`` declared but not caught;
``x`` caught, not declared; ``.`` not caught, not declared.
A broken server that speaks TLS also declares ``TLS = True`` (read the same
way): the matrix then makes a CA and a server certificate (trustme, once per
matrix run, in a temporary folder: :class:`Certificates`), starts the server
with ``--tls-cert`` and runs its checks over TLS, trusting that CA.

The meta test (``tests/conformance/test_broken_servers.py``) and the maintainer
script ``tools/kill_matrix.py`` both use this module.
"""

from __future__ import annotations

import ast
import atexit
import functools
import multiprocessing
import re
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from conformance.checks import Check, Outcome, Setup, by_id, run_check
from conformance.errors import TargetError
from conformance.protocols import run_model
from conformance.run.profiles import PROFILES
from conformance.targets.target import TargetKind, TargetSpec, start_target
from conformance.tls import TlsSettings

__all__ = [
    "BrokenServer",
    "Cell",
    "Certificates",
    "broken_servers",
    "catches",
    "markdown",
    "run_against",
    "run_matrix",
]


@dataclass(frozen=True)
class BrokenServer:
    """One broken server: its name (the file's stem), its path, the checks that must catch it.

    ``reason`` is its module's ``REASON``: the pattern every declared check's
    failure report must match (:meth:`explains`). ``oracle`` is what judges
    it (its module's ``ORACLE``; default ``echo``); ``protocol`` the protocol
    model the checks speak to it (its module's ``PROTOCOL``; default ``echo``).
    """

    name: str
    path: Path
    caught_by: tuple[str, ...]
    reason: str
    oracle: str = "echo"
    protocol: str = "echo"
    tls: bool = False

    def explains(self, report: str) -> bool:
        """Whether ``report`` (a rendered failure report) matches ``reason``: names this bug."""
        return re.search(self.reason, report) is not None

    def spec(self, certificates: Certificates | None = None) -> TargetSpec:
        """The ``--spawn`` target that runs it with this Python on a free port
        (a TLS server with ``certificates``' server certificate)."""
        command = f"{shlex.quote(sys.executable)} {shlex.quote(str(self.path))} --port {{port}}"
        if self.tls:
            if certificates is None:
                raise ValueError(f"{self.name} speaks TLS: it needs certificates")
            command += f" --tls-cert {shlex.quote(str(certificates.server))}"
        return TargetSpec(TargetKind.SPAWN, command)


@dataclass(frozen=True)
class Certificates:
    """A CA and a certificate for 127.0.0.1 and localhost that it signed, as PEM files.

    Attributes:
        ca: The CA's certificate: what the client trusts.
        server: The server's key and certificate chain, in one file (``--tls-cert``).
    """

    ca: Path
    server: Path

    @classmethod
    def make(cls, directory: Path) -> Certificates:
        """Make them in ``directory`` (trustme, from the test extra)."""
        import trustme  # Only a matrix with TLS servers needs it.

        authority = trustme.CA()
        certificates = cls(directory / "ca.pem", directory / "server.pem")
        authority.cert_pem.write_to_path(str(certificates.ca))
        issued = authority.issue_cert("127.0.0.1", "localhost")
        issued.private_key_and_cert_chain_pem.write_to_path(str(certificates.server))
        return certificates

    def settings(self) -> TlsSettings:
        """The client's settings: TLS, trusting this CA."""
        return TlsSettings(ca=str(self.ca))


@functools.cache
def _certificates() -> Certificates:
    """This process's certificates, made once, in a folder removed when it exits."""
    directory = Path(tempfile.mkdtemp(prefix="kill-matrix-tls-"))
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    return Certificates.make(directory)


def _module_flag(path: Path, name: str) -> bool:
    """Whether ``name = True`` is assigned at module level in ``path``, read without importing it.

    Raises:
        ValueError: ``name`` is assigned something other than True or False.
    """
    value = _module_value(path, name)
    if value is None:
        return False
    if isinstance(value, ast.Constant) and isinstance(value.value, bool):
        return value.value
    raise ValueError(f"{path}: {name} must be True or False")


def _module_value(path: Path, name: str) -> ast.expr | None:
    """What is assigned to ``name`` at module level in ``path``, read without importing it."""
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in tree.body:
        if (
            isinstance(node, ast.Assign)
            and len(node.targets) == 1
            and isinstance(node.targets[0], ast.Name)
            and node.targets[0].id == name
        ):
            return node.value
    return None


def _module_string(path: Path, name: str) -> str | None:
    """The string assigned to ``name`` at module level in ``path``, read without importing it."""
    value = _module_value(path, name)
    if isinstance(value, ast.Constant) and isinstance(value.value, str):
        return value.value
    return None


def _caught_by(path: Path) -> tuple[str, ...]:
    """The ``CAUGHT_BY`` tuple of a server module, read without importing it.

    Raises:
        ValueError: The module has no ``CAUGHT_BY`` tuple of strings.
    """
    node = _module_value(path, "CAUGHT_BY")
    if node is not None:
        value = ast.literal_eval(node)
        if isinstance(value, tuple) and value and all(isinstance(v, str) for v in value):
            return tuple(by_id(v).id for v in value)
    raise ValueError(f"{path}: no CAUGHT_BY = ('ECHO-...', ...) tuple at module level")


def _reason(path: Path) -> str:
    """The ``REASON`` pattern of a server module, read without importing it.

    Raises:
        ValueError: The module has no ``REASON`` string literal at module
            level, or it is not a valid regular expression, or it matches the
            empty string (and so any report).
    """
    node = _module_value(path, "REASON")
    if node is None:
        raise ValueError(
            f"{path}: no REASON = r'...' at module level (the pattern every failure report "
            "of its CAUGHT_BY checks must match)"
        )
    if not (isinstance(node, ast.Constant) and isinstance(node.value, str)):
        raise ValueError(f"{path}: REASON must be a string literal (a regular expression, r'...')")
    pattern = node.value
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        raise ValueError(
            f"{path}: REASON {pattern!r} is not a valid regular expression: {exc}"
        ) from None
    if compiled.search("") is not None:
        raise ValueError(
            f"{path}: REASON {pattern!r} matches the empty string, so any report: "
            "name why the bug fails its checks"
        )
    return pattern


def broken_servers(directory: Path) -> list[BrokenServer]:
    """Every broken server in ``directory`` (modules named ``_*`` are shared code).

    Raises:
        ValueError: A server's ``CAUGHT_BY`` or ``REASON`` is missing or invalid.
    """
    return [
        BrokenServer(
            path.stem,
            path,
            _caught_by(path),
            _reason(path),
            _module_string(path, "ORACLE") or "echo",
            _module_string(path, "PROTOCOL") or "echo",
            _module_flag(path, "TLS"),
        )
        for path in sorted(directory.glob("*.py"))
        if not path.name.startswith("_")
    ]


def run_against(
    spec: TargetSpec,
    check: Check,
    start_timeout: float = 20.0,
    *,
    oracle: str = "echo",
    protocol: str = "echo",
    tls: TlsSettings | None = None,
) -> Outcome:
    """Start ``spec`` afresh, run ``check`` against it (judged by ``oracle``, or the
    ``protocol`` model's own oracle; over TLS with ``tls``), stop it.

    Raises:
        TargetError: The server did not start listening.
    """
    # Property checks search with the ci profile: derandomized, so every run of
    # the matrix draws the same scenarios.
    with start_target(spec, start_timeout=start_timeout) as running:
        flag = f" --oracle {oracle}" if oracle != "echo" else ""
        if protocol != "echo":
            flag += f" --protocol {protocol}"
        if tls is not None:
            flag += " " + shlex.join(tls.flags())
        setup = Setup(
            running.address,
            run_model(protocol, oracle),
            replay=f"reactor-conformance run --spawn {shlex.quote(spec.value)}{flag}",
            profile=PROFILES["ci"],
            tls=tls,
        )
        return run_check(check, setup)


def catches(
    server: BrokenServer, check: Check, certificates: Certificates | None = None
) -> Outcome:
    """Run ``check`` against a fresh ``server``; the check catches it when it makes a bug report.

    A TLS server runs with ``certificates`` (default: this process's own,
    made once), and the check speaks TLS to it, trusting their CA. An
    outcome with an error (a fault in the suite) is no catch.
    """
    if server.tls and certificates is None:
        certificates = _certificates()
    return run_against(
        server.spec(certificates),
        check,
        oracle=server.oracle,
        protocol=server.protocol,
        tls=certificates.settings() if server.tls and certificates is not None else None,
    )


@dataclass(frozen=True)
class Cell:
    """One cell of the matrix.

    Attributes:
        server: The broken server's name.
        check: The check's ID.
        declared: The check is in the server's ``CAUGHT_BY``.
        caught: The check failed against the server.
        seconds: How long the cell took.
        reason: The first line of the failure's headline (or why the server
            did not start); empty when the check passed.
        for_reason: The check failed and its report matches the server's
            ``REASON`` (:meth:`BrokenServer.explains`).
    """

    server: str
    check: str
    declared: bool
    caught: bool
    seconds: float
    reason: str = ""
    for_reason: bool = False

    @property
    def holds(self) -> bool:
        """A declared cell caught its server for the server's reason (always true if undeclared)."""
        return not self.declared or (self.caught and self.for_reason)

    @property
    def mark(self) -> str:
        """``**X**``, ``WRONG``, ``MISSED``, ``x`` or ``.`` (see the module's docstring)."""
        if self.declared:
            if not self.caught:
                return "MISSED"
            return "**X**" if self.for_reason else "WRONG"
        return "x" if self.caught else "."


def _cell(server: BrokenServer, check_id: str, certificates: Certificates | None = None) -> Cell:
    check = by_id(check_id)
    start = time.monotonic()
    try:
        outcome = catches(server, check, certificates)
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
        outcome.failure is not None and server.explains(outcome.report),
    )


def run_matrix(servers: Sequence[BrokenServer], checks: Sequence[Check], jobs: int) -> list[Cell]:
    """Every (server, check) cell, ``jobs`` at a time in worker processes.

    When a server speaks TLS, one set of certificates serves the whole run.
    """
    pairs = [(s, c.id) for s in servers for c in checks]
    with tempfile.TemporaryDirectory(prefix="kill-matrix-tls-") as directory:
        certificates = Certificates.make(Path(directory)) if any(s.tls for s in servers) else None
        if jobs <= 1:
            return [_cell(s, c, certificates) for s, c in pairs]
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
            return list(
                pool.map(
                    _cell,
                    [s for s, _ in pairs],
                    [c for _, c in pairs],
                    [certificates] * len(pairs),
                )
            )


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
