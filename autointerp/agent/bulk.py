"""`label --methods agent` (and `bench --methods ...,agent`): one investigation per unit inside the label
pipeline, resumable like any method.

The agent is the run's explainer LLM, its `score` tool and the final scoring use the run's simulator and
scorers, on the same held-out test examples as every other method. A unit's investigation is found again
by its settings (agent, simulator, scorers, sampling, budget): finished and scored, it is skipped; an
interrupted or failed one resumes from its last stored step; an exhausted one is reported again without
a new LLM call; a finished one whose scoring failed is scored again. Nothing is duplicated.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from autointerp.agent import reader as readers_module
from autointerp.agent.loop import (
    AgentMode,
    AgentSettings,
    investigator_class,
    new_investigation,
    resolve_mode,
    stored_settings,
)
from autointerp.agent.reader import ActReader, open_reader
from autointerp.agent.tools import FinishArgs, Toolbox
from autointerp.errors import UserError
from autointerp.pipeline import AGENT, Labeller, UnitResult
from autointerp.sampling import UnitSample
from autointerp.store import Store
from autointerp.types import Investigation, Score


class AgentBudget(BaseModel):
    """What a bulk investigation may spend, and where synthetic units are defined."""

    max_steps: int = Field(16, ge=1)
    max_tokens: int | None = Field(None, ge=1)
    max_seconds: float | None = Field(None, gt=0)
    max_scores: int = Field(7, ge=0)  # guided: highlight, 2 named, 3 proposed, 1 revision
    agent_mode: AgentMode = "auto"
    units_file: str | None = None  # synthetic units' rules (default: the built-in suite)


class Readers:
    """Activation readers for many units, each subject model (or tokenizer) loaded once."""

    def __init__(self, units_file: str | None = None):
        self.units_file = units_file
        self.subjects: dict[str, object] = {}
        self.tokenizers: dict[str, object] = {}

    def _subject(self, model: str) -> object:
        from autointerp.subject.model import load_subject

        if model not in self.subjects:
            self.subjects[model] = load_subject(model)
        return self.subjects[model]

    def _tokenizer(self, model: str) -> object:
        if model not in self.tokenizers:
            self.tokenizers[model] = readers_module.load_tokenizer(model)
        return self.tokenizers[model]

    def reader(self, store: Store, sample: UnitSample) -> ActReader:
        return open_reader(store, sample.unit, self.units_file, self._tokenizer, self._subject)


def agent_settings(labeller: Labeller, budget: AgentBudget) -> AgentSettings:
    s = labeller.s
    settings = AgentSettings(
        agent=s.explainer,
        simulator=s.simulator,
        simulator_mode=s.simulator_mode,
        scorers=s.scorers,
        sample=s.sample,
        score=s.score,
        **budget.model_dump(exclude={"units_file"}),
    )
    return resolve_mode(settings)


def prior_investigation(store: Store, unit_id: str, s: AgentSettings) -> Investigation | None:
    """The latest investigation of the unit made with exactly these settings."""
    same = [
        inv
        for inv in store.investigations(unit_id)
        if inv.mode == "investigate" and stored_settings(inv) == s
    ]
    return same[-1] if same else None


async def label_agent(
    labeller: Labeller, sample: UnitSample, readers: Readers, budget: AgentBudget
) -> UnitResult:
    """Investigate one unit (or resume or reuse its investigation); the result as any method's."""
    store, uid = labeller.store, sample.unit.id
    s = agent_settings(labeller, budget)
    inv = prior_investigation(store, uid, s)
    if inv is not None and inv.explanation_id and labeller.done(inv.explanation_id, sample):
        return result(uid, inv, store.scores(inv.explanation_id), skipped=True)
    if inv is not None and inv.status == "exhausted":
        why = f"investigation {inv.id} exhausted: {inv.reason}"
        return UnitResult(unit_id=uid, method=AGENT, error=why)
    fresh = inv is None
    if inv is None:
        inv = new_investigation(uid, s, "investigate")
    try:
        reader = readers.reader(store, sample)
    except UserError as e:  # no rule for a synthetic unit, no model to load: this unit fails, not the run
        return UnitResult(unit_id=uid, method=AGENT, error=str(e))
    toolbox = Toolbox(sample, store.examples(uid), reader, labeller.simulator, max_scores=s.max_scores)
    if fresh:
        store.put_investigation(inv)
    agent = investigator_class(s, inv)(store, inv, labeller.explainer, toolbox, labeller, s)
    finish = next((e for e in reversed(agent.experiments) if e.tool == "finish" and not e.error), None)
    if finish is not None:  # the agent finished, but the scores are missing (scoring failed) or stale
        args = FinishArgs.model_validate(finish.arguments)
        evidence = {"supporting": args.supporting, "refuting": args.refuting}
        scores = await agent.save(args.explanation, evidence)
        agent.end("finished")
        return result(uid, agent.inv, scores)
    out = await agent.run()
    if out.investigation.status != "finished":
        why = f"investigation {inv.id} {out.investigation.status}: {out.investigation.reason}"
        return UnitResult(unit_id=uid, method=AGENT, error=why)
    return result(uid, out.investigation, out.scores)


def result(uid: str, inv: Investigation, scores: list[Score], skipped: bool = False) -> UnitResult:
    return UnitResult(
        unit_id=uid,
        method=AGENT,
        explanation=inv.explanation,
        explanation_id=inv.explanation_id,
        scores={x.scorer: x.value for x in scores},
        status={x.scorer: x.status for x in scores},
        skipped=skipped,
    )
