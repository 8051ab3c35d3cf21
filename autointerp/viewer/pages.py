"""What the viewer shows, built from the store: one pydantic model per page (the JSON API returns the same
models the HTML templates render)."""

from __future__ import annotations

import math

from pydantic import BaseModel, Field

from autointerp.listing import ScoredExplanation, best_explanation, main_scorer, unit_explanations
from autointerp.render import crop, crop_start
from autointerp.store import Store
from autointerp.types import (
    Example,
    Experiment,
    HeadAttention,
    Investigation,
    Score,
    Unit,
    UnitIndexRow,
    UnitQuery,
)

KIND_ORDER = ("top", "quantile", "random", "negative", "minimal", "hard_negative")


class TokenView(BaseModel):
    """One token of an example: its text (escaped by the template), activation and colour strength."""

    text: str
    act: float
    alpha: float  # -1..1: share of the unit's max activation (negative: below zero)
    peak: bool = False
    # attention heads: the earlier tokens this one attends to most, (index into the shown tokens, weight)
    sources: list[tuple[int, float]] | None = None


class ExampleView(BaseModel):
    kind: str
    rank: int
    quantile: int | None = None
    max_act: float
    tokens: list[TokenView]
    note: str = ""  # what a derived example is (similarity, kept fraction, ...)


class HistBar(BaseModel):
    lo: float | None  # None: unbounded
    hi: float | None
    count: int
    height: float  # 0..1, log scale
    firing: bool  # the bin lies above the firing threshold


class SimToken(BaseModel):
    text: str
    true: float
    predicted: float
    alpha_true: float
    alpha_pred: float  # predicted on the 0-9 scale, as a share of 9


class SimulatedExample(BaseModel):
    kind: str
    rank: int
    tokens: list[SimToken]


class ScoreView(BaseModel):
    scorer: str
    value: float | None
    status: str
    reason: str
    simulator: str
    prompt: str
    created_at: str
    details: dict = Field(default_factory=dict)
    simulated: list[SimulatedExample] = Field(default_factory=list)  # correlation: per-token read-outs


class ExplanationView(BaseModel):
    id: str
    text: str
    method: str
    model: str
    prompt: str
    created_at: str
    best: bool
    scores: list[ScoreView]


class CounterfactualPair(BaseModel):
    direction: str
    original: ExampleView | None  # the stored example the edit was made from (None if it is gone)
    edited: ExampleView
    original_act: float | None
    edited_act: float | None


class Neighbour(BaseModel):
    unit_id: str
    cosine: float
    recorded: bool  # the neighbour is a unit in this store (it has a page)


class OutputToken(BaseModel):
    token: str
    value: float


class AttributionToken(BaseModel):
    text: str
    drop: float  # how much the peak activation drops without this token


class InvestigationView(BaseModel):
    """An agent investigation (or chat) of the unit, with every experiment it ran."""

    investigation: Investigation
    experiments: list[Experiment]


class UnitPage(BaseModel):
    unit: Unit
    n_firing: int
    hist: list[HistBar]
    examples: dict[str, list[ExampleView]]  # kind -> examples (quantile: sorted by quantile)
    counterfactuals: list[CounterfactualPair]
    attribution: list[AttributionToken]
    explanations: list[ExplanationView]
    investigations: list[InvestigationView] = []
    neighbours: list[Neighbour] | None = None
    neighbours_note: str = ""
    promoted: list[OutputToken] | None = None
    suppressed: list[OutputToken] | None = None
    logits_note: str = ""


class IndexPage(BaseModel):
    query: UnitQuery
    total: int
    rows: list[UnitIndexRow]
    explanations: dict[str, str]  # unit id -> its best explanation's text
    scores: dict[str, dict[str, float | None]]  # unit id -> scorer -> its best latest value
    scorers: list[str]
    sources: list[str]

    @property
    def pages(self) -> int:
        return max(1, math.ceil(self.total / self.query.per_page))


def index_page(store: Store, q: UnitQuery) -> IndexPage:
    """A page of the unit index, with each unit's best explanation and best score per scorer."""
    total, rows = store.unit_index(q)
    explanations, scores = {}, {}
    scorers = store.scorer_names()
    main = q.scorer or main_scorer(set(scorers))
    by_unit: dict[str, list[ScoredExplanation]] = {}
    for e, latest in store.latest_labels([r.unit_id for r in rows if r.n_explanations]):
        se = ScoredExplanation(explanation=e, scores={s.scorer: s for s in latest})
        by_unit.setdefault(e.unit_id, []).append(se)
    for uid, explained in by_unit.items():
        if best := best_explanation(explained, main):
            explanations[uid] = best.explanation.text
        scores[uid] = {s: _best_value(explained, s) for s in scorers}
    return IndexPage(
        query=q,
        total=total,
        rows=rows,
        explanations=explanations,
        scores=scores,
        scorers=scorers,
        sources=store.unit_sources(),
    )


def _best_value(explained: list[ScoredExplanation], scorer: str) -> float | None:
    values = [v for se in explained if (v := se.value(scorer)) is not None]
    return max(values) if values else None


def tokens_view(
    tokens: list[str],
    acts: list[float],
    scale: float,
    peak: int | None,
    sources: list[list[tuple[int, float]]] | None = None,
) -> list[TokenView]:
    """Tokens with their activations; colour strength is the activation over `scale` (clipped to -1..1);
    `sources`: per token, an attention head's top sources."""
    return [
        TokenView(
            text=t,
            act=round(a, 4),
            alpha=_alpha(a, scale),
            peak=i == peak,
            sources=sources[i] if sources is not None and i < len(sources) else None,
        )  # fmt: skip
        for i, (t, a) in enumerate(zip(tokens, acts, strict=True))
    ]


def head_sources(attn: HeadAttention, first: int) -> list[list[tuple[int, float]]]:
    """Per query position from `first` on (the shown tokens), its stored top sources as (shown index,
    weight); a source before `first` (BOS, never stored) is left out."""
    return [
        [(s - first, round(w, 3)) for s, w in zip(src, weights, strict=True) if s >= first]
        for src, weights in zip(attn.src[first:], attn.weights[first:], strict=True)
    ]


def _alpha(a: float, scale: float) -> float:
    return round(max(-1.0, min(1.0, a / scale)), 3) if scale > 0 and math.isfinite(a) else 0.0


def example_view(e: Example, scale: float) -> ExampleView:
    """An example as shown: a leading special token (BOS) left out, as everywhere downstream of the store."""
    tokens, acts = crop(e, 0)
    top = max(acts, default=0.0)
    peak = acts.index(top) if top > 0 else None
    sources = head_sources(e.attn, crop_start(e, 0)) if e.attn is not None else None
    return ExampleView(
        kind=e.kind,
        rank=e.rank,
        quantile=e.quantile,
        max_act=round(top, 4),
        tokens=tokens_view(tokens, acts, scale, peak, sources),
        note=_note(e),
    )


def _note(e: Example) -> str:
    p = e.provenance
    if e.kind == "minimal" and "kept_fraction" in p:
        return f"minimal suffix keeping {p['kept_fraction']:.0%} of the peak of top #{e.rank}"
    if e.kind == "hard_negative" and "similarity" in p:
        return f"non-firing window, similarity {p['similarity']:.3f} to top #{p.get('nearest_top_rank')}"
    return ""


def histogram(unit: Unit) -> list[HistBar]:
    """The stored histogram, trimmed to its non-empty bins, heights on a log scale."""
    s = unit.stats
    nonzero = [i for i, c in enumerate(s.hist_counts) if c]
    if not nonzero:
        return []
    lo, hi = nonzero[0], nonzero[-1]
    top = math.log1p(max(s.hist_counts))
    bars = []
    for i in range(lo, hi + 1):
        a, b = s.hist_edges[i], s.hist_edges[i + 1]
        bars.append(
            HistBar(
                lo=a if math.isfinite(a) else None,
                hi=b if math.isfinite(b) else None,
                count=s.hist_counts[i],
                height=round(math.log1p(s.hist_counts[i]) / top, 4) if top else 0.0,
                firing=a >= s.fire_threshold,
            )
        )
    return bars


def score_view(score: Score, examples: dict[tuple[str, int], Example]) -> ScoreView:
    simulated = []
    d = score.details
    if score.scorer == "correlation" and isinstance(d.get("predicted"), list):
        for (kind, rank), predicted in zip(d.get("examples") or [], d["predicted"], strict=False):
            e = examples.get((kind, rank))
            tokens, acts = crop(e, 0) if e else ([], [])
            if len(predicted) != len(acts) or not acts:  # predictions cover the body (BOS left out)
                continue
            top = max(max(acts), 1e-9)
            simulated.append(
                SimulatedExample(
                    kind=kind,
                    rank=rank,
                    tokens=[
                        SimToken(
                            text=t,
                            true=round(a, 4),
                            predicted=p,
                            alpha_true=_alpha(a, top),
                            alpha_pred=_alpha(p, 9.0),
                        )  # fmt: skip
                        for t, a, p in zip(tokens, acts, predicted, strict=True)
                    ],
                )
            )
    details = {k: v for k, v in d.items() if k not in ("predicted", "examples")}
    return ScoreView(
        scorer=score.scorer,
        value=score.value,
        status=score.status,
        reason=score.reason,
        simulator=score.simulator,
        prompt=score.prompt,
        created_at=score.created_at,
        details=details,
        simulated=simulated,
    )


def unit_page(store: Store, unit: Unit) -> UnitPage:
    """Everything the store holds about one unit, ready to render (neighbours and logits: see app)."""
    all_examples = store.examples(unit.id)
    by_key = {(e.kind, e.rank): e for e in all_examples}
    scale = (
        unit.stats.max
        if unit.stats.max > 0
        else max((abs(a) for e in all_examples for a in e.acts), default=1)
    )
    examples: dict[str, list[ExampleView]] = {}
    for e in sorted(all_examples, key=lambda e: (e.quantile or 0) if e.kind == "quantile" else 0):
        if e.kind in KIND_ORDER:
            examples.setdefault(e.kind, []).append(example_view(e, scale))
    pairs = []
    for e in all_examples:
        if e.kind != "counterfactual":
            continue
        src = by_key.get((e.source.kind, e.source.rank)) if e.source and e.source.rank is not None else None
        pairs.append(
            CounterfactualPair(
                direction=str(e.provenance.get("direction", "")),
                original=example_view(src, scale) if src else None,
                edited=example_view(e, scale),
                original_act=_num(e.provenance.get("original_act")),
                edited_act=_num(e.provenance.get("edited_act")),
            )
        )
    explained = unit_explanations(store, unit.id)
    best = best_explanation(explained, main_scorer({s for se in explained for s in se.scores}))
    all_scores = store.scores(unit_id=unit.id)
    views = [
        ExplanationView(
            id=se.explanation.id,
            text=se.explanation.text,
            method=se.explanation.method,
            model=se.explanation.model,
            prompt=se.explanation.prompt,
            created_at=se.explanation.created_at,
            best=best is not None and se.explanation.id == best.explanation.id,
            scores=[score_view(s, by_key) for s in all_scores if s.explanation_id == se.explanation.id],
        )
        for se in explained
    ]
    return UnitPage(
        unit=unit,
        n_firing=round(unit.stats.frac_firing * unit.stats.n_tokens),
        hist=histogram(unit),
        examples=examples,
        counterfactuals=pairs,
        attribution=_attribution(by_key.get(("top", 0))),
        explanations=views,
        investigations=[
            InvestigationView(investigation=inv, experiments=store.experiments(inv.id))
            for inv in store.investigations(unit.id)
        ],
    )


def _attribution(top: Example | None, k: int = 8) -> list[AttributionToken]:
    """The tokens whose deletion (or replacement) lowers the top example's peak most, if attributed."""
    from autointerp.counterfactual.types import Attribution

    raw = top.provenance.get("attribution") if top else None
    if not isinstance(raw, str):
        return []
    att = Attribution.model_validate_json(raw)
    return [
        AttributionToken(
            text=e.token,
            drop=round(max(e.replace_drop, e.delete_drop if e.delete_drop is not None else -math.inf), 4),
        )
        for e in att.top(k)
    ]


def _num(x: object) -> float | None:
    return float(x) if isinstance(x, int | float) else None
