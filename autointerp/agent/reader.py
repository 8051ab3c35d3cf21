"""A unit's activations on texts the agent writes: the live subject model, or a synthetic unit's rule.

`open_reader` builds the reader a recorded unit needs: for a neuron or SAE latent, the subject model that
recorded it through `UnitProbe` (the one hooked forward pass, as the recorder reads it), with its
`effects` (output direction, next-token change when clamped or zeroed); for a synthetic ground-truth
unit `MODEL/synthetic.NAME/0`, its rule over the subject's token strings (a tokenizer, no model, no
effects). A leading BOS is read, as the recorder reads it, but never shown.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from autointerp.bench.synthetic import BUILTIN, HOOK_PREFIX, SyntheticUnit, load_units
from autointerp.errors import UserError
from autointerp.store import Store
from autointerp.subject.effects import NextTokenChange, TokenValue
from autointerp.types import Unit

TokenActs = tuple[list[str], list[float]]


class EffectUnavailable(Exception):
    """The unit has no effect of this kind on the model (no output direction, no SAE weights here)."""


class UnitEffects(Protocol):
    """What the unit does to the model's output."""

    def output_effect(self, k: int) -> tuple[list[TokenValue], list[TokenValue]]: ...

    def next_token(self, prompt: str, value: float, k: int) -> NextTokenChange: ...


class ActReader(Protocol):
    """Texts in, each text's tokens and the unit's activation at every token out (BOS left out);
    `effects` is None for a unit that is not in the model (a synthetic rule)."""

    effects: UnitEffects | None

    def read(self, texts: list[str]) -> list[TokenActs]: ...


class RuleReader:
    """A synthetic unit's activations: its rule over the token strings of the subject's tokenizer."""

    effects = None  # a rule over tokens writes nothing into the model

    def __init__(self, unit: SyntheticUnit, tokenizer):  # noqa: ANN001 - a Hugging Face tokenizer
        self.unit, self.tokenizer = unit, tokenizer

    def read(self, texts: list[str]) -> list[TokenActs]:
        out = []
        for text in texts:
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            tokens = [self.tokenizer.decode([i], clean_up_tokenization_spaces=False) for i in ids]
            out.append((tokens, self.unit.acts(tokens)))
        return out


_LOCKS: dict[int, threading.Lock] = {}


def model_lock(subject: object) -> threading.Lock:
    """One lock per loaded subject model: steering adds hooks to the model itself, so no other read may
    run on it meanwhile (tools run in threads; a label run investigates several units at once)."""
    return _LOCKS.setdefault(id(subject), threading.Lock())


class ProbeReader:
    """A recorded neuron's or SAE latent's activations on the live subject model (`UnitProbe`)."""

    def __init__(self, probe, effects: UnitEffects | None = None):  # noqa: ANN001 - UnitProbe
        self.probe, self.effects = probe, effects

    def read(self, texts: list[str]) -> list[TokenActs]:
        from autointerp.counterfactual.probe import body_start

        seqs = [self.probe.encode(t) for t in texts]
        with model_lock(self.probe.subject):
            read = self.probe.acts(seqs)
        out = []
        for ids, acts in zip(seqs, read, strict=True):
            lo = body_start(ids, self.probe.subject.bos_id)
            out.append((self.probe.subject.token_strs(ids[lo:]), [float(a) for a in acts[lo:]]))
        return out


class ModelEffects:
    """A recorded unit's effects on the subject model: its output direction through the unembedding,
    and the next-token distribution with the unit set to a value at every position."""

    def __init__(self, store: Store, unit: Unit, probe):  # noqa: ANN001 - UnitProbe
        self.store, self.unit, self.probe = store, unit, probe

    def output_effect(self, k: int) -> tuple[list[TokenValue], list[TokenValue]]:
        from autointerp.subject.effects import direction_tokens, output_direction

        subject = self.probe.subject
        direction = output_direction(self.store, self.unit, subject.model)
        if direction is None:
            raise EffectUnavailable(f"units of {self.unit.ref.hook} write no single output direction")
        with model_lock(subject):
            return direction_tokens(subject, direction, k)

    def next_token(self, prompt: str, value: float, k: int) -> NextTokenChange:
        from autointerp.subject.effects import clamp_hook, next_token_change

        try:
            hook_fn = clamp_hook(self.store, self.unit, self.probe, value)
        except UserError as e:
            raise EffectUnavailable(str(e).rstrip(".")) from None
        ids = self.probe.encode(prompt)
        with model_lock(self.probe.subject):
            return next_token_change(self.probe.subject, self.probe.source.hook, hook_fn, ids, value, k)


def synthetic_unit(unit: Unit, units_file: str | Path | None = None) -> SyntheticUnit | None:
    """The ground-truth definition of a synthetic unit (from `units_file`, else the built-in suite);
    None for a unit that is not synthetic."""
    if not unit.ref.hook.startswith(HOOK_PREFIX):
        return None
    name = unit.ref.hook.removeprefix(HOOK_PREFIX)
    pool = load_units(units_file) if units_file else BUILTIN
    for u in pool:
        if u.name == name:
            return u
    where = units_file or "the built-in suite"
    raise UserError(
        f"{unit.id} is a synthetic unit that {where} does not define; pass --synthetic FILE with its rule."
    )


def load_tokenizer(model: str):  # noqa: ANN201 - a Hugging Face tokenizer
    """The subject model's tokenizer alone (the embedded Gemma's from its cached copy)."""
    from transformers import AutoTokenizer

    from autointerp import assets

    source = str(assets.ensure_model(model)) if model in assets.HF_IDS else model
    try:
        return AutoTokenizer.from_pretrained(source)
    except OSError as e:
        raise UserError(
            f"No local tokenizer for {model!r}; download the model where there is network."
        ) from e


def open_reader(
    store: Store,
    unit: Unit,
    units_file: str | Path | None = None,
    tokenizer_loader: Callable[[str], object] | None = None,
    subject_loader: Callable[[str], object] | None = None,
) -> ActReader:
    """The reader for a recorded unit: loads the subject model (a synthetic unit: only its tokenizer);
    the loaders (default: load anew) let a label run load each model once."""
    run = store.get_run(unit.run_id)
    model = run.settings.get("model", unit.ref.model) if run else unit.ref.model
    synth = synthetic_unit(unit, units_file)
    if synth is not None:
        return RuleReader(synth, (tokenizer_loader or load_tokenizer)(model))
    from autointerp.counterfactual.probe import UnitProbe
    from autointerp.subject.model import load_subject

    probe = UnitProbe.for_unit((subject_loader or load_subject)(model), store, unit)
    return ProbeReader(probe, ModelEffects(store, unit, probe))
