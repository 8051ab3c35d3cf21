"""Counting a request's tokens without calling a model (what `label --dry-run` needs).

- local: the model's own tokenizer (no weights loaded), chat requests through its chat template,
  exactly as the local backend tokenizes them;
- openai: tiktoken when it is installed (the model's encoding, else o200k_base) plus OpenAI's
  documented per-message overhead; without tiktoken, and for other OpenAI-compatible servers, an
  estimate of one token per CHARS_PER_TOKEN characters;
- anthropic: the same estimate (Anthropic publishes no offline tokenizer);
- scripted: whitespace words, as the scripted test LLM counts them.
`exact` says whether the counts are the model's own or an estimate.
"""

from __future__ import annotations

import importlib.util
from typing import Protocol

from autointerp.llm.base import ChatRequest, StepwiseRequest
from autointerp.llm.util import schema_instruction

CHARS_PER_TOKEN = 4  # the estimate: OpenAI's rule of thumb for English text
MESSAGE_OVERHEAD = 4  # tokens around each chat message (role, separators), OpenAI's cookbook figure
REPLY_PRIMER = 3  # tokens that start the assistant's reply


class TokenCounter(Protocol):
    exact: bool
    how: str  # one phrase: how the counts are made, shown to the user

    def text(self, text: str) -> int:
        """Tokens of a raw prompt (as a token-probability request sends it)."""
        ...

    def chat(self, request: ChatRequest) -> int:
        """Prompt tokens of a chat request."""
        ...


def _contents(request: ChatRequest) -> list[str]:
    texts = [m.content for m in request.messages]
    if request.json_schema is not None:
        texts.append(schema_instruction(request.json_schema))
    return texts


class EstimateCounter:
    """One token per CHARS_PER_TOKEN characters, plus the per-message overhead of chat requests."""

    exact = False

    def __init__(self, why: str):
        self.how = f"estimate: characters / {CHARS_PER_TOKEN} ({why})"

    def text(self, text: str) -> int:
        return -(-len(text) // CHARS_PER_TOKEN)

    def chat(self, request: ChatRequest) -> int:
        return sum(self.text(t) + MESSAGE_OVERHEAD for t in _contents(request)) + REPLY_PRIMER


class TiktokenCounter:
    """OpenAI's tokenizer for the model, with OpenAI's documented chat overhead per message."""

    exact = True

    def __init__(self, model: str):
        import tiktoken

        try:
            self.enc = tiktoken.encoding_for_model(model)
        except KeyError:
            self.enc = tiktoken.get_encoding("o200k_base")
        self.how = f"tiktoken {self.enc.name}"

    def text(self, text: str) -> int:
        return len(self.enc.encode(text, disallowed_special=()))

    def chat(self, request: ChatRequest) -> int:
        return sum(self.text(t) + MESSAGE_OVERHEAD for t in _contents(request)) + REPLY_PRIMER


class HFCounter:
    """A transformers tokenizer: raw prompts as the local backend encodes them, chats through the
    chat template (the schema instruction added as the local backend adds it)."""

    exact = True

    def __init__(self, tok, name: str):  # noqa: ANN001 - a transformers tokenizer
        self.tok, self.how = tok, f"tokenizer of {name}"

    def text(self, text: str) -> int:
        return len(self.tok(text)["input_ids"])

    def chat(self, request: ChatRequest) -> int:
        msgs = [{"role": m.role, "content": m.content} for m in request.messages]
        if request.json_schema is not None:
            msgs.append({"role": "system", "content": schema_instruction(request.json_schema)})
            if msgs[-2]["role"] == "user":
                msgs[-1], msgs[-2] = msgs[-2], msgs[-1]
        text = self.tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        return len(self.tok(text, add_special_tokens=False)["input_ids"])


class WordCounter:
    """Whitespace words: how the scripted test LLM counts."""

    exact = True
    how = "words (scripted LLM)"

    def text(self, text: str) -> int:
        return len(text.split())

    def chat(self, request: ChatRequest) -> int:
        return sum(len(m.content.split()) for m in request.messages)


def stepwise_tokens(counter: TokenCounter, request: StepwiseRequest) -> int:
    """Prompt tokens of a stepwise read-out: the prompt and every step (as the local backend counts)."""
    return counter.text(request.prompt) + sum(counter.text(s) for s in request.steps)


def local_tokenizer(source: str):  # noqa: ANN201 - a transformers tokenizer
    """The tokenizer of a `local:` model source, without loading the model."""
    from transformers import AutoTokenizer

    from autointerp import assets
    from autointerp.llm.local import _PLAIN_TEMPLATE, resolve

    _, path = resolve(source)
    if source in assets.embedded_models():
        where, gguf = assets.tokenizer_files(source)
    elif path is not None and path.is_file():
        where, gguf = path.parent, path.name
    else:
        where, gguf = (path if path is not None else source), None
    tok = AutoTokenizer.from_pretrained(str(where), **({"gguf_file": gguf} if gguf else {}))
    if tok.chat_template is None:
        tok.chat_template = _PLAIN_TEMPLATE
    return tok


def counter_for(backend: str, model: str, official: bool = True) -> TokenCounter:
    """How tokens of `backend:model` are counted offline (`official`: api.openai.com, not another server)."""
    if backend == "local":
        return HFCounter(local_tokenizer(model), model)
    if backend == "scripted":
        return WordCounter()
    if backend == "openai" and official:
        if importlib.util.find_spec("tiktoken") is not None:
            return TiktokenCounter(model)
        return EstimateCounter("tiktoken is not installed")
    if backend == "openai":
        return EstimateCounter("the server's tokenizer is unknown here")
    return EstimateCounter("Anthropic has no offline tokenizer")
