"""Command line of the reference servers: ``python -m reference MODEL [options]``.

The same sub-commands serve ``reactor-conformance serve MODEL``: both fronts
call :func:`add_model_parsers` and :func:`serve`, so an option is defined once.

Every server prints ``listening on HOST:PORT`` as its first line on stdout,
flushed, once it accepts connections, and stops cleanly (exit 0) on SIGINT or
SIGTERM; a second signal stops at once. A bad host, a port in use or out of
range, flow-control marks that do not fit, a descriptor limit too small for the
sub-reactors asked for, a TLS certificate or key that cannot be read or used:
one line on stderr and exit code 2. A server that
starts but can no longer serve at all (process mode, every sub-reactor keeps
dying): one line on stderr and exit code 1.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import signal
import ssl
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import NoReturn, Protocol

from reference.connection import DEFAULT_HIGH_WATER, DEFAULT_LOW_WATER
from reference.handler import HANDLERS, NO_WORK, HandlerFactory, Work, with_work
from reference.multi import ProcessReactor
from reference.reactor import Reactor
from reference.server import (
    ConnectionOptions,
    ServeError,
    StartError,
    bind_listener,
    format_address,
)
from reference.tls import DEFAULT_HANDSHAKE_TIMEOUT, TlsFiles

__all__ = [
    "ArgumentParser",
    "Model",
    "MODELS",
    "add_model_parsers",
    "build_parser",
    "main",
    "serve",
]

#: Exit code for bad usage and for an address the server cannot listen on.
EXIT_USAGE = 2
#: Exit code of a server that started but could no longer serve.
EXIT_FAILED = 1


class ArgumentParser(argparse.ArgumentParser):
    """An argparse parser whose usage errors are one line on stderr, exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class Running(Protocol):
    """A model built and ready to serve."""

    address: tuple[str, int]

    def serve_forever(self) -> None: ...

    def stop(self, grace: float = ...) -> None: ...


@dataclass(frozen=True)
class Model:
    """One arrangement of the core, as the command line knows it."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    build: Callable[[argparse.Namespace, HandlerFactory, ConnectionOptions], Running]


def _build_single(
    args: argparse.Namespace, factory: HandlerFactory, options: ConnectionOptions
) -> Running:
    return Reactor(args.listener, factory, options=options, tls=args.tls_context)


def _pool_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--workers",
        type=positive_int,
        default=4,
        help="Worker threads that run the handlers (default: %(default)s)",
    )


def _build_pool(
    args: argparse.Namespace, factory: HandlerFactory, options: ConnectionOptions
) -> Running:
    return Reactor(
        args.listener, factory, options=options, workers=args.workers, tls=args.tls_context
    )


def _multi_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--sub-reactors",
        type=positive_int,
        default=os.cpu_count() or 2,
        help="Sub-reactors that own the connections (default: the number of CPUs, %(default)s)",
    )
    parser.add_argument(
        "--mode",
        choices=["thread", "process"],
        default="thread",
        help="Run each sub-reactor on a thread, or in a process of its own that receives "
        "the accepted sockets and so uses a core of its own (default: %(default)s)",
    )


def _build_multi(
    args: argparse.Namespace, factory: HandlerFactory, options: ConnectionOptions
) -> Running:
    if args.mode == "process":
        return ProcessReactor(
            args.listener,
            args.handler,
            sub_reactors=args.sub_reactors,
            options=options,
            verbose=args.verbose,
            work=args.work,
            tls=args.tls_files,
        )
    return Reactor(
        args.listener,
        factory,
        options=options,
        sub_reactors=args.sub_reactors,
        tls=args.tls_context,
    )


def _no_arguments(parser: argparse.ArgumentParser) -> None:
    pass


MODELS: dict[str, Model] = {
    "single": Model(
        "single",
        "One reactor thread accepts, reads, runs the handler and writes",
        _no_arguments,
        _build_single,
    ),
    "pool": Model(
        "pool",
        "One reactor thread does all I/O; handlers run on a worker pool, in order per connection",
        _pool_arguments,
        _build_pool,
    ),
    "multi": Model(
        "multi",
        "A main reactor accepts; sub-reactors (threads or processes) own the connections",
        _multi_arguments,
        _build_multi,
    ),
}


def port_number(text: str) -> int:
    """Parse a TCP port (0 to 65535) for argparse."""
    try:
        port = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port must be between 0 and 65535, got {port}")
    return port


def at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: a whole number of at least ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text, 10)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


#: A whole number of at least 1, for argparse.
positive_int = at_least(1)


def positive_seconds(text: str) -> float:
    """Parse a number of seconds above 0 for argparse."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a number of seconds above 0, got {text}")
    return value


def work_spec(text: str) -> Work:
    """Parse ``--work`` (``none``, ``block:MS``, ``cpu:US``) for argparse."""
    try:
        return Work.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text}: {exc}") from None


def add_model_parsers(
    subparsers: argparse._SubParsersAction,  # type: ignore[type-arg]
) -> None:
    """Add one sub-command per model, each with the common server options."""
    for model in MODELS.values():
        parser = subparsers.add_parser(model.name, help=model.help, description=model.help)
        parser.add_argument(
            "--host", default="127.0.0.1", help="Address to listen on (default: %(default)s)"
        )
        parser.add_argument(
            "--port",
            type=port_number,
            default=0,
            help="Port to listen on; 0 picks a free one (default: %(default)s)",
        )
        parser.add_argument(
            "--handler",
            choices=sorted(HANDLERS),
            default="echo",
            help="Protocol to serve: echo (RFC 862), discard (RFC 863), resp (a few Redis "
            "commands: PING ECHO SET GET INCR DEL) or memcached (its text protocol: get set "
            "delete incr version) (default: %(default)s)",
        )
        parser.add_argument(
            "--high-water",
            type=at_least(2),
            default=DEFAULT_HIGH_WATER,
            metavar="BYTES",
            help="Stop reading from a client once this many bytes of replies wait to be "
            "sent to it (default: %(default)s)",
        )
        parser.add_argument(
            "--low-water",
            type=positive_int,
            default=None,
            metavar="BYTES",
            help="Read from it again once they are down to this; below --high-water "
            f"(default: a quarter of --high-water, {DEFAULT_LOW_WATER})",
        )
        parser.add_argument(
            "--work",
            type=work_spec,
            default=NO_WORK,
            metavar="none|block:MS|cpu:US",
            help="What the handler costs per message: nothing, blocking its thread for MS "
            "milliseconds (like a blocking database call), or burning US microseconds of CPU "
            "(default: none)",
        )
        parser.add_argument(
            "--tls-cert",
            metavar="FILE",
            help="Speak TLS on every connection, with this PEM certificate (any intermediates "
            "after it); the private key is read from --tls-key, or from this same file when "
            "--tls-key is not given (default: plain TCP)",
        )
        parser.add_argument(
            "--tls-key",
            metavar="FILE",
            help="The unencrypted PEM private key of --tls-cert",
        )
        parser.add_argument(
            "--tls-handshake-timeout",
            type=positive_seconds,
            default=DEFAULT_HANDSHAKE_TIMEOUT,
            metavar="SECONDS",
            help="Close a TLS client that has not completed its handshake within this many "
            "seconds (default: %(default)s)",
        )
        parser.add_argument(
            "-v", "--verbose", action="store_true", help="Log debug messages to stderr"
        )
        model.add_arguments(parser)
        parser.set_defaults(model=model.name)


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``python -m reference``."""
    parser = ArgumentParser(
        prog="python -m reference",
        description="Run a reference Reactor-pattern TCP server.",
        epilog="Examples: python -m reference single --port 7000; "
        "python -m reference multi --sub-reactors 4 --mode process",
    )
    sub = parser.add_subparsers(title="models", metavar="MODEL", required=True)
    add_model_parsers(sub)
    return parser


def connection_options(args: argparse.Namespace) -> ConnectionOptions:
    """The flow-control settings that ``args`` ask for.

    Raises:
        StartError: ``--low-water`` is not below ``--high-water``.
    """
    high: int = args.high_water
    low: int = max(1, high // 4) if args.low_water is None else args.low_water
    if low >= high:
        raise StartError(
            f"--low-water ({low}) must be below --high-water ({high}); lower the one or "
            "raise the other"
        )
    return ConnectionOptions(
        high_water=high, low_water=low, handshake_timeout=args.tls_handshake_timeout
    )


def load_tls(args: argparse.Namespace) -> tuple[TlsFiles, ssl.SSLContext] | None:
    """The certificate and key that ``args`` name, and the context loaded from them.

    Returns:
        The files (what a sub-reactor process loads for itself) and the
        context; None for plain TCP.

    Raises:
        StartError: ``--tls-key`` without ``--tls-cert``, or files that cannot
            be read or used (the message says which and why).
    """
    cert: str | None = args.tls_cert
    key: str | None = args.tls_key
    if cert is None:
        if key is not None:
            raise StartError("--tls-key needs --tls-cert: give the certificate too")
        return None
    files = TlsFiles(cert, key)
    try:
        return files, files.context()
    except ValueError as exc:
        raise StartError(str(exc)) from None


def serve(args: argparse.Namespace) -> int:
    """Run the server that ``args`` describe until SIGINT or SIGTERM.

    Returns:
        The exit code: 0 after a clean stop, 2 when it cannot start as asked
        (cannot listen, bad options, too few descriptors), 1 when it started
        but could no longer serve.
    """
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        options = connection_options(args)
        tls = load_tls(args)
        args.tls_files, args.tls_context = (None, None) if tls is None else tls
        args.listener = bind_listener(args.host, args.port)
        factory = with_work(HANDLERS[args.handler], args.work)
        running = MODELS[args.model].build(args, factory, options)
    except StartError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE

    def on_signal(signum: int, frame: FrameType | None) -> None:
        logging.getLogger(__name__).info("%s received, stopping", signal.Signals(signum).name)
        running.stop()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    host, port = running.address
    print(f"listening on {format_address(host, port)}", flush=True)
    try:
        running.serve_forever()
    except ServeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m reference``."""
    args = build_parser().parse_args(argv)
    return serve(args)
