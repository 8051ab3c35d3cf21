"""Slow: the head detectors on a 2-layer attention-only model trained here to form the induction circuit
(eval/heads_validation.py: ~1000 CPU steps, about 1-1.5 min alone)."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow


def test_detectors_find_the_trained_induction_circuit() -> None:
    from eval.heads_validation import run

    result = run(steps=1000, seed=0)
    init, trained = result["random_init"], result["trained"]
    assert result["loss"][-1] < 0.6 * result["loss"][0]  # it learned to copy
    # random init: no head in any category, no head near the thresholds
    assert init["induction_heads"] == [] and init["previous_token_heads"] == []
    assert init["top_induction"]["score"] < 0.15 and init["top_previous_token"]["score"] < 0.15
    # trained: the induction heads sit in layer 1 and are named as such
    assert trained["induction_heads"] and all(h.startswith("1.") for h in trained["induction_heads"])
    assert trained["top_induction"]["head"].startswith("1.") and trained["top_induction"]["score"] > 0.5
    # the previous-token detector ranks a layer-0 head first, well above every layer-1 head and the init
    prev = {h["head"]: h["previous_token"] for h in trained["heads"]}
    top = trained["top_previous_token"]
    assert top["head"].startswith("0.") and top["score"] > 2 * init["top_previous_token"]["score"]
    assert top["score"] > 3 * max(v for h, v in prev.items() if h.startswith("1."))


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


def test_gemma_head_detectors_cover_every_head(gemma) -> None:
    from autointerp.subject.head_detect import DetectSettings, detect_heads

    rows = detect_heads(gemma, DetectSettings(n_text=4, n_repeat=4, repeat_len=16, ctx=32))
    assert len(rows) == 18 * 4 and {(m.layer, m.head) for m in rows} == {
        (a, b) for a in range(18) for b in range(4)
    }
    assert max(m.induction for m in rows) > 0.3  # a 270M model trained on text has induction heads
    assert all(0 <= m.bos <= 1 and m.entropy >= 0 for m in rows)
