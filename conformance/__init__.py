"""A conformance suite for TCP servers built on the Reactor pattern.

``conformance.check_server(...)`` runs it from another project's tests
(:mod:`conformance.fronts.api`); it is imported on first use, so that importing
the package (as the pytest plugin's catalogue does) stays light.

The package, from the fronts a person uses down to the vocabulary every part
shares:

- ``fronts/``: the ``reactor-conformance`` command (``cli``, ``load_command``,
  ``console``, ``invoke``), the pytest plugin (``plugin``) and
  ``check_server`` (``api``).
- ``run/``: one run: the option table (``options``), the validated plan
  (``plan``, ``selection``, ``profiles``), the engine (``session``, with
  ``stopping`` and ``heavy_lock``), the pure judge (``judge``) and the typed
  verdicts (``results``).
- ``reports/``: the failure report as data (``failure``), the JSON document
  and its schema (``json_report``), the HTML page (``html_report``).
- ``checks/``: the catalogue, each check as data plus the code that runs it.
- ``properties/``: what the property checks search: scenarios as plain data
  (``scenario``), their Hypothesis strategies (``strategies``), and the
  interpreter that runs one in a harness (``interpreter``).
- ``harness`` and ``client`` (with ``tcp_state``): trio, the only part of the
  checks that touches sockets.
- ``load/``: the raw-epoll load generator, its processes, its hosts, its
  histogram.
- ``protocols/``: the protocol models (echo, discard, RESP, memcached, a
  user's oracle), which draw requests and judge replies.
- ``targets/``: the servers under test: addresses, spawning, their logs, their
  lives (``keeper``, ``health``, ``target_state``, ``daemons``), ``/proc``
  (``procfs``, ``sockdiag``, ``strays``), and the lifeline that ends them
  with the run.
- At the top, the vocabulary below all of these: ``oracle`` (the judging
  interface a user's oracle implements), ``transcript``, ``rules``,
  ``payloads``, ``errors``, ``user_code``, ``version``.

``tests/test_layers.py`` keeps modules from importing each other and under
450 lines.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from conformance.version import __version__

if TYPE_CHECKING:
    from conformance.fronts.api import check_server

__all__ = ["__version__", "check_server"]


def __getattr__(name: str) -> Any:
    if name == "check_server":
        from conformance.fronts.api import check_server

        return check_server
    raise AttributeError(f"module 'conformance' has no attribute {name!r}")
