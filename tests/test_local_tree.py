"""The local engine's tree mode (#16, `llm/tree.py`) on a tiny random Qwen2 in float32.

A batch's prompts after their common prefix form a token tree; every node is forwarded once, in packs
closed under ancestors, each node seeing its ancestors only. The probabilities must be those of the
row-group engine and of one request at a time (float32: up to float rounding), from as many forward
tokens as the tree has nodes (plus each pack's repeated path when packs are small).
"""

from __future__ import annotations

import random

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from autointerp.llm import local, tree  # noqa: E402
from autointerp.llm.base import TokenProbsRequest  # noqa: E402
from autointerp.llm.local import _Prepared  # noqa: E402
from tests.test_local_groups import HEADER, _close, _engine, _rows, _run  # noqa: E402


def _random_rows(rng: random.Random, n: int) -> tuple[list[list[int]], list[list[int]]]:
    """Rows over a 3-token alphabet (many shared prefixes), each read at 1-3 random indices."""
    rows, reads = [], []
    for _ in range(n):
        ids = [rng.randrange(3) for _ in range(rng.randrange(1, 9))]
        rows.append(ids)
        reads.append(sorted(rng.sample(range(len(ids)), rng.randrange(1, min(3, len(ids)) + 1))))
    return rows, reads


def test_the_tree_has_a_node_per_distinct_prefix_up_to_each_rows_last_read():
    rng = random.Random(0)
    for _ in range(200):
        rows, reads = _random_rows(rng, rng.randrange(1, 12))
        t = tree.build(rows, reads)
        pairs = zip(rows, reads, strict=True)
        prefixes = {tuple(ids[: j + 1]) for ids, want in pairs for j in range(max(want) + 1)}
        assert len(t) == len(prefixes)
        path = {}  # node -> its token path, rebuilt from parents
        for v in range(len(t)):
            path[v] = (path[t.parent[v]] if t.parent[v] >= 0 else ()) + (t.token[v],)
            assert t.depth[v] == len(path[v])
        assert set(path.values()) == prefixes
        for ids, want, nodes in zip(rows, reads, t.reads, strict=True):
            assert [path[v] for v in nodes] == [tuple(ids[: i + 1]) for i in want]
        for v in range(len(t)):  # counted on the first row whose paths hold it
            assert t.owner[v] == min(r for r, n in enumerate(t.reads) if v in _nodes_of(t, n))


def _nodes_of(t: tree.Tree, reads: list[int]) -> set[int]:
    """The nodes on the paths from the root to `reads`."""
    out = set()
    for v in reads:
        while v >= 0:
            out.add(v)
            v = t.parent[v]
    return out


def test_packs_are_closed_under_ancestors_and_hold_every_node_once_at_home():
    rng = random.Random(1)
    for _ in range(200):
        rows, reads = _random_rows(rng, rng.randrange(1, 15))
        t = tree.build(rows, reads)
        size = rng.choice([1, 3, 5, 8, 64])
        packs, home = tree.packs(t, size)
        assert sorted(home) == list(range(len(t)))
        for k, pack in enumerate(packs):
            assert len(pack) <= max(size, max(t.depth) + 1)
            assert len(set(pack)) == len(pack)
            assert all(t.parent[v] < 0 or t.parent[v] in pack[: pack.index(v)] for v in pack)  # parents first
            assert sum(home[v] == k for v in pack) >= 1
        seen = tree.ancestors(t, packs[0], len(packs[0]) + 2)
        for j, v in enumerate(packs[0]):
            assert {packs[0][i] for i in range(len(packs[0])) if seen[j, i]} == _nodes_of(t, [v])
        assert seen[-1, -1] and seen[-1].sum() == 1  # padding sees only itself
        if len(packs) == 1:
            assert len(packs[0]) == len(t)  # one pack: every node forwarded exactly once


def _tree_run(rows: list[_Prepared], pack: int) -> tuple[list, int, int]:
    saved, local.TREE_PACK = local.TREE_PACK, pack
    try:
        return _run(rows, grouped=True, tree=True)
    finally:
        local.TREE_PACK = saved


def test_tree_mode_gives_the_row_groups_probabilities_from_one_pass_per_node():
    rows = _rows(n_per=12, seed=3)
    grouped, fwd_g, _ = _run(rows, grouped=True)
    alone = [_run([r], grouped=False, reuse=False)[0][0] for r in rows]
    t = tree.build([r.ids[len(HEADER) :] for r in rows], [[i - len(HEADER) for i in r.idx] for r in rows])
    for pack in (4096, 20):  # one pack; packs that start inside subtrees (their paths forwarded again)
        treed, fwd_t, reused_t = _tree_run(rows, pack)
        _close(treed, grouped)
        _close(treed, alone)
        packs, _ = tree.packs(t, pack)
        assert (len(packs) > 1) == (pack == 20)
        assert fwd_t == len(HEADER) + sum(map(len, packs))  # the header once (into the LRU), then the packs
        assert sum(c for _, _, c in treed) == fwd_t  # per row counts add up (duplicates on row 0)
        assert reused_t == len(HEADER) * len(packs)  # every pack reads the header's key/values
    assert len(t) < sum(len(r.ids) - len(HEADER) for r in rows)
    assert _tree_run(rows, 4096)[1] < fwd_g  # the explanations' start token is shared; listings' heads too


class _CharTok:
    """One token per character (ids 10-99), no special tokens."""

    pad_token_id = 0
    all_special_ids: list[int] = []

    def __call__(self, text: str, return_offsets_mapping: bool = False) -> dict:
        return {"input_ids": self.encode(text), "offset_mapping": [(i, i + 1) for i in range(len(text))]}

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [10 + ord(c) % 90 for c in text]


def test_tokens_after_the_last_read_are_neither_forwarded_nor_needed():
    """`prepare` cuts a prompt after its last read position (the exact listing's final "0\n"), still
    counting the whole prompt; the probabilities are those of the whole prompt forwarded."""
    eng = _engine()
    eng.tok = _CharTok()
    text = "the few-shot block of the prompt\nExplanation: x\n a\t0\n b\t0\n"
    reads = [text.index("a\t") + 2, len(text) - 2]
    req = TokenProbsRequest(prompt=text, positions=reads, candidates=["0", "1"])
    prep = eng.prepare(req)
    assert prep.n_prompt == len(text) and len(prep.ids) == len(text) - 2 and prep.idx[-1] == len(text) - 3
    (cut,) = eng.token_probs_batch([prep])
    assert eng.stats["forward_tokens"] == len(text) - 2
    whole = _Prepared(eng.tok.encode(text), prep.idx, prep.cand, len(text))
    _close([cut], [_run([whole], grouped=False, reuse=False)[0][0]])


def test_one_prompt_is_forwarded_from_the_lrus_prefix():
    """A single request (a judge's prompt) reuses the cached key/values of its few-shot block."""
    eng = _engine()
    rows = _rows(n_per=2)
    eng.token_probs_batch(rows[:2])  # the header into the LRU
    before = eng.stats["forward_tokens"]
    (one,) = eng.token_probs_batch([rows[2]])
    assert eng.stats["forward_tokens"] - before == len(rows[2].ids) - len(HEADER)
    _close([one], [_run([rows[2]], grouped=False, reuse=False)[0][0]])


def test_a_prompt_longer_than_a_pack_past_the_common_prefix_goes_to_the_row_groups(monkeypatch):
    """Its pack's mask would grow with its square: the batch is forwarded in row groups instead."""
    rows = _rows(n_per=12, seed=3)
    monkeypatch.setattr(local, "TREE_PACK", 16)  # the listings (~17 tokens past the header) do not fit
    treed, fwd_t, _ = _run(rows, grouped=True, tree=True)
    grouped, fwd_g, _ = _run(rows, grouped=True)
    assert fwd_t == fwd_g
    _close(treed, grouped)
    monkeypatch.setattr(local, "TREE_PACK", 64)
    assert _run(rows, grouped=True, tree=True)[1] < fwd_g
