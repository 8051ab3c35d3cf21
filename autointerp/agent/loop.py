"""The investigation loop: the agent LLM calls typed tools until it finishes or its budget runs out.

A backend with native tool calls (openai, anthropic) gets the tools' JSON schemas; one without (the
embedded local model, the scripted test LLM) answers every turn with one JSON action
`{"thought": ..., "tool": ..., "args": {...}}`, read with pydantic. An unreadable action, an unknown
tool, invalid arguments or a call repeated verbatim goes back to the agent as an error; two in a row
end the investigation as `failed`. Limits: steps, tokens (the agent's prompt + completion) and seconds.
Every step is stored (the investigation's row with its transcript, and one experiment) in one
transaction, so an interrupted or failed investigation resumes from its last step. The final
explanation is stored with method `agent` and scored by the label pipeline's scorers on the same
held-out test set as every other method.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, ValidationError

from autointerp.agent.reader import ActReader, open_reader
from autointerp.agent.tools import (
    DESCRIPTIONS,
    SIGNATURES,
    ActionError,
    AnswerArgs,
    Args,
    FinishArgs,
    ScoreArgs,
    Toolbox,
    ToolError,
)
from autointerp.errors import UserError
from autointerp.llm import get_llm
from autointerp.llm.base import LLM, ChatRequest, ChatResponse, LLMError, Message, ToolCall
from autointerp.pipeline import Labeller, LabelSettings
from autointerp.prompts import prompt
from autointerp.sampling import SampleSettings, sample_unit
from autointerp.score import ScoreSettings
from autointerp.store import Store
from autointerp.types import Experiment, Explanation, Investigation, Score, now
from autointerp.units import find_unit
from autointerp.version import code_version

PROMPT = "agent_investigate.j2"
GUIDED_PROMPT = "agent_guided.j2"
PROBES = ["examples", "activations", "compare", "search", "output_effect", "steer", "ablate", "score"]
INVESTIGATE_TOOLS = [*PROBES, "finish"]
CHAT_TOOLS = [*PROBES, "answer"]
MAX_INVALID = 2  # invalid actions in a row that end an investigation
INVALID = "invalid action: "  # how an experiment's error marks an action that could not be taken
NEXT_ACTION = "}\n{"  # a small model writes more actions after its first: stop there (its "}" is cut)


AgentMode = Literal["auto", "guided", "free"]
NATIVE_TOOL_BACKENDS = ("openai", "anthropic")  # auto: these drive the free loop, the rest are guided


class AgentSettings(BaseModel):
    agent: str = "local:qwen2.5-coder-1.5b"
    agent_mode: AgentMode = "auto"  # guided: the code drives the loop (agent/guided.py); free: the LLM
    hypotheses: int = Field(3, ge=1, le=8)  # guided: hypotheses proposed at first
    with_highlight: bool = True  # guided: the one-shot highlight explanation is one more candidate
    simulator: str | None = None  # default: the agent's LLM
    simulator_mode: str = "auto"
    scorers: list[str] = Field(default_factory=lambda: ["correlation"])
    max_steps: int = Field(20, ge=1)  # agent turns (per question in a chat)
    max_tokens: int | None = Field(None, ge=1)  # the agent's prompt + completion tokens
    max_seconds: float | None = Field(None, gt=0)
    max_scores: int = Field(7, ge=0)  # calls of the score tool
    action_tokens: int = Field(200, ge=16)  # the longest answer per turn
    sample: SampleSettings = Field(default_factory=SampleSettings)
    score: ScoreSettings = Field(default_factory=ScoreSettings)


BUDGET = ("max_steps", "max_tokens", "max_seconds")  # what a resumed investigation takes anew


def stored_settings(inv: Investigation) -> AgentSettings:
    """An investigation's settings; one stored before the guided mode existed ran the free loop."""
    return AgentSettings.model_validate({"agent_mode": "free"} | inv.settings)


def resolve_mode(s: AgentSettings, mode: str = "investigate") -> AgentSettings:
    """The settings with `agent_mode` decided: a chat is always free; `auto` is free for a backend with
    native tool calls (openai, anthropic) and guided for the rest (the embedded local models, scripted)."""
    if mode == "chat":
        return s.model_copy(update={"agent_mode": "free"})
    if s.agent_mode != "auto":
        return s
    native = s.agent.partition(":")[0] in NATIVE_TOOL_BACKENDS
    return s.model_copy(update={"agent_mode": "free" if native else "guided"})


class Action(BaseModel):
    """One JSON action of an agent without native tool calls."""

    thought: str = ""
    tool: str
    args: dict = Field(default_factory=dict)


class Outcome(BaseModel):
    investigation: Investigation
    experiments: list[Experiment]
    scores: list[Score] = Field(default_factory=list)


def parse_action(text: str) -> Action:
    """The first JSON object in the answer as an Action (code fences and prose around it allowed)."""
    start = text.find("{")
    if start < 0:
        raise ActionError('no JSON object; answer with {"thought": ..., "tool": ..., "args": {...}}')
    try:
        try:
            obj, _ = json.JSONDecoder().raw_decode(text[start:])
        except json.JSONDecodeError:  # the stop at the next action cuts the closing brace
            obj, _ = json.JSONDecoder().raw_decode(text[start:] + "}")
        return Action.model_validate(obj)
    except json.JSONDecodeError as e:
        raise ActionError(f"the JSON action is malformed ({e.msg}); answer with one JSON object") from None
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(x) for x in first["loc"]) or "action"
        raise ActionError(f"the action is not {{thought, tool, args}}: {where}: {first['msg']}") from None


def agent_explanation_id(inv: Investigation, text: str) -> str:
    key = {"unit": inv.unit_id, "method": "agent", "agent": inv.agent, "prompt": inv.prompt}
    key |= {"investigation": inv.id, "text": text}
    return "exp-" + hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


class Investigator:
    """Runs (or resumes) one investigation of one unit."""

    def __init__(
        self,
        store: Store,
        inv: Investigation,
        llm: LLM,
        toolbox: Toolbox,
        labeller: Labeller,
        s: AgentSettings,
        on_step: Callable[[Experiment], None] | None = None,
    ):
        self.store, self.inv, self.llm, self.s = store, inv, llm, s
        self.toolbox, self.labeller = toolbox, labeller
        self.on_step = on_step
        self.native = llm.capabilities.tools
        self.messages = [Message.model_validate(m) for m in inv.messages]
        self.experiments = store.experiments(inv.id)
        self.seen = {self._key(e.tool, e.arguments): e.id for e in self.experiments if e.tool and not e.error}
        ran_scores = sum(e.tool == "score" and not e.error for e in self.experiments)
        toolbox.scores_left = max(0, toolbox.scores_left - ran_scores)
        self.invalid = 0
        self.hypothesis: str | None = inv.explanation
        for e in self.experiments if self.hypothesis is None else []:
            if e.tool in ("score", "finish", "answer") and not e.error:
                self.hypothesis = (
                    e.arguments.get("explanation") or e.arguments.get("hypothesis") or self.hypothesis
                )
        if not self.messages:
            self.messages = self.opening()

    @staticmethod
    def _key(tool: str, arguments: dict) -> str:
        return tool + json.dumps(arguments, sort_keys=True)

    @property
    def tools(self) -> list[str]:
        return CHAT_TOOLS if self.inv.mode == "chat" else INVESTIGATE_TOOLS

    @property
    def shown_tools(self) -> list[str]:
        """The tools the agent is told about: those the unit supports (a synthetic unit has no effects;
        called anyway, they answer with a tool error)."""
        return self.toolbox.available(self.tools)

    def opening(self) -> list[Message]:
        return prompt(PROMPT).messages(
            tools=[(n, SIGNATURES[n], DESCRIPTIONS[n]) for n in self.shown_tools],
            json_actions=not self.native,
            max_steps=self.s.max_steps,
            chat=self.inv.mode == "chat",
            unit_id=self.inv.unit_id,
            unit_max=f"{self.toolbox.unit_max:.3g}",
        )

    # -- budget -----------------------------------------------------------------------------------
    def over_budget(self, steps_done: int) -> str | None:
        """Why no further step may run, or None."""
        if steps_done >= self.s.max_steps:
            return f"the step budget ({self.s.max_steps}) ran out before the agent finished"
        used = self.inv.prompt_tokens + self.inv.completion_tokens
        if self.s.max_tokens is not None and used >= self.s.max_tokens:
            return f"the token budget ({self.s.max_tokens:,}) ran out after {used:,} tokens"
        if self.s.max_seconds is not None and self.inv.seconds >= self.s.max_seconds:
            return f"the time budget ({self.s.max_seconds:g} s) ran out"
        return None

    # -- one step ---------------------------------------------------------------------------------
    def read(self, resp: ChatResponse) -> tuple[str, dict, str, ToolCall | None]:
        """(tool, raw arguments, thought, native call) of the agent's answer; ActionError if unreadable."""
        if self.native:
            if not resp.tool_calls:
                raise ActionError(f"no tool call; call one of {', '.join(self.shown_tools)}")
            call = resp.tool_calls[0]
            return call.name, call.arguments, resp.text.strip(), call
        try:
            action = parse_action(resp.text)
        except ActionError:
            if resp.finish_reason == "length":  # the answer budget cut the JSON: say so, not "malformed"
                raise ActionError(
                    f"your answer was cut at {self.s.action_tokens} tokens before the JSON ended; write a "
                    "shorter action (fewer and shorter texts)"
                ) from None
            raise
        return action.tool, action.args, action.thought, None

    def next_id(self) -> str:
        return f"e{len(self.experiments) + 1}"

    async def step(self, last: bool = False) -> Experiment:
        """One agent turn: ask, read the action, run its tool, store the step. LLMError propagates."""
        t0 = time.perf_counter()
        req = ChatRequest(
            messages=self.messages,
            tools=self.toolbox.specs(self.shown_tools) if self.native else None,
            max_tokens=self.s.action_tokens,
            stop=None if self.native else [NEXT_ACTION],
        )
        resp = await self.llm.chat(req)
        inv = self.inv
        inv.steps += 1
        inv.prompt_tokens += resp.usage.prompt_tokens
        inv.completion_tokens += resp.usage.completion_tokens
        exp = Experiment(
            id=self.next_id(),
            investigation_id=inv.id,
            step=inv.steps,
            tool="",
            action=resp.text
            if not resp.tool_calls
            else json.dumps([c.model_dump() for c in resp.tool_calls]),
            prompt_tokens=resp.usage.prompt_tokens,
            completion_tokens=resp.usage.completion_tokens,
        )
        call = None
        try:
            name, raw, exp.thought, call = self.read(resp)
            exp.tool, exp.arguments = name, raw
            args = Toolbox.parse(name, raw, self.tools)
            exp.arguments = args.model_dump()
            key = self._key(name, exp.arguments)
            if key in self.seen and name != "answer":  # a chat may answer two questions alike
                raise ActionError(f"you already ran exactly this as {self.seen[key]}; try something new")
            if isinstance(args, FinishArgs):
                args, dropped = self.checked_evidence(args)
                exp.arguments = args.model_dump()
                if dropped:
                    exp.thought = (exp.thought + " " if exp.thought else "") + dropped
            result = await self.toolbox.run(name, args)
            exp.result = result.model_dump()
            self.seen[key] = exp.id
            self.invalid = 0
            self.note_hypothesis(args)
            feedback = f"{exp.id} {name}: {result.brief()}"
        except ActionError as e:
            self.invalid += 1
            exp.error = f"{INVALID}{e}"
            feedback = f"error: {e}."
        except ToolError as e:
            self.invalid = 0
            exp.error = str(e)
            feedback = f"{exp.id} {exp.tool} failed: {e}."
        if last and self.inv.mode != "chat":
            feedback += "\nYour next step is the last one: call finish."
        self.add_turn(resp, call, feedback)
        exp.seconds = round(time.perf_counter() - t0, 3)
        inv.seconds = round(inv.seconds + exp.seconds, 3)
        self.record(exp)
        return exp

    def checked_evidence(self, args: FinishArgs) -> tuple[FinishArgs, str]:
        """Evidence limited to ids of experiments that ran: unknown ids are dropped (the explanation is
        kept), with a note naming them ("" when none was)."""
        ran = {e.id for e in self.experiments if not e.error}
        bad = [x for x in args.supporting + args.refuting if x not in ran]
        if not bad:
            return args, ""
        kept = args.model_copy(
            update={
                "supporting": [x for x in args.supporting if x in ran],
                "refuting": [x for x in args.refuting if x in ran],
            }
        )
        return kept, f"(evidence {', '.join(dict.fromkeys(bad))} dropped: no such experiment ran)"

    def note_hypothesis(self, args: Args) -> None:
        if isinstance(args, FinishArgs | ScoreArgs):
            self.hypothesis = args.explanation
        elif isinstance(args, AnswerArgs) and args.hypothesis:
            self.hypothesis = args.hypothesis

    def add_turn(self, resp: ChatResponse, call: ToolCall | None, feedback: str) -> None:
        """The agent's answer and the feedback on it, in the transcript."""
        if call is not None:
            self.messages.append(Message(role="assistant", content=resp.text, tool_calls=[call]))
            self.messages.append(Message(role="tool", content=feedback, tool_call_id=call.id))
        else:
            self.messages.append(Message(role="assistant", content=resp.text))
            self.messages.append(Message(role="user", content=feedback))

    def record(self, exp: Experiment) -> None:
        """Store the investigation's row with the experiment, in one transaction."""
        self.experiments.append(exp)
        self.inv.messages = [m.model_dump(exclude_none=True) for m in self.messages]
        self.inv.updated_at = now()
        self.store.put_investigation(self.inv, [exp])
        if self.on_step:
            self.on_step(exp)

    def end(self, status: str, reason: str = "") -> None:
        self.inv.status, self.inv.reason = status, reason  # type: ignore[assignment]
        self.inv.updated_at = now()
        self.inv.messages = [m.model_dump(exclude_none=True) for m in self.messages]
        self.store.put_investigation(self.inv)

    # -- the final explanation --------------------------------------------------------------------
    async def save(self, text: str, evidence: dict[str, list[str]] | None = None) -> list[Score]:
        """Store `text` as an explanation with method `agent`, scored by the pipeline's scorers on the
        unit's held-out test set (the same examples as every other method)."""
        inv = self.inv
        exp_id = agent_explanation_id(inv, text)
        scores = await self.labeller.score_explanation(exp_id, inv.unit_id, text, self.toolbox.sample)
        inv.explanation, inv.explanation_id = text, exp_id
        if evidence is not None:
            inv.evidence = evidence
        explanation = Explanation(
            id=exp_id,
            unit_id=inv.unit_id,
            text=text,
            method="agent",
            model=inv.agent,
            prompt=inv.prompt,
            settings={
                "agent": inv.agent,
                "agent_mode": self.s.agent_mode,
                "prompt": inv.prompt,
                "investigation": inv.id,
                "steps": inv.steps,
                "prompt_tokens": inv.prompt_tokens,
                "completion_tokens": inv.completion_tokens,
                "seconds": inv.seconds,
                "evidence": inv.evidence,
                "agent_settings": self.s.model_dump(),
                "code_version": code_version(),
            },
            run_id=self.labeller.run_id,
        )
        inv.updated_at = now()
        inv.messages = [m.model_dump(exclude_none=True) for m in self.messages]
        self.store.put_investigation(inv, [], explanation, scores)
        return scores

    async def run(self) -> Outcome:
        """Step until the agent finishes, an action is invalid twice in a row, the budget runs out or the
        LLM fails (then the row says so, and `--resume` picks it up again)."""
        self.inv.status, self.inv.reason = "running", ""
        while True:
            if reason := self.over_budget(self.inv.steps):
                self.end("exhausted", reason)
                return self.outcome()
            try:
                exp = await self.step(last=self.inv.steps + 2 == self.s.max_steps)
            except LLMError as e:
                self.end("failed", f"the LLM failed ({e}); run again with --resume {self.inv.id}")
                return self.outcome()
            if self.invalid >= MAX_INVALID:
                last = exp.error.removeprefix(INVALID)
                self.end("failed", f"{MAX_INVALID} invalid actions in a row (last: {last})")
                return self.outcome()
            if exp.tool == "finish" and not exp.error:
                args = FinishArgs.model_validate(exp.arguments)
                try:
                    evidence = {"supporting": args.supporting, "refuting": args.refuting}
                    scores = await self.save(args.explanation, evidence)
                except LLMError as e:
                    self.end("failed", f"scoring failed ({e}); run again with --resume {self.inv.id}")
                    return self.outcome()
                self.end("finished")
                return self.outcome(scores)

    def outcome(self, scores: list[Score] | None = None) -> Outcome:
        return Outcome(investigation=self.inv, experiments=list(self.experiments), scores=scores or [])


# -- building one --------------------------------------------------------------------------------
def open_store(db: str | Path) -> Store:
    if not Path(db).exists():
        raise UserError(f"No store at {db}; run `autointerp record --db {db} ...` first.")
    return Store(db)


def new_investigation(unit_id: str, s: AgentSettings, mode: str) -> Investigation:
    s = resolve_mode(s, mode)
    key = json.dumps({"unit": unit_id, "s": s.model_dump(), "mode": mode, "t": time.time_ns()})
    return Investigation(
        id="inv-" + hashlib.sha1(key.encode()).hexdigest()[:12],
        unit_id=unit_id,
        agent=s.agent,
        prompt=prompt(GUIDED_PROMPT if s.agent_mode == "guided" else PROMPT).id,
        mode=mode,  # type: ignore[arg-type]
        settings=s.model_dump(),
        code_version=code_version(),
    )


def prepare(
    db: str | Path,
    unit_id: str,
    s: AgentSettings,
    *,
    mode: str = "investigate",
    resume: str | None = None,
    reader: ActReader | None = None,
    units_file: str | None = None,
    on_step: Callable[[Experiment], None] | None = None,
    **llm_options,
) -> Investigator:
    """Everything checked (store, unit, resume id, LLM specs) before the slow parts (the LLM's and the
    subject model's loads), then the investigator."""
    store = open_store(db)
    if resume:
        inv = store.get_investigation(resume)
        if inv is None:
            raise UserError(f"No investigation {resume} in {db}; `autointerp show UNIT` lists a unit's.")
        if inv.mode != mode:
            raise UserError(
                f"Investigation {resume} is an {inv.mode!r} one; resume it with `autointerp {inv.mode}`."
            )
        if inv.status == "finished" and mode == "investigate":
            raise UserError(f"Investigation {resume} has finished; start a new one without --resume.")
        budget = {k: getattr(s, k) for k in BUDGET}  # the budget given now; the rest as stored
        s = stored_settings(inv).model_copy(update=budget)
        inv.settings = s.model_dump()
        uid = inv.unit_id
    else:
        s = resolve_mode(s, mode)
        uid = find_unit(store, unit_id)
        inv = new_investigation(uid, s, mode)
    sample = sample_unit(store, uid, s.sample)  # a unit that never fired stops here
    simulator = s.simulator or s.agent
    labeller_settings = LabelSettings(
        explainer=s.agent,
        simulator=simulator,
        simulator_mode=s.simulator_mode,
        methods=[],
        scorers=s.scorers,
        sample=s.sample,
        score=s.score,
    )
    agent_llm = get_llm(s.agent, store, **llm_options)
    sim_llm = agent_llm if simulator == s.agent else get_llm(simulator, store, **llm_options)
    labeller = Labeller(store, labeller_settings, agent_llm, sim_llm)
    reader = reader or open_reader(store, sample.unit, units_file)
    toolbox = Toolbox(
        sample, store.examples(uid), reader, labeller.simulator_for(sample.unit), max_scores=s.max_scores
    )
    if not resume:
        store.put_investigation(inv)
    make = investigator_class(s, inv)
    return make(store, inv, labeller.explainer, toolbox, labeller, s, on_step=on_step)


def investigator_class(s: AgentSettings, inv: Investigation) -> type[Investigator]:
    """The free loop, or the guided protocol for an investigation whose settings say guided."""
    if s.agent_mode == "guided" and inv.mode == "investigate":
        from autointerp.agent.guided import GuidedInvestigator

        return GuidedInvestigator
    return Investigator


async def ainvestigate(db: str | Path, unit_id: str, s: AgentSettings | None = None, **kwargs) -> Outcome:
    """Investigate a recorded unit with an agent (the async core of `autointerp investigate`)."""
    return await prepare(db, unit_id, s or AgentSettings(), **kwargs).run()


def investigate(db: str | Path, unit_id: str, s: AgentSettings | None = None, **kwargs) -> Outcome:
    """Investigate a recorded unit; works with or without a running event loop."""
    from autointerp.aio import run_sync

    return run_sync(ainvestigate(db, unit_id, s, **kwargs))
