"""Candidate explanations built by code from measured evidence, for the guided investigation.

Each reads only the `tokens` tool's result (the firing tokens of the explain split's top windows, their
counts and mean activations, and the token before each) and knows nothing of any particular unit:

- `usual_context`: a token that comes right before most firing tokens ('CATEGORY right after "("');
- `bigram`: one firing token after that context, written as the pair ('the "." in "self."');
- `listed`: the category with the most frequent distinct firing tokens as examples
  ("negation words, such as not, no and cannot"), the way a person writes an explanation;
- `shape`: what every firing token looks like when they share a form ("digits", "capitalized words");
- `grading`: numeric firing tokens whose mean activation rises (or falls) with their value
  ("digits, stronger for larger digits").
"""

from __future__ import annotations

import re
import statistics

from scipy.stats import spearmanr

from autointerp.agent.tools import TokenCount, TokensResult

CONTEXT_SHARE = 0.6  # a preceding token this common among the firing ones is their context
N_LISTED = 3  # examples named in a `listed` candidate
MIN_SHAPE = 3  # distinct firing tokens needed before their shared form is a candidate
GRADED = 0.8  # |rank correlation| of value and mean activation that makes a graded candidate
SHAPES = [  # the first form every distinct firing token (spaces stripped) matches names them
    (re.compile(r"\d"), "digits"),
    (re.compile(r"[+-]?\d+(?:[.,]\d+)?"), "numbers"),
    (re.compile(r"[A-Z][a-z]+"), "capitalized words"),
    (re.compile(r"[A-Z]{2,}"), "words in capital letters"),
]


def usual_context(tokens: TokensResult) -> str | None:
    """The token (spaces stripped) before at least CONTEXT_SHARE of the firing tokens, if any; None for
    whitespace."""
    total = sum(x.count for x in tokens.firing)
    by: dict[str, int] = {}
    for x in tokens.before:
        key = x.token.strip()
        if key:
            by[key] = by.get(key, 0) + x.count
    if not by or not total:
        return None
    token, n = max(by.items(), key=lambda kv: kv[1])
    return token if n >= CONTEXT_SHARE * total else None


def bigram(tokens: TokensResult) -> str | None:
    """'the "B" in "AB"' when every firing token is one word B and a usual context A comes before it
    (each written as its most frequent spelling, the pair joined as the tokens join)."""
    context = usual_context(tokens)
    words = distinct(tokens.firing)
    if context is None or len(words) != 1:
        return None
    first = next(x.token for x in tokens.before if x.token.strip() == context)  # most frequent first
    second = max(tokens.firing, key=lambda x: x.count).token
    return f'the "{words[0]}" in "{(first + second).strip()}"'


def distinct(firing: list[TokenCount]) -> list[str]:
    """The firing tokens, spaces stripped, merged case-insensitively (the most frequent spelling kept),
    most frequent first; whitespace-only tokens dropped."""
    words: dict[str, int] = {}
    for x in firing:
        if word := x.token.strip():
            words[word] = words.get(word, 0) + x.count
    counts: dict[str, int] = {}
    spelling: dict[str, str] = {}
    for word, n in words.items():
        key = word.lower()
        counts[key] = counts.get(key, 0) + n
        if n > words.get(spelling.get(key, ""), 0):
            spelling[key] = word
    return [spelling[k] for k in sorted(counts, key=lambda k: -counts[k])]


def listed(category: str, tokens: TokensResult) -> str | None:
    """'CATEGORY, such as A, B and C' from the most frequent distinct firing tokens; None under two."""
    words = distinct(tokens.firing)[:N_LISTED]
    if len(words) < 2:
        return None
    return f"{category}, such as {', '.join(words[:-1])} and {words[-1]}"


def shape(tokens: TokensResult) -> str | None:
    """The form all distinct firing tokens share (SHAPES, case kept), when there are MIN_SHAPE of them."""
    words = {x.token.strip() for x in tokens.firing} - {""}
    if len(words) < MIN_SHAPE:
        return None
    return next((name for pattern, name in SHAPES if all(pattern.fullmatch(w) for w in words)), None)


def grading(tokens: TokensResult) -> str | None:
    """'FORM, stronger for larger FORM' (or weaker) when every firing token is a number, at least three
    values fire, and the mean activation's rank correlation with the value is at least GRADED."""
    form = shape(tokens)
    if form not in ("digits", "numbers") or any(x.mean is None for x in tokens.firing):
        return None
    by: dict[float, list[float]] = {}
    for x in tokens.firing:
        by.setdefault(float(x.token.strip().replace(",", ".")), []).extend([x.mean or 0.0] * x.count)
    values = sorted(by)
    means = [statistics.fmean(by[v]) for v in values]
    if len(values) < 3 or len(set(means)) < 2:
        return None
    rho = float(spearmanr(values, means).statistic)
    if abs(rho) < GRADED:
        return None
    return f"{form}, {'stronger' if rho > 0 else 'weaker'} for larger {form}"
