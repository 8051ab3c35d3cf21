"""Pydantic models shared by every module: what crosses a module border is one of these."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from autointerp.errors import UserError

ExampleKind = Literal["top", "quantile", "random", "negative", "counterfactual", "minimal", "hard_negative"]

_UNIT_RE = re.compile(
    r"^(?P<model>[^/]+)/(?P<hook>[^/]+)/(?:sae:(?P<sae>[^/]+)/)?(?P<head>head:)?(?P<index>\d+)$"
)
HEAD_HOOK_RE = re.compile(r"^blocks\.(?P<layer>\d+)\.attn$")  # the "hook" of attention-head units


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class UnitRef(BaseModel):
    """A unit addressed by a stable id: `model/hook/index` or `model/hook/sae:NAME/index` (NAME: the SAE's
    folder name and the first 8 hex digits of its content hash, e.g. `res6-1a2b3c4d`), or an attention
    head `model/blocks.L.attn/head:H` (hook `blocks.L.attn`, index H)."""

    model_config = ConfigDict(frozen=True)

    model: str
    hook: str
    index: int = Field(ge=0)
    sae: str | None = None

    @property
    def is_head(self) -> bool:
        return self.sae is None and HEAD_HOOK_RE.match(self.hook) is not None

    @property
    def layer(self) -> int | None:
        """The block index of a head unit (None for other units)."""
        m = HEAD_HOOK_RE.match(self.hook)
        return int(m["layer"]) if m and self.sae is None else None

    @property
    def id(self) -> str:
        sae = f"sae:{self.sae}/" if self.sae else ""
        head = "head:" if self.is_head else ""
        return f"{self.model}/{self.hook}/{sae}{head}{self.index}"

    @classmethod
    def parse(cls, unit_id: str) -> UnitRef:
        m = _UNIT_RE.match(unit_id.strip())
        if not m:
            raise UserError(
                f"{unit_id!r} is not a unit id; write MODEL/HOOK/INDEX, "
                "e.g. gemma-3-270m/blocks.6.mlp.hook_post/1234."
            )
        if bool(m["head"]) != (not m["sae"] and HEAD_HOOK_RE.match(m["hook"]) is not None):
            raise UserError(
                f"{unit_id!r} is not a unit id; an attention head is MODEL/blocks.L.attn/head:H "
                "(e.g. gemma-3-270m/blocks.3.attn/head:1) and only heads take `head:`."
            )
        return cls(model=m["model"], hook=m["hook"], index=int(m["index"]), sae=m["sae"])

    def __str__(self) -> str:
        return self.id


class Context(BaseModel):
    """One window of tokens from the corpus, shared by every unit that kept it."""

    id: str  # sha1 of the token ids: the same window is stored once
    token_ids: list[int]
    tokens: list[str]


class SourceRef(BaseModel):
    """The example a derived one (minimal, counterfactual, hard negative) was made from. Sampling keys on
    it so that no explanation is scored on edits of examples its explainer read."""

    model_config = ConfigDict(frozen=True)

    kind: ExampleKind | Literal["corpus"]  # corpus: a streamed window that is no stored example
    rank: int | None = None  # None for a corpus window
    context_id: str

    @classmethod
    def of(cls, example: Example) -> SourceRef:
        return cls(kind=example.kind, rank=example.rank, context_id=example.context.id)


class HeadAttention(BaseModel):
    """Where an attention head looked from each query position of an example: per position, its top
    source (key) positions, strongest first, and their attention weights (sparse: BOS and weights below
    the recording's floor left out)."""

    src: list[list[int]]
    weights: list[list[float]]


class Example(BaseModel):
    """A unit's activations over one context window."""

    unit_id: str
    kind: ExampleKind
    rank: int  # order within (unit, kind): 0 is the strongest for `top`
    context: Context
    acts: list[float]
    quantile: int | None = None  # which activation quantile a `quantile` example was drawn from
    provenance: dict[str, str | float | int | None] = Field(default_factory=dict)
    source: SourceRef | None = None  # what a derived example was made from (None: recorded)
    window: int | None = None  # a recorded example's window: its position in the run's window stream
    attn: HeadAttention | None = None  # attention heads: the top source positions per query position

    @property
    def max_act(self) -> float:
        return max(self.acts)

    @property
    def max_pos(self) -> int:
        return max(range(len(self.acts)), key=self.acts.__getitem__)


class ExampleRows(BaseModel):
    """Many examples as columns (row i is one example): how the recorder hands its examples to the store.

    Built without a Python object per example, since a recording of many units writes hundreds of
    thousands of them; `contexts` maps every `context_ids` entry to its window.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    unit_ids: np.ndarray  # (N,) object: str
    kinds: np.ndarray  # (N,) object: ExampleKind
    ranks: np.ndarray  # (N,) int
    context_ids: np.ndarray  # (N,) object: str
    acts: np.ndarray  # (N, T) float32
    quantiles: np.ndarray  # (N,) int, -1 where not a quantile example
    windows: np.ndarray | None = None  # (N,) int: each window's position in the run's window stream
    provenance: dict[str, str | float | int | None]
    contexts: dict[str, Context]
    # Attention heads: per example and query position, the top K source positions (-1: none) and weights.
    attn_src: np.ndarray | None = None  # (N, T, K) int16
    attn_w: np.ndarray | None = None  # (N, T, K) float32
    attn_rows: np.ndarray | None = None  # (N,) bool: the rows that are head examples (None: all)

    def __len__(self) -> int:
        return len(self.ranks)


class UnitStats(BaseModel):
    """Streaming statistics of one unit's activation over every recorded token (special tokens left
    out unless the run kept them)."""

    n_tokens: int
    max: float
    mean: float
    std: float
    frac_firing: float  # share of tokens with activation > fire_threshold
    fire_threshold: float
    hist_edges: list[float]  # len(hist_counts) + 1 edges; the outer ones are -inf / +inf
    hist_counts: list[int]
    # The raw float64 sums behind mean and std (None in stores recorded before schema v8): what lets
    # `autointerp merge` combine shards exactly.
    sum: float | None = None
    sumsq: float | None = None


class Unit(BaseModel):
    ref: UnitRef
    run_id: str
    stats: UnitStats

    @property
    def id(self) -> str:
        return self.ref.id


class RecordSettings(BaseModel):
    """Everything that decides what `record` writes; its hash names the run (and its checkpoint)."""

    model: str
    hooks: list[str]
    units: list[int] | None = None  # None: every index of each hook
    sae: dict[str, str] = Field(default_factory=dict)  # hook -> SAE directory (SAE latents)
    sae_sha256: dict[str, str] = Field(default_factory=dict)  # hook -> content hash of that SAE
    corpus: list[str] = Field(default_factory=lambda: ["default"])
    encoding: str = "utf-8"  # of the corpus files (left out of the run's hash when utf-8)
    max_tokens: int = 200_000
    ctx: int = 64
    batch_size: int = 32
    top_k: int = 20
    quantile_pool: int = 50  # uniform reservoir of firing windows, split into quantiles at the end
    n_quantiles: int = 5
    n_random: int = 20  # uniform random windows (shared by all units): unbiased for scoring
    n_negative: int = 10  # random windows where the unit never fires
    fire_threshold: float = 0.0
    seed: int = 0
    # False: positions holding a special token (BOS, ...) are left out of window maxima, statistics and
    # example selection, and stored with an activation that is never the window's peak (0.0).
    include_special: bool = False
    # "i/n": record only the i-th of n contiguous blocks of the window stream (`autointerp merge` joins
    # the n shard stores into what one run would have written). None: the whole stream.
    shard: str | None = None
    heads: list[str] = Field(default_factory=list)  # attention heads as "L.H" (left out of the hash if none)
    head_activation: Literal["max-attn", "out-norm"] = "max-attn"


class HeadMetrics(BaseModel):
    """One attention head's detector scores (see autointerp.subject.head_detect) and its categories."""

    model: str
    layer: int
    head: int
    previous_token: float  # mean attention to the previous token (text)
    induction: float  # mean attention to the token after the earlier copy (repeated random tokens)
    duplicate_token: float  # mean attention to the earlier copy of the same token (repeated random tokens)
    bos: float  # mean attention to BOS (text)
    self_attn: float  # mean attention to the query's own position (text)
    entropy: float  # mean entropy of the attention distribution, nats (text)
    mean_distance: float  # mean query-key distance in tokens, attention-weighted (text)
    categories: list[str] = Field(default_factory=list)
    settings: dict = Field(default_factory=dict)
    code_version: str = ""
    created_at: str = Field(default_factory=now)


class RunRecord(BaseModel):
    """What produced a set of rows: model, corpus, settings, code version, and how it ended."""

    id: str
    kind: str
    settings: dict
    code_version: str
    started_at: str
    finished_at: str | None = None
    status: Literal["running", "complete", "failed", "waiting"] = "running"  # waiting: on provider batches
    summary: dict = Field(default_factory=dict)


class LLMCallRecord(BaseModel):
    """One LLM request and its answer, as cached and logged in the store (never an API key)."""

    hash: str  # sha256 of the canonical request: the cache key
    backend: str
    model: str
    request: dict
    response: dict
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    cost_usd: float | None = None
    created_at: str = Field(default_factory=now)


class BatchRecord(BaseModel):
    """One submission of requests to a provider's batch API (OpenAI Batch API, Anthropic Message Batches)."""

    id: str  # ours (sub-...), written before the provider is asked; sent as metadata where supported
    provider_id: str | None = None  # the provider's batch id, once it answered
    backend: str
    model: str
    status: Literal["preparing", "submitted", "collected", "expired", "failed", "cancelled", "lost"]
    n_requests: int
    run_id: str | None = None
    detail: str = ""  # the provider's status or errors, when it ended without every result
    created_at: str = Field(default_factory=now)
    updated_at: str = Field(default_factory=now)


class BatchRequestRecord(BaseModel):
    """One request of a batch: what it is for, the request, and its result once collected."""

    custom_id: str
    batch: str  # BatchRecord.id
    key: str  # ChatRequest.cache_key of the request
    unit_id: str = ""
    phase: str = ""  # `explain`, or the scorer that simulates / judges with it
    candidate: str = ""  # the explainer method (and seed), or the explanation id being scored
    request: dict  # the ChatRequest
    status: Literal["pending", "succeeded", "errored", "lost", "failed"] = "pending"
    response: dict | None = None  # the provider's body (chat completion / message) when succeeded
    error: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float | None = None


class Explanation(BaseModel):
    """A proposed explanation of a unit and what produced it."""

    id: str  # hash of (unit, method, model, prompt version, settings, text)
    unit_id: str
    text: str
    method: str  # explainer: top, highlight, contrastive, true (a ground truth), ...
    model: str  # LLM spec, e.g. local:qwen2.5-coder-1.5b ("" for a given text)
    prompt: str  # prompt template name@version
    settings: dict = Field(default_factory=dict)
    run_id: str | None = None
    created_at: str = Field(default_factory=now)


class Score(BaseModel):
    """One scorer's verdict on one explanation. `value` is None exactly when status is not "ok"."""

    explanation_id: str
    unit_id: str
    scorer: str  # correlation, detection, fuzzing, embedding, counterfactual, ...
    value: float | None
    status: Literal["ok", "nan", "failed"]  # nan: undefined (e.g. constant simulation), failed: error
    reason: str = ""  # why a score is nan or failed
    details: dict = Field(default_factory=dict)  # per-example predictions, per-quantile values, AUC, ...
    simulator: str = ""  # LLM spec of the simulator / judge
    prompt: str = ""  # prompt template name@version
    settings: dict = Field(default_factory=dict)
    run_id: str | None = None
    created_at: str = Field(default_factory=now)


class Experiment(BaseModel):
    """One step of an investigation: the agent's action, the tool it ran, its typed result or error."""

    id: str  # e1, e2, ... within its investigation: what the agent cites as evidence
    investigation_id: str
    step: int
    tool: str  # "" when the action could not be read
    arguments: dict = Field(default_factory=dict)
    result: dict = Field(default_factory=dict)  # the tool's typed result as JSON ({} on error)
    error: str = ""  # why the action or the tool failed ("" when it ran)
    action: str = ""  # the agent's raw answer (its text, or its native tool call as JSON)
    thought: str = ""
    source: Literal["agent", "person"] = "agent"  # person: a tool run directly from the chat
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    created_at: str = Field(default_factory=now)


class Investigation(BaseModel):
    """An agent's investigation of one unit (`investigate` or `chat`): its transcript, budget and outcome."""

    id: str
    unit_id: str
    agent: str  # LLM spec of the agent
    prompt: str  # system prompt template name@version
    mode: Literal["investigate", "chat"] = "investigate"
    status: Literal["running", "finished", "exhausted", "failed"] = "running"
    reason: str = ""  # why it ended (budget, malformed actions, LLM failure)
    explanation: str | None = None  # the final (or saved) explanation
    explanation_id: str | None = None  # its row in `explanations` (method `agent`)
    evidence: dict[str, list[str]] = Field(default_factory=dict)  # supporting / refuting -> experiment ids
    steps: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    settings: dict = Field(default_factory=dict)
    messages: list[dict] = Field(default_factory=list)  # the transcript as sent to the LLM (resume, audit)
    code_version: str = ""
    created_at: str = Field(default_factory=now)
    updated_at: str = Field(default_factory=now)


IndexSort = Literal["index", "freq", "max", "explanations", "score"]


class UnitQuery(BaseModel):
    """A page of the unit index: filters, full-text search over explanations, sort and page."""

    search: str = ""  # words that must all occur in one of the unit's explanations (prefixes match)
    source: str = ""  # a hook, or HOOK/sae:NAME for an SAE's latents ("": every source)
    min_freq: float | None = Field(default=None, ge=0, le=1)
    max_freq: float | None = Field(default=None, ge=0, le=1)
    min_max: float | None = None  # the unit's max activation
    max_max: float | None = None
    explained: bool | None = None  # True: only units with an explanation; False: only without
    scorer: str = ""  # the scorer `sort=score` and `min_score` use ("": none)
    min_score: float | None = None  # the unit's best `scorer` value
    sort: IndexSort = "index"
    descending: bool = False
    page: int = Field(default=1, ge=1)
    per_page: int = Field(default=50, ge=1, le=500)


class UnitIndexRow(BaseModel):
    """One unit of an index page: its statistics, how many explanations, its best `scorer` value."""

    unit_id: str
    model: str
    hook: str
    sae: str | None
    index: int
    n_tokens: int
    frac_firing: float
    max: float
    n_explanations: int
    score: float | None = None
