"""The HTML report of a run: one self-contained page.

The page has no external assets (its CSS and JS are inline), so it can be
kept as a CI artefact and opened anywhere. From top to bottom:

- a header: suite version, start time, host, strictness, oracle;
- the summary bar (``id="summary"``): per target, the counts of PASS, FAIL,
  NON-STRICT and SKIPPED as coloured segments, and the run's verdict;
- filters: a verdict and a category selector (inline JS hides rows);
- the checks table (``id="checks"``): one row per check, its ID, level,
  category, title, then one column per target (the verdict and its time),
  like Autobahn's agent table; a failed cell links to its failure;
- the failures (``id="failures"``): for each failed or non-strict result,
  its details, a hex excerpt of expected (what was sent, for echo) against
  received around the first divergence, the divergent byte marked, and the
  replay command.
"""

from __future__ import annotations

import datetime
import html
import re
from pathlib import Path

from conformance.reports.failure import ByteDivergence, Excerpt
from conformance.run.results import (
    CheckResult,
    RunResults,
    TargetRun,
    Verdict,
    format_counts,
    host_info,
)
from conformance.version import __version__

_FAILED = (Verdict.FAIL, Verdict.NON_STRICT, Verdict.ERROR)

__all__ = ["render_html", "write_html"]

_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:1.5em;color:#1d1d1f;background:#fff}
h1{font-size:1.4em;margin:0 0 .2em}h2{font-size:1.15em;margin:1.6em 0 .5em}
.meta{color:#555;margin-bottom:1em}
code,pre,.hex{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:12.5px}
#summary{border:1px solid #ccc;border-radius:6px;padding:.6em .8em;margin:1em 0}
.run-verdict{font-weight:bold;font-size:1.1em;margin-bottom:.4em}
.run-verdict.ok{color:#1a7f37}.run-verdict.failed{color:#cf222e}
.target-summary{display:flex;align-items:center;gap:.8em;margin:.3em 0}
.target-summary .name{min-width:12em;font-weight:600}
.bar{display:flex;flex:1;height:1.3em;border-radius:4px;overflow:hidden;background:#eee}
.bar span{display:block;height:100%}
.counts{min-width:26em;color:#333}
.PASS{background:#2da44e;color:#fff}.FAIL{background:#cf222e;color:#fff}
.NON-STRICT{background:#bf8700;color:#fff}.SKIPPED{background:#8c959f;color:#fff}
.ERROR{background:#8250df;color:#fff}.failure.ERROR-box{border-left-color:#8250df}
#events li{margin:.3em 0}
table{border-collapse:collapse;width:100%}
th,td{border:1px solid #d0d7de;padding:.25em .5em;text-align:left;vertical-align:top}
th{background:#f6f8fa}
td.verdict{white-space:nowrap;text-align:center}td.verdict a{color:inherit}
.filters{margin:.6em 0}.filters label{margin-right:1.2em}
.failure{border:1px solid #d0d7de;border-left:5px solid #cf222e;border-radius:4px;
padding:.5em .9em;margin:1em 0}
.failure.NON-STRICT-box{border-left-color:#bf8700}
pre{white-space:pre-wrap;background:#f6f8fa;padding:.5em;border-radius:4px;margin:.4em 0}
table.hex{width:auto}table.hex td,table.hex th{border:none;padding:0 .25em;text-align:center}
table.hex th{background:none;text-align:right;color:#555}
.hex .mark{background:#ffd33d;font-weight:bold;outline:1px solid #bf8700}
.replay code{background:#f6f8fa;padding:.1em .3em;user-select:all}
"""

_JS = """
(function(){
  var verdict=document.getElementById('filter-verdict');
  var category=document.getElementById('filter-category');
  function apply(){
    var v=verdict.value,c=category.value,shown=0;
    document.querySelectorAll('#checks tbody tr').forEach(function(row){
      var ok=(!v||row.dataset.verdicts.split(' ').indexOf(v)>=0)&&
             (!c||row.dataset.category===c);
      row.hidden=!ok;if(ok){shown++;}
    });
    document.getElementById('shown').textContent=shown;
  }
  verdict.addEventListener('change',apply);category.addEventListener('change',apply);
  apply();
})();
"""


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _anchor(target: TargetRun, result: CheckResult) -> str:
    return "f-" + re.sub(r"[^A-Za-z0-9_-]", "_", f"{target.name}-{result.check.id}")


def _summary(run: RunResults) -> str:
    ok = run.ok()
    word = "PASSED" if ok else "FAILED"
    parts = [
        '<section id="summary">',
        f'<div class="run-verdict {"ok" if ok else "failed"}">{word}: '
        f"{_e(format_counts(run.totals()))}</div>",
    ]
    total = max(1, len(run.checks))
    for target in run.targets:
        counts = target.counts(run.checks)
        segments = "".join(
            f'<span class="{v.value}" style="width:{100 * counts[v] / total:.3f}%" '
            f'title="{counts[v]} {v.value}"></span>'
            for v in Verdict
            if counts[v]
        )
        parts.append(
            f'<div class="target-summary" data-target="{_e(target.name)}">'
            f'<span class="name" title="{_e(target.description)}">{_e(target.name)}</span>'
            f'<span class="bar">{segments}</span>'
            f'<span class="counts">{_e(format_counts(counts))}</span></div>'
        )
    parts.append("</section>")
    return "\n".join(parts)


def _filters(run: RunResults) -> str:
    verdicts = "".join(f'<option value="{v.value}">{v.value}</option>' for v in Verdict)
    categories = "".join(
        f'<option value="{_e(c)}">{_e(c)}</option>'
        for c in dict.fromkeys(check.category for check in run.checks)
    )
    return (
        '<div class="filters">'
        '<label>Verdict <select id="filter-verdict"><option value="">all</option>'
        f"{verdicts}</select></label>"
        '<label>Category <select id="filter-category"><option value="">all</option>'
        f"{categories}</select></label>"
        f'<span><span id="shown">{len(run.checks)}</span> of {len(run.checks)} checks shown'
        "</span></div>"
    )


def _table(run: RunResults) -> str:
    heads = "".join(
        f'<th title="{_e(t.description)} at {_e(t.address)}">{_e(t.name)}</th>' for t in run.targets
    )
    rows = []
    for check in run.checks:
        cells = []
        verdicts = []
        for target in run.targets:
            result = target.result(check)
            verdicts.append(result.verdict.value)
            text = f"{result.verdict.value}<br><small>{result.duration:.2f}s</small>"
            if result.verdict in _FAILED:
                text = f'<a href="#{_anchor(target, result)}">{text}</a>'
            cells.append(f'<td class="verdict {result.verdict.value}">{text}</td>')
        rows.append(
            f'<tr id="c-{_e(check.id)}" data-category="{_e(check.category)}" '
            f'data-verdicts="{_e(" ".join(dict.fromkeys(verdicts)))}">'
            f"<td><code>{_e(check.id)}</code></td><td>{check.level.value}</td>"
            f"<td>{_e(check.category)}</td>"
            f"<td>{_e(check.title)}<br><small>{_e(check.spec)}</small></td>{''.join(cells)}</tr>"
        )
    return (
        '<table id="checks"><thead><tr><th>ID</th><th>Level</th><th>Category</th>'
        f"<th>Check</th>{heads}</tr></thead><tbody>\n" + "\n".join(rows) + "\n</tbody></table>"
    )


def _hex_rows(label: str, side: Excerpt) -> str:
    tds = "".join(
        f'<td class="mark">{_e(c)}</td>' if i == side.marked else f"<td>{_e(c)}</td>"
        for i, c in enumerate(side.cells)
    )
    return f"<tr><th>{_e(label)} ({side.size} bytes) @0x{side.start:x}</th>{tds}</tr>"


def _hex(divergence: ByteDivergence) -> str:
    offset = divergence.offset
    return (
        f"<p>{_e(divergence.what)}: <b>{offset}</b> (0x{offset:x})"
        + (f" &mdash; {_e(divergence.reason)}" if divergence.reason else "")
        + "</p>"
        '<table class="hex">'
        + _hex_rows("expected (sent)", divergence.sent)
        + _hex_rows("received", divergence.received)
        + "</table>"
    )


def _failures(run: RunResults) -> str:
    boxes = []
    for target in run.targets:
        for check in run.checks:
            result = target.result(check)
            if result.verdict not in _FAILED:
                continue
            failure = result.failure
            verdict = result.verdict.value
            parts = [
                f'<div class="failure {verdict}-box" id="{_anchor(target, result)}">',
                f"<h3><code>{_e(check.id)}</code> against {_e(target.name)}: "
                f"{verdict} ({check.level.value})</h3>",
                f"<p>{_e(check.title)} <small>({_e(check.spec)})</small></p>",
            ]
            if failure is not None:
                step = f" at step <i>{_e(failure.step)}</i>" if failure.step else ""
                parts.append(f"<p><b>{_e(failure.kind.value)}</b>{step}: {_e(failure.message)}</p>")
                if failure.divergence is not None:
                    parts.append(_hex(failure.divergence))
            parts.append(f"<pre>{_e(result.details)}</pre>")
            if result.replay:
                parts.append(f'<p class="replay">Replay: <code>{_e(result.replay)}</code></p>')
            parts.append("</div>")
            boxes.append("\n".join(parts))
    if not boxes:
        return '<section id="failures"><h2>Failures</h2><p>None.</p></section>'
    return '<section id="failures"><h2>Failures</h2>\n' + "\n".join(boxes) + "\n</section>"


def _events(run: RunResults) -> str:
    items = []
    for target in run.targets:
        for event in target.events:
            when = datetime.datetime.fromtimestamp(event.at, datetime.UTC)
            stderr = f"<pre>{_e(chr(10).join(event.stderr))}</pre>" if event.stderr else ""
            items.append(
                f"<li><b>{_e(target.name)}</b> {_e(event.line())} "
                f"<small>({_e(when.isoformat(timespec='seconds'))})</small>{stderr}</li>"
            )
    if not items:
        return ""
    return (
        '<section id="events"><h2>What happened to the targets</h2><ul>\n'
        + "\n".join(items)
        + "\n</ul></section>"
    )


def render_html(run: RunResults) -> str:
    """The report of ``run`` as one self-contained HTML page."""
    started = datetime.datetime.fromtimestamp(run.started, datetime.UTC)
    host = host_info()
    targets = ", ".join(f"{t.name} ({t.description} at {t.address})" for t in run.targets)
    load_from = f"<br>Load checks from: {_e(', '.join(run.load_hosts))}" if run.load_hosts else ""
    title = f"reactor-conformance: {'passed' if run.ok() else 'failed'}"
    when = started.isoformat(timespec="seconds")
    strictness = (
        "strict: every failure fails the run"
        if run.strict
        else "a failed SHOULD or MAY is non-strict"
    )
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(title)}</title>
<style>{_CSS}</style>
</head>
<body>
<h1>reactor-conformance report</h1>
<div class="meta">Suite {_e(__version__)} &middot; started {_e(when)}
&middot; {run.duration:.1f}s &middot; host {_e(host["name"])} ({_e(host["platform"])},
Python {_e(host["python"])}) &middot; protocol {_e(run.protocol)} &middot; oracle {_e(run.oracle)}
&middot; {strictness}
<br>Targets: {_e(targets)}{load_from}</div>
{_summary(run)}
{_events(run)}
<h2>Checks</h2>
{_filters(run)}
{_table(run)}
{_failures(run)}
<script>{_JS}</script>
</body>
</html>
"""


def write_html(run: RunResults, path: str | Path) -> None:
    """Write the HTML report of ``run`` to ``path``.

    Raises:
        OSError: The file cannot be written.
    """
    Path(path).write_text(render_html(run), encoding="utf-8")
