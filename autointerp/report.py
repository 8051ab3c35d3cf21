"""A small self-contained HTML report of a store's explanations and scores; each unit links to its page
in the viewer (`autointerp serve`)."""

from __future__ import annotations

import html
from pathlib import Path

import jinja2

from autointerp.render import peak_slice
from autointerp.store import Store
from autointerp.viewer.links import VIEWER_URL, unit_url

PAGE = """<!doctype html><meta charset="utf-8"><title>autointerp report</title>
<style>
body{font:14px system-ui;margin:2em} td,th{padding:4px 8px;border-bottom:1px solid #ddd;vertical-align:top}
.ex{font-family:monospace;white-space:pre-wrap} .nan{color:#999}
</style>
<h1>autointerp report</h1><p>{{ store }} &middot; {{ rows|length }} explanations
{% if viewer %}&middot; unit links open the viewer:
<code>autointerp serve --db {{ store }}</code>{% endif %}</p>
<table><tr><th>unit</th><th>method</th><th>explanation</th>
{% for s in scorers %}<th>{{ s }}</th>{% endfor %}<th>top example</th></tr>
{% for r in rows %}<tr><td>{% if r.url %}<a href="{{ r.url }}">{{ r.unit }}</a>
{%- else %}{{ r.unit }}{% endif %}</td>
<td>{{ r.method }}<br><small>{{ r.model }}<br>{{ r.prompt }}</small></td><td><b>{{ r.text }}</b></td>
{% for s in scorers %}<td class="{{ 'nan' if r.scores.get(s) is string }}">
{{ r.scores.get(s, '') }}</td>{% endfor %}
<td class="ex">{{ r.example|safe }}</td></tr>{% endfor %}</table>
"""
TEMPLATE = jinja2.Environment(autoescape=True).from_string(PAGE)


def _example_html(tokens: list[str], acts: list[float], top: float) -> str:
    out = []
    for t, a in zip(tokens, acts, strict=True):
        alpha = max(0.0, min(1.0, a / top)) if top > 0 else 0.0
        out.append(f'<span style="background:rgba(255,140,0,{alpha:.2f})">{html.escape(t)}</span>')
    return "".join(out)


def write_report(store: Store, path: str | Path, viewer_url: str | None = VIEWER_URL) -> Path:
    """Write the report to `path`; unit ids link to `viewer_url`'s unit pages (None: no links)."""
    rows, scorers = [], set()
    for exp in store.explanations():
        scores = {}
        for s in store.scores(exp.id):
            scorers.add(s.scorer)
            scores[s.scorer] = round(s.value, 3) if s.value is not None else s.status
        unit = store.get_unit(exp.unit_id)
        top = store.examples(exp.unit_id, "top")[:1]
        example = ""
        if top and unit:
            example = _example_html(*peak_slice(top[0], 24), unit.stats.max)
        rows.append(
            {
                "unit": exp.unit_id,
                "url": unit_url(viewer_url, exp.unit_id) if viewer_url else None,
                "method": exp.method,
                "model": exp.model,
                "prompt": exp.prompt,
                "text": exp.text,
                "scores": scores,
                "example": example,
            }
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(TEMPLATE.render(store=store.path, rows=rows, scorers=sorted(scorers), viewer=viewer_url))
    return path
