"""Prepacked bf16 linear layers (llm/prepack.py) on small random modules: no model is loaded."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402

from autointerp.llm import prepack  # noqa: E402
from tests.conftest import tiny_qwen2  # noqa: E402

needs_onednn = pytest.mark.skipif(
    not prepack.supported(nn.Linear(2, 2).to(torch.bfloat16)), reason="no oneDNN packed linear here"
)


class Tied(nn.Module):
    """An embedding, two projections (one with bias) and a head tied to the embedding."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, 64)
        self.up = nn.Linear(64, 96, bias=True)
        self.down = nn.Linear(96, 64, bias=False)
        self.head = nn.Linear(64, 50, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.embed(ids)
        return self.head(h + self.down(torch.relu(self.up(h))))


def _model() -> Tied:
    torch.manual_seed(0)
    return Tied().to(torch.bfloat16).eval()


@needs_onednn
def test_prepacked_layers_serve_3d_inputs_keep_ties_free_plain_weights_and_unpack_exactly():
    m = _model()
    ids = torch.randint(0, 50, (3, 40))
    names = set(m.state_dict())
    shapes = {k: (v.shape, v.dtype) for k, v in m.state_dict().items()}
    with torch.inference_mode():
        ref = m(ids)
        assert prepack.prepack_linears(m) == 3
        assert all(isinstance(x, prepack.prepacked_cls()) for x in (m.up, m.down, m.head))
        assert m.head.weight is m.embed.weight and set(m.state_dict()) == names  # tie and keys kept
        # the untied plain weights are gone (meta: shape, no storage); the tied one stays in use
        assert m.up.freed and m.down.freed and not m.head.freed
        assert m.up.weight.device.type == "meta" and m.up.original[0].weight is m.up.weight
        assert {k: (v.shape, v.dtype) for k, v in m.state_dict().items()} == shapes
        assert prepack.supported(m)  # the model still reads as CPU bf16
        out = m(ids)
        n, packed, fallback = prepack.count(m)
        assert (n, packed, fallback) == (3, 3, 0)  # every layer ran on its packed weight
        # within bf16 rounding: oneDNN's inner product may round a few elements one step apart
        assert out.shape == ref.shape
        assert torch.allclose(out.float(), ref.float(), rtol=2**-7, atol=2**-7)
        assert prepack.prepack_linears(m) == 0  # nothing left to pack
        assert prepack.unpack_linears(m) == 3
        assert all(type(x) is nn.Linear for x in (m.up, m.down, m.head))
        assert m.up.weight.device.type == "cpu" and m.head.weight is m.embed.weight
        assert torch.equal(m(ids), ref)  # the original layers are back, bit for bit


@needs_onednn
def test_the_packed_copy_gives_the_plain_weight_back_bit_for_bit():
    """Qwen 1.5B's MLP shapes: oneDNN's blocked layout holds exactly the plain numbers."""
    torch.manual_seed(1)
    for shape in [(8960, 1536), (1536, 8960), (256, 1536)]:
        w = torch.randn(shape).to(torch.bfloat16)
        assert torch.equal(torch.ops.mkldnn._reorder_linear_weight(w, prepack.BATCH_HINT).to_dense(), w)


@needs_onednn
def test_inputs_the_packed_kernel_does_not_serve_go_to_f_linear():
    m = _model()
    lin = m.up
    x = torch.randn(64, 20, dtype=torch.bfloat16).t()  # non-contiguous
    with torch.inference_mode():
        ref = lin(x)
        prepack.prepack_linears(m, free=False)
        assert not m.up.freed
        assert torch.equal(m.up(x), ref)  # F.linear on the same weight: the very same numbers
        assert m.up.calls == [0, 1]
    x32 = torch.randn(4, 64)
    with torch.no_grad():
        assert m.up(x32.to(torch.bfloat16)).dtype == torch.bfloat16
    assert m.up.calls == [1, 1]


@needs_onednn
def test_a_freed_layer_serves_non_contiguous_inputs_packed_and_autograd_on_the_rebuilt_weight():
    m = _model()
    x = torch.randn(64, 20, dtype=torch.bfloat16).t()  # non-contiguous
    with torch.no_grad():
        ref = m.up(x)
    prepack.prepack_linears(m)
    assert m.up.freed
    with torch.inference_mode():
        out = m.up(x)  # made contiguous, then packed
    assert m.up.calls == [1, 0]
    assert torch.allclose(out.float(), ref.float(), rtol=2**-7, atol=2**-7)
    xg = x.detach().clone().requires_grad_(True)
    y = m.up(xg)  # autograd: F.linear on the weight rebuilt from the packed copy, the plain numbers
    assert m.up.calls == [1, 1] and torch.equal(y.detach(), ref)
    y.float().sum().backward()
    assert xg.grad is not None and xg.grad.shape == x.shape


def test_nothing_is_packed_outside_cpu_bf16():
    m = Tied().eval()  # float32
    assert not prepack.supported(m)
    assert prepack.prepack_linears(m) == 0 and type(m.up) is nn.Linear


@pytest.mark.parametrize(
    ("value", "on"), [(None, False), ("1", True), ("on", True), ("0", False), ("off", False)]
)
def test_env_switch(monkeypatch, value, on):
    if value is None:
        monkeypatch.delenv(prepack.ENV, raising=False)
    else:
        monkeypatch.setenv(prepack.ENV, value)
    assert prepack.enabled_by_env() is on


@needs_onednn
def test_a_model_loaded_from_safetensors_lets_go_of_its_files_once_prepacked(tmp_path):
    """The plain weights' memory goes back: nothing of the model holds its files' memory map any more,
    and the model reads the same (the tied embedding and norms copied, the layers packed)."""
    import gc

    transformers = pytest.importorskip("transformers")
    tiny_qwen2(vocab=1000, hidden=256).to(torch.bfloat16).save_pretrained(tmp_path)
    m = transformers.Qwen2ForCausalLM.from_pretrained(tmp_path, dtype=torch.bfloat16).eval()

    def mapped() -> int:
        with open("/proc/self/maps") as f:
            return sum(str(tmp_path) in line for line in f)

    ids = torch.randint(0, 1000, (2, 24))
    with torch.inference_mode():
        ref = m(input_ids=ids).logits.float()
        if not mapped():
            pytest.skip("this transformers reads safetensors without a memory map")
        assert prepack.prepack_linears(m) == 2 * 7 + 1  # q, k, v, o, gate, up, down; the tied head
        gc.collect()
        assert mapped() == 0
        assert m.lm_head.weight is m.model.embed_tokens.weight and not m.lm_head.freed
        out = m(input_ids=ids).logits.float()
    assert torch.allclose(out, ref, rtol=0.05, atol=0.05 * ref.abs().max().item())
