"""Servers and commands shared by the suite's own tests.

Every spawned server is stopped by its PID (its process group) when the
``with`` block ends; every subprocess has a timeout.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import resource
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from conformance.targets.target import RunningTarget, TargetSpec, start_target
from tests.helpers import ROOT

__all__ = [
    "ASYNCIO_ECHO",
    "BROKEN",
    "ROOT",
    "Sshd",
    "SshdUnavailable",
    "NOBODY",
    "as_nobody",
    "broken_spawn",
    "directory_for_others",
    "environment_for_nobody",
    "python_for_nobody",
    "run_cli",
    "run_pytest",
    "serving",
    "sshd",
]

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
    *argv: str,
    timeout: float = 180.0,
    nofile: int | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """``reactor-conformance ARGV`` in a subprocess, from the repository root.

    ``nofile``: the soft descriptor limit it starts under (the servers it
    starts inherit it; the suite raises its own when it needs to), so that
    ECHO-LIMIT-1 can exceed a server's limit on a machine whose default is high.
    It starts with SIGINT handled, as from a terminal, even where the tests
    run with SIGINT ignored (started with ``&`` by a non-interactive shell).
    ``env``: variables added to its environment.
    """

    def lower_limit() -> None:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        if nofile is not None:
            hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, hard))

    return subprocess.run(
        [sys.executable, "-m", "conformance", *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(_env(), **(env or {})),
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        preexec_fn=lower_limit,
    )


def run_pytest(*argv: str, timeout: float = 180.0) -> subprocess.CompletedProcess[str]:
    """``pytest -p conformance.fronts.plugin ARGV`` in a subprocess (no cache, no benchmark)."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "conformance.fronts.plugin",
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


class SshdUnavailable(Exception):
    """No sshd could be started here; the message says why (a test skips with it)."""


@dataclass(frozen=True)
class Sshd:
    """A running throwaway sshd on 127.0.0.1 that lets this user in with its own key.

    Attributes:
        port: Where it listens.
        config: An ssh client config (``ssh -F``) whose host ``conformance-sshd``
            is this server, with the key, the port and a known-hosts file of its own.
        pid: The sshd's process id.
    """

    port: int
    config: Path
    pid: int

    HOST = "conformance-sshd"

    def gateway(self, python: str = sys.executable, extra: str = "") -> str:
        """An execnet ``ssh=`` spec for this server, running ``python`` there."""
        return f"ssh={self.HOST}//ssh_config={self.config}//python={python}{extra}"


_SSHD = "/usr/sbin/sshd"


@contextmanager
def sshd(timeout: float = 10.0) -> Iterator[Sshd]:
    """Start an sshd on a free loopback port with a new host key and user key; stop it by PID.

    Raises:
        SshdUnavailable: No sshd or ssh-keygen here, or the sshd did not start
            listening within ``timeout`` (its own words, e.g. a missing
            privilege separation directory).
    """
    for tool in (_SSHD, "ssh-keygen", "ssh"):
        if shutil.which(tool) is None:
            raise SshdUnavailable(f"{tool} not installed (Debian: openssh-server)")
    home = Path(tempfile.mkdtemp(prefix="conformance-sshd-"))
    proc: subprocess.Popen[bytes] | None = None
    try:
        for key in ("host_key", "user_key"):
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(home / key)],
                check=True,
                timeout=timeout,
                stdin=subprocess.DEVNULL,
                capture_output=True,
            )
        (home / "authorized_keys").write_text((home / "user_key.pub").read_text())
        (home / "authorized_keys").chmod(0o600)
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        (home / "sshd_config").write_text(
            f"Port {port}\nListenAddress 127.0.0.1\nHostKey {home / 'host_key'}\n"
            f"AuthorizedKeysFile {home / 'authorized_keys'}\nPidFile {home / 'sshd.pid'}\n"
            "UsePAM no\nStrictModes no\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n"
            "LogLevel ERROR\n"
        )
        config = home / "ssh_config"
        user = pwd.getpwuid(os.getuid()).pw_name
        config.write_text(
            f"Host {Sshd.HOST}\n  HostName 127.0.0.1\n  Port {port}\n  User {user}\n"
            f"  IdentityFile {home / 'user_key'}\n  IdentitiesOnly yes\n"
            f"  StrictHostKeyChecking no\n  UserKnownHostsFile {home / 'known_hosts'}\n"
            "  BatchMode yes\n  LogLevel ERROR\n"
        )
        log = (home / "sshd.log").open("wb")
        proc = subprocess.Popen(
            [_SSHD, "-D", "-e", "-f", str(home / "sshd_config")],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                said = (home / "sshd.log").read_text(errors="replace").strip()
                raise SshdUnavailable(f"sshd exited with status {proc.returncode}: {said}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1.0).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise SshdUnavailable(f"sshd did not listen within {timeout:g}s") from None
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(0.05)  # its exit, or the next try
        yield Sshd(port, config, proc.pid)
    finally:
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout)
        shutil.rmtree(home, ignore_errors=True)


#: The user ID of ``nobody``, under which tests run the suite as another user.
NOBODY = 65534


def as_nobody(*argv: str) -> list[str]:
    """``argv`` run as ``nobody`` (``setpriv``; the caller must be root)."""
    return ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *argv]


@contextmanager
def directory_for_others() -> Iterator[Path]:
    """A directory another user may write in (pytest's own are private), removed at the end."""
    path = Path(tempfile.mkdtemp(prefix="conformance-shared-"))
    path.chmod(0o777)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def environment_for_nobody(shared: Path) -> dict[str, str]:
    """An environment in which ``nobody`` imports the suite and what it needs.

    tox keeps its virtualenvs private (``.tox`` is mode 0700), so this
    environment's packages are copied where ``nobody`` can read them.
    """
    site = shared / "site-packages"
    for path in sys.path:
        if path.endswith("site-packages") and Path(path).is_dir():
            shutil.copytree(
                path, site, symlinks=True, dirs_exist_ok=True,
                ignore=shutil.ignore_patterns("__pycache__", "conformance", "reference"),
            )  # fmt: skip
    site.chmod(0o755)
    return dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(ROOT), str(site)]),
        HOME=str(shared),
        PYTHONDONTWRITEBYTECODE="1",
    )


def python_for_nobody(shared: Path, env: dict[str, str]) -> tuple[str | None, str]:
    """A Python of this version that ``nobody`` can run with the suite, or None and why not.

    This test run's own Python first; where ``nobody`` cannot reach it (under
    a home directory of mode 0700), the system's ``python3`` of the same version.
    """
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    tried: list[str] = []
    probe = "import sys, conformance.fronts.cli; print(sys.version)"
    for python in (sys.executable, shutil.which("python3", path="/usr/bin:/bin")):
        if python is None:
            continue
        can = subprocess.run(
            as_nobody("sh", "-c", f'exec "{python}" -c "{probe}"'),
            capture_output=True, text=True, timeout=60, env=env, cwd=shared,
        )  # fmt: skip
        if can.returncode == 0 and can.stdout.startswith(version):
            return python, ""
        tried.append(f"{python}: {(can.stderr.strip() or can.stdout.strip())[-200:]}")
    return None, "nobody cannot run a Python " + version + " with the suite: " + "; ".join(tried)
