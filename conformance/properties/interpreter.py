"""The scenario interpreter: runs a :class:`~conformance.properties.scenario.Scenario` in a harness.

How this works
--------------
Each connection's script runs in its own task (:class:`_Runner`), with a
reader beside it that reads while the script sends (unless the script stops
reading for a while); at the end each connection reads what it is still
owed, or, after a half-close, reads the rest and then the server's FIN (each
part judged by its rule, :mod:`conformance.rules`), and the oracle judges the
whole exchange. Every step runs under the harness's deadlines.

Under a protocol model, a scenario's requests are drawn with the template key
prefix (:data:`~conformance.protocols.TEMPLATE`); each connection the
interpreter opens (a reconnection too) puts fresh keys in its place before
sending, since keys outlive connections on the server and each oracle models
its own connection's keys from nothing.
"""

from __future__ import annotations

import uuid

import trio

from conformance.checks.base import liveness
from conformance.harness import Connection, Divergence, Harness
from conformance.properties.scenario import (
    HalfClose,
    Pause,
    Read,
    Reconnect,
    Reset,
    Scenario,
    Script,
    Send,
    StopReading,
)
from conformance.protocols import Capability, fresh_keys

__all__ = ["interpret"]


class _Runner:
    """Runs one connection's script, with a reader beside it."""

    def __init__(self, h: Harness, name: str, script: Script) -> None:
        self.h = h
        self.name = name
        self.script = script
        self.read_size = 65536
        self.resume_at = 0.0
        self.reader_scope: trio.CancelScope | None = None
        self.recv_scope: trio.CancelScope | None = None
        self.reader_done = trio.Event()
        self.count = 0
        self.fresh = Capability.ANY_BYTES not in h.model.capabilities
        self.keys = b""

    def _connected(self) -> None:
        """A new connection: new keys for its requests."""
        self.keys = uuid.uuid4().hex[:12].encode()

    async def run(self) -> None:
        conn = await self.h.connect(self.name, rcvbuf=self.script.rcvbuf)
        self._connected()
        half_closed = False
        async with trio.open_nursery() as nursery:
            await self._start_reader(nursery, conn)
            for n, step in enumerate(self.script.steps, 1):
                where = f"{self.name} step {n}"
                match step:
                    case Send(data, chunks):
                        if self.fresh:
                            data = fresh_keys(data, self.keys)
                        await conn.send(data, chunks=chunks or None, step=f"{where}: send")
                    case Pause(seconds):
                        await trio.sleep(seconds)
                    case Read(size):
                        self.read_size = size
                    case StopReading(seconds):
                        self.resume_at = trio.current_time() + seconds
                        if self.recv_scope is not None:
                            self.recv_scope.cancel()
                    case Reset():
                        await self._stop_reader()
                        conn.reset()
                        return
                    case Reconnect():
                        await self._stop_reader()
                        await conn.settle(step=f"{where}: read what is owed before reconnecting")
                        conn.conclude(f"{where}: judge before reconnecting")
                        conn.close()
                        self.count += 1
                        conn = await self.h.connect(
                            f"{self.name}.{self.count}", rcvbuf=self.script.rcvbuf
                        )
                        self._connected()
                        await self._start_reader(nursery, conn)
                    case HalfClose() if conn.stream.no_half_close is not None:
                        # The scenario ends here, judged as far as it went.
                        self.h.not_measured(conn.stream.no_half_close)
                        break
                    case HalfClose():
                        await conn.shutdown_write()
                        half_closed = True
            await self._stop_reader()
        if half_closed:
            await conn.expect_owed_then_fin(step=f"{self.name}: read the rest after the half-close")
        else:
            # Megabytes may still be owed through a tiny window: a hang is a
            # server that stops delivering, not one that delivers slowly.
            await conn.settle(step=f"{self.name}: read what is still owed", idle=True)
            conn.conclude(f"{self.name}: judge the whole exchange")
            conn.close()

    async def _start_reader(self, nursery: trio.Nursery, conn: Connection) -> None:
        self.reader_done = trio.Event()
        self.reader_scope = trio.CancelScope()
        nursery.start_soon(self._read, conn, self.reader_scope, self.reader_done)

    async def _stop_reader(self) -> None:
        if self.reader_scope is not None:
            self.reader_scope.cancel()
            await self.reader_done.wait()
            self.reader_scope = None

    async def _read(self, conn: Connection, scope: trio.CancelScope, done: trio.Event) -> None:
        try:
            with scope:
                while True:
                    if self.resume_at > trio.current_time():
                        await trio.sleep_until(self.resume_at)
                    with trio.CancelScope() as recv_scope:
                        self.recv_scope = recv_scope
                        data = await conn.recv_some(self.read_size)
                    self.recv_scope = None
                    if recv_scope.cancelled_caught:
                        continue
                    verdict = conn.oracle.verdict()
                    if verdict.failed:
                        raise Divergence(
                            verdict.reason,
                            step=f"{self.name}: read while sending",
                            transcript=conn.transcript,
                            verdict=verdict,
                        )
                    if not data:
                        return  # FIN or RST: the final judgement says whether it was owed.
        finally:
            done.set()


async def interpret(h: Harness, scenario: Scenario, *, check_liveness: bool = False) -> None:
    """Run ``scenario`` against ``h``'s target; raise CheckFailure on the first failure."""
    async with trio.open_nursery() as nursery:
        for i, script in enumerate(scenario.connections, 1):
            nursery.start_soon(_Runner(h, f"c{i}", script).run)
    if check_liveness:
        await liveness(h, "liveness after the scenario")
