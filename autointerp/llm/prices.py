"""The one price table: USD per million input / output tokens of common API models.

List prices for standard (not batch, not cached-input) requests, as published by OpenAI and Anthropic
on PRICES_DATE. Models are matched by name prefix, the longest prefix winning (`gpt-4o-mini-2024-07-18`
is `gpt-4o-mini`). A config file's `[prices]` table overrides or extends this one (`configure`). A model
without a price gets no cost (None), never a guess.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

PRICES_DATE = "2025-11-30"


class Price(BaseModel):
    """USD per million tokens."""

    input: float = Field(ge=0, allow_inf_nan=False)
    output: float = Field(ge=0, allow_inf_nan=False)


def _p(inp: float, out: float) -> Price:
    return Price(input=inp, output=out)


PRICES: dict[str, Price] = {
    # OpenAI
    "gpt-4o-mini": _p(0.15, 0.60),
    "gpt-4o": _p(2.50, 10.00),
    "gpt-4.1-nano": _p(0.10, 0.40),
    "gpt-4.1-mini": _p(0.40, 1.60),
    "gpt-4.1": _p(2.00, 8.00),
    "gpt-5-nano": _p(0.05, 0.40),
    "gpt-5-mini": _p(0.25, 2.00),
    "gpt-5": _p(1.25, 10.00),
    "o4-mini": _p(1.10, 4.40),
    "o3-mini": _p(1.10, 4.40),
    "o3": _p(2.00, 8.00),
    # Anthropic
    "claude-3-haiku": _p(0.25, 1.25),
    "claude-3-5-haiku": _p(0.80, 4.00),
    "claude-haiku-4-5": _p(1.00, 5.00),
    "claude-3-5-sonnet": _p(3.00, 15.00),
    "claude-3-7-sonnet": _p(3.00, 15.00),
    "claude-sonnet-4": _p(3.00, 15.00),
    "claude-opus-4-5": _p(5.00, 25.00),
    "claude-opus-4": _p(15.00, 75.00),
}

_overrides: dict[str, Price] = {}


def configure(overrides: dict[str, Price]) -> None:
    """Prices from a config file: they override the table's (same name) and extend it (new names)."""
    _overrides.clear()
    _overrides.update(overrides)


def table() -> dict[str, Price]:
    """The table in force: the built-in one with the configured overrides."""
    return {**PRICES, **_overrides}


def price(model: str) -> Price | None:
    """The price of `model` (longest matching name prefix), or None when the table does not know it."""
    prices = table()
    match = max((p for p in prices if model.startswith(p)), key=len, default=None)
    return prices[match] if match is not None else None


def cost_usd(model: str, prompt_tokens: int, completion_tokens: int) -> float | None:
    """Cost of `prompt_tokens` in and `completion_tokens` out at list prices, where the price is known."""
    p = price(model)
    if p is None:
        return None
    return (prompt_tokens * p.input + completion_tokens * p.output) / 1e6
