"""What a load run measured and saw, and its one form as plain data.

How this works
--------------
A :class:`LoadResult` is filled in by one load process. :meth:`LoadResult.to_data`
turns it into plain data (a JSON-ready dict) once; everything that shows or
moves a result reads that dict: the ``--json`` output (:func:`format_json`),
the one-line summary (:meth:`LoadResult.summary_line`), and the transfer from
each load process to the parent, which reads it back with
:meth:`LoadResult.from_data` and adds the parts up with :meth:`LoadResult.merged`
(latency histograms bucket by bucket, so percentiles stay exact to 1/64).

Errors are counted by an :class:`ErrorKey`: their kind (``reset``,
``mismatch``, ``stalled``...) and, for an error on a connection a fault
struck (a half-closed connection, a slow reader), that fault, so that a check
can judge those connections by their fault's rules and the others by its own.
A key reads ``reset`` or ``reset after slow-reader`` (``str(key)``: messages,
the summary, :meth:`LoadResult.errors_by_name`); in the plain data it is never
that text but a list, ``[kind, fault name or None, count]`` per key
(``errors``), read back as keys.

A run ended early by its stop event is ``stopped``: its figures cover what
ran, it is not ``ok`` (nothing was shown to be right), and the summary line
says so. So is a run whose oracle raised (``oracle_error``: a fault on the
judging side) or could not judge a reply as it came (``unjudged``): each
ends the run at once, and is neither the server's failure nor its pass.

Over TLS (``spec.tls``) a result also counts the handshakes completed
(``handshakes``) and the seconds they took, each from its TCP connect to its
end, added up (``handshake_seconds``); ``handshakes_per_second`` divides the
count by the time the connections were being opened and driven
(``connect_seconds``, the connecting phase, plus ``seconds``).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from conformance.load.histogram import Histogram
from conformance.load.spec import Fault, LoadSpec
from conformance.protocols import ORACLE

__all__ = ["ErrorKey", "LoadResult", "format_json"]


@dataclass(frozen=True)
class ErrorKey:
    """What a load error is counted under: its kind, and the fault its connection was under.

    ``after`` is the fault that struck the connection before the error (a
    half-close, a slow reader), or None on a connection no fault struck.
    ``str(key)`` is the one way a key is written for people: ``reset``, or
    ``reset after slow-reader``.
    """

    kind: str
    after: Fault | None = None

    def __str__(self) -> str:
        return self.kind if self.after is None else f"{self.kind} after {self.after.value}"


def _errors_to_data(errors: Counter[ErrorKey]) -> list[list[Any]]:
    """Error counts as plain data: ``[kind, fault name or None, count]`` per key."""
    return [
        [key.kind, None if key.after is None else key.after.value, count]
        for key, count in errors.items()
    ]


def _errors_from_data(data: list[list[Any]]) -> Counter[ErrorKey]:
    """The error counts that :func:`_errors_to_data` wrote."""
    return Counter(
        {
            ErrorKey(kind, None if after is None else Fault(after)): count
            for kind, after, count in data
        }
    )


def _spec_data(spec: LoadSpec) -> dict[str, Any]:
    """``spec`` as ``--json`` shows it: its model as ``oracle`` and ``protocol`` name it."""
    data = asdict(spec)
    name = data.pop("model")
    of_oracle = name.startswith(ORACLE)
    data["oracle"] = name.removeprefix(ORACLE) if of_oracle else "echo"
    data["protocol"] = "echo" if of_oracle else name
    data["tls"] = None if spec.tls is None else spec.tls.to_data()
    return data


@dataclass
class LoadResult:
    """What a load run measured and saw.

    ``stopped`` is True when the caller's stop event ended the run before
    its time was up (or before the liveness probe answered): the rest is a
    partial result, and ``server_alive`` is then None.

    ``oracle_error`` says what the oracle's own code raised, and ``unjudged``
    why the oracle could not judge the replies; either ended the run, and
    the liveness probe was not run.
    """

    spec: LoadSpec
    seconds: float = 0.0
    round_trips: int = 0
    bytes_verified: int = 0
    latency: Histogram = field(default_factory=Histogram)
    errors: Counter[ErrorKey] = field(default_factory=Counter)
    first_error: dict[str, Any] | None = None
    injected: Counter[str] = field(default_factory=Counter)
    observed: Counter[str] = field(default_factory=Counter)
    connections_opened: int = 0
    server_alive: bool | None = None
    stopped: bool = False
    oracle_error: str | None = None
    unjudged: str | None = None
    connect_seconds: float = 0.0
    handshakes: int = 0
    handshake_seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """No byte went wrong, nothing stalled, the run was not stopped, and the server answered."""
        return (
            not self.errors
            and self.server_alive is not False
            and not self.stopped
            and self.oracle_error is None
            and self.unjudged is None
        )

    @property
    def round_trips_per_second(self) -> float:
        return self.round_trips / self.seconds if self.seconds else 0.0

    @property
    def megabytes_per_second(self) -> float:
        return self.bytes_verified / self.seconds / 1e6 if self.seconds else 0.0

    @property
    def handshakes_per_second(self) -> float:
        elapsed = self.connect_seconds + self.seconds
        return self.handshakes / elapsed if elapsed else 0.0

    @property
    def handshake_ms_mean(self) -> float:
        return self.handshake_seconds / self.handshakes * 1e3 if self.handshakes else 0.0

    def errors_by_name(self) -> dict[str, int]:
        """The error counts by their keys' names, for people: ``{"reset after slow-reader": 2}``."""
        return {str(key): count for key, count in self.errors.items()}

    def to_data(self) -> dict[str, Any]:
        """The result as plain data: what ``--json`` prints and load processes send.

        Returns:
            A JSON-ready dict; ``latency_us`` holds the percentiles and
            ``latency_histogram`` the whole histogram (for :meth:`from_data`);
            ``errors`` is a list of ``[kind, fault name or None, count]``,
            one per :class:`ErrorKey`.
        """
        return {
            "target": f"{self.spec.host}:{self.spec.port}",
            "spec": _spec_data(self.spec),
            "ok": self.ok,
            "seconds": round(self.seconds, 3),
            "round_trips": self.round_trips,
            "round_trips_per_second": round(self.round_trips_per_second, 1),
            "bytes_verified": self.bytes_verified,
            "megabytes_per_second": round(self.megabytes_per_second, 3),
            "latency_us": self.latency.summary(),
            "latency_histogram": self.latency.to_dict(),
            "errors": _errors_to_data(self.errors),
            "first_error": self.first_error,
            "faults_injected": dict(self.injected),
            "faults_observed": dict(self.observed),
            "connections_opened": self.connections_opened,
            "server_alive": self.server_alive,
            "stopped": self.stopped,
            "oracle_error": self.oracle_error,
            "unjudged": self.unjudged,
            "connect_seconds": round(self.connect_seconds, 3),
            "handshakes": self.handshakes,
            "handshake_seconds": round(self.handshake_seconds, 6),
            "handshakes_per_second": round(self.handshakes_per_second, 1),
            "handshake_ms_mean": round(self.handshake_ms_mean, 3),
        }

    @classmethod
    def from_data(cls, spec: LoadSpec, data: dict[str, Any]) -> LoadResult:
        """Read back what :meth:`to_data` wrote (the derived figures are recomputed).

        Args:
            spec: The spec the result was measured under.
            data: A dict from :meth:`to_data`.

        Returns:
            The result.
        """
        return cls(
            spec,
            seconds=data["seconds"],
            round_trips=data["round_trips"],
            bytes_verified=data["bytes_verified"],
            latency=Histogram.from_dict(data["latency_histogram"]),
            errors=_errors_from_data(data["errors"]),
            first_error=data["first_error"],
            injected=Counter(data["faults_injected"]),
            observed=Counter(data["faults_observed"]),
            connections_opened=data["connections_opened"],
            server_alive=data["server_alive"],
            stopped=data["stopped"],
            oracle_error=data.get("oracle_error"),
            unjudged=data.get("unjudged"),
            connect_seconds=data.get("connect_seconds", 0.0),
            handshakes=data.get("handshakes", 0),
            handshake_seconds=data.get("handshake_seconds", 0.0),
        )

    @classmethod
    def merged(cls, spec: LoadSpec, parts: Iterable[LoadResult]) -> LoadResult:
        """Add up the results of several load processes that ran side by side.

        Args:
            spec: The spec of the whole run.
            parts: One result per load process, in process order.

        Returns:
            One result: counts added, histograms merged, the longest time, the
            first process's first error; stopped when any part was.
        """
        result = cls(spec)
        for part in parts:
            result.seconds = max(result.seconds, part.seconds)
            result.round_trips += part.round_trips
            result.bytes_verified += part.bytes_verified
            result.latency.merge([part.latency])
            result.errors.update(part.errors)
            if result.first_error is None:
                result.first_error = part.first_error
            result.injected.update(part.injected)
            result.observed.update(part.observed)
            result.connections_opened += part.connections_opened
            result.stopped = result.stopped or part.stopped
            result.oracle_error = result.oracle_error or part.oracle_error
            result.unjudged = result.unjudged or part.unjudged
            result.connect_seconds = max(result.connect_seconds, part.connect_seconds)
            result.handshakes += part.handshakes
            result.handshake_seconds += part.handshake_seconds
        return result

    def summary_line(self) -> str:
        """One line for a terminal: rates, latency percentiles, errors, faults."""
        data = self.to_data()
        lat = data["latency_us"]
        handshakes = ""
        if self.spec.tls is not None:
            handshakes = (
                f", {data['handshakes']} TLS handshakes {data['handshakes_per_second']:,.0f}/s "
                f"(mean {data['handshake_ms_mean']:.2f} ms)"
            )
        line = (
            f"{data['round_trips']} round trips in {data['seconds']:.2f}s "
            f"({data['round_trips_per_second']:,.0f}/s{handshakes}, "
            f"{data['megabytes_per_second']:.1f} MB/s verified); "
            f"latency us p50 {lat['p50']} p90 {lat['p90']} p99 {lat['p99']} "
            f"p99.9 {lat['p99.9']} max {lat['max']}; "
            f"errors {sum(count for _, _, count in data['errors'])}"
        )
        if data["faults_injected"]:
            line += f"; injected {data['faults_injected']}; observed {data['faults_observed']}"
        if data["server_alive"] is not None:
            alive = "alive" if data["server_alive"] else "NOT answering"
            line += f"; server {alive} at the end"
        if data["stopped"]:
            line += "; STOPPED before the end (partial result)"
        if data["oracle_error"]:
            line += f"; ORACLE ERROR: {data['oracle_error']}"
        if data["unjudged"]:
            line += f"; NOT JUDGED: {data['unjudged']}"
        return line


def format_json(result: LoadResult) -> str:
    """The ``--json`` output: :meth:`LoadResult.to_data`, indented, keys sorted."""
    return json.dumps(result.to_data(), indent=2, sort_keys=True)
