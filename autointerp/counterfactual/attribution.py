"""Token attribution and minimal activating examples: deletions and replacements run on the subject model."""

from __future__ import annotations

from autointerp.counterfactual.probe import UnitProbe, body_start
from autointerp.counterfactual.types import Attribution, MinimalResult, TokenEffect
from autointerp.errors import UserError
from autointerp.types import Example


def attribute(probe: UnitProbe, example: Example, neutral_token: str = " ") -> Attribution:
    """Drop of the peak activation when each token before it is deleted, or replaced by `neutral_token`
    (one batched pass for every edit)."""
    subject = probe.subject
    neutral = subject.tokenizer(neutral_token, add_special_tokens=False)["input_ids"]
    if len(neutral) != 1:
        raise UserError(f"The neutral token {neutral_token!r} is {len(neutral)} tokens; pick a single token.")
    p = example.max_pos
    ids = example.context.token_ids[: p + 1]
    start = body_start(ids, subject.bos_id)
    deleted = [ids[:i] + ids[i + 1 :] for i in range(start, p)]
    replaced = [ids[:i] + neutral + ids[i + 1 :] for i in range(start, p + 1)]
    acts = probe.acts([ids, *deleted, *replaced])
    peak = float(acts[0][p])
    del_acts, rep_acts = acts[1 : 1 + len(deleted)], acts[1 + len(deleted) :]
    effects = [
        TokenEffect(
            position=i,
            token=example.context.tokens[i],
            delete_drop=peak - float(del_acts[i - start][p - 1]) if i < p else None,
            replace_drop=peak - float(rep_acts[i - start][p]),
        )
        for i in range(start, p + 1)
    ]
    return Attribution(
        unit_id=example.unit_id,
        context_id=example.context.id,
        peak_pos=p,
        peak_act=peak,
        neutral_token=neutral_token,
        effects=effects,
    )


def minimal_example(probe: UnitProbe, example: Example, keep_frac: float = 0.8) -> MinimalResult | None:
    """The shortest suffix ending at the peak (BOS kept) whose activation there is >= keep_frac x the
    activation on the whole prefix. None when the prefix does not fire (activation <= 0)."""
    p = example.max_pos
    ids = example.context.token_ids[: p + 1]
    start = body_start(ids, probe.subject.bos_id)
    if p < start:  # the peak is on BOS: nothing to shorten
        return None
    head = ids[:start]
    seqs = [head + ids[s:] for s in range(start, p + 1)]  # seqs[0] is the whole prefix
    acts = probe.acts(seqs)
    full = float(acts[0][-1])
    if full <= 0:
        return None
    best = 0
    for k in range(len(seqs) - 1, -1, -1):  # shortest first
        if float(acts[k][-1]) >= keep_frac * full:
            best = k
            break
    return MinimalResult(
        token_ids=seqs[best],
        acts=acts[best].tolist(),
        start=start + best,
        original_length=len(ids),
        original_act=full,
        kept_fraction=float(acts[best][-1]) / full,
    )
