"""The OpenAI backend end to end against a real OpenAI-compatible server: llama-cpp-python's server
running the embedded SmolLM2-135M GGUF on 127.0.0.1 (started and stopped by the fixture)."""

from __future__ import annotations

import asyncio
import math
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from autointerp.llm import CachedLLM, ChatRequest, LLMError, Message, TokenProbsRequest, get_llm
from autointerp.llm.openai_backend import OpenAILLM
from autointerp.store import Store

try:
    import httpx2 as httpx
except ImportError:  # pragma: no cover - older SDKs are built on httpx
    import httpx

pytestmark = pytest.mark.slow

READY_TIMEOUT_S = 120


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def llama_server():
    """Base URL of a llama.cpp OpenAI-compatible server on the embedded SmolLM2 GGUF."""
    pytest.importorskip(
        "llama_cpp.server", reason='needs the dev extra: pip install "llama-cpp-python[server]"'
    )
    from autointerp import assets

    gguf = assets.ensure_asset("smollm2-135m", full_check=False)
    port = _free_port()
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1"]
    cmd += ["--port", str(port), "--n_threads", "2", "--logits_all", "true", "--model_alias", "smollm2"]
    log = open(os.devnull, "wb")  # noqa: SIM115 - lives as long as the server
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + READY_TIMEOUT_S
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"llama_cpp.server exited with {proc.returncode} before it was ready")
            try:
                with urllib.request.urlopen(f"{url}/models", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"llama_cpp.server was not ready within {READY_TIMEOUT_S} s")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


class Counter:
    """httpx event hooks: requests sent and the most in flight at once."""

    def __init__(self):
        self.sent = self.open = self.max_open = 0

    def client(self):
        async def on_request(_request):
            self.sent += 1
            self.open += 1
            self.max_open = max(self.max_open, self.open)

        async def on_response(_response):
            self.open -= 1

        return httpx.AsyncClient(
            event_hooks={"request": [on_request], "response": [on_response]}, timeout=120
        )


def _server_llm(url: str, store: Store | None = None, concurrency: int = 8, counter: Counter | None = None):
    client = counter.client() if counter else None
    return CachedLLM(OpenAILLM("smollm2", base_url=url, concurrency=concurrency, http_client=client), store)


def _ask(text: str, **kw) -> ChatRequest:
    return ChatRequest(messages=[Message(role="user", content=text)], max_tokens=12, **kw)


def test_chat_and_logprobs(llama_server, tmp_path):
    llm = get_llm("openai:smollm2", Store(tmp_path / "c.db"), base_url=llama_server, no_cache=True)
    assert llm.capabilities.token_probs
    a = asyncio.run(llm.chat(_ask("Name a color.", top_logprobs=3)))
    b = asyncio.run(llm.chat(_ask("Name a color.", top_logprobs=3)))
    assert a.text.strip() and b.text.strip()
    assert a.usage.prompt_tokens > 0 and a.usage.completion_tokens == len(a.logprobs) > 0
    assert a.finish_reason in {"stop", "length"} and a.usage.cost_usd is None
    # Greedy at temperature 0: every chosen token is the most likely one. (Two identical calls need not
    # give the same text: the server's prompt cache evaluates the second prompt in another batch shape,
    # which moves near-tied logits of a 135M model enough to pick another token.)
    for t in [*a.logprobs, *b.logprobs]:
        assert t.logprob == pytest.approx(max(t.top.values()), abs=1e-4) and len(t.top) <= 3


def test_json_schema_answer(llama_server):
    schema = {
        "type": "object",
        "properties": {"color": {"type": "string", "enum": ["red", "green", "blue"]}},
        "required": ["color"],
    }
    llm = _server_llm(llama_server)
    resp = asyncio.run(
        llm.chat(
            _ask("Pick a color. Answer in JSON.", json_schema=schema).model_copy(update={"max_tokens": 30})
        )
    )
    import json

    assert json.loads(resp.text)["color"] in {"red", "green", "blue"}


def test_token_probs_match_the_servers_next_token_distribution(llama_server):
    import openai

    llm = _server_llm(llama_server)
    digits = [str(i) for i in range(10)]
    prompt = "Rate how much each word names a month (0-9).\nMarch\t9\nbanana\t0\nJune\t"
    cut = prompt.index("banana\t") + len("banana\t")
    req = TokenProbsRequest(prompt=prompt, positions=[cut, len(prompt)], candidates=digits)
    resp = asyncio.run(llm.token_probs(req))
    assert llm.inner._mode == "shifted"  # llama-cpp-python aligns echoed logprobs one token late

    async def next_token_top(text: str) -> dict[str, float]:
        client = openai.AsyncOpenAI(api_key="x", base_url=llama_server)
        r = await client.completions.create(
            model="smollm2", prompt=text, max_tokens=1, temperature=0, logprobs=10
        )
        return r.choices[0].logprobs.top_logprobs[0]

    for p, probs, mass in zip(req.positions, resp.probs, resp.mass, strict=True):
        top = asyncio.run(next_token_top(prompt[:p]))
        raw = {c: math.exp(top[c]) if c in top else 0.0 for c in digits}
        # Same distribution up to llama.cpp's batch-shape noise (~0.05 in logprob on this Q4 model);
        # a misaligned position would put its mass on a tab or a word instead.
        assert mass == pytest.approx(sum(raw.values()), rel=0.1)
        ref = [raw[c] / sum(raw.values()) for c in digits]
        assert [probs[c] for c in digits] == pytest.approx(ref, abs=0.03)
        assert max(probs, key=probs.get) == digits[ref.index(max(ref))]
    with pytest.raises(LLMError, match="token boundary"):
        asyncio.run(llm.token_probs(TokenProbsRequest(prompt=prompt, positions=[cut - 3], candidates=digits)))


def test_stepwise_read_out_through_a_server_continues_with_its_own_digits(llama_server, tmp_path):
    from autointerp.llm import StepwiseRequest

    llm = _server_llm(llama_server, Store(tmp_path / "s.db"))
    digits = [str(i) for i in range(10)]
    req = StepwiseRequest(
        prompt="Rate how much each word names a month (0-9).\nMarch\t9\nbanana\t0\n",
        steps=["June\t", "table\t", "October\t"],
        candidates=digits,
    )
    (resp,) = asyncio.run(llm.stepwise_many([req]))
    assert len(resp.probs) == len(resp.mass) == len(resp.chosen) == 3
    assert resp.chosen == [max(p, key=p.get) for p in resp.probs]  # each step follows its own best digit
    # the third step reads the prompt with the first two answers filled in: the same as asking for it
    third = TokenProbsRequest(
        prompt=req.prefix(resp.chosen[:2]), positions=[len(req.prefix(resp.chosen[:2]))], candidates=digits
    )
    direct = asyncio.run(llm.token_probs(third))
    assert direct.probs[0] == pytest.approx(resp.probs[2], abs=0.03)  # llama.cpp batch-shape noise
    assert asyncio.run(llm.stepwise_many([req]))[0].usage.cached


def test_concurrency_is_bounded_and_used(llama_server, tmp_path):
    counter = Counter()
    llm = _server_llm(llama_server, Store(tmp_path / "c.db"), concurrency=3, counter=counter)
    words = ["red", "cat", "sun", "tree", "sea", "map", "box"]

    async def run():
        return await asyncio.gather(*(llm.chat(_ask(f"Repeat the word {w}.")) for w in words))

    answers = asyncio.run(run())
    assert len(answers) == len(words) and all(a.text.strip() for a in answers)
    assert counter.sent == len(words) and 2 <= counter.max_open <= 3


def test_second_identical_call_is_served_from_the_store(llama_server, tmp_path):
    store = Store(tmp_path / "c.db")
    counter = Counter()
    llm = _server_llm(llama_server, store, counter=counter)
    req = _ask("Say hello.")
    first = asyncio.run(llm.chat(req))
    sent = counter.sent
    second = asyncio.run(llm.chat(req))
    assert counter.sent == sent == 1  # the server was not hit again
    assert second.usage.cached and not first.usage.cached and second.text == first.text
    rec = store.get_llm_call(req.cache_key("openai", "smollm2"))
    assert rec is not None and rec.completion_tokens == first.usage.completion_tokens and rec.latency_s > 0


def test_unreachable_server_fails_clearly():
    llm = CachedLLM(OpenAILLM("smollm2", base_url=f"http://127.0.0.1:{_free_port()}/v1", max_retries=0))
    with pytest.raises(LLMError, match="cannot reach"):
        asyncio.run(llm.chat(_ask("hi")))
