"""Running the load: in this process, or spread over several (``--procs N``).

How this works
--------------
:func:`run_load` validates the spec, runs the load and then checks, with
:func:`probe_alive`, that the server still answers a fresh connection.

With one process the :class:`~conformance.load.driver.Driver` runs here. With
``procs`` > 1 each load process (``spawn``, so nothing is inherited but the
spec) opens its share of the connections and says ``ready``; the parent then
says ``go`` to all at once, relays their progress, and collects from each its
result as plain data (:meth:`~conformance.load.result.LoadResult.to_data`),
which it reads back and merges. Every wait is bounded: connecting, by the
connect timeout; the run, by its duration plus the drain deadline.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import socket
import time
from collections.abc import Callable
from typing import Any

from conformance.load.driver import Driver
from conformance.load.loop import run
from conformance.load.result import LoadResult
from conformance.load.spec import LoadError, LoadSpec, reply_oracle
from conformance.oracle import EchoOracle, OracleFactory

__all__ = ["probe_alive", "run_load"]

#: Called now and then with (elapsed seconds, round trips, bytes verified).
Progress = Callable[[float, int, int], None]


def run_load(spec: LoadSpec, *, progress: Progress | None = None) -> LoadResult:
    """Run the load ``spec`` describes and check the server is alive afterwards.

    Args:
        spec: The target and the load.
        progress: Called now and then with (elapsed seconds, round trips, bytes).

    Returns:
        The merged result of every load process.

    Raises:
        ValueError: ``spec`` is out of range.
        LoadError: A load process died or never answered.
    """
    spec.validate()
    if spec.procs == 1:
        driver = Driver(spec, 0, spec.connections)
        driver.connect_all()
        run_start = time.monotonic()

        def one(trips: int, nbytes: int) -> None:
            if progress is not None:
                progress(time.monotonic() - run_start, trips, nbytes)

        result = run(driver, one)
    else:
        result = _run_processes(spec, progress)
    result.server_alive = probe_alive(spec.host, spec.port, oracle=spec.oracle)
    return result


def _process_main(
    spec: LoadSpec, first: int, count: int, pipe: multiprocessing.connection.Connection
) -> None:
    driver = Driver(spec, first, count)
    driver.connect_all()
    pipe.send(("ready", driver.result.connections_opened))
    if not pipe.poll(spec.connect_timeout * 3 + 30):
        return
    pipe.recv()
    last = [0.0]

    def progress(trips: int, nbytes: int) -> None:
        now = time.monotonic()
        if now - last[0] >= 0.5:
            last[0] = now
            pipe.send(("progress", trips, nbytes))

    result = run(driver, progress)
    pipe.send(("done", result.to_data()))


def _run_processes(spec: LoadSpec, progress: Progress | None) -> LoadResult:
    ctx = multiprocessing.get_context("spawn")
    base, extra = divmod(spec.connections, spec.procs)
    procs: list[tuple[Any, multiprocessing.connection.Connection]] = []
    first = 0
    try:
        for i in range(spec.procs):
            count = base + (1 if i < extra else 0)
            ours, theirs = ctx.Pipe()
            proc = ctx.Process(
                target=_process_main, args=(spec, first, count, theirs), name=f"load-{i + 1}"
            )
            proc.start()
            theirs.close()
            procs.append((proc, ours))
            first += count
        ready_by = time.monotonic() + spec.connect_timeout * 3 + 30
        for proc, pipe in procs:
            if not pipe.poll(max(0.0, ready_by - time.monotonic())):
                raise LoadError(f"load process {proc.name} did not connect in time")
            try:
                pipe.recv()
            except EOFError:
                raise LoadError(
                    f"load process {proc.name} died while connecting (exit code {proc.exitcode})"
                ) from None
        for _, pipe in procs:
            pipe.send("go")
        run_start = time.monotonic()
        parts: dict[int, LoadResult] = {}
        progress_by: dict[int, tuple[int, int]] = {}
        done_by = run_start + spec.duration + spec.drain_timeout + 30
        while len(parts) < len(procs):
            left = done_by - time.monotonic()
            if left <= 0:
                raise LoadError("load processes did not finish in time")
            pipes = [pipe for i, (_, pipe) in enumerate(procs) if i not in parts]
            for ready in multiprocessing.connection.wait(pipes, timeout=min(left, 1.0)):
                i = next(k for k, (_, p) in enumerate(procs) if p is ready)
                try:
                    message = procs[i][1].recv()
                except EOFError:
                    raise LoadError(f"load process {procs[i][0].name} died") from None
                if message[0] == "progress":
                    progress_by[i] = (message[1], message[2])
                    if progress is not None:
                        trips = sum(t for t, _ in progress_by.values())
                        nbytes = sum(b for _, b in progress_by.values())
                        progress(time.monotonic() - run_start, trips, nbytes)
                elif message[0] == "done":
                    parts[i] = LoadResult.from_data(spec, message[1])
        return LoadResult.merged(spec, [parts[i] for i in range(len(procs))])
    finally:
        for proc, pipe in procs:
            proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join(5)
            pipe.close()


def probe_alive(
    host: str, port: int, *, timeout: float = 5.0, oracle: OracleFactory = EchoOracle
) -> bool:
    """Whether a fresh connection gets the right answer to a short probe.

    Args:
        host: The server's address.
        port: The server's port.
        timeout: Seconds for the connect and for each receive.
        oracle: Says what the probe is owed (a :class:`~conformance.oracle.ReplyOracle`).

    Returns:
        True when what ``oracle`` says is owed came back within ``timeout``;
        when nothing is owed (discard), when the server answered the probe and
        our FIN with its own FIN and no byte.
    """
    probe = b"alive?\0\xff"
    owed = reply_oracle(oracle).expected_reply(probe)
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(probe)
            if not owed:
                sock.shutdown(socket.SHUT_WR)
                return sock.recv(4096) == b""
            got = b""
            deadline = time.monotonic() + timeout
            while len(got) < len(owed) and time.monotonic() < deadline:
                chunk = sock.recv(len(owed) - len(got))
                if not chunk:
                    break
                got += chunk
            return got == owed
    except OSError:
        return False
