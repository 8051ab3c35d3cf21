"""LLM failures at the HTTP boundary: the real openai and anthropic SDKs against a fake server in the test.

Out-of-credit is its own error and not retried; failed or empty answers are never cached; malformed
JSON names the server; a hung server costs `timeout` seconds, not 6 x 120 s; a constant judge is NaN.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from typer.testing import CliRunner

from autointerp.cli import app
from autointerp.errors import UserError
from autointerp.llm import (
    CachedLLM,
    ChatRequest,
    LLMError,
    Message,
    OutOfCreditError,
    connection,
    get_llm,
)
from autointerp.llm.anthropic_backend import AnthropicLLM
from autointerp.llm.openai_backend import OpenAILLM
from autointerp.pipeline import label
from autointerp.store import Store

HANG = "hang"  # an answer that never comes
QUOTA = "You exceeded your current quota, please check your plan and billing details."
CREDIT = "Your credit balance is too low to access the Anthropic API. Please go to Plans & Billing."


class FakeServer(ThreadingHTTPServer):
    """Answers each POST with the next scripted (status, body, headers) (the last one repeats) or HANG.

    A body is a dict (sent as JSON) or bytes (sent as they are, as application/json unless the
    headers say otherwise). Every request body is kept in `requests`.
    """

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.answers: list = []
        self.requests: list[dict] = []
        self.release = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_port}"

    def script(self, *answers) -> None:  # noqa: ANN002 - (status, body, headers) tuples or HANG
        self.answers = list(answers)
        self.requests.clear()


class _Handler(BaseHTTPRequestHandler):
    server: FakeServer

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        self.server.requests.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        answers = self.server.answers
        answer = answers.pop(0) if len(answers) > 1 else answers[0]
        if answer == HANG:
            self.server.release.wait(30)
            return
        status, body, headers = answer
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        for k, v in {"Content-Type": "application/json", **headers}.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:  # noqa: ANN002 - quiet
        pass


@pytest.fixture
def server() -> Iterator[FakeServer]:
    srv = FakeServer()
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield srv
    srv.release.set()
    srv.shutdown()
    srv.server_close()


def chat_completion(text: str) -> tuple[int, dict, dict]:
    """An OpenAI /v1/chat/completions success."""
    body = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 0,
        "model": "fake",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13},
    }
    return 200, body, {}


def anthropic_message(text: str) -> tuple[int, dict, dict]:
    """An Anthropic /v1/messages success."""
    body = {
        "id": "msg_01",
        "type": "message",
        "role": "assistant",
        "model": "claude-haiku-4-5",
        "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 25, "output_tokens": 6},
    }
    return 200, body, {}


def openai_llm(server: FakeServer, store: Store | None = None, **kw) -> CachedLLM:
    kw.setdefault("max_retries", 3)
    return CachedLLM(OpenAILLM("fake", base_url=server.url + "/v1", **kw), store)


def anthropic_llm(server: FakeServer, store: Store | None = None, **kw) -> CachedLLM:
    kw.setdefault("max_retries", 3)
    return CachedLLM(AnthropicLLM("claude-haiku-4-5", api_key="sk-test", base_url=server.url, **kw), store)


def ask(text: str = "Name the months.", **kw) -> ChatRequest:
    return ChatRequest(messages=[Message(role="user", content=text)], **kw)


def chat(llm: CachedLLM, request: ChatRequest | None = None):  # noqa: ANN201
    import asyncio

    return asyncio.run(llm.chat(request or ask()))


# -- out of credit ---------------------------------------------------------------------------------
def test_openai_out_of_quota_is_its_own_error_and_not_retried(server):
    quota = {
        "error": {"message": QUOTA, "type": "insufficient_quota", "param": None, "code": "insufficient_quota"}
    }
    server.script((429, quota, {"retry-after-ms": "1"}))
    with pytest.raises(OutOfCreditError, match="current quota") as err:
        chat(openai_llm(server))
    assert "lack of credit" in str(err.value) and "rate-limited" not in str(err.value)
    assert len(server.requests) == 1  # not retried as rate limiting

    limited = {"error": {"message": "Rate limit reached", "type": "requests", "code": "rate_limit_exceeded"}}
    server.script((429, limited, {"retry-after-ms": "1"}), chat_completion("months"))
    assert chat(openai_llm(server)).text == "months"
    assert len(server.requests) == 2  # an ordinary rate limit is retried


@pytest.mark.parametrize(
    "answer",
    [
        (400, {"type": "error", "error": {"type": "invalid_request_error", "message": CREDIT}}, {}),
        (402, {"type": "error", "error": {"type": "billing_error", "message": CREDIT}}, {}),
    ],
)
def test_anthropic_low_credit_is_its_own_error(server, answer):
    server.script(answer)
    with pytest.raises(OutOfCreditError, match="credit balance is too low") as err:
        chat(anthropic_llm(server))
    assert "lack of credit" in str(err.value) and len(server.requests) == 1


# -- what is cached ----------------------------------------------------------------------------------
def test_failed_and_empty_answers_are_not_cached(server, tmp_path):
    store = Store(tmp_path / "c.db")
    key = ask().cache_key("openai", "fake")
    server.script((500, {"error": {"message": "boom"}}, {"retry-after-ms": "1"}))
    with pytest.raises(LLMError, match="answered 500"):
        chat(openai_llm(server, store, max_retries=1))
    assert store.get_llm_call(key) is None

    server.script(chat_completion(""))
    assert chat(openai_llm(server, store)).text == ""  # the caller sees the empty answer ...
    assert store.get_llm_call(key) is None  # ... and it is not kept

    server.script(chat_completion("months of the year"))  # healthy again: the rerun asks, and succeeds
    assert chat(openai_llm(server, store)).text == "months of the year"
    assert store.get_llm_call(key) is not None
    again = chat(openai_llm(server, store))
    assert again.usage.cached and len(server.requests) == 1


def test_an_empty_anthropic_answer_is_not_cached(server, tmp_path):
    store = Store(tmp_path / "c.db")
    server.script(anthropic_message(""))
    assert chat(anthropic_llm(server, store)).text == ""
    server.script(anthropic_message("months"))
    assert chat(anthropic_llm(server, store)).text == "months" and len(server.requests) == 1


def test_a_non_json_answer_to_a_json_request_is_not_cached(tmp_path, scripted):
    store = Store(tmp_path / "c.db")
    llm = scripted(respond=None)
    llm.enqueue("sorry, I cannot", '{"label": "months"}')
    cached = CachedLLM(llm, store)
    request = ask(json_schema={"type": "object", "required": ["label"]})
    assert chat(cached, request).text == "sorry, I cannot"
    assert chat(cached, request).text == '{"label": "months"}'
    assert chat(cached, request).usage.cached and len(llm.requests) == 2


# -- malformed answers ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("body", "headers", "detail"),
    [
        (b'{"id": "chatcmpl-1", "choices": [{"message": {"content": "unterminat', {}, "malformed JSON"),
        (b"<html><body>It works!</body></html>", {"Content-Type": "text/html"}, "not JSON"),
    ],
)
def test_malformed_json_names_the_server(server, body, headers, detail):
    server.script((200, body, headers))
    with pytest.raises(LLMError) as err:
        chat(openai_llm(server))
    msg = str(err.value)
    assert msg.startswith(f"openai:fake: {server.url}/v1 did not send an OpenAI-compatible answer")
    assert detail in msg and "--base-url" in msg and msg.count(". ") == 0  # one sentence

    server.script((200, body, headers))
    with pytest.raises(LLMError, match="did not send an Anthropic API answer") as err:
        chat(anthropic_llm(server))
    assert detail in str(err.value)


# -- timeouts and retries ----------------------------------------------------------------------------
def test_a_hung_server_costs_the_timeout_not_minutes(server):
    server.script(HANG)
    t0 = time.perf_counter()
    with pytest.raises(LLMError, match=r"did not answer within 1 s \(1 retries\); raise --timeout"):
        chat(openai_llm(server, timeout=1, max_retries=1))
    assert time.perf_counter() - t0 < 10 and len(server.requests) == 2  # the request and one retry

    with pytest.raises(LLMError, match=r"did not answer within 0.5 s \(0 retries\)"):
        chat(anthropic_llm(server, timeout=0.5, max_retries=0))


def test_timeout_and_retries_from_arguments_or_environment(monkeypatch):
    monkeypatch.delenv("AUTOINTERP_LLM_TIMEOUT", raising=False)
    monkeypatch.delenv("AUTOINTERP_LLM_RETRIES", raising=False)
    assert connection().model_dump() == {"timeout": 120.0, "retries": 5}
    monkeypatch.setenv("AUTOINTERP_LLM_TIMEOUT", "7.5")
    monkeypatch.setenv("AUTOINTERP_LLM_RETRIES", "0")
    assert connection().model_dump() == {"timeout": 7.5, "retries": 0}
    assert connection(timeout=3, retries=2).model_dump() == {"timeout": 3.0, "retries": 2}
    llm = get_llm("openai:fake", base_url="http://127.0.0.1:9/v1")
    assert (llm.inner.timeout, llm.inner.max_retries) == (7.5, 0)
    for bad in ({"timeout": 0}, {"timeout": float("nan")}, {"retries": -1}):
        with pytest.raises(UserError, match="must be"):
            connection(**bad)
    monkeypatch.setenv("AUTOINTERP_LLM_RETRIES", "many")
    with pytest.raises(UserError, match="AUTOINTERP_LLM_RETRIES"):
        get_llm("openai:fake", base_url="http://127.0.0.1:9/v1")


def test_label_with_a_timeout_against_a_hung_server(server, month_store):
    server.script(HANG)
    args = ["label", "--db", str(month_store.path), "--explainer", "openai:fake"]
    args += ["--base-url", server.url + "/v1", "--simulator-mode", "json", "--concurrency", "3"]
    t0 = time.perf_counter()
    out = CliRunner().invoke(app, [*args, "--timeout", "1", "--retries", "0"], env={"COLUMNS": "300"})
    assert time.perf_counter() - t0 < 20
    assert out.exit_code == 1, out.output
    assert "0 done" in out.output and "3 failed" in out.output
    assert "did not answer within 1 s" in out.output
    run = Store(month_store.path).runs("label")[0]
    assert run.status == "failed" and "did not answer within 1 s" in run.summary["failures"][0]["error"]

    bad = CliRunner().invoke(app, [*args, "--timeout", "0"])
    assert bad.exit_code == 2 and "timeout must be a number of seconds above 0" in bad.output


# -- a constant judge ---------------------------------------------------------------------------------
def test_a_constant_judge_is_nan_in_a_label_run(month_store, scripted):
    # The simulator knows the months; the judge says "0" to every text (P("1") = 0 everywhere).
    def probs(prefix: str, candidates: list[str]) -> dict[str, float]:
        if set(candidates) == {"0", "1"}:
            return {"0": 1.0}
        return {"9": 0.9} if prefix.endswith((" March\t", " June\t", " July\t")) else {"0": 0.9}

    summary = label(
        month_store.path, explainer=scripted(probs=probs).spec, scorers=["correlation", "detection"]
    )
    assert not summary.failures
    for r in summary.results:
        assert r.status == {"correlation": "ok", "detection": "nan"} and r.scores["detection"] is None
        (exp,) = month_store.explanations(r.unit_id)
        (det,) = [x for x in month_store.scores(exp.id) if x.scorer == "detection"]
        assert "same verdict" in det.reason and 'P("1") = 0.000' in det.reason
    assert summary.stats("detection")["n"] == 0  # not averaged in as 0.5


# -- JSON the caller parses itself; out of credit in a label run ------------------------------------
def test_garbage_answers_to_json_requests_without_a_schema_are_not_cached(tmp_path, scripted):
    store = Store(tmp_path / "c.db")
    llm = scripted(respond=None)
    llm.enqueue("I would say 5, then 3", "Sure: [5, 3]")
    cached = CachedLLM(llm, store)
    request = ask(json_answer=True)
    assert request.cache_key("scripted", "test") == ask().cache_key("scripted", "test")  # keys unchanged
    assert chat(cached, request).text == "I would say 5, then 3"  # the caller sees it (and fails) ...
    assert store.get_llm_call(request.cache_key("scripted", "test")) is None  # ... and it is not kept
    assert chat(cached, request).text == "Sure: [5, 3]"  # the rerun asks again: JSON inside, kept
    assert chat(cached, request).usage.cached and len(llm.requests) == 2


def test_the_json_simulator_and_chat_judges_ask_for_json_answers(month_store, scripted):
    from autointerp.llm import ChatRequest as Request

    llm = scripted(
        token_probs=False, respond=lambda r: "[0, 9]" if "[[" not in r.messages[-1].content else "x"
    )
    label(
        month_store.path,
        [month_store.units()[0].id],
        explainer=llm.spec,
        scorers=["correlation", "detection"],
    )
    chats = [r for r in llm.requests if isinstance(r, Request)]
    explain, others = chats[0], chats[1:]
    assert not explain.json_answer and others and all(r.json_answer for r in others)


def out_of_credit(request) -> str:  # noqa: ANN001 - a scripted answer
    raise OutOfCreditError(
        f"scripted:test: the API refused the call for lack of credit ({QUOTA}); add credit."
    )


@pytest.mark.parametrize("when", ["explainer", "simulator"])
def test_out_of_credit_stops_the_whole_label_run_with_the_providers_message(month_store, scripted, when):
    if when == "explainer":
        llm = scripted(respond=out_of_credit)
    else:  # explaining works; the simulator (a chat judge's JSON here) runs out of credit
        llm = scripted(
            respond=lambda r: "months" if len(llm.requests) == 1 else out_of_credit(r), token_probs=False
        )
    args = ["label", "--db", str(month_store.path), "--explainer", llm.spec, "--concurrency", "1"]
    out = CliRunner().invoke(app, args, env={"COLUMNS": "300"})
    assert out.exit_code == 2, out.output
    errors = [x for x in out.output.splitlines() if x.startswith("error:")]
    assert errors == [
        f"error: scripted:test: the API refused the call for lack of credit ({QUOTA}); add credit."
    ]
    assert "Traceback" not in out.output and "done" not in out.output  # no summary of failed units
    assert len([r for r in llm.requests if isinstance(r, ChatRequest)]) == (1 if when == "explainer" else 2)
    (run,) = Store(month_store.path).runs("label")
    assert run.status == "failed" and "lack of credit" in run.summary["error"]


def test_an_out_of_quota_server_stops_the_label_run_at_once(server, month_store):
    quota = {
        "error": {"message": QUOTA, "type": "insufficient_quota", "param": None, "code": "insufficient_quota"}
    }
    server.script((429, quota, {"retry-after-ms": "1"}))
    args = ["label", "--db", str(month_store.path), "--explainer", "openai:fake", "--concurrency", "1"]
    args += ["--base-url", server.url + "/v1", "--simulator-mode", "json"]
    out = CliRunner().invoke(app, args, env={"COLUMNS": "300"})
    assert out.exit_code == 2, out.output
    text = " ".join(out.output.split())
    assert "lack of credit" in text and QUOTA in text and "Traceback" not in text
    assert len(server.requests) == 1  # not once per unit, not retried
