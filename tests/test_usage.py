"""Token accounting: the price table, the API backends' usage fields (cached input apart), and a label
run's spend per unit, per role and in total, stored with every explanation and score."""

from __future__ import annotations

import asyncio
import io
import json

import pytest
from rich.console import Console

from autointerp import label
from autointerp.llm import CachedLLM, ChatRequest, Message
from autointerp.llm import prices as price_table
from autointerp.llm.anthropic_backend import AnthropicLLM
from autointerp.llm.openai_backend import OpenAILLM
from autointerp.llm.prices import Price, cost_usd
from autointerp.pipeline import RoleUsage, total_usage
from autointerp.usage_view import usage_table

try:  # the transport layer the installed SDKs are built on
    import httpx2 as httpx
except ImportError:  # pragma: no cover
    import httpx


def mock_client(body: dict) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.MockTransport(lambda request: httpx.Response(200, json=body)))


ASK = ChatRequest(messages=[Message(role="user", content="Name the months.")])


def test_prices_match_the_longest_prefix_and_a_config_overrides_them():
    assert cost_usd("gpt-4o-mini-2024-07-18", 1_000_000, 0) == pytest.approx(0.15)  # not gpt-4o's 2.50
    assert cost_usd("gpt-4o-2024-08-06", 0, 1_000_000) == pytest.approx(10.0)
    assert cost_usd("my-finetune", 1000, 1000) is None  # unknown: no cost, never a guess
    try:
        price_table.configure(
            {"my-finetune": Price(input=1.0, output=2.0), "gpt-4o": Price(input=0, output=0)}
        )
        assert cost_usd("my-finetune-v2", 1_000_000, 1_000_000) == pytest.approx(3.0)
        assert cost_usd("gpt-4o-2024-08-06", 1000, 1000) == 0.0
        assert cost_usd("gpt-4o-mini", 1_000_000, 0) == pytest.approx(0.15)  # the rest of the table stays
    finally:
        price_table.configure({})
    assert cost_usd("my-finetune", 1000, 1000) is None


def test_openai_usage_counts_cached_input_tokens_as_reused():
    body = {
        "id": "c1",
        "object": "chat.completion",
        "created": 0,
        "model": "gpt-4o-mini",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "months"}, "finish_reason": "stop"}
        ],
        "usage": {
            "prompt_tokens": 2000,
            "completion_tokens": 4,
            "total_tokens": 2004,
            "prompt_tokens_details": {"cached_tokens": 1024},
        },
    }
    llm = OpenAILLM("gpt-4o-mini", api_key="sk-test", http_client=mock_client(body), max_retries=0)
    u = asyncio.run(CachedLLM(llm).chat(ASK)).usage
    assert (u.prompt_tokens, u.completion_tokens, u.reused_prompt_tokens) == (2000, 4, 1024)
    assert u.cost_usd == pytest.approx((2000 * 0.15 + 4 * 0.60) / 1e6)


def test_anthropic_usage_adds_cache_reads_and_writes_to_the_prompt_and_prices_them():
    body = {
        "id": "msg_01",
        "type": "message",
        "role": "assistant",
        "model": "claude-haiku-4-5",
        "content": [{"type": "text", "text": "months"}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {
            "input_tokens": 100,
            "output_tokens": 5,
            "cache_read_input_tokens": 1000,
            "cache_creation_input_tokens": 200,
        },
    }
    llm = AnthropicLLM("claude-haiku-4-5", api_key="sk-test", http_client=mock_client(body), max_retries=0)
    u = asyncio.run(CachedLLM(llm).chat(ASK)).usage
    assert (u.prompt_tokens, u.completion_tokens, u.reused_prompt_tokens) == (1300, 5, 1000)
    billed = 100 + 1.25 * 200 + 0.1 * 1000  # Anthropic's cache write and read multipliers
    assert u.cost_usd == pytest.approx((billed * 1.00 + 5 * 5.00) / 1e6)


def test_a_label_run_reports_and_stores_what_each_unit_spent(month_store, scripted):
    llm = scripted()
    summary = label(month_store.path, explainer=llm.spec, scorers=["correlation", "detection"])
    calls = list(month_store.db["llm_calls"].rows)
    per_unit = [total_usage(r.usage) for r in summary.results]
    assert all(u.calls > 0 for u in per_unit)
    assert sum(u.calls for u in per_unit) == summary.total.calls == len(calls)
    assert sum(u.prompt_tokens for u in per_unit) == summary.prompt_tokens
    assert summary.per_unit.units == 3 and summary.per_unit.calls == pytest.approx(len(calls) / 3)
    run = month_store.runs("label")[0]  # the run's row keeps the per-unit figures too
    assert run.summary["per_unit"]["prompt_tokens"] == pytest.approx(summary.prompt_tokens / 3)

    # what a later report sums: each explanation's and each score's own spend, which add up to the run's
    stored = RoleUsage()
    for exp in month_store.explanations():
        for u in exp.settings["usage"].values():
            stored = stored.merge(RoleUsage(**u))
    for s in month_store.scores():
        assert set(s.details["usage"]) == {"simulator"}  # scorers ask the simulator LLM only
        for u in s.details["usage"].values():
            stored = stored.merge(RoleUsage(**u))
    assert (stored.calls, stored.prompt_tokens, stored.completion_tokens) == (
        summary.total.calls,
        summary.prompt_tokens,
        summary.completion_tokens,
    )
    explain_calls = sum(e.settings["usage"]["explainer"]["calls"] for e in month_store.explanations())
    assert explain_calls == summary.usage["explainer"].calls == 3

    out = io.StringIO()
    Console(file=out, width=140).print(usage_table(summary))
    text = out.getvalue()
    assert "per unit (n=3)" in text and f"{summary.total.calls:,}" in text and "simulator" in text

    month_store.db["scores"].delete_where()
    month_store.db["explanations"].delete_where()
    again = label(month_store.path, explainer=llm.spec, scorers=["correlation", "detection"])
    spent = [total_usage(r.usage) for r in again.results]
    assert all(u.calls == 0 and u.cached_calls > 0 for u in spent)  # cache hits: counted, nothing spent
    assert json.loads(json.dumps(again.record()))["usage"]["simulator"]["calls"] == 0
