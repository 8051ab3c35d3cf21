"""Counterfactual examples, all checked on the subject model: token attributions, minimal activating
examples, LLM-written edits that switch a unit off (or on), and hard negatives.

- `attribution`: how much the activation at an example's peak drops when each earlier token is deleted
  or replaced by a neutral token; the shortest suffix ending at the peak that keeps `keep_frac` of it.
- `edits` + `proposals`: a jinja2 prompt (counterfactual_{off,on}.j2) asks for a minimal edit; every
  parsed candidate runs through the subject model (`probe`) and is kept only if the activation really
  moved past the threshold. A malformed answer or an unmoved activation is a recorded failure.
- `negatives`: non-firing windows nearest to the activating ones by MiniLM embedding.
- `link`: the stored examples, each linked to its source example (`Example.source`).
- `run`: `generate_counterfactuals` for many units, resumably (a per-unit run record keyed by the
  settings); writes kinds `minimal`, `counterfactual`, `hard_negative`, and each attributed top
  example's `attribution` (JSON of `Attribution`) in its provenance.
"""

from autointerp.counterfactual.attribution import attribute, minimal_example
from autointerp.counterfactual.edits import EditPrompt, edit_fraction, load_prompt, marked_snippet, parse_edit
from autointerp.counterfactual.link import attribution_of
from autointerp.counterfactual.negatives import hard_negatives, quiet_threshold
from autointerp.counterfactual.probe import UnitProbe
from autointerp.counterfactual.proposals import EditJob, verify
from autointerp.counterfactual.run import agenerate_counterfactuals, generate_counterfactuals, settings_key
from autointerp.counterfactual.types import (
    KINDS,
    Attribution,
    Candidate,
    CounterfactualSettings,
    CounterfactualSummary,
    ProgressEvent,
    UnitCounterfactuals,
)

__all__ = [
    "KINDS",
    "Attribution",
    "Candidate",
    "CounterfactualSettings",
    "CounterfactualSummary",
    "EditJob",
    "EditPrompt",
    "ProgressEvent",
    "UnitCounterfactuals",
    "UnitProbe",
    "agenerate_counterfactuals",
    "attribute",
    "attribution_of",
    "edit_fraction",
    "generate_counterfactuals",
    "hard_negatives",
    "load_prompt",
    "marked_snippet",
    "minimal_example",
    "parse_edit",
    "quiet_threshold",
    "settings_key",
    "verify",
]
