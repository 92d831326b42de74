"""Profiles: how hard the property checks search, in one table.

A :class:`Profile` is carried in the run plan (:mod:`conformance.run.session`)
and, through each check's :class:`~conformance.checks.Setup`, reaches the
harness the property checks run in; nothing about it is global. ``ci`` is
derandomized and small (the property section in a few seconds), ``default``
searches more, ``thorough`` draws payloads up to 8 MiB.

A property check's deadline is its profile's (:attr:`Profile.check_seconds`):
the search, the shrinking and every scenario's steps fit in it. Each step of a
scenario has the deadlines a deterministic check's step has (the harness's
:data:`~conformance.harness.DEFAULT_STEP_TIMEOUT`, and its progress deadline),
never shorter: a server slow enough to fail a property check's step would
fail the same exchange in a deterministic check too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["DEFAULT", "PROFILES", "Limits", "Profile", "profile_named"]


@dataclass(frozen=True)
class Limits:
    """How big a generated scenario may get."""

    max_payload: int
    max_connections: int
    max_steps: int


@dataclass(frozen=True)
class Profile:
    """The size of a property search.

    Attributes:
        name: ``ci``, ``default`` or ``thorough``.
        max_examples: Scenarios tried per property check (Hypothesis).
        derandomize: The same scenarios on every run.
        step_timeout: Seconds for each step of a scenario.
        shrink_seconds: How long shrinking may go on before the smallest
            failing scenario found so far is reported.
        limits: How big a scenario may get.
        check_seconds: The deadline of each property check: searching,
            shrinking and replaying the smallest failure all fit in it.
    """

    name: str
    max_examples: int
    derandomize: bool
    step_timeout: float
    shrink_seconds: float
    limits: Limits
    check_seconds: float

    def hypothesis_settings(self) -> dict[str, Any]:
        """The keyword arguments of ``hypothesis.settings`` this profile sets."""
        found: dict[str, Any] = {"max_examples": self.max_examples}
        if self.derandomize:
            found["derandomize"] = True
        return found


PROFILES: dict[str, Profile] = {
    p.name: p
    for p in (
        Profile("ci", 20, True, 5.0, 8.0, Limits(64 * 1024, 4, 6), 25.0),
        Profile("default", 60, False, 5.0, 10.0, Limits(256 * 1024, 5, 8), 30.0),
        Profile("thorough", 400, False, 10.0, 120.0, Limits(8 * 1024 * 1024, 8, 12), 300.0),
    )
}
DEFAULT = PROFILES["default"]


def profile_named(name: str) -> Profile:
    """The profile called ``name``.

    Raises:
        ValueError: No such profile.
    """
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown profile {name!r}: choose among {', '.join(PROFILES)}") from None
