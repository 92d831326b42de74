"""Which checks a run selects: IDs, glob patterns and categories.

``--checks`` takes IDs (``ECHO-BASIC-1``) and shell-style patterns
(``ECHO-*``, ``ECHO-RESET-?``), case-insensitive; ``--category`` takes
category names. The result is in catalogue order, each check once. A name that
matches nothing is a usage error that lists the nearest IDs or categories.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Iterable

from conformance.checks import CATALOGUE, CATEGORIES, Check
from conformance.errors import UsageError

__all__ = ["is_pattern", "select_checks", "split_list"]

_GLOB = frozenset("*?[")


def split_list(text: str | None) -> list[str]:
    """The items of a comma-separated option, stripped, empty ones dropped."""
    return [part.strip() for part in (text or "").split(",") if part.strip()]


def is_pattern(name: str) -> bool:
    """Whether ``name`` is a glob pattern rather than an ID."""
    return any(c in _GLOB for c in name)


def _near(name: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(choices), n=3, cutoff=0.6)
    return f"did you mean {', '.join(close)}? " if close else ""


def select_checks(
    names: Iterable[str] = (),
    categories: Iterable[str] = (),
    catalogue: tuple[Check, ...] = CATALOGUE,
) -> list[Check]:
    """The checks named by ID, pattern or category; all of them when none is named.

    Args:
        names: IDs and glob patterns, matched without regard to case.
        categories: Category names.
        catalogue: The checks to choose from.

    Returns:
        The selected checks, in catalogue order.

    Raises:
        UsageError: An ID that no check has, a pattern that matches none, or an
            unknown category; the message names the nearest matches.
    """
    ids = [c.id for c in catalogue]
    wanted: set[str] = set()
    for raw in names:
        name = raw.strip().upper()
        if not name:
            continue
        if is_pattern(name):
            matched = fnmatch.filter(ids, name)
            if not matched:
                raise UsageError(
                    f"no check matches {raw.strip()!r}: see 'reactor-conformance list' for the IDs"
                )
            wanted.update(matched)
        elif name in ids:
            wanted.add(name)
        else:
            raise UsageError(
                f"unknown check {raw.strip()!r}: {_near(name, ids)}"
                "see 'reactor-conformance list' for the IDs"
            )
    known = tuple(dict.fromkeys(c.category for c in catalogue)) or CATEGORIES
    cats = {c.strip() for c in categories if c.strip()}
    for cat in sorted(cats):
        if cat not in known:
            raise UsageError(
                f"unknown category {cat!r}: {_near(cat, known)}choose among {', '.join(known)}"
            )
    if not wanted and not cats:
        return list(catalogue)
    return [c for c in catalogue if c.id in wanted or c.category in cats]
