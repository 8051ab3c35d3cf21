"""Scorers: how well an explanation predicts a unit's activations. Each returns `Score` rows.

- correlation: OpenAI's definition (concatenate the held-out top + random sequences, then Pearson),
  plus top-only, random-only and per-quantile values in the details;
- detection: can a judge tell firing windows from non-firing ones given the explanation (balanced
  accuracy, as delphi; AUC, F1, precision, recall in the details);
- fuzzing: can a judge tell windows with their activating tokens marked from non-firing windows with
  as many random marks (balanced accuracy; the same details);
- embedding: does the explanation retrieve firing over non-firing windows by MiniLM similarity (AUC).
An undefined value is status "nan" with its reason; a failed LLM call, or a judge that puts less than
metrics.MASS_FLOOR of its probability on the answers, is status "failed".
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import statistics

from pydantic import BaseModel, Field

from autointerp import metrics
from autointerp.llm.base import LLM, ChatRequest, LLMError, Message, TokenProbsRequest
from autointerp.llm.util import token_probs_many
from autointerp.prompts import prompt
from autointerp.sampling import UnitSample, body_start, crop
from autointerp.simulate import ExactSimulator, JsonSimulator, Simulation, show_token
from autointerp.types import Example, Score

SCORERS = ("correlation", "detection", "fuzzing", "embedding", "counterfactual")
MOVE = 1.0  # the simulated peak must move this much (0-9 scale) in the verified direction


class ScoreSettings(BaseModel):
    n_per_quantile: int = 1  # quantile examples simulated per quantile for per-quantile correlation
    n_judge: int = 10  # positives and negatives each for detection, fuzzing and embedding
    window: int = 24  # tokens (BOS excluded) per example shown to the judges and the embedder; delphi 32
    judge_batch: int = Field(default=1, ge=1)  # numbered examples per judge prompt; delphi 5
    mark_fraction: float = 0.3  # fuzzing marks tokens >= this share of the example's own max (delphi)
    seed: int = 0

    @classmethod
    def delphi(cls, **overrides) -> ScoreSettings:
        """delphi's judge protocol: 32-token windows, 5 examples per prompt, marks at 0.3 of the max."""
        return cls(**{"window": 32, "judge_batch": 5, "mark_fraction": 0.3, **overrides})


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


class Verdicts(BaseModel):
    """A judge's verdict on each text, in the order given."""

    p_yes: list[float]  # P("1") renormalised over "1"/"0" (token probabilities), or the 1/0 answer (chat)
    mass: list[float] | None = None  # probability on "1" and "0" before renormalising (token probabilities)


def parse_answers(text: str, n: int) -> list[int]:
    """The judge's chat answer: exactly a list of `n` 1/0 digits, e.g. "[1,0,1]"; LLMError otherwise."""
    try:
        got = json.loads(text.strip())
    except json.JSONDecodeError:
        got = None
    if not isinstance(got, list) or len(got) != n or any(type(x) is not int or x not in (0, 1) for x in got):
        raise LLMError(f"the judge answered {text[:60]!r}, not a list of {n} 1/0 digits like [1,0,...]")
    return got


async def _judge(llm: LLM, template: str, explanation: str, texts: list[str], batch: int = 1) -> Verdicts:
    """The judge's verdict per text, `batch` numbered texts per prompt, answered as a list "[1,0,...]".

    With token probabilities the prompt is continued with " [" and the answers so far, and P("1") is
    read at each slot; the earlier slots hold the judge's own greedy answers (what it would have
    generated), so a prompt of k texts takes k passes. Otherwise the chat answer is parsed strictly.
    """
    p = prompt(template)
    chunks = [list(range(i, min(i + batch, len(texts)))) for i in range(0, len(texts), batch)]
    heads = [p.text(explanation=explanation, examples=[texts[i] for i in c]) for c in chunks]
    if llm.capabilities.token_probs:
        p_yes, mass = [0.0] * len(texts), [0.0] * len(texts)
        answers: list[list[str]] = [[] for _ in chunks]
        for k in range(batch):
            live = [j for j, c in enumerate(chunks) if k < len(c)]
            if not live:
                break
            reqs = []
            for j in live:
                text = heads[j] + " [" + "".join(a + "," for a in answers[j])
                reqs.append(TokenProbsRequest(prompt=text, positions=[len(text)], candidates=["1", "0"]))
            resps = await token_probs_many(llm, reqs)
            for j, r in zip(live, resps, strict=True):
                i = chunks[j][k]
                p_yes[i], mass[i] = r.probs[0]["1"], r.mass[0]
                answers[j].append("1" if p_yes[i] >= 0.5 else "0")
        return Verdicts(p_yes=p_yes, mass=mass)

    async def ask(head: str, n: int) -> list[int]:
        req = ChatRequest(messages=[Message(role="user", content=head)], max_tokens=4 * n + 8)
        return parse_answers((await llm.chat(req)).text, n)

    answered = await asyncio.gather(*(ask(h, len(c)) for h, c in zip(heads, chunks, strict=True)))
    p_yes = [0.0] * len(texts)
    for c, got in zip(chunks, answered, strict=True):
        for i, a in zip(c, got, strict=True):
            p_yes[i] = float(a)
    return Verdicts(p_yes=p_yes)


def _num(x: float) -> float | None:
    return None if math.isnan(x) else round(x, 4)


async def _classify(
    scorer: str, llm: LLM, explanation: str, texts: list[str], labels: list[int], s: ScoreSettings, **fields
) -> Score:
    """Judge the texts (shuffled by seed, so each prompt of `judge_batch` mixes classes) and score them.

    Value: balanced accuracy of the verdicts (P("1") >= 0.5, or the 1/0 answer), delphi's headline.
    Details: AUC over P("1") (token probabilities only), F1, precision, recall, confusion counts, and
    the median / min probability mass the judge put on "1"/"0". Status `failed` when that median is
    below MASS_FLOOR; `nan` without both classes or when the judge gives every text the same verdict.
    """
    order = list(range(len(texts)))
    random.Random(s.seed).shuffle(order)
    shuffled = await _judge(llm, f"{scorer}.j2", explanation, [texts[i] for i in order], s.judge_batch)
    p_yes, mass = [0.0] * len(texts), None
    for k, i in enumerate(order):
        p_yes[i] = shuffled.p_yes[k]
    c = metrics.classification(labels, [int(p >= 0.5) for p in p_yes])
    details: dict = {
        "labels": labels,
        "p_yes": [round(p, 4) for p in p_yes],
        "n_pos": sum(labels),
        "n_neg": len(labels) - sum(labels),
        **{k: _num(v) if isinstance(v, float) else v for k, v in c.model_dump().items()},
        "judge_batch": s.judge_batch,
    }
    if shuffled.mass is not None:
        mass = [0.0] * len(texts)
        for k, i in enumerate(order):
            mass[i] = shuffled.mass[k]
        details["auc"] = _num(metrics.auc(labels, p_yes))
        details["mass_median"] = round(statistics.median(mass), 4) if mass else None
        details["mass_min"] = round(min(mass), 4) if mass else None
        if mass and statistics.median(mass) < metrics.MASS_FLOOR:
            reason = (
                f'the judge put a median {statistics.median(mass):.3f} of its probability on "1"/"0"; '
                f"below the floor {metrics.MASS_FLOOR}"
            )
            return Score(scorer=scorer, value=None, status="failed", reason=reason, details=details, **fields)
    if not details["n_pos"] or not details["n_neg"]:
        return _score(scorer, math.nan, "needs firing and non-firing windows", details=details, **fields)
    if len(set(p_yes)) == 1:
        what = f'P("1") = {p_yes[0]:.3f}' if mass is not None else f"answered {int(p_yes[0])}"
        reason = f"the judge gave every text the same verdict ({what}): it does not discriminate"
        return _score(scorer, math.nan, reason, details=details, **fields)
    return _score(scorer, c.balanced_accuracy, "", details=details, **fields)


def body(e: Example) -> Example:
    """The example without a leading special token (BOS): not an activation of interest."""
    if len(e.acts) > 1 and body_start(e):
        ctx = e.context.model_copy(
            update={"token_ids": e.context.token_ids[1:], "tokens": e.context.tokens[1:]}
        )
        return e.model_copy(update={"context": ctx, "acts": e.acts[1:]})
    return e


def window(e: Example, n: int) -> tuple[list[str], list[float]]:
    """The BOS-free window of `n` tokens around the example's peak that a judge or embedder sees."""
    return crop(body(e), n)


def _text(e: Example, n: int) -> str:
    return show_token("".join(window(e, n)[0]))


def _spread(pool: list[Example], n: int) -> list[Example]:
    """n windows spread evenly over the activation quantiles of `pool` (round robin, lowest first)."""
    by_q: dict[int, list[Example]] = {}
    for e in pool:
        by_q.setdefault(e.quantile or 0, []).append(e)
    qs = sorted(by_q)
    rounds = [
        by_q[q][i] for i in range(max(map(len, by_q.values()), default=0)) for q in qs if i < len(by_q[q])
    ]
    if n < len(qs):  # fewer positives than quantiles: one from each of n quantiles spread over the range
        return [rounds[(k * len(qs)) // n] for k in range(n)]
    return rounds[:n]


def classes(sample: UnitSample, n: int) -> tuple[list[Example], list[Example]]:
    """Positives and negatives (up to n each) for the judges and the embedder, separated by activation.

    Negatives: the sample's non-firing windows. Positives: quantile windows (the held-out top windows
    if none) spread evenly over the quantiles, among those that peak above the fire threshold and above
    every negative. A dense GELU neuron is slightly positive almost everywhere, so its lowest quantiles
    of "firing" windows peak below the random windows that serve as its negatives (up to a quarter of
    its max, sampling.low_fraction); mixed in, they made detection score below chance.
    """
    neg = sample.negatives[:n]
    floor = max([sample.unit.stats.fire_threshold] + [body(e).max_act for e in neg])
    pool = sample.quantile or [e for e in sample.test if e.kind == "top"]
    return _spread([e for e in pool if body(e).max_act > floor], n), neg


async def detection(llm: LLM, explanation: str, sample: UnitSample, s: ScoreSettings, **fields) -> Score:
    """Does the judge, given the explanation, tell firing windows from non-firing ones? (delphi detection)

    Positives and negatives: `classes`. Value and details as in `_classify`.
    """
    pos, neg = classes(sample, s.n_judge)
    texts = [_text(e, s.window) for e in pos + neg]
    labels = [1] * len(pos) + [0] * len(neg)
    score = await _classify("detection", llm, explanation, texts, labels, s, **fields)
    score.details["quantiles"] = [e.quantile for e in pos]
    return score


def _marked(tokens: list[str], marks: set[int]) -> str:
    return show_token("".join(f"[[{t}]]" if i in marks else t for i, t in enumerate(tokens)))


def fuzz_marks(
    pos: list[Example], neg: list[Example], s: ScoreSettings
) -> tuple[list[list[str]], list[set[int]]]:
    """Windows and the positions marked in each: correct (pos) then incorrect (neg).

    Correct: every token at or above `mark_fraction` of that window's own maximum (so every example is
    marked; delphi's threshold 0.3). Incorrect: a non-firing window with ceil(mean number of marks of
    the correct examples) marks at random positions (seeded), the rule of delphi's default fuzzing,
    which counts an activating example's non-zero tokens instead of its marks.
    """
    rng = random.Random(s.seed)
    tokens, marks = [], []
    for e in pos:
        toks, acts = window(e, s.window)
        tokens.append(toks)
        marks.append({i for i, a in enumerate(acts) if a >= s.mark_fraction * max(acts)})
    n_marks = math.ceil(statistics.fmean(map(len, marks))) if marks else 1
    for e in neg:
        toks = window(e, s.window)[0]
        tokens.append(toks)
        marks.append(set(rng.sample(range(len(toks)), min(n_marks, len(toks)))))
    return tokens, marks


async def fuzzing(llm: LLM, explanation: str, sample: UnitSample, s: ScoreSettings, **fields) -> Score:
    """Are the marked tokens the ones the explanation describes? (delphi fuzzing)

    Correct examples: quantile windows with their own activating tokens marked; incorrect: non-firing
    windows with as many random marks (`fuzz_marks`). This is delphi's default `fuzz_type`; delphi's
    "active" variant instead marks non-activating tokens of activating windows, which asks whether
    the judge can place the feature inside a text it fires on (our fuzzing@1 did that). Value and
    details as in `_classify`.
    """
    pos, neg = classes(sample, s.n_judge)
    tokens, marks = fuzz_marks(pos, neg, s)
    texts = [_marked(t, m) for t, m in zip(tokens, marks, strict=True)]
    labels = [1] * len(pos) + [0] * len(neg)
    score = await _classify("fuzzing", llm, explanation, texts, labels, s, **fields)
    score.details["marks"] = [len(m) for m in marks]
    return score


async def embedding(explanation: str, sample: UnitSample, s: ScoreSettings, **fields) -> Score:
    """Does the explanation retrieve firing over non-firing windows by MiniLM cosine similarity? (AUC)"""
    from autointerp.embed import embed

    pos, neg = classes(sample, s.n_judge)
    vecs = embed([explanation] + ["".join(window(e, s.window)[0]) for e in pos + neg])
    sims = [float(x) for x in vecs[1:] @ vecs[0]]
    labels = [1] * len(pos) + [0] * len(neg)
    details = {"labels": labels, "similarity": [round(x, 4) for x in sims]}
    if pos and neg and len(set(sims)) == 1:
        reason = f"every window is equally similar to the explanation ({sims[0]:.3f})"
        return _score("embedding", math.nan, reason, details=details, **fields)
    value = metrics.auc(labels, sims)
    return _score("embedding", value, "needs firing and non-firing windows", details=details, **fields)


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
