"""Load from several hosts: one execnet gateway each, one ``go`` for all.

How this works
--------------
Each host is an execnet gateway spec, the transport pytest-xdist runs on:
``popen`` (a new interpreter here, ``popen//python=...``) or ``ssh=user@host``
(``//python=python3`` unless it names one; ``//ssh_config=PATH`` for ssh's
``-F``), optionally with ``*N`` for N load processes there
(:meth:`HostSpec.parse`); without it a host gets the run's ``procs``. The
connections are shared out in proportion to the load processes.

The controller (:func:`run_hosts`) opens one gateway per host, each from its
own thread (a gateway that cannot start says so and the others go on). An
ssh host is asked first, with one short ssh command, whether it runs Python
3.11+ (:func:`preflight`), since execnet cannot tell an ssh failure from a
missing interpreter. The gateway then runs
:data:`~conformance.load.remote.REMOTE_SOURCE`: the controller sends it the
load generator's own modules (:func:`~conformance.load.remote.package_files`),
so a host needs nothing installed but Python, and
:func:`~conformance.load.remote.serve_host` reads the host's spec as plain
data from the channel, runs :func:`~conformance.load.run_load` and, once every
connection is open, says ``("ready", pid, opened)`` and waits for ``go``.
When every host is ready the controller says ``go`` to each, at one instant;
each host then sends its progress now and then and finally its result as
plain data (:meth:`~conformance.load.result.LoadResult.to_data`).

Every message of every host arrives on one queue (a channel callback per
host), so the controller waits in one place, in ``SLICE``-second steps, under
one deadline per phase: starting (connect timeout + ``START_GRACE``), then
running (duration + drain + probe + ``_RUN_GRACE``), then, after a stop,
``_STOP_GRACE``. A host that fails before ``go`` fails the whole run before
any load (:class:`HostError`: the command's exit 3). A host that dies, says
an error or misses the deadline after ``go`` is marked failed and named; the
others' results are kept and the result is ``partial``. At the end the group
of gateways is terminated (once every gateway still opening has joined it,
``_EXIT_GRACE`` at most): each is asked to exit, and those that have not
within ``_EXIT_GRACE`` seconds are killed, so no host can hold the
controller. (An interpreter that hangs while execnet bootstraps it fails the
start deadline like any host that is not ready; but its gateway never joins
the group, so its process is not ours to kill: it is left to end by itself.)

Facts about execnet this relies on
----------------------------------
- ``Group.makegateway`` with a ``popen`` spec runs ``subprocess.Popen``: a
  ``python=`` that does not exist raises ``FileNotFoundError`` at once.
- A channel callback runs on the gateway's receiver thread; its endmarker is
  delivered once when the channel closes, including when the remote process
  dies (the receiver sees EOF).
- ``Group.terminate(timeout)`` sends each gateway its exit, waits ``timeout``
  seconds for it, then kills the gateway's process.
- A ``popen`` gateway without ``python=`` runs this interpreter
  (``sys.executable``) in this directory.
- An ``ssh=`` gateway runs ``ssh [-F ssh_config] ARGS "PYTHON -c BOOTSTRAP"``;
  when that command fails (no route, refused key, no such interpreter) the
  bootstrap's EOF is swallowed unless ssh itself exited 255 (``HostNotFound``),
  and the gateway is returned dead: hence the preflight.
"""

from __future__ import annotations

import enum
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import execnet

from conformance.load.connector import SLICE
from conformance.load.host_spec import HostSpec, parse_hosts, preflight, share_out
from conformance.load.processes import Progress
from conformance.load.remote import REMOTE_SOURCE, START_GRACE, package_files, spec_to_data
from conformance.load.result import LoadResult
from conformance.load.spec import LoadSpec
from conformance.version import __version__

__all__ = [
    "HostError",
    "HostEvent",
    "HostReport",
    "HostSpec",
    "HostState",
    "HostsResult",
    "IllegalHostTransition",
    "parse_hosts",
    "run_hosts",
    "share_out",
]

_RUN_GRACE = 5.0  # seconds past duration + drain + probe before a silent host is given up
_STOP_GRACE = 3.0  # seconds hosts have to report once told to stop
_EXIT_GRACE = 3.0  # seconds gateways have to exit before they are killed
_PROBE = 5.0  # the liveness probe's bound (probe.PROBE_TIMEOUT)

_CLOSED = ("closed",)  # the endmarker each host's channel callback gets at its close


class HostError(Exception):
    """A host could not be reached or could not start its load; nothing ran."""


class HostState(enum.Enum):
    """Where one host is in the run.

    ``STARTING -> READY -> RUNNING -> DONE``; any state but ``DONE`` may go to
    ``FAILED`` (with the reason in :attr:`HostReport.error`).
    """

    STARTING = "starting"
    READY = "ready"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class HostEvent(enum.Enum):
    """What happens to a host: its messages, and the controller's ``go``."""

    READY = "ready"  # it said ready
    GO = "go"  # we said go
    DONE = "done"  # it sent its result
    FAIL = "fail"  # it said an error, closed, or missed the deadline


# The rules: a host is ready before it is told go; it may send its result
# while READY when a stop came before go (its run ends at once, stopped); it
# may fail at any point before it has ended. Once DONE or FAILED, whatever
# still comes from it (its channel's close, a late result) changes nothing.
_NEXT: dict[tuple[HostState, HostEvent], HostState] = {
    (HostState.STARTING, HostEvent.READY): HostState.READY,
    (HostState.READY, HostEvent.GO): HostState.RUNNING,
    (HostState.READY, HostEvent.DONE): HostState.DONE,
    (HostState.RUNNING, HostEvent.DONE): HostState.DONE,
    (HostState.STARTING, HostEvent.FAIL): HostState.FAILED,
    (HostState.READY, HostEvent.FAIL): HostState.FAILED,
    (HostState.RUNNING, HostEvent.FAIL): HostState.FAILED,
}
_ENDED = frozenset({HostState.DONE, HostState.FAILED})


class IllegalHostTransition(Exception):
    """A host event that its state does not allow (a bug in the protocol's use)."""


@dataclass
class HostReport:
    """One host's part of the run: its share, its process, how it ended."""

    label: str
    spec: LoadSpec  # this host's share
    state: HostState = HostState.STARTING
    pid: int | None = None
    connections_opened: int = 0
    progress: tuple[int, int] = (0, 0)
    result: LoadResult | None = None
    error: str | None = None

    @property
    def ended(self) -> bool:
        """DONE or FAILED: nothing more is waited for from this host."""
        return self.state in _ENDED

    def advance(self, event: HostEvent) -> None:
        """Move to the state the table gives; an ended host stays as it is.

        Raises:
            IllegalHostTransition: ``event`` is not allowed in this state.
        """
        if self.ended:
            return
        try:
            self.state = _NEXT[self.state, event]
        except KeyError:
            raise IllegalHostTransition(
                f"host {self.label}: {event.name} is illegal in state {self.state.name}"
            ) from None

    def fail(self, error: str) -> None:
        """Mark the host failed (unless it already ended), with the reason."""
        if not self.ended:
            self.error = error
            self.advance(HostEvent.FAIL)

    def to_data(self) -> dict[str, Any]:
        """This host as plain data: its share, its state, its own result's figures."""
        data: dict[str, Any] = {
            "host": self.label,
            "procs": self.spec.procs,
            "connections": self.spec.connections,
            "pid": self.pid,
            "state": self.state.value,
            "error": self.error,
        }
        if self.result is not None:
            own = self.result.to_data()
            for key in (
                "ok",
                "seconds",
                "round_trips",
                "bytes_verified",
                "latency_us",
                "errors",
                "first_error",
                "faults_injected",
                "server_alive",
                "stopped",
            ):
                data[key] = own[key]
        return data

    def summary(self) -> str:
        """A few words for the summary line: ``popen: 1200 round trips, errors 0``."""
        if self.result is None:
            return f"{self.label}: FAILED ({self.error})"
        errors = self.result.errors_by_name()
        text = f"{self.label}: {self.result.round_trips} round trips, errors {errors or 0}"
        if self.state is HostState.FAILED:
            text += f", FAILED ({self.error})"
        return text


@dataclass
class HostsResult:
    """The merged result of every host that finished, and each host's own part."""

    result: LoadResult
    hosts: list[HostReport] = field(default_factory=list)

    @property
    def partial(self) -> bool:
        """Some host did not finish: the merged figures cover the others only."""
        return any(host.state is not HostState.DONE for host in self.hosts)

    @property
    def ok(self) -> bool:
        """Every host finished and the merged result is ok."""
        return self.result.ok and not self.partial

    def to_data(self) -> dict[str, Any]:
        """The merged result's data, with ``ok``, ``partial`` and a ``hosts`` list."""
        return {
            **self.result.to_data(),
            "ok": self.ok,
            "partial": self.partial,
            "hosts": [host.to_data() for host in self.hosts],
        }

    def summary_line(self) -> str:
        """The merged summary line, then each host's part (and why a host failed)."""
        line = self.result.summary_line()
        if self.partial:
            line += "; PARTIAL (not every host finished)"
        return line + "; hosts: " + "; ".join(host.summary() for host in self.hosts)


def run_hosts(
    spec: LoadSpec,
    hosts: Sequence[HostSpec],
    *,
    progress: Progress | None = None,
    stop: threading.Event | None = None,
    on_ready: Callable[[dict[str, int]], None] | None = None,
) -> HostsResult:
    """Run ``spec``'s load from every host at once and merge what they measured.

    Args:
        spec: The whole run: its ``connections`` are shared out between the
            hosts; its ``procs`` is each host's load processes unless the host
            says ``*N``.
        hosts: One gateway spec per host (:func:`parse_hosts`).
        progress: Called now and then with (elapsed seconds, round trips, bytes),
            summed over the hosts.
        stop: When set, every host is told to stop; the result is ``stopped``.
        on_ready: Called with each host's label and load process id once every
            host is ready, just before ``go``.

    Returns:
        The merged result of the hosts that finished, and every host's report.

    Raises:
        ValueError: ``spec`` is out of range, or there are fewer connections
            than load processes.
        HostError: A host could not be reached or could not start its load
            ("host LABEL: why"); no load ran.
    """
    reports = [HostReport(label, own) for label, own in share_out(spec, hosts)]
    files = package_files()
    start_bound = _bound(spec, started=False)
    events: queue.Queue[tuple[int, Any]] = queue.Queue()
    group = execnet.Group()
    channels: dict[int, execnet.Channel] = {}
    lock = threading.Lock()

    def open_host(i: int) -> None:
        label = reports[i].label
        if hosts[i].xspec.ssh:
            why = preflight(hosts[i], start_bound - 1.0)
            if why is not None:
                events.put((i, ("unreachable", why)))
                return
        try:
            gateway = group.makegateway(hosts[i].gateway)
        except FileNotFoundError:
            events.put((i, ("unreachable", "python not found")))
            return
        except Exception as exc:  # execnet raises what the bootstrap met
            events.put((i, ("unreachable", f"gateway did not start: {type(exc).__name__}: {exc}")))
            return
        try:
            channel = gateway.remote_exec(REMOTE_SOURCE)
            with lock:
                channels[i] = channel
            channel.setcallback(lambda item: events.put((i, item)), endmarker=_CLOSED)
            channel.send((files, __version__))
            channel.send(spec_to_data(reports[i].spec))
        except (OSError, EOFError, ValueError) as exc:
            events.put((i, ("unreachable", f"gateway closed at start ({exc or label})")))

    def send_all(message: str) -> None:
        with lock:
            live = [(i, ch) for i, ch in channels.items() if not reports[i].ended]
        for _, channel in live:
            try:
                channel.send(message)
            except (OSError, EOFError, ValueError):
                pass  # Its close will come through the queue.

    openers = [
        threading.Thread(target=open_host, args=(i,), name=f"host-{i + 1}", daemon=True)
        for i in range(len(reports))
    ]
    for opener in openers:
        opener.start()
    started = False
    stopping = False
    run_start = 0.0
    deadline = time.monotonic() + spec.connect_timeout + START_GRACE
    try:
        while not all(report.ended for report in reports):
            now = time.monotonic()
            if not stopping and stop is not None and stop.is_set():
                stopping = True
                send_all("stop")
                deadline = min(deadline, now + _STOP_GRACE)
            if now >= deadline:
                if stopping:
                    why = f"did not stop in time ({_STOP_GRACE:.0f}s)"
                else:
                    what = "answer in time" if started else "become ready in time"
                    why = f"did not {what} ({_bound(spec, started):.0f}s)"
                late = [r for r in reports if r.state is HostState.STARTING]
                for report in reports:
                    report.fail(why)
                if late and not started and not stopping:
                    raise HostError(f"host {late[0].label}: {why}")
                break
            try:
                i, message = events.get(timeout=min(SLICE, deadline - now))
            except queue.Empty:
                continue
            report = reports[i]
            _receive(report, message, started)
            if not started and report.state is HostState.FAILED and not stopping:
                raise HostError(f"host {report.label}: {report.error}")
            if progress is not None and message[0] == "progress":
                trips = sum(r.progress[0] for r in reports)
                nbytes = sum(r.progress[1] for r in reports)
                progress(time.monotonic() - run_start, trips, nbytes)
            if not started and all(r.state is HostState.READY for r in reports):
                if on_ready is not None:
                    on_ready({r.label: r.pid for r in reports if r.pid is not None})
                send_all("go")
                for r in reports:
                    r.advance(HostEvent.GO)
                started = True
                run_start = time.monotonic()
                deadline = run_start + _bound(spec, started)
                if stopping:
                    deadline = min(deadline, run_start + _STOP_GRACE)
    finally:
        # A host may still be opening (an early error): wait for its gateway to
        # be in the group before ending the group, or it would outlive the run.
        join_by = time.monotonic() + _EXIT_GRACE
        for opener in openers:
            opener.join(max(0.0, join_by - time.monotonic()))
        send_all("stop")
        group.terminate(timeout=_EXIT_GRACE)
    return _merge(spec, reports, stopped=stopping)


def _bound(spec: LoadSpec, started: bool) -> float:
    if not started:
        return spec.connect_timeout + START_GRACE
    return spec.duration + spec.drain_timeout + min(_PROBE, spec.connect_timeout) + _RUN_GRACE


def _receive(report: HostReport, message: Any, started: bool) -> None:
    """Apply one message from a host to its report."""
    kind = message[0]
    if report.ended:
        return  # Its close after its result, or a late word after the deadline.
    if kind == "ready":
        report.advance(HostEvent.READY)
        report.pid = int(message[1])
        report.connections_opened = int(message[2])
    elif kind == "progress":
        report.progress = (int(message[1]), int(message[2]))
    elif kind == "done":
        report.advance(HostEvent.DONE)
        report.result = LoadResult.from_data(report.spec, message[1])
    elif kind in ("unreachable", "error"):
        report.fail(str(message[1]))
    elif message == _CLOSED:
        pid = f" (pid {report.pid})" if report.pid is not None else ""
        report.fail(f"died mid-run{pid}" if started else f"gateway closed before ready{pid}")


def _merge(spec: LoadSpec, reports: list[HostReport], *, stopped: bool) -> HostsResult:
    parts = [r.result for r in reports if r.result is not None]
    merged = LoadResult.merged(spec, parts)
    alive = [part.server_alive for part in parts]
    if False in alive:
        merged.server_alive = False
    elif alive and all(alive):
        merged.server_alive = True
    merged.stopped = merged.stopped or stopped
    return HostsResult(merged, reports)
