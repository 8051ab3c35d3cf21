"""What a unit does downstream, on the subject model: its output direction through the unembedding, and
how the next-token distribution changes when the unit is clamped or zeroed. Shared by the viewer's
`serve --live` and the investigation agent's `output_effect`, `steer` and `ablate` tools."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from pydantic import BaseModel

from autointerp.errors import UserError
from autointerp.store import Store
from autointerp.types import Unit

if TYPE_CHECKING:
    import torch

    from autointerp.counterfactual.probe import UnitProbe
    from autointerp.subject.model import SubjectModel

_MLP_POST = re.compile(r"^blocks\.(\d+)\.mlp\.hook_post$")
_RESID = re.compile(r"^blocks\.\d+\.(hook_resid_(pre|mid|post)|hook_mlp_out|hook_attn_out)$")
MIN_SHIFT = 1e-6  # a change of probability below this is no change


class TokenValue(BaseModel):
    token: str
    value: float


class TokenShift(BaseModel):
    token: str
    before: float  # probability without the intervention
    after: float  # probability with it


class NextTokenChange(BaseModel):
    """The next-token distribution after a prompt, plain and with the unit set to `value` everywhere."""

    value: float  # what the unit was set to at every position (0: ablated)
    top_before: list[TokenValue]  # most likely next tokens, plain (probabilities)
    top_after: list[TokenValue]  # the same with the intervention
    up: list[TokenShift]  # tokens whose probability rose most (none when nothing rose)
    down: list[TokenShift]  # tokens whose probability fell most
    kl: float  # KL(plain || intervened), nats


def clamp_hook(store: Store, unit: Unit, probe: UnitProbe, value: float):  # noqa: ANN201 - a TL hook
    """A hook that sets the unit to `value` at every position: a neuron directly; an SAE latent by adding
    its decoder row times (value - its current value) to the hook's activation."""
    import torch

    if unit.ref.sae is None:
        idx = unit.ref.index

        def set_neuron(act: torch.Tensor, hook) -> torch.Tensor:  # noqa: ANN001
            act[..., idx] = value
            return act

        return set_neuron
    from autointerp.subject.sae_decoder import decoder_row, sae_weights

    path, why = sae_weights(store, unit)
    if path is None:
        raise UserError(f"{unit.id} cannot be steered: {why}.")
    row = torch.from_numpy(decoder_row(path, unit.ref.index).copy())

    def set_latent(act: torch.Tensor, hook) -> torch.Tensor:  # noqa: ANN001
        current = probe.source.unit_acts(act)[..., probe.column]
        delta = (value - current).unsqueeze(-1) * row.to(act.device, torch.float32)
        return (act.float() + delta).to(act.dtype)

    return set_latent


def output_direction(store: Store, unit: Unit, model) -> torch.Tensor | None:  # noqa: ANN001 - HookedTransformer
    """The unit's direction in the residual stream (SAE decoder row, MLP W_out row, or a basis vector
    of a residual hook), or None for units that write no single direction."""
    import torch

    if unit.ref.sae is not None:
        from autointerp.subject.sae_decoder import decoder_row, sae_weights

        path, _ = sae_weights(store, unit)
        return torch.from_numpy(decoder_row(path, unit.ref.index).copy()) if path else None
    if m := _MLP_POST.match(unit.ref.hook):
        return model.blocks[int(m[1])].mlp.W_out[unit.ref.index].detach()
    if _RESID.match(unit.ref.hook):
        d = torch.zeros(model.cfg.d_model)
        d[unit.ref.index] = 1.0
        return d
    return None


def direction_tokens(
    subject: SubjectModel, direction: torch.Tensor, k: int = 10
) -> tuple[list[TokenValue], list[TokenValue]]:
    """The k tokens a direction promotes most and the k it suppresses most (direction @ W_U, the direct
    path to the logits)."""
    import torch

    W_U = subject.model.W_U
    with torch.no_grad():
        logits = (direction.to(W_U.device, W_U.dtype) @ W_U).float()
        top, bottom = logits.topk(k), (-logits).topk(k)
    return (
        _values(subject, top.indices.tolist(), top.values.tolist()),
        _values(subject, bottom.indices.tolist(), [-v for v in bottom.values.tolist()]),
    )


def next_token_change(
    subject: SubjectModel,
    hook: str,
    hook_fn,
    ids: list[int],
    value: float,
    k: int = 8,  # noqa: ANN001
) -> NextTokenChange:
    """The next-token distribution after `ids`, plain and with `hook_fn` at `hook`: top tokens of each,
    the tokens that rose and fell most in probability, and the KL divergence."""
    import torch

    model = subject.model
    toks = torch.tensor([ids], device=model.cfg.device)
    with torch.no_grad():
        plain = model(toks)[0, -1].float().log_softmax(-1)
        with model.hooks(fwd_hooks=[(hook, hook_fn)]):
            changed = model(toks)[0, -1].float().log_softmax(-1)
    p, q = plain.exp(), changed.exp()
    kl = float((p * (plain - changed)).sum().clamp(min=0.0))
    diff = q - p

    def top_of(probs: torch.Tensor) -> list[TokenValue]:
        t = probs.topk(k)
        return _values(subject, t.indices.tolist(), t.values.tolist())

    def shifts(top: torch.return_types.topk) -> list[TokenShift]:
        idx = [i for i, v in zip(top.indices.tolist(), top.values.tolist(), strict=True) if v > MIN_SHIFT]
        return [
            TokenShift(token=tok, before=round(float(p[i]), 4), after=round(float(q[i]), 4))
            for tok, i in zip(subject.token_strs(idx), idx, strict=True)
        ]

    return NextTokenChange(
        value=round(value, 4),
        top_before=top_of(p),
        top_after=top_of(q),
        up=shifts(diff.topk(k)),
        down=shifts((-diff).topk(k)),
        kl=round(kl, 5),
    )


def _values(subject: SubjectModel, ids: list[int], values: list[float]) -> list[TokenValue]:
    return [
        TokenValue(token=t, value=round(v, 4)) for t, v in zip(subject.token_strs(ids), values, strict=True)
    ]
