"""An echo server that writes to stderr in a loop, as fast as the pipe takes it.

Usage: python floods_stderr.py --port PORT

Otherwise a correct echo server (RFC 862) that prints ``listening on
HOST:PORT`` once it listens. Realistic: debug logging left on in a hot path,
or a server that logs every failed ``accept`` while it spins on EMFILE. A run
against it must not fill the disk with its log.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import signal
import sys
import threading
from typing import cast


class Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)

    def pause_writing(self) -> None:
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        if not self.transport.is_closing():
            self.transport.resume_reading()


def flood() -> None:
    padding = "x" * 100
    for n in itertools.count():
        sys.stderr.write(f"floods_stderr: line {n} {padding}\n")


async def main(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Echo, args.host, args.port)
    host, port = server.sockets[0].getsockname()[:2]
    print(f"listening on {host}:{port}", flush=True)
    threading.Thread(target=flood, daemon=True).start()
    stop = asyncio.Event()
    for stopping in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(stopping, stop.set)
    async with server:
        await stop.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    asyncio.run(main(parser.parse_args()))
