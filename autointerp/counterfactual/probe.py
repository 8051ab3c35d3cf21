"""One unit's activations on arbitrary token sequences, read on the subject model (the verification
behind every counterfactual example)."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

import numpy as np

from autointerp.errors import UserError
from autointerp.store import Store
from autointerp.types import Context, Unit

if TYPE_CHECKING:
    import torch

    from autointerp.subject.model import SubjectModel
    from autointerp.subject.recorder import UnitSource


class UnitProbe:
    """One unit's activations on token sequences; the forward pass stops after its layer.

    Sequences are right-padded into batches of similar length: the model is causal, so padding after
    a sequence's end never changes its activations, and each row is cut back to its own length.
    Special-token positions (BOS, ...) read as the recorder stores them unless `include_special`.
    """

    def __init__(
        self,
        subject: SubjectModel,
        source: UnitSource,
        batch_tokens: int = 4096,
        column: int = 0,
        include_special: bool = False,
    ):
        self.subject = subject
        self.source = source
        self.column = column  # which of the source's units this probe reads
        self.batch_tokens = batch_tokens
        self.special_ids = None if include_special else np.array(subject.special_ids, dtype=np.int64)

    @classmethod
    def for_unit(
        cls,
        subject: SubjectModel,
        store: Store,
        unit: Unit,
        batch_tokens: int = 4096,
        sae_cache: dict[str, UnitSource] | None = None,
        latents: list[int] | None = None,
    ) -> UnitProbe:
        """A probe for a recorded unit: a neuron slice, or the SAE named by the run that recorded it.

        SAE encoders are built once per SAE for `latents` (default: this unit's) and kept in `sae_cache`."""
        from autointerp.subject.recorder import UnitSource

        ref = unit.ref
        run = store.get_run(unit.run_id)
        include_special = bool(run.settings.get("include_special", True)) if run else False
        if ref.model != subject.short:
            raise UserError(
                f"{ref.id} belongs to {ref.model} but the subject model is {subject.short}; "
                f"load {ref.model} to verify its counterfactuals."
            )
        if ref.sae is None:
            width = subject.check_hook(ref.hook)
            if ref.index >= width:
                raise UserError(
                    f"{ref.id}: index {ref.index} is out of range for {ref.hook} ({width} units)."
                )
            source = UnitSource(hook=ref.hook, indices=[ref.index])
            return cls(subject, source, batch_tokens, include_special=include_special)
        from autointerp.subject.sae import sae_source

        path = (run.settings.get("sae") or {}).get(ref.hook) if run else None
        if not path:
            raise UserError(
                f"{ref.id}: the run that recorded it names no SAE directory for {ref.hook}; record it again "
                "with --sae."
            )
        key = f"{path}|{ref.hook}"
        source = (sae_cache or {}).get(key)
        if source is None or ref.index not in source.indices:
            wanted = sorted({ref.index, *(latents or [])})
            source, info = sae_source(subject, path, hook=ref.hook, latents=wanted)
            if info.name != ref.sae:
                raise UserError(
                    f"{ref.id}: the SAE at {path} is now {info.name!r} (its files changed since it was "
                    "recorded); record it again."
                )
            if sae_cache is not None:
                sae_cache[key] = source
        column = source.indices.index(ref.index)
        return cls(subject, source, batch_tokens, column=column, include_special=include_special)

    def acts(self, seqs: list[list[int]]) -> list[np.ndarray]:
        """Per sequence, the unit's activation at every position (float32)."""
        import torch

        out: list[np.ndarray | None] = [None] * len(seqs)
        order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
        i = 0
        while i < len(order):
            j = i + 1  # grow the batch while rows x longest (the last one, sorted) fits
            while j < len(order) and (j - i + 1) * len(seqs[order[j]]) <= self.batch_tokens:
                j += 1
            rows = order[i:j]
            width = len(seqs[rows[-1]])
            pad = torch.zeros((len(rows), width), dtype=torch.long)
            for r, k in enumerate(rows):
                pad[r, : len(seqs[k])] = torch.tensor(seqs[k], dtype=torch.long)
            acts = self._forward(pad)
            for r, k in enumerate(rows):
                out[k] = self._leave_out_special(acts[r, : len(seqs[k])], seqs[k])
            i = j
        return out  # type: ignore[return-value]

    def _leave_out_special(self, acts: np.ndarray, seq: list[int]) -> np.ndarray:
        """`acts` with the sequence's special-token positions set as the recorder stores them."""
        if self.special_ids is not None and len(self.special_ids):
            import torch

            from autointerp.subject.recorder import exclude_positions

            pos = np.flatnonzero(np.isin(seq, self.special_ids))
            if len(pos):
                t = torch.from_numpy(acts)[None, :, None]  # shares memory: written in place
                exclude_positions(t, (torch.zeros(len(pos), dtype=torch.long), torch.from_numpy(pos)))
        return acts

    def _forward(self, toks: torch.Tensor) -> np.ndarray:
        if getattr(self.source, "from_tokens", None) is not None:  # synthetic units: no model needed
            return self.source.from_tokens(toks)[..., self.column].float().cpu().numpy()
        hook = self.source.hook
        acts = self.subject.hook_acts(toks, [hook], to_cpu=False)[hook]
        return self.source.unit_acts(acts)[..., self.column].cpu().numpy()

    def encode(self, text: str) -> list[int]:
        """Token ids of a text as the recorder sees it: BOS (where the model uses one), then the text."""
        ids = self.subject.tokenizer(text, add_special_tokens=False)["input_ids"]
        bos = self.subject.bos_id
        return ([bos] if bos is not None else []) + list(ids)


def body_start(ids: list[int], bos: int | None) -> int:
    """1 where the sequence opens with BOS, else 0."""
    return 1 if bos is not None and ids and ids[0] == bos else 0


def make_context(subject: SubjectModel, ids: list[int]) -> Context:
    """A Context with the recorder's id scheme (sha1 of the int32 token ids)."""
    cid = hashlib.sha1(np.asarray(ids, dtype=np.int32).tobytes()).hexdigest()[:16]
    return Context(id=cid, token_ids=list(ids), tokens=subject.token_strs(list(ids)))
