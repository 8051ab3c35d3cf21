"""The exact simulators' read-outs (one pass with the prior "0"; stepwise) and the mass floor, on a
scripted LLM (no model)."""

from __future__ import annotations

import asyncio

import pytest

from autointerp.llm.base import StepwiseRequest
from autointerp.llm.cache import CachedLLM
from autointerp.llm.scripted import ScriptedLLM
from autointerp.llm.stepwise import read_stepwise
from autointerp.metrics import MASS_FLOOR
from autointerp.sampling import UnitSample
from autointerp.score import ScoreSettings, correlation
from autointerp.simulate import (
    CHUNK,
    DIGITS,
    MAX_CHUNK,
    NULL_EXPLANATION,
    ExactSimulator,
    FollowingSimulator,
    RawSimulator,
    SimulationError,
    WholeSimulator,
    is_null_read,
    listing_pieces,
)
from autointerp.store import Store
from autointerp.types import Context, Example, Unit, UnitRef, UnitStats


def months(prefix: str, candidates: list[str]) -> dict[str, float]:
    """P("9") = 0.9 after a month's TAB, else P("0") = 0.9."""
    dist = dict.fromkeys(candidates, 0.1 / (len(candidates) - 1))
    dist["9" if prefix.endswith((" March\t", " June\t")) else "0"] = 0.9
    return dist


def scripted_months(mass: float = 0.95) -> ScriptedLLM:
    return ScriptedLLM("probs", probs=months, mass=mass)


def prompts(llm: ScriptedLLM) -> list[str]:
    return [r.prompt for r in llm.requests]


def example(tokens: list[str], acts: list[float], kind: str = "top", rank: int = 0) -> Example:
    ctx = Context(id=f"c{rank}{kind}", token_ids=list(range(len(tokens))), tokens=tokens)
    return Example(unit_id="m/h/0", kind=kind, rank=rank, context=ctx, acts=acts)


TOKENS = ["<bos>", " In", " March", " it", " rained", " and", " in", " June", " too"]
ACTS = [50.0, 0, 1, 0, 0, 0, 0, 1, 0]  # a huge BOS activation: it must be neither shown nor scored


def test_stepwise_fallback_continues_with_the_models_own_digit():
    llm = scripted_months()
    req = StepwiseRequest(prompt="P\n", steps=[" May\t", " March\t", " it\t"], candidates=DIGITS)
    (resp,) = asyncio.run(read_stepwise(llm, [req]))
    assert resp.chosen == ["0", "9", "0"]
    assert resp.mass == [0.95] * 3
    assert resp.probs[1]["9"] == pytest.approx(0.9)
    # each step reads the full prefix: earlier steps followed by the digit chosen there, no placeholder
    assert prompts(llm) == ["P\n May\t", "P\n May\t0\n March\t", "P\n May\t0\n March\t9\n it\t"]


def test_exact_simulation_leaves_bos_out_and_keeps_the_mass():
    sim = ExactSimulator(scripted_months())
    (s,) = asyncio.run(sim.simulate("names of months", [example(TOKENS, ACTS)]))
    assert len(s.expected) == len(TOKENS) - 1 and s.true == ACTS[1:]
    hot = [i for i, v in enumerate(s.expected) if v > 5]
    assert hot == [1, 6]  # " March" and " June", at their positions after BOS
    assert s.mass == [0.95] * (len(TOKENS) - 1)
    with pytest.raises(SimulationError, match="empty"):
        asyncio.run(sim.simulate("  ", [example(TOKENS, ACTS)]))


def test_exact_listing_is_one_pass_with_the_prior_digit_after_every_tab():
    llm = scripted_months()
    sim = ExactSimulator(llm)
    sim.chunk = None  # the whole window in one listing (`exact-whole`)
    (s,) = asyncio.run(sim.simulate("names of months", [example(TOKENS, ACTS)]))
    req, null = llm.requests  # one request for the whole window, and its calibration read
    body = req.prompt[len(sim.prompt.text(explanation="names of months")) :]
    assert body == "".join(f"{t}\t0\n" for t in TOKENS[1:])  # the scale's own "0", never a placeholder
    assert [req.prompt[:p][-7:] for p in req.positions][1] == " March\t"  # read right after each TAB
    assert [i for i, v in enumerate(s.expected) if v > 5] == [1, 6]
    assert (
        null.prompt == sim.prompt.text(explanation=NULL_EXPLANATION) + body
    )  # same listing, null explanation
    head, null_head = (len(sim.prompt.text(explanation=x)) for x in ("names of months", NULL_EXPLANATION))
    assert [p - null_head for p in null.positions] == [p - head for p in req.positions]


def test_a_long_window_is_read_in_listings_of_chunk_tokens_joined_in_order():
    tokens = ["<bos>"] + [" it", " rained", " in", " March"] * 5  # 20 tokens after BOS
    assert 1 < CHUNK < 20 and 20 % CHUNK == 0
    acts = [0.0] + [0, 0, 0, 1] * 5
    llm = scripted_months()
    sim = ExactSimulator(llm)
    (s,) = asyncio.run(sim.simulate("names of months", [example(tokens, acts)]))
    head = sim.prompt.text(explanation="names of months")
    reads = [r.prompt for r in llm.requests if r.prompt.startswith(head)]
    # CHUNK tokens each, each chunk a fresh listing right after the prompt (no zeros before it)
    n = -(-20 // CHUNK)
    assert [r[len(head) :] for r in reads] == [
        "".join(f"{t}\t0\n" for t in tokens[1:][i : i + CHUNK]) for i in range(0, 20, CHUNK)
    ]
    assert len(reads) == n and len(llm.requests) == 2 * n  # and the same under the null explanation
    assert [i for i, v in enumerate(s.expected) if v > 5] == [3, 7, 11, 15, 19]  # every March, in order
    assert len(s.mass) == len(s.raw) == 20
    (w,) = asyncio.run(WholeSimulator(llm).simulate("names of months", [example(tokens, acts)]))
    assert w.expected == pytest.approx(s.expected)  # this scripted model does not tire along a listing
    assert len(llm.requests) == 2 * n + 2  # the whole window in one listing, read twice


def test_listings_are_cut_only_where_a_word_can_start():
    code = [
        "self",
        ".",
        "dict",
        ".",
        "sync",
        "()",
        "\n",
        "    ",
        "x",
        " =",
        " (",
        "1990",
        ",",
        " 2",
        ")",
        ".",
    ]
    assert listing_pieces(code) == [
        ["self", "."],  # the dot stays with self, the "()" with sync
        ["dict", "."],
        ["sync", "()"],
        ["\n", "    "],
        ["x", " ="],
        [" (", "1990", ","],  # at least CHUNK tokens, then only before a word start
        [" 2", ")", "."],
    ]
    assert CHUNK == 2 and MAX_CHUNK == 4
    assert listing_pieces(["a", ".", ",", ")", ";", "b"]) == [["a", ".", ",", ")"], [";", "b"]]  # cut at MAX
    assert listing_pieces([" a", "#", " b", "'", "c"]) == [[" a", "#"], [" b", "'"], ["c"]]
    assert listing_pieces([]) == [[]]
    assert [t for p in listing_pieces(code) for t in p] == code


def test_a_window_is_read_in_its_listing_pieces_in_order():
    tokens = ["<bos>", " In", " March", ",", " self", ".", "x", " June", "."]
    acts = [0.0, 0, 1, 0, 0, 0, 0, 1, 0]
    llm = scripted_months()
    sim = ExactSimulator(llm)
    (s,) = asyncio.run(sim.simulate("names of months", [example(tokens, acts)]))
    head = sim.prompt.text(explanation="names of months")
    reads = [r.prompt[len(head) :] for r in llm.requests if r.prompt.startswith(head)]
    assert reads == [" In\t0\n March\t0\n,\t0\n", " self\t0\n.\t0\n", "x\t0\n June\t0\n.\t0\n"]
    assert [i for i, v in enumerate(s.expected) if v > 5] == [1, 6]


def salient(prefix: str, candidates: list[str]) -> dict[str, float]:
    """A model that finds " it" salient whatever the explanation, and months under "names of months"."""
    dist = months(prefix, candidates)
    if prefix.endswith(" it\t"):
        dist = {"5": 1.0}
    return dist


def test_calibration_subtracts_what_the_model_predicts_under_the_null_explanation():
    llm = ScriptedLLM(
        "probs", probs=salient, null_probs=lambda p, c: {"5": 1.0} if p.endswith(" it\t") else {"0": 1}
    )
    (s,) = asyncio.run(ExactSimulator(llm).simulate("names of months", [example(TOKENS, ACTS)]))
    (r,) = asyncio.run(RawSimulator(llm).simulate("names of months", [example(TOKENS, ACTS)]))
    it = TOKENS.index(" it") - 1
    assert r.expected[it] == pytest.approx(5.0) and s.raw[it] == pytest.approx(5.0)
    assert s.expected[it] == pytest.approx(0.0)  # salient under the null too: calibrated away
    march = TOKENS.index(" March") - 1
    assert s.expected[march] == pytest.approx(r.expected[march])  # nothing under the null: unchanged
    n = len(listing_pieces(TOKENS[1:]))  # listings per window
    assert r.raw is None and len(llm.requests) == 3 * n  # 2 reads calibrated, 1 raw


def test_following_read_out_continues_with_the_models_own_digit():
    llm = scripted_months()
    (s,) = asyncio.run(FollowingSimulator(llm).simulate("names of months", [example(TOKENS, ACTS)]))
    assert len(llm.requests) == len(TOKENS) - 1  # the fallback: one prompt per token
    assert "March\t9\n" in llm.requests[-1].prompt  # the model's own digit, not the prior
    assert [i for i, v in enumerate(s.expected) if v > 5] == [1, 6]


def _sample() -> UnitSample:
    stats = UnitStats(
        n_tokens=100,
        max=1.0,
        mean=0.1,
        std=0.2,
        frac_firing=0.1,
        fire_threshold=0.0,
        hist_edges=[],
        hist_counts=[],
    )
    unit = Unit(ref=UnitRef(model="m", hook="h", index=0), run_id="r", stats=stats)
    test = [example(TOKENS, ACTS, rank=0), example(TOKENS[:5], [0, 0, 1, 0, 0], kind="random", rank=1)]
    return UnitSample(unit=unit, explain=[], test=test, quantile=[], negatives=[], validation=[], contrast=[])


def _correlation(mass: float):
    sim = ExactSimulator(scripted_months(mass=mass))
    return asyncio.run(
        correlation(sim, "names of months", _sample(), ScoreSettings(), explanation_id="e", unit_id="m/h/0")
    )


def test_correlation_records_the_scale_mass():
    score = _correlation(0.95)
    assert score.status == "ok" and score.value == pytest.approx(1.0)
    assert score.details["scale_mass"] == {"median": 0.95, "min": 0.95, "n": 12}


def test_a_read_out_below_the_mass_floor_is_failed_not_a_number():
    score = _correlation(MASS_FLOOR / 10)
    assert score.status == "failed" and score.value is None
    assert "below the floor" in score.reason and "0.05" in score.reason
    assert score.details["scale_mass"]["median"] == pytest.approx(MASS_FLOOR / 10)


def test_stepwise_read_outs_are_cached_in_the_store(tmp_path):
    inner = scripted_months()
    llm = CachedLLM(inner, Store(tmp_path / "s.db"))
    req = StepwiseRequest(prompt="P\n", steps=[" March\t", " it\t"], candidates=DIGITS)
    first = asyncio.run(llm.stepwise_many([req]))[0]
    calls = len(prompts(inner))
    second = asyncio.run(llm.stepwise_many([req]))[0]
    assert len(prompts(inner)) == calls == 2  # the second read-out came from the store
    assert second.usage.cached and second.chosen == first.chosen == ["9", "0"]


def test_a_run_asks_each_null_read_once_whatever_the_unit(monkeypatch):
    """The null read does not depend on the unit: through a run's CachedLLM (even with no_cache) a
    second unit's simulation of a window read before asks only its own explanation's listings, and
    gets the same calibration; the remembered answers are marked cached. `REMEMBER = 0`: asked again."""
    from autointerp.llm import cache

    tokens = ["<bos>", " it", " rained", " in", " March"]
    for remember in (cache.REMEMBER, 0):
        monkeypatch.setattr(cache, "REMEMBER", remember)
        inner = scripted_months()
        sim = ExactSimulator(CachedLLM(inner, None, no_cache=True))
        (a,) = asyncio.run(sim.simulate("names of months", [example(tokens, [0.0, 0, 0, 0, 1])]))
        first = len(inner.requests)
        (b,) = asyncio.run(sim.simulate("weather words", [example(tokens, [0.0, 0, 1, 0, 0])]))
        asked = inner.requests[first:]
        nulls = sum(is_null_read(r.prompt) for r in asked)
        assert nulls == (0 if remember else first // 2) and len(asked) - nulls == first // 2
        null_a = [x - r for x, r in zip(a.raw, a.expected, strict=True)]
        null_b = [x - r for x, r in zip(b.raw, b.expected, strict=True)]
        assert null_b == pytest.approx(null_a)
    monkeypatch.setattr(cache, "REMEMBER", 10)
    llm = CachedLLM(scripted_months(), None, no_cache=True)
    (fresh,) = asyncio.run(ExactSimulator(llm).read(NULL_EXPLANATION, [tokens[1:]]))
    (again,) = asyncio.run(ExactSimulator(llm).read(NULL_EXPLANATION, [tokens[1:]]))
    assert not fresh.usage.cached and again.usage.cached and again.probs == fresh.probs
