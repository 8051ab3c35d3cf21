"""Head detectors: per attention head, how much it behaves like a known head type (the per-model head wiki).

Two probe sets, both run through the subject model once (every layer's `hook_pattern`):
- text: corpus windows (BOS + ctx-1 tokens). Per query position q >= 1 (BOS is never a query of
  interest), averaged over queries and windows: previous-token (weight on q-1, for q >= 2), BOS (weight
  on position 0), self (weight on q), entropy (nats) and mean query-key distance (sum_k p_k (q - k)).
- repeated random tokens: BOS + R random tokens + the same R again. Per query in the second copy at
  q: induction (weight on q-R+1, the token after the earlier occurrence of the current token) and
  duplicate-token (weight on q-R, the earlier occurrence itself).
A head's categories are the detectors whose score reaches `THRESHOLDS` (documented in docs/heads.md).
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING

from pydantic import BaseModel, Field

from autointerp.errors import UserError
from autointerp.types import HeadMetrics

if TYPE_CHECKING:
    import torch

    from autointerp.subject.model import SubjectModel

# category -> (metric, threshold): a head is in a category when its metric reaches the threshold
THRESHOLDS: dict[str, tuple[str, float]] = {
    "previous-token": ("previous_token", 0.4),
    "induction": ("induction", 0.3),
    "duplicate-token": ("duplicate_token", 0.3),
    "bos": ("bos", 0.7),  # a "resting" head: most of its attention parks on BOS
    "self": ("self_attn", 0.4),
}


class DetectSettings(BaseModel):
    """What the detectors run on; stored beside every metrics row."""

    corpus: list[str] = Field(default_factory=lambda: ["default"])
    n_text: int = 32  # corpus windows
    ctx: int = 64
    n_repeat: int = 32  # repeated random sequences
    repeat_len: int = 24  # R: the length of the random span that is repeated
    batch_size: int = 8
    seed: int = 0


def categories(m: HeadMetrics) -> list[str]:
    """The head's categories by `THRESHOLDS`, strongest first."""
    hits = [
        (getattr(m, metric) / t, name) for name, (metric, t) in THRESHOLDS.items() if getattr(m, metric) >= t
    ]
    return [name for _, name in sorted(hits, reverse=True)]


def text_scores(pattern: torch.Tensor, has_bos: bool = True) -> dict[str, torch.Tensor]:
    """pattern (B, H, T, T) on text windows -> per head (H,): previous_token, bos, self_attn, entropy,
    mean_distance, averaged over query positions 1.. (2.. for previous-token) and windows."""
    import torch

    p = pattern.float()
    t = p.shape[-1]
    q = torch.arange(t)
    queries = p[:, :, 1:]  # (B, H, T-1, T): every query but position 0
    diag = p.diagonal(dim1=-2, dim2=-1)  # (B, H, T): weight of q on q
    prev = p.diagonal(offset=-1, dim1=-2, dim2=-1)  # (B, H, T-1): weight of q on q-1, q = 1..
    start = 1 if has_bos else 0  # with a BOS, q = 1 looking back at BOS is not previous-token
    ent = -(queries * queries.clamp_min(1e-12).log()).sum(-1)
    dist = (queries * (q[1:, None] - q[None, :]).clamp_min(0).to(p.dtype)).sum(-1)
    return {
        "previous_token": prev[:, :, start:].mean(dim=(0, 2)),
        "bos": queries[..., 0].mean(dim=(0, 2)) if has_bos else torch.zeros(p.shape[1]),
        "self_attn": diag[:, :, 1:].mean(dim=(0, 2)),
        "entropy": ent.mean(dim=(0, 2)),
        "mean_distance": dist.mean(dim=(0, 2)),
    }


def repeat_scores(pattern: torch.Tensor, repeat_len: int, offset: int = 1) -> dict[str, torch.Tensor]:
    """pattern (B, H, T, T) on [BOS] + r + r (`offset` = 1 with a BOS, else 0), len(r) = `repeat_len` ->
    per head (H,): induction (weight on q-R+1) and duplicate_token (weight on q-R), over the second copy."""
    r = repeat_len
    p = pattern.float()
    second = p[:, :, offset + r : offset + 2 * r]  # (B, H, R, T): queries of the second copy
    return {
        "induction": second.diagonal(offset=offset + 1, dim1=-2, dim2=-1).mean(dim=(0, 2)),
        "duplicate_token": second.diagonal(offset=offset, dim1=-2, dim2=-1).mean(dim=(0, 2)),
    }


def repeated_tokens(subject: SubjectModel, s: DetectSettings) -> torch.Tensor:
    """(n_repeat, [1] + 2R) token ids: BOS (when the model takes one) + R random non-special tokens, twice."""
    import torch

    gen = torch.Generator().manual_seed(s.seed)
    vocab = subject.model.cfg.d_vocab
    special = torch.tensor(subject.special_ids or [-1])
    pool = torch.arange(vocab)[~torch.isin(torch.arange(vocab), special)]
    span = pool[torch.randint(len(pool), (s.n_repeat, s.repeat_len), generator=gen)]
    seq = torch.cat([span, span], dim=1)
    if subject.bos_id is not None:
        seq = torch.cat([torch.full((s.n_repeat, 1), subject.bos_id), seq], dim=1)
    return seq


def _patterns(subject: SubjectModel, toks: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    """Every layer's pattern (B, H, T, T) over `toks`, in batches (one forward pass each)."""
    import torch

    hooks = [f"blocks.{layer}.attn.hook_pattern" for layer in range(subject.n_layers)]
    parts: list[list[torch.Tensor]] = [[] for _ in hooks]
    for chunk in toks.split(batch_size):
        acts = subject.hook_acts(chunk, hooks)
        for i, h in enumerate(hooks):
            parts[i].append(acts[h].float())
    return [torch.cat(p) for p in parts]


def detect_heads(
    subject: SubjectModel, s: DetectSettings | None = None, text: torch.Tensor | None = None
) -> list[HeadMetrics]:
    """Every head's detector scores and categories on the subject model. `text` (B, T) token ids, each
    row opening with BOS when the model takes one, replaces the corpus windows (e.g. for a toy model)."""
    import torch

    from autointerp import corpus
    from autointerp.subject.heads import check_heads

    s = s or DetectSettings()
    check_heads(subject.head_counts, [], subject.name)  # a model without pattern hooks: one sentence
    n_ctx = subject.model.cfg.n_ctx
    if max(s.ctx if text is None else 0, 1 + 2 * s.repeat_len) > n_ctx:
        raise UserError(
            f"{subject.name} reads at most {n_ctx} tokens; lower the ctx ({s.ctx}) or the repeat length "
            f"({s.repeat_len}: 1 + 2 x {s.repeat_len} tokens) to fit."
        )
    if text is None:
        windows = list(
            itertools.islice(corpus.windows(s.corpus, subject.tokenizer, s.ctx, subject.bos_id), s.n_text)
        )
        if not windows:
            raise UserError(
                f"The corpus is shorter than one window of {s.ctx} tokens; add text or lower ctx."
            )
        text = torch.tensor(windows, dtype=torch.long)
    has_bos = subject.bos_id is not None
    text = _patterns(subject, text, s.batch_size)
    rep = _patterns(subject, repeated_tokens(subject, s), s.batch_size)
    out = []
    for layer, (pt, pr) in enumerate(zip(text, rep, strict=True)):
        scores = text_scores(pt, has_bos) | repeat_scores(pr, s.repeat_len, 1 if has_bos else 0)
        for h in range(pt.shape[1]):
            m = HeadMetrics(
                model=subject.short, layer=layer, head=h, **{k: float(v[h]) for k, v in scores.items()}
            )
            out.append(m.model_copy(update={"categories": categories(m)}))
    return out
