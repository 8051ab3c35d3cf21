"""Counterfactual examples, all checked on the subject model: token attributions, minimal activating
examples, LLM-written edits that switch a unit off (or on), and hard negatives.

- `attribute`: how much the activation at an example's peak drops when each earlier token is deleted
  or replaced by a neutral token (one batched forward pass per kind of edit).
- `minimal_example`: the shortest suffix ending at the peak (BOS kept) that keeps `keep_frac` of it.
- LLM counterfactuals: a jinja2 prompt (templates/counterfactual_{off,on}.j2) asks for a minimal edit;
  every parsed candidate runs through the subject model and is kept only if the activation really
  moved past the threshold. A malformed answer or an unmoved activation is a recorded failure.
- `hard_negatives`: non-firing windows nearest to the activating ones by MiniLM embedding.

`generate_counterfactuals` runs all of that for many units, resumably (a per-unit run record keyed by
the settings), and writes kinds `minimal`, `counterfactual`, `hard_negative`; the attribution of each
top example goes into that example's provenance (`attribution`, JSON of `Attribution`).
"""

from __future__ import annotations

import asyncio
import difflib
import hashlib
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import numpy as np
import typer
from pydantic import BaseModel, Field

from autointerp.errors import UserError
from autointerp.store import Store
from autointerp.types import Context, Example, RunRecord, Unit, UnitRef, now
from autointerp.version import code_version

if TYPE_CHECKING:
    import torch

    from autointerp.llm import LLM
    from autointerp.subject.model import SubjectModel
    from autointerp.subject.recorder import UnitSource

KINDS = ("minimal", "counterfactual", "hard_negative")
Direction = Literal["off", "on"]


# -- settings and results ----------------------------------------------------------------------------
class CounterfactualSettings(BaseModel):
    """Everything that decides what `generate_counterfactuals` writes (its hash names the per-unit run)."""

    n_examples: int = Field(4, ge=1)  # top examples per unit: attribution, minimal, `off` edits
    neutral_token: str = " "  # replacement for the `replace` attribution
    keep_frac: float = Field(0.8, gt=0, le=1)  # minimal example keeps this share of the peak
    n_on: int = Field(2, ge=0)  # non-firing examples the LLM edits to switch the unit on
    off_frac: float = Field(0.3, gt=0, lt=1)  # `off` verifies if the edited max < off_frac x original
    on_frac: float = Field(0.5, gt=0)  # `on` verifies if the edited max > on_frac x the unit's max
    max_edit_frac: float = Field(0.5, gt=0, le=1)  # reject edits changing more than this share of words
    window: int = Field(32, ge=4)  # most tokens before the peak shown to the LLM
    tail: int = Field(3, ge=0)  # tokens after the peak shown to the LLM
    max_tokens: int = Field(120, ge=8)  # LLM answer length
    retries: int = Field(1, ge=0)  # an unusable answer goes back to the LLM with the reason this often
    temperature: float = 0.0
    n_hard: int = Field(5, ge=0)  # hard negatives per unit
    quiet_frac: float = Field(0.1, ge=0, lt=1)  # a window is non-activating if its max <= this x unit max
    corpus_windows: int = Field(0, ge=0)  # extra corpus windows streamed as hard-negative candidates
    corpus: list[str] = Field(default_factory=lambda: ["default"])
    batch_tokens: int = Field(4096, ge=64)  # rows x longest sequence per subject forward pass


class TokenEffect(BaseModel):
    position: int
    token: str
    delete_drop: float | None  # peak act minus act with this token deleted (None: the peak token itself)
    replace_drop: float  # peak act minus act with this token replaced by the neutral token


class Attribution(BaseModel):
    """Per-token effect on the activation at an example's peak (positive drop: the token helps)."""

    unit_id: str
    context_id: str
    peak_pos: int
    peak_act: float
    neutral_token: str
    effects: list[TokenEffect]

    def top(self, k: int = 5) -> list[TokenEffect]:
        """The k tokens whose removal lowers the peak most (by the larger of the two drops)."""
        key = lambda e: max(e.replace_drop, e.delete_drop if e.delete_drop is not None else -np.inf)  # noqa: E731
        return sorted(self.effects, key=key, reverse=True)[:k]


class MinimalResult(BaseModel):
    token_ids: list[int]
    acts: list[float]
    start: int  # first kept position of the original context (after BOS)
    original_length: int  # tokens up to and including the peak
    original_act: float  # activation at the peak, recomputed on the prefix
    kept_fraction: float

    @property
    def shortened(self) -> bool:
        return len(self.token_ids) < self.original_length


class Candidate(BaseModel):
    """One LLM-proposed edit and what the subject model made of it."""

    direction: Direction
    source_kind: str
    source_rank: int
    source_context: str
    original_text: str
    edited_text: str | None = None
    original_act: float
    edited_act: float | None = None
    status: Literal["verified", "not_moved", "parse_failed", "llm_error", "skipped"]
    reason: str = ""
    raw: str = ""  # the LLM's answer (truncated), kept for failures


class UnitResult(BaseModel):
    unit_id: str
    n_attributed: int = 0
    n_minimal: int = 0
    n_minimal_shortened: int = 0
    minimal_kept_len_frac: list[float] = Field(default_factory=list)
    candidates: list[Candidate] = Field(default_factory=list)
    n_hard_negatives: int = 0

    @property
    def verified(self) -> list[Candidate]:
        return [c for c in self.candidates if c.status == "verified"]


class CounterfactualSummary(BaseModel):
    settings_key: str
    units: list[UnitResult] = Field(default_factory=list)
    skipped: list[str] = Field(default_factory=list)  # already done with these settings
    seconds: float = 0.0

    def totals(self) -> dict[str, float | int]:
        cands = [c for u in self.units for c in u.candidates if c.status != "skipped"]
        ver = [c for c in cands if c.status == "verified"]
        off = [c for c in ver if c.direction == "off"]
        return {
            "units": len(self.units),
            "skipped": len(self.skipped),
            "candidates": len(cands),
            "parse_failed": sum(c.status == "parse_failed" for c in cands),
            "llm_error": sum(c.status == "llm_error" for c in cands),
            "verified": len(ver),
            "verified_share": len(ver) / len(cands) if cands else float("nan"),
            "mean_off_drop_frac": float(np.mean([1 - c.edited_act / c.original_act for c in off]))
            if off
            else float("nan"),
            "minimal": sum(u.n_minimal for u in self.units),
            "minimal_shortened": sum(u.n_minimal_shortened for u in self.units),
            "hard_negatives": sum(u.n_hard_negatives for u in self.units),
        }


class ProgressEvent(BaseModel):
    """What the progress callback receives: where the run is, and the running counts."""

    unit_id: str
    stage: Literal["start", "attribution", "minimal", "llm", "hard_negatives", "done", "skipped"]
    unit_index: int  # 0-based
    n_units: int
    verified: int = 0  # verified counterfactuals so far (whole run)
    candidates: int = 0


# -- the subject model, one unit at a time ---------------------------------------------------------
class UnitProbe:
    """One unit's activations on arbitrary token sequences; the forward pass stops after its layer.

    Sequences are right-padded into batches of similar length: the model is causal, so padding after
    a sequence's end never changes its activations, and each row is cut back to its own length.
    Special-token positions (BOS, ...) read as the recorder stores them unless `include_special`.
    """

    def __init__(
        self,
        subject: SubjectModel,
        source: UnitSource,
        batch_tokens: int = 4096,
        column: int = 0,
        include_special: bool = False,
    ):
        self.subject = subject
        self.source = source
        self.column = column  # which of the source's units this probe reads
        self.batch_tokens = batch_tokens
        self.stop_at = subject.stop_layer([source.hook])
        self.special_ids = None if include_special else np.array(subject.special_ids, dtype=np.int64)

    @classmethod
    def for_unit(
        cls,
        subject: SubjectModel,
        store: Store,
        unit: Unit,
        batch_tokens: int = 4096,
        sae_cache: dict[str, UnitSource] | None = None,
        latents: list[int] | None = None,
    ) -> UnitProbe:
        """A probe for a recorded unit: a neuron slice, or the SAE named by the run that recorded it.

        SAE encoders are built once per SAE for `latents` (default: this unit's) and kept in `sae_cache`."""
        from autointerp.subject.recorder import UnitSource

        ref = unit.ref
        run = store.get_run(unit.run_id)
        include_special = bool(run.settings.get("include_special", True)) if run else False
        if ref.model != subject.short:
            raise UserError(
                f"{ref.id} belongs to {ref.model} but the subject model is {subject.short}; "
                f"load {ref.model} to verify its counterfactuals."
            )
        if ref.sae is None:
            width = subject.check_hook(ref.hook)
            if ref.index >= width:
                raise UserError(
                    f"{ref.id}: index {ref.index} is out of range for {ref.hook} ({width} units)."
                )
            source = UnitSource(hook=ref.hook, indices=[ref.index])
            return cls(subject, source, batch_tokens, include_special=include_special)
        from autointerp.subject.sae import sae_source

        path = (run.settings.get("sae") or {}).get(ref.hook) if run else None
        if not path:
            raise UserError(
                f"{ref.id}: the run that recorded it names no SAE directory for {ref.hook}; record it again "
                "with --sae."
            )
        key = f"{path}|{ref.hook}"
        source = (sae_cache or {}).get(key)
        if source is None or ref.index not in source.indices:
            wanted = sorted({ref.index, *(latents or [])})
            source, info = sae_source(subject, path, hook=ref.hook, latents=wanted)
            if info.name != ref.sae:
                raise UserError(
                    f"{ref.id}: the SAE at {path} is now {info.name!r} (its files changed since it was "
                    "recorded); record it again."
                )
            if sae_cache is not None:
                sae_cache[key] = source
        column = source.indices.index(ref.index)
        return cls(subject, source, batch_tokens, column=column, include_special=include_special)

    def acts(self, seqs: list[list[int]]) -> list[np.ndarray]:
        """Per sequence, the unit's activation at every position (float32)."""
        import torch

        out: list[np.ndarray | None] = [None] * len(seqs)
        order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
        i = 0
        while i < len(order):
            j = i + 1  # grow the batch while rows x longest (the last one, sorted) fits
            while j < len(order) and (j - i + 1) * len(seqs[order[j]]) <= self.batch_tokens:
                j += 1
            rows = order[i:j]
            width = len(seqs[rows[-1]])
            pad = torch.zeros((len(rows), width), dtype=torch.long)
            for r, k in enumerate(rows):
                pad[r, : len(seqs[k])] = torch.tensor(seqs[k], dtype=torch.long)
            acts = self._forward(pad)
            for r, k in enumerate(rows):
                out[k] = self._leave_out_special(acts[r, : len(seqs[k])], seqs[k])
            i = j
        return out  # type: ignore[return-value]

    def _leave_out_special(self, acts: np.ndarray, seq: list[int]) -> np.ndarray:
        """`acts` with the sequence's special-token positions set as the recorder stores them."""
        if self.special_ids is not None and len(self.special_ids):
            import torch

            from autointerp.subject.recorder import exclude_positions

            pos = np.flatnonzero(np.isin(seq, self.special_ids))
            if len(pos):
                t = torch.from_numpy(acts)[None, :, None]  # shares memory: written in place
                exclude_positions(t, (torch.zeros(len(pos), dtype=torch.long), torch.from_numpy(pos)))
        return acts

    def _forward(self, toks: torch.Tensor) -> np.ndarray:
        import torch

        if getattr(self.source, "from_tokens", None) is not None:  # synthetic units: no model needed
            return self.source.from_tokens(toks)[..., self.column].float().cpu().numpy()
        grabbed: dict[str, torch.Tensor] = {}

        def grab(act: torch.Tensor, hook) -> None:  # noqa: ANN001
            grabbed["a"] = act.detach()

        model = self.subject.model
        with torch.no_grad():
            model.run_with_hooks(
                toks.to(model.cfg.device),
                fwd_hooks=[(self.source.hook, grab)],
                stop_at_layer=self.stop_at,
                return_type=None,
            )
        return self.source.unit_acts(grabbed["a"])[..., self.column].cpu().numpy()

    def encode(self, text: str) -> list[int]:
        """Token ids of a text as the recorder sees it: BOS (where the model uses one), then the text."""
        ids = self.subject.tokenizer(text, add_special_tokens=False)["input_ids"]
        bos = self.subject.bos_id
        return ([bos] if bos is not None else []) + list(ids)


def _body_start(ids: list[int], bos: int | None) -> int:
    return 1 if bos is not None and ids and ids[0] == bos else 0


def make_context(subject: SubjectModel, ids: list[int]) -> Context:
    """A Context with the recorder's id scheme (sha1 of the int32 token ids)."""
    cid = hashlib.sha1(np.asarray(ids, dtype=np.int32).tobytes()).hexdigest()[:16]
    return Context(id=cid, token_ids=list(ids), tokens=subject.token_strs(list(ids)))


# -- attribution and minimal examples ---------------------------------------------------------------
def attribute(probe: UnitProbe, example: Example, neutral_token: str = " ") -> Attribution:
    """Drop of the peak activation when each token before it is deleted, or replaced by `neutral_token`."""
    subject = probe.subject
    neutral = subject.tokenizer(neutral_token, add_special_tokens=False)["input_ids"]
    if len(neutral) != 1:
        raise UserError(f"The neutral token {neutral_token!r} is {len(neutral)} tokens; pick a single token.")
    p = example.max_pos
    ids = example.context.token_ids[: p + 1]
    start = _body_start(ids, subject.bos_id)
    deleted = [ids[:i] + ids[i + 1 :] for i in range(start, p)]
    replaced = [ids[:i] + neutral + ids[i + 1 :] for i in range(start, p + 1)]
    acts = probe.acts([ids, *deleted, *replaced])
    peak = float(acts[0][p])
    del_acts, rep_acts = acts[1 : 1 + len(deleted)], acts[1 + len(deleted) :]
    effects = [
        TokenEffect(
            position=i,
            token=example.context.tokens[i],
            delete_drop=peak - float(del_acts[i - start][p - 1]) if i < p else None,
            replace_drop=peak - float(rep_acts[i - start][p]),
        )
        for i in range(start, p + 1)
    ]
    return Attribution(
        unit_id=example.unit_id,
        context_id=example.context.id,
        peak_pos=p,
        peak_act=peak,
        neutral_token=neutral_token,
        effects=effects,
    )


def minimal_example(probe: UnitProbe, example: Example, keep_frac: float = 0.8) -> MinimalResult | None:
    """The shortest suffix ending at the peak (BOS kept) whose activation there is >= keep_frac x the
    activation on the whole prefix. None when the prefix does not fire (activation <= 0)."""
    p = example.max_pos
    ids = example.context.token_ids[: p + 1]
    start = _body_start(ids, probe.subject.bos_id)
    if p < start:  # the peak is on BOS: nothing to shorten
        return None
    head = ids[:start]
    seqs = [head + ids[s:] for s in range(start, p + 1)]  # seqs[0] is the whole prefix
    acts = probe.acts(seqs)
    full = float(acts[0][-1])
    if full <= 0:
        return None
    best = 0
    for k in range(len(seqs) - 1, -1, -1):  # shortest first
        if float(acts[k][-1]) >= keep_frac * full:
            best = k
            break
    return MinimalResult(
        token_ids=seqs[best],
        acts=acts[best].tolist(),
        start=start + best,
        original_length=len(ids),
        original_act=full,
        kept_fraction=float(acts[best][-1]) / full,
    )


# -- prompts ------------------------------------------------------------------------------------------
class Prompt(BaseModel):
    """A chat template from templates/ (loaded by `autointerp.prompts`), tagged name@version."""

    file: str
    tag: str

    def messages(self, **values: object) -> list:
        from autointerp.prompts import prompt

        msgs = prompt(self.file).messages(**values)
        if not msgs or msgs[-1].role != "user":
            raise UserError(f"Prompt {self.file} must end with a '### user' block; fix the template.")
        return msgs


def load_prompt(name: str) -> Prompt:
    """templates/NAME.j2 (its first comment names it and its version)."""
    from autointerp.prompts import prompt

    return Prompt(file=f"{name}.j2", tag=prompt(f"{name}.j2").id)


# -- LLM answers --------------------------------------------------------------------------------------
class ParsedEdit(BaseModel):
    text: str | None
    error: str = ""


_WORD = re.compile(r"\w+|[^\w\s]")


def edit_fraction(a: str, b: str) -> float:
    """Share of words (and punctuation) changed between two texts: 0 identical, 1 nothing in common."""
    wa, wb = _WORD.findall(a), _WORD.findall(b)
    if not wa and not wb:
        return 0.0
    same = sum(m.size for m in difflib.SequenceMatcher(a=wa, b=wb, autojunk=False).get_matching_blocks())
    return 1 - 2 * same / (len(wa) + len(wb))


def parse_edit(answer: str, original: str, max_edit_frac: float = 0.5) -> ParsedEdit:
    """The edited text from an answer `EDITED: ...`, or the reason it is not a usable minimal edit."""
    m = re.search(r"EDITED\s*:", answer, flags=re.I)
    if not m:
        return ParsedEdit(text=None, error="no 'EDITED:' line in the answer")
    text = answer[m.end() :]
    text = re.split(r"\n\s*(?:EDITED|TEXT|EXAMPLES)\s*:|\n###|\n```", text, maxsplit=1, flags=re.I)[0]
    if "\n" not in original.strip():
        text = text.strip().split("\n")[0]
    text = text.replace("[[", "").replace("]]", "").strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'`" and original.strip()[:1] != text[0]:
        text = text[1:-1].strip()
    if not text:
        return ParsedEdit(text=None, error="empty edit")
    if " ".join(text.split()) == " ".join(original.split()):
        return ParsedEdit(text=None, error="the edit is identical to the original")
    frac = edit_fraction(original, text)
    if frac > max_edit_frac:
        return ParsedEdit(text=None, error=f"not a minimal edit ({frac:.0%} of words changed)")
    return ParsedEdit(text=text)


def marked_snippet(tokens: list[str], lo: int, p: int, hi: int) -> tuple[str, str]:
    """(plain text, text with the peak token marked [[like this]]) of tokens[lo:hi]."""
    tok = tokens[p]
    lead = tok[: len(tok) - len(tok.lstrip())]
    mark = f"{lead}[[{tok.strip()}]]" if tok.strip() else f"[[{tok}]]"
    plain = "".join(tokens[lo:hi])
    return plain, "".join(tokens[lo:p]) + mark + "".join(tokens[p + 1 : hi])


# -- one unit -----------------------------------------------------------------------------------------
class _Job(BaseModel):
    """A prompt to send and what its answer will be verified against."""

    direction: Direction
    source: Example
    text: str  # what the LLM must edit
    original_act: float  # max activation of `text` on the subject model
    messages: list


def settings_key(settings: CounterfactualSettings, llm_spec: str | None) -> str:
    blob = json.dumps(
        {
            "settings": settings.model_dump(),
            "llm": llm_spec,
            "prompts": [load_prompt("counterfactual_off").tag, load_prompt("counterfactual_on").tag],
        },
        sort_keys=True,
    )
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


def _snippet_range(
    ex: Example, s: CounterfactualSettings, start: int, minimal: MinimalResult | None
) -> tuple:
    p = ex.max_pos
    lo = max(start, p - s.window)
    if minimal is not None:  # the minimal suffix, with at least 8 tokens of context for a readable text
        lo = max(lo, min(minimal.start, p - 8))
    return lo, p, min(len(ex.acts), p + 1 + s.tail)


def _jobs(
    probe: UnitProbe,
    unit: Unit,
    tops: list[Example],
    minimals: dict[int, MinimalResult],
    negatives: list[Example],
    s: CounterfactualSettings,
) -> tuple[list[_Job], list[Candidate]]:
    subject = probe.subject
    off_prompt, on_prompt = load_prompt("counterfactual_off"), load_prompt("counterfactual_on")
    plans: list[tuple[Direction, Example, str, list]] = []
    for ex in tops:
        start = _body_start(ex.context.token_ids, subject.bos_id)
        lo, p, hi = _snippet_range(ex, s, start, minimals.get(ex.rank))
        plain, marked = marked_snippet(ex.context.tokens, lo, p, hi)
        plans.append(("off", ex, plain, off_prompt.messages(text=marked)))
    shown = []
    for ex in tops[:4]:
        start = _body_start(ex.context.token_ids, subject.bos_id)
        p = ex.max_pos
        shown.append(" ".join(marked_snippet(ex.context.tokens, max(start, p - 10), p, p + 3)[1].split()))
    for ex in negatives[: s.n_on]:
        start = _body_start(ex.context.token_ids, subject.bos_id)
        plain = "".join(ex.context.tokens[start : start + s.window])
        plans.append(("on", ex, plain, on_prompt.messages(examples=shown, text=plain)))
    originals = probe.acts([probe.encode(text) for _, _, text, _ in plans])
    jobs, skipped = [], []
    for (direction, ex, text, msgs), acts in zip(plans, originals, strict=True):
        body = acts[_body_start(probe.encode(text), subject.bos_id) :]
        orig = float(body.max()) if len(body) else 0.0
        cand = dict(
            direction=direction,
            source_kind=ex.kind,
            source_rank=ex.rank,
            source_context=ex.context.id,
            original_text=text,
            original_act=orig,
        )
        if direction == "off" and orig <= 0:
            skipped.append(
                Candidate(**cand, status="skipped", reason="the retokenized snippet does not fire")
            )
        elif direction == "on" and orig > s.on_frac * unit.stats.max:
            skipped.append(Candidate(**cand, status="skipped", reason="the snippet already fires"))
        else:
            jobs.append(_Job(direction=direction, source=ex, text=text, original_act=orig, messages=msgs))
    return jobs, skipped


async def _ask(llm: LLM, jobs: list[_Job], s: CounterfactualSettings) -> list[str | Exception]:
    """Each job's final answer. An unusable answer is sent back once per retry with the reason (the
    conversation grows, so the request and its cache entry differ); an LLM error ends that job."""
    from autointerp.llm import ChatRequest, LLMError, Message

    async def one(job: _Job) -> str | Exception:
        msgs = list(job.messages)
        for attempt in range(s.retries + 1):
            req = ChatRequest(messages=msgs, temperature=s.temperature, max_tokens=s.max_tokens, seed=0)
            try:
                answer = (await llm.chat(req)).text
            except LLMError as e:
                return e
            err = parse_edit(answer, job.text, s.max_edit_frac).error
            if not err or attempt == s.retries:
                return answer
            fix = "change or remove the marked word" if job.direction == "off" else "add one fitting word"
            msgs += [
                Message(role="assistant", content=answer),
                Message(role="user", content=f"Not usable: {err}. Try again: {fix}. One line: EDITED: ..."),
            ]
        return answer

    return list(await asyncio.gather(*(one(j) for j in jobs)))


def verify(
    probe: UnitProbe,
    unit: Unit,
    jobs: list[_Job],
    answers: list[str | Exception],
    s: CounterfactualSettings,
) -> list[tuple[Candidate, list[int] | None, np.ndarray | None]]:
    """Parse each answer and run the edit through the subject model; keep the verdict and the acts."""
    parsed = [
        ParsedEdit(text=None, error=f"LLM call failed: {a}")
        if isinstance(a, Exception)
        else parse_edit(a, j.text, s.max_edit_frac)
        for j, a in zip(jobs, answers, strict=True)
    ]
    seqs = [probe.encode(p.text) for p in parsed if p.text is not None]
    acts = iter(probe.acts(seqs))
    seqs_it = iter(seqs)
    out = []
    for job, answer, edit in zip(jobs, answers, parsed, strict=True):
        base = dict(
            direction=job.direction,
            source_kind=job.source.kind,
            source_rank=job.source.rank,
            source_context=job.source.context.id,
            original_text=job.text,
            original_act=job.original_act,
        )
        if edit.text is None:
            status = "llm_error" if isinstance(answer, Exception) else "parse_failed"
            raw = "" if isinstance(answer, Exception) else answer[:300]
            out.append((Candidate(**base, status=status, reason=edit.error, raw=raw), None, None))
            continue
        ids, a = next(seqs_it), next(acts)
        body = a[_body_start(ids, probe.subject.bos_id) :]
        new = float(body.max()) if len(body) else 0.0
        if job.direction == "off":
            ok = new < s.off_frac * job.original_act
            reason = "" if ok else f"max {new:.3g} is not below {s.off_frac:.0%} of {job.original_act:.3g}"
        else:
            target = s.on_frac * unit.stats.max
            ok = new > target
            reason = (
                "" if ok else f"max {new:.3g} is not above {s.on_frac:.0%} of the unit max ({target:.3g})"
            )
        cand = Candidate(
            **base,
            edited_text=edit.text,
            edited_act=new,
            status="verified" if ok else "not_moved",
            reason=reason,
        )
        out.append((cand, ids, a))
    return out


def quiet_threshold(unit: Unit, s: CounterfactualSettings) -> float:
    """Largest max activation of a window that counts as non-activating."""
    return max(unit.stats.fire_threshold, s.quiet_frac * unit.stats.max)


def hard_negatives(
    probe: UnitProbe,
    unit: Unit,
    store: Store,
    tops: list[Example],
    s: CounterfactualSettings,
) -> list[tuple[Example, float, int]]:
    """Non-firing windows (the unit's random/negative examples, plus `corpus_windows` streamed ones)
    nearest to the activating ones by MiniLM embedding: (window, cosine, nearest top rank), best first."""
    from autointerp.embed import embed

    subject = probe.subject
    thr = quiet_threshold(unit, s)
    pool: dict[str, Example] = {}
    for kind in ("negative", "random"):
        for ex in store.examples(unit.id, kind):
            if ex.max_act <= thr:
                pool.setdefault(ex.context.id, ex)
    if s.corpus_windows and tops:
        from autointerp import corpus

        ctx = len(tops[0].context.token_ids)
        wins = []
        for w in corpus.windows(s.corpus, subject.tokenizer, ctx, subject.bos_id):
            wins.append(w)
            if len(wins) >= s.corpus_windows:
                break
        for ids, acts in zip(wins, probe.acts(wins), strict=True):
            if float(acts.max()) <= thr:
                c = make_context(subject, ids)
                pool.setdefault(
                    c.id, Example(unit_id=unit.id, kind="random", rank=-1, context=c, acts=acts.tolist())
                )
    top_ids = {t.context.id for t in tops}
    cands = [ex for cid, ex in pool.items() if cid not in top_ids]
    if not cands or not tops:
        return []

    def text(ex: Example) -> str:
        return "".join(ex.context.tokens[_body_start(ex.context.token_ids, subject.bos_id) :])

    emb = embed([text(t) for t in tops] + [text(c) for c in cands])
    sims = emb[len(tops) :] @ emb[: len(tops)].T  # (C, T)
    best = sims.max(axis=1)
    order = np.argsort(-best, kind="stable")[: s.n_hard]
    return [(cands[i], float(best[i]), tops[int(sims[i].argmax())].rank) for i in order]


def process_unit(
    store: Store,
    probe: UnitProbe,
    unit: Unit,
    llm: LLM | None,
    s: CounterfactualSettings,
    key: str,
    on_stage: Callable[[str], None] = lambda stage: None,
) -> tuple[UnitResult, list[Example]]:
    """Everything for one unit; returns the summary and the examples to write (nothing is written)."""
    subject = probe.subject
    res = UnitResult(unit_id=unit.id)
    tops = store.examples(unit.id, "top")[: s.n_examples]
    tops = [t for t in tops if t.max_act > unit.stats.fire_threshold]
    out: list[Example] = []
    on_stage("attribution")
    for t in tops:
        att = attribute(probe, t, s.neutral_token)
        prov = {**t.provenance, "attribution": att.model_dump_json(), "attribution_settings": key}
        out.append(t.model_copy(update={"provenance": prov}))
        res.n_attributed += 1
    on_stage("minimal")
    minimals: dict[int, MinimalResult] = {}
    for t in tops:
        m = minimal_example(probe, t, s.keep_frac)
        if m is None:
            continue
        minimals[t.rank] = m
        res.n_minimal += 1
        res.n_minimal_shortened += m.shortened
        res.minimal_kept_len_frac.append(len(m.token_ids) / m.original_length)
        out.append(
            Example(
                unit_id=unit.id,
                kind="minimal",
                rank=t.rank,
                context=make_context(subject, m.token_ids),
                acts=m.acts,
                provenance={
                    "source_kind": t.kind,
                    "source_rank": t.rank,
                    "source_context": t.context.id,
                    "start": m.start,
                    "original_length": m.original_length,
                    "original_act": m.original_act,
                    "kept_fraction": m.kept_fraction,
                    "keep_frac": s.keep_frac,
                    "settings": key,
                },
            )
        )
    if llm is not None and tops:
        on_stage("llm")
        thr = quiet_threshold(unit, s)
        negatives = {
            e.context.id: e for kind in ("negative", "random") for e in store.examples(unit.id, kind)
        }
        negatives = [e for e in negatives.values() if e.max_act <= thr]
        jobs, skipped = _jobs(probe, unit, tops, minimals, negatives, s)
        answers = asyncio.run(_ask(llm, jobs, s)) if jobs else []
        res.candidates.extend(skipped)
        rank = 0
        for cand, ids, acts in verify(probe, unit, jobs, answers, s):
            res.candidates.append(cand)
            if cand.status != "verified":
                continue
            out.append(
                Example(
                    unit_id=unit.id,
                    kind="counterfactual",
                    rank=rank,
                    context=make_context(subject, ids),
                    acts=acts.tolist(),
                    provenance={
                        "direction": cand.direction,
                        "original_text": cand.original_text,
                        "edited_text": cand.edited_text,
                        "original_act": cand.original_act,
                        "edited_act": cand.edited_act,
                        "source_kind": cand.source_kind,
                        "source_rank": cand.source_rank,
                        "source_context": cand.source_context,
                        "generator": llm.spec,
                        "prompt": load_prompt(f"counterfactual_{cand.direction}").tag,
                        "settings": key,
                    },
                )
            )
            rank += 1
    if s.n_hard:
        on_stage("hard_negatives")
        for rank, (ex, sim, near) in enumerate(hard_negatives(probe, unit, store, tops, s)):
            out.append(
                Example(
                    unit_id=unit.id,
                    kind="hard_negative",
                    rank=rank,
                    context=ex.context,
                    acts=ex.acts,
                    provenance={
                        "source_kind": ex.kind if ex.rank >= 0 else "corpus",
                        "source_context": ex.context.id,
                        "similarity": sim,
                        "nearest_top_rank": near,
                        "embedder": "all-MiniLM-L6-v2",
                        "settings": key,
                    },
                )
            )
            res.n_hard_negatives += 1
    return res, out


def generate_counterfactuals(
    store: Store,
    subject: SubjectModel,
    unit_ids: list[str],
    llm: LLM | None = None,
    settings: CounterfactualSettings | None = None,
    progress: Callable[[ProgressEvent], None] | None = None,
) -> CounterfactualSummary:
    """Attributions, minimal examples, verified LLM counterfactuals (when `llm` is given) and hard
    negatives for each unit. Resumable: a unit already done with the same settings, LLM and prompt
    versions is skipped. Each unit's examples are written together, then its run record is completed."""
    import time

    s = settings or CounterfactualSettings()
    key = settings_key(s, llm.spec if llm else None)
    summary = CounterfactualSummary(settings_key=key)
    t0 = time.perf_counter()
    counts = {"verified": 0, "candidates": 0}
    units = []
    for uid in unit_ids:
        unit = store.get_unit(UnitRef.parse(uid).id)
        if unit is None:
            raise UserError(f"{uid} is not recorded in {store.path}; run `autointerp record` for it first.")
        units.append(unit)

    def emit(unit_id: str, stage: str, i: int) -> None:
        if progress:
            progress(ProgressEvent(unit_id=unit_id, stage=stage, unit_index=i, n_units=len(units), **counts))

    sae_cache: dict[str, UnitSource] = {}
    for i, unit in enumerate(units):
        run_id = f"cf-{key}-{hashlib.sha1(unit.id.encode()).hexdigest()[:10]}"
        done = store.get_run(run_id)
        if done is not None and done.status == "complete":
            summary.skipped.append(unit.id)
            emit(unit.id, "skipped", i)
            continue
        emit(unit.id, "start", i)
        run_settings = {"unit_id": unit.id, "llm": llm.spec if llm else None, **s.model_dump()}
        store.start_run(
            RunRecord(
                id=run_id,
                kind="counterfactual",
                settings=run_settings,
                code_version=code_version(),
                started_at=now(),
            )
        )
        try:
            same_sae = [
                u.ref.index
                for u in units
                if u.ref.sae and (u.ref.hook, u.ref.sae) == (unit.ref.hook, unit.ref.sae)
            ]
            probe = UnitProbe.for_unit(subject, store, unit, s.batch_tokens, sae_cache, same_sae)
            res, examples = process_unit(
                store, probe, unit, llm, s, key, lambda st, u=unit.id, i=i: emit(u, st, i)
            )
            for kind in KINDS:
                store.delete_examples(unit.id, kind)
            store.add_examples(examples)
        except BaseException as e:
            store.finish_run(run_id, "failed", {"error": f"{type(e).__name__}: {e}"})
            raise
        store.finish_run(run_id, "complete", res.model_dump())
        summary.units.append(res)
        counts["verified"] += len(res.verified)
        counts["candidates"] += sum(c.status != "skipped" for c in res.candidates)
        emit(unit.id, "done", i)
    summary.seconds = time.perf_counter() - t0
    return summary


def attribution_of(example: Example) -> Attribution | None:
    """The attribution stored in a top example's provenance, if `generate_counterfactuals` wrote one."""
    raw = example.provenance.get("attribution")
    return Attribution.model_validate_json(raw) if isinstance(raw, str) else None


# -- CLI ------------------------------------------------------------------------------------------------
def resolve_unit_ids(store: Store, unit: list[str] | None, hook: str | None, units: str | None) -> list[str]:
    """`--unit ID` (repeatable), or `--hook H [--units 0:8]`, or every recorded unit."""
    if unit:
        ids = [UnitRef.parse(u).id for u in unit]
        missing = [u for u in ids if store.get_unit(u) is None]
        if missing:
            raise UserError(
                f"{missing[0]} is not recorded in {store.path}; run `autointerp record` for it first."
            )
        return ids
    recorded = store.units(hook=hook)
    if units:
        from autointerp.cli import parse_units

        wanted = set(parse_units(units) or [])
        recorded = [u for u in recorded if u.ref.index in wanted]
    if not recorded:
        raise UserError(
            f"No recorded units match in {store.path}; check --hook/--units or run `autointerp record`."
        )
    return [u.id for u in recorded]


def counterfactuals_command(
    db: Annotated[Path, typer.Option("--db", help="SQLite store file with recorded units.")],
    unit: Annotated[list[str] | None, typer.Option("--unit", help="Unit id (repeatable).")] = None,
    hook: Annotated[str | None, typer.Option("--hook", help="Only units of this hook.")] = None,
    units: Annotated[
        str | None, typer.Option("--units", help="Unit indices, e.g. 0:8 or 3,17 (with --hook).")
    ] = None,
    llm: Annotated[
        str, typer.Option("--llm", help="LLM spec that writes edits.")
    ] = "local:qwen2.5-coder-1.5b",
    no_llm: Annotated[
        bool, typer.Option("--no-llm", help="Only attributions, minimal examples, hard negatives.")
    ] = False,
    model: Annotated[str, typer.Option("--model", help="Subject model.")] = "gemma-3-270m",
    model_path: Annotated[
        str | None, typer.Option("--model-path", help="Local weights of the subject model.")
    ] = None,
    n_examples: Annotated[int, typer.Option("--n-examples", help="Top examples per unit.")] = 4,
    n_on: Annotated[int, typer.Option("--n-on", help="Non-firing examples to switch on per unit.")] = 2,
    keep_frac: Annotated[float, typer.Option("--keep-frac", help="Minimal example keeps this share.")] = 0.8,
    off_frac: Annotated[
        float, typer.Option("--off-frac", help="`off` edit verifies below this share.")
    ] = 0.3,
    on_frac: Annotated[
        float, typer.Option("--on-frac", help="`on` edit verifies above this share of max.")
    ] = 0.5,
    n_hard: Annotated[int, typer.Option("--n-hard", help="Hard negatives per unit.")] = 5,
    corpus_windows: Annotated[
        int, typer.Option("--corpus-windows", help="Extra hard-negative candidates.")
    ] = 0,
) -> None:
    """Minimal examples, token attributions, LLM-written counterfactuals checked on the subject model,
    and hard negatives, for recorded units (resumable)."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from autointerp.subject.model import load_subject

    err = Console(stderr=True)
    store = Store(db)
    ids = resolve_unit_ids(store, unit, hook, units)
    s = CounterfactualSettings(
        n_examples=n_examples,
        n_on=n_on,
        keep_frac=keep_frac,
        off_frac=off_frac,
        on_frac=on_frac,
        n_hard=n_hard,
        corpus_windows=corpus_windows,
    )
    client = None
    if not no_llm:
        from autointerp.llm import get_llm

        client = get_llm(llm, store)
    subject = load_subject(model, model_path)
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} units"),
        TextColumn("{task.fields[stage]}"),
        TextColumn("verified {task.fields[verified]}/{task.fields[cands]}"),
        TimeElapsedColumn(),
        console=err,
    ) as bar:
        task = bar.add_task("counterfactuals", total=len(ids), stage="", verified=0, cands=0)

        def on_progress(ev: ProgressEvent) -> None:
            done = ev.unit_index + (ev.stage in ("done", "skipped"))
            bar.update(
                task,
                completed=done,
                stage=f"{ev.unit_id} {ev.stage}",
                verified=ev.verified,
                cands=ev.candidates,
            )

        summary = generate_counterfactuals(store, subject, ids, client, s, on_progress)
    t = summary.totals()
    Console().print(
        f"{t['units']} units ({t['skipped']} already done): {t['minimal']} minimal examples "
        f"({t['minimal_shortened']} shortened), {t['verified']}/{t['candidates']} counterfactuals verified, "
        f"{t['hard_negatives']} hard negatives -> {db}"
    )
