"""Candidates built by code from the `tokens` tool's measured evidence (agent/measured.py)."""

from __future__ import annotations

from autointerp.agent.measured import bigram, distinct, grading, listed, shape
from autointerp.agent.tools import TokenCount, TokensResult


def tr(firing: dict[str, int | tuple[int, float]]) -> TokensResult:
    def tc(t: str, v: int | tuple[int, float]) -> TokenCount:
        n, m = v if isinstance(v, tuple) else (v, None)
        return TokenCount(token=t, count=n, mean=m)

    return TokensResult(n_windows=5, firing=[tc(t, v) for t, v in firing.items()], before=[])


def test_distinct_merges_case_and_spaces_keeping_the_most_frequent_spelling():
    firing = tr({" not": 9, "not": 1, " no": 1, " NO": 1, " NOT": 1, "NO": 1, " cannot": 1, "  ": 4}).firing
    assert distinct(firing) == ["not", "NO", "cannot"]  # not 11, no 3 (NO twice), cannot 1; no blanks


def test_listed_names_up_to_three_examples_and_needs_two():
    assert listed("negation words", tr({" not": 9, " no": 2})) == "negation words, such as not and no"
    four = tr({" Greek": 4, " American": 3, " French": 2, " German": 2})
    assert listed("nationalities", four) == "nationalities, such as Greek, American and French"
    assert listed("periods", tr({".": 26})) is None


def test_shape_is_the_form_every_distinct_firing_token_shares():
    assert shape(tr({"9": 3, "8": 2, " 4": 1})) == "digits"
    assert shape(tr({"19": 3, "8": 2, "2.5": 1})) == "numbers"
    assert shape(tr({"The": 3, " Bible": 2, " French": 1})) == "capitalized words"
    assert shape(tr({"NASA": 3, " USA": 2, " NO": 1})) == "words in capital letters"
    assert shape(tr({"The": 3, " the": 2, " French": 1})) is None  # a lowercase one
    assert shape(tr({"9": 3, "8": 2})) is None  # too few to call a form


def test_grading_needs_numbers_whose_mean_activation_follows_their_value():
    tied = tr({"1": (2, 0.2), "2": (2, 0.5), "3": (2, 0.5), "4": (2, 0.9)})  # tied means share a rank
    assert grading(tied) == "digits, stronger for larger digits"
    rising = tr({"9": (5, 1.0), "7": (3, 0.8), "4": (2, 0.5), "8": (1, 0.9)})
    assert grading(rising) == "digits, stronger for larger digits"
    falling = tr({"10": (5, 0.4), "20": (3, 0.3), "50": (2, 0.2)})
    assert grading(falling) == "numbers, weaker for larger numbers"
    assert grading(tr({"1": (6, 1.0), "6": (3, 1.0), "2": (2, 1.0)})) is None  # flat: not graded
    assert grading(tr({"1": (6, 0.5), "6": (3, 1.0), "2": (2, 0.2)})) is None  # no order (rho 0.5)
    assert grading(tr({"9": 5, "7": 3, "4": 2})) is None  # no means measured
    assert grading(tr({"9": (5, 1.0), "x": (3, 0.5), "4": (2, 0.4)})) is None  # not all numbers


def test_bigram_writes_the_one_firing_word_after_its_measured_context_as_a_pair():
    def with_before(firing: dict[str, int], before: dict[str, int]) -> TokensResult:
        r = tr(firing)
        return r.model_copy(update={"before": [TokenCount(token=t, count=n) for t, n in before.items()]})

    assert bigram(with_before({".": 26}, {"self": 16, " self": 10})) == 'the "." in "self."'
    assert bigram(with_before({" York": 5, "York": 1}, {" New": 6})) == 'the "York" in "New York"'
    assert bigram(with_before({"1": 6, "2": 4}, {"(": 10})) is None  # two firing words: no one pair
    assert bigram(with_before({".": 26}, {"x": 5, "y": 5})) is None  # no usual context
