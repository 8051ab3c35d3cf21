"""Scorers: how well an explanation predicts a unit's activations. Each returns `Score` rows.

- correlation: OpenAI's definition (concatenate the held-out top + random sequences, then Pearson),
  plus top-only, random-only and per-quantile values in the details;
- detection: can a judge tell firing windows from non-firing ones given the explanation (AUC);
- fuzzing: can a judge tell correctly marked activating tokens from randomly marked ones (AUC);
- embedding: does the explanation retrieve firing over non-firing windows by MiniLM similarity (AUC).
An undefined value is status "nan" with its reason; a failed LLM call is status "failed".
"""

from __future__ import annotations

import math
import random
import statistics

from pydantic import BaseModel

from autointerp import metrics
from autointerp.explain import MARK_AT, marked
from autointerp.llm.base import LLM, ChatRequest, LLMError, Message, TokenProbsRequest
from autointerp.prompts import prompt
from autointerp.sampling import UnitSample, crop
from autointerp.simulate import ExactSimulator, JsonSimulator, Simulation, show_token
from autointerp.types import Example, Score

SCORERS = ("correlation", "detection", "fuzzing", "embedding", "counterfactual")
MOVE = 1.0  # the simulated peak must move this much (0-9 scale) in the verified direction


class ScoreSettings(BaseModel):
    n_per_quantile: int = 1  # quantile examples simulated per quantile for per-quantile correlation
    n_judge: int = 10  # positives and negatives each for detection and fuzzing
    window: int = 24  # tokens shown per example to the detection / fuzzing judge and the embedder
    seed: int = 0


def _score(scorer: str, value: float, reason: str, **fields) -> Score:
    if math.isnan(value):
        return Score(scorer=scorer, value=None, status="nan", reason=reason, **fields)
    return Score(scorer=scorer, value=value, status="ok", **fields)


def failed(scorer: str, error: Exception, **fields) -> Score:
    return Score(
        scorer=scorer, value=None, status="failed", reason=f"{type(error).__name__}: {error}", **fields
    )


def _corr(sims: list[Simulation]) -> float:
    return metrics.correlation([s.true for s in sims], [s.expected for s in sims])


def scale_mass(sims: list[Simulation]) -> dict | None:
    """Median and min over every simulated token of the probability on the scale tokens (exact mode)."""
    masses = [m for x in sims if x.mass is not None for m in x.mass]
    if not masses:
        return None
    return {"median": round(statistics.median(masses), 6), "min": round(min(masses), 6), "n": len(masses)}


def below_floor(scorer: str, mass: dict | None, details: dict, **fields) -> Score | None:
    """A failed score when the read-out saw too little probability on the scale (never a number)."""
    if mass is None or mass["median"] >= metrics.MASS_FLOOR:
        return None
    reason = (
        f"the simulator put a median {mass['median']:.3g} of its probability on the scale tokens 0-9, "
        f"below the floor {metrics.MASS_FLOOR}: its prediction would be read from noise"
    )
    return Score(scorer=scorer, value=None, status="failed", reason=reason, details=details, **fields)


async def correlation(
    sim: ExactSimulator | JsonSimulator,
    explanation: str,
    sample: UnitSample,
    s: ScoreSettings,
    **fields,
) -> Score:
    by_q: dict[int, list[Example]] = {}
    for e in sample.quantile:
        by_q.setdefault(e.quantile or 0, []).append(e)
    q_examples = [e for q in sorted(by_q) for e in by_q[q][: s.n_per_quantile]]
    sims = await sim.simulate(explanation, sample.test + q_examples)
    test, q_sims = sims[: len(sample.test)], sims[len(sample.test) :]
    value = _corr(test)
    details = {
        "top_only": _corr([x for x in test if x.kind == "top"]),
        "random_only": _corr([x for x in test if x.kind == "random"]),
        "per_quantile": {
            str(q): _corr([x for x in q_sims if x.rank in {e.rank for e in by_q[q]}]) for q in by_q
        },
        "n_test": len(test),
        "predicted": [[round(v, 3) for v in x.expected] for x in test],
        "examples": [[x.kind, x.rank] for x in test],
        "scale_mass": scale_mass(sims),
    }
    floor = below_floor("correlation", details["scale_mass"], details, **fields)
    return floor or _score("correlation", value, "simulation or truth is constant", details=details, **fields)


async def _judge(llm: LLM, template: str, explanation: str, texts: list[str]) -> list[float]:
    """P(yes) per text from token probabilities where available, else the judge's 1/0 answer."""
    p = prompt(template)
    reqs_text = [p.text(explanation=explanation, text=t) for t in texts]
    if llm.capabilities.token_probs:
        reqs = [TokenProbsRequest(prompt=r, positions=[len(r)], candidates=["1", "0"]) for r in reqs_text]
        many = getattr(llm, "token_probs_many", None)
        resps = await many(reqs) if many else [await llm.token_probs(r) for r in reqs]
        return [r.probs[0]["1"] for r in resps]
    out = []
    for r in reqs_text:
        resp = await llm.chat(ChatRequest(messages=[Message(role="user", content=r)], max_tokens=3))
        answer = resp.text.strip()[:1]
        if answer not in ("0", "1"):
            raise LLMError(f"the judge answered {resp.text[:40]!r}, not 1 or 0")
        out.append(float(answer))
    return out


def _text(e: Example, window: int) -> str:
    return show_token("".join(crop(e, window)[0]))


def _positives(sample: UnitSample, n: int) -> list[Example]:
    """Firing windows spread over the activation quantiles (the held-out top ones if none)."""
    pool = sample.quantile or [e for e in sample.test if e.kind == "top"]
    step = max(1, len(pool) // n)
    return pool[::step][:n]


async def detection(llm: LLM, explanation: str, sample: UnitSample, s: ScoreSettings, **fields) -> Score:
    pos, neg = _positives(sample, s.n_judge), sample.negatives[: s.n_judge]
    texts = [_text(e, s.window) for e in pos + neg]
    probs = await _judge(llm, "detection.j2", explanation, texts)
    labels = [1] * len(pos) + [0] * len(neg)
    value = metrics.auc(labels, probs)
    details = {"labels": labels, "p_yes": [round(p, 4) for p in probs]}
    return _score("detection", value, "needs firing and non-firing windows", details=details, **fields)


def _fuzzed(e: Example, unit_max: float, window: int, rng: random.Random) -> str:
    """The same window with as many marks as it has activating tokens, put on non-activating ones."""
    tokens, acts = crop(e, window)
    hot = [i for i, a in enumerate(acts) if a >= MARK_AT * unit_max]
    cold = [i for i, a in enumerate(acts) if a < MARK_AT * unit_max]
    chosen = set(rng.sample(cold, min(len(hot) or 1, len(cold))))
    return "".join(f"[[{t}]]" if i in chosen else t for i, t in enumerate(tokens))


async def fuzzing(llm: LLM, explanation: str, sample: UnitSample, s: ScoreSettings, **fields) -> Score:
    rng = random.Random(s.seed)
    pos = _positives(sample, s.n_judge)
    unit_max = sample.unit.stats.max
    texts = [show_token(marked(e, unit_max, s.window)) for e in pos]
    texts += [show_token(_fuzzed(e, unit_max, s.window, rng)) for e in pos]
    probs = await _judge(llm, "fuzzing.j2", explanation, texts)
    labels = [1] * len(pos) + [0] * len(pos)
    value = metrics.auc(labels, probs)
    details = {"labels": labels, "p_yes": [round(p, 4) for p in probs]}
    return _score("fuzzing", value, "needs activating examples", details=details, **fields)


async def embedding(explanation: str, sample: UnitSample, s: ScoreSettings, **fields) -> Score:
    import numpy as np

    from autointerp.embed import embed

    pos, neg = _positives(sample, s.n_judge), sample.negatives[: s.n_judge]
    vecs = embed([explanation] + ["".join(crop(e, s.window)[0]) for e in pos + neg])
    sims = (vecs[1:] @ vecs[0]).tolist()
    labels = [1] * len(pos) + [0] * len(neg)
    value = metrics.auc(labels, sims)
    details = {"labels": labels, "similarity": [round(float(x), 4) for x in np.asarray(sims)]}
    return _score(
        "embedding",
        value,
        "needs firing and non-firing windows",
        details=details,
        **fields,
    )


async def counterfactual(
    sim: ExactSimulator | JsonSimulator, explanation: str, sample: UnitSample, s: ScoreSettings, **fields
) -> Score:
    """Precision: does the simulator, given the explanation, predict that a verified edit moves the peak?

    Value: the share of verified counterfactual pairs where the simulated peak moves by at least MOVE
    in the verified direction (down for `off` edits, up for `on` edits). NaN without counterfactuals.
    """
    pairs = sample.counterfactual_pairs
    if not pairs:
        return _score("counterfactual", math.nan, "no verified counterfactual examples", **fields)
    sims = await sim.simulate(explanation, [e for pair in pairs for e in pair])
    rows, hits = [], 0
    for i, (src, edit) in enumerate(pairs):
        before, after = max(sims[2 * i].expected), max(sims[2 * i + 1].expected)
        down = edit.provenance.get("direction") == "off"
        moved = (before - after >= MOVE) if down else (after - before >= MOVE)
        hits += moved
        rows.append(
            {
                "direction": "off" if down else "on",
                "sim_before": round(before, 3),
                "sim_after": round(after, 3),
                "true_before": src.max_act,
                "true_after": edit.max_act,
                "moved": moved,
            }
        )
    details = {"pairs": rows, "scale_mass": scale_mass(sims)}
    floor = below_floor("counterfactual", details["scale_mass"], details, **fields)
    return floor or _score("counterfactual", hits / len(pairs), "", details=details, **fields)
