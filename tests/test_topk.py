"""The streaming buffers and statistics against brute-force references on random data."""

import math

import numpy as np
import pytest
import torch

from autointerp.subject import recorder
from autointerp.subject.recorder import HIST_EDGES, KeyedTopK, SourceState, UnitStatsAcc
from autointerp.types import RecordSettings


def stream(n_batches=7, b=5, t=6, u=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    for i in range(n_batches):
        acts = torch.randn((b, t, u), generator=g)
        acts[:, :, 0] = 0.0  # a unit that never fires: ties everywhere
        toks = torch.arange(i * b * t, (i + 1) * b * t, dtype=torch.int32).view(b, t)
        yield acts, toks


def wids_of(toks: torch.Tensor) -> torch.Tensor:
    """The stream position of each window of `stream` (its first token id counts tokens before it)."""
    return toks[:, 0].long() // toks.shape[1]


@pytest.mark.parametrize("k", [1, 3, 8, 40])
def test_topk_by_window_max_matches_brute_force(k):
    batches = list(stream())
    buf = KeyedTopK(k, 9, 6)
    for acts, toks in batches:
        buf.update(acts.max(dim=1).values, acts, toks, wids_of(toks))
    all_acts = torch.cat([a for a, _ in batches])  # (N, T, U)
    all_toks = torch.cat([t for _, t in batches])
    for u in range(1, 9):
        maxes = all_acts[:, :, u].max(dim=1).values
        want = maxes.sort(descending=True).values[:k]
        got = buf.entries(u)
        assert [e[0] for e in got] == pytest.approx(want.tolist())
        for key, acts, toks in got:  # each kept window carries its own activations and tokens
            row = int(np.nonzero((all_toks.numpy() == toks).all(axis=1))[0][0])
            assert np.allclose(acts, all_acts[row, :, u].numpy())
            assert acts.max() == pytest.approx(key)


def test_topk_keeps_all_when_fewer_windows_than_k():
    buf = KeyedTopK(100, 9, 6)
    for acts, toks in stream(n_batches=2):
        buf.update(acts.max(dim=1).values, acts, toks, wids_of(toks))
    assert len(buf.entries(3)) == 10


def test_masked_keys_never_enter():
    """-inf keys (a reservoir's excluded windows) are never kept."""
    buf = KeyedTopK(4, 9, 6)
    for acts, toks in stream():
        keys = torch.where(acts.max(dim=1).values > 1.5, torch.rand(acts.shape[0], 9), -math.inf)
        buf.update(keys, acts, toks, wids_of(toks))
    for u in range(9):
        assert all(e[1].max() > 1.5 for e in buf.entries(u))
    assert buf.entries(0) == []


def test_stats_match_numpy():
    acc = UnitStatsAcc(9, threshold=0.5)
    batches = list(stream())
    for acts, _ in batches:
        acc.update(acts.reshape(-1, 9), acts.max(dim=1).values)
    x = torch.cat([a.reshape(-1, 9) for a, _ in batches]).numpy().astype(np.float64)
    for u, s in enumerate(acc.all_stats()):
        assert s.n_tokens == x.shape[0]
        assert s.mean == pytest.approx(x[:, u].mean(), abs=1e-6)
        assert s.std == pytest.approx(x[:, u].std(), abs=1e-5)
        assert s.max == pytest.approx(x[:, u].max())
        assert s.frac_firing == pytest.approx((x[:, u] > 0.5).mean())
        want, _ = np.histogram(x[:, u], bins=[-np.inf, *HIST_EDGES.tolist(), np.inf])
        assert sum(s.hist_counts) == x.shape[0]
        if u == 0:  # exactly 0.0 everywhere: bins are (a, b], so all of it in the bin that ends at 0
            zero_bin = HIST_EDGES.tolist().index(0.0)  # bin j is (edges[j-1], edges[j]]
            assert s.hist_counts[zero_bin] == x.shape[0]
        else:  # numpy's bins are [a, b): the same counts for values not exactly on an edge
            assert s.hist_counts == want.tolist()


def test_reservoirs_are_uniform_and_respect_firing():
    """Quantile pool holds only firing windows, negatives only non-firing, random is shared by units."""
    s = RecordSettings(model="m", hooks=["h"], ctx=6, quantile_pool=30, n_negative=30, n_random=10)
    st = SourceState.new(s, list(range(9)), "h")
    for acts, toks in stream(n_batches=40):
        st.update(acts, toks, wids_of(toks))
    for u in range(1, 9):
        assert all(e[1].max() > 0 for e in st.quantile.entries(u))
        assert all(e[1].max() <= 0 for e in st.negative.entries(u))
    shared = {tuple(e[2].tolist()) for e in st.random.entries(1)}
    assert len(shared) == 10
    for u in range(2, 9):
        assert {tuple(e[2].tolist()) for e in st.random.entries(u)} == shared
    # uniform: over 200 windows the kept random windows come from all over the stream, not its start
    firsts = sorted(int(e[2][0]) for e in st.random.entries(1))
    assert firsts[-1] > 100 * 6


def test_sparse_stats_equal_dense_stats(monkeypatch: pytest.MonkeyPatch):
    """SAE-like activations (mostly exact zeros, some negative) take the sparse path; same stats as dense."""
    gen = torch.Generator().manual_seed(3)
    batches = []
    for _ in range(3):
        acts = torch.randn((4, 8, 50), generator=gen)
        acts[torch.rand((4, 8, 50), generator=gen) < 0.95] = 0.0
        batches.append(acts)
    out = {}
    for path, sparse_below in (("sparse", 8), ("dense", 10**9)):  # 10**9: never sparse
        monkeypatch.setattr(recorder, "SPARSE_BELOW", sparse_below)
        acc = UnitStatsAcc(50, threshold=-0.1)  # a negative threshold: zeros count as firing
        for acts in batches:
            acc.update(acts.reshape(-1, 50), acts.amax(dim=1))
        out[path] = acc.all_stats()
    x = torch.cat([a.reshape(-1, 50) for a in batches]).numpy().astype(np.float64)
    for u, (sp, de) in enumerate(zip(out["sparse"], out["dense"], strict=True)):
        assert sp.hist_counts == de.hist_counts
        assert sp.mean == pytest.approx(de.mean, abs=1e-6) and sp.std == pytest.approx(de.std, abs=1e-6)
        assert sp.frac_firing == de.frac_firing == pytest.approx((x[:, u] > -0.1).mean())
        assert sp.max == de.max == pytest.approx(x[:, u].max())


def test_quantile_groups_cut_like_array_split():
    """Slot r of a unit with n filled slots lands in the group numpy.array_split would put it in."""
    k, n_quantiles = 12, 5
    filled = np.arange(k + 1)
    got = recorder.quantile_groups(filled, k, n_quantiles)
    for n in filled:
        groups = np.array_split(np.arange(n), min(n_quantiles, max(n, 1)))
        want = [q for q, g in enumerate(groups) for _ in g]
        assert got[n, :n].tolist() == want


@pytest.mark.parametrize(("sparse", "threshold"), [(False, 0.0), (True, -0.1)])
def test_special_positions_are_left_out_of_maxima_stats_and_peaks(sparse, threshold):
    """Special positions (BOS at 0, one more mid-window) are the largest activations here, yet no kept
    set, window max or statistic sees them, and a stored special position is never a window's peak."""
    s = RecordSettings(
        model="m",
        hooks=["h"],
        ctx=6,
        top_k=4,
        quantile_pool=30,
        n_random=5,
        n_negative=30,
        fire_threshold=threshold,
    )
    st = SourceState.new(s, list(range(9)), "h")
    g = torch.Generator().manual_seed(2)
    seen, masks = [], []
    for acts, toks in stream(n_batches=10):
        if sparse:
            acts[torch.rand(acts.shape, generator=g) < 0.95] = 0.0
        else:
            acts[:, :, 1] -= 3.0  # mostly negative: windows where 0.0 would rise above every activation
        acts[:, 0, :], acts[2, 3, :] = 50.0, 40.0
        mask = torch.zeros(acts.shape[:2], dtype=torch.bool)
        mask[:, 0] = mask[2, 3] = True
        seen.append(acts.clone())
        masks.append(mask)
        st.update(acts, toks, wids_of(toks), special=mask.nonzero(as_tuple=True))
    x, mask = torch.cat(seen), torch.cat(masks)
    stats = st.stats.all_stats()
    for u in range(9):
        inc = x[:, :, u][~mask].double().numpy()
        win_max = x[:, :, u].masked_fill(mask, -math.inf).amax(1)
        assert [e[0] for e in st.top.entries(u)] == pytest.approx(
            win_max.sort(descending=True).values[:4].tolist()
        )
        assert stats[u].n_tokens == inc.size and sum(stats[u].hist_counts) == inc.size
        assert stats[u].max == pytest.approx(inc.max())
        assert stats[u].mean == pytest.approx(inc.mean(), abs=1e-6)
        assert stats[u].frac_firing == pytest.approx((inc > threshold).mean())
        want, _ = np.histogram(inc[inc != 0], bins=[-np.inf, *HIST_EDGES.tolist(), np.inf])
        want[recorder.ZERO_BIN] += (inc == 0).sum()  # numpy's bins are [a, b), ours (a, b]
        assert stats[u].hist_counts == want.tolist()
        for buf in st.buffers().values():
            for _, acts, _ in buf.entries(u):
                rest = acts[1:]
                assert acts[0] == (0.0 if rest.max() >= 0 else rest.min())  # never the window's peak
    if not sparse:  # the window-min filler was exercised
        assert any(e[1][0] < 0 for e in st.negative.entries(1))


def test_recorder_leaves_bos_out_unless_asked(tmp_path, char_tokenizer):
    """Synthetic units through the recorder: BOS is left out by default (a BOS-only unit never fires,
    and sampling it says why), kept with include_special, and the store says which."""
    from types import SimpleNamespace

    from autointerp.bench.synthetic import AnyRule, PositionRule, SyntheticUnit, TokensRule, synthetic_sources
    from autointerp.errors import UserError
    from autointerp.sampling import SampleSettings, sample_unit
    from autointerp.store import Store
    from autointerp.subject.model import SubjectModel
    from autointerp.subject.recorder import Recorder

    subject = SubjectModel(
        "tiny", SimpleNamespace(cfg=SimpleNamespace(default_prepend_bos=True)), char_tokenizer()
    )
    text = tmp_path / "c.txt"
    text.write_text("a cat sat on a mat. " * 20)
    units = [
        SyntheticUnit(name="bos", explanation="the first token", rule=PositionRule(start=0, stop=1, value=3)),
        SyntheticUnit(
            name="a_or_bos",
            explanation="the letter a",
            rule=AnyRule(rules=[PositionRule(start=0, stop=1, value=5), TokensRule(tokens=["a"])]),
        ),
    ]
    store = Store(tmp_path / "x.db")

    def record(**kw):
        s = RecordSettings(
            model="tiny",
            hooks=[u.hook for u in units],
            corpus=[str(text)],
            ctx=8,
            max_tokens=160,
            batch_size=4,
            top_k=3,
            **kw,
        )
        return Recorder(subject, s, synthetic_sources(subject.token_strs, units)).run(store)

    default = record()
    unit = store.get_unit("tiny/synthetic.a_or_bos/0")
    assert (unit.stats.max, unit.stats.n_tokens, sum(unit.stats.hist_counts)) == (1.0, 20 * 7, 20 * 7)
    top = store.examples(unit.id, "top")
    assert all(e.acts[0] == 0.0 and e.max_act == 1.0 for e in top)
    assert top[0].provenance["special_tokens"] == "excluded"
    run = store.get_run(default.run_id)
    assert run.settings["include_special"] is False
    assert (run.summary["special_tokens"], run.summary["special_positions"]) == ("excluded", 20)
    with pytest.raises(UserError, match="never fired .*outside BOS .*--keep-bos"):
        sample_unit(store, "tiny/synthetic.bos/0", SampleSettings())

    kept = record(include_special=True)
    assert kept.run_id != default.run_id
    unit = store.get_unit("tiny/synthetic.a_or_bos/0")
    assert (unit.stats.max, unit.stats.n_tokens) == (5.0, 20 * 8)
    top = store.examples(unit.id, "top")
    assert top[0].max_pos == 0 and top[0].provenance["special_tokens"] == "included"
    assert sample_unit(store, "tiny/synthetic.bos/0", SampleSettings()).explain[0].max_act == 3.0
