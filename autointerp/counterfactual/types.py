"""Settings and results of counterfactual generation (what crosses this package's module borders)."""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel, Field

from autointerp.types import SourceRef

KINDS = ("minimal", "counterfactual", "hard_negative")  # example kinds a run writes
Direction = Literal["off", "on"]


class CounterfactualSettings(BaseModel):
    """Everything that decides what `generate_counterfactuals` writes (its hash names the per-unit run)."""

    n_examples: int = Field(4, ge=1)  # top examples per unit: attribution, minimal, `off` edits
    neutral_token: str = " "  # replacement for the `replace` attribution
    keep_frac: float = Field(0.8, gt=0, le=1)  # minimal example keeps this share of the peak
    n_on: int = Field(2, ge=0)  # non-firing examples the LLM edits to switch the unit on
    off_frac: float = Field(0.3, gt=0, lt=1)  # `off` verifies if the edited max < off_frac x original
    on_frac: float = Field(0.5, gt=0)  # `on` verifies if the edited max > on_frac x the unit's max
    max_edit_frac: float = Field(0.5, gt=0, le=1)  # reject edits changing more than this share of words
    window: int = Field(32, ge=4)  # most tokens before the peak shown to the LLM
    tail: int = Field(3, ge=0)  # tokens after the peak shown to the LLM
    max_tokens: int = Field(120, ge=8)  # LLM answer length
    retries: int = Field(1, ge=0)  # an unusable answer goes back to the LLM with the reason this often
    temperature: float = 0.0
    n_hard: int = Field(5, ge=0)  # hard negatives per unit
    quiet_frac: float = Field(0.1, ge=0, lt=1)  # a window is non-activating if its max <= this x unit max
    corpus_windows: int = Field(0, ge=0)  # extra corpus windows streamed as hard-negative candidates
    corpus: list[str] = Field(default_factory=lambda: ["default"])
    batch_tokens: int = Field(4096, ge=64)  # rows x longest sequence per subject forward pass


class TokenEffect(BaseModel):
    position: int
    token: str
    delete_drop: float | None  # peak act minus act with this token deleted (None: the peak token itself)
    replace_drop: float  # peak act minus act with this token replaced by the neutral token


class Attribution(BaseModel):
    """Per-token effect on the activation at an example's peak (positive drop: the token helps)."""

    unit_id: str
    context_id: str
    peak_pos: int
    peak_act: float
    neutral_token: str
    effects: list[TokenEffect]

    def top(self, k: int = 5) -> list[TokenEffect]:
        """The k tokens whose removal lowers the peak most (by the larger of the two drops)."""
        key = lambda e: max(e.replace_drop, e.delete_drop if e.delete_drop is not None else -np.inf)  # noqa: E731
        return sorted(self.effects, key=key, reverse=True)[:k]


class MinimalResult(BaseModel):
    token_ids: list[int]
    acts: list[float]
    start: int  # first kept position of the original context (after BOS)
    original_length: int  # tokens up to and including the peak
    original_act: float  # activation at the peak, recomputed on the prefix
    kept_fraction: float

    @property
    def shortened(self) -> bool:
        return len(self.token_ids) < self.original_length


class Candidate(BaseModel):
    """One LLM-proposed edit and what the subject model made of it."""

    direction: Direction
    source: SourceRef  # the example whose text was edited
    original_text: str
    edited_text: str | None = None
    original_act: float
    edited_act: float | None = None
    status: Literal["verified", "not_moved", "parse_failed", "llm_error", "skipped"]
    reason: str = ""
    raw: str = ""  # the LLM's answer (truncated), kept for failures


class UnitCounterfactuals(BaseModel):
    """What a run made for one unit (its run record's summary)."""

    unit_id: str
    n_attributed: int = 0
    n_minimal: int = 0
    n_minimal_shortened: int = 0
    minimal_kept_len_frac: list[float] = Field(default_factory=list)
    candidates: list[Candidate] = Field(default_factory=list)
    n_hard_negatives: int = 0

    @property
    def verified(self) -> list[Candidate]:
        return [c for c in self.candidates if c.status == "verified"]


class CounterfactualSummary(BaseModel):
    settings_key: str
    units: list[UnitCounterfactuals] = Field(default_factory=list)
    skipped: list[str] = Field(default_factory=list)  # already done with these settings
    seconds: float = 0.0

    def totals(self) -> dict[str, float | int]:
        cands = [c for u in self.units for c in u.candidates if c.status != "skipped"]
        ver = [c for c in cands if c.status == "verified"]
        off = [c for c in ver if c.direction == "off"]
        return {
            "units": len(self.units),
            "skipped": len(self.skipped),
            "candidates": len(cands),
            "parse_failed": sum(c.status == "parse_failed" for c in cands),
            "llm_error": sum(c.status == "llm_error" for c in cands),
            "verified": len(ver),
            "verified_share": len(ver) / len(cands) if cands else float("nan"),
            "mean_off_drop_frac": float(np.mean([1 - c.edited_act / c.original_act for c in off]))
            if off
            else float("nan"),
            "minimal": sum(u.n_minimal for u in self.units),
            "minimal_shortened": sum(u.n_minimal_shortened for u in self.units),
            "hard_negatives": sum(u.n_hard_negatives for u in self.units),
        }


class ProgressEvent(BaseModel):
    """What the progress callback receives: where the run is, and the running counts."""

    unit_id: str
    stage: Literal["start", "attribution", "minimal", "llm", "hard_negatives", "done", "skipped"]
    unit_index: int  # 0-based
    n_units: int
    verified: int = 0  # verified counterfactuals so far (whole run)
    candidates: int = 0
