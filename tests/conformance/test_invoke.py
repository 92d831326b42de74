"""``reactor-conformance run`` owns its pytest configuration: nothing around it applies."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from conformance.fronts.invoke import IGNORED_ENVIRONMENT, owned_configuration
from tests.conformance.support import (
    as_nobody,
    directory_for_others,
    environment_for_nobody,
    python_for_nobody,
)
from tests.helpers import ROOT

_SUMMARY = "reactor-conformance: 1 passed, 0 failed, 0 non-strict, 0 skipped"


def _hostile_directory(path: Path) -> Path:
    """A directory whose pytest configuration would break any run that read it."""
    (path / "pytest.ini").write_text("[pytest]\naddopts = --no-such-option-from-pytest-ini\n")
    (path / "pyproject.toml").write_text(
        '[tool.pytest.ini_options]\naddopts = "--no-such-option-from-pyproject"\n'
    )
    (path / "conftest.py").write_text("raise RuntimeError('a conftest.py was imported')\n")
    return path


def test_run_ignores_the_directory_and_the_environment_it_starts_in(tmp_path: Path) -> None:
    cwd = _hostile_directory(tmp_path)
    env = dict(
        os.environ,
        PYTHONPATH=str(ROOT),
        PYTEST_ADDOPTS="--no-such-option-from-the-environment",
        PYTEST_PLUGINS="no_such_plugin_module",
    )
    result = subprocess.run(
        [sys.executable, "-m", "conformance", "run", "-n", "2", "--checks", "ECHO-BASIC-1"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result
    assert _SUMMARY in result.stdout
    assert "Traceback" not in result.stderr


def test_owned_configuration_restores_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTEST_ADDOPTS", "-x")
    monkeypatch.delenv("PYTEST_PLUGINS", raising=False)
    monkeypatch.delenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    with owned_configuration() as args:
        ini = Path(args[args.index("-c") + 1])
        assert ini.name == "pytest.ini"
        assert ini.read_text().splitlines()[-1] == "[pytest]"
        assert "--noconftest" in args
        for name in IGNORED_ENVIRONMENT:
            assert name not in os.environ
        assert os.environ["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] == "1"
    assert not ini.exists()
    assert os.environ["PYTEST_ADDOPTS"] == "-x"
    assert "PYTEST_PLUGINS" not in os.environ
    assert "PYTEST_DISABLE_PLUGIN_AUTOLOAD" not in os.environ


_NOT_SOURCE = shutil.ignore_patterns(
    ".git", ".tox", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", ".hypothesis"
)


def _run_ok(argv: list[str], env: dict[str, str]) -> None:
    result = subprocess.run(
        argv, capture_output=True, text=True, timeout=300, env=env, stdin=subprocess.DEVNULL
    )
    assert result.returncode == 0, f"{argv}: exit {result.returncode}\n{result.stderr[-3000:]}"


def test_wheel_without_extras_runs_a_check_from_an_empty_directory(tmp_path: Path) -> None:
    """The README's first command, as a newcomer runs it: a fresh virtualenv, no extras."""
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=_NOT_SOURCE)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "PIP_", "VIRTUAL"))}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    wheels = tmp_path / "wheels"
    _run_ok(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), str(source)],
        env,
    )
    (wheel,) = wheels.glob("reactor_conformance-*.whl")
    home = tmp_path / "venv"
    venv.create(home, with_pip=True)
    _run_ok([str(home / "bin" / "python"), "-m", "pip", "install", "-q", str(wheel)], env)
    empty = tmp_path / "empty"
    empty.mkdir()
    result = subprocess.run(
        [str(home / "bin" / "reactor-conformance"), "run", "--checks", "ECHO-BASIC-1"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=empty,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result
    assert _SUMMARY in result.stdout
    assert list(empty.iterdir()) == []


@pytest.mark.skipif(
    os.geteuid() != 0 or not all(shutil.which(t) for t in ("setpriv", "unshare", "mount")),
    reason="needs root, setpriv, unshare and mount to give the run a /dev/null it cannot write",
)
@pytest.mark.timeout(300)
def test_run_needs_no_writable_dev_null() -> None:
    """As ``nobody``, where ``/dev/null`` is a regular file that root owns (some containers).

    A private mount namespace binds such a file over ``/dev/null`` for this one
    command; the run starts servers (a process-mode reference server, whose
    sub-reactors are processes too) and writes its reports there, and its
    output is cut short by ``head`` (the broken pipe path).
    """
    with directory_for_others() as shared:
        env = environment_for_nobody(shared)
        python, why = python_for_nobody(shared, env)
        if python is None:
            pytest.skip(why)
        null = shared / "null"
        null.write_bytes(b"")
        null.chmod(0o644)
        server = f"{python} -m reference multi --mode process --sub-reactors 2 --port {{port}}"
        run = shlex.join(
            as_nobody(
                python, "-m", "conformance", "run", "--spawn", server,
                "--checks", "ECHO-BASIC-1,ECHO-HALFCLOSE-1", "--report-json",
                str(shared / "report.json"), "--artifacts", str(shared / "artifacts"),
            )
        )  # fmt: skip
        script = (
            f"mount --bind {shlex.quote(str(null))} /dev/null || exit 99\n"
            f"test -c /dev/null && exit 98\n"
            f"{run} > {shlex.quote(str(shared / 'out.txt'))} 2>&1; echo $? > {shared / 'rc'}\n"
            f"{run} 2>&1 | head -1\n"
        )
        result = subprocess.run(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
            capture_output=True, text=True, timeout=240, env=env, cwd=shared,
        )  # fmt: skip
        if result.returncode in (98, 99):
            pytest.skip(f"cannot bind a regular file over /dev/null here: {result.stderr.strip()}")
        out = (shared / "out.txt").read_text()
        assert (shared / "rc").read_text().strip() == "0", out
        assert "2 passed, 0 failed" in out, out
        assert "Traceback" not in result.stdout + result.stderr, result.stdout + result.stderr
        assert result.stdout.startswith("reactor-conformance:"), result.stdout
        assert null.read_bytes() == b""
        assert '"verdict": "PASS"' in (shared / "report.json").read_text()
