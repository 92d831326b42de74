"""The kill matrix: every check of the catalogue against every broken server.

    python tools/kill_matrix.py                    # Markdown on stdout
    python tools/kill_matrix.py --json matrix.json # and JSON in a file
    python tools/kill_matrix.py --servers crashes_on_reset --checks ECHO-RESET-1

Each broken server in ``fixtures/servers/broken/`` has one bug and declares,
in its module-level ``CAUGHT_BY`` tuple, the checks that must catch it, and
in ``REASON`` a regular expression that each of their failure reports must
match (why the bug fails them). A check *catches* a server when it fails
against it (a SHOULD that fails counts: it is reported, as non-strict).
Every cell runs against a fresh server, so a server that one check crashed
cannot make the next look caught.

Cells: ``**X**`` declared and caught for its reason; ``WRONG`` declared and
caught for another reason (the report does not match ``REASON``); ``MISSED``
declared but not caught; ``x`` caught, not declared; ``.`` not caught, not
declared. Each WRONG and MISSED cell is listed on stderr with its headline.

JSON: ``servers`` (each server's ``caught_by``), ``reasons`` (each server's
``REASON``), ``checks``, and ``cells``, each with ``declared``, ``caught``,
``for_reason`` (its report matches the server's ``REASON``), ``mark`` and
``reason`` (the first line of its headline).

Exit status: 0 when every declared check caught its server for its reason,
1 otherwise (a WRONG or MISSED cell).
Every server is stopped by its PID (its process group) after its check. The
matrix itself is :mod:`tools.matrix`; this script picks the servers,
prints the table and writes the JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from conformance.checks import CATALOGUE, by_id  # noqa: E402
from tools.matrix import broken_servers, markdown, run_matrix  # noqa: E402

__all__ = ["BROKEN", "main"]

BROKEN = ROOT / "fixtures" / "servers" / "broken"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Run every check against every broken server and print the kill matrix."
    )
    parser.add_argument("--servers", default="", metavar="NAME,...", help="Only these servers")
    parser.add_argument("--checks", default="", metavar="ID,...", help="Only these checks")
    parser.add_argument(
        "-j", "--jobs", type=int, default=2, help="Cells run at once (default: %(default)s)"
    )
    parser.add_argument("--json", metavar="PATH", help="Also write the matrix as JSON to PATH")
    args = parser.parse_args(argv)
    servers = broken_servers(BROKEN)
    wanted = {n.strip() for n in args.servers.split(",") if n.strip()}
    unknown = wanted - {s.name for s in servers}
    if unknown:
        parser.error(f"unknown broken server(s) {', '.join(sorted(unknown))}")
    if wanted:
        servers = [s for s in servers if s.name in wanted]
    ids = [i for i in args.checks.split(",") if i.strip()]
    checks = [by_id(i) for i in ids] if ids else list(CATALOGUE)
    start = time.monotonic()
    cells = run_matrix(servers, checks, max(1, args.jobs))
    print(markdown(servers, checks, cells))
    missed = [c for c in cells if not c.holds]
    print(
        f"\n{len(servers)} broken servers x {len(checks)} checks in "
        f"{time.monotonic() - start:.0f}s; {len(missed)} declared catch(es) missed "
        f"({sum(c.caught for c in missed)} of them caught for another reason)",
        file=sys.stderr,
    )
    reasons = {s.name: s.reason for s in servers}
    for cell in missed:
        if cell.caught:
            print(
                f"WRONG: {cell.check} caught {cell.server} for another reason than "
                f"{reasons[cell.server]!r}: {cell.reason}",
                file=sys.stderr,
            )
        else:
            print(
                f"MISSED: {cell.check} did not catch {cell.server} {cell.reason}", file=sys.stderr
            )
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "servers": {s.name: list(s.caught_by) for s in servers},
                    "reasons": reasons,
                    "checks": [c.id for c in checks],
                    "cells": [asdict(c) | {"mark": c.mark} for c in cells],
                },
                indent=2,
            )
            + "\n"
        )
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
