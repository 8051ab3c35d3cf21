"""`label --dry-run` with the embedded SmolLM2's own tokenizer: its counts equal what the local backend
then spends (real model, marked slow; ~20 s)."""

from __future__ import annotations

import pytest

from autointerp import label
from autointerp.dryrun import estimate
from autointerp.pipeline import LabelSettings

pytestmark = pytest.mark.slow
LLM = "local:smollm2-135m"
SCORERS = ["correlation", "detection"]


def test_a_dry_run_counts_the_tokens_the_local_backend_spends(month_store):
    unit = "m/blocks.0.mlp.hook_post/0"
    summary = label(month_store.path, [unit], explainer=LLM, scorers=SCORERS)
    (result,) = summary.results
    assert result.explanation and not result.error
    month_store.db["scores"].delete_where()  # as if not yet labelled; the dry run reads no LLM cache
    month_store.db["explanations"].delete_where()
    s = LabelSettings(explainer=LLM, simulator=LLM, scorers=SCORERS)
    est = estimate(month_store.path, [unit], s, no_cache=True, explanation=result.explanation)
    for role in ("explainer", "simulator"):
        got, spent = est.roles[role], summary.usage[role]
        assert got.exact and got.counted_by == "tokenizer of smollm2-135m"
        assert (got.calls, got.prompt_tokens) == (spent.calls, spent.prompt_tokens), role
    assert est.roles["explainer"].completion_bound >= summary.usage["explainer"].completion_tokens
