"""The host's end of a load from several hosts: the code a gateway runs, and what it needs.

How this works
--------------
A host needs only Python 3.11+ (and, for ``ssh=``, an ssh server): the
controller sends it the load generator itself. :data:`REMOTE_SOURCE` is what
the controller runs on the host's interpreter through execnet. It first
checks the interpreter's version, then receives the package's modules that
the load needs (:func:`package_files`: the load generator, its oracles, its
histogram and the protocol models, a few hundred KB of source; standard
library only: the models import Hypothesis only to draw requests, which a
load does not) and writes
them to a new temporary directory, which it puts first on ``sys.path``: the
host runs the controller's own code, whatever is installed there. Should
that directory not be writable, an installed ``conformance`` is used
instead; when neither is there, the host says ``unreachable`` with
"reactor-conformance VERSION not importable". The directory is removed when
the host's run ends (a host killed mid-run leaves it in its temporary
directory).

Then :func:`serve_host` reads the host's spec as plain data from the
channel, runs :func:`~conformance.load.run_load` and, once every connection
is open, says ``("ready", pid, opened)`` and waits for ``go``; it sends its
progress now and then and finally its result as plain data.

The spec names its protocol model (``echo``, ``resp``, an oracle's
``oracle:package.module:Class``) and the host makes it there: a user's model
or oracle module is not sent, so it must be importable on the host
(installed there, or on its ``PYTHONPATH``; a ``popen`` host runs in this
directory, with this environment). When it is not, the host says so before
any load, naming the oracle (the model).

This module imports nothing outside the standard library and the modules it
sends (not execnet: on the host execnet is only its bootstrapped
``gateway_base``).
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from conformance.errors import UsageError
from conformance.load.connector import SLICE
from conformance.load.processes import run_load
from conformance.load.spec import Faults, LoadSpec
from conformance.protocols import ORACLE
from conformance.tls import TlsSettings

__all__ = [
    "PROGRESS_EVERY",
    "REMOTE_SOURCE",
    "START_GRACE",
    "package_files",
    "serve_host",
    "model_here",
    "spec_from_data",
    "spec_to_data",
]

START_GRACE = 10.0  # seconds for an interpreter to start and import, on top of the connect timeout
PROGRESS_EVERY = 0.5  # seconds between two progress messages from a host
_CLOSED = ("closed",)  # the endmarker of the host's channel callback

#: The package's modules a host needs to run the load, relative to the package's parent.
_SHIPPED = (
    "conformance/__init__.py",
    "conformance/errors.py",
    "conformance/targets/__init__.py",
    "conformance/targets/lifeline.py",
    "conformance/tls.py",
    "conformance/oracle.py",
    "conformance/rules.py",
    "conformance/transcript.py",
    "conformance/user_code.py",
    "conformance/version.py",
    "conformance/load/*.py",
    "conformance/protocols/*.py",
)
#: Modules of ``conformance/load`` that stay with the controller (execnet is theirs).
_NOT_SHIPPED = frozenset({"conformance/load/hosts.py", "conformance/load/host_spec.py"})

#: What runs on the host's interpreter first (``channel`` is execnet's). It is
#: followed by the package's files, ``{relative path: source}``, and the
#: controller's version.
REMOTE_SOURCE = """
import os, shutil, sys, tempfile
if sys.version_info < (3, 11):
    channel.send(("unreachable", "needs Python 3.11+, has " + sys.version.split()[0]))
else:
    files, version = channel.receive()
    home, why = None, ""
    try:
        home = tempfile.mkdtemp(prefix="reactor-conformance-")
        for name, source in files.items():
            path = os.path.join(home, *name.split("/"))
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w", encoding="utf-8") as out:
                out.write(source)
        sys.path.insert(0, home)
    except OSError as exc:
        why = " (and it could not be sent: %s)" % exc
    try:
        try:
            from conformance.load.remote import serve_host
        except Exception as exc:
            channel.send(("unreachable", "reactor-conformance %s not importable: %s: %s%s"
                          % (version, type(exc).__name__, exc, why)))
        else:
            serve_host(channel)
    finally:
        if home is not None:
            shutil.rmtree(home, ignore_errors=True)
"""


def package_files() -> dict[str, str]:
    """The source of every module a host needs, by path relative to the package's parent."""
    top = Path(__file__).resolve().parents[2]
    files: dict[str, str] = {}
    for pattern in _SHIPPED:
        for path in sorted(top.glob(pattern)):
            name = path.relative_to(top).as_posix()
            if name not in _NOT_SHIPPED:
                files[name] = path.read_text(encoding="utf-8")
    return files


def spec_to_data(spec: LoadSpec) -> dict[str, Any]:
    """``spec`` as plain data for a channel (its model by name, its TLS settings as data)."""
    data = asdict(spec)
    data["tls"] = None if spec.tls is None else spec.tls.to_data()
    return data


def spec_from_data(data: dict[str, Any]) -> LoadSpec:
    """The spec that :func:`spec_to_data` wrote."""
    tls = data.get("tls")
    return LoadSpec(
        **{
            **data,
            "faults": Faults(**data["faults"]),
            "tls": None if tls is None else TlsSettings.from_data(tls),
        }
    )


def model_here(spec: LoadSpec) -> str | None:
    """None when the spec's model (its oracle) can be made here; else why not, in one line."""
    try:
        spec.protocol()
    except UsageError as exc:
        what, name, module = "protocol model", spec.model, "model"
        if spec.model.startswith(ORACLE):
            what, name, module = "oracle", spec.model.removeprefix(ORACLE), "oracle"
        return (
            f"the {what} {name} is not importable on this host ({exc}): a user's "
            f"{module} module is not sent to a load host, it must be importable there "
            "(installed, or on its PYTHONPATH)"
        )
    return None


def serve_host(channel: Any) -> None:
    """The host's end: receive a spec, connect, say ready, wait for go, run, send the result.

    Runs on the host's interpreter (from :data:`REMOTE_SOURCE`) with the
    execnet channel. Sends ``("ready", pid, opened)``, ``("progress", trips,
    bytes)`` now and then, and ``("done", result data)``; or ``("error", why)``.
    A ``stop`` from the controller, or its channel closing, stops the run.

    Args:
        channel: The execnet channel to the controller.
    """
    go = threading.Event()
    stop = threading.Event()
    data = channel.receive(START_GRACE)

    def on_message(item: Any) -> None:
        if item == "go":
            go.set()
        else:  # "stop", or the controller's channel closed
            stop.set()

    channel.setcallback(on_message, endmarker=_CLOSED)
    try:
        spec = spec_from_data(data)
        why = model_here(spec)
        if why is not None:
            channel.send(("error", why))
            return
        go_by = time.monotonic() + spec.connect_timeout + START_GRACE * 2

        def ready(opened: int) -> None:
            channel.send(("ready", os.getpid(), opened))
            while not go.wait(SLICE) and not stop.is_set():
                if time.monotonic() > go_by:
                    stop.set()  # The controller never said go: end, stopped.

        last = [0.0]

        def progress(elapsed: float, trips: int, nbytes: int) -> None:
            now = time.monotonic()
            if now - last[0] >= PROGRESS_EVERY:
                last[0] = now
                channel.send(("progress", trips, nbytes))

        result = run_load(spec, progress=progress, stop=stop, ready=ready)
        channel.send(("done", result.to_data()))
    except Exception as exc:  # Everything the controller should hear, as one line.
        channel.send(("error", f"{type(exc).__name__}: {exc}"))
