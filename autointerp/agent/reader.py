"""A unit's activations on texts the agent writes: the live subject model, or a synthetic unit's rule.

`open_reader` builds the reader a recorded unit needs: for a neuron or SAE latent, the subject model that
recorded it through `UnitProbe` (the one hooked forward pass, as the recorder reads it); for a synthetic
ground-truth unit `MODEL/synthetic.NAME/0`, its rule over the subject's token strings (a tokenizer, no
model). A leading BOS is read, as the recorder reads it, but never shown.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from autointerp.bench.synthetic import BUILTIN, HOOK_PREFIX, SyntheticUnit, load_units
from autointerp.errors import UserError
from autointerp.store import Store
from autointerp.types import Unit

TokenActs = tuple[list[str], list[float]]


class ActReader(Protocol):
    """Texts in, each text's tokens and the unit's activation at every token out (BOS left out)."""

    def read(self, texts: list[str]) -> list[TokenActs]: ...


class RuleReader:
    """A synthetic unit's activations: its rule over the token strings of the subject's tokenizer."""

    def __init__(self, unit: SyntheticUnit, tokenizer):  # noqa: ANN001 - a Hugging Face tokenizer
        self.unit, self.tokenizer = unit, tokenizer

    def read(self, texts: list[str]) -> list[TokenActs]:
        out = []
        for text in texts:
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            tokens = [self.tokenizer.decode([i], clean_up_tokenization_spaces=False) for i in ids]
            out.append((tokens, self.unit.acts(tokens)))
        return out


class ProbeReader:
    """A recorded neuron's or SAE latent's activations on the live subject model (`UnitProbe`)."""

    def __init__(self, probe):  # noqa: ANN001 - counterfactual.probe.UnitProbe
        self.probe = probe

    def read(self, texts: list[str]) -> list[TokenActs]:
        from autointerp.counterfactual.probe import body_start

        seqs = [self.probe.encode(t) for t in texts]
        out = []
        for ids, acts in zip(seqs, self.probe.acts(seqs), strict=True):
            lo = body_start(ids, self.probe.subject.bos_id)
            out.append((self.probe.subject.token_strs(ids[lo:]), [float(a) for a in acts[lo:]]))
        return out


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
) -> ActReader:
    """The reader for a recorded unit: loads the subject model (a synthetic unit: only its tokenizer)."""
    run = store.get_run(unit.run_id)
    model = run.settings.get("model", unit.ref.model) if run else unit.ref.model
    synth = synthetic_unit(unit, units_file)
    if synth is not None:
        return RuleReader(synth, (tokenizer_loader or load_tokenizer)(model))
    from autointerp.counterfactual.probe import UnitProbe
    from autointerp.subject.model import load_subject

    return ProbeReader(UnitProbe.for_unit(load_subject(model), store, unit))
