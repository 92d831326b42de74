"""Write pip constraints that pin every dependency to the lowest version pyproject.toml allows.

The ``deps-oldest`` tox environment installs the project with these
constraints and runs the CLI and a slice of the tests, so the lower bounds in
``pyproject.toml`` are tested rather than guessed. Both the runtime
``dependencies`` and every extra are pinned; what they pull in themselves is
left to pip. A dependency without a ``>=`` lower bound is an error: its
oldest version could not be tested.

Usage: python tools/oldest_constraints.py OUTPUT [--pyproject PATH]
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*(.*)$")
_LOWER = re.compile(r">=\s*([^,;\s]+)")


def oldest(requirements: list[str]) -> list[str]:
    """``name==lowest`` for each requirement, in order.

    Raises:
        ValueError: A requirement has no ``>=`` lower bound.
    """
    pins: list[str] = []
    for requirement in requirements:
        match = _REQUIREMENT.match(requirement)
        lower = _LOWER.search(match.group(2)) if match else None
        if match is None or lower is None:
            raise ValueError(f"{requirement!r} has no '>=' lower bound to test")
        pins.append(f"{match.group(1)}=={lower.group(1)}")
    return pins


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("output", type=Path, help="Constraints file to write")
    parser.add_argument("--pyproject", type=Path, default=ROOT / "pyproject.toml")
    args = parser.parse_args(argv)
    project = tomllib.loads(args.pyproject.read_text())["project"]
    requirements = list(project.get("dependencies", []))
    for extra in project.get("optional-dependencies", {}).values():
        requirements += extra
    try:
        pins = oldest(requirements)
    except ValueError as exc:
        print(f"oldest_constraints: {args.pyproject}: {exc}", file=sys.stderr)
        return 2
    args.output.write_text("".join(f"{pin}\n" for pin in pins))
    print("\n".join(pins))
    return 0


if __name__ == "__main__":
    sys.exit(main())
