"""The local backend on the embedded SmolLM2-135M (real model, marked slow; each test is a few seconds)."""

from __future__ import annotations

import asyncio

import pytest

from autointerp.errors import UserError
from autointerp.llm import ChatRequest, LLMError, Message, TokenProbsRequest, Tool, get_llm, malloc
from autointerp.llm.local import LocalLLM, load_engine
from autointerp.store import Store

pytestmark = pytest.mark.slow

DIGITS = [str(i) for i in range(10)]
PREFIX = (
    "Each line is a word, a tab and how strongly it names a month (0-9).\n"
    "March\t9\nbanana\t0\nJune\t8\nrun\t0\nOctober\t9\nthe\t0\n"
)
WORDS = ["April", "table", "May", "Tuesday", "winter", "December"]


def _requests(words: list[str]) -> list[TokenProbsRequest]:
    reqs = []
    for w in words:
        prompt = f"{PREFIX}{w}\t"
        reqs.append(TokenProbsRequest(prompt=prompt, positions=[len(prompt)], candidates=DIGITS))
    return reqs


def _reference(llm: LocalLLM, prompt: str, candidates: list[str]) -> tuple[list[float], float]:
    """Softmax over the model's own logits for the next token after `prompt`, restricted to candidates."""
    import torch

    eng = llm.engine
    ids = eng.tok(prompt, return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        logp = eng.model(input_ids=ids).logits[0, -1].float().log_softmax(-1)
    cand = [eng.tok.encode(c, add_special_tokens=False)[0] for c in candidates]
    p = logp[cand].exp()
    return (p / p.sum()).tolist(), p.sum().item()


def test_token_probs_equal_the_models_logits():
    llm = LocalLLM("smollm2-135m", dtype="float32")
    prompt = f"{PREFIX}April\t9\ntable\t0\nMay\t"
    positions = [len(PREFIX) + len("April\t"), len(PREFIX) + len("April\t9\ntable\t"), len(prompt)]
    resp = asyncio.run(
        llm.token_probs(TokenProbsRequest(prompt=prompt, positions=positions, candidates=DIGITS))
    )
    assert len(resp.probs) == 3
    for p, probs, mass in zip(positions, resp.probs, resp.mass, strict=True):
        ref, ref_mass = _reference(llm, prompt[:p], DIGITS)
        assert [probs[c] for c in DIGITS] == pytest.approx(ref, abs=1e-4)
        assert mass == pytest.approx(ref_mass, rel=1e-3)
        assert sum(probs.values()) == pytest.approx(1.0, abs=1e-5) and 0 < mass <= 1
    assert resp.probs[0] != resp.probs[1]  # each position has its own distribution


# float32: identical up to float rounding. bfloat16 (the default): a different batch shape alone moves a
# probability by up to ~0.05 on this model, with or without reuse, so the bound is looser.
@pytest.mark.parametrize(("dtype", "tol"), [("float32", 1e-4), ("bfloat16", 0.1)])
def test_prefix_reuse_gives_the_same_numbers(dtype, tol):
    reuse = LocalLLM("smollm2-135m", dtype=dtype, prefix_cache=True)
    plain = LocalLLM("smollm2-135m", dtype=dtype, prefix_cache=False)
    reqs = _requests(WORDS)
    stats = reuse.engine.stats
    before = stats["reused_tokens"]
    with_reuse = asyncio.run(reuse.token_probs_many(reqs))  # one batch: the common prefix runs once
    assert stats["reused_tokens"] > before
    before = stats["reused_tokens"]
    one_by_one = [asyncio.run(reuse.token_probs(r)) for r in reqs[:2]]  # across calls: the prefix LRU
    assert stats["reused_tokens"] > before
    without = asyncio.run(plain.token_probs_many(reqs))
    for a, b in zip(with_reuse, without, strict=True):
        assert [a.probs[0][c] for c in DIGITS] == pytest.approx([b.probs[0][c] for c in DIGITS], abs=tol)
    for a, b in zip(one_by_one, without[:2], strict=True):
        assert [a.probs[0][c] for c in DIGITS] == pytest.approx([b.probs[0][c] for c in DIGITS], abs=tol)


def test_token_probs_reject_off_boundary_positions_and_multi_token_candidates():
    llm = LocalLLM("smollm2-135m")
    with pytest.raises(LLMError, match="not on a token boundary"):
        asyncio.run(llm.token_probs(TokenProbsRequest(prompt="December\t", positions=[3], candidates=DIGITS)))
    with pytest.raises(UserError, match="single-token"):
        asyncio.run(llm.token_probs(TokenProbsRequest(prompt="June\t", positions=[5], candidates=["10"])))


def test_greedy_chat_is_deterministic_with_stop_and_logprobs(tmp_path):
    llm = get_llm("local:smollm2-135m", Store(tmp_path / "c.db"), no_cache=True)
    req = ChatRequest(
        messages=[Message(role="user", content="List three colors.")], max_tokens=24, top_logprobs=3
    )
    a, b = asyncio.run(llm.chat(req)), asyncio.run(llm.chat(req))
    assert a.text and a.text == b.text and not b.usage.cached
    assert a.usage.completion_tokens == len(a.logprobs) and a.usage.prompt_tokens > 0
    for t in a.logprobs:  # greedy: every chosen token is the most likely one
        assert t.logprob == pytest.approx(max(t.top.values()), abs=1e-6)
    first_line = a.text.split("\n")[0]
    stopped = asyncio.run(llm.chat(req.model_copy(update={"stop": ["\n"], "top_logprobs": 0})))
    assert stopped.text == first_line and stopped.finish_reason == "stop"
    with pytest.raises(LLMError, match="cannot call tools"):
        asyncio.run(
            llm.chat(req.model_copy(update={"tools": [Tool(name="f", description="", parameters={})]}))
        )


def test_chat_hands_freed_memory_back_where_glibc_is(tmp_path):
    llm = get_llm("local:smollm2-135m", Store(tmp_path / "c.db"), no_cache=True)
    req = ChatRequest(messages=[Message(role="user", content="Say hi.")], max_tokens=4)
    asyncio.run(llm.chat(req))  # loads the engine
    stats = load_engine("smollm2-135m").stats
    before = stats["trims"]
    asyncio.run(llm.chat(req))
    assert stats["trims"] == before + (malloc.glibc() is not None and malloc.enabled())


def test_token_probs_are_cached_in_the_store(tmp_path):
    llm = get_llm("local:smollm2-135m", Store(tmp_path / "c.db"))
    req = _requests(["July"])[0]
    first = asyncio.run(llm.token_probs(req))
    second = asyncio.run(llm.token_probs(req))
    many = asyncio.run(llm.token_probs_many([req, *_requests(["chair"])]))
    assert not first.usage.cached and second.usage.cached and many[0].usage.cached
    assert second.probs == first.probs and not many[1].usage.cached
    assert llm.calls == 2


def test_stepwise_read_out_equals_one_full_prompt_per_step():
    """Batched stepwise decoding (shared prompt, left-padded steps, own positions) is exact in fp32."""
    from autointerp.llm import StepwiseRequest
    from autointerp.llm.stepwise import stepwise_via_token_probs

    llm = LocalLLM("smollm2-135m", dtype="float32", prefix_cache=False)
    reqs = [
        StepwiseRequest(prompt=PREFIX, steps=[f"{w}\t" for w in words], candidates=DIGITS)
        for words in (
            ["April", "table", " long-winded", "May"],
            ["Tuesday"],
            ["winter", "December", "spring"],
        )
    ]
    native = asyncio.run(llm.stepwise_many(reqs))
    reference = asyncio.run(stepwise_via_token_probs(llm, reqs))
    for a, b, r in zip(native, reference, reqs, strict=True):
        assert len(a.probs) == len(r.steps) and a.chosen == b.chosen
        for pa, pb in zip(a.probs, b.probs, strict=True):
            assert [pa[d] for d in DIGITS] == pytest.approx([pb[d] for d in DIGITS], abs=1e-4)
        assert a.mass == pytest.approx(b.mass, abs=1e-4)
    assert native[0].usage.completion_tokens == 4
    with pytest.raises(UserError, match="single-token candidates"):  # a 0-10 scale: "10" is two tokens
        asyncio.run(llm.stepwise_many([StepwiseRequest(prompt=PREFIX, steps=["May\t"], candidates=["10"])]))


def test_usage_counts_the_prompt_tokens_a_shared_prefix_saved():
    """Prompt tokens minus reused ones are exactly the tokens the engine forwarded for the prompts."""
    from autointerp.llm import StepwiseRequest

    llm = LocalLLM("smollm2-135m", dtype="float32")
    stats = llm.engine.stats
    before = stats["forward_tokens"]
    resps = asyncio.run(llm.token_probs_many(_requests(WORDS)))
    computed = sum(r.usage.prompt_tokens - r.usage.reused_prompt_tokens for r in resps)
    assert computed == stats["forward_tokens"] - before
    assert all(r.usage.reused_prompt_tokens > 0 for r in resps[1:])  # the prefix came from the first

    prompt = PREFIX + "Each again:\n"
    reqs = [StepwiseRequest(prompt=prompt, steps=[f"{w}\t"], candidates=DIGITS) for w in WORDS[:3]]
    head = len(llm.engine.tok(prompt)["input_ids"])
    steps = asyncio.run(llm.stepwise_many(reqs))
    assert [s.usage.reused_prompt_tokens for s in steps[1:]] == [head, head]  # computed once, for row 0
    assert 0 <= steps[0].usage.reused_prompt_tokens < head


def test_prepacked_linears_give_the_logits_within_bf16_rounding():
    """SmolLM2 in bf16 with its linear layers prepacked (AUTOINTERP_PREPACK=1): every layer runs packed,
    the tied head still reads the embedding, and the logits agree with plain nn.Linear to within bf16
    rounding (not bitwise: oneDNN's inner product rounds a few elements one step apart, which 30
    layers carry into the logits); unpacking gives the plain logits back bit for bit."""
    import torch

    from autointerp.llm import prepack

    llm = LocalLLM("smollm2-135m", prepack=False, fuse=False)
    eng = llm.engine
    if not prepack.supported(eng.model):
        pytest.skip("no oneDNN packed linear here")
    ids = eng.tok([f"{PREFIX}{w}\t" for w in WORDS[:2]], return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        plain = eng.model(input_ids=ids).logits.float()
        n = LocalLLM("smollm2-135m", prepack=True).engine.prepacked
        assert n == eng.prepacked == 30 * 7 + 1  # q, k, v, o, gate, up, down per layer + the LM head
        lm = eng.model.get_output_embeddings()
        assert lm.weight is eng.model.get_input_embeddings().weight  # tied, one weight
        packed = eng.model(input_ids=ids).logits.float()
        assert prepack.count(eng.model)[1:] == (n, 0)  # one forward: each layer ran packed once
        assert (packed - plain).abs().max() < 0.05 * plain.abs().max()
        assert (packed.argmax(-1) == plain.argmax(-1)).float().mean() > 0.95
        assert eng.set_prepack(False) == 0
        assert torch.equal(eng.model(input_ids=ids).logits.float(), plain)


def test_fused_blocks_give_the_readings_within_bf16_rounding():
    """SmolLM2 in bf16 as `LocalLLM` loads it by default: its MLPs and RMSNorms compiled into fused
    kernels (llm/fused.py); the month readings agree with the eager model's to within bf16 rounding,
    and putting the eager forwards back gives the eager logits bit for bit."""
    import torch

    from autointerp.llm import fused

    eng = LocalLLM("smollm2-135m", prepack=False, fuse=False).engine
    if not fused.supported(eng.model):
        pytest.skip("not a bf16 CPU model here")
    ids = eng.tok([f"{PREFIX}{w}\t" for w in WORDS[:2]], return_tensors="pt")["input_ids"]
    reqs = _requests(WORDS)
    eager_probs = asyncio.run(LocalLLM("smollm2-135m", prepack=False, fuse=False).token_probs_many(reqs))
    with torch.inference_mode():
        eager = eng.model(input_ids=ids).logits.float()
    llm = LocalLLM("smollm2-135m", prepack=False)  # the default: fused
    assert llm.engine is eng and eng.fused == fused.count(eng.model) == 30 + 2 * 30 + 1
    got = asyncio.run(llm.token_probs_many(reqs))
    for a, b in zip(got, eager_probs, strict=True):
        ea = sum(int(k) * v for k, v in a.probs[0].items())
        eb = sum(int(k) * v for k, v in b.probs[0].items())
        assert ea == pytest.approx(eb, abs=0.15)  # the expected digit, 0-9
        assert a.mass[0] == pytest.approx(b.mass[0], abs=0.02)
    assert eng.set_fuse(False) == 0
    with torch.inference_mode():
        assert torch.equal(eng.model(input_ids=ids).logits.float(), eager)


def test_gathered_lm_head_gives_the_same_probabilities():
    """Rows whose positions differ: reading only each row's own positions through the LM head gives
    the numbers of the model's own `logits_to_keep` path (which computes the union for every row).
    float32: equal up to float rounding (in bf16 the head's kernel rounds differently by row count on
    SmolLM2's shapes, as the union path already does between batch shapes; on Qwen's it is identical)."""
    from autointerp.llm import local

    llm = LocalLLM("smollm2-135m", dtype="float32", prefix_cache=False)
    eng = llm.engine
    listing = "".join(f"{w}\t0\n" for w in WORDS * 4)
    reqs = []
    for k in range(6):
        prompt = f"{PREFIX}{'x ' * k}\n{listing}"
        starts = [i + len(w) + 1 for i, w in _line_starts(prompt, len(PREFIX) + 2 * k + 1)]
        reqs.append(TokenProbsRequest(prompt=prompt, positions=starts, candidates=DIGITS))
    preps = [eng.prepare(r) for r in reqs]
    assert sum(len(p.idx) for p in preps) >= local.GATHER_MIN
    gathered = eng.token_probs_batch(preps, reuse=False)
    saved, local._plain_head = local._plain_head, lambda m: None
    try:
        union = eng.token_probs_batch(preps, reuse=False)
    finally:
        local._plain_head = saved
    for (pg, mg, ng), (pu, mu, nu) in zip(gathered, union, strict=True):
        assert ng == nu and len(pg) == len(pu) == 24
        for a, b in zip(pg, pu, strict=True):
            assert a == pytest.approx(b, abs=1e-5)
        assert mg == pytest.approx(mu, rel=1e-4)
    assert gathered[0][0] != gathered[1][0]  # rows read at their own positions


def _line_starts(text: str, start: int) -> list[tuple[int, str]]:
    """(offset, first tab-separated field) of each line of `text` from `start` on."""
    out, i = [], start
    for line in text[start:].splitlines(keepends=True):
        if "\t" in line:
            out.append((i, line.split("\t")[0]))
        i += len(line)
    return out


def test_tree_mode_reads_real_chunk_listings_as_row_groups_do_from_fewer_tokens(monkeypatch):
    """Two explanations' exact-simulator chunk listings in one batch (as `label` makes with two units at
    once), float32: the token tree (llm/tree.py) gives the probabilities of the row groups and of
    each prompt forwarded alone, from fewer forward tokens (listings sharing their first lines)."""
    from autointerp.llm import local
    from autointerp.simulate import ExactSimulator

    llm = LocalLLM("smollm2-135m", dtype="float32")
    sim = ExactSimulator(llm)
    window = [" The", " meeting", " is", " in", " March", ",", " not", " in", " May", "."] * 2
    reqs = [
        sim.request(expl, piece) for expl in ("names of months", "negation") for piece in sim.pieces(window)
    ]
    runs = {}
    for name, tree, cache in (("tree", True, True), ("groups", False, True), ("alone", False, False)):
        monkeypatch.setattr(local, "TREE_ROWS", tree)
        llm.prefix_cache = cache
        llm.engine.prefixes.clear()
        before = llm.engine.stats["forward_tokens"]
        runs[name] = asyncio.run(llm.token_probs_many(reqs)), llm.engine.stats["forward_tokens"] - before
    for other in ("groups", "alone"):
        for a, b in zip(runs["tree"][0], runs[other][0], strict=True):
            flat = [[p for d in r.probs for p in d.values()] for r in (a, b)]
            assert flat[0] == pytest.approx(flat[1], abs=1e-4)
            assert a.mass == pytest.approx(b.mass, rel=1e-4)
    assert runs["tree"][1] < runs["groups"][1] < runs["alone"][1]
    computed = sum(r.usage.prompt_tokens - r.usage.reused_prompt_tokens for r in runs["tree"][0])
    assert computed == runs["tree"][1]  # usage stays true: what was forwarded, nothing more
