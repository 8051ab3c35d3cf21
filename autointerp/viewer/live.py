"""`serve --live`: the subject model, loaded on first use, reads a unit on any text, steers a completion
with the unit clamped, and projects the unit's output direction through the unembedding."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from pydantic import BaseModel

from autointerp.errors import UserError
from autointerp.store import Store
from autointerp.types import Unit
from autointerp.viewer.pages import OutputToken, TokenView, tokens_view

if TYPE_CHECKING:
    from autointerp.agent.reader import ActReader, UnitEffects
    from autointerp.subject.effects import NextTokenChange, TokenValue
    from autointerp.subject.model import SubjectModel

MAX_TEXT_CHARS = 4000


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

        from autointerp.subject.effects import clamp_hook

        text = _check_text(text)
        with self._lock:
            probe = self._probe(store, unit)
            subject = probe.subject
            model = subject.model
            toks = torch.tensor([probe.encode(text)], device=model.cfg.device)
            hook_fn = clamp_hook(store, unit, probe, clamp)
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

    def output_tokens(
        self, store: Store, unit: Unit, k: int = 10
    ) -> tuple[list[OutputToken] | None, list[OutputToken] | None, str]:
        """The tokens the unit's output direction promotes and suppresses most (direction @ W_U), or
        None, None and why not."""
        from autointerp.subject.effects import direction_tokens, output_direction

        with self._lock:
            subject = self._load(store, unit)
            direction = output_direction(store, unit, subject.model)
            if direction is None:
                return None, None, f"no output direction for units of {unit.ref.hook}"
            up, down = direction_tokens(subject, direction, k)
        promoted = [OutputToken(token=t.token, value=t.value) for t in up]
        suppressed = [OutputToken(token=t.token, value=t.value) for t in down]
        return promoted, suppressed, ""


class _Locked:
    """A reader (and its unit's effects) that takes the live model's lock for each use."""

    def __init__(self, reader: ActReader, lock: threading.Lock):
        self._reader, self._lock = reader, lock
        self.effects = _LockedEffects(reader.effects, lock) if reader.effects is not None else None

    def read(self, texts: list[str]) -> list[tuple[list[str], list[float]]]:
        with self._lock:
            return self._reader.read(texts)


class _LockedEffects:
    """`UnitEffects` under the live model's lock (steering and ablation run the model)."""

    def __init__(self, effects: UnitEffects, lock: threading.Lock):
        self._effects, self._lock = effects, lock

    def output_effect(self, k: int) -> tuple[list[TokenValue], list[TokenValue]]:
        with self._lock:
            return self._effects.output_effect(k)

    def next_token(self, prompt: str, value: float, k: int) -> NextTokenChange:
        with self._lock:
            return self._effects.next_token(prompt, value, k)


def _check_text(text: str) -> str:
    if not text.strip():
        raise UserError("The text is empty; type some text to read the unit on.")
    if len(text) > MAX_TEXT_CHARS:
        raise UserError(f"The text has {len(text)} characters; give at most {MAX_TEXT_CHARS}.")
    return text
