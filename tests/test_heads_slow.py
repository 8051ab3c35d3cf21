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
