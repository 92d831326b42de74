"""The options of a conformance run, in one table that every front takes them from.

How this works
--------------
Each :class:`Option` is one flag with the same long name in every front that
has it: the pytest plugin adds :data:`OPTIONS` to pytest's parser, the CLI to
its ``run`` sub-command (:func:`add_options`), and the CLI also accepts a
short name where pytest owns the long one (``--strict``, ``--profile``).
``reactor-conformance load`` takes the few that it shares (the target, one
only, and ``--protocol``), and :func:`conformance.check_server` takes some as
keyword arguments (:attr:`Option.keyword`) and starts from every option's
value when not given (:func:`option_values`). A row says its default once; a
front whose default differs (``check_server`` searches with the ``ci``
profile) says so in the same row. What the values mean, and how they are
checked, is :mod:`conformance.run.plan`'s business.
"""

from __future__ import annotations

import argparse
import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from conformance.checks import CATEGORIES
from conformance.harness import DEFAULT_MAX_CONNECTIONS
from conformance.run.profiles import DEFAULT, PROFILES
from conformance.targets.health import MAX_RESTARTS
from conformance.targets.target import REFERENCE_MODELS, SERVER_NOFILE

__all__ = [
    "DEFAULT_TIMEOUT",
    "OPTIONS",
    "TARGET_DESTS",
    "Front",
    "Option",
    "add_options",
    "by_keyword",
    "flag_name",
    "option_values",
]


class Front(enum.Enum):
    """What takes the options: a command line, or :func:`conformance.check_server`'s keywords.

    The value is how it is called; for ``CLI`` and ``PYTEST``, the fronts that
    run a session from their flags, the start of a replay command.
    """

    CLI = "reactor-conformance run"
    PYTEST = "pytest --pyargs conformance"
    LOAD = "reactor-conformance load"
    API = "conformance.check_server"


#: The fronts that take an option unless its row says otherwise.
_RUN = frozenset({Front.CLI, Front.PYTEST})


@dataclass(frozen=True)
class Option:
    """One option of a conformance run, as every front that has it defines it.

    Attributes:
        flag: The long option, the same in every front.
        dest: The attribute it sets.
        help: Its help text.
        short: A shorter name the CLI also accepts (pytest owns ``--strict``).
        default: Its value when not given.
        keyword: Its keyword argument in :func:`conformance.check_server`, if it is one.
        fronts: The command lines that take it.
        defaults: A front's own default, where it is not ``default``.
        helps: A front's own help text, where it is not ``help``.
        settings: The rest of ``add_argument``'s keywords (action, metavar...).
    """

    flag: str
    dest: str
    help: str
    short: str | None = None
    default: Any = None
    keyword: str | None = None
    fronts: frozenset[Front] = _RUN
    defaults: dict[Front, Any] = field(default_factory=dict)
    helps: dict[Front, str] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    def default_for(self, front: Front) -> Any:
        """Its value in ``front`` when not given."""
        return self.defaults.get(front, self.default)

    def help_for(self, front: Front) -> str:
        """Its help text in ``front``."""
        return self.helps.get(front, self.help)

    def flags(self, front: Front) -> list[str]:
        """The names it has in ``front``."""
        if front is Front.CLI and self.short is not None:
            return [self.short, self.flag]
        return [self.flag]

    def name(self, front: Front) -> str:
        """The name a replay command uses in ``front``."""
        return self.flags(front)[0]


#: Seconds a run may take per target unless ``--timeout`` says otherwise: a server
#: that is slow in every check is judged in minutes, and the checks not reached by
#: then are SKIPPED (the run then exits 1: it did not measure everything).
DEFAULT_TIMEOUT = 480.0

_TARGET_HELP = " (repeat to test several side by side)"
#: The fronts of the options ``load`` takes too: the target (one only) and the protocol.
_WITH_LOAD = _RUN | {Front.LOAD}

#: The options of a run. Targets default to the reference single server. Their
#: ``dest`` is pytest's too: none may be one of pytest's own (pytest 8 has a
#: ``--strict`` whose dest is ``strict``), so the suite's own are prefixed.
OPTIONS: tuple[Option, ...] = (
    Option(
        "--target",
        "target",
        "Test the server listening there" + _TARGET_HELP,
        fronts=_WITH_LOAD,
        settings={"action": "append", "metavar": "HOST:PORT"},
    ),
    Option(
        "--spawn",
        "spawn",
        "Start CMD and test it: {port} is replaced by a free port, or CMD prints "
        "'listening on HOST:PORT'; it is stopped at the end" + _TARGET_HELP,
        fronts=_WITH_LOAD,
        settings={"action": "append", "metavar": "CMD"},
    ),
    Option(
        "--reference",
        "reference",
        f"Test a reference server: {', '.join(REFERENCE_MODELS)}" + _TARGET_HELP,
        fronts=_WITH_LOAD,
        settings={"action": "append", "metavar": "MODEL"},
    ),
    Option(
        "--oracle",
        "oracle",
        "What the server should answer: echo, discard or package.module:Class "
        "(default: %(default)s)",
        default="echo",
        keyword="oracle",
        settings={"metavar": "SPEC"},
    ),
    Option(
        "--protocol",
        "protocol",
        "The protocol the server speaks, so that checks send its requests and judge its "
        "replies: echo, discard, resp (Redis), memcached (its text protocol) or "
        "package.module:Model; checks that need what it does not promise are SKIPPED "
        "(default: %(default)s, or what --oracle names)",
        default="echo",
        keyword="protocol",
        fronts=_WITH_LOAD,
        helps={
            Front.LOAD: "Send this protocol model's requests and check every reply byte for "
            "byte: echo, discard, resp (Redis), memcached or package.module:Model; --size is "
            "then each value's size (default: %(default)s)"
        },
        settings={"metavar": "MODEL"},
    ),
    Option(
        "--checks",
        "checks",
        "Run only these checks: IDs or patterns such as ECHO-RESET-* (see 'list')",
        keyword="checks",
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
        default=False,
        keyword="strict",
        settings={"action": "store_true"},
    ),
    Option(
        "--conformance-profile",
        "conformance_profile",
        "Size of the property checks' search: ci (few examples, derandomized), default, "
        f"thorough (many examples, payloads up to 8 MiB) (default: {DEFAULT.name}, or "
        "--hypothesis-profile when it names one of them)",
        short="--profile",
        keyword="profile",
        # A test suite wants the same scenarios on every run: derandomized.
        defaults={Front.API: "ci"},
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
        "Stop the run after SECONDS: checks not run by then are SKIPPED, a check running "
        f"then is cut short (default: {DEFAULT_TIMEOUT:g} per target; none: no cap, the run "
        "then ends within the sum of its checks' deadlines; the bound is printed when "
        "it starts)",
        short="--timeout",
        # check_server's caller bounds its own tests.
        defaults={Front.API: "none"},
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
        keyword="load_hosts",
        settings={"action": "append", "metavar": "SPEC"},
    ),
    Option(
        "--tls",
        "tls",
        "Speak TLS to every target: each check's connections and the probes of its "
        "liveness (the other --tls-* options imply it)",
        fronts=_WITH_LOAD,
        default=False,
        keyword="tls",
        # check_server takes TlsSettings, or None for plain TCP.
        defaults={Front.API: None},
        settings={"action": "store_true"},
    ),
    Option(
        "--tls-ca",
        "tls_ca",
        "Verify the server's certificate against the CA certificates in FILE (PEM) "
        "(default: the system's trust store)",
        fronts=_WITH_LOAD,
        settings={"metavar": "FILE"},
    ),
    Option(
        "--tls-insecure",
        "tls_insecure",
        "Do not verify the server's certificate nor its name (said in the header)",
        fronts=_WITH_LOAD,
        default=False,
        settings={"action": "store_true"},
    ),
    Option(
        "--tls-server-name",
        "tls_server_name",
        "The name to send (SNI) and to verify the server's certificate against "
        "(default: the target's host)",
        fronts=_WITH_LOAD,
        settings={"metavar": "NAME"},
    ),
    Option(
        "--tls-cert",
        "tls_cert",
        "Present this client certificate (PEM, with its key unless --tls-key names it)",
        fronts=_WITH_LOAD,
        settings={"metavar": "FILE"},
    ),
    Option(
        "--tls-key",
        "tls_key",
        "The private key of --tls-cert (PEM)",
        fronts=_WITH_LOAD,
        settings={"metavar": "FILE"},
    ),
    Option(
        "--tls-version",
        "tls_version",
        "Offer only this TLS version (default: 1.2 and 1.3)",
        fronts=_WITH_LOAD,
        settings={"metavar": "1.2|1.3", "choices": ["1.2", "1.3"]},
    ),
    Option(
        "--no-restart",
        "no_restart",
        "A started server that exits during a check is not started again: the remaining "
        f"checks against it are SKIPPED (default: restart it, at most {MAX_RESTARTS} times)",
        default=False,
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


def by_keyword() -> dict[str, Option]:
    """The options that :func:`conformance.check_server` takes, by keyword."""
    return {option.keyword: option for option in OPTIONS if option.keyword is not None}


def option_values(front: Front, **given: Any) -> argparse.Namespace:
    """Every option's value as ``front`` leaves it when not given, then ``given`` (by dest).

    Raises:
        TypeError: ``given`` names no option.
    """
    unknown = sorted(set(given) - set(_BY_DEST))
    if unknown:
        raise TypeError(f"no option sets {', '.join(unknown)}")
    return argparse.Namespace(**{o.dest: o.default_for(front) for o in OPTIONS} | given)


def add_options(
    add: Callable[..., Any], front: Front, *, only: frozenset[str] | None = None
) -> None:
    """Define the options of :data:`OPTIONS` that ``front`` takes with ``add``.

    Under ``load`` a target option names one target, not several.

    Args:
        add: Defines one option (``add_argument`` or ``addoption``).
        front: Whose options, names, defaults and help to use: a command line.
        only: The ``dest`` of the options to define; default: all that ``front`` takes.

    Raises:
        ValueError: ``front`` is not a command line.
    """
    if front is Front.API:
        raise ValueError("check_server takes keyword arguments, not flags")
    for option in OPTIONS:
        if front not in option.fronts or (only is not None and option.dest not in only):
            continue
        settings = dict(option.settings)
        text = option.help_for(front)
        if front is Front.LOAD and settings.get("action") == "append":
            del settings["action"]
            text = text.removesuffix(_TARGET_HELP)
        add(
            *option.flags(front),
            dest=option.dest,
            help=text,
            default=option.default_for(front),
            **settings,
        )
