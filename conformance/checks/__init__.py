"""The checks: what a check is, and the catalogue of every check, as data.

How this works
--------------
A check is data (:class:`~conformance.checks.base.Check`: ID, title,
category, level, spec reference, and the scenario it runs); :func:`run_check`
runs one against a target under its deadline. The catalogue is assembled
here from its sections, each a module of its own:

- :mod:`conformance.checks.core`: bytes, sizes, partial writes, concurrency,
  fairness, half-close, reset and storms;
- :mod:`conformance.checks.resources`: descriptors, CPU and memory, read
  from ``/proc`` when the server's process is visible;
- :mod:`conformance.checks.limits`: more connections held at once than the
  server has descriptors (its limit read from ``/proc``, else
  ``--max-connections``);
- :mod:`conformance.checks.load`: the load generator with every byte verified;
- :mod:`conformance.checks.properties`: Hypothesis scenarios, shrunk on failure;
- :mod:`conformance.checks.tls`: what only a TLS server can get wrong (records,
  handshakes, close_notify), SKIPPED unless the run speaks TLS.

The spec references and sizes they share are in :mod:`conformance.checks.base`.
"""

from __future__ import annotations

from conformance.checks.base import (
    Check,
    CheckBody,
    Level,
    Outcome,
    Setup,
    first_failure,
    liveness,
    replay_check,
    run_check,
    short_stack,
)
from conformance.checks.core import CORE_CHECKS
from conformance.checks.limits import LIMIT_CHECKS
from conformance.checks.load import LOAD_CHECKS
from conformance.checks.properties import PROPERTY_CHECKS
from conformance.checks.resources import RESOURCE_CHECKS
from conformance.checks.tls import TLS_CHECKS
from conformance.checks.tls_keys import KEY_CHECKS
from conformance.errors import UsageError

__all__ = [
    "CATALOGUE",
    "CATEGORIES",
    "Check",
    "CheckBody",
    "Level",
    "Outcome",
    "Setup",
    "by_id",
    "first_failure",
    "short_stack",
    "liveness",
    "replay_check",
    "run_check",
]

#: Every check: the core scenarios, then the sections kept in modules of their own.
CATALOGUE: tuple[Check, ...] = (
    CORE_CHECKS
    + RESOURCE_CHECKS
    + LIMIT_CHECKS
    + LOAD_CHECKS
    + PROPERTY_CHECKS
    + TLS_CHECKS
    + KEY_CHECKS
)

#: Every category, in catalogue order.
CATEGORIES: tuple[str, ...] = tuple(dict.fromkeys(c.category for c in CATALOGUE))

_BY_ID = {check.id: check for check in CATALOGUE}


def by_id(check_id: str) -> Check:
    """The check with this ID.

    Raises:
        UsageError: No check has it.
    """
    try:
        return _BY_ID[check_id.strip().upper()]
    except KeyError:
        raise UsageError(
            f"unknown check {check_id!r}: see 'reactor-conformance list' for the IDs"
        ) from None
