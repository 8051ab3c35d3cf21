"""Detection and fuzzing judges with a scripted LLM: the metrics, the marks, nan / failed verdicts."""

import asyncio
import math
import re

import numpy as np
import pytest

from autointerp import metrics
from autointerp import score as scoring
from autointerp.bench.report import tables
from autointerp.bench.run import (
    RANDOM,
    BenchResult,
    BenchSettings,
    MethodRow,
    ScorerStat,
    random_explanations,
)
from autointerp.llm.base import LLM, Capabilities, ChatResponse, LLMError, TokenProbsResponse
from autointerp.sampling import UnitSample
from autointerp.types import Context, Example, Unit, UnitRef, UnitStats

UNIT = "m/h/0"
F = {"explanation_id": "exp-1", "unit_id": UNIT}  # the fields every stored score carries
WORDS = ["the", "cat", "sat", "on", "a", "mat", "by", "door", "and", "then"]


def ex(kind: str, rank: int, tokens: list[str], acts: list[float], quantile: int | None = None) -> Example:
    ctx = Context(id=f"{kind}{rank}", token_ids=list(range(len(tokens))), tokens=tokens)
    return Example(unit_id=UNIT, kind=kind, rank=rank, context=ctx, acts=acts, quantile=quantile)


def firing(rank: int, q: int, peak: float) -> Example:
    """A BOS-led window where " March" fires at `peak` and " in" (before it) at a quarter of it."""
    tokens = ["<bos>"] + [" " + w for w in WORDS] + [" in", " March"] + [" " + w for w in WORDS]
    acts = [50.0] + [0.0] * len(WORDS) + [peak / 4, peak] + [0.0] * len(WORDS)
    return ex("quantile", rank, tokens, acts, quantile=q)


def quiet(rank: int) -> Example:
    tokens = ["<bos>"] + [" " + w for w in WORDS * 2]
    return ex("negative", rank, tokens, [50.0] + [0.0] * (2 * len(WORDS)))


def make_sample(n_q: int = 5, per_q: int = 4, n_neg: int = 10) -> UnitSample:
    stats = UnitStats(
        n_tokens=1000, max=10.0, mean=0.1, std=1.0, frac_firing=0.01, fire_threshold=0.0,
        hist_edges=[-math.inf, math.inf], hist_counts=[1000],
    )  # fmt: skip
    unit = Unit(ref=UnitRef.parse(UNIT), run_id="r", stats=stats)
    quantile = [firing(q * per_q + i, q, 1.0 + q * 2) for q in range(n_q) for i in range(per_q)]
    negatives = [quiet(i) for i in range(n_neg)]
    return UnitSample(
        unit=unit, explain=[], test=[], quantile=quantile, negatives=negatives, validation=[], contrast=[]
    )


def slot_text(prompt: str) -> str:
    """The example a teacher-forced prompt asks about: the one numbered by how many answers follow " ["."""
    query = prompt[prompt.rindex("Explanation:") :]
    k = query[query.rindex(" [") + 2 :].count(",")
    return re.search(rf"^Example {k}: (.*)$", query, re.MULTILINE)[1]


class Judge(LLM):
    """A scripted judge: `verdict(example text) -> P("1")`; `mass` on "1"/"0"; or fixed chat replies."""

    spec, backend, model = "scripted", "test", "scripted"

    def __init__(self, verdict=None, mass: float = 0.9, token_probs: bool = True, replies=None):  # noqa: ANN001
        self.verdict, self.mass, self.replies = verdict, mass, replies
        self.capabilities = Capabilities(
            token_probs=token_probs, top_logprobs=False, tools=False, json_schema=False
        )
        self.prompts: list[str] = []

    async def token_probs(self, req):  # noqa: ANN001, ANN201
        assert req.positions == [len(req.prompt)] and req.candidates == ["1", "0"]
        self.prompts.append(req.prompt)
        p = self.verdict(slot_text(req.prompt))
        return TokenProbsResponse(probs=[{"1": p, "0": 1 - p}], mass=[self.mass], model="s", backend="test")

    async def chat(self, req):  # noqa: ANN001, ANN201
        self.prompts.append(req.messages[-1].content)
        if self.replies is not None:
            return ChatResponse(text=self.replies.pop(0), model="s", backend="test")
        query = req.messages[-1].content
        query = query[query.rindex("Explanation:") :]
        texts = re.findall(r"^Example \d+: (.*)$", query, re.MULTILINE)
        answer = [int(self.verdict(t) >= 0.5) for t in texts]
        return ChatResponse(text=str(answer).replace(" ", ""), model="s", backend="test")


def oracle(text: str) -> float:
    return 0.9 if "March" in text else 0.2


def run(coro):  # noqa: ANN001, ANN201
    return asyncio.run(coro)


# -- metrics: delphi's definitions, worked by hand ---------------------------------------------------
def test_classification_metrics_by_hand():
    # 4 positives, 6 negatives; TP 3, FN 1, FP 1, TN 5.
    c = metrics.classification([1, 1, 1, 1, 0, 0, 0, 0, 0, 0], [1, 1, 1, 0, 1, 0, 0, 0, 0, 0])
    assert (c.tp, c.fn, c.fp, c.tn) == (3, 1, 1, 5)
    assert c.balanced_accuracy == pytest.approx((3 / 4 + 5 / 6) / 2)  # 0.7917; plain accuracy 0.8
    assert c.precision == pytest.approx(3 / 4) and c.recall == pytest.approx(3 / 4)
    assert c.f1 == pytest.approx(3 / 4)
    # TP 2, FP 2, TN 1, FN 0: precision 1/2, recall 1, F1 2*(1/2)/(3/2) = 2/3, BA (1 + 1/3)/2 = 2/3.
    c = metrics.classification([1, 1, 0, 0, 0], [1, 1, 1, 1, 0])
    assert c.precision == pytest.approx(0.5) and c.recall == 1.0
    assert c.f1 == pytest.approx(2 / 3) and c.balanced_accuracy == pytest.approx(2 / 3)
    # Nothing predicted positive: precision and F1 0 (delphi), balanced accuracy exactly chance.
    c = metrics.classification([1, 0, 0], [0, 0, 0])
    assert (c.precision, c.f1, c.balanced_accuracy) == (0.0, 0.0, 0.5)
    # One class only: balanced accuracy and F1 undefined, not 0.
    c = metrics.classification([0, 0], [1, 0])
    assert math.isnan(c.balanced_accuracy) and math.isnan(c.f1)


# -- samples, windows, marks -------------------------------------------------------------------------
def test_positives_spread_evenly_over_quantiles_and_peak_above_every_negative():
    s = make_sample(n_q=5, per_q=4)  # quantile q peaks at 1 + 2q; negatives at 0 (their BOS at 50 aside)
    pos, neg = scoring.classes(s, 10)
    assert [e.quantile for e in pos] == [0, 1, 2, 3, 4] * 2 and neg == s.negatives
    assert [e.quantile for e in scoring.classes(s, 3)[0]] == [0, 1, 3]
    # A dense unit: a "negative" peaking at 4 (under a quarter of the max) is above quantiles 0 and 1.
    s.negatives[3] = ex("random", 3, [" a", " b", " c"], [0.0, 4.0, 0.0])
    pos, neg = scoring.classes(s, 10)
    assert [e.quantile for e in pos] == [2, 3, 4] * 3 + [2] and len(neg) == 10


def test_windows_are_bos_free_even_when_bos_is_the_peak():
    e = firing(0, 0, 4.0)
    tokens, acts = scoring.window(e, 8)
    assert "<bos>" not in tokens and max(acts) == 4.0 and tokens[acts.index(4.0)] == " March"
    plain = ex("top", 0, [" a", " b"], [0.0, 1.0])
    assert scoring.body(plain) == plain


def test_fuzz_marks_each_correct_example_at_its_own_max_and_as_many_random_marks_on_negatives():
    s = make_sample()
    pos, neg = scoring.classes(s, 10)
    st = scoring.ScoreSettings(window=16)
    tokens, marks = scoring.fuzz_marks(pos, neg, st)
    for e, m in zip(pos, marks[: len(pos)], strict=True):
        acts = scoring.window(e, 16)[1]
        # Marked exactly where the window reaches 0.3 of its own max: " March" (and not " in", at 1/4),
        # even in the lowest quantile, whose peak (1.0) is a tenth of the unit's max (10).
        assert m == {i for i, a in enumerate(acts) if a >= 0.3 * max(acts)} and len(m) == 1
    assert all(len(m) == 1 for m in marks[len(pos) :])  # ceil(mean marks of the correct examples) = 1
    low = scoring.ScoreSettings(window=16, mark_fraction=0.2)
    _, marks = scoring.fuzz_marks(pos, neg, low)
    assert all(len(m) == 2 for m in marks)  # " in" (0.25 of the max) now marked too; negatives get 2
    assert scoring.fuzz_marks(pos, neg, low)[1] == marks  # seeded


# -- the judge protocol ------------------------------------------------------------------------------
@pytest.mark.parametrize("batch", [1, 5])
def test_detection_with_a_discriminating_judge(batch):
    judge = Judge(oracle)
    st = scoring.ScoreSettings(judge_batch=batch, window=16)
    sc = run(scoring.detection(judge, "month names", make_sample(), st, **F))
    assert sc.status == "ok" and sc.value == 1.0
    d = sc.details
    assert (d["balanced_accuracy"], d["f1"], d["auc"], d["n_pos"], d["n_neg"]) == (1.0, 1.0, 1.0, 10, 10)
    assert d["mass_median"] == 0.9 and d["mass_min"] == 0.9
    assert d["p_yes"] == [0.9] * 10 + [0.2] * 10  # back in the sample's order after shuffling
    assert all("<bos>" not in p for p in judge.prompts)
    if batch == 5:
        heads = [p for p in judge.prompts if p.endswith(" [")]
        assert len(heads) == 4 and all(h.count("\nExample 4: ") == 1 for h in heads)
        # Each later slot holds the judge's own earlier answers, as it would have generated them.
        for p in judge.prompts:
            query = p[p.rindex("Explanation:") :]
            answers = query[query.rindex(" [") + 2 :].split(",")[:-1]
            texts = re.findall(r"^Example \d+: (.*)$", query, re.MULTILINE)
            assert answers == [str(int(oracle(t) >= 0.5)) for t in texts[: len(answers)]]
        assert len(judge.prompts) == 20


def test_fuzzing_prompt_shows_marks_and_scores_balanced_accuracy():
    judge = Judge(lambda t: 0.8 if "[[ March]]" in t else 0.3)
    sc = run(scoring.fuzzing(judge, "month names", make_sample(), scoring.ScoreSettings(judge_batch=5), **F))
    assert sc.status == "ok" and sc.value == 1.0 and sc.details["marks"] == [1] * 20
    # Marks at 0.2 of the max also mark " in" (0.25): a judge that rejects a marked " in" says no to
    # every text (balanced accuracy 0.5, recall 0), which is no verdict at all.
    strict = Judge(lambda t: 0.8 if "[[ March]]" in t and "[[ in]]" not in t else 0.3)
    st = scoring.ScoreSettings(mark_fraction=0.2)
    sc = run(scoring.fuzzing(strict, "month names", make_sample(), st, **F))
    assert sc.details["balanced_accuracy"] == 0.5 and sc.details["recall"] == 0.0
    assert sc.status == "nan" and sc.details["marks"] == [2] * 20


def test_constant_judge_is_nan_with_its_reason():
    sc = run(scoring.detection(Judge(lambda t: 0.7), "anything", make_sample(), scoring.ScoreSettings(), **F))
    assert sc.status == "nan" and sc.value is None and "same verdict" in sc.reason and "0.700" in sc.reason
    chat = Judge(lambda t: 1.0, token_probs=False)
    sc = run(scoring.detection(chat, "anything", make_sample(), scoring.ScoreSettings(judge_batch=5), **F))
    assert sc.status == "nan" and "answered 1" in sc.reason and "auc" not in sc.details
    # P("1") varies but is >= 0.5 for every text (the embedded 1.5B judge): every verdict is "1", so no
    # balanced accuracy (not a 0.5 averaged in as if measured); the ranking's AUC stays in the details
    yes = Judge(lambda t: 0.9 if "March" in t else 0.6)
    sc = run(scoring.detection(yes, "month names", make_sample(), scoring.ScoreSettings(), **F))
    assert sc.status == "nan" and sc.value is None and "same verdict" in sc.reason
    assert sc.details["auc"] > 0.5 and 'P("1") 0.600-0.900' in sc.reason


def test_low_probability_mass_fails_the_score_with_its_reason():
    sc = run(
        scoring.detection(Judge(oracle, mass=0.2), "month names", make_sample(), scoring.ScoreSettings(), **F)
    )
    assert sc.status == "failed" and sc.value is None
    assert sc.reason == 'the judge put a median 0.200 of its probability on "1"/"0"; below the floor 0.5'
    assert sc.details["mass_median"] == 0.2
    ok = run(
        scoring.detection(Judge(oracle, mass=0.6), "month names", make_sample(), scoring.ScoreSettings(), **F)
    )
    assert ok.status == "ok" and ok.value == 1.0


def test_chat_judge_answers_five_per_prompt():
    judge = Judge(oracle, token_probs=False)
    sc = run(
        scoring.detection(judge, "month names", make_sample(), scoring.ScoreSettings(judge_batch=5), **F)
    )
    assert sc.status == "ok" and sc.value == 1.0 and len(judge.prompts) == 4
    assert "mass_median" not in sc.details and "auc" not in sc.details


@pytest.mark.parametrize(
    ("answer", "want"), [("[1,0,1]", [1, 0, 1]), (" [1, 0, 0]\n", [1, 0, 0]), ("[0,0,0]", [0, 0, 0])]
)
def test_parse_answers_accepts_a_list_of_digits(answer, want):
    assert scoring.parse_answers(answer, 3) == want


@pytest.mark.parametrize(
    "answer",
    ["[1,0]", "[1,0,1,1]", "1,0,1", "[1,2,0]", "[true,false,true]", "Answer: [1,0,1]", "[1,0,1] yes", ""],
)
def test_parse_answers_rejects_anything_else(answer):
    with pytest.raises(LLMError, match="not a list of 3"):
        scoring.parse_answers(answer, 3)


def test_malformed_chat_answer_is_an_error_not_a_verdict():
    judge = Judge(token_probs=False, replies=["[1,0,1,1,0]", "[1,0,1]", "[0,0,0,0,0]", "[1,1,1,1,1]"])
    with pytest.raises(LLMError, match="'\\[1,0,1\\]', not a list of 5"):
        run(scoring.detection(judge, "month names", make_sample(), scoring.ScoreSettings(judge_batch=5), **F))


def test_embedding_with_equal_similarities_is_nan(monkeypatch):
    import autointerp.embed

    monkeypatch.setattr(autointerp.embed, "embed", lambda texts: np.ones((len(texts), 4)) / 2)
    sc = run(scoring.embedding("month names", make_sample(), scoring.ScoreSettings(), **F))
    assert sc.status == "nan" and "equally similar" in sc.reason


def test_delphi_preset():
    d = scoring.ScoreSettings.delphi(seed=3)
    assert (d.window, d.judge_batch, d.mark_fraction, d.seed) == (32, 5, 0.3, 3)


# -- the random-explanation floor --------------------------------------------------------------------
def test_random_explanations_give_each_unit_another_units_text():
    units = ["a", "b", "c", "d"]
    texts = {"a": "ta", "b": "tb", "c": None, "d": "td"}
    got = random_explanations(units, texts, seed=0)
    assert set(got) == set(units) and all(got[u] != texts[u] for u in units)
    assert set(got.values()) <= {"ta", "tb", "td"}
    assert random_explanations(units, texts, seed=0) == got
    assert random_explanations(["a"], {"a": "ta"}, seed=0) == {}


def test_report_shows_the_floor_row():
    stat = ScorerStat(n=2, mean=0.5, ci_low=0.4, ci_high=0.6, n_nan=0, n_failed=0)
    rows = [MethodRow(method=m, n_units=2, failures=0, stats={"detection": stat}) for m in ("top", RANDOM)]
    r = BenchResult(
        settings=BenchSettings(methods=["top"], scorers=["detection"]), db="x.db", run_id="b", units=[],
        skipped_units={}, methods=rows,
    )  # fmt: skip
    assert [row[0] for row in tables(r)["methods"][1:]] == ["top", "random explanation (floor)"]


def test_truth_and_distractor_rows_show_their_tokens_spent_and_cached(month_store, scripted):
    from autointerp.bench.run import score_given_by_kind, usage_fields
    from autointerp.llm import CachedLLM
    from autointerp.pipeline import LabelSettings

    llm = CachedLLM(scripted(), month_store)
    uid = month_store.units()[0].id
    s = LabelSettings(explainer=llm.spec, simulator=llm.spec)
    # the same text as truth and as a distractor: the distractor's scoring is served from the cache
    items = [(uid, "true", "months of the year"), (uid, "distractor:other", "months of the year")]
    spent = asyncio.run(score_given_by_kind(month_store, s, llm, llm, items))
    true, other = usage_fields(spent["true"]), usage_fields(spent["distractor:other"])
    assert true["prompt_tokens"] > 0 and other["prompt_tokens"] == other["completion_tokens"] == 0
    assert other["cached_tokens"] == true["prompt_tokens"] + true["completion_tokens"] + true["cached_tokens"]
    assert other["cached_calls"] > true["cached_calls"]
    stat = ScorerStat(n=1, mean=0.9, ci_low=0.9, ci_high=0.9, n_nan=0, n_failed=0)
    rows = [
        MethodRow(method=m, n_units=1, failures=0, stats={"correlation": stat}, **usage_fields(spent[m]))
        for m in ("true", "distractor:other")
    ]
    r = BenchResult(
        settings=BenchSettings(methods=["top"]),
        db="x.db",
        run_id="b",
        units=[],
        skipped_units={},
        methods=rows,
    )
    header, *body = tables(r)["methods"]
    col = {name: i for i, name in enumerate(header)}
    assert body[0][col["prompt tok"]] == f"{true['prompt_tokens']:,}" != "0"
    assert body[1][col["prompt tok"]] == "0"
    assert body[1][col["cached tok (calls)"]] == f"{other['cached_tokens']:,} ({other['cached_calls']})"
