"""The local engine's row groups (#16) on a tiny random Qwen2 in float32: no download, a few seconds.

A batch holding two explanations' chunk listings (as `label` makes with two units at once) shares
only the few-shot header; grouped, each explanation's rows are forwarded from the end of their own
explanation line. The probabilities must be those of the ungrouped engine and of one request at a
time (float32: up to float rounding), and the forward tokens must drop by the explanation lines.
"""

from __future__ import annotations

import random

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from autointerp.llm import local  # noqa: E402
from autointerp.llm.local import Engine, _Prepared, _row_groups  # noqa: E402
from tests.conftest import tiny_qwen2  # noqa: E402

HEADER = list(range(3, 43))  # 40 tokens: the few-shot block, then "Explanation: "
EXPLANATIONS = [[50 + i for i in range(12)], [70 + i for i in range(9)]]
CAND = [5, 6, 7, 8]


class _Tok:
    pad_token_id = 0


def _engine() -> Engine:
    return Engine(name="tiny-qwen2", model=tiny_qwen2(), tok=_Tok(), device="cpu")


def _rows(n_per: int = 10, seed: int = 0) -> list[_Prepared]:
    """Chunk listings of both explanations, interleaved: header, explanation, a start token, then 4
    listing tokens read after the 2nd and 4th (as `token<TAB>0` lines read at each TAB)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n_per):
        for e in EXPLANATIONS:
            ids = [*HEADER, *e, 1, rng.randrange(10, 99), 2, rng.randrange(10, 99), 2]
            rows.append(_Prepared(ids, [len(ids) - 3, len(ids) - 1], CAND))
    return rows


def _run(
    rows: list[_Prepared], grouped: bool, reuse: bool = True, tree: bool = False
) -> tuple[list, int, int]:
    """Results, forward tokens and reused tokens of one batch on a fresh engine (empty prefix LRU);
    row groups (the engine without tree mode, `tests/test_local_tree.py`) unless `tree`."""
    eng = _engine()
    saved = local.GROUP_ROWS, local.TREE_ROWS
    local.GROUP_ROWS, local.TREE_ROWS = grouped, tree
    try:
        out = eng.token_probs_batch(rows, reuse=reuse)
    finally:
        local.GROUP_ROWS, local.TREE_ROWS = saved
    return out, eng.stats["forward_tokens"], eng.stats["reused_tokens"]


def _close(a: list, b: list) -> None:
    for (pa, ma, _), (pb, mb, _) in zip(a, b, strict=True):
        for x, y in zip(pa, pb, strict=True):
            assert x == pytest.approx(y, abs=1e-5)
        assert ma == pytest.approx(mb, rel=1e-5)


def test_grouped_rows_give_the_ungrouped_probabilities_from_fewer_forward_tokens():
    rows = _rows()
    grouped, fwd_g, reused_g = _run(rows, grouped=True)
    ungrouped, fwd_u, reused_u = _run(rows, grouped=False)
    alone = [_run([r], grouped=False, reuse=False)[0][0] for r in rows]
    _close(grouped, ungrouped)
    _close(grouped, alone)
    assert grouped[0][0] != grouped[1][0]  # each row read its own listing

    n, lens = len(rows), [len(r.ids) for r in rows]
    h, e1, e2 = len(HEADER), *map(len, EXPLANATIONS)
    # ungrouped: the header once, then every row its explanation line and listing
    assert fwd_u == h + sum(lens) - n * h
    # grouped: explanation 1's prefix computed whole, explanation 2's from the header on (the LRU's best
    # match cropped), then every row its start token and listing only
    p1, p2 = h + e1 + 1, h + e2 + 1  # the start token is shared too: rows differ from the listing on
    assert fwd_g == p1 + (p2 - h) + sum(lens) - (n // 2) * (p1 + p2)
    assert fwd_u - fwd_g == (n // 2 - 1) * (e1 + 1) + (n // 2 - 1) * (e2 + 1)
    # the counts stay true: per row computed tokens add up to the forward tokens; reused = not forwarded
    assert sum(c for _, _, c in grouped) == fwd_g and sum(c for _, _, c in ungrouped) == fwd_u
    assert reused_g == (n // 2) * (p1 + p2) + h  # rows from their prefixes; the header from the LRU
    assert reused_u == n * h


def test_groups_follow_each_rows_first_read_and_keep_unrelated_rows_apart():
    rows = _rows(n_per=6)
    early = list(rows[0].ids)  # explanation 1's text, read inside its explanation line
    rows.append(_Prepared(early, [h := len(HEADER) + 3, len(early) - 1], CAND))
    groups = _row_groups(rows)
    assert sum(len(g) for g, _ in groups) == len(rows)
    by_row = {i: p for g, p in groups for i in g}
    assert by_row[len(rows) - 1] <= h  # its first read position's logits are forwarded
    assert {by_row[i] for i in range(0, 12, 2)} == {len(HEADER) + len(EXPLANATIONS[0]) + 1}
    assert {by_row[i] for i in range(1, 12, 2)} == {len(HEADER) + len(EXPLANATIONS[1]) + 1}
    _close(_run(rows, grouped=True)[0], _run(rows, grouped=False)[0])

    # rows with nothing in common: one group each (each matches the LRU on its own), as before
    apart = [_Prepared([90 - i, *range(3 + i, 30 + i)], [20], CAND) for i in range(4)]
    assert _row_groups(apart) == [([3, 2, 1, 0], 0)]
    # one shared prefix, rows differing right after it: one group, the batch's prefix
    same = [_Prepared([*HEADER, t, 2], [len(HEADER) + 1], CAND) for t in range(10, 20)]
    assert _row_groups(same) == [(list(range(10)), len(HEADER))]


def test_a_small_split_is_not_worth_a_group():
    """Two one-token explanations, 4 rows each: a group apiece saves 3 tokens each, under GROUP_COST."""
    short = [_Prepared([*HEADER, 50, t, 2], [len(HEADER) + 2], CAND) for t in range(10, 14)] + [
        _Prepared([*HEADER, 51, t, 2], [len(HEADER) + 2], CAND) for t in range(10, 14)
    ]
    assert _row_groups(short) == [(sorted(range(8), key=lambda i: short[i].ids), len(HEADER))]


def test_common_prefix_of_two_rows():
    rng = random.Random(0)
    for _ in range(2000):
        a = [rng.randrange(3) for _ in range(rng.randrange(12))]
        b = [rng.randrange(3) for _ in range(rng.randrange(12))]
        assert local._lcp2(a, b) == local._lcp([a, b])
    assert local._lcp2([1, 2, 3], [1, 2, 3, 4]) == 3 and local._lcp2([], [1]) == 0


def test_each_batch_hands_freed_memory_back_once(monkeypatch):
    """The engine trims the C heap (llm/malloc.py) once after each token_probs or stepwise batch."""
    calls: list[int] = []

    def trim() -> float:
        calls.append(1)
        return 0.25

    monkeypatch.setattr(local.malloc, "trim", trim)
    eng = _engine()
    eng.token_probs_batch(_rows(3), reuse=True)
    eng.token_probs_batch(_rows(3, seed=1), reuse=False)
    assert len(calls) == 2
    assert eng.stats["trims"] == 2 and eng.stats["trim_s"] == pytest.approx(0.5)
    eng.stepwise_batch([local._Steps(HEADER, [[60, 2], [61, 2]], CAND, [9])])
    assert len(calls) == 3 and eng.stats["trims"] == 3
    monkeypatch.setattr(local.malloc, "trim", lambda: None)  # no glibc: nothing counted
    eng.token_probs_batch(_rows(3), reuse=True)
    assert eng.stats["trims"] == 3
