"""Prepacked bf16 linear layers for the local backend on CPU (oneDNN).

`nn.Linear` in bf16 on CPU hands oneDNN a plain-layout weight, which is reordered into the kernel's
blocked layout on every call. `prepack_linears` reorders each weight once
(`torch.ops.mkldnn._reorder_linear_weight`) and swaps the layer for a `PrepackedLinear` that calls
`torch.ops.mkldnn._linear_pointwise`; `unpack_linears` swaps the original layers back. On this
project's CPU (AMX) the 1.5B Qwen's forward passes get ~15-25% faster.

Numbers: the packed kernel is oneDNN's inner product, `nn.Linear` its matmul; their outputs agree
bitwise for most row counts and otherwise differ by one bf16 rounding step on a few elements (measured:
under 0.1% of them), the same kind of difference a different batch shape already makes.

The original `weight` and `bias` parameters stay on the new module (same objects), so tied weights
(an LM head tied to the embedding) stay tied and `state_dict` keys do not change. Anything the packed
kernel does not serve (not bf16, not on CPU, a non-contiguous input, autograd) goes to `F.linear`.
"""

from __future__ import annotations

import os

ENV = "AUTOINTERP_PREPACK"  # "0" turns prepacking off for `LocalLLM(prepack=None)`
BATCH_HINT = 4096  # rows per call the packed layout is chosen for (the engine's BATCH_TOKENS)


def enabled_by_env() -> bool:
    """Whether prepacking is on by default: only when AUTOINTERP_PREPACK is set (1, true, yes, on). Off
    by default: it keeps a second, packed copy of every weight (~3 GB more for Qwen 1.5B) for ~1.13x."""
    return os.environ.get(ENV, "0").strip().lower() in {"1", "true", "yes", "on"}


def supported(model) -> bool:  # noqa: ANN001
    """The model is on CPU in bf16 and this torch has oneDNN's packed linear ops."""
    import torch

    if not torch.backends.mkldnn.is_available():
        return False
    if not all(hasattr(torch.ops.mkldnn, op) for op in ("_reorder_linear_weight", "_linear_pointwise")):
        return False
    p = next(model.parameters(), None)
    return p is not None and p.device.type == "cpu" and p.dtype == torch.bfloat16


def _linear_cls():  # noqa: ANN202 - defined lazily: torch is imported only when a model loads
    import torch
    import torch.nn.functional as F  # noqa: N812
    from torch import nn

    class PrepackedLinear(nn.Module):
        """An `nn.Linear` whose bf16 weight was reordered once for oneDNN."""

        def __init__(self, linear: nn.Linear, packed: torch.Tensor):
            super().__init__()
            self.in_features, self.out_features = linear.in_features, linear.out_features
            self.weight = linear.weight  # the same Parameter: ties and state_dict keys unchanged
            self.bias = linear.bias
            self.packed = packed  # not a buffer: never saved, never moved
            self.original = (linear,)  # a tuple: not registered as a submodule
            self.calls = [0, 0]  # [packed, fallback]

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if (
                x.device.type != "cpu"
                or x.dtype != torch.bfloat16
                or not x.is_contiguous()
                or (torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad))
            ):
                self.calls[1] += 1
                return F.linear(x, self.weight, self.bias)
            self.calls[0] += 1
            return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")

        def extra_repr(self) -> str:
            return f"in_features={self.in_features}, out_features={self.out_features}, prepacked"

    return PrepackedLinear


_CLS: list = []


def prepacked_cls():  # noqa: ANN201
    """The `PrepackedLinear` class (built on first use)."""
    if not _CLS:
        _CLS.append(_linear_cls())
    return _CLS[0]


def _replace(model, swap) -> int:  # noqa: ANN001
    """Apply `swap(module) -> new module or None` to every submodule; how many were replaced."""
    n = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            new = swap(child)
            if new is not None:
                setattr(parent, name, new)
                n += 1
    return n


def prepack_linears(model, batch_hint: int = BATCH_HINT) -> int:  # noqa: ANN001
    """Swap every bf16 `nn.Linear` of `model` for a `PrepackedLinear`; how many were swapped (0 where
    unsupported). A weight shared by several layers is packed once."""
    import torch
    from torch import nn

    if not supported(model):
        return 0
    cls = prepacked_cls()
    packed: dict[int, torch.Tensor] = {}

    def swap(m):  # noqa: ANN001, ANN202
        if type(m) is not nn.Linear or m.weight.dtype != torch.bfloat16 or m.weight.device.type != "cpu":
            return None
        key = id(m.weight)
        if key not in packed:
            with torch.no_grad():
                packed[key] = torch.ops.mkldnn._reorder_linear_weight(m.weight.detach(), batch_hint)
        return cls(m, packed[key])

    try:
        return _replace(model, swap)
    except RuntimeError:  # a oneDNN build that refuses the reorder: leave the model as it was
        unpack_linears(model)
        return 0


def unpack_linears(model) -> int:  # noqa: ANN001
    """Put back the original `nn.Linear` layers; how many."""
    cls = prepacked_cls()
    return _replace(model, lambda m: m.original[0] if isinstance(m, cls) else None)


def count(model) -> tuple[int, int, int]:  # noqa: ANN001
    """(prepacked layers, packed calls, fallback calls) of `model`."""
    cls = prepacked_cls()
    mods = [m for m in model.modules() if isinstance(m, cls)]
    return len(mods), sum(m.calls[0] for m in mods), sum(m.calls[1] for m in mods)
