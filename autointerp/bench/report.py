"""The benchmark report: Markdown + HTML tables, matplotlib PNG plots of score distributions, and JSON."""

from __future__ import annotations

import math
from pathlib import Path

import jinja2

from autointerp.bench.run import RANDOM, BenchResult
from autointerp.viewer.links import VIEWER_URL, unit_url

SHOWN = {RANDOM: "random explanation (floor)"}  # how a method row is named in the report


def _f(x: float | None, nd: int = 3) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{nd}f}"


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.0f}%"


def tables(r: BenchResult) -> dict[str, list[list[str]]]:
    """The report's tables as rows of strings (first row: the header)."""
    sc = r.settings.scorers
    methods = [["method", "units", "failures"] + [f"{x} mean [95% CI] (n, nan)" for x in sc]]
    methods[0] += [
        "matches truth",
        "prompt tok",
        "completion tok",
        "cached tok (calls)",
        "seconds",
        "resumed",
    ]
    for m in r.methods:
        cells = [SHOWN.get(m.method, m.method), str(m.n_units), str(m.failures)]
        for x in sc:
            st = m.stats.get(x)
            cells.append(
                f"{_f(st.mean)} [{_f(st.ci_low)}, {_f(st.ci_high)}] ({st.n}, {st.n_nan + st.n_failed})"
                if st
                else "–"
            )
        cells += [_pct(m.match_share), f"{m.prompt_tokens:,}", f"{m.completion_tokens:,}"]
        cells += [f"{m.cached_tokens:,} ({m.cached_calls:,})", _f(m.seconds, 1)]
        cells.append(str(m.resumed))
        methods.append(cells)
    units = [["unit", "truth"] + [f"{m} (sim)" for m in r.settings.methods]]
    for u in r.units:
        cells = [u.name, u.truth or "–"]
        for m in r.settings.methods:
            text = u.explanations.get(f"gen:{m}") or f"failed: {u.errors.get(m, '')[:40]}"
            match = u.match.get(m)
            mark = "" if match is None else f" ({_f(match.similarity, 2)}{' ✓' if match.matched else ''})"
            corr = (u.scores.get(f"gen:{m}") or {}).get(sc[0])
            cells.append(f"{text}{mark} · {sc[0]} {_f(corr, 2)}")
        units.append(cells)
    out = {"methods": methods, "units": units}
    if r.meta:
        meta = [
            ["scorer", "units", "truth first (all)", "truth first (vs distractors)", "truth > distractor"]
        ]
        kinds = sorted({k for s in r.meta.scorers for k in s.mean_by_kind})
        meta[0] += [f"mean: {k}" for k in kinds]
        for s in r.meta.scorers:
            meta.append(
                [
                    s.scorer,
                    str(s.n_units),
                    _pct(s.truth_first),
                    _pct(s.truth_first_vs_distractors),
                    _pct(s.truth_beats_distractors),
                ]
                + [_f(s.mean_by_kind.get(k)) for k in kinds]
            )
        out["meta"] = meta
        if r.meta.spearman:
            out["spearman"] = [["scorer a", "scorer b", "Spearman rho", "n"]] + [
                [p.a, p.b, _f(p.rho), str(p.n)] for p in r.meta.spearman
            ]
    return out


def plot(r: BenchResult, path: Path) -> Path:
    """One panel per scorer: the distribution of scores per method (generated, true, distractors)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [f"gen:{m}" for m in r.settings.methods]
    keys += sorted(
        {k for u in r.units for k in u.scores if not k.startswith("gen:")}, key=lambda k: k != "true"
    )
    sc = r.settings.scorers
    fig, axes = plt.subplots(1, len(sc), figsize=(max(5, 1.1 * len(keys)) * len(sc), 4), squeeze=False)
    for ax, scorer in zip(axes[0], sc, strict=True):
        data = [[v for u in r.units if (v := (u.scores.get(k) or {}).get(scorer)) is not None] for k in keys]
        pos = [i for i, d in enumerate(data) if d]
        if pos:
            ax.boxplot([data[i] for i in pos], positions=pos, widths=0.5, showfliers=False)
        for i, d in enumerate(data):
            jitter = [i + 0.12 * ((j % 5) - 2) / 2 for j in range(len(d))]
            ax.scatter(jitter, d, s=12, alpha=0.6, color="tab:orange" if keys[i] == "true" else "tab:blue")
        ax.set_xticks(range(len(keys)))
        ax.set_xticklabels([k.split(":", 1)[-1] for k in keys], rotation=30, ha="right")
        ax.set_title(scorer)
        ax.axhline(0, color="#ccc", lw=0.8)
    fig.suptitle(f"score distributions, {len(r.units)} units ({r.settings.suite})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _md_table(rows: list[list[str]]) -> str:
    esc = [[c.replace("|", "\\|").replace("\n", " ") for c in row] for row in rows]
    lines = ["| " + " | ".join(esc[0]) + " |", "|" + "---|" * len(esc[0])]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in esc[1:]])


TITLES = {
    "methods": "Methods",
    "units": "Units: generated explanations (similarity to the truth, ✓ a match) and their score",
    "meta": "Scorer meta-evaluation",
    "spearman": "Agreement between scorers",
}


def unit_links(r: BenchResult, viewer_url: str | None) -> list[str | None]:
    """Per row of the units table, the unit's page in the viewer at `viewer_url` (None: no links)."""
    return [unit_url(viewer_url, u.unit_id) if viewer_url else None for u in r.units]


def _intro(r: BenchResult, viewer_url: str | None = None) -> list[str]:
    s = r.settings
    lines = [
        f"Suite `{s.suite}`, {len(r.units)} units, methods {', '.join(s.methods)}; "
        f"explainer `{s.explainer}`, "
        f"simulator `{s.simulator or s.explainer}`; scorers {', '.join(s.scorers)}; seed {s.seed}; "
        f"{s.tokens} corpus tokens in windows of {s.ctx}. Store `{r.db}`, run `{r.run_id}`, "
        f"{r.seconds:.0f} s, code {r.code_version}.",
    ]
    if r.match_measure:
        lines.append(f"A generated explanation matches the truth when its {r.match_measure}.")
        if r.near_miss_match_rate is not None:
            lines.append(
                f"Calibration: the same measure calls {_pct(r.near_miss_match_rate)} of the near-miss "
                "distractors (plausible but wrong phrases) a match: read the match share as an upper bound."
            )
    if r.meta:
        lines.append(
            "Meta-evaluation candidates per unit: the true explanation, the generated ones, and distractors "
            "(`other`: the next unit's truth; `negated`: 'anything except' + truth; `near_miss`: a plausible "
            "wrong phrase). 'Truth first' credits 1/k for a k-way tie at the top."
        )
    lines.append(
        "Floor: `random explanation` scores, for each unit, the explanation the first method "
        f"(`{s.methods[0]}`) generated for another unit (chosen by seed): a method near it explains nothing "
        "unit-specific. Detection and fuzzing values are balanced accuracies (chance 0.5)"
        + (", with delphi's protocol (32-token windows, 5 examples per prompt)." if s.delphi else ".")
    )
    lines.append(
        "Seconds: compute time recorded with the stored rows; tokens: LLM tokens spent by this "
        "invocation, for every row (the truth, distractor and floor rows: scoring them); cached: tokens "
        "of the LLM calls served from the store's cache (they cost nothing; units resumed from the store "
        "make no calls at all)."
    )
    if viewer_url:
        lines.append(
            f"Each unit's name opens its page in the viewer at {viewer_url}: run "
            f"`autointerp serve --db {r.db}` first."
        )
    if r.skipped_units:
        lines.append("Left out: " + "; ".join(f"{u} ({why})" for u, why in r.skipped_units.items()))
    return lines


HTML = """<!doctype html><meta charset="utf-8"><title>autointerp benchmark</title>
<style>body{font:14px system-ui;margin:2em;max-width:1400px}
td,th{padding:4px 8px;border-bottom:1px solid #ddd;vertical-align:top;text-align:left}</style>
<h1>autointerp benchmark</h1>{% for p in intro %}<p>{{ p }}</p>{% endfor %}
{% for key, rows in tables.items() %}<h2>{{ titles[key] }}</h2>
<table><tr>{% for c in rows[0] %}<th>{{ c }}</th>{% endfor %}</tr>
{% for row in rows[1:] %}{% set url = links[key][loop.index0] if key in links else none %}<tr>
{%- for c in row %}<td>{% if loop.first and url %}<a href="{{ url }}">{{ c }}</a>
{%- else %}{{ c }}{% endif %}</td>{% endfor %}</tr>
{% endfor %}</table>
{% endfor %}<h2>Score distributions</h2><img src="{{ png }}" style="max-width:100%">
"""


def markdown(r: BenchResult, png: str, viewer_url: str | None = VIEWER_URL) -> str:
    """The report as Markdown; unit names link to the viewer at `viewer_url` (None: no links)."""
    t = tables(r)
    links = unit_links(r, viewer_url)
    t["units"] = [t["units"][0]] + [
        [f"[{_md_text(row[0])}]({url})" if url else row[0], *row[1:]]
        for row, url in zip(t["units"][1:], links, strict=True)
    ]
    md = ["# autointerp benchmark", "", *(p + "\n" for p in _intro(r, viewer_url))]
    for key, rows in t.items():
        md += [f"## {TITLES[key]}", "", _md_table(rows), ""]
    md += ["## Score distributions", "", f"![score distributions]({png})", ""]
    return "\n".join(md)


def _md_text(text: str) -> str:
    """Link text that Markdown reads literally."""
    return "".join("\\" + c if c in "\\[]()*_`<>" else c for c in text)


def html(r: BenchResult, png: str, viewer_url: str | None = VIEWER_URL) -> str:
    """The report as one HTML page (all text escaped); unit names link to the viewer at `viewer_url`."""
    env = jinja2.Environment(autoescape=True)
    return env.from_string(HTML).render(
        intro=_intro(r, viewer_url),
        tables=tables(r),
        links={"units": unit_links(r, viewer_url)},
        titles=TITLES,
        png=png,
    )


def write_report(r: BenchResult, out_dir: str | Path, viewer_url: str | None = VIEWER_URL) -> dict[str, Path]:
    """bench.md, bench.html, bench.png and bench.json in `out_dir` (unit names link to the viewer at
    `viewer_url`; None: no links); returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {k: out / f"bench.{k}" for k in ("md", "html", "png", "json")}
    plot(r, paths["png"])
    paths["md"].write_text(markdown(r, paths["png"].name, viewer_url))
    paths["html"].write_text(html(r, paths["png"].name, viewer_url))
    paths["json"].write_text(r.model_dump_json(indent=1))
    return paths
