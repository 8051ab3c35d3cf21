"""Prepacked bf16 linear layers (llm/prepack.py) on small random modules: no model is loaded."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402

from autointerp.llm import prepack  # noqa: E402

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
def test_prepacked_layers_serve_3d_inputs_keep_ties_and_unpack_exactly():
    m = _model()
    ids = torch.randint(0, 50, (3, 40))
    names = set(m.state_dict())
    with torch.inference_mode():
        ref = m(ids)
        assert prepack.prepack_linears(m) == 3
        assert all(isinstance(x, prepack.prepacked_cls()) for x in (m.up, m.down, m.head))
        assert m.head.weight is m.embed.weight and set(m.state_dict()) == names  # tie and keys kept
        out = m(ids)
        n, packed, fallback = prepack.count(m)
        assert (n, packed, fallback) == (3, 3, 0)  # every layer ran on its packed weight
        # within bf16 rounding: oneDNN's inner product may round a few elements one step apart
        assert out.shape == ref.shape
        assert torch.allclose(out.float(), ref.float(), rtol=2**-7, atol=2**-7)
        assert prepack.prepack_linears(m) == 0  # nothing left to pack
        assert prepack.unpack_linears(m) == 3
        assert all(type(x) is nn.Linear for x in (m.up, m.down, m.head))
        assert torch.equal(m(ids), ref)  # the original layers are back, bit for bit


@needs_onednn
def test_inputs_the_packed_kernel_does_not_serve_go_to_f_linear():
    m = _model()
    lin = m.up
    x = torch.randn(64, 20, dtype=torch.bfloat16).t()  # non-contiguous
    with torch.inference_mode():
        ref = lin(x)
        prepack.prepack_linears(m)
        assert torch.equal(m.up(x), ref)  # F.linear on the same weight: the very same numbers
        assert m.up.calls == [0, 1]
    x32 = torch.randn(4, 64)
    with torch.no_grad():
        assert m.up(x32.to(torch.bfloat16)).dtype == torch.bfloat16
    assert m.up.calls == [1, 1]


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
