"""SAE latents on the real embedded Gemma 3 270M: recording the embedded SAE, and a tiny train_sae run."""

from __future__ import annotations

import math

import pytest
import torch

from autointerp import record_units
from autointerp.store import Store
from autointerp.subject.sae import load_sae, sae_unit_name

pytestmark = pytest.mark.slow
HOOK = "blocks.6.hook_resid_post"


def test_record_embedded_sae_latents_reproduce(gemma, tmp_path):
    db = tmp_path / "sae.db"
    latents = list(range(0, 4096, 16))  # 256 latents spread over the dictionary
    result = record_units(
        db,
        [],
        units=latents,
        subject=gemma,
        saes={HOOK: "embedded"},
        max_tokens=384,
        ctx=32,
        batch_size=12,
        top_k=3,
        quantile_pool=4,
        n_random=2,
        n_negative=2,
    )
    assert result.n_units == len(latents) and result.n_tokens == 384
    store = Store(db)
    units = store.units(hook=HOOK)
    name = sae_unit_name("embedded")
    assert {u.ref.sae for u in units} == {name}
    fired = [u for u in units if u.stats.max > 0]
    assert len(fired) >= 20  # a TopK code: many latents fire somewhere in 384 tokens
    sae, _ = load_sae("embedded")
    for unit in sorted(fired, key=lambda u: -u.stats.max)[:3]:
        assert unit.id == f"gemma-3-270m/{HOOK}/sae:{name}/{unit.ref.index}"
        top = store.examples(unit.id, "top")[0]
        assert top.acts[0] == 0.0 and top.max_pos > 0  # BOS is left out
        assert top.max_act == pytest.approx(unit.stats.max)
        _, cache = gemma.model.run_with_cache(
            torch.tensor([top.context.token_ids]), names_filter=HOOK, stop_at_layer=7
        )
        again = sae.encode(cache[HOOK][0].float())[1:, unit.ref.index]
        assert torch.allclose(again, torch.tensor(top.acts[1:]), atol=0.02 * unit.stats.max + 1e-3)


def test_train_sae_smoke(gemma, tmp_path):
    from autointerp.subject.sae_train import train_sae

    out = tmp_path / "tiny-sae"
    r = train_sae(
        gemma,
        hook="blocks.3.hook_resid_post",
        out=out,
        width=256,
        k=8,
        tokens=3000,
        buffer_tokens=2048,
        batch_size=256,
        eval_tokens=256,
        ctx=64,
    )
    sae, info = load_sae(out)
    assert (info.architecture, info.hook, info.d_in, info.d_sae, info.k) == (
        "topk",
        "blocks.3.hook_resid_post",
        640,
        256,
        8,
    )
    m = r.eval
    assert all(math.isfinite(v) for v in (m.fve, m.loss_clean, m.loss_spliced, m.loss_zero, m.loss_recovered))
    assert 0 < m.l0 <= 8 and m.fve > 0  # even a few steps explain some variance
    assert m.loss_zero > m.loss_clean
    assert (out / "metrics.json").exists() and info.metrics["eval"]["fve"] == pytest.approx(m.fve)
