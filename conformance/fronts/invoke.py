"""Run pytest in-process under a configuration the suite owns.

How this works
--------------
``reactor-conformance run`` is a front over the pytest plugin: it runs
``pytest.main`` in its own process. Left to itself, pytest would read its
configuration from wherever the user happens to stand: the current
directory's ``pytest.ini``, ``pyproject.toml``, ``tox.ini`` or ``setup.cfg``
(``addopts``, ``filterwarnings``, ``timeout``...), every ``conftest.py`` on
the way to the arguments, the ``PYTEST_ADDOPTS`` and ``PYTEST_PLUGINS``
environment variables, and every plugin installed in the environment
(pytest-randomly would reorder the checks, pytest-rerunfailures would rerun a
failed one). None of that belongs in a conformance run, so :func:`run_pytest`:

- writes an empty ``[pytest]`` section to ``pytest.ini`` in a temporary
  directory of its own and names it with ``-c``, and that directory with
  ``--rootdir``, so no configuration file is searched for;
- passes ``--noconftest``, so no ``conftest.py`` is imported;
- turns off pytest's ``logging`` plugin (``-p no:logging``): the run logs
  nothing through it, and it would open ``/dev/null`` for writing at start;
- runs with ``PYTEST_ADDOPTS`` and ``PYTEST_PLUGINS`` removed and
  ``PYTEST_DISABLE_PLUGIN_AUTOLOAD`` set, and loads by name exactly the
  plugins the suite uses (:data:`PLUGINS`). xdist's workers are started from
  this process's environment and arguments, so they see the same.

The environment is put back when pytest returns.

Facts about pytest this relies on
---------------------------------
- ``-c FILE`` takes FILE as the only configuration file. pytest 9.2 refuses a
  FILE whose name has no known suffix (``.ini``, ``.cfg``, ``.toml``) unless it
  is a character device, so ``-c /dev/null`` fails where ``/dev/null`` is a
  regular file; a real ``pytest.ini`` works in every version.
- ``-p NAME`` imports the module NAME as a plugin before the command line is
  parsed, also when plugin autoloading is disabled; ``-p no:NAME`` blocks a
  built-in plugin.
- pytest's ``logging`` plugin opens its log file at configure, ``os.devnull``
  when none is set. Where ``/dev/null`` is a regular file owned by root (some
  containers), a user who cannot write it gets ``PermissionError`` and pytest
  an INTERNALERROR before any test runs.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

__all__ = ["IGNORED_ENVIRONMENT", "PLUGINS", "owned_configuration", "run_pytest"]

#: The plugins a conformance run loads, as module names: xdist (``-n``), Hypothesis
#: (``--hypothesis-profile``), the suite.
PLUGINS: tuple[str, ...] = ("xdist.plugin", "_hypothesis_pytestplugin", "conformance.fronts.plugin")
#: Environment variables through which a user's pytest settings would reach the run.
IGNORED_ENVIRONMENT: tuple[str, ...] = ("PYTEST_ADDOPTS", "PYTEST_PLUGINS")
_AUTOLOAD = "PYTEST_DISABLE_PLUGIN_AUTOLOAD"

_INI = """\
# Written by reactor-conformance for one run: a configuration of its own, so
# that no pytest.ini, pyproject.toml, tox.ini or setup.cfg of the current
# directory applies.
[pytest]
"""


@contextmanager
def owned_configuration() -> Iterator[list[str]]:
    """The pytest arguments and environment of a run that depends on nothing around it.

    Yields:
        The arguments that name the configuration and the plugins; for as long as
        the block runs, the process environment is the one described above.
    """
    saved = {name: os.environ.get(name) for name in (*IGNORED_ENVIRONMENT, _AUTOLOAD)}
    with tempfile.TemporaryDirectory(prefix="reactor-conformance-pytest-") as directory:
        ini = Path(directory) / "pytest.ini"
        ini.write_text(_INI)
        for name in IGNORED_ENVIRONMENT:
            os.environ.pop(name, None)
        os.environ[_AUTOLOAD] = "1"
        try:
            args = ["-c", str(ini), "--rootdir", directory, "--noconftest", "-p", "no:logging"]
            for plugin in PLUGINS:
                args += ["-p", plugin]
            yield args
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value


def run_pytest(argv: Sequence[str], plugins: Sequence[object] = ()) -> int:
    """``pytest.main`` with ``argv`` under :func:`owned_configuration`.

    Args:
        argv: The run's own arguments (what to collect, the suite's options).
        plugins: Plugin objects registered in this process only.

    Returns:
        pytest's exit code.
    """
    import pytest

    with owned_configuration() as args:
        return int(pytest.main([*args, *argv], plugins=list(plugins)))
