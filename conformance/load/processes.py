"""Running the load: in this process, or spread over several (``--procs N``).

How this works
--------------
:func:`run_load` validates the spec, runs the load and then checks, with
:func:`probe_alive`, that the server still answers a fresh connection
(unless the oracle raised or could not judge: then nothing is judged).

With one process the driver runs here (a :class:`~conformance.load.driver.Driver`,
or over TLS a :class:`~conformance.load.tls_driver.TlsDriver`: :func:`make_driver`). With
``procs`` > 1 each load process (``spawn``, so nothing is inherited but the
spec) opens its share of the connections and says ``ready``; the parent then
says ``go`` to all at once, relays their progress, and collects from each its
result as plain data (:meth:`~conformance.load.result.LoadResult.to_data`),
which it reads back and merges. Every wait is bounded: connecting, by the
connect timeout; the run, by its duration plus the drain deadline; the probe,
by the connect timeout (5 s at most).

A ``ready`` hook, when given, is called once every connection is open (with
one process: after connecting; with several: when all said ``ready``, before
``go``) and the run starts when it returns: :mod:`conformance.load.hosts` waits
there for the ``go`` that starts every host at one instant.

A stop event (``stop``) ends it all early: the driver looks at it every tick,
the probe between two ``SLICE``-second waits. Load processes get their own
``multiprocessing`` event, set by the parent as soon as it sees ``stop``; they
send what they measured and exit, and those that have not within
``_STOP_GRACE`` seconds are killed. The result is then ``stopped``, and
partial.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from conformance.load.connector import SLICE, StopEvent
from conformance.load.loop import run
from conformance.load.probe import PROBE_TIMEOUT, probe_alive
from conformance.load.result import LoadResult
from conformance.load.spec import LoadError, LoadSpec
from conformance.load.tls_driver import make_driver
from conformance.oracle import OracleError
from conformance.targets.lifeline import die_with_parent

__all__ = ["probe_alive", "run_load"]

#: Called now and then with (elapsed seconds, round trips, bytes verified).
Progress = Callable[[float, int, int], None]

#: Called once every connection is open, with their count, just before the run
#: starts; it may block (until a ``go`` from elsewhere), the run waits for it.
Ready = Callable[[int], None]

_STOP_GRACE = 1.0  # seconds load processes have to report once stopped, before the kill
_EXIT_GRACE = 5.0  # seconds load processes have to exit after their result


def run_load(
    spec: LoadSpec,
    *,
    progress: Progress | None = None,
    stop: threading.Event | None = None,
    ready: Ready | None = None,
) -> LoadResult:
    """Run the load ``spec`` describes and check the server is alive afterwards.

    Args:
        spec: The target and the load.
        progress: Called now and then with (elapsed seconds, round trips, bytes).
        stop: When set (from another thread), the run ends at the next tick
            (within a fifth of a second; a second or so with ``procs`` > 1),
            the liveness probe too, and the result is ``stopped``.
        ready: Called with the number of connections opened once every load
            process has connected, before any sends; the run starts when it
            returns (:mod:`conformance.load.hosts` waits there for ``go``).

    Returns:
        The merged result of every load process.

    Raises:
        ValueError: ``spec`` is out of range.
        LoadError: A load process died or never answered.
    """
    spec.validate()
    if spec.procs == 1:
        driver = make_driver(spec, 0, spec.connections, stop)
        driver.connect_all()
        if ready is not None:
            ready(driver.result.connections_opened)
        run_start = time.monotonic()

        def one(trips: int, nbytes: int) -> None:
            if progress is not None:
                progress(time.monotonic() - run_start, trips, nbytes)

        result = run(driver, one)
    else:
        result = _run_processes(spec, progress, stop, ready)
    if result.stopped or result.oracle_error is not None or result.unjudged is not None:
        return result
    try:
        alive = probe_alive(
            spec.host,
            spec.port,
            timeout=min(PROBE_TIMEOUT, spec.connect_timeout),
            stop=stop,
            model=spec.protocol(),
            tls=spec.tls,
        )
    except OracleError as exc:
        result.oracle_error = str(exc)
        return result
    if stop is not None and stop.is_set():
        result.stopped = True
    else:
        result.server_alive = alive
    return result


def _process_main(
    spec: LoadSpec,
    first: int,
    count: int,
    pipe: multiprocessing.connection.Connection,
    stop: StopEvent,
    parent: int,
) -> None:
    die_with_parent(parent)  # A parent killed outright (SIGKILL) takes its load with it.
    driver = make_driver(spec, first, count, stop)
    driver.connect_all()
    pipe.send(("ready", driver.result.connections_opened))
    go_by = time.monotonic() + spec.connect_timeout * 3 + 30
    while not driver.tally.stop_requested():  # Stopped: run() ends at once, with the result.
        if pipe.poll(SLICE):
            try:
                pipe.recv()  # "go"
            except EOFError:
                return  # The parent is gone.
            break
        if time.monotonic() > go_by:
            return
    last = [0.0]

    def progress(trips: int, nbytes: int) -> None:
        now = time.monotonic()
        if now - last[0] >= 0.5:
            last[0] = now
            pipe.send(("progress", trips, nbytes))

    result = run(driver, progress)
    pipe.send(("done", result.to_data()))


def _run_processes(
    spec: LoadSpec,
    progress: Progress | None,
    stop: threading.Event | None,
    ready_hook: Ready | None,
) -> LoadResult:
    ctx = multiprocessing.get_context("spawn")
    stop_children = ctx.Event()
    base, extra = divmod(spec.connections, spec.procs)
    procs: list[tuple[Any, multiprocessing.connection.Connection]] = []
    stop_by: float | None = None  # once stopping: when to stop waiting for results
    first = 0
    try:
        for i in range(spec.procs):
            count = base + (1 if i < extra else 0)
            ours, theirs = ctx.Pipe()
            proc = ctx.Process(
                target=_process_main,
                args=(spec, first, count, theirs, stop_children, os.getpid()),
                name=f"load-{i + 1}",
            )
            proc.start()
            theirs.close()
            procs.append((proc, ours))
            first += count
        ready: set[int] = set()
        opened = 0
        ended: set[int] = set()  # sent their result, or died after the stop
        parts: dict[int, LoadResult] = {}
        progress_by: dict[int, tuple[int, int]] = {}
        by_pipe = {pipe: i for i, (_, pipe) in enumerate(procs)}
        ready_by = time.monotonic() + spec.connect_timeout * 3 + 30
        run_start = 0.0
        done_by: float | None = None  # once every process is ready and told to go
        while len(ended) < len(procs):
            now = time.monotonic()
            if stop_by is None and stop is not None and stop.is_set():
                stop_children.set()
                stop_by = now + _STOP_GRACE
            if stop_by is not None:
                if now >= stop_by:
                    break  # The others are killed below.
                limit = stop_by
            elif done_by is None:
                if now >= ready_by:
                    late = next(p.name for i, (p, _) in enumerate(procs) if i not in ready)
                    raise LoadError(f"load process {late} did not connect in time")
                limit = ready_by
            else:
                if now >= done_by:
                    raise LoadError("load processes did not finish in time")
                limit = done_by
            pipes = [pipe for i, (_, pipe) in enumerate(procs) if i not in ended]
            for ready_pipe in multiprocessing.connection.wait(
                pipes, timeout=min(limit - now, SLICE)
            ):
                assert isinstance(ready_pipe, multiprocessing.connection.Connection)
                i = by_pipe[ready_pipe]
                proc = procs[i][0]
                try:
                    message = ready_pipe.recv()
                except EOFError:
                    if stop_by is not None:
                        ended.add(i)
                        continue
                    when = " while connecting" if done_by is None else ""
                    raise LoadError(
                        f"load process {proc.name} died{when} (exit code {proc.exitcode})"
                    ) from None
                if message[0] == "ready":
                    ready.add(i)
                    opened += message[1]
                elif message[0] == "progress":
                    progress_by[i] = (message[1], message[2])
                    if progress is not None:
                        trips = sum(t for t, _ in progress_by.values())
                        nbytes = sum(b for _, b in progress_by.values())
                        progress(time.monotonic() - run_start, trips, nbytes)
                elif message[0] == "done":
                    parts[i] = LoadResult.from_data(spec, message[1])
                    ended.add(i)
            if done_by is None and stop_by is None and len(ready) == len(procs):
                if ready_hook is not None:
                    ready_hook(opened)
                for _, pipe in procs:
                    pipe.send("go")
                run_start = time.monotonic()
                done_by = run_start + spec.duration + spec.drain_timeout + 30
        result = LoadResult.merged(spec, [parts[i] for i in sorted(parts)])
        result.stopped = result.stopped or stop_by is not None
        return result
    finally:
        stop_children.set()  # (an error above: let the others end as well)
        exit_by = time.monotonic() + (_STOP_GRACE if stop_by is not None else _EXIT_GRACE)
        for proc, pipe in procs:
            proc.join(max(0.0, exit_by - time.monotonic()))
            if proc.is_alive():
                proc.kill()
                proc.join(_EXIT_GRACE)
            pipe.close()
