"""Servers and commands shared by the suite's own tests.

Every spawned server is stopped by its PID (its process group) when the
``with`` block ends; every subprocess has a timeout.
"""

from __future__ import annotations

import os
import resource
import shlex
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from conformance.target import RunningTarget, TargetSpec, start_target
from tests.helpers import ROOT

__all__ = ["ASYNCIO_ECHO", "BROKEN", "ROOT", "broken_spawn", "run_cli", "run_pytest", "serving"]

SERVERS = ROOT / "fixtures" / "servers"
BROKEN = SERVERS / "broken"
ASYNCIO_ECHO = SERVERS / "asyncio_echo.py"


def spawn_command(script: Path) -> str:
    """A ``--spawn`` command that runs ``script`` with this Python on a free port."""
    return f"{shlex.quote(sys.executable)} {shlex.quote(str(script))} --port {{port}}"


def broken_spawn(name: str) -> str:
    """The ``--spawn`` command of the broken server ``fixtures/servers/broken/NAME.py``."""
    return spawn_command(BROKEN / f"{name}.py")


@contextmanager
def serving(spec: TargetSpec) -> Iterator[RunningTarget]:
    """Start ``spec`` and stop it (SIGTERM, then SIGKILL) at the end of the block."""
    running = start_target(spec, start_timeout=20.0)
    try:
        yield running
    finally:
        running.stop()


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(ROOT))


def run_cli(
    *argv: str, timeout: float = 180.0, nofile: int | None = None
) -> subprocess.CompletedProcess[str]:
    """``reactor-conformance ARGV`` in a subprocess, from the repository root.

    ``nofile``: the soft descriptor limit it starts under (the servers it
    starts inherit it; the suite raises its own when it needs to), so that
    ECHO-LIMIT-1 can exceed a server's limit on a machine whose default is high.
    """

    def lower_limit() -> None:
        if nofile is not None:
            hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, hard))

    return subprocess.run(
        [sys.executable, "-m", "conformance", *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_env(),
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        preexec_fn=lower_limit,
    )


def run_pytest(*argv: str, timeout: float = 180.0) -> subprocess.CompletedProcess[str]:
    """``pytest -p conformance.plugin ARGV`` in a subprocess (no cache, no benchmark plugin)."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "conformance.plugin",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:benchmark",
            *argv,
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_env(),
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
    )
