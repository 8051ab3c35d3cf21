"""LLM-proposed edits: which snippets to send, asking (async, with a retry on unusable answers), and
verifying each parsed edit on the subject model."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import numpy as np
from pydantic import BaseModel

from autointerp.counterfactual.edits import ParsedEdit, load_prompt, marked_snippet, parse_edit
from autointerp.counterfactual.probe import UnitProbe, body_start
from autointerp.counterfactual.types import Candidate, CounterfactualSettings, Direction, MinimalResult
from autointerp.types import Example, SourceRef, Unit

if TYPE_CHECKING:
    from autointerp.llm import LLM


class EditJob(BaseModel):
    """A prompt to send and what its answer will be verified against."""

    direction: Direction
    source: Example
    text: str  # what the LLM must edit
    original_act: float  # max activation of `text` on the subject model
    messages: list

    def candidate(self, **fields: object) -> Candidate:
        return Candidate(
            direction=self.direction,
            source=SourceRef.of(self.source),
            original_text=self.text,
            original_act=self.original_act,
            **fields,
        )


def _snippet_range(
    ex: Example, s: CounterfactualSettings, start: int, minimal: MinimalResult | None
) -> tuple[int, int, int]:
    p = ex.max_pos
    lo = max(start, p - s.window)
    if minimal is not None:  # the minimal suffix, with at least 8 tokens of context for a readable text
        lo = max(lo, min(minimal.start, p - 8))
    return lo, p, min(len(ex.acts), p + 1 + s.tail)


def plan_jobs(
    probe: UnitProbe,
    unit: Unit,
    tops: list[Example],
    minimals: dict[int, MinimalResult],
    negatives: list[Example],
    s: CounterfactualSettings,
) -> tuple[list[EditJob], list[Candidate]]:
    """`off` jobs for the top examples, `on` jobs for `n_on` negatives; snippets that (after
    retokenizing) already fail the premise are returned as skipped candidates instead."""
    bos = probe.subject.bos_id
    off_prompt, on_prompt = load_prompt("counterfactual_off"), load_prompt("counterfactual_on")
    plans: list[tuple[Direction, Example, str, list]] = []
    for ex in tops:
        lo, p, hi = _snippet_range(ex, s, body_start(ex.context.token_ids, bos), minimals.get(ex.rank))
        plain, marked = marked_snippet(ex.context.tokens, lo, p, hi)
        plans.append(("off", ex, plain, off_prompt.messages(text=marked)))
    shown = []
    for ex in tops[:4]:
        start, p = body_start(ex.context.token_ids, bos), ex.max_pos
        shown.append(" ".join(marked_snippet(ex.context.tokens, max(start, p - 10), p, p + 3)[1].split()))
    for ex in negatives[: s.n_on]:
        start = body_start(ex.context.token_ids, bos)
        plain = "".join(ex.context.tokens[start : start + s.window])
        plans.append(("on", ex, plain, on_prompt.messages(examples=shown, text=plain)))
    originals = probe.acts([probe.encode(text) for _, _, text, _ in plans])
    jobs, skipped = [], []
    for (direction, ex, text, msgs), acts in zip(plans, originals, strict=True):
        body = acts[body_start(probe.encode(text), bos) :]
        orig = float(body.max()) if len(body) else 0.0
        job = EditJob(direction=direction, source=ex, text=text, original_act=orig, messages=msgs)
        if direction == "off" and orig <= 0:
            skipped.append(job.candidate(status="skipped", reason="the retokenized snippet does not fire"))
        elif direction == "on" and orig > s.on_frac * unit.stats.max:
            skipped.append(job.candidate(status="skipped", reason="the snippet already fires"))
        else:
            jobs.append(job)
    return jobs, skipped


async def ask(llm: LLM, jobs: list[EditJob], s: CounterfactualSettings) -> list[str | Exception]:
    """Each job's final answer. An unusable answer is sent back once per retry with the reason (the
    conversation grows, so the request and its cache entry differ); an LLM error ends that job, and an
    `OutOfCreditError` ends them all."""
    from autointerp.llm import ChatRequest, LLMError, Message, OutOfCreditError

    async def one(job: EditJob) -> str | Exception:
        msgs = list(job.messages)
        for attempt in range(s.retries + 1):
            req = ChatRequest(messages=msgs, temperature=s.temperature, max_tokens=s.max_tokens, seed=0)
            try:
                answer = (await llm.chat(req)).text
            except OutOfCreditError:
                raise  # no further call can succeed: stop, not one failed job per unit
            except LLMError as e:
                return e
            err = parse_edit(answer, job.text, s.max_edit_frac).error
            if not err or attempt == s.retries:
                return answer
            fix = "change or remove the marked word" if job.direction == "off" else "add one fitting word"
            msgs += [
                Message(role="assistant", content=answer),
                Message(role="user", content=f"Not usable: {err}. Try again: {fix}. One line: EDITED: ..."),
            ]
        return answer

    return list(await asyncio.gather(*(one(j) for j in jobs)))


def verify(
    probe: UnitProbe,
    unit: Unit,
    jobs: list[EditJob],
    answers: list[str | Exception],
    s: CounterfactualSettings,
) -> list[tuple[Candidate, list[int] | None, np.ndarray | None]]:
    """Parse each answer and run the edit through the subject model; keep the verdict and the acts."""
    parsed = [
        ParsedEdit(text=None, error=f"LLM call failed: {a}")
        if isinstance(a, Exception)
        else parse_edit(a, j.text, s.max_edit_frac)
        for j, a in zip(jobs, answers, strict=True)
    ]
    seqs = [probe.encode(p.text) for p in parsed if p.text is not None]
    acts = iter(probe.acts(seqs))
    seqs_it = iter(seqs)
    out = []
    for job, answer, edit in zip(jobs, answers, parsed, strict=True):
        if edit.text is None:
            status = "llm_error" if isinstance(answer, Exception) else "parse_failed"
            raw = "" if isinstance(answer, Exception) else answer[:300]
            out.append((job.candidate(status=status, reason=edit.error, raw=raw), None, None))
            continue
        ids, a = next(seqs_it), next(acts)
        body = a[body_start(ids, probe.subject.bos_id) :]
        new = float(body.max()) if len(body) else 0.0
        if job.direction == "off":
            ok = new < s.off_frac * job.original_act
            reason = "" if ok else f"max {new:.3g} is not below {s.off_frac:.0%} of {job.original_act:.3g}"
        else:
            target = s.on_frac * unit.stats.max
            ok = new > target
            reason = (
                "" if ok else f"max {new:.3g} is not above {s.on_frac:.0%} of the unit max ({target:.3g})"
            )
        status = "verified" if ok else "not_moved"
        cand = job.candidate(edited_text=edit.text, edited_act=new, status=status, reason=reason)
        out.append((cand, ids, a))
    return out
