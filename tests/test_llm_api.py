"""Spec parsing, API-key errors, the store-backed cache, and the Anthropic backend.

The Anthropic API cannot be called here, so its tests run the real `anthropic` SDK over an HTTP
replay transport (`anthropic_replay_transport`) that answers with recorded response shapes.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from autointerp.errors import UserError
from autointerp.llm import (
    CachedLLM,
    ChatRequest,
    LLMError,
    Message,
    TokenProbsRequest,
    Tool,
    ToolCall,
    get_llm,
    parse_spec,
)
from autointerp.llm.anthropic_backend import AnthropicLLM
from autointerp.store import Store

try:  # the transport layer the installed SDK is built on (anthropic >= 2 uses the httpx2 fork)
    import httpx2 as httpx
except ImportError:  # pragma: no cover
    import httpx

FAKE_KEY = "sk-ant-test-0123456789-never-store-me"
MODEL = "claude-haiku-4-5-20251001"


def _message(content: list[dict], stop_reason: str = "end_turn") -> dict:
    """A recorded /v1/messages success body."""
    return {
        "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
        "type": "message",
        "role": "assistant",
        "model": MODEL,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": {"input_tokens": 25, "output_tokens": 6},
    }


def _error(kind: str, message: str) -> dict:
    return {"type": "error", "error": {"type": kind, "message": message}}


class Replay:
    """Answers each request with the next recorded (status, body, headers); records what was sent."""

    def __init__(self, answers: list[tuple[int, dict, dict]]):
        self.answers = list(answers)
        self.requests: list[dict] = []

    def __call__(self, request):  # noqa: ANN001 - an httpx request
        self.requests.append({"headers": dict(request.headers), "body": json.loads(request.content)})
        status, body, headers = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        return httpx.Response(status, json=body, headers={"request-id": "req_011", **headers})


@pytest.fixture
def anthropic_replay_transport():
    """Build (replay, llm): the real AsyncAnthropic SDK talking to a replay of recorded responses."""

    def build(answers: list[tuple[int, dict, dict]], store: Store | None = None, no_cache: bool = False):
        replay = Replay(answers)
        client = httpx.AsyncClient(transport=httpx.MockTransport(replay))
        llm = AnthropicLLM(MODEL, api_key=FAKE_KEY, http_client=client, max_retries=3)
        return replay, CachedLLM(llm, store, no_cache=no_cache)

    return build


def _ask(text: str = "Name the months.") -> ChatRequest:
    return ChatRequest(
        messages=[Message(role="system", content="Be brief."), Message(role="user", content=text)]
    )


# -- spec parsing and keys ------------------------------------------------------------------------
def test_parse_spec_forms():
    assert parse_spec("local:qwen2.5-coder-1.5b").model_dump() == {
        "backend": "local",
        "model": "qwen2.5-coder-1.5b",
    }
    assert parse_spec("openai:gpt-4o-mini").backend == "openai"
    assert parse_spec("local:/models/x.gguf").model == "/models/x.gguf"
    assert parse_spec("anthropic:claude-3-5-haiku-latest").model == "claude-3-5-haiku-latest"
    for bad in ["gpt-4o", "mistral:large", "local:", "openai:  "]:
        with pytest.raises(UserError, match="not an LLM spec"):
            parse_spec(bad)


def test_get_llm_unknown_prefix():
    with pytest.raises(UserError, match="local:qwen2.5-coder-1.5b"):
        get_llm("huggingface:gpt2")


def test_missing_keys_name_the_env_var(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    with pytest.raises(UserError, match="OPENAI_API_KEY"):
        get_llm("openai:gpt-4o-mini")
    with pytest.raises(UserError, match="ANTHROPIC_API_KEY"):
        get_llm("anthropic:claude-3-5-haiku-latest")
    # A local OpenAI-compatible server needs no key.
    llm = get_llm("openai:smollm2", base_url="http://127.0.0.1:9/v1")
    assert llm.capabilities.token_probs and llm.spec == "openai:smollm2"
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    assert get_llm("openai:smollm2").inner.base_url == "http://127.0.0.1:9/v1"


def test_official_openai_has_no_prompt_logprobs(monkeypatch):
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    llm = get_llm("openai:gpt-4o-mini")
    assert not llm.capabilities.token_probs and llm.capabilities.top_logprobs
    req = TokenProbsRequest(prompt="a\t", positions=[2], candidates=["0", "1"])
    with pytest.raises(LLMError, match="prompt logprobs"):
        asyncio.run(llm.token_probs(req))


def test_local_bad_path_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="No model file"):
        get_llm(f"local:{tmp_path}/missing.gguf")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(UserError, match="neither a model directory"):
        get_llm(f"local:{tmp_path}/notes.txt")


# -- the cache ------------------------------------------------------------------------------------
def test_cache_hit_miss_and_no_cache(tmp_path, anthropic_replay_transport):
    store = Store(tmp_path / "c.db")
    ok = (200, _message([{"type": "text", "text": "months of the year"}]), {})
    replay, llm = anthropic_replay_transport([ok], store)

    async def run():
        first = await llm.chat(_ask())
        second = await llm.chat(_ask())
        other = await llm.chat(_ask("Name the days."))
        return first, second, other

    first, second, other = asyncio.run(run())
    assert first.text == second.text == "months of the year"
    assert not first.usage.cached and second.usage.cached and not other.usage.cached
    assert len(replay.requests) == 2  # the repeat was served from the store
    rec = store.get_llm_call(_ask().cache_key("anthropic", MODEL))
    assert rec is not None and rec.prompt_tokens == 25 and rec.completion_tokens == 6
    assert rec.latency_s > 0 and rec.cost_usd == pytest.approx((25 * 1.0 + 6 * 5.0) / 1e6)
    assert rec.request["messages"][1]["content"] == "Name the months."

    replay2, fresh = anthropic_replay_transport([ok], store, no_cache=True)
    again = asyncio.run(fresh.chat(_ask()))
    assert not again.usage.cached and len(replay2.requests) == 1
    assert FAKE_KEY.encode() not in (tmp_path / "c.db").read_bytes()


def test_identical_concurrent_calls_are_performed_once(tmp_path, anthropic_replay_transport):
    ok = (200, _message([{"type": "text", "text": "negation"}]), {})
    replay, llm = anthropic_replay_transport([ok], Store(tmp_path / "c.db"))

    async def run():
        return await asyncio.gather(*(llm.chat(_ask()) for _ in range(5)))

    answers = asyncio.run(run())
    assert [a.text for a in answers] == ["negation"] * 5
    assert len(replay.requests) == 1


# -- the Anthropic backend over the replay transport ---------------------------------------------
def test_anthropic_429_is_retried(tmp_path, anthropic_replay_transport):
    limited = (429, _error("rate_limit_error", "Number of request tokens has exceeded your limit"), {})
    limited[2]["retry-after-ms"] = "5"
    ok = (200, _message([{"type": "text", "text": "def keyword"}]), {})
    replay, llm = anthropic_replay_transport([limited, ok], Store(tmp_path / "c.db"))
    resp = asyncio.run(llm.chat(_ask()))
    assert resp.text == "def keyword" and resp.finish_reason == "end_turn"
    assert len(replay.requests) == 2
    sent = replay.requests[0]
    auth = sent["headers"].get("x-api-key") or sent["headers"].get("authorization", "")
    assert auth.endswith(FAKE_KEY)  # the key is sent (header name depends on the SDK version)
    assert replay.requests[1]["headers"]["x-stainless-retry-count"] == "1"
    assert sent["body"]["system"] == "Be brief." and sent["body"]["messages"][0]["role"] == "user"


def test_anthropic_401_fails_at_once_and_is_not_cached(tmp_path, anthropic_replay_transport):
    store = Store(tmp_path / "c.db")
    denied = (401, _error("authentication_error", "invalid x-api-key"), {})
    replay, llm = anthropic_replay_transport([denied], store)
    with pytest.raises(LLMError, match="ANTHROPIC_API_KEY") as err:
        asyncio.run(llm.chat(_ask()))
    assert "invalid x-api-key" in str(err.value)
    assert len(replay.requests) == 1  # 401 is not retried
    assert store.get_llm_call(_ask().cache_key("anthropic", MODEL)) is None


def test_anthropic_persistent_overload_raises(anthropic_replay_transport):
    busy = (529, _error("overloaded_error", "Overloaded"), {"retry-after-ms": "1"})
    replay, llm = anthropic_replay_transport([busy])
    with pytest.raises(LLMError, match="529"):
        asyncio.run(llm.chat(_ask()))
    assert len(replay.requests) == 4  # the first try + 3 retries


def test_anthropic_tools_and_json_answers(anthropic_replay_transport):
    tool = Tool(name="top_examples", description="Top examples of a unit.", parameters={"type": "object"})
    use = {"type": "tool_use", "id": "toolu_01A", "name": "top_examples", "input": {"unit": "m/h/3"}}
    replay, llm = anthropic_replay_transport([(200, _message([use], "tool_use"), {})])
    history = [
        Message(role="user", content="Investigate unit 3."),
        Message(
            role="assistant",
            content="",
            tool_calls=[ToolCall(id="toolu_00", name="top_examples", arguments={})],
        ),
        Message(role="tool", content="[...]", tool_call_id="toolu_00"),
    ]
    resp = asyncio.run(llm.chat(ChatRequest(messages=history, tools=[tool])))
    assert resp.tool_calls == [ToolCall(id="toolu_01A", name="top_examples", arguments={"unit": "m/h/3"})]
    body = replay.requests[0]["body"]
    assert body["tools"][0]["input_schema"] == {"type": "object"}
    assert body["messages"][1]["content"][0]["type"] == "tool_use"
    assert body["messages"][2] == {
        "role": "user",
        "content": [{"type": "tool_result", "tool_use_id": "toolu_00", "content": "[...]"}],
    }

    schema = {"type": "object", "properties": {"label": {"type": "string"}}, "required": ["label"]}
    answer = {"type": "tool_use", "id": "toolu_02", "name": "json_answer", "input": {"label": "years"}}
    replay, llm = anthropic_replay_transport([(200, _message([answer], "tool_use"), {})])
    resp = asyncio.run(
        llm.chat(ChatRequest(messages=[Message(role="user", content="Label it.")], json_schema=schema))
    )
    assert json.loads(resp.text) == {"label": "years"} and resp.tool_calls == []
    assert replay.requests[0]["body"]["tool_choice"] == {"type": "tool", "name": "json_answer"}


def test_anthropic_has_no_logprobs(anthropic_replay_transport):
    _, llm = anthropic_replay_transport([(200, _message([]), {})])
    assert not llm.capabilities.token_probs and not llm.capabilities.top_logprobs
    with pytest.raises(LLMError, match="no token probabilities"):
        asyncio.run(llm.token_probs(TokenProbsRequest(prompt="a\t", positions=[2], candidates=["0"])))
    with pytest.raises(LLMError, match="no logprobs"):
        asyncio.run(llm.chat(ChatRequest(messages=[Message(role="user", content="hi")], top_logprobs=3)))
