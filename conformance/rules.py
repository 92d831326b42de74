"""Requirement levels, and the rules that one scenario may judge at different levels.

How this works
--------------
Most checks judge one behaviour at one level, their own
(:attr:`~conformance.checks.base.Check.level`). Where one behaviour has two
parts that deserve different levels, each part is a :class:`Rule`, written
once here with the text it rests on, and every check that touches the
behaviour judges it by these rules: a check lists them
(:attr:`~conformance.checks.base.Check.rules`), a failure says which one it
broke (:attr:`~conformance.transcript.CheckFailure.rule`), and that rule's
level, not the check's, decides whether the failure fails the run.

Half-close is such a behaviour. After the client's FIN, what the server owes
for the bytes it received before it MUST come back: losing it is data loss.
Then the server SHOULD close its side with a FIN: a server that never does
holds the connection (CLOSE_WAIT) but has lost nothing. ECHO-HALFCLOSE-1/2/3,
PROP-HALFCLOSE-1 and the half-close faults of ECHO-LOAD-3 judge both parts,
each by its rule.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = [
    "CLOSE_WITHIN",
    "HALFCLOSE_CLOSE",
    "HALFCLOSE_DATA",
    "RULES",
    "Level",
    "Rule",
    "by_rule_id",
]


class Level(enum.Enum):
    """Requirement levels, as in RFC 2119."""

    MUST = "MUST"
    SHOULD = "SHOULD"
    MAY = "MAY"


@dataclass(frozen=True)
class Rule:
    """One behaviour at one level, and the text it rests on.

    Attributes:
        id: Stable identifier, ``HALFCLOSE-DATA`` style.
        level: MUST, SHOULD or MAY.
        text: What a conforming server does, in one sentence.
        spec: The text it rests on, for example ``RFC 9293 §3.6``.
        quote: The words of that text the rule rests on.
    """

    id: str
    level: Level
    text: str
    spec: str
    quote: str

    @property
    def line(self) -> str:
        """The rule in one line: ID, level, text."""
        return f"{self.id} ({self.level.value}): {self.text}"


#: Seconds the server has to close its side once it has sent all it owes after the client's FIN.
CLOSE_WITHIN = 5.0

_RFC9293_CLOSE = "RFC 9293 §3.6 (closing a connection)"

HALFCLOSE_DATA = Rule(
    "HALFCLOSE-DATA",
    Level.MUST,
    "After the client's FIN the server still sends back exactly what it owes for every "
    "byte it received before the FIN: nothing lost, nothing added",
    _RFC9293_CLOSE,
    'CLOSE is an operation meaning "I have no more data to send." [...] We have chosen '
    "to treat CLOSE in a simplex fashion. The user who CLOSEs may continue to RECEIVE "
    "until the TCP receiver is told that the remote peer has CLOSED also.",
)

HALFCLOSE_CLOSE = Rule(
    "HALFCLOSE-CLOSE",
    Level.SHOULD,
    f"Once it has sent all it owes after the client's FIN, the server closes its side "
    f"with a FIN within {CLOSE_WITHIN:g}s (not an RST, not never)",
    _RFC9293_CLOSE,
    "If an unsolicited FIN arrives from the network, the receiving user can ACK the FIN "
    "and tell the user that the connection is closing. The user will respond with a "
    "CLOSE, upon which the TCP endpoint can send a FIN to the other TCP peer after "
    "sending any remaining data.",
)

#: Every rule, in the order the catalogue lists them.
RULES: tuple[Rule, ...] = (HALFCLOSE_DATA, HALFCLOSE_CLOSE)


def by_rule_id(rule_id: str) -> Rule | None:
    """The rule with this ID, or None (a report written by another version)."""
    return next((rule for rule in RULES if rule.id == rule_id), None)
