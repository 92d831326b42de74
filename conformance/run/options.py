"""The options of a conformance run, in one table that both fronts take their flags from.

How this works
--------------
Each :class:`Option` is one flag with the same long name in both fronts: the
pytest plugin adds :data:`OPTIONS` to pytest's parser, the CLI to its ``run``
sub-command (:func:`add_options`), and the CLI also accepts a short name
where pytest owns the long one (``--strict``, ``--profile``). What the values
mean, and how they are checked, is :mod:`conformance.run.plan`'s business.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from conformance.checks import CATEGORIES
from conformance.harness import DEFAULT_MAX_CONNECTIONS
from conformance.run.profiles import PROFILES
from conformance.targets.health import MAX_RESTARTS
from conformance.targets.target import REFERENCE_MODELS, SERVER_NOFILE

__all__ = ["OPTIONS", "TARGET_DESTS", "Front", "Option", "add_options", "flag_name"]


class Front(enum.Enum):
    """What runs the session; its value is the start of a replay command."""

    CLI = "reactor-conformance run"
    PYTEST = "pytest --pyargs conformance"


@dataclass(frozen=True)
class Option:
    """One option of a conformance run, as both fronts define it.

    Attributes:
        flag: The long option, the same in both fronts.
        dest: The attribute it sets.
        help: Its help text.
        short: A shorter name the CLI also accepts (pytest owns ``--strict``).
        settings: The rest of ``add_argument``'s keywords (action, metavar...).
    """

    flag: str
    dest: str
    help: str
    short: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    def flags(self, front: Front) -> list[str]:
        """The names it has in ``front``."""
        if front is Front.CLI and self.short is not None:
            return [self.short, self.flag]
        return [self.flag]

    def name(self, front: Front) -> str:
        """The name a replay command uses in ``front``."""
        return self.flags(front)[0]


_TARGET_HELP = " (repeat to test several side by side)"

#: The options of a run. Targets default to the reference single server. Their
#: ``dest`` is pytest's too: none may be one of pytest's own (pytest 8 has a
#: ``--strict`` whose dest is ``strict``), so the suite's own are prefixed.
OPTIONS: tuple[Option, ...] = (
    Option(
        "--target",
        "target",
        "Test the server listening there" + _TARGET_HELP,
        settings={"action": "append", "metavar": "HOST:PORT"},
    ),
    Option(
        "--spawn",
        "spawn",
        "Start CMD and test it: {port} is replaced by a free port, or CMD prints "
        "'listening on HOST:PORT'; it is stopped at the end" + _TARGET_HELP,
        settings={"action": "append", "metavar": "CMD"},
    ),
    Option(
        "--reference",
        "reference",
        f"Test a reference server: {', '.join(REFERENCE_MODELS)}" + _TARGET_HELP,
        settings={"action": "append", "metavar": "MODEL"},
    ),
    Option(
        "--oracle",
        "oracle",
        "What the server should answer: echo, discard or package.module:Class "
        "(default: %(default)s)",
        settings={"default": "echo", "metavar": "SPEC"},
    ),
    Option(
        "--protocol",
        "protocol",
        "The protocol the server speaks, so that checks send its requests and judge its "
        "replies: echo, discard, resp (Redis), memcached (its text protocol) or "
        "package.module:Model; checks that need what it does not promise are SKIPPED "
        "(default: echo, or what --oracle names)",
        settings={"metavar": "MODEL"},
    ),
    Option(
        "--checks",
        "checks",
        "Run only these checks: IDs or patterns such as ECHO-RESET-* (see 'list')",
        settings={"metavar": "ID,..."},
    ),
    Option(
        "--category",
        "category",
        f"Run only these: {', '.join(CATEGORIES)}",
        settings={"metavar": "NAME,..."},
    ),
    Option(
        "--conformance-strict",
        "conformance_strict",
        "A failed SHOULD or MAY fails the run",
        short="--strict",
        settings={"action": "store_true"},
    ),
    Option(
        "--conformance-profile",
        "conformance_profile",
        "Size of the property checks' search: ci (few examples, derandomized), default, "
        "thorough (many examples, payloads up to 8 MiB) (default: default, or "
        "--hypothesis-profile when it names one of them)",
        short="--profile",
        settings={"choices": list(PROFILES)},
    ),
    Option(
        "--scenario",
        "scenario",
        "Property checks replay this saved scenario (JSON) instead of searching",
        settings={"metavar": "PATH"},
    ),
    Option(
        "--conformance-timeout",
        "conformance_timeout",
        "Stop the run after SECONDS: checks not run by then are SKIPPED, a check "
        "running then is cut short (default: 480 per target; none: no cap, the run "
        "then ends within the sum of its checks' deadlines; the bound is printed when "
        "it starts)",
        short="--timeout",
        settings={"metavar": "SECONDS"},
    ),
    Option(
        "--max-connections",
        "max_connections",
        "How many connections the server is taken to hold at most when its descriptor "
        "limit cannot be read from /proc (it runs as another user, in a container, on "
        "another host): ECHO-LIMIT-1 opens more than this (not given: it opens "
        f"{DEFAULT_MAX_CONNECTIONS} and more, and a server that keeps serving is SKIPPED, "
        "not passed, since its limit may be higher)",
        settings={"metavar": "N"},
    ),
    Option(
        "--server-nofile",
        "server_nofile",
        "The soft descriptor limit (RLIMIT_NOFILE) the servers the suite starts begin "
        "with, at most the hard limit, so that ECHO-LIMIT-1 can exceed it; inherit keeps "
        f"the suite's own (default: {SERVER_NOFILE}, the common soft limit)",
        settings={"metavar": "N|inherit"},
    ),
    Option(
        "--load-hosts",
        "load_hosts",
        "Run the load checks (ECHO-LOAD-*) from this execnet gateway instead of this "
        "process: popen, ssh=USER@HOST, SPEC*N for N load processes there; repeat once "
        "per host (see reactor-conformance load --hosts). The target's address must be "
        "reachable from every host",
        settings={"action": "append", "metavar": "SPEC"},
    ),
    Option(
        "--no-restart",
        "no_restart",
        "A started server that exits during a check is not started again: the remaining "
        f"checks against it are SKIPPED (default: restart it, at most {MAX_RESTARTS} times)",
        settings={"action": "store_true"},
    ),
    Option(
        "--artifacts",
        "artifacts",
        "Keep what a run leaves (failing scenarios, the started servers' stderr) in DIR "
        "(default: beside --report-json, else a new temporary directory)",
        settings={"metavar": "DIR"},
    ),
    Option(
        "--report-json",
        "report_json",
        "Write the JSON report to PATH",
        settings={"metavar": "PATH"},
    ),
    Option(
        "--report-html",
        "report_html",
        "Write the self-contained HTML report to PATH",
        settings={"metavar": "PATH"},
    ),
)

_BY_DEST = {option.dest: option for option in OPTIONS}
#: The options that name targets.
TARGET_DESTS = frozenset({"target", "spawn", "reference"})


def flag_name(dest: str, front: Front) -> str:
    """The name a replay command gives the option that sets ``dest``, in ``front``."""
    return _BY_DEST[dest].name(front)


def add_options(
    add: Callable[..., Any],
    front: Front,
    *,
    only: frozenset[str] | None = None,
    repeat: bool = True,
) -> None:
    """Define the options of :data:`OPTIONS` with ``add`` (``add_argument`` or ``addoption``).

    Args:
        add: Defines one option.
        front: Whose names to use.
        only: The ``dest`` of the options to define; default: all.
        repeat: False: a target option names one target (``load``), not several.
    """
    for option in OPTIONS:
        if only is not None and option.dest not in only:
            continue
        settings = dict(option.settings)
        text = option.help
        if not repeat and settings.get("action") == "append":
            del settings["action"]
            text = text.removesuffix(_TARGET_HELP)
        add(*option.flags(front), dest=option.dest, help=text, **settings)
