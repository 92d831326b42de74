"""The JSON report of a run, and the schema it follows.

The document (``report.schema.json`` beside this module describes it):

- ``format``: ``reactor-conformance-report/1``;
- ``suite`` (name, version), ``started``/``finished`` (ISO 8601, UTC),
  ``duration``, ``host`` (name, platform, Python), ``strict``, ``oracle``;
- ``ok`` and ``summary``: the verdict of the whole run and the counts;
- ``checks``: the catalogue entries run (ID, title, level, category, spec);
- ``targets``: per target its name, kind, spec, address, summary, and
  ``results``: one object per check with its ID, title, level, category,
  verdict, duration, details, replay command and, for a failure, ``failure``
  (the step, the connection, the first divergence with hex excerpts).
"""

from __future__ import annotations

import datetime
import json
from importlib import resources
from pathlib import Path
from typing import Any

from conformance.checks import Check
from conformance.run.results import CheckResult, RunResults, TargetRun, Verdict, host_info
from conformance.targets.target_state import TargetEvent
from conformance.version import __version__

__all__ = ["FORMAT", "load_schema", "to_json", "write_json"]

#: The value of the document's ``format`` field; changes when the shape does.
FORMAT = "reactor-conformance-report/1"


def load_schema() -> dict[str, Any]:
    """The JSON schema of the report (package data)."""
    text = resources.files("conformance.reports").joinpath("report.schema.json").read_text("utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


def _iso(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).isoformat(timespec="seconds")


def _summary(counts: dict[Verdict, int]) -> dict[str, int]:
    return {
        "passed": counts[Verdict.PASS],
        "failed": counts[Verdict.FAIL],
        "non_strict": counts[Verdict.NON_STRICT],
        "skipped": counts[Verdict.SKIPPED],
        "errors": counts[Verdict.ERROR],
    }


def _check(check: Check) -> dict[str, Any]:
    return {
        "id": check.id,
        "title": check.title,
        "level": check.level.value,
        "category": check.category,
        "spec": check.spec,
    }


def _catalogue_entry(check: Check) -> dict[str, Any]:
    rules = [
        {"id": r.id, "level": r.level.value, "text": r.text, "spec": r.spec, "quote": r.quote}
        for r in check.rules
    ]
    return {**_check(check), "rules": rules}


def _result(result: CheckResult) -> dict[str, Any]:
    return {
        **_check(result.check),
        "verdict": result.verdict.value,
        "duration": round(result.duration, 6),
        "details": result.details,
        "replay": result.replay,
        "failure": result.failure.fields() if result.failure is not None else None,
    }


def _target(target: TargetRun, checks: list[Check]) -> dict[str, Any]:
    counts = target.counts(checks)
    return {
        "name": target.name,
        "kind": target.kind,
        "spec": target.spec,
        "address": target.address,
        "description": target.description,
        "ok": counts[Verdict.FAIL] == 0 and counts[Verdict.ERROR] == 0,
        "summary": _summary(counts),
        "results": [_result(target.result(c)) for c in checks],
        "events": [_event(e) for e in target.events],
    }


def _event(event: TargetEvent) -> dict[str, Any]:
    return {**event.to_data(), "at": _iso(event.at)}


def to_json(run: RunResults) -> dict[str, Any]:
    """The report of ``run`` as a JSON-ready dict."""
    finished = run.finished if run.finished is not None else run.started
    return {
        "format": FORMAT,
        "suite": {"name": "reactor-conformance", "version": __version__},
        "started": _iso(run.started),
        "finished": _iso(finished),
        "duration": round(max(0.0, finished - run.started), 3),
        "host": host_info(),
        "strict": run.strict,
        "oracle": run.oracle,
        "protocol": run.protocol,
        "load_hosts": list(run.load_hosts),
        "ok": run.ok(),
        "summary": _summary(run.totals()),
        "checks": [_catalogue_entry(c) for c in run.checks],
        "targets": [_target(t, run.checks) for t in run.targets],
    }


def write_json(run: RunResults, path: str | Path) -> None:
    """Write the report of ``run`` to ``path``.

    Raises:
        OSError: The file cannot be written.
    """
    text = json.dumps(to_json(run), indent=2, ensure_ascii=False)
    Path(path).write_text(text + "\n", encoding="utf-8")
