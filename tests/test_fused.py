"""Fused element-wise kernels (llm/fused.py, torch.compile) on a tiny random Qwen2: no model is loaded.

The compiling tests are marked slow (Inductor compiles C++ for a few seconds); the fallbacks are not.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from autointerp.llm import fused  # noqa: E402
from autointerp.llm.local import Engine  # noqa: E402
from tests.conftest import tiny_qwen2  # noqa: E402
from tests.test_local_groups import _rows, _Tok  # noqa: E402


def _bf16_engine() -> Engine:
    return Engine(name="tiny-qwen2", model=tiny_qwen2().to(torch.bfloat16), tok=_Tok(), device="cpu")


def _logits(model, ids: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
    with torch.inference_mode():
        return model(input_ids=ids).logits.float()


IDS = torch.randint(0, 100, (3, 17), generator=torch.Generator().manual_seed(0))


def test_only_bf16_cpu_models_of_the_plain_families_are_fused():
    model = tiny_qwen2()  # float32
    assert not fused.supported(model)
    assert fused.fuse_blocks(model) == 0 and fused.count(model) == 0
    assert not fused.supported(torch.nn.Linear(4, 4).to(torch.bfloat16))  # not a decoder family
    assert fused.supported(model.to(torch.bfloat16))


def test_a_failed_compile_leaves_the_model_eager(monkeypatch):
    """No C++ compiler (or an Inductor failure): the warm-up fails, every forward is put back, 0."""
    eng = _bf16_engine()
    before = _logits(eng.model, IDS)

    def broken(fn, **kw):  # noqa: ANN001, ANN003, ANN202
        def call(*a, **k):  # noqa: ANN002, ANN003, ANN202
            raise RuntimeError("no working C++ compiler found")

        return call

    monkeypatch.setattr(torch, "compile", broken)
    assert eng.set_fuse(True) == 0
    assert eng.fused == 0 and fused.count(eng.model) == 0
    assert torch.equal(_logits(eng.model, IDS), before)


@pytest.mark.slow
def test_fused_blocks_give_the_eager_numbers_within_bf16_rounding_and_unfuse_exactly():
    eng = _bf16_engine()
    eager = _logits(eng.model, IDS)
    eng.prefixes[(1, 2, 3)] = object()  # a cached prefix computed the eager way
    n = eng.set_fuse(True)
    assert n == fused.count(eng.model) == 2 + 2 * 2 + 1  # two MLPs, two norms per layer, the final norm
    assert not eng.prefixes  # emptied: the next key/values are computed the fused way
    assert eng.set_fuse(True) == n  # already fused: nothing recompiled
    assert fused.fuse_blocks(eng.model) == n  # nor when asked directly
    out = _logits(eng.model, IDS)
    assert (out - eager).abs().max() <= 0.02 * eager.abs().max()
    one = _logits(eng.model, IDS[:1, :1])  # one row: the second compiled shape, no error
    assert one.shape == (1, 1, 100)
    # the tree engine on fused blocks reads what it reads eager, within bf16 rounding
    rows = _rows()
    got = eng.token_probs_batch(rows, reuse=True)
    assert eng.set_fuse(False) == 0 and fused.count(eng.model) == 0
    assert torch.equal(_logits(eng.model, IDS), eager)  # the eager forwards are back, bit for bit
    want = eng.token_probs_batch(rows, reuse=True)
    for (pa, ma, _), (pb, mb, _) in zip(got, want, strict=True):
        for x, y in zip(pa, pb, strict=True):
            assert x == pytest.approx(y, abs=0.02)
        assert ma == pytest.approx(mb, abs=0.02)


@pytest.mark.slow
def test_prepacking_takes_the_model_back_to_eager_first():
    """A compiled MLP would trace the prepacked layers: prepacking unfuses, and fusing a prepacked
    model does nothing."""
    from autointerp.llm import prepack

    eng = _bf16_engine()
    if not prepack.supported(eng.model):
        pytest.skip("no oneDNN packed linear here")
    assert eng.set_fuse(True) > 0
    assert eng.set_prepack(True) > 0
    assert eng.fused == 0 and fused.count(eng.model) == 0
    assert eng.set_fuse(True) == 0
