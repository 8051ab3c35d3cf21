"""Shared fixtures. The real embedded Gemma is loaded once per session, only by slow tests.

A scripted LLM (`autointerp.llm.scripted.ScriptedLLM`, served as `scripted:NAME`) and a hand-made
store of month units drive the fast orchestration tests.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from autointerp.llm.scripted import ScriptedLLM
from autointerp.store import Store
from autointerp.types import Context, Example, RunRecord, Unit, UnitRef, UnitStats

HOT = [" March", " June", " July"]  # unit i of `month_store` fires on HOT[i]
WORDS = [" the", " cat", " sat", " on", " a", " mat", " by", " door", " and", " then"]


class CharTokenizer:
    """A tokenizer for tests: one token per character (ids 3.., wrapping at `vocab`); 0 pad, 1 BOS, 2 EOS."""

    SPECIAL = {0: "<pad>", 1: "<bos>", 2: "<eos>"}
    bos_token_id = 1
    all_special_ids = [0, 1, 2]

    def __init__(self, vocab: int = 200):
        self.vocab = vocab

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        ids = [3 + (ord(c) - 32) % (self.vocab - 3) for c in text]
        return {"input_ids": ([1] if add_special_tokens else []) + ids}

    def decode(self, ids: list[int], clean_up_tokenization_spaces: bool = False) -> str:
        return "".join(self.SPECIAL.get(i) or chr(32 + i - 3) for i in ids)


@pytest.fixture(scope="session")
def char_tokenizer() -> type[CharTokenizer]:
    return CharTokenizer


@pytest.fixture(scope="module")
def tiny_subject():  # noqa: ANN201 - SubjectModel
    """A 2-layer random HookedTransformer (d_model 16) over `CharTokenizer`: real hooks, no download."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    from autointerp.subject.model import SubjectModel

    cfg = HookedTransformerConfig(
        n_layers=2,
        d_model=16,
        n_ctx=32,
        d_head=4,
        n_heads=4,
        d_mlp=32,
        d_vocab=50,
        act_fn="gelu",
        default_prepend_bos=True,
        seed=0,
    )
    return SubjectModel("tiny", HookedTransformer(cfg), CharTokenizer(vocab=50))


def tiny_qwen2(vocab: int = 100, hidden: int = 32, tied: bool = True):  # noqa: ANN201 - Qwen2ForCausalLM
    """A 2-layer random Qwen2 causal LM (float32; seeded): the local engine's model class, no download."""
    import torch
    import transformers

    cfg = transformers.Qwen2Config(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=tied,
    )
    torch.manual_seed(0)
    return transformers.Qwen2ForCausalLM(cfg).eval()


@pytest.fixture(scope="session")
def gemma():
    from autointerp.subject.model import load_subject

    return load_subject("gemma-3-270m")


def recorded_store(path: Path, unit_max: float = 4.0, frac_firing: float = 0.05) -> tuple[Store, UnitStats]:
    """A store with the record run `r1` of model `m`, and statistics for its units (1000 tokens)."""
    store = Store(path)
    store.start_run(
        RunRecord(id="r1", kind="record", settings={"model": "m"}, code_version="t", started_at="now")
    )
    fire = round(1000 * frac_firing)
    stats = UnitStats(
        n_tokens=1000, max=unit_max, mean=0.1, std=0.5, frac_firing=frac_firing, fire_threshold=0.0,
        hist_edges=[float("-inf"), 0.0, float("inf")], hist_counts=[1000 - fire, fire],
    )  # fmt: skip
    return store, stats


def build_month_store(path: Path, n_units: int = 3, hook: str = "blocks.0.mlp.hook_post") -> Store:
    """Units m/HOOK/i firing on HOT[i]: 12 top, 12 random, 10 quantile, 6 negative."""
    store, stats = recorded_store(path)
    units, examples = [], []
    for u, hot in enumerate(HOT[:n_units]):
        unit = Unit(ref=UnitRef(model="m", hook=hook, index=u), run_id="r1", stats=stats)
        units.append(unit)
        for kind, n in (("top", 12), ("random", 12), ("quantile", 10), ("negative", 6)):
            for r in range(n):
                tokens = ["<bos>"] + [WORDS[(r + k) % len(WORDS)] for k in range(20)]
                acts = [9.0] + [0.0] * 20
                if kind in ("top", "quantile") or (kind == "random" and r % 3 == 0):
                    pos = 3 + (r * 5) % 15
                    tokens[pos], acts[pos] = hot, (4.0 - 0.1 * r if kind == "top" else 1.0 + (r % 5) * 0.5)
                ctx = Context(id=f"c{u}{kind}{r}", token_ids=list(range(len(tokens))), tokens=tokens)
                q = r % 5 if kind == "quantile" else None
                examples.append(
                    Example(unit_id=unit.id, kind=kind, rank=r, context=ctx, acts=acts, quantile=q)
                )
    store.write_units(units, examples)
    return store


@pytest.fixture
def month_store(tmp_path: Path) -> Store:
    return build_month_store(tmp_path / "months.db")


def months_probs(prefix: str, candidates: list[str]) -> dict[str, float]:
    """A simulator that knows the months: P("9") = 0.9 after a month's TAB, else P("0") = 0.9."""
    return {"9": 0.9, "0": 0.1} if prefix.endswith(tuple(h + "\t" for h in HOT)) else {"0": 0.9, "9": 0.1}


@pytest.fixture
def scripted() -> Iterator[Callable[..., ScriptedLLM]]:
    """Make registered scripted LLMs (spec `scripted:NAME`); default: answers "months", knows the months."""
    made: list[ScriptedLLM] = []

    def make(name: str = "test", **kwargs) -> ScriptedLLM:
        kwargs.setdefault("respond", lambda request: "months of the year")
        kwargs.setdefault("probs", months_probs)
        llm = ScriptedLLM(name, **kwargs)
        llm.register()
        made.append(llm)
        return llm

    yield make
    for llm in made:
        llm.unregister()
