"""Slow: the head detectors on a 2-layer attention-only model trained here to form the induction circuit
(eval/heads_validation.py: 2500 CPU steps, 1-1.5 min alone), and heads of the embedded Gemma."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow


def test_detectors_find_the_trained_induction_circuit() -> None:
    from autointerp.subject.head_detect import THRESHOLDS
    from eval.heads_validation import run

    result = run(steps=2500, seed=0)
    init, trained = result["random_init"], result["trained"]
    assert result["loss"][-1] < 0.6 * result["loss"][0]  # it learned to copy
    # random init: no head in any category, none near the thresholds
    assert init["induction_heads"] == [] and init["previous_token_heads"] == []
    assert init["top_induction"]["score"] < 0.15 and init["top_previous_token"]["score"] < 0.15
    # trained: layer 0 is the previous-token head, layer 1 the induction head, each named by its detector
    assert trained["previous_token_heads"] == ["0.0"] and trained["induction_heads"] == ["1.0"]
    assert trained["top_previous_token"]["score"] >= THRESHOLDS["previous-token"][1]
    assert trained["top_induction"]["score"] > 0.6
    # the induction head reads the previous-token head: without layer 0's output it is no induction head
    assert result["trained_without_layer0"]["induction_heads"] == []
    assert result["trained_without_layer0"]["top_induction"]["score"] < 0.2


GEMMA = dict(max_tokens=1024, ctx=32, batch_size=16, top_k=4, quantile_pool=6, n_random=3, n_negative=2)


def test_gemma_heads_record_with_neurons_and_reproduce(gemma, tmp_path) -> None:
    import torch

    from autointerp import record_units
    from autointerp.store import Store

    record_units(
        tmp_path / "g.db", ["blocks.6.mlp.hook_post"], units=[0, 1], heads="3.1,5.0", subject=gemma, **GEMMA
    )
    store = Store(tmp_path / "g.db")
    assert {u.id for u in store.units() if u.ref.is_head} == {
        "gemma-3-270m/blocks.3.attn/head:1",
        "gemma-3-270m/blocks.5.attn/head:0",
    }
    assert gemma.head_counts["blocks.17.attn"] == 4  # 4 query heads (1 key/value head) per layer
    (top, *_) = store.examples("gemma-3-270m/blocks.5.attn/head:0", "top")
    hook = "blocks.5.attn.hook_pattern"
    pattern = gemma.hook_acts(torch.tensor([top.context.token_ids]), [hook])[hook]
    assert pattern.shape == (1, 4, 32, 32)  # per query head
    want = pattern[0, 0, :, 1:].float().amax(-1)  # the largest weight to a key other than BOS
    assert torch.allclose(torch.tensor(top.acts[1:]), want[1:], atol=0.02)
    q = top.max_pos
    assert top.attn.src[q][0] == int(pattern[0, 0, q, 1:].float().argmax()) + 1
    assert all(e.attn is None for e in store.examples("gemma-3-270m/blocks.6.mlp.hook_post/0"))

    # label without --methods: the head gets the head prompts, the neuron the default ones (SmolLM2)
    from autointerp import label

    summary = label(tmp_path / "g.db", ["5.0", "blocks.6.mlp.hook_post/0"], explainer="local:smollm2-135m")
    methods = {r.unit_id: r.method for r in summary.results}
    assert methods == {
        "gemma-3-270m/blocks.5.attn/head:0": "head",
        "gemma-3-270m/blocks.6.mlp.hook_post/0": "highlight",
    }
    (exp,) = store.explanations("gemma-3-270m/blocks.5.attn/head:0")
    (score,) = store.scores(exp.id)
    assert exp.prompt.startswith("explain-head@") and score.prompt.startswith("simulate-head@")
    assert score.simulator == "local:smollm2-135m#head-exact"


def test_gemma_head_detectors_cover_every_head(gemma) -> None:
    from autointerp.subject.head_detect import DetectSettings, detect_heads

    rows = detect_heads(gemma, DetectSettings(n_text=4, n_repeat=4, repeat_len=16, ctx=32))
    assert len(rows) == 18 * 4 and {(m.layer, m.head) for m in rows} == {
        (a, b) for a in range(18) for b in range(4)
    }
    assert max(m.induction for m in rows) > 0.3  # a 270M model trained on text has induction heads
    assert all(0 <= m.bos <= 1 and m.entropy >= 0 for m in rows)
