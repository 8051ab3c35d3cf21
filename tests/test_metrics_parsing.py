"""Score arithmetic against hand-worked values, and the parsers that stand between an LLM and a result."""

import math

import pytest

from autointerp import metrics
from autointerp.explain import ExplanationError, parse_explanation
from autointerp.prompts import prompt
from autointerp.render import normalize
from autointerp.simulate import ExactSimulator, SimulationError, parse_json_activations


# Expected values worked out by hand from OpenAI's definition: flatten every sequence, then Pearson.
@pytest.mark.parametrize(
    ("true", "pred", "want"),
    [
        ([[0, 0, 1], [0, 2, 0]], [[0, 0, 1], [0, 2, 0]], 1.0),
        ([[1, 2, 3]], [[3, 2, 1]], -1.0),
        ([[0, 1], [0, 0]], [[0, 0.5], [0.5, 0]], 1 / math.sqrt(3)),
        # each sequence alone correlates perfectly; concatenated they barely do
        ([[0, 1], [5, 6]], [[0, 1], [0, 1]], 1 / math.sqrt(26)),
    ],
)
def test_correlation_matches_openai_definition(true, pred, want):
    assert metrics.correlation(true, pred) == pytest.approx(want)


def test_correlation_is_nan_not_zero_when_constant():
    assert math.isnan(metrics.correlation([[0, 1, 2]], [[3, 3, 3]]))
    assert math.isnan(metrics.correlation([[0, 0, 0]], [[1, 2, 3]]))
    with pytest.raises(ValueError):
        metrics.correlation([[0, 1]], [[0, 1, 2]])


def test_auc():
    assert metrics.auc([1, 1, 0, 0], [0.9, 0.4, 0.5, 0.1]) == pytest.approx(0.75)
    assert metrics.auc([1, 0], [0.5, 0.5]) == pytest.approx(0.5)
    assert metrics.auc([1, 1, 0], [0.2, 0.3, 0.1]) == 1.0
    assert math.isnan(metrics.auc([1, 1], [0.2, 0.3]))


@pytest.mark.parametrize(
    ("answer", "want"),
    [
        ("months of the year", "months of the year"),
        ("Explanation: months of the year.\nmore text", "months of the year"),
        ('  "negation"  ', "negation"),
        ("\n\n- def keyword", "def keyword"),
        ("The neuron fires on: years", "years"),
    ],
)
def test_parse_explanation(answer, want):
    assert parse_explanation(answer) == want


@pytest.mark.parametrize("answer", ["", "   \n  ", '""', "Explanation:"])
def test_empty_explanations_raise(answer):
    with pytest.raises(ExplanationError):
        parse_explanation(answer)


def test_json_activations_are_validated():
    assert parse_json_activations("here: [0, 3, 9]", 3) == [0.0, 3.0, 9.0]
    bad = [("[0, 3]", 3), ("no list", 1), ("[0, 12, 1]", 3), ("[0, -1]", 2), ('["a"]', 1), ("[1,]", 2)]
    for answer, n in bad:
        with pytest.raises(SimulationError):
            parse_json_activations(answer, n)


def test_normalize_to_single_digits():
    assert normalize([-1.0, 0.0, 0.5, 1.0, 2.0], 1.0) == [0, 0, 4, 9, 9]
    assert normalize([1.0], 0.0) == [0]


def test_prompts_have_versions_and_roles():
    p = prompt("explain_top.j2")
    assert p.id == "explain-top@2"
    msgs = p.messages(examples=[[("a", 0), (" b", 9)]])
    assert [m.role for m in msgs][:2] == ["system", "user"] and msgs[-1].role == "user"
    assert " b\t9" in msgs[-1].content


class _NoLLM:
    """Only what ExactSimulator.request reads: no model is called."""

    spec = "none"

    class capabilities:  # noqa: N801
        token_probs = True


def test_exact_listing_ends_each_token_with_a_tab_and_the_scales_own_zero():
    sim = ExactSimulator(_NoLLM())
    req = sim.request("month names", ["The", " March", "\n"])
    head = sim.prompt.text(explanation="month names")
    assert head.endswith("Explanation: month names\n<start>\n")
    assert req.prompt == head + "The\t0\n March\t0\n\\n\t0\n"  # newline escaped, no placeholder
    assert [req.prompt[:p][-2:] for p in req.positions] == ["e\t", "h\t", "n\t"]
    assert req.candidates == [str(i) for i in range(10)]
