"""Stepwise read-out for any backend with token probabilities.

`read_stepwise(llm, requests)` serves `StepwiseRequest`s through `llm.stepwise_many`: natively where
the backend overrides it (the local backend: one key/value cache per row, one forward step per
position), and otherwise (the protocol's default, `stepwise_via_token_probs`) one `token_probs`
request per step with the full prefix (any OpenAI-compatible server with prompt logprobs; servers
that cache prompt prefixes make this cheap).
"""

from __future__ import annotations

from autointerp.llm.base import (
    LLM,
    LLMError,
    StepwiseRequest,
    StepwiseResponse,
    TokenProbsRequest,
    Usage,
)


def follow(probs: list[float]) -> int:
    """Index of the candidate a stepwise listing continues with: the most likely (first on a tie)."""
    return max(range(len(probs)), key=probs.__getitem__)


async def stepwise_via_token_probs(llm: LLM, requests: list[StepwiseRequest]) -> list[StepwiseResponse]:
    """Step t of every request in one `token_probs` batch, each prompt the full prefix up to that step."""
    if not llm.capabilities.token_probs:
        raise LLMError(f"{llm.spec} gives no token probabilities; a stepwise read-out needs them.")
    probs: list[list[dict[str, float]]] = [[] for _ in requests]
    mass: list[list[float]] = [[] for _ in requests]
    chosen: list[list[str]] = [[] for _ in requests]
    usage = [Usage() for _ in requests]
    for t in range(max((len(r.steps) for r in requests), default=0)):
        live = [i for i, r in enumerate(requests) if t < len(r.steps)]
        reqs = []
        for i in live:
            text = requests[i].prefix(chosen[i])
            reqs.append(
                TokenProbsRequest(prompt=text, positions=[len(text)], candidates=requests[i].candidates)
            )
        for i, resp in zip(live, await llm.token_probs_many(reqs), strict=True):
            probs[i].append(resp.probs[0])
            mass[i].append(resp.mass[0])
            dist = resp.probs[0]
            chosen[i].append(requests[i].candidates[follow([dist[c] for c in requests[i].candidates])])
            usage[i].prompt_tokens += resp.usage.prompt_tokens
            usage[i].completion_tokens += 1
            usage[i].latency_s += resp.usage.latency_s
            usage[i].cached = usage[i].cached or resp.usage.cached
    return [
        StepwiseResponse(
            probs=probs[i],
            mass=mass[i],
            chosen=chosen[i],
            model=llm.model,
            backend=llm.backend,
            usage=usage[i],
        )
        for i in range(len(requests))
    ]


async def read_stepwise(llm: LLM, requests: list[StepwiseRequest]) -> list[StepwiseResponse]:
    """Serve stepwise requests natively where the backend can, else through `token_probs`."""
    return list(await llm.stepwise_many(requests))
