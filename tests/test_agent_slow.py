"""Slow: Qwen2.5-Coder-1.5B investigates the synthetic `months` unit over Gemma's tokens (alone and through
`label --methods agent`); the effect tools and search on a Gemma neuron and an embedded-SAE latent."""

import re

import pytest

from autointerp.agent.guided import TIE
from autointerp.agent.loop import AgentSettings, investigate
from autointerp.bench.run import BenchSettings, record_suite
from autointerp.bench.synthetic import BUILTIN
from autointerp.sampling import SampleSettings
from autointerp.score import ScoreSettings
from autointerp.store import Store

pytestmark = pytest.mark.slow


def test_qwen_investigates_the_months_unit_and_every_step_is_stored(gemma, tmp_path):
    db = tmp_path / "agent.db"
    store = Store(db)
    (uid,), _ = record_suite(store, BenchSettings(tokens=12_000, ctx=32), [BUILTIN[0]], subject=gemma)
    small = SampleSettings(n_test_top=4, n_test_random=4)  # a short held-out scoring
    s = AgentSettings(
        agent="local:qwen2.5-coder-1.5b",
        agent_mode="free",
        max_steps=3,
        sample=small,
        score=ScoreSettings(n_per_quantile=0),
    )
    out = investigate(db, uid, s)
    inv = Store(db).get_investigation(out.investigation.id)
    print(inv.status, inv.reason, inv.explanation, [(e.tool, e.error, e.action) for e in out.experiments])
    assert inv.status in ("finished", "exhausted", "failed") and 1 <= inv.steps <= 3
    exps = Store(db).experiments(inv.id)
    assert len(exps) == inv.steps and all(e.action for e in exps)  # every step, with the agent's answer
    assert all(bool(e.tool and not e.error) or e.error for e in exps)  # each ran, or says why not
    assert all(e.action.count('"thought"') <= 1 for e in exps)  # generation stops after one action
    assert any(e.tool and not e.error for e in exps)  # the small model drives the tools
    assert inv.prompt_tokens > 0 and len(inv.messages) == 2 + 2 * inv.steps
    if inv.status == "finished":
        (exp,) = Store(db).explanations(uid, method="agent")
        assert exp.settings["steps"] == inv.steps and Store(db).scores(exp.id)


def test_qwen_guided_investigation_of_the_months_unit(gemma, tmp_path):
    """The guided protocol with the 1.5B model: plain-text hypotheses, scored, one revision, the best kept."""
    db = tmp_path / "guided.db"
    store = Store(db)
    (uid,), _ = record_suite(store, BenchSettings(tokens=12_000, ctx=32), [BUILTIN[0]], subject=gemma)
    small = SampleSettings(n_test_top=4, n_test_random=4)
    s = AgentSettings(
        agent="local:qwen2.5-coder-1.5b",
        hypotheses=2,
        max_scores=2,
        sample=small,
        score=ScoreSettings(n_per_quantile=0),
    )
    out = investigate(db, uid, s)
    inv = Store(db).get_investigation(out.investigation.id)
    exps = Store(db).experiments(inv.id)
    print(inv.status, inv.reason, inv.explanation, [(e.tool, e.error, e.action, e.result) for e in exps])
    assert inv.prompt == "agent-guided@2" and inv.settings["agent_mode"] == "guided"
    assert [e.tool for e in exps][:5] == ["examples", "tokens", "name", "propose", "highlight"]
    assert exps[1].result["firing"] and any(not e.error for e in exps[2:4])  # a usable LLM answer
    assert inv.status == "finished" and len([e for e in exps if e.tool == "score" and not e.error]) == 2
    (exp,) = Store(db).explanations(uid, method="agent")
    scored = {e.arguments["explanation"]: e.result["correlation"] for e in exps if e.tool == "score"}
    # the best, or a specific candidate (examples, context) within the tie of it
    assert exp.text in scored and scored[exp.text] >= max(v for v in scored.values() if v is not None) - TIE
    assert "month" in exp.text.lower()  # the truth: names of months
    assert Store(db).scores(exp.id)


def test_label_methods_agent_with_qwen_stores_one_investigation_and_reruns_without_duplicates(
    gemma, tmp_path
):
    from autointerp.agent.bulk import AgentBudget
    from autointerp.pipeline import label

    db = tmp_path / "bulk.db"
    (uid,), _ = record_suite(Store(db), BenchSettings(tokens=12_000, ctx=32), [BUILTIN[0]], subject=gemma)
    kw = dict(
        explainer="local:qwen2.5-coder-1.5b",
        methods=["agent"],
        agent=AgentBudget(max_steps=2, agent_mode="free"),
        sample=SampleSettings(n_test_top=4, n_test_random=4),
        score=ScoreSettings(n_per_quantile=0),
    )
    first = label(db, [uid], **kw)
    (r,) = first.results
    (inv,) = Store(db).investigations(uid)
    print(inv.status, inv.reason, r.explanation, r.error)
    assert 1 <= inv.steps <= 2 and inv.settings["max_steps"] == 2
    assert (r.explanation is not None and r.scores) or inv.id in r.error
    again = label(db, [uid], **kw)
    assert len(Store(db).investigations(uid)) == 1 and len(Store(db).explanations(uid, method="agent")) <= 1
    assert again.results[0].explanation == r.explanation


def test_effect_tools_on_a_gemma_neuron_and_an_embedded_sae_latent(gemma, tmp_path):
    """output_effect, steer, ablate and search on the real Gemma: a neuron and an SAE latent."""
    from autointerp import record_units
    from autointerp.agent.reader import open_reader
    from autointerp.agent.tools import AblateArgs, OutputEffectArgs, SearchArgs, SteerArgs, Toolbox
    from autointerp.sampling import sample_unit

    db = tmp_path / "fx.db"
    kw = dict(max_tokens=2048, ctx=32, batch_size=16, subject=gemma)
    record_units(db, ["blocks.6.mlp.hook_post"], units=list(range(8)), **kw)
    record_units(db, [], saes={"blocks.6.hook_resid_post": "embedded"}, units=list(range(0, 64, 8)), **kw)
    store = Store(db)
    fired = [u for u in store.units() if u.stats.max > 0]
    neuron = next(u for u in fired if u.ref.hook == "blocks.6.mlp.hook_post")
    latent = next(u for u in fired if u.ref.sae is not None)
    for unit in (neuron, latent):
        reader = open_reader(store, unit, subject_loader=lambda m: gemma)
        sample = sample_unit(store, unit.id, SampleSettings(n_test_top=3, n_test_random=3, n_negatives=3))
        box = Toolbox(sample, store.examples(unit.id), reader, None)
        fx = box.effect("output_effect", OutputEffectArgs(k=5))
        values = [t.value for t in fx.promoted]
        assert values == sorted(values, reverse=True) and values[0] > fx.suppressed[0].value
        steer = box.effect("steer", SteerArgs(prompt="The meeting is on the 3rd of", strength=10))
        ablate = box.effect("ablate", AblateArgs(prompt="The meeting is on the 3rd of"))
        print(unit.id, fx.brief(), steer.brief(), ablate.brief(), sep="\n")
        assert steer.change.kl > 0 and ablate.change.kl >= 0
        assert steer.change.up[0].after > steer.change.up[0].before
        assert box.windows  # the explain split holds windows to search
        word = box.windows[0].context.tokens[3].strip() or "the"
        hit = box.search(SearchArgs(pattern=re.escape(word)))
        assert hit.n_matched >= 1 and word in hit.hits[0].match
