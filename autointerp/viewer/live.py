"""`serve --live`: the subject model, loaded on first use, reads a unit on any text, steers a completion
with the unit clamped, and projects the unit's output direction through the unembedding."""

from __future__ import annotations

import re
import threading
from typing import TYPE_CHECKING

from pydantic import BaseModel

from autointerp.errors import UserError
from autointerp.store import Store
from autointerp.types import Unit
from autointerp.viewer.pages import OutputToken, TokenView, tokens_view

if TYPE_CHECKING:
    import torch

    from autointerp.agent.reader import ActReader
    from autointerp.subject.model import SubjectModel

MAX_TEXT_CHARS = 4000
_MLP_POST = re.compile(r"^blocks\.(\d+)\.mlp\.hook_post$")
_RESID = re.compile(r"^blocks\.\d+\.(hook_resid_(pre|mid|post)|hook_mlp_out|hook_attn_out)$")


class LiveActs(BaseModel):
    unit_id: str
    tokens: list[TokenView]
    max_act: float


class SteerResult(BaseModel):
    unit_id: str
    prompt: str
    clamp: float
    plain: str  # the greedy completion as the model writes it
    steered: str  # the same with the unit clamped to `clamp` at every position


class LiveModel:
    """One subject model shared by all requests (loaded on the first, used by one request at a time)."""

    def __init__(self, name: str | None = None, path: str | None = None, subject: SubjectModel | None = None):
        """`name` (default: the model that recorded the unit) and an optional local weights folder; or a
        `subject` already loaded."""
        self.name, self.path = name, path
        self._subject = subject
        self._lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        return self._subject is not None

    def _load(self, store: Store, unit: Unit) -> SubjectModel:
        if self._subject is None:
            from autointerp.errors import require_local

            require_local("serve --live")
            from autointerp.subject.model import load_subject

            run = store.get_run(unit.run_id)
            name = self.name or (run.settings.get("model") if run else None) or unit.ref.model
            self._subject = load_subject(name, self.path)
        return self._subject

    def _probe(self, store: Store, unit: Unit):  # noqa: ANN202 - counterfactual.probe.UnitProbe
        from autointerp.counterfactual.probe import UnitProbe

        return UnitProbe.for_unit(self._load(store, unit), store, unit)

    def reader(self, store: Store, unit: Unit) -> ActReader:
        """The chat agent's reader of the unit on new text: this model (loaded now if need be), shared
        with the other live requests one at a time; a synthetic unit's rule needs only the tokenizer."""
        from autointerp.agent.reader import ProbeReader, open_reader, synthetic_unit

        if synthetic_unit(unit) is not None:
            return open_reader(store, unit)
        with self._lock:
            return _Locked(ProbeReader(self._probe(store, unit)), self._lock)

    def activations(self, store: Store, unit: Unit, text: str) -> LiveActs:
        """The unit's activation at every token of `text` (read after BOS where the model uses one)."""
        text = _check_text(text)
        from autointerp.counterfactual.probe import body_start

        with self._lock:
            probe = self._probe(store, unit)
            ids = probe.encode(text)
            first = body_start(ids, probe.subject.bos_id)  # BOS is read but not shown, as in examples
            acts = probe.acts([ids])[0].tolist()[first:]
            tokens = probe.subject.token_strs(ids)[first:]
        top = max(acts)
        scale = unit.stats.max if unit.stats.max > 0 else max(top, 1e-9)
        peak = max(range(len(acts)), key=acts.__getitem__) if top > 0 else None
        return LiveActs(unit_id=unit.id, tokens=tokens_view(tokens, acts, scale, peak), max_act=round(top, 4))

    def steer(
        self, store: Store, unit: Unit, text: str, clamp: float, max_new_tokens: int = 24
    ) -> SteerResult:
        """Greedy completions of `text` without and with the unit clamped to `clamp` at every position."""
        import torch

        text = _check_text(text)
        with self._lock:
            probe = self._probe(store, unit)
            subject = probe.subject
            model = subject.model
            toks = torch.tensor([probe.encode(text)], device=model.cfg.device)
            hook_fn = self._clamp_hook(store, unit, probe, clamp)
            outs = []
            for hooks in ([], [(probe.source.hook, hook_fn)]):
                with torch.no_grad(), model.hooks(fwd_hooks=hooks):
                    out = model.generate(
                        toks, max_new_tokens=max_new_tokens, do_sample=False, verbose=False,
                        stop_at_eos=True, use_past_kv_cache=True,
                    )  # fmt: skip
                new = out[0, toks.shape[1] :].tolist()
                outs.append(subject.tokenizer.decode(new, skip_special_tokens=True))
        return SteerResult(unit_id=unit.id, prompt=text, clamp=clamp, plain=outs[0], steered=outs[1])

    @staticmethod
    def _clamp_hook(store: Store, unit: Unit, probe, clamp: float):  # noqa: ANN001, ANN205
        """A hook that sets the unit to `clamp`: a neuron directly; an SAE latent by adding its decoder row
        times (clamp - its current value) to the hook's activation."""
        import torch

        if unit.ref.sae is None:
            idx = unit.ref.index

            def set_neuron(act: torch.Tensor, hook) -> torch.Tensor:  # noqa: ANN001
                act[..., idx] = clamp
                return act

            return set_neuron
        from autointerp.viewer.decoder import decoder_row, sae_weights

        path, why = sae_weights(store, unit)
        if path is None:
            raise UserError(f"{unit.id} cannot be steered: {why}.")
        row = torch.from_numpy(decoder_row(path, unit.ref.index).copy())

        def set_latent(act: torch.Tensor, hook) -> torch.Tensor:  # noqa: ANN001
            current = probe.source.unit_acts(act)[..., probe.column]
            delta = (clamp - current).unsqueeze(-1) * row.to(act.device, torch.float32)
            return (act.float() + delta).to(act.dtype)

        return set_latent

    def output_tokens(
        self, store: Store, unit: Unit, k: int = 10
    ) -> tuple[list[OutputToken] | None, list[OutputToken] | None, str]:
        """The tokens the unit's output direction promotes and suppresses most (direction @ W_U), or
        None, None and why not."""
        import torch

        with self._lock:
            subject = self._load(store, unit)
            model = subject.model
            direction = self._direction(store, unit, model)
            if direction is None:
                return None, None, f"no output direction for units of {unit.ref.hook}"
            with torch.no_grad():
                logits = direction.to(model.W_U.device, model.W_U.dtype) @ model.W_U
                top, bottom = logits.float().topk(k), (-logits.float()).topk(k)
            promoted = _tokens(subject, top.indices.tolist(), top.values.tolist())
            suppressed = _tokens(subject, bottom.indices.tolist(), [-v for v in bottom.values.tolist()])
        return promoted, suppressed, ""

    @staticmethod
    def _direction(store: Store, unit: Unit, model) -> torch.Tensor | None:  # noqa: ANN001
        import torch

        if unit.ref.sae is not None:
            from autointerp.viewer.decoder import decoder_row, sae_weights

            path, _ = sae_weights(store, unit)
            return torch.from_numpy(decoder_row(path, unit.ref.index).copy()) if path else None
        if m := _MLP_POST.match(unit.ref.hook):
            return model.blocks[int(m[1])].mlp.W_out[unit.ref.index].detach()
        if _RESID.match(unit.ref.hook):
            d = torch.zeros(model.cfg.d_model)
            d[unit.ref.index] = 1.0
            return d
        return None


class _Locked:
    """A reader that takes the live model's lock for each read."""

    def __init__(self, reader: ActReader, lock: threading.Lock):
        self._reader, self._lock = reader, lock

    def read(self, texts: list[str]) -> list[tuple[list[str], list[float]]]:
        with self._lock:
            return self._reader.read(texts)


def _tokens(subject: SubjectModel, ids: list[int], values: list[float]) -> list[OutputToken]:
    return [
        OutputToken(token=t, value=round(v, 4)) for t, v in zip(subject.token_strs(ids), values, strict=True)
    ]


def _check_text(text: str) -> str:
    if not text.strip():
        raise UserError("The text is empty; type some text to read the unit on.")
    if len(text) > MAX_TEXT_CHARS:
        raise UserError(f"The text has {len(text)} characters; give at most {MAX_TEXT_CHARS}.")
    return text
