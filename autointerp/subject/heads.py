"""Attention heads as units: head specs (`all`, `3.1,5.0`), and what the recorder reads off a head.

A head's unit is `MODEL/blocks.L.attn/head:H`. Its activation at a destination (query) token is, by
default (`max-attn`), the largest attention weight from that query to any key other than BOS and other
special tokens (the HeadVis / Neuronpedia convention); `out-norm` is the norm of the head's output at
that token (`hook_z[..., H, :] @ W_O[H]`). Each recorded example also keeps, per query position, the
head's top source positions and their weights (`TOP_SOURCES`, at least `MIN_WEIGHT`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from autointerp.errors import UserError
from autointerp.units import head_hook, head_names, parse_heads

__all__ = ["HeadReader", "check_heads", "head_hook", "head_names", "head_readers", "parse_heads"]

if TYPE_CHECKING:
    import torch

HeadActivation = Literal["max-attn", "out-norm"]
HEAD_ACTIVATIONS: tuple[str, ...] = ("max-attn", "out-norm")
TOP_SOURCES = 8  # source positions kept per query position
MIN_WEIGHT = 0.005  # a source below this attention weight is not kept


def check_heads(counts: dict[str, int], heads: list[tuple[int, int]], model: str) -> list[tuple[int, int]]:
    """The requested heads (every head when `heads` is empty), each checked against `counts` (unit hook ->
    number of query heads); a UserError names the first head out of range."""
    if not counts:
        raise UserError(
            f"{model} exposes no attention pattern hook (blocks.L.attn.hook_pattern) in TransformerLens; "
            "its heads cannot be recorded."
        )
    n_layers = len(counts)
    if not heads:
        return [(layer, h) for layer in range(n_layers) for h in range(counts[head_hook(layer)])]
    for layer, h in heads:
        if head_hook(layer) not in counts:
            raise UserError(f"Head {layer}.{h}: {model} has layers 0..{n_layers - 1}; fix --heads.")
        n = counts[head_hook(layer)]
        if h >= n:
            raise UserError(f"Head {layer}.{h}: layer {layer} of {model} has heads 0..{n - 1}; fix --heads.")
    return heads


@dataclass
class HeadReader:
    """Reads the activations and top sources of some heads of one layer from that layer's hooks."""

    layer: int
    heads: list[int]
    activation: HeadActivation = "max-attn"
    w_o: torch.Tensor | None = None  # (H_sel, d_head, d_model) for out-norm

    @property
    def pattern_hook(self) -> str:
        return f"blocks.{self.layer}.attn.hook_pattern"

    @property
    def z_hook(self) -> str:
        return f"blocks.{self.layer}.attn.hook_z"

    @property
    def hooks(self) -> list[str]:
        return [self.pattern_hook] + ([self.z_hook] if self.activation == "out-norm" else [])

    def read(
        self, acts: dict[str, torch.Tensor], key_mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Hook activations -> the heads' activations (B, T, U) float32, and per query position their top
        source positions (B, T, U, K) int16 (-1: none) and weights (B, T, U, K) float32.

        `key_mask` (B, T) bool: keys left out (BOS, special tokens) of the max and the sources.
        """
        import torch

        pattern = acts[self.pattern_hook][:, self.heads].float()  # (B, U, Tq, Tk)
        if key_mask is not None:
            pattern = pattern.masked_fill(key_mask[:, None, None, :].to(pattern.device), 0.0)
        k = min(TOP_SOURCES, pattern.shape[-1])
        w, src = pattern.topk(k, dim=-1)  # (B, U, T, K)
        src = torch.where(w >= MIN_WEIGHT, src, -1).to(torch.int16)
        w = torch.where(w >= MIN_WEIGHT, w, 0.0)
        if self.activation == "max-attn":
            value = pattern.amax(dim=-1)  # (B, U, T)
        else:
            z = acts[self.z_hook][:, :, self.heads].float()  # (B, T, U, d_head)
            value = torch.einsum("btud,udm->btum", z, self.w_o.to(z.device)).norm(dim=-1).transpose(1, 2)
        return (
            value.transpose(1, 2).contiguous().cpu(),
            src.permute(0, 2, 1, 3).contiguous().cpu(),
            w.permute(0, 2, 1, 3).contiguous().cpu(),
        )


def head_readers(model, heads: list[tuple[int, int]], activation: HeadActivation) -> list[HeadReader]:  # noqa: ANN001 - HookedTransformer
    """One reader per layer among `heads` (checked), with W_O of its heads for `out-norm`."""
    by_layer: dict[int, list[int]] = {}
    for layer, h in heads:
        by_layer.setdefault(layer, []).append(h)
    out = []
    for layer, hs in sorted(by_layer.items()):
        w_o = None
        if activation == "out-norm":
            w_o = model.blocks[layer].attn.W_O[hs].detach().float()
        out.append(HeadReader(layer=layer, heads=hs, activation=activation, w_o=w_o))
    return out
