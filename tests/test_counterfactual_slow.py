"""Attribution, minimal examples, verification and the whole run on the real Gemma 3 270M (slow)."""

import numpy as np
import pytest

from autointerp import record_units
from autointerp.counterfactual import (
    KINDS,
    CounterfactualSettings,
    EditJob,
    UnitProbe,
    attribute,
    attribution_of,
    generate_counterfactuals,
    load_prompt,
    marked_snippet,
    minimal_example,
    quiet_threshold,
    verify,
)
from autointerp.llm import LLMError
from autointerp.store import Store
from autointerp.types import SourceRef

pytestmark = pytest.mark.slow
HOOK = "blocks.6.mlp.hook_post"
UNIT = f"gemma-3-270m/{HOOK}/3"


@pytest.fixture(scope="module")
def db(gemma, tmp_path_factory):
    path = tmp_path_factory.mktemp("cf") / "x.db"
    record_units(
        path, [HOOK], units=[2, 3], subject=gemma, max_tokens=2048, ctx=32, batch_size=16, top_k=3, n_random=8
    )
    return path


@pytest.fixture(scope="module")
def probe(gemma, db):
    store = Store(db)
    return UnitProbe.for_unit(gemma, store, store.get_unit(UNIT))


def test_padded_batches_equal_one_sequence_at_a_time(probe, db):
    top = Store(db).examples(UNIT, "top")[0]
    ids = top.context.token_ids
    seqs = [ids, ids[:5], ids[:17], [ids[0], *ids[9:20]]]
    batched = probe.acts(seqs)
    scale = 0.02 * top.max_act + 1e-3  # bf16 noise is relative to the unit's peak, not the window's max
    for seq, got in zip(seqs, batched, strict=True):
        alone = probe.acts([seq])[0]
        assert got.shape == (len(seq),)
        assert np.allclose(got, alone, atol=scale)
    assert np.allclose(batched[0], top.acts, atol=0.02 * max(top.acts) + 1e-3)  # what the recorder saw


def test_attribution_matches_single_edits(probe, db):
    top = Store(db).examples(UNIT, "top")[0]
    att = attribute(probe, top, " ")
    p = top.max_pos
    assert att.peak_pos == p and att.peak_act == pytest.approx(top.max_act, rel=0.05)
    assert [e.position for e in att.effects] == list(range(1, p + 1))
    assert att.effects[-1].delete_drop is None  # the peak token itself is only replaced
    ids = top.context.token_ids[: p + 1]
    i = max(1, p - 2)
    alone_del = probe.acts([ids[:i] + ids[i + 1 :]])[0][p - 1]
    assert att.effects[i - 1].delete_drop == pytest.approx(att.peak_act - alone_del, abs=0.03 * att.peak_act)
    assert att.top(3)[0] in att.effects and len(att.top(3)) == min(3, p)


def test_minimal_example_is_the_shortest_suffix_that_keeps_the_peak(probe, db):
    for top in Store(db).examples(UNIT, "top"):
        m = minimal_example(probe, top, keep_frac=0.8)
        p = top.max_pos
        ids = top.context.token_ids[: p + 1]
        assert m.token_ids == [ids[0], *ids[m.start :]]  # BOS + a suffix ending at the peak
        assert m.acts[-1] >= 0.8 * m.original_act and m.kept_fraction >= 0.8
        shorter = [[ids[0], *ids[s:]] for s in range(m.start + 1, p + 1)]
        for acts in probe.acts(shorter):
            assert acts[-1] < 0.8 * m.original_act


def _job(probe, unit, ex, direction="off"):
    p = ex.max_pos
    plain, marked = marked_snippet(ex.context.tokens, 1, p, p + 1)
    orig = float(probe.acts([probe.encode(plain)])[0][1:].max())
    return EditJob(
        direction=direction,
        source=ex,
        text=plain,
        original_act=orig,
        messages=load_prompt("counterfactual_off").messages(text=marked),
    )


def test_verification_rejects_edits_that_do_not_move_the_unit(probe, db):
    store = Store(db)
    unit = store.get_unit(UNIT)
    s = CounterfactualSettings(max_edit_frac=1.0)
    top = store.examples(UNIT, "top")[0]
    job = _job(probe, unit, top)
    assert job.original_act > 0
    kept_peak = job.text + " and more"  # the activating prefix is untouched: the unit still fires
    no_peak = "".join(top.context.tokens[1 : max(2, top.max_pos - 6)])
    answers = [f"EDITED: {kept_peak}", "I cannot do that.", LLMError("boom"), f"EDITED: {no_peak}"]
    out = verify(probe, unit, [job] * 4, answers, s)
    (c0, ids0, acts0), (c1, ids1, _), (c2, _, _), (c3, _, _) = out
    assert c0.status == "not_moved" and c0.edited_act >= s.off_frac * job.original_act
    assert acts0 is not None and len(acts0) == len(ids0)
    assert c1.status == "parse_failed" and ids1 is None and c1.raw == "I cannot do that."
    assert c2.status == "llm_error" and "boom" in c2.reason
    # whatever the verdict, it is the subject model's: verified exactly when the activation dropped enough
    assert (c3.status == "verified") == (c3.edited_act < s.off_frac * job.original_act)


def test_generate_with_smollm_stores_only_verified_edits_and_resumes(gemma, db):
    from autointerp.llm import get_llm

    store = Store(db)
    llm = get_llm("local:smollm2-135m", store)
    s = CounterfactualSettings(n_examples=2, n_on=1, max_tokens=48, n_hard=3)
    events = []
    summary = generate_counterfactuals(store, gemma, [UNIT], llm, s, progress=events.append)
    assert [e.stage for e in events][0] == "start" and events[-1].stage == "done"
    assert {"attribution", "minimal", "llm", "hard_negatives"} <= {e.stage for e in events}
    res = summary.units[0]
    assert res.n_attributed == 2 and res.n_minimal == 2
    assert len([c for c in res.candidates if c.status != "skipped"]) >= 1
    for c in res.candidates:  # a failure carries a reason and no edit that could pass for a verified one
        assert (c.status == "verified") == (c.reason == "" and c.status not in ("parse_failed", "llm_error"))

    unit = store.get_unit(UNIT)
    probe = UnitProbe.for_unit(gemma, store, unit)
    cfs = store.examples(UNIT, "counterfactual")
    assert len(cfs) == len(res.verified)
    stored = {SourceRef.of(e): e for e in store.examples(UNIT) if e.kind in ("top", "negative", "random")}
    for ex in cfs:  # recompute on the model: the stored edit really moved the unit
        pv = ex.provenance
        source = stored[ex.source]  # the typed link names a stored example of this unit
        assert pv["direction"] == "on" or source.kind == "top"
        assert pv["generator"] == "local:smollm2-135m" and pv["prompt"].startswith("counterfactual-")
        again = probe.acts([ex.context.token_ids])[0][1:].max()
        if pv["direction"] == "off":
            assert again < s.off_frac * pv["original_act"] * 1.05
        else:
            assert again > s.on_frac * unit.stats.max * 0.95
    mins = store.examples(UNIT, "minimal")
    assert len(mins) == 2 and all(m.provenance["kept_fraction"] >= 0.8 for m in mins)
    tops = {t.rank: t for t in store.examples(UNIT, "top")}
    assert all(m.source == SourceRef.of(tops[m.rank]) for m in mins)
    assert attribution_of(store.examples(UNIT, "top")[0]).peak_pos == store.examples(UNIT, "top")[0].max_pos
    hard = store.examples(UNIT, "hard_negative")
    assert 1 <= len(hard) <= 3 and all(h.max_act <= quiet_threshold(unit, s) for h in hard)
    sims = [h.provenance["similarity"] for h in hard]
    assert sims == sorted(sims, reverse=True)
    run = [r for r in store.runs("counterfactual") if r.settings["unit_id"] == UNIT][0]
    assert run.status == "complete" and len(run.summary["candidates"]) == len(res.candidates)

    n_calls = llm.calls
    again = generate_counterfactuals(store, gemma, [UNIT], llm, s)
    assert again.skipped == [UNIT] and not again.units and llm.calls == n_calls
    assert len(store.examples(UNIT, "counterfactual")) == len(cfs)
    for kind in KINDS[:1]:
        assert store.examples(UNIT, kind)
