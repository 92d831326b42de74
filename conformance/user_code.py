"""Importing what a user names on the command line: ``package.module:Attribute``.

``--oracle`` and ``--protocol`` name a user's code. Whatever goes wrong while
it is imported (a missing module, a syntax error, an exception or
``sys.exit`` at import time) is the user's to fix: a :class:`UsageError` with
one line, never a traceback.
"""

from __future__ import annotations

import importlib

from conformance.errors import UsageError

__all__ = ["import_named"]


def import_named(spec: str, what: str, give: str) -> tuple[str, object]:
    """The object ``spec`` (``package.module:Name`` or ``package.module:Outer.Name``) names.

    Args:
        spec: What the user wrote.
        what: The option's noun, for messages (``oracle``, ``protocol``).
        give: What to write instead, for a malformed ``spec``.

    Returns:
        The attribute's name and the object.

    Raises:
        UsageError: ``spec`` is malformed, its module fails to import (for any
            reason), or the module has no such attribute.
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise UsageError(f"bad {what} {spec!r}: {give}")
    try:
        module = importlib.import_module(module_name)
    except (Exception, SystemExit) as exc:  # A user's module: any failure is a usage error.
        raise UsageError(
            f"bad {what} {spec!r}: cannot import {module_name} ({type(exc).__name__}: {exc})"
        ) from None
    found: object = module
    for part in attr.split("."):
        found = getattr(found, part, None)
        if found is None:
            raise UsageError(f"bad {what} {spec!r}: {module_name} has no {attr}")
    return attr, found
