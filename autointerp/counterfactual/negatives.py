"""Hard negatives: non-firing windows nearest to a unit's activating ones by MiniLM embedding."""

from __future__ import annotations

import numpy as np

from autointerp.counterfactual.probe import UnitProbe, body_start, make_context
from autointerp.counterfactual.types import CounterfactualSettings
from autointerp.store import Store
from autointerp.types import Example, Unit


def quiet_threshold(unit: Unit, s: CounterfactualSettings) -> float:
    """Largest max activation of a window that counts as non-activating."""
    return max(unit.stats.fire_threshold, s.quiet_frac * unit.stats.max)


def quiet_examples(store: Store, unit: Unit, s: CounterfactualSettings) -> list[Example]:
    """The unit's stored `negative` and `random` windows that count as non-activating, one per context."""
    thr = quiet_threshold(unit, s)
    pool: dict[str, Example] = {}
    for kind in ("negative", "random"):
        for ex in store.examples(unit.id, kind):
            if ex.max_act <= thr:
                pool.setdefault(ex.context.id, ex)
    return list(pool.values())


def hard_negatives(
    probe: UnitProbe,
    unit: Unit,
    store: Store,
    tops: list[Example],
    s: CounterfactualSettings,
) -> list[tuple[Example, float, int]]:
    """Non-firing windows (the unit's random/negative examples, plus `corpus_windows` streamed ones, given
    rank -1) nearest to the activating ones: (window, cosine, nearest top rank), best first."""
    from autointerp.embed import embed

    subject = probe.subject
    thr = quiet_threshold(unit, s)
    pool = {ex.context.id: ex for ex in quiet_examples(store, unit, s)}
    if s.corpus_windows and tops:
        from autointerp import corpus

        ctx = len(tops[0].context.token_ids)
        wins = []
        for w in corpus.windows(s.corpus, subject.tokenizer, ctx, subject.bos_id):
            wins.append(w)
            if len(wins) >= s.corpus_windows:
                break
        for ids, acts in zip(wins, probe.acts(wins), strict=True):
            if float(acts.max()) <= thr:
                c = make_context(subject, ids)
                pool.setdefault(
                    c.id, Example(unit_id=unit.id, kind="random", rank=-1, context=c, acts=acts.tolist())
                )
    top_ids = {t.context.id for t in tops}
    cands = [ex for cid, ex in pool.items() if cid not in top_ids]
    if not cands or not tops:
        return []

    def text(ex: Example) -> str:
        return "".join(ex.context.tokens[body_start(ex.context.token_ids, subject.bos_id) :])

    emb = embed([text(t) for t in tops] + [text(c) for c in cands])
    sims = emb[len(tops) :] @ emb[: len(tops)].T  # (C, T)
    best = sims.max(axis=1)
    order = np.argsort(-best, kind="stable")[: s.n_hard]
    return [(cands[i], float(best[i]), tops[int(sims[i].argmax())].rank) for i in order]
