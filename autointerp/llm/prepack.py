"""Prepacked bf16 linear layers for the local backend on CPU (oneDNN).

`nn.Linear` in bf16 on CPU hands oneDNN a plain-layout weight, which is reordered into the kernel's
blocked layout on every call. `prepack_linears` reorders each weight once
(`torch.ops.mkldnn._reorder_linear_weight`) and swaps the layer for a `PrepackedLinear` that calls
`torch.ops.mkldnn._linear_pointwise`; `unpack_linears` swaps the original layers back. On this
project's CPU (AMX) the 1.5B Qwen's forward passes get ~15-25% faster.

Numbers: the packed kernel is oneDNN's inner product, `nn.Linear` its matmul; their outputs agree
bitwise for most row counts and otherwise differ by one bf16 rounding step on a few elements (measured:
under 0.1% of them), the same kind of difference a different batch shape already makes.

Memory: the packed weight is a second copy, so a layer's plain weight is freed where nothing else in
the model uses it (`free=True`, the default): its parameter becomes a `meta` tensor of the same shape
and dtype (no storage), and the parameters left are copied off the safetensors memory map
(`own_memory`), which is then released. Measured on Qwen 1.5B (docs/llm-backends.md): 4.1 GB resident
against 3.6 GB unpacked (3.2 GB of it the file map, shared with other processes reading the same
files) and 6.7 GB when the plain weights were kept. A tied weight (an LM head tied to the
embedding) stays, the same object on both modules, so ties hold; `state_dict` keys do not change.
The packed tensor is oneDNN's blocked layout of the very same numbers: `to_dense()` gives the plain
weight back bit for bit, which is how `unpack_linears` restores a freed layer. Anything the packed
kernel does not serve (not bf16, not on CPU, autograd) goes to `F.linear` on the plain weight (rebuilt
from the packed one where freed); a non-contiguous input is made contiguous where the weight was freed.
"""

from __future__ import annotations

from autointerp.llm.util import env_flag

ENV = "AUTOINTERP_PREPACK"  # "1" turns prepacking on for `LocalLLM(prepack=None)`
BATCH_HINT = 4096  # rows per call the packed layout is chosen for (the engine's BATCH_TOKENS)


def enabled_by_env() -> bool:
    """Whether prepacking is on by default: only when AUTOINTERP_PREPACK is set (1, true, yes, on). Off
    by default: with the plain weights freed Qwen 1.5B takes 4.1 GB resident instead of 3.6, all of it
    private (unpacked, 3.2 GB is the weight files' map, shared between processes), for ~1.13x."""
    return env_flag(ENV, default=False)


def supported(model) -> bool:  # noqa: ANN001
    """The model is on CPU in bf16 and this torch has oneDNN's packed linear ops."""
    import torch

    if not torch.backends.mkldnn.is_available():
        return False
    if not all(hasattr(torch.ops.mkldnn, op) for op in ("_reorder_linear_weight", "_linear_pointwise")):
        return False
    p = next((p for p in model.parameters() if p.device.type != "meta"), None)
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

        @property
        def freed(self) -> bool:
            """The plain weight was freed: only the packed copy holds the numbers."""
            return self.weight.device.type == "meta"

        def free(self) -> None:
            """Drop the plain weight (this module's and the original layer's): a `meta` parameter of
            the same shape, dtype and requires_grad takes its place."""
            meta = nn.Parameter(
                torch.empty_like(self.weight, device="meta"), requires_grad=self.weight.requires_grad
            )
            self.weight = self.original[0].weight = meta

        def plain_weight(self) -> torch.Tensor:
            """The plain weight: the parameter, or where freed the packed copy put back (bit for bit)."""
            return self.packed.to_dense() if self.freed else self.weight

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if self.freed and x.device.type == "cpu" and x.dtype == torch.bfloat16:
                x = x.contiguous()
            if (
                x.device.type != "cpu"
                or x.dtype != torch.bfloat16
                or not x.is_contiguous()
                or (torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad))
            ):
                self.calls[1] += 1
                return F.linear(x, self.plain_weight(), self.bias)
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


def prepack_linears(model, batch_hint: int = BATCH_HINT, free: bool = True) -> int:  # noqa: ANN001
    """Swap every bf16 `nn.Linear` of `model` for a `PrepackedLinear`; how many were swapped (0 where
    unsupported). A weight shared by several layers is packed once. `free`: drop the plain weight of
    every layer whose weight nothing else in `model` uses (tied weights stay)."""
    import torch
    from torch import nn

    if not supported(model):
        return 0
    cls = prepacked_cls()
    packed: dict[int, torch.Tensor] = {}
    uses: dict[int, int] = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        uses[id(p)] = uses.get(id(p), 0) + 1

    def swap(m):  # noqa: ANN001, ANN202
        if type(m) is not nn.Linear or m.weight.dtype != torch.bfloat16 or m.weight.device.type != "cpu":
            return None
        key = id(m.weight)
        if key not in packed:
            with torch.no_grad():
                packed[key] = torch.ops.mkldnn._reorder_linear_weight(m.weight.detach(), batch_hint)
        new = cls(m, packed[key])
        if free and uses.get(key) == 1:
            new.free()
        return new

    try:
        n = _replace(model, swap)
    except RuntimeError:  # a oneDNN build that refuses the reorder: leave the model as it was
        unpack_linears(model)
        return 0
    if free and n:
        own_memory(model)
    return n


def own_memory(model) -> None:  # noqa: ANN001
    """Copy the parameters and buffers left (embeddings, norms) into memory of their own. A model
    loaded from safetensors reads its weights from a memory map of the files, which stays mapped, and
    the freed weights' pages resident, while any tensor of it lives: copied, the map is released."""
    import torch

    with torch.no_grad():
        for t in [*model.parameters(), *model.buffers()]:
            if t.device.type == "cpu":
                t.data = t.data.clone()


def unpack_linears(model) -> int:  # noqa: ANN001
    """Put back the original `nn.Linear` layers, a freed weight rebuilt from its packed copy (bit for
    bit); how many."""
    from torch import nn

    cls = prepacked_cls()

    def swap(m):  # noqa: ANN001, ANN202
        if not isinstance(m, cls):
            return None
        lin = m.original[0]
        if m.freed:
            lin.weight = nn.Parameter(m.packed.to_dense(), requires_grad=m.weight.requires_grad)
        return lin

    return _replace(model, swap)


def count(model) -> tuple[int, int, int]:  # noqa: ANN001
    """(prepacked layers, packed calls, fallback calls) of `model`."""
    cls = prepacked_cls()
    mods = [m for m in model.modules() if isinstance(m, cls)]
    return len(mods), sum(m.calls[0] for m in mods), sum(m.calls[1] for m in mods)
