"""How examples are shown to an LLM: crop around the peak, leave BOS out, escape tokens, mark activations.

Every prompt's text (so every LLM cache key) is built from these functions: change them only on
purpose, with the prompt template's version.
"""

from __future__ import annotations

import re

from autointerp.types import Example

MARK_AT = 0.4  # a token is "activating" (marked [[ ]]) at >= 40% of the unit's max

_SPECIAL = re.compile(r"<\|?[\w.-]+\|?>")  # <bos>, <s>, <|endoftext|>, <|begin_of_text|>: special tokens


def body_start(example: Example) -> int:
    """1 where the window opens with a special token (BOS), else 0: it is never shown or scored."""
    tokens = example.context.tokens
    return 1 if tokens and _SPECIAL.fullmatch(tokens[0]) else 0


def crop_start(example: Example, window: int) -> int:
    """Where `crop` starts: 3/4 of the window before the peak, kept inside the example's body (no BOS)."""
    first = body_start(example)
    n = len(example.acts)
    if not window or window >= n - first:
        return first
    peak = first + max(range(n - first), key=lambda i: example.acts[first + i])
    return max(first, min(peak - (3 * window) // 4, n - window))


def crop(example: Example, window: int) -> tuple[list[str], list[float]]:
    """Tokens and activations around the example's peak (3/4 of the window before it); 0: the whole body.

    A leading special token (BOS) is left out: it is not an activation of interest.
    """
    lo = crop_start(example, window)
    hi = lo + window if window else len(example.acts)
    return example.context.tokens[lo:hi], example.acts[lo:hi]


def peak_slice(example: Example, width: int) -> tuple[list[str], list[float]]:
    """The raw window around the stored peak (3/4 of `width` before it; 0: all) that people are shown."""
    lo = max(0, example.max_pos - (3 * width) // 4) if width else 0
    hi = lo + width if width else len(example.acts)
    return example.context.tokens[lo:hi], example.acts[lo:hi]


def normalize(acts: list[float], unit_max: float) -> list[int]:
    """0-9 integers: activation / unit max, negatives as 0 (single-digit tokens for every tokenizer)."""
    if unit_max <= 0:
        return [0] * len(acts)
    return [min(9, max(0, int(9 * a / unit_max))) for a in acts]


def show_token(tok: str) -> str:
    return tok.replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t")


def marked(example: Example, unit_max: float, window: int) -> str:
    """The cropped window with every token at >= MARK_AT of the unit's max in [[ ]] (not escaped)."""
    tokens, acts = crop(example, window)
    return "".join(
        f"[[{t}]]" if unit_max > 0 and a >= MARK_AT * unit_max else t
        for t, a in zip(tokens, acts, strict=True)
    )


def marked_errors(example: Example, unit_max: float, window: int, predicted: list[float]) -> str:
    """The cropped window, true firing in [[ ]] and predicted firing (`predicted`: 0-9 per body token,
    BOS left out, as simulations give it) that did not happen in {{ }}; escaped."""
    tokens, acts = crop(example, window)
    lo = crop_start(example, window) - body_start(example)  # simulations leave the leading BOS out
    pred = predicted[lo : lo + len(tokens)]
    shown = "".join(
        ("[[" + t + "]]" if a >= MARK_AT * unit_max else t) if p < 4.5 else "{{" + t + "}}"
        for t, a, p in zip(tokens, acts, pred, strict=True)
    )
    return show_token(shown)


def body(e: Example) -> Example:
    """The example without a leading special token (BOS): not an activation of interest."""
    if len(e.acts) > 1 and body_start(e):
        ctx = e.context.model_copy(
            update={"token_ids": e.context.token_ids[1:], "tokens": e.context.tokens[1:]}
        )
        return e.model_copy(update={"context": ctx, "acts": e.acts[1:]})
    return e


def window(e: Example, n: int) -> tuple[list[str], list[float]]:
    """The BOS-free window of `n` tokens around the example's peak that a judge or embedder sees."""
    return crop(body(e), n)


def window_text(e: Example, n: int) -> str:
    """`window` as one escaped string."""
    return show_token("".join(window(e, n)[0]))


def marked_at(tokens: list[str], marks: set[int]) -> str:
    """The tokens with those at the positions `marks` in [[ ]]; escaped."""
    return show_token("".join(f"[[{t}]]" if i in marks else t for i, t in enumerate(tokens)))


SOURCE_AT = 0.1  # an attention head's source is marked {{ }} at >= this attention weight
SOURCES_SHOWN = 3  # at most this many sources are marked per destination


def head_sources(example: Example, pos: int) -> list[tuple[int, float]]:
    """The sources (position, weight) a head example marks for destination `pos`: at most SOURCES_SHOWN,
    each with weight >= SOURCE_AT, strongest first; none for a unit that is no head."""
    if example.attn is None or pos >= len(example.attn.src):
        return []
    pairs = zip(example.attn.src[pos], example.attn.weights[pos], strict=True)
    return [(s, w) for s, w in pairs if w >= SOURCE_AT][:SOURCES_SHOWN]


def head_marked(example: Example, window: int) -> tuple[str, str]:
    """A head example as the explainer sees it: the window around its peak destination token, widened back
    to its marked sources, with the destination in [[ ]] and its sources in {{ }}; and a line naming the
    pairs with their weights and the token before each source (what tells an induction head: it is the
    destination token again), e.g. `[[ cat]] <- {{ the}} 0.62 (after ' saw')`. Both escaped."""
    tokens = example.context.tokens
    first = body_start(example)
    dest = example.max_pos
    sources = head_sources(example, dest)
    lo = min([crop_start(example, window), *(s for s, _ in sources)])
    lo = max(lo, first)
    hi = crop_start(example, window) + window if window else len(tokens)
    marks = {s for s, _ in sources}
    text = "".join(
        f"[[{t}]]" if i == dest else f"{{{{{t}}}}}" if i in marks else t
        for i, t in enumerate(tokens[lo:hi], lo)
    )
    pairs = ", ".join(
        f"{{{{{show_token(tokens[s])}}}}} {w:.2f}" + (f" (after {tokens[s - 1]!r})" if s > first else "")
        for s, w in sources
    )
    return show_token(text), f"[[{show_token(tokens[dest])}]] <- {pairs or '(no earlier token)'}"
