"""The load generator: many connections, every byte verified, faults on demand.

How this works
--------------
The package is the load generator's parts, one job each:

- :mod:`~conformance.load.spec`: what load to put on which server
  (:class:`LoadSpec`, :class:`Faults`, each named by a :class:`Fault`), checked once;
- :mod:`~conformance.load.client`: one connection's state, as an enum and a
  transition table, and its byte checking, with no I/O;
- :mod:`~conformance.load.driver`: one load process's connections and what
  each does on each event; :mod:`~conformance.load.sending`, what each sends
  next and the bytes its socket refused; :mod:`~conformance.load.tally`, the
  errors it counts and when the run must halt;
- :mod:`~conformance.load.loop`: the raw-epoll loop that drives them;
- :mod:`~conformance.load.faults`: resets, half-closes, slow readers and
  connect storms injected while the load runs;
- :mod:`~conformance.load.processes`: :func:`run_load`, in this process or
  spread over several, and the final liveness probe;
- :mod:`~conformance.load.hosts`: the same load from several hosts at once,
  one execnet gateway each, their results merged;
- :mod:`~conformance.load.result`: what a run measured (:class:`LoadResult`,
  its errors counted by :class:`ErrorKey`) and its one form as plain data, for
  ``--json``, the summary line and the transfer between load processes and hosts.
"""

from conformance.load.processes import probe_alive, run_load
from conformance.load.result import ErrorKey, LoadResult, format_json
from conformance.load.spec import Fault, Faults, LoadError, LoadSpec

__all__ = [
    "ErrorKey",
    "Fault",
    "Faults",
    "LoadError",
    "LoadResult",
    "LoadSpec",
    "format_json",
    "probe_alive",
    "run_load",
]
