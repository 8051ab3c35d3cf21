"""LLM access: `get_llm(spec)` builds a backend and wraps it in the store-backed cache.

Specs: `local:qwen2.5-coder-1.5b`, `local:smollm2-135m`, `local:PATH` (model directory or .gguf),
`local:HF_ID` (from the Hugging Face cache), `openai:MODEL` (+ base_url / OPENAI_BASE_URL for any
OpenAI-compatible server), `anthropic:MODEL`; `scripted:NAME` for a registered `ScriptedLLM` (tests).
API backends wait `timeout` seconds per request and retry `retries` times (AUTOINTERP_LLM_TIMEOUT,
AUTOINTERP_LLM_RETRIES; default 120 s and 5).
"""

from __future__ import annotations

import os
from typing import Literal

from pydantic import BaseModel, Field, ValidationError

from autointerp.errors import UserError, require_local
from autointerp.llm.base import (
    LLM,
    Capabilities,
    ChatRequest,
    ChatResponse,
    LLMError,
    Message,
    OutOfCreditError,
    StepwiseRequest,
    StepwiseResponse,
    TokenLogprob,
    TokenProbsRequest,
    TokenProbsResponse,
    Tool,
    ToolCall,
    Usage,
)
from autointerp.llm.cache import CachedLLM
from autointerp.store import Store

__all__ = [
    "LLM",
    "CachedLLM",
    "Capabilities",
    "ChatRequest",
    "ChatResponse",
    "LLMError",
    "LLMSpec",
    "Message",
    "OutOfCreditError",
    "StepwiseRequest",
    "StepwiseResponse",
    "TokenLogprob",
    "TokenProbsRequest",
    "TokenProbsResponse",
    "Tool",
    "ToolCall",
    "Usage",
    "configure_keys",
    "connection",
    "get_llm",
    "parse_spec",
]

BACKENDS = ("local", "openai", "anthropic", "scripted")
DEFAULT_KEY_ENV = {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY"}
KEY_ENV = dict(DEFAULT_KEY_ENV)  # backend -> the environment variable holding its API key


def configure_keys(names: dict[str, str]) -> None:
    """Read API keys from these environment variables (a config file's [keys]); the rest: the defaults."""
    KEY_ENV.clear()
    KEY_ENV.update(DEFAULT_KEY_ENV, **names)


TIMEOUT_ENV, RETRIES_ENV = "AUTOINTERP_LLM_TIMEOUT", "AUTOINTERP_LLM_RETRIES"


class Connection(BaseModel):
    """How an API backend talks to its server: seconds to wait per request, retries after a failure."""

    timeout: float = Field(120.0, gt=0, allow_inf_nan=False)
    retries: int = Field(5, ge=0)


def connection(timeout: float | None = None, retries: int | None = None) -> Connection:
    """Timeout and retries as given, else from AUTOINTERP_LLM_TIMEOUT / _RETRIES; UserError if invalid."""
    given = {"timeout": timeout, "retries": retries}
    for key, env in (("timeout", TIMEOUT_ENV), ("retries", RETRIES_ENV)):
        if given[key] is None and os.environ.get(env, "").strip():
            given[key] = os.environ[env].strip()
    try:
        return Connection(**{k: v for k, v in given.items() if v is not None})
    except ValidationError as e:
        key = e.errors()[0]["loc"][0]
        want = "a number of seconds above 0" if key == "timeout" else "a whole number, 0 or more"
        raise UserError(
            f"The LLM {key} must be {want}, not {given[key]!r} (from --{key} or "
            f"{TIMEOUT_ENV if key == 'timeout' else RETRIES_ENV})."
        ) from None


class LLMSpec(BaseModel):
    backend: Literal["local", "openai", "anthropic", "scripted"]
    model: str


def parse_spec(spec: str) -> LLMSpec:
    """`BACKEND:MODEL` -> LLMSpec; UserError naming the accepted forms otherwise."""
    backend, sep, model = spec.strip().partition(":")
    if not sep or backend not in BACKENDS or not model.strip():
        raise UserError(
            f"{spec!r} is not an LLM spec; write local:qwen2.5-coder-1.5b, local:PATH, openai:MODEL "
            "or anthropic:MODEL."
        )
    return LLMSpec(backend=backend, model=model.strip())  # type: ignore[arg-type]


def get_llm(
    spec: str,
    store: Store | None = None,
    *,
    base_url: str | None = None,
    concurrency: int = 8,
    no_cache: bool = False,
    timeout: float | None = None,
    retries: int | None = None,
) -> CachedLLM:
    """The LLM named by `spec`, served through the store's cache (`no_cache`: always call, still record).

    `timeout` (seconds per request) and `retries` apply to the API backends (see `connection`).
    """
    s = parse_spec(spec)
    conn = connection(timeout, retries)
    api = dict(concurrency=concurrency, timeout=conn.timeout, max_retries=conn.retries)
    if s.backend == "local":
        require_local(spec, ("torch", "transformers"))
        from autointerp.llm.local import LocalLLM, resolve

        resolve(s.model)  # a bad path fails here, before any model loads
        inner: LLM = LocalLLM(s.model)
    elif s.backend == "scripted":
        from autointerp.llm.scripted import registered

        inner = registered(s.model)
    elif s.backend == "openai":
        base_url = base_url or os.environ.get("OPENAI_BASE_URL") or None
        key = os.environ.get(KEY_ENV["openai"])
        if not key and base_url is None:
            raise UserError(
                f"{spec} needs an API key: set {KEY_ENV['openai']} (or pass --base-url for a local "
                "OpenAI-compatible server)."
            )
        from autointerp.llm.openai_backend import OpenAILLM

        inner = OpenAILLM(s.model, api_key=key, base_url=base_url, **api)
    else:
        key = os.environ.get(KEY_ENV["anthropic"])
        if not key:
            raise UserError(f"{spec} needs an API key: set {KEY_ENV['anthropic']}.")
        from autointerp.llm.anthropic_backend import AnthropicLLM

        base_url = base_url or os.environ.get("ANTHROPIC_BASE_URL") or None
        inner = AnthropicLLM(s.model, api_key=key, base_url=base_url, **api)
    return CachedLLM(inner, store, no_cache=no_cache)
