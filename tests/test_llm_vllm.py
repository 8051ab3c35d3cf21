"""Exact simulation through vLLM's OpenAI-compatible server, replayed in vLLM's response shapes.

vLLM answers `/v1/completions` with `echo=True, logprobs=k` by turning on `prompt_logprobs=k`
(vllm/entrypoints/openai/completion/protocol.py) and returning, per echoed token, the top k plus the
token itself, offsets that add up the decoded tokens' lengths (a BOS token included), `None` for the
first token, and -9999.0 for -inf. The fake server below is a tiny deterministic "model" that answers
in exactly that shape; the stored scale mass must be the probability seen in the top k.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from autointerp.llm import LLMError, TokenProbsRequest
from autointerp.llm.openai_backend import OpenAILLM
from autointerp.pipeline import label
from autointerp.simulate import is_null_read

DIGITS = [str(i) for i in range(10)]
BOS = "<|begin_of_text|>"


def tokenize(text: str) -> list[str]:
    """Words with their leading space, tabs and newlines apart; "é" as two byte tokens (U+FFFD each)."""
    tokens = []
    for t in re.findall(r"\t|\n| ?[^\s]+| +", text):
        tokens += ["\ufffd", "\ufffd"] if t == " café" else [t]
    assert "".join(tokens).replace("\ufffd\ufffd", " café") == text
    return tokens


def dist(prefix: str) -> dict[str, float]:
    """The next-token probabilities after `prefix`: high digits after a month's TAB, 0 after others,
    elsewhere the next number of a count ("1, 2, 3," -> " 4"); under the exact simulator's null
    explanation (its calibration read) a month is a token like any other."""
    if prefix.endswith("\t"):
        word = prefix[:-1].rsplit("\n", 1)[-1].strip()
        if word in ("March", "June", "July") and not is_null_read(
            prefix
        ):  # a model that reads the explanation
            return {"9": 0.8, "0": 0.1, "5": 0.05, "\n": 0.05}
        return {"0": 0.9, "\n": 0.06, "1": 0.04}
    return {f" {prefix.count(',') + 1}": 0.5, "0": 0.3, "\n": 0.2}  # counting: tells alignments apart


def entry(prefix: str, actual: str, k: int) -> dict[str, float]:
    """vLLM's top_logprobs entry: the actual token first (-9999.0 for -inf), then the top k."""
    d = dist(prefix)
    top = {actual: max(math.log(d[actual]), -9999.0) if actual in d else -9999.0}
    for tok, p in sorted(d.items(), key=lambda kv: -kv[1])[:k]:
        top.setdefault(tok, math.log(p))
    return top


def completion(prompt: str, k: int, echo: bool, bos: bool) -> dict:
    d = dist(prompt)
    gen = max(d, key=d.get)
    if echo:
        toks = tokenize(prompt)
        tokens, prefix, tops = [BOS] if bos else [], "", [None] if bos else []
        for i, t in enumerate(toks):
            tokens.append(t)
            tops.append(None if i == 0 and not bos else entry(prefix, t, k))
            prefix += t if t != "\ufffd" else ""
        tokens.append(gen)
        tops.append(entry(prompt, gen, k))
        text = prompt + gen
    else:
        tokens, tops, text = [gen], [entry(prompt, gen, k)], gen
    offsets = [0]
    for t in tokens[:-1]:
        offsets.append(offsets[-1] + len(t))
    logprobs = {
        "text_offset": offsets,
        "token_logprobs": [None if top is None else top[t] for t, top in zip(tokens, tops, strict=True)],
        "tokens": tokens,
        "top_logprobs": tops,
    }
    prompt_logprobs = [None] + [{str(i): {"logprob": -1.0, "rank": 1, "decoded_token": t}}
                                for i, t in enumerate(tokens[1:-1])]  # fmt: skip
    choice = {"index": 0, "text": text, "logprobs": logprobs, "finish_reason": "length", "stop_reason": None,
              "prompt_logprobs": prompt_logprobs if echo else None}  # fmt: skip
    n = len(tokens) - 1
    usage = {"prompt_tokens": n, "completion_tokens": 1, "total_tokens": n + 1}
    return {"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "Qwen/Qwen2.5-7B-Instruct",
            "choices": [choice], "usage": usage}  # fmt: skip


class FakeVLLM(ThreadingHTTPServer):
    def __init__(self, bos: bool = False):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.bos = bos
        self.reject_echo = False
        self.requests: list[dict] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_port}/v1"


class _Handler(BaseHTTPRequestHandler):
    server: FakeVLLM

    def do_POST(self) -> None:  # noqa: N802
        req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append(req)
        assert self.path == "/v1/completions" and req["max_tokens"] == 1
        if self.server.reject_echo and req["echo"]:  # llama.cpp's C++ llama-server
            body = json.dumps({"error": {"code": 400, "message": "Only no echo is supported",
                                         "type": "invalid_request_error"}}).encode()  # fmt: skip
            self.send_response(400)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        body = json.dumps(completion(req["prompt"], req["logprobs"], req["echo"], self.server.bos)).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:  # noqa: ANN002
        pass


@pytest.fixture(params=[False, True], ids=["no-bos", "bos"])
def vllm(request) -> Iterator[FakeVLLM]:
    srv = FakeVLLM(bos=request.param)
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield srv
    srv.shutdown()
    srv.server_close()


def listing(words: list[str]) -> tuple[str, list[int]]:
    text, positions = "Explanation: months\n", []
    for w in words:
        text += w + "\t"
        positions.append(len(text))
        text += "0\n"
    return text, positions


def test_token_probs_read_vllm_echo_and_the_mass_is_what_the_top_k_saw(vllm):
    llm = OpenAILLM("Qwen/Qwen2.5-7B-Instruct", base_url=vllm.url, prompt_logprobs=2)
    prompt, positions = listing([" the", " March", " cat"])
    resp = asyncio.run(
        llm.token_probs(TokenProbsRequest(prompt=prompt, positions=positions, candidates=DIGITS))
    )
    # top 2 after a month's TAB: "9" 0.8 and "0" 0.1 ("5" at 0.05 is not seen); elsewhere "0" 0.9
    assert resp.mass == pytest.approx([0.9, 0.9, 0.9])
    assert resp.probs[1]["9"] == pytest.approx(0.8 / 0.9) and resp.probs[1]["5"] == 0.0
    assert resp.probs[0]["0"] == pytest.approx(1.0) and resp.probs[2]["0"] == pytest.approx(1.0)
    assert vllm.requests[-1]["echo"] is True and vllm.requests[-1]["logprobs"] == 2

    wider = OpenAILLM("Qwen/Qwen2.5-7B-Instruct", base_url=vllm.url, prompt_logprobs=3)
    resp = asyncio.run(
        wider.token_probs(TokenProbsRequest(prompt=prompt, positions=positions, candidates=DIGITS))
    )
    assert resp.mass == pytest.approx([0.94, 0.95, 0.94])  # now "1" is seen, and "5" after the month
    assert resp.probs[1]["5"] == pytest.approx(0.05 / 0.95)


def test_offsets_that_a_split_character_would_shift_are_refused(vllm):
    llm = OpenAILLM("Qwen/Qwen2.5-7B-Instruct", base_url=vllm.url)
    prompt, positions = listing([" café", " March"])
    with pytest.raises(LLMError, match="do not spell the prompt"):
        asyncio.run(llm.token_probs(TokenProbsRequest(prompt=prompt, positions=positions, candidates=DIGITS)))


def test_exact_simulation_through_vllm_stores_the_top_k_mass(month_store, scripted, vllm):
    explainer = scripted("explain", respond=lambda request: "months of the year")
    summary = label(
        month_store.path,
        limit=1,
        explainer=explainer.spec,
        simulator="openai:Qwen/Qwen2.5-7B-Instruct",
        simulator_mode="exact",
        base_url=vllm.url,
    )
    (r,) = summary.results
    assert r.scores["correlation"] > 0.9
    (score,) = month_store.scores(r.explanation_id)
    # every simulated token: "0" at 0.9 (+ "1" 0.04 in the top 10), or after a month 0.8 + 0.1 + 0.05
    assert score.details["scale_mass"]["median"] == pytest.approx(0.94)
    assert score.details["scale_mass"]["min"] == pytest.approx(0.94)
    assert score.simulator == "openai:Qwen/Qwen2.5-7B-Instruct#exact"


def test_a_server_that_refuses_echo_names_the_servers_that_work(vllm):
    vllm.reject_echo = True
    llm = OpenAILLM("smollm2", base_url=vllm.url, max_retries=0)
    prompt, positions = listing([" March"])
    with pytest.raises(LLMError, match="Only no echo is supported.*vLLM or llama-cpp-python's server"):
        asyncio.run(llm.token_probs(TokenProbsRequest(prompt=prompt, positions=positions, candidates=DIGITS)))
