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

A `Scorer` takes one `ScoreRecord` (an explanation, the unit's sample, provenance) and returns one
`Score`; scorers are registered by name in `SCORERS` (the `--scorers` of `label` and `bench`), each
built from the run's simulator and simulator LLM.
"""

from __future__ import annotations

import json
import math
import random
import statistics
from collections.abc import Callable, Iterator
from typing import Protocol, runtime_checkable

from pydantic import BaseModel, Field

from autointerp import metrics
from autointerp.aio import gather_all
from autointerp.llm.base import LLM, ChatRequest, LLMError, Message, TokenProbsRequest
from autointerp.prompts import prompt
from autointerp.registry import Registry
from autointerp.render import body, marked_at, window, window_text
from autointerp.sampling import UnitSample
from autointerp.simulate import Simulation, Simulator
from autointerp.types import Example, Score

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


def sim_correlation(sims: list[Simulation]) -> float:
    """Pearson correlation of the simulations' predictions with the truth, all tokens concatenated."""
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
    sim: Simulator,
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
    value = sim_correlation(test)
    details = {
        "top_only": sim_correlation([x for x in test if x.kind == "top"]),
        "random_only": sim_correlation([x for x in test if x.kind == "random"]),
        "per_quantile": {
            str(q): sim_correlation([x for x in q_sims if x.rank in {e.rank for e in by_q[q]}])
            for q in (by_q if s.n_per_quantile else ())
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
            resps = await llm.token_probs_many(reqs)
            for j, r in zip(live, resps, strict=True):
                i = chunks[j][k]
                p_yes[i], mass[i] = r.probs[0]["1"], r.mass[0]
                answers[j].append("1" if p_yes[i] >= 0.5 else "0")
        return Verdicts(p_yes=p_yes, mass=mass)

    async def ask(head: str, n: int) -> list[int]:
        req = ChatRequest(
            messages=[Message(role="user", content=head)], max_tokens=4 * n + 8, json_answer=True
        )
        return parse_answers((await llm.chat(req)).text, n)

    answered = await gather_all(*(ask(h, len(c)) for h, c in zip(heads, chunks, strict=True)))
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
    if len({int(p >= 0.5) for p in p_yes}) == 1:  # one verdict for every text: no balanced accuracy
        if mass is None:
            what = f"answered {int(p_yes[0])}"
        elif len(set(p_yes)) == 1:
            what = f'P("1") = {p_yes[0]:.3f}'
        else:  # the probabilities may still rank the texts: their AUC stays in the details
            what = f'P("1") {min(p_yes):.3f}-{max(p_yes):.3f}, AUC over it {details["auc"]} in the details'
        reason = f"the judge gave every text the same verdict ({what}): it does not discriminate"
        return _score(scorer, math.nan, reason, details=details, **fields)
    return _score(scorer, c.balanced_accuracy, "", details=details, **fields)


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
    texts = [window_text(e, s.window) for e in pos + neg]
    labels = [1] * len(pos) + [0] * len(neg)
    score = await _classify("detection", llm, explanation, texts, labels, s, **fields)
    score.details["quantiles"] = [e.quantile for e in pos]
    return score


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
    texts = [marked_at(t, m) for t, m in zip(tokens, marks, strict=True)]
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
    sim: Simulator, explanation: str, sample: UnitSample, s: ScoreSettings, **fields
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


# -- the seam: one record in, one Score out ------------------------------------------------------------
class ScoreRecord(BaseModel):
    """What a scorer reads: the explanation, the unit's sample, and the provenance its Score carries."""

    explanation: str
    sample: UnitSample
    settings: ScoreSettings = Field(default_factory=ScoreSettings)
    explanation_id: str = ""
    unit_id: str = ""
    run_id: str | None = None
    recorded: dict = Field(default_factory=dict)  # the settings stored with every row

    def row(self, scorer: Scorer) -> dict:
        """The fields every Score of `scorer` on this record carries."""
        return {
            "explanation_id": self.explanation_id,
            "unit_id": self.unit_id,
            "run_id": self.run_id,
            "settings": self.recorded,
            "simulator": scorer.source,
            "prompt": scorer.prompt,
        }


@runtime_checkable
class Scorer(Protocol):
    """One ScoreRecord in, one Score out; a failed LLM call raises LLMError (stored as `failed`)."""

    name: str
    source: str  # the simulator / judge / embedder that measures, stored as Score.simulator
    prompt: str  # its prompt template name@version, stored as Score.prompt ("" without one)

    async def __call__(self, record: ScoreRecord) -> Score: ...


def result(
    scorer: Scorer, record: ScoreRecord, value: float, reason: str = "", details: dict | None = None
) -> Score:
    """The Score of `scorer` on `record`: status ok, or nan (with `reason`) when `value` is NaN."""
    return _score(scorer.name, value, reason, details=details or {}, **record.row(scorer))


class _Scorers(Registry[Callable[[Simulator, LLM], Scorer]]):
    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


SCORERS = _Scorers("scorer")  # name -> factory(simulator, simulator LLM)


class _Simulated:
    """Scores the run's simulator's predictions."""

    def __init__(self, simulator: Simulator, llm: LLM):
        self.simulator = simulator
        self.source, self.prompt = f"{llm.spec}#{simulator.name}", simulator.prompt.id


class _Judged:
    """Asks the simulator LLM, as a judge, with the prompt template named after the scorer."""

    name = ""

    def __init__(self, simulator: Simulator, llm: LLM):
        self.llm, self.source, self.prompt = llm, llm.spec, prompt(f"{self.name}.j2").id


@SCORERS.register("correlation")
class CorrelationScorer(_Simulated):
    name = "correlation"

    async def __call__(self, r: ScoreRecord) -> Score:
        return await correlation(self.simulator, r.explanation, r.sample, r.settings, **r.row(self))


@SCORERS.register("detection")
class DetectionScorer(_Judged):
    name = "detection"

    async def __call__(self, r: ScoreRecord) -> Score:
        return await detection(self.llm, r.explanation, r.sample, r.settings, **r.row(self))


@SCORERS.register("fuzzing")
class FuzzingScorer(_Judged):
    name = "fuzzing"

    async def __call__(self, r: ScoreRecord) -> Score:
        return await fuzzing(self.llm, r.explanation, r.sample, r.settings, **r.row(self))


@SCORERS.register("embedding")
class EmbeddingScorer:
    name, source, prompt = "embedding", "local:all-minilm-l6-v2", ""

    def __init__(self, simulator: Simulator, llm: LLM):
        pass

    async def __call__(self, r: ScoreRecord) -> Score:
        return await embedding(r.explanation, r.sample, r.settings, **r.row(self))


@SCORERS.register("counterfactual")
class CounterfactualScorer(_Simulated):
    name = "counterfactual"

    async def __call__(self, r: ScoreRecord) -> Score:
        return await counterfactual(self.simulator, r.explanation, r.sample, r.settings, **r.row(self))
