"""Fused element-wise kernels for the local backend on CPU (`torch.compile`, Inductor's C++ backend).

In eager mode every element-wise op of a decoder layer reads and writes its whole activation: the
RMSNorm is six passes over the hidden states (to float32, square, mean, rsqrt, product, weight), the
gated MLP's SiLU and product two more over its 8,960-wide middle (Qwen 1.5B). `fuse_blocks` compiles
the forward of each decoder layer's MLP and of every RMSNorm with `torch.compile(dynamic=True)`: the
matrix products stay oneDNN's, the element-wise ops around them become one loop each. All layers
share one graph per module class (their weights are the graph's inputs), and shapes are symbolic, so
it compiles once per process and class (plus once for one-row decoding steps), ~10-30 s on 2 cores,
then reads Inductor's on-disk cache.

Only for the families the token tree serves (`local._PLAIN_HEADS`), in bf16 on CPU, with the linear
layers unpacked (a prepacked layer's oneDNN tensor does not trace). A machine without a C++ compiler,
or any other compile failure, leaves the model eager: `fuse_blocks` compiles on a small input first
and returns 0 where that fails.

Numbers: the fused RMSNorm and SiLU keep their intermediates in float32 where eager mode rounds some
of them to bf16, so hidden states differ by bf16 rounding steps (measured on Qwen 1.5B: the last
layer's largest difference 2.0 on values up to 87.5), the kind of difference another batch shape
already makes.
"""

from __future__ import annotations

import logging

from autointerp.llm.util import env_flag

ENV = "AUTOINTERP_FUSE"  # "0" keeps the local model eager; "1" fuses it
log = logging.getLogger(__name__)


def enabled_by_env() -> bool:
    """Whether fusing is on by default: on unless AUTOINTERP_FUSE is off (0, false, no, off)."""
    return env_flag(ENV, default=True)


def _targets(model) -> list:  # noqa: ANN001
    """The modules whose forward is compiled: each decoder layer's MLP and every RMSNorm."""
    layers = getattr(getattr(model, "model", None), "layers", None) or []
    mlps = [layer.mlp for layer in layers if hasattr(layer, "mlp")]
    norms = [m for m in model.modules() if type(m).__name__.endswith("RMSNorm")]
    return [*mlps, *norms]


def supported(model) -> bool:  # noqa: ANN001
    """A `_PLAIN_HEADS` family in bf16 on CPU with plain `nn.Linear` layers in its MLPs."""
    import torch
    from torch import nn

    from autointerp.llm.local import _PLAIN_HEADS

    if type(model).__name__ not in _PLAIN_HEADS:
        return False
    p = next(iter(model.parameters()), None)
    if p is None or p.device.type != "cpu" or p.dtype != torch.bfloat16:
        return False
    targets = _targets(model)
    linears_plain = all(
        type(m) is nn.Linear for t in targets for m in t.modules() if "Linear" in type(m).__name__
    )
    return bool(targets) and linears_plain


def fuse_blocks(model) -> int:  # noqa: ANN001
    """Compile the MLP and RMSNorm forwards of `model` (see the module docstring); how many modules
    run compiled (0 where unsupported or where compiling fails: the model stays as it was)."""
    import torch

    if not supported(model):
        return 0
    if done := count(model):  # already compiled
        return done
    targets = _targets(model)
    for m in targets:
        m.forward = _flat(torch.compile(m.forward, dynamic=True))
    try:
        warm_up(targets)
    except Exception as e:  # noqa: BLE001 - no C++ compiler, an Inductor bug: stay eager
        unfuse_blocks(model)
        log.warning("torch.compile failed (%s: %s); the local model runs eager.", type(e).__name__, e)
        return 0
    return len(targets)


def _flat(fn):  # noqa: ANN001, ANN202
    """`fn` (a module's compiled forward, acting on the last dimension) called on the input's rows
    flattened to 2D: one row count instead of (batch, length), so one graph serves batches, single
    prompts and decoding steps alike (Dynamo specializes only a row count of 1)."""

    def forward(x):  # noqa: ANN001, ANN202
        return fn(x.reshape(-1, x.shape[-1])).reshape(*x.shape[:-1], -1)

    return forward


def width(m) -> int:  # noqa: ANN001
    """The last dimension a target module takes: its first linear layer's input, or a norm's weight."""
    from torch import nn

    first = next((c for c in m.modules() if isinstance(c, nn.Linear)), None)
    return first.in_features if first is not None else m.weight.shape[-1]


def warm_up(targets: list) -> None:
    """Compile now, on both row counts Dynamo tells apart (several rows, one row), per module class
    and width (a Qwen3 head norm is narrower than its layer norms)."""
    import torch

    seen: set[tuple[type, int]] = set()
    with torch.inference_mode():
        for m in targets:
            key = (type(m), width(m))
            if key in seen:
                continue
            seen.add(key)
            for rows in (3, 1):
                m(torch.zeros(rows, key[1], dtype=torch.bfloat16))


def _compiled(model) -> list:  # noqa: ANN001
    """The target modules running a compiled forward (an instance attribute over the class's)."""
    return [m for m in _targets(model) if "forward" in vars(m)]


def unfuse_blocks(model) -> int:  # noqa: ANN001
    """Put the eager forwards back; how many modules were compiled."""
    compiled = _compiled(model)
    for m in compiled:
        del m.forward
    return len(compiled)


def count(model) -> int:  # noqa: ANN001
    """How many modules of `model` run compiled now."""
    return len(_compiled(model))
