"""The ``reactor-conformance`` command.

Sub-commands:

- ``serve MODEL``: run one of the reference servers (the options of
  ``python -m reference``, defined once in :mod:`reference.cli`).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from conformance import __version__
from reference.cli import ArgumentParser, add_model_parsers, serve

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``reactor-conformance``."""
    parser = ArgumentParser(
        prog="reactor-conformance",
        description="Reference Reactor-pattern TCP servers and a conformance suite.",
        epilog="Example: reactor-conformance serve single --port 7000",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    serve_parser = commands.add_parser(
        "serve",
        help="Run a reference server",
        description="Run a reference server until SIGINT or SIGTERM.",
    )
    models = serve_parser.add_subparsers(title="models", metavar="MODEL", required=True)
    add_model_parsers(models)
    serve_parser.set_defaults(command=serve)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``reactor-conformance``."""
    args = build_parser().parse_args(argv)
    result: int = args.command(args)
    return result
