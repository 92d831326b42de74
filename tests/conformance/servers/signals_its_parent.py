"""An echo server that sends a signal to its parent once its clients have sent it 1 MiB.

Usage: python signals_its_parent.py --port PORT --signal TERM [--pidfile PATH]

Started by ``reactor-conformance run --spawn``, its parent is the run: the
signal then arrives in the middle of a check that moves more than 1 MiB on
one connection (ECHO-SIZE-2), never between checks, whatever the machine's
speed. Otherwise a correct echo server (RFC 862) that prints
``listening on HOST:PORT`` once it listens.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
from typing import cast

#: Bytes the clients send in all before the signal goes.
AFTER = 1 << 20


class Echo(asyncio.Protocol):
    def __init__(self, signum: int, received: list[int]) -> None:
        self.signum = signum
        self.received = received  # one count shared by every connection

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)
        before = self.received[0]
        self.received[0] += len(data)
        if before <= AFTER < self.received[0]:
            os.kill(os.getppid(), self.signum)

    def pause_writing(self) -> None:
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        if not self.transport.is_closing():
            self.transport.resume_reading()


async def main(args: argparse.Namespace) -> None:
    signum = signal.Signals[f"SIG{args.signal}"]
    if args.pidfile:
        with open(args.pidfile, "w") as pidfile:
            pidfile.write(f"{os.getpid()}\n")
    received = [0]
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Echo(signum, received), args.host, args.port)
    host, port = server.sockets[0].getsockname()[:2]
    print(f"listening on {host}:{port}", flush=True)
    stop = asyncio.Event()
    for stopping in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(stopping, stop.set)
    async with server:
        await stop.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--signal", default="TERM", choices=("TERM", "HUP", "INT", "KILL"))
    parser.add_argument("--pidfile", help="Write this process's PID there")
    asyncio.run(main(parser.parse_args()))
