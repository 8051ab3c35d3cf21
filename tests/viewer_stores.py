"""Stores the viewer tests share: the month store with explanations, scores, a counterfactual pair, an
SAE whose weights lie beside it, a token that looks like markup, and an induction-like attention head."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from autointerp.store import Store
from autointerp.types import (
    Context,
    Example,
    Explanation,
    HeadAttention,
    RunRecord,
    Score,
    SourceRef,
    Unit,
    UnitRef,
    UnitStats,
)
from tests.conftest import build_month_store, recorded_store

SCRIPT = "<script>alert(1)</script>"
SAE_NAME = "toy-1a2b3c4d"


def explained_store(path: Path) -> Store:
    """Three month units; unit 0 says "months of the year" (scored), unit 1 "the word cat" (its score
    failed), unit 2 has no explanation; unit 0's top #1 holds a markup token; unit 0 has a counterfactual."""
    store = build_month_store(path)
    uid = [u.id for u in store.units()]
    top1 = store.examples(uid[0], "top")[1]
    tokens = list(top1.context.tokens)
    tokens[1] = SCRIPT
    odd = top1.model_copy(
        update={"context": Context(id="odd", token_ids=top1.context.token_ids, tokens=tokens)}
    )
    edited = Context(id="edit", token_ids=list(range(21)), tokens=["<bos>"] + [" the"] * 20)
    cf = Example(
        unit_id=uid[0], kind="counterfactual", rank=0, context=edited, acts=[0.0] * 21,
        source=SourceRef(kind="top", rank=0, context_id=store.examples(uid[0], "top")[0].context.id),
        provenance={"direction": "off", "original_act": 4.0, "edited_act": 0.0},
    )  # fmt: skip
    store.add_examples([odd, cf])
    test = store.examples(uid[0], "top")[:2]
    for i, (unit_id, text) in enumerate([(uid[0], "months of the year"), (uid[1], "the word cat")]):
        e = Explanation(
            id=f"e{i}", unit_id=unit_id, text=text, method="highlight", model="scripted:test",
            prompt="explain_highlight@3",
        )  # fmt: skip
        ok = i == 0
        details = (
            {"predicted": [[9.0 if a > 0 else 0.0 for a in x.acts[1:]] for x in test],
             "examples": [[x.kind, x.rank] for x in test], "top_only": 0.9}
            if ok else {}
        )  # fmt: skip
        score = Score(
            explanation_id=e.id, unit_id=unit_id, scorer="correlation", value=0.81 if ok else None,
            status="ok" if ok else "failed", reason="" if ok else "read-out below the mass floor",
            details=details, simulator="scripted:test", prompt="simulate_exact@3",
        )  # fmt: skip
        store.put_explanation(e, [score])
    return store


def sae_store(path: Path, sae_dir: Path, n_latents: int = 6) -> Store:
    """Latents 0..n-1 of a toy SAE (d_in 4) recorded from `sae_dir`; decoder row 3 is nearest to row 0."""
    from safetensors.numpy import save_file

    w = np.eye(n_latents, 4, dtype=np.float32) + 0.01
    w[3] = [0.9, 0.1, 0.0, 0.0]
    sae_dir.mkdir(parents=True, exist_ok=True)
    save_file({"W_dec": w, "W_enc": w.T.copy()}, str(sae_dir / "sae_weights.safetensors"))
    store = Store(path)
    settings = {
        "model": "m",
        "sae": {"blocks.1.hook_resid_post": str(sae_dir)},
        "sae_sha256": {"blocks.1.hook_resid_post": "1a2b3c4d" + "0" * 56},
    }
    store.start_run(RunRecord(id="rs", kind="record", settings=settings, code_version="t", started_at="now"))
    stats = UnitStats(
        n_tokens=100, max=2.0, mean=0.1, std=0.2, frac_firing=0.1, fire_threshold=0.0,
        hist_edges=[float("-inf"), 0.0, 1.0, float("inf")], hist_counts=[90, 8, 2],
    )  # fmt: skip
    units = [
        Unit(
            ref=UnitRef(model="m", hook="blocks.1.hook_resid_post", index=i, sae=SAE_NAME),
            run_id="rs",
            stats=stats,
        )
        for i in range(n_latents - 1)  # the last latent is not recorded
    ]
    ctx = Context(id="c", token_ids=[1, 2, 3], tokens=["<bos>", " a", " b"])
    store.write_units(
        units, [Example(unit_id=u.id, kind="top", rank=0, context=ctx, acts=[0, 2, 1]) for u in units]
    )
    return store


HEAD = "m/blocks.1.attn/head:2"
HEAD_TOKENS = ["<bos>", " Harry", " Potter", " met", " Harry", " Potter", " and", " <b>"]


def head_store(path: Path, model: str = "m") -> Store:
    """The head `MODEL/blocks.1.attn/head:2` with one top example: at the second " Potter" (position 5,
    the peak) it attends to the first " Potter" (2) with 0.7 and " Harry" (1) with 0.2; every other
    query attends to the token before it (0.5), BOS (position 0) never counts."""
    store, stats = recorded_store(path, unit_max=0.7, frac_firing=0.9)
    unit = Unit(ref=UnitRef(model=model, hook="blocks.1.attn", index=2), run_id="r1", stats=stats)
    src: list[list[int]] = [[], []] + [[q - 1] for q in range(2, len(HEAD_TOKENS))]
    weights: list[list[float]] = [[], []] + [[0.5] for _ in range(2, len(HEAD_TOKENS))]
    src[5], weights[5] = [2, 1], [0.7, 0.2]
    acts = [0.0, 0.0, 0.5, 0.5, 0.5, 0.7, 0.5, 0.5]
    ctx = Context(id="hp", token_ids=list(range(len(HEAD_TOKENS))), tokens=HEAD_TOKENS)
    attn = HeadAttention(src=src, weights=weights)
    store.write_units(
        [unit], [Example(unit_id=unit.id, kind="top", rank=0, context=ctx, acts=acts, attn=attn)]
    )
    return store
