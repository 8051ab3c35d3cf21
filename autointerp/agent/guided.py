"""The guided investigation: the code drives hypothesis -> experiment -> revision; the LLM writes only
short plain text (hypotheses, one revision), never JSON, so a small model that cannot drive tools still
investigates.

The protocol, each step one stored experiment (the same `investigations` / `experiments` rows as the
free loop, so `show`, `--resume` and the bulk method work alike):

1. `examples(top)` and `tokens`: the explain split's top windows and the tokens the unit fires on, with
   counts and the token before each (the test split stays unreachable: the same tools as the free loop).
   `name`: the LLM names what those tokens have in common; the code adds candidates it builds from the
   measured tokens (agent/measured.py): 'CATEGORY right after "TOKEN"' when one token comes before most
   of them (and 'the "B" in "AB"' when one word fires after it), 'CATEGORY, such as A, B and C', a
   graded one for numbers whose activation follows their value, and the form they share.
2. `propose`: the LLM writes K distinct hypotheses, one per line (parsed robustly; empty, duplicate,
   id-like, pasted-example lines are dropped; one retry when none is left).
3. `highlight` (with `with_highlight`): the one-shot highlight explainer's answer on the same explain
   split is one more candidate, scored first, so the final explanation never scores below it on the
   explain split.
4. `score` each candidate (the score tool: calibrated simulation + correlation on explain-split windows).
5. `revise`: the LLM sees the best hypothesis, its correlation and misses (tokens it fired on but the
   simulation predicted low; tokens predicted high where it stayed silent) and writes one revision,
   which is scored; when a context was measured and the best lacks it, 'BEST right after "TOKEN"' too.
6. `finish` with the highest-scoring hypothesis (a near-tie, within TIE, goes to a specific candidate:
   measured context, examples, grading); evidence: the experiments it came from and its score.

Budgets: `max_steps` counts every stored step, one kept for `finish`; when the steps, tokens or seconds
run out the investigation finishes with the best hypothesis so far (finishing costs no LLM call), or
ends `exhausted` when there is none yet. Resuming re-derives the next step from the stored experiments.
"""

from __future__ import annotations

import re
import time

from pydantic import BaseModel

from autointerp.agent.loop import GUIDED_PROMPT, INVALID, Investigator, Outcome
from autointerp.agent.measured import bigram, grading, listed, shape, usual_context
from autointerp.agent.tools import (
    ExamplesArgs,
    FinishArgs,
    HypothesesResult,
    ScoreArgs,
    ScoreResult,
    TokenCount,
    TokensArgs,
    TokensResult,
    ToolError,
)
from autointerp.explain import ExplainSettings, parse_explanation
from autointerp.explain import render as render_explainer
from autointerp.llm.base import ChatRequest, ChatResponse, LLMError, Message
from autointerp.prompts import prompt
from autointerp.render import show_token
from autointerp.types import Experiment

N_EXAMPLES = 10  # top explain-split windows read (and shown to the LLM: the first SHOWN)
TIE = 0.02  # scores this close to the best are a tie, won by a specific (measured) candidate
SHOWN = 6
MAX_WORDS = 12  # a hypothesis line longer than this is prose, not a hypothesis
RETRY = "Answer with {k} short hypotheses, one per line, each a short phrase naming a kind of token."
ID_LIKE = re.compile(r"synthetic\.|blocks\.\d|hook_|\w+/\w+/\d")


def parse_hypotheses(text: str, k: int) -> list[str]:
    """Up to `k` distinct short hypotheses, one per line: list marks, labels, quotes and a final period
    stripped; lines without a letter, duplicate, over-long, id-like, code-like or pasted-example ones
    dropped."""
    out: list[str] = []
    seen: set[str] = set()
    for raw in text.splitlines():
        line = re.sub(r"^\s*(?:[-*•]+|\(?\d+[.):]|hypothesis\s*\d*\s*[:.)-])\s*", "", raw, flags=re.I)
        line = re.sub(r"^(?:hypothesis|answer|explanation)\s*\d*\s*:\s*", "", line, flags=re.I)
        line = line.strip().strip("`*").strip()
        if len(line) > 1 and line[0] == line[-1] and line[0] in "\"'":  # quoted whole: unquote
            line = line[1:-1]
        line = line.strip().rstrip(".").strip()
        key = " ".join(line.lower().split())
        if (
            not any(c.isalpha() for c in line)
            or line.endswith(":")
            or len(line.split()) > MAX_WORDS
            or ID_LIKE.search(line)
            or any(c in line for c in "[]{}<>=")
            or key in seen
        ):
            continue
        seen.add(key)
        out.append(line[:200])
    return out[:k]


def counts(xs: list[TokenCount], n: int = 8) -> str:
    return ", ".join(f"{show_token(x.token)!r} x{x.count}" for x in xs[:n]) or "none"


class Candidate(BaseModel):
    text: str
    source: str  # the experiment id that proposed it
    specific: bool = False  # built by code from measured evidence (examples, context, grading)
    score_id: str | None = None
    correlation: float | None = None


class GuidedInvestigator(Investigator):
    """One guided investigation (or its resumption): the protocol above, over the free loop's storage."""

    def opening(self) -> list[Message]:
        return []  # each LLM turn builds its own prompt from the stored results

    # -- what the stored experiments say -----------------------------------------------------------
    def ran(self, tool: str) -> list[Experiment]:
        return [e for e in self.experiments if e.tool == tool]

    def ok(self, tool: str) -> Experiment | None:
        return next((e for e in self.ran(tool) if not e.error), None)

    def candidates(self) -> list[Candidate]:
        """Every hypothesis so far (highlight's first), each once, with its score where it has one."""
        out: dict[str, Candidate] = {}
        order = [*self.ran("highlight"), *self.ran("name"), *self.ran("propose"), *self.ran("revise")]
        for e in order:
            if e.error:
                continue
            r = HypothesesResult.model_validate(e.result)
            for h in r.hypotheses:
                out.setdefault(h.lower(), Candidate(text=h, source=e.id, specific=h in r.specific))
        for e in self.ran("score"):
            c = out.get(str(e.arguments.get("explanation", "")).lower())
            if c is not None and not e.error and c.score_id is None:
                c.score_id, c.correlation = e.id, ScoreResult.model_validate(e.result).correlation
        return list(out.values())

    def best(self) -> Candidate | None:
        """The highest-scoring candidate, a specific one winning a tie (within TIE of the best); unscored
        ones only when none was scored (the first of them)."""
        cands = self.candidates()
        scored = [(c.correlation, c) for c in cands if c.correlation is not None]
        if scored:
            top = max(r for r, _ in scored)
            return max((c for r, c in scored if r >= top - TIE), key=lambda c: (c.specific, c.correlation))
        return cands[0] if cands else None

    def tokens_result(self) -> TokensResult:
        e = self.ok("tokens")
        return TokensResult.model_validate(e.result) if e else TokensResult(n_windows=0, firing=[], before=[])

    def next_step(self) -> str:
        """The protocol's next step: a tool or LLM turn's name, or "finish"."""
        if self.ok("finish"):
            return "finish"
        if not self.ran("examples"):
            return "examples"
        if not self.ran("tokens"):
            return "tokens"
        if not self.ran("name") and self.tokens_result().firing:
            return "name"
        proposals = self.ran("propose")
        if not proposals or (len(proposals) == 1 and proposals[0].error):
            return "propose"
        if self.s.with_highlight and not self.ran("highlight"):
            return "highlight"
        left = self.s.max_steps - self.inv.steps
        cands = self.candidates()
        unscored = [c for c in cands if c.score_id is None and not self.score_failed(c)]
        if unscored and self.toolbox.scores_left > 0 and left > 1:
            return "score"
        scored = any(c.correlation is not None for c in cands)
        if scored and not self.ran("revise") and self.toolbox.scores_left > 0 and left > 2:
            return "revise"
        return "finish"

    def score_failed(self, c: Candidate) -> bool:
        return any(e.error and e.arguments.get("explanation") == c.text for e in self.ran("score"))

    def stop_reason(self) -> str | None:
        """Why no step but `finish` may run now (the budget, keeping one step for it), or None."""
        if self.s.max_steps - self.inv.steps <= 1:
            return self.over_budget(self.inv.steps + 1) or f"the step budget ({self.s.max_steps}) ran out"
        return self.over_budget(self.inv.steps)

    # -- the loop ----------------------------------------------------------------------------------
    async def run(self) -> Outcome:
        self.inv.status, self.inv.reason = "running", ""
        while True:
            step = self.next_step()
            if step != "finish" and (reason := self.stop_reason()):
                if self.best() is None or self.inv.steps >= self.s.max_steps:
                    self.end("exhausted", reason)
                    return self.outcome()
                step = "finish"
            if step == "finish":
                return await self.finish()
            try:
                await getattr(self, "do_" + step)()
            except LLMError as e:
                self.end("failed", f"the LLM failed ({e}); run again with --resume {self.inv.id}")
                return self.outcome()

    def experiment(self, tool: str, arguments: dict | None = None, thought: str = "") -> Experiment:
        """The next step's experiment (counted as a step when it is stored)."""
        return Experiment(
            id=self.next_id(),
            investigation_id=self.inv.id,
            step=self.inv.steps + 1,
            tool=tool,
            arguments=arguments or {},
            thought=thought,
        )

    def store_step(self, exp: Experiment, t0: float | None = None) -> Experiment:
        """Count and store one step (its tokens, seconds) with the investigation's row."""
        if t0 is not None:
            exp.seconds = round(time.perf_counter() - t0, 3)
        self.inv.steps += 1
        self.inv.prompt_tokens += exp.prompt_tokens
        self.inv.completion_tokens += exp.completion_tokens
        self.inv.seconds = round(self.inv.seconds + exp.seconds, 3)
        self.record(exp)
        return exp

    async def run_tool(self, tool: str, args: BaseModel, thought: str) -> Experiment:
        """A tool run by the protocol, stored as an experiment like an agent's call."""
        t0 = time.perf_counter()
        exp = self.experiment(tool, args.model_dump(), thought)
        try:
            result = await self.toolbox.run(tool, args)  # type: ignore[arg-type]
            exp.result = result.model_dump()
            shown = f"{exp.id} {tool}: {result.brief()}"  # type: ignore[attr-defined]
        except ToolError as e:
            exp.error = str(e)
            shown = f"{exp.id} {tool} failed: {e}"
        self.messages.append(Message(role="user", content=shown))
        return self.store_step(exp, t0)

    async def ask(self, tool: str, req: ChatRequest) -> tuple[Experiment, ChatResponse]:
        """One LLM turn (plain text), metered like an agent's turn; LLMError propagates, nothing stored."""
        t0 = time.perf_counter()
        messages = req.messages
        resp = await self.llm.chat(req)
        exp = self.experiment(tool)
        exp.action = resp.text
        exp.prompt_tokens, exp.completion_tokens = resp.usage.prompt_tokens, resp.usage.completion_tokens
        self.messages += [messages[-1], Message(role="assistant", content=resp.text)]
        exp.seconds = round(time.perf_counter() - t0, 3)
        return exp, resp

    def keep(
        self, exp: Experiment, hypotheses: list[str], what: str, specific: list[str] | None = None
    ) -> None:
        """Store an LLM turn: its hypotheses (with those the code built from measured evidence), or an
        invalid action when none could be read."""
        if hypotheses:
            exp.result = HypothesesResult(hypotheses=hypotheses, specific=specific or []).model_dump()
        else:
            exp.error = f"{INVALID}no usable {what} in the answer {exp.action[:80]!r}"
        self.store_step(exp)

    # -- the steps ---------------------------------------------------------------------------------
    async def do_examples(self) -> None:
        args = ExamplesArgs(kind="top", n=N_EXAMPLES)
        await self.run_tool("examples", args, "read the strongest explain-split windows")

    async def do_tokens(self) -> None:
        await self.run_tool("tokens", TokensArgs(n=20), "count the tokens it fires on")

    def shown_examples(self) -> list[str]:
        """The read windows the LLM is shown: those where the unit fires (marked) first."""
        e = self.ok("examples")
        read = e.result["examples"] if e else []
        return [x["text"] for x in sorted(read, key=lambda x: not x["active"])[:SHOWN]]

    async def do_name(self) -> None:
        """The category of the firing tokens (a list is what a small model names best), and, when one
        preceding token comes before most of them, the category right after it."""
        tokens = self.tokens_result()
        messages = prompt(GUIDED_PROMPT).messages(stage="name", firing=counts(tokens.firing, 10))
        exp, resp = await self.ask("name", ChatRequest(messages=messages, max_tokens=24, temperature=0.0))
        exp.thought = "name what the firing tokens have in common"
        found = parse_hypotheses(resp.text, 1)
        specific: list[str] = []
        if found:
            context, graded = usual_context(tokens), grading(tokens)
            specific = [
                *([f'{found[0]} right after "{context}"'] if context else []),
                *filter(None, [bigram(tokens), listed(found[0], tokens), graded and listed(graded, tokens)]),
            ]
            found += [*specific, *filter(None, [shape(tokens)])]
        self.keep(exp, found, "category", specific)

    async def do_propose(self) -> None:
        k = self.s.hypotheses
        tokens = self.tokens_result()
        messages = prompt(GUIDED_PROMPT).messages(
            stage="propose",
            k=k,
            firing=counts(tokens.firing),
            before=counts(tokens.before),
            examples=self.shown_examples(),
        )
        failed = [e for e in self.ran("propose") if e.error]
        if failed:  # the retry: its first answer and what is wanted
            messages += [
                Message(role="assistant", content=failed[0].action),
                Message(role="user", content=RETRY.format(k=k)),
            ]
        req = ChatRequest(messages=messages, max_tokens=16 * k + 16, temperature=0.0)
        exp, resp = await self.ask("propose", req)
        exp.thought = f"propose {k} hypotheses" + (" (retry)" if failed else "")
        self.keep(exp, parse_hypotheses(resp.text, k), "hypothesis")

    async def do_highlight(self) -> None:
        """The one-shot highlight explainer's request, as `label --methods highlight` sends it (a cached
        answer is reused)."""
        es = ExplainSettings(method="highlight")
        _, messages = render_explainer("highlight", self.toolbox.sample, self.s.sample.explain_window)
        req = ChatRequest(messages=messages, temperature=es.temperature, max_tokens=es.max_tokens, seed=0)
        exp, resp = await self.ask("highlight", req)
        exp.thought = "the one-shot highlight explanation, as a candidate"
        try:
            found = [parse_explanation(resp.text)]
        except LLMError:
            found = []
        found = [h for h in found if parse_hypotheses(h, 1)]  # an id or pasted example is no candidate
        self.keep(exp, found, "explanation")

    async def do_score(self) -> None:
        c = next(c for c in self.candidates() if c.score_id is None and not self.score_failed(c))
        await self.run_tool("score", ScoreArgs(explanation=c.text), f"test the hypothesis from {c.source}")

    async def do_revise(self) -> None:
        best = self.best()
        assert best is not None and best.score_id is not None
        result = ScoreResult.model_validate(next(e for e in self.experiments if e.id == best.score_id).result)
        tokens = self.tokens_result()
        others = [c.text for c in self.candidates() if c.text != best.text]
        messages = prompt(GUIDED_PROMPT).messages(
            stage="revise",
            firing=counts(tokens.firing),
            before=counts(tokens.before),
            best=best.text,
            correlation=f"{best.correlation:.2f}",
            missed=counts(result.missed),
            false_alarms=counts(result.false_alarms),
            others="; ".join(others) or "none",
        )
        exp, resp = await self.ask("revise", ChatRequest(messages=messages, max_tokens=32, temperature=0.0))
        exp.thought = f"revise {best.text!r} (correlation {best.correlation:.2f}) from its misses"
        found = parse_hypotheses(resp.text, 1)
        context = usual_context(tokens)
        kept = [f'{best.text} right after "{context}"'] if context and not best.specific else []
        if kept and not found:
            exp.thought += f"; no revision could be read, the measured context kept: {kept[0]!r}"
        self.keep(exp, found + kept, "revision", kept)

    async def finish(self) -> Outcome:
        best = self.best()
        if best is None:
            self.end("failed", "no hypothesis to finish with")
            return self.outcome()
        reads = [e.id for e in self.experiments if e.tool in ("examples", "tokens") and not e.error]
        supporting = [*reads, best.source, *([best.score_id] if best.score_id else [])]
        how = "unscored" if best.correlation is None else f"correlation {best.correlation:.3f}"
        args = FinishArgs(explanation=best.text, supporting=supporting, refuting=[])
        if not self.ok("finish"):
            t0 = time.perf_counter()
            exp = self.experiment("finish", args.model_dump(), f"the best-scoring hypothesis ({how})")
            exp.result = (await self.toolbox.run("finish", args)).model_dump()
            self.messages.append(Message(role="user", content=f"{exp.id} finish: {best.text!r} ({how})"))
            self.store_step(exp, t0)
        try:
            scores = await self.save(args.explanation, {"supporting": supporting, "refuting": []})
        except LLMError as e:
            self.end("failed", f"scoring failed ({e}); run again with --resume {self.inv.id}")
            return self.outcome()
        self.end("finished")
        return self.outcome(scores)
