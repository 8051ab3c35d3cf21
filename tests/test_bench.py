"""The benchmark without a model: synthetic rules, the unit-file loader, CI and meta-eval arithmetic."""

import json
import math

import pytest
import torch

from autointerp.bench.meta import bootstrap_ci, meta_evaluate, spearman_pairs, truth_beats, truth_rank_credit
from autointerp.bench.run import distractors, keyword_overlap
from autointerp.bench.synthetic import (
    BUILTIN,
    AfterRule,
    AnyRule,
    BigramRule,
    PositionRule,
    RegexRule,
    SyntheticUnit,
    TokensRule,
    WeightsRule,
    load_units,
    synthetic_sources,
)
from autointerp.errors import UserError
from autointerp.types import UnitRef

TOKS = [
    "<bos>",
    " In",
    " March",
    " 1",
    "9",
    "9",
    "9",
    ",",
    " the",
    " price",
    " was",
    " $",
    "1",
    "2",
    " not",
    " May",
]


def test_token_set_and_regex_rules_fire_exactly_on_matching_tokens():
    months = TokensRule(tokens=["March", "May"], value=2.0)
    assert months.acts(TOKS) == [0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]
    digits = RegexRule(pattern=r"\d+")
    assert digits.acts(TOKS) == [0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 0, 1, 1, 0, 0]
    case = TokensRule(tokens=["march"], case=True)
    assert sum(case.acts(TOKS)) == 0
    with pytest.raises(ValueError, match="bad regex"):
        RegexRule(pattern="(")


def test_context_bigram_position_or_and_graded_rules():
    dollar_digits = AfterRule(target=RegexRule(pattern=r"\d"), prev=TokensRule(tokens=["$"]), chain=True)
    assert dollar_digits.acts(TOKS) == [0] * 12 + [1, 1, 0, 0]
    unchained = AfterRule(target=RegexRule(pattern=r"\d"), prev=TokensRule(tokens=["$"]))
    assert unchained.acts(TOKS) == [0] * 12 + [1, 0, 0, 0]
    wide = AfterRule(target=TokensRule(tokens=["May"]), prev=TokensRule(tokens=["$"]), within=4)
    assert wide.acts(TOKS)[-1] == 1 and sum(wide.acts(TOKS)) == 1
    assert BigramRule(first="not", second="May").acts(TOKS) == [0] * 15 + [1]
    assert PositionRule(start=1, stop=3, value=0.5).acts(TOKS[:5]) == [0, 0.5, 0.5, 0, 0]
    poly = AnyRule(rules=[TokensRule(tokens=["March"], value=3), TokensRule(tokens=["the"])])
    assert poly.acts(TOKS)[2] == 3 and poly.acts(TOKS)[8] == 1 and sum(poly.acts(TOKS)) == 4
    graded = WeightsRule(weights={"1": 0.1, "9": 0.9})
    assert graded.acts(TOKS)[3:7] == [0.1, 0.9, 0.9, 0.9]


def test_synthetic_unit_ids_parse_and_sources_compute_from_token_ids():
    unit = SyntheticUnit(name="months", explanation="months", rule=TokensRule(tokens=["March", "May"]))
    ref = UnitRef.parse(unit.unit_id("gemma-3-270m"))
    assert (ref.hook, ref.index, ref.sae) == ("synthetic.months", 0, None)
    vocab = {i: t for i, t in enumerate(TOKS)}
    (src,) = synthetic_sources(lambda ids: [vocab[i] for i in ids], [unit])
    acts = src.from_tokens(torch.tensor([list(range(16)), list(range(16))[::-1]]))
    assert acts.shape == (2, 16, 1)
    assert acts[0, :, 0].tolist() == [0, 0, 1] + [0] * 12 + [1]
    assert acts[1, :, 0].tolist() == [1] + [0] * 12 + [1, 0, 0]
    with pytest.raises(ValueError):
        src.unit_acts(torch.zeros(1, 2, 3))


def test_unit_needs_exactly_one_of_rule_and_fn_and_a_plain_name():
    with pytest.raises(ValueError):
        SyntheticUnit(name="x", explanation="x")
    with pytest.raises(ValueError):
        SyntheticUnit(name="bad/name", explanation="x", rule=TokensRule(tokens=["a"]))
    bad_len = SyntheticUnit(name="short", explanation="x", fn=lambda toks: [1.0])
    with pytest.raises(UserError, match="one per token"):
        bad_len.acts(["a", "b"])


def test_builtin_suite_is_well_formed():
    names = [u.name for u in BUILTIN]
    assert len(names) == len(set(names)) >= 10
    assert all(u.explanation and u.near_miss for u in BUILTIN)
    kinds = {u.rule.kind for u in BUILTIN}
    assert {"tokens", "regex", "after", "any", "bigram", "weights"} <= kinds
    assert BUILTIN[0].acts([" March", " cat"]) == [1.0, 0.0]


def test_load_units_from_a_python_module(tmp_path):
    path = tmp_path / "mine.py"
    path.write_text(
        "from autointerp.bench.synthetic import SyntheticUnit\n"
        "def units():\n"
        "    return [SyntheticUnit(name='caps', explanation='words in capitals',\n"
        "                          fn=lambda toks: [float(t.strip().isupper()) for t in toks]),\n"
        "            {'name': 'cat', 'explanation': 'the word cat',\n"
        "             'rule': {'kind': 'tokens', 'tokens': ['cat']}}]\n"
    )
    caps, cat = load_units(path)
    assert caps.acts([" NASA", " the", "FBI"]) == [1.0, 0.0, 1.0]
    assert cat.acts([" Cat", " dog"]) == [1.0, 0.0]
    assert caps.definition()["fn"] and cat.definition()["rule"]["tokens"] == ["cat"]


def test_load_units_from_json_and_yaml_specs(tmp_path):
    spec = {
        "units": [
            {
                "name": "dollar_digits",
                "explanation": "digits after a dollar sign",
                "near_miss": "prices in euros",
                "rule": {
                    "kind": "after",
                    "target": {"kind": "regex", "pattern": "\\d+"},
                    "prev": {"kind": "tokens", "tokens": ["$"]},
                    "chain": True,
                },
            },
            {
                "name": "poly",
                "explanation": "x",
                "rule": {"kind": "any", "rules": [{"kind": "tokens", "tokens": ["a"]}]},
            },
        ]
    }
    (tmp_path / "s.json").write_text(json.dumps(spec))
    units = load_units(tmp_path / "s.json")
    assert [u.name for u in units] == ["dollar_digits", "poly"]
    assert units[0].acts(TOKS)[11:14] == [0, 1, 1]
    (tmp_path / "s.yaml").write_text(
        "- name: months\n  explanation: month names\n  rule: {kind: tokens, tokens: [March]}\n"
    )
    (months,) = load_units(tmp_path / "s.yaml")
    assert months.acts(TOKS)[2] == 1


def test_load_units_rejects_bad_files_with_one_sentence(tmp_path):
    with pytest.raises(UserError, match="No synthetic unit file"):
        load_units(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text(
        json.dumps({"units": [{"name": "x", "explanation": "y", "rule": {"kind": "?"}}]})
    )
    with pytest.raises(UserError, match="valid synthetic units"):
        load_units(tmp_path / "bad.json")
    (tmp_path / "dup.json").write_text(
        json.dumps([{"name": "x", "explanation": "y", "rule": {"kind": "tokens", "tokens": ["a"]}}] * 2)
    )
    with pytest.raises(UserError, match="twice"):
        load_units(tmp_path / "dup.json")
    (tmp_path / "none.py").write_text("x = 1\n")
    with pytest.raises(UserError, match="units"):
        load_units(tmp_path / "none.py")
    (tmp_path / "x.txt").write_text("")
    with pytest.raises(UserError, match="neither"):
        load_units(tmp_path / "x.txt")


def test_bootstrap_ci_on_hand_made_numbers():
    assert bootstrap_ci([0.5, 0.5, 0.5]) == (0.5, 0.5)
    lo, hi = bootstrap_ci([0.0, 1.0] * 20, seed=1)
    assert lo < 0.5 < hi and lo > 0.3 and hi < 0.7
    assert bootstrap_ci([0.0, 1.0] * 20, seed=1) == (lo, hi)  # seeded: reproducible
    assert all(math.isnan(x) for x in bootstrap_ci([]))
    wide, narrow = bootstrap_ci([0.0, 1.0] * 5), bootstrap_ci([0.0, 1.0] * 200)
    assert wide[1] - wide[0] > narrow[1] - narrow[0]


def test_truth_rank_credit_and_pairwise_wins():
    assert truth_rank_credit({"true": 0.9, "gen:top": 0.5, "dis:other": 0.1}) == 1.0
    assert truth_rank_credit({"true": 0.5, "gen:top": 0.9}) == 0.0
    assert truth_rank_credit({"true": 0.9, "gen:top": 0.9, "dis:other": 0.1}) == 0.5
    assert truth_rank_credit({"true": None, "gen:top": 0.9}) is None
    assert truth_rank_credit({"true": 0.9, "gen:top": None}) is None
    assert (
        truth_beats({"true": 0.5, "dis:a": 0.1, "dis:b": 0.5, "dis:c": 0.9}, ["dis:a", "dis:b", "dis:c"])
        == 0.5
    )
    assert truth_beats({"true": 0.5, "dis:a": None}, ["dis:a"]) is None


def test_meta_evaluate_and_spearman_on_hand_made_scores():
    units = [
        {
            "true": {"corr": 0.9, "emb": 0.8},
            "gen:top": {"corr": 0.7, "emb": 0.9},
            "dis:other": {"corr": 0.1, "emb": 0.2},
        },
        {
            "true": {"corr": 0.6, "emb": 0.7},
            "gen:top": {"corr": 0.8, "emb": 0.6},
            "dis:other": {"corr": 0.0, "emb": 0.75},
        },
    ]
    m = meta_evaluate(units, ["corr", "emb"])
    corr, emb = m.scorers
    assert corr.n_units == 2 and corr.truth_first == 0.5 and corr.truth_first_vs_distractors == 1.0
    assert corr.truth_beats_distractors == 1.0
    assert emb.truth_first == 0.0 and emb.truth_first_vs_distractors == 0.5
    assert corr.mean_by_kind["true"] == pytest.approx(0.75)
    assert corr.mean_by_kind["generated"] == pytest.approx(0.75)
    (pair,) = m.spearman
    assert pair.n == 6 and pair.rho == pytest.approx(1 - 6 * 24 / (6 * 35))
    assert spearman_pairs([{"a": 1.0, "b": 2.0}], ["a", "b"])[0].rho is None


def test_distractors_and_keyword_overlap():
    units = BUILTIN[:3]
    d = distractors(units, 2)
    assert d["other"] == units[0].explanation and d["negated"].endswith(units[2].explanation)
    assert d["near_miss"] == units[2].near_miss
    assert keyword_overlap("months of the year", "names of months") == 0.5
    assert keyword_overlap("the def keyword", "the def keyword in Python code") == 1.0
    assert keyword_overlap("historical events", "names of months") == 0.0


def test_builtin_months_are_month_names_not_the_verbs_may_and_march():
    months = next(u for u in BUILTIN if u.name == "months")
    assert months.acts([" In", " May", " it", " may", " march", " March"]) == [0, 1, 0, 0, 0, 1]


def letter(c: str) -> dict:
    return {"kind": "tokens", "tokens": [c]}


# -- a whole bench on a tokenizer-only subject and a scripted LLM ----------------------------------------
def tiny_bench(tmp_path, char_tokenizer, monkeypatch, llm_spec: str, **kw):  # noqa: ANN001, ANN003, ANN201
    """Two letter units over a small text file; a subject without a forward pass (the rules read tokens)."""
    from types import SimpleNamespace

    from autointerp.bench.run import run_bench
    from autointerp.subject.model import SubjectModel

    def no_embedder(*a, **k):  # noqa: ANN002, ANN003, ANN202 - the match falls back to keyword overlap
        raise RuntimeError("no embedder in this test")

    monkeypatch.setattr("autointerp.embed.embed", no_embedder)
    subject = SubjectModel(
        "tiny", SimpleNamespace(cfg=SimpleNamespace(default_prepend_bos=True)), char_tokenizer()
    )
    (tmp_path / "c.txt").write_text("the cat sat on a mat by the door and then a dog ran to it. " * 60)
    suite = [
        {"name": "a", "explanation": "the letter a", "near_miss": "the letter e", "rule": letter("a")},
        {"name": "t", "explanation": "the letter t", "rule": letter("t")},
    ]
    (tmp_path / "suite.json").write_text(json.dumps(suite))
    return run_bench(
        tmp_path / "b.db", suite=str(tmp_path / "suite.json"), methods=kw.pop("methods", ["top"]),
        explainer=llm_spec,
        tokens=3000, ctx=16, subject=subject, corpus=[str(tmp_path / "c.txt")], **kw,
    )  # fmt: skip


def test_bench_rows_of_the_truth_distractors_and_floor_show_their_tokens(
    tmp_path, char_tokenizer, monkeypatch, scripted
):
    from autointerp.bench.report import tables

    r = tiny_bench(tmp_path, char_tokenizer, monkeypatch, scripted().spec)
    rows = {m.method: m for m in r.methods}
    assert set(rows) == {
        "top",
        "true",
        "distractor:other",
        "distractor:negated",
        "distractor:near_miss",
        "random",
    }
    for m in rows.values():
        assert m.prompt_tokens > 0 or m.cached_calls > 0, m.method  # every row says what it spent
    assert rows["true"].prompt_tokens > 0 and rows["distractor:negated"].prompt_tokens > 0
    header, *body = tables(r)["methods"]
    col = header.index("prompt tok")
    shown = {row[0]: row[col] for row in body}
    assert shown["true"] == f"{rows['true'].prompt_tokens:,}" and "cached tok (calls)" in header
    again = tiny_bench(tmp_path, char_tokenizer, monkeypatch, scripted().spec)  # all stored: nothing spent
    assert all(m.prompt_tokens == 0 for m in again.methods)


def test_bench_phases_count_every_unit_and_given_explanation(tmp_path, char_tokenizer, monkeypatch, scripted):
    """What a piped `bench` shows: each phase with its total, ticked once per item (also when resumed)."""
    for _ in range(2):  # the second run finds everything stored: the phases still count to their totals
        seen: dict[str, list[int]] = {}

        def phases(label: str, total: int, seen=seen):  # noqa: ANN202
            seen[label] = [total, 0]
            return lambda: seen[label].__setitem__(1, seen[label][1] + 1)

        r = tiny_bench(tmp_path, char_tokenizer, monkeypatch, scripted().spec, phases=phases)
        given = sum(m.n_units for m in r.methods if m.method != "top")
        assert seen == {
            "method top": [2, 2],
            "given explanations (truth, distractors, the random floor)": [given] * 2,
        }


def test_out_of_credit_stops_a_bench_and_its_run_row_ends_failed(
    tmp_path, char_tokenizer, monkeypatch, scripted
):
    from autointerp.llm import OutOfCreditError
    from autointerp.store import Store

    def refuse(request):  # noqa: ANN001, ANN202
        raise OutOfCreditError("scripted:test: refused for lack of credit (quota exceeded); add credit.")

    llm = scripted(respond=refuse)
    with pytest.raises(OutOfCreditError, match="lack of credit"):
        tiny_bench(tmp_path, char_tokenizer, monkeypatch, llm.spec)
    assert len(llm.requests) == 1  # the first refusal stopped everything
    (run,) = Store(tmp_path / "b.db").runs("bench")
    assert run.status == "failed" and "lack of credit" in run.summary["error"]


def test_builtin_truths_say_what_their_rules_fire_on():
    """A true explanation says exactly what its rule fires on: the import keyword, not whole statements."""
    imp = next(u for u in BUILTIN if u.name == "import")
    assert imp.explanation == "the import keyword in Python code"
    assert imp.acts(["from", " os", " import", " path"]) == [0, 0, 1, 0]
