"""Local backend: a transformers causal LM in bf16 on CPU (or CUDA when present).

Chat uses the tokenizer's chat template; temperature 0 is greedy and deterministic. `token_probs`
reads exact next-token distributions from the logits. Concurrent `token_probs` calls are gathered
into one batch, and the key/value cache of a shared prompt prefix is computed once and reused:
within a batch (the common token prefix of its prompts) and across calls (a small LRU of recent
prefixes, matched by longest common token prefix). After that prefix a batch is forwarded as one
token tree (`llm/tree.py`: every distinct token path once, nothing after a prompt's last read), for
the model families whose decoder takes a custom attention mask (`_PLAIN_HEADS`); other models go in
row groups, each from its rows' own shared prefix (`_row_groups`). Torch work runs in a worker thread under a
per-model lock, so the event loop is never blocked; models load once per process.
"""

from __future__ import annotations

import asyncio
import copy
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from autointerp.errors import UserError
from autointerp.llm import malloc, tree
from autointerp.llm.base import (
    LLM,
    Capabilities,
    ChatRequest,
    ChatResponse,
    LLMError,
    StepwiseRequest,
    StepwiseResponse,
    TokenLogprob,
    TokenProbsRequest,
    TokenProbsResponse,
    Usage,
)
from autointerp.llm.stepwise import follow
from autointerp.llm.util import PerLoop, parse_json_answer, schema_instruction


class TokenizationError(LLMError, UserError):
    """A request the tokenizer cannot serve: a position off a token boundary, a multi-token candidate."""


MIN_REUSE = 16  # shortest shared prefix (tokens) worth a cached key/value pass
LRU_SIZE = 8  # prefixes kept per model
BATCH_TOKENS = 4096  # suffix tokens per forward pass (rows x longest suffix)
PREFIX_ROWS_TOKENS = 32768  # rows x shared prefix per forward pass: the prefix's key/values are copied
# for every row (~28 KB a token for Qwen 1.5B), so many short rows after a long prompt (the exact
# simulator's 2-token listings) go in several passes of at most ~0.9 GB of copies each
STEP_ROWS = 32  # stepwise rows decoded together
GROUP_ROWS = True  # group a batch's rows by their own shared prefix (_row_groups); False: one group
# from the batch's common prefix (the engine before #16)
GROUP_COST = 32  # forward tokens a group of rows must save to be forwarded apart (its pass, its copies)
GROUP_DEPTH = 8  # nesting of groups considered (rows sorted by ids form a tree of shared prefixes)
GATHER_MIN = 64  # fewest (row, position) logits read through the gathered LM head (see _position_logits)
TREE_ROWS = True  # forward a batch's rows as one token tree (llm/tree.py) where the model allows it
TREE_PACK = 256  # tree nodes per packed row (a node sees its ancestors in its pack: a pack's path
# from the root is forwarded again in each pack that starts inside a subtree)
HEAD_ROWS = 256  # read positions per LM-head product in tree mode (a [rows, vocab] float32 block)


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass
class _Prepared:
    ids: list[int]
    idx: list[int]  # per requested position: the token index whose logits predict the next token
    cand: list[int]  # candidate token ids
    n_prompt: int = 0  # the prompt's tokens (`ids` stops at the last read: nothing reads past it)

    @property
    def first_read(self) -> int:
        """The first token whose logits are read (the last token when none is): a shared prefix stops
        before it."""
        return min(self.idx, default=len(self.ids) - 1)


@dataclass
class _Steps:
    head: list[int]  # the prompt's token ids
    steps: list[list[int]]  # token ids of each step's text
    cand: list[int]  # candidate token ids
    after: list[int]  # token ids appended after each chosen candidate


@dataclass
class Engine:
    """A loaded model + tokenizer, its lock and its prefix cache. One per (source, dtype) per process."""

    name: str
    model: object
    tok: object
    device: str
    lock: threading.Lock = field(default_factory=threading.Lock)
    prefixes: OrderedDict = field(default_factory=OrderedDict)  # tuple(token ids) -> DynamicCache
    sliding: bool = False  # the model has sliding-window layers: prefix reuse is off
    stats: dict = field(
        default_factory=lambda: {"forward_tokens": 0, "reused_tokens": 0, "trims": 0, "trim_s": 0.0}
    )
    prepacked: int = 0  # linear layers running on prepacked bf16 weights (llm/prepack.py)
    fused: int = 0  # modules running compiled, fused element-wise kernels (llm/fused.py)

    def set_prepack(self, on: bool) -> int:
        """Prepack the model's bf16 linear layers (on CPU with oneDNN; elsewhere nothing changes; the
        untied plain weights are freed) or put the plain ones back (freed weights rebuilt bit for bit
        from the packed copies); how many are prepacked now. The prefix cache is emptied on a change,
        so every cached key/value was computed the way the next forward passes run."""
        from autointerp.llm import prepack

        with self.lock:
            if on and not self.prepacked:
                if self.fused:  # a compiled MLP would trace the packed layers: eager first
                    self._unfuse()
                self.prepacked = prepack.prepack_linears(self.model)
            elif not on and self.prepacked:
                prepack.unpack_linears(self.model)
                self.prepacked = 0
            else:
                return self.prepacked
            self.prefixes.clear()
            return self.prepacked

    def set_fuse(self, on: bool) -> int:
        """Compile the MLPs and RMSNorms into fused kernels (llm/fused.py: bf16 on CPU, unpacked
        linears; elsewhere, or where compiling fails, nothing changes) or put the eager forwards back;
        how many modules run compiled now. The prefix cache is emptied on a change."""
        from autointerp.llm import fused

        with self.lock:
            if on and not self.fused:
                self.fused = fused.fuse_blocks(self.model)
                if self.fused:
                    self.prefixes.clear()
            elif not on and self.fused:
                self._unfuse()
            return self.fused

    def _unfuse(self) -> None:
        """Put the eager forwards back and empty the prefix cache (the caller holds the lock)."""
        from autointerp.llm import fused

        fused.unfuse_blocks(self.model)
        self.fused = 0
        self.prefixes.clear()

    def _release(self) -> None:
        """After a batch: hand the C heap's freed memory back to the system (`llm/malloc.py`)."""
        took = malloc.trim()
        if took is not None:
            self.stats["trims"] += 1
            self.stats["trim_s"] += took

    # -- token_probs ----------------------------------------------------------------------------
    def prepare(self, req: TokenProbsRequest) -> _Prepared:
        enc = self.tok(req.prompt, return_offsets_mapping=True)
        ids, offs = list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
        special = set(self.tok.all_special_ids)
        n_special = 0  # leading special tokens (BOS): they let position 0 be predicted
        while n_special < len(ids) and offs[n_special] == (0, 0) and ids[n_special] in special:
            n_special += 1
        ends: dict[int, int] = {}
        for i, (s, e) in enumerate(offs):
            if e > s:
                ends[e] = i  # the last token ending at e
        idx = []
        for p in req.positions:
            if p == 0 and n_special:
                idx.append(n_special - 1)
            elif p in ends and (ends[p] + 1 >= len(offs) or offs[ends[p] + 1][0] >= p):
                idx.append(ends[p])
            else:
                raise TokenizationError(
                    f"Position {p} of the prompt is not on a token boundary for {self.name} "
                    f"(near {req.prompt[max(0, p - 10) : p + 10]!r}); end each prefix with a separator "
                    "such as a tab."
                )
        n_prompt = len(ids)
        if idx:
            ids = ids[: max(idx) + 1]
        return _Prepared(ids, idx, self.candidate_ids(req.candidates), n_prompt)

    def candidate_ids(self, candidates: list[str]) -> list[int]:
        cand = []
        for c in candidates:
            t = self.tok.encode(c, add_special_tokens=False)
            if len(t) != 1:
                raise TokenizationError(
                    f"Candidate {c!r} is {len(t)} tokens for {self.name}; use single-token candidates "
                    "such as the digits 0-9."
                )
            cand.append(t[0])
        return cand

    # -- stepwise -------------------------------------------------------------------------------
    def prepare_steps(self, req: StepwiseRequest) -> _Steps:
        """Token ids of the prompt and of each step, tokenized apart (every step ends a pre-token)."""
        steps = [self.tok.encode(x, add_special_tokens=False) for x in req.steps]
        if any(not x for x in steps):
            raise TokenizationError(f"A stepwise request for {self.name} has an empty step.")
        head = list(self.tok(req.prompt)["input_ids"])
        after = self.tok.encode(req.after, add_special_tokens=False)
        return _Steps(head, steps, self.candidate_ids(req.candidates), after)

    def stepwise_batch(
        self, items: list[_Steps]
    ) -> list[tuple[list[list[float]], list[float], list[int], int]]:
        """Per item and step: candidate probabilities, raw candidate mass, index of the chosen candidate;
        per item: how many of its prompt tokens came from a shared or cached prefix."""
        import torch

        out: list = [None] * len(items)
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, it in enumerate(items):
            groups.setdefault(tuple(it.head), []).append(i)
        with self.lock, torch.inference_mode():
            for rows in groups.values():
                for k in range(0, len(rows), STEP_ROWS):
                    chunk = rows[k : k + STEP_ROWS]
                    for r, res in zip(chunk, self._stepwise_rows([items[r] for r in chunk]), strict=True):
                        out[r] = res
            self._release()
        return out

    def _stepwise_rows(
        self, items: list[_Steps]
    ) -> list[tuple[list[list[float]], list[float], list[int], int]]:
        """Rows sharing one prompt: its key/values once, then one batched forward step per position.
        Per row: probabilities, mass, chosen candidates, and the prompt tokens it did not forward.

        Each step's inputs are left-padded to the longest row; padding is masked out of attention and
        every row keeps its own position counter, so a row sees exactly its own unpadded text.
        """
        import torch

        head = items[0].head
        before = self.stats["forward_tokens"]
        kv = self._prefix_kv(head)
        if kv is None:
            kv = self.model(
                input_ids=torch.tensor([head], device=self.device), use_cache=True, logits_to_keep=1
            )
            kv = kv.past_key_values
            self.stats["forward_tokens"] += len(head)
        kv = copy.deepcopy(kv)
        reused = [len(head)] * len(items)  # the prompt's key/values are computed once, for row 0
        reused[0] -= self.stats["forward_tokens"] - before
        n = len(items)
        if n > 1:
            kv.batch_repeat_interleave(n)
        pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else 0
        mask = torch.ones(n, len(head), dtype=torch.long, device=self.device)
        pos = [len(head)] * n
        res: list[tuple[list[list[float]], list[float], list[int]]] = [([], [], []) for _ in items]
        for t in range(max(len(it.steps) for it in items)):
            seqs = []
            for it, (_, _, chosen) in zip(items, res, strict=True):
                if t >= len(it.steps):
                    seqs.append([])
                elif t == 0:
                    seqs.append(it.steps[0])
                else:
                    seqs.append([it.cand[chosen[-1]], *it.after, *it.steps[t]])
            width = max(map(len, seqs))
            inp = torch.tensor([[pad] * (width - len(x)) + x for x in seqs], device=self.device)
            step_mask = torch.tensor(
                [[0] * (width - len(x)) + [1] * len(x) for x in seqs], device=self.device
            )
            mask = torch.cat([mask, step_mask], dim=1)
            position_ids = torch.tensor(
                [[p] * (width - len(x)) + list(range(p, p + len(x))) for p, x in zip(pos, seqs, strict=True)],
                device=self.device,
            )
            out = self.model(
                input_ids=inp,
                attention_mask=mask,
                position_ids=position_ids,
                past_key_values=kv,
                use_cache=True,
                logits_to_keep=1,
            )
            kv = out.past_key_values
            self.stats["forward_tokens"] += sum(map(len, seqs))
            lp = out.logits[:, -1].float().log_softmax(-1)
            for b, (it, x) in enumerate(zip(items, seqs, strict=True)):
                pos[b] += len(x)
                if not x:
                    continue
                sel = lp[b, it.cand]
                probs, mass, chosen = res[b]
                probs.append(sel.softmax(-1).tolist())
                mass.append(sel.logsumexp(-1).exp().item())
                chosen.append(follow(probs[-1]))
        return [(*r, u) for r, u in zip(res, reused, strict=True)]

    def token_probs_batch(
        self, preps: list[_Prepared], reuse: bool = True
    ) -> list[tuple[list[list[float]], list[float], int]]:
        """Candidate probabilities and raw mass at every requested position of every prompt, and how
        many of its prompt tokens were forwarded for it (the rest came from a shared or cached prefix;
        a prefix computed for the whole batch is counted once, on its first prompt)."""
        import torch

        with self.lock, torch.inference_mode():
            before = self.stats["forward_tokens"]
            out: list = [None] * len(preps)
            self._token_probs_rows(preps, reuse, out)
            extra = self.stats["forward_tokens"] - before - sum(r[2] for r in out)  # a shared prefix
            if out and extra:
                probs, mass, computed = out[0]
                out[0] = (probs, mass, computed + extra)
            self._release()
            return out

    def _token_probs_rows(self, preps: list[_Prepared], reuse: bool, out: list) -> None:
        """Forward a batch's rows: without reuse all from token 0; with it, in groups of rows that
        share a prefix (`_row_groups`), each group from its own prefix's key/values (`_prefix_kv`,
        which extends the LRU's best match); a group's prefix tokens are counted on its first row."""
        if not reuse:
            self._forward_rows(list(range(len(preps))), preps, 0, None, out)
            return
        if (
            TREE_ROWS
            and not self.sliding
            and _plain_head(self.model) is not None
            and self._tree_rows(preps, out)
        ):
            return
        groups = _row_groups(preps) if GROUP_ROWS else [_batch_group(preps)]
        for rows, shared in groups:
            if len(rows) > 1 and shared >= MIN_REUSE:
                before = self.stats["forward_tokens"]
                kv = self._prefix_kv(preps[rows[0]].ids[:shared])
                extra = self.stats["forward_tokens"] - before
                self._forward_rows(rows, preps, shared if kv is not None else 0, kv, out)
                probs, mass, computed = out[rows[0]]
                out[rows[0]] = (probs, mass, computed + extra)
                continue
            for i in rows:  # no prefix shared in this batch worth a pass: each may match the LRU
                before = self.stats["forward_tokens"]
                p = preps[i]
                cut = p.first_read
                kv = self._prefix_kv(p.ids[:cut]) if cut >= MIN_REUSE else None
                self._forward_rows([i], preps, cut if kv is not None else 0, kv, out)
                out[i] = (*out[i][:2], self.stats["forward_tokens"] - before)

    def _tree_rows(self, preps: list[_Prepared], out: list) -> bool:
        """Forward the batch as one token tree (`llm/tree.py`) from its common prefix's key/values:
        every distinct token path once, in packs of `TREE_PACK` nodes, `BATCH_TOKENS` per pass; the
        logits of each read node from its home pack (decoder, then the LM head on those rows only).
        False, with nothing done, where a prompt runs longer than a pack past that prefix (its pack's
        mask would grow with its square): the row groups take the batch."""
        import torch

        if len(preps) == 1:  # one prompt: from the LRU's best match up to its first read
            shared = preps[0].first_read
        else:
            _, shared = _batch_group(preps)
        longest = max(len(p.ids) for p in preps)
        if longest - (shared if shared >= MIN_REUSE else 0) > TREE_PACK:
            return False
        kv = self._prefix_kv(preps[0].ids[:shared]) if shared >= MIN_REUSE else None
        if kv is None:
            shared = 0
            if longest > TREE_PACK:  # the prefix could not be cached (sliding-window attention)
                return False
        t = tree.build([p.ids[shared:] for p in preps], [[i - shared for i in p.idx] for p in preps])
        packs, home = tree.packs(t, TREE_PACK)
        decoder, head = _plain_head(self.model)
        dtype = next(self.model.parameters()).dtype
        slot = {v: i for i, v in enumerate(dict.fromkeys(v for nodes in t.reads for v in nodes))}
        cand = sorted({c for p in preps for c in p.cand})
        logp = torch.empty(len(slot), len(cand), device=self.device)  # per read node: log-probabilities
        per_pass = max(1, BATCH_TOKENS // TREE_PACK)
        pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else 0
        for k in range(0, len(packs), per_pass):
            group = packs[k : k + per_pass]
            width = max(map(len, group))
            inp = torch.tensor([[t.token[v] for v in p] + [pad] * (width - len(p)) for p in group])
            pos = torch.tensor([tree.positions(t, p, shared, width) for p in group])
            seen = np.zeros((len(group), 1, width, shared + width), dtype=bool)
            seen[:, :, :, :shared] = True
            for b, p in enumerate(group):
                seen[b, 0, :, shared:] = tree.ancestors(t, p, width)
            mask = torch.zeros(seen.shape, dtype=dtype)
            mask.masked_fill_(torch.from_numpy(~seen), torch.finfo(dtype).min)
            kwargs = _past(kv, len(group))
            hidden = decoder(
                input_ids=inp.to(self.device),
                attention_mask=mask.to(self.device),
                position_ids=pos.to(self.device),
                use_cache=kv is not None,
                **kwargs,
            ).last_hidden_state
            wanted = [  # the read nodes at home in this pass's packs
                (b, j, slot[v])
                for b, p in enumerate(group)
                for j, v in enumerate(p)
                if home[v] == k + b and v in slot
            ]
            for a in range(0, len(wanted), HEAD_ROWS):
                rows, cols, at = (
                    torch.tensor(x, device=self.device) for x in zip(*wanted[a : a + HEAD_ROWS], strict=True)
                )
                logits = head(hidden[rows, cols]).float()
                logp[at] = logits[:, cand] - logits.logsumexp(-1, keepdim=True)
            self.stats["forward_tokens"] += sum(map(len, group))
            self.stats["reused_tokens"] += shared * len(group)
        owned = [0] * len(preps)
        for r in t.owner:
            owned[r] += 1
        for c, p in enumerate(preps):
            if not p.idx:
                out[c] = ([], [], owned[c])
                continue
            col = [cand.index(x) for x in p.cand]
            sel = logp[[slot[v] for v in t.reads[c]]][:, col]
            out[c] = (sel.softmax(-1).tolist(), sel.logsumexp(-1).exp().tolist(), owned[c])
        return True

    def _forward_rows(self, rows: list[int], preps: list[_Prepared], start: int, kv, out: list) -> None:
        """Forward `preps[rows]` from token `start` on (past key/values `kv` cover the tokens before)."""
        import torch

        rows = sorted(rows, key=lambda r: len(preps[r].ids))
        chunk: list[int] = []
        for r in [*rows, None]:
            if r is not None:
                longest = len(preps[r].ids) - start
                fits = longest * (len(chunk) + 1) <= BATCH_TOKENS
                if not chunk or (fits and start * (len(chunk) + 1) <= PREFIX_ROWS_TOKENS):
                    chunk.append(r)
                    continue
            if not chunk:
                break
            suffixes = [preps[c].ids[start:] for c in chunk]
            width = max(map(len, suffixes))
            pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else 0
            inp = torch.tensor([s + [pad] * (width - len(s)) for s in suffixes], device=self.device)
            mask = torch.tensor(
                [[1] * (start + len(s)) + [0] * (width - len(s)) for s in suffixes], device=self.device
            )
            kwargs = _past(kv, len(chunk))
            rows_logits = self._position_logits(
                inp, mask, [[i - start for i in preps[c].idx] for c in chunk], kv is not None, kwargs
            )
            self.stats["forward_tokens"] += sum(map(len, suffixes))
            self.stats["reused_tokens"] += start * len(chunk)
            for c, logits in zip(chunk, rows_logits, strict=True):
                p = preps[c]
                sel = logits.float().log_softmax(-1)[:, p.cand]
                out[c] = (sel.softmax(-1).tolist(), sel.logsumexp(-1).exp().tolist(), len(p.ids) - start)
            chunk = [r] if r is not None else []

    def _position_logits(self, inp, mask, positions: list[list[int]], use_cache: bool, kwargs: dict) -> list:  # noqa: ANN001
        """Per row of `inp`, the logits at its own `positions` (a [len(positions[b]), vocab] tensor).

        The model's `logits_to_keep` keeps the union of all rows' positions for every row, so a chunk
        of B rows with disjoint positions pays B times the LM head it needs. Where the model's logits
        are exactly `lm_head(decoder(...))` and enough positions are asked for, the decoder runs alone
        and the head reads only the asked (row, position) pairs: the same matrix product row for row,
        so the same numbers (oneDNN picks another kernel below ~40 rows: then the model's own path).
        """
        import torch

        keep = sorted({i for pos in positions for i in pos})
        pairs = sum(map(len, positions))
        split = _plain_head(self.model)
        if split is None or pairs < GATHER_MIN or pairs >= len(keep) * len(positions):
            logits = self.model(
                input_ids=inp,
                attention_mask=mask,
                logits_to_keep=torch.tensor(keep, device=self.device),
                use_cache=use_cache,
                **kwargs,
            ).logits
            col = {k: j for j, k in enumerate(keep)}
            return [logits[b, [col[i] for i in pos]] for b, pos in enumerate(positions)]
        decoder, head = split
        hidden = decoder(input_ids=inp, attention_mask=mask, use_cache=use_cache, **kwargs).last_hidden_state
        rows = torch.tensor([b for b, pos in enumerate(positions) for _ in pos], device=self.device)
        cols = torch.tensor([i for pos in positions for i in pos], device=self.device)
        logits = head(hidden[rows, cols])
        return list(logits.split([len(pos) for pos in positions]))

    def _prefix_kv(self, prefix: list[int]):
        """Key/value cache of exactly `prefix`: from the LRU (cropped or extended) or computed.

        None where the model's cache cannot be reused (sliding-window attention).
        """
        import torch

        if self.sliding:
            return None
        key = tuple(prefix)
        if key in self.prefixes:
            self.prefixes.move_to_end(key)
            return self.prefixes[key]
        best, best_len = None, 0
        for k in self.prefixes:
            n = _lcp([k, key])
            if n > best_len:
                best, best_len = k, n
        best_len = min(best_len, len(prefix) - 1)  # the last prefix token is always forwarded
        if best is not None and best_len >= MIN_REUSE:
            kv = copy.deepcopy(self.prefixes[best])
            kv.crop(-(kv.get_seq_length() - best_len))  # negative: tokens to drop (any transformers)
            start = best_len
        else:
            kv, start = None, 0
        inp = torch.tensor([prefix[start:]], device=self.device)
        res = self.model(input_ids=inp, past_key_values=kv, use_cache=True, logits_to_keep=1)
        self.stats["forward_tokens"] += len(prefix) - start
        self.stats["reused_tokens"] += start
        if any(getattr(res.past_key_values, "is_sliding", [])):
            self.sliding = True  # a sliding-window cache cannot be cropped back: no reuse for this model
            return None
        self.prefixes[key] = res.past_key_values
        while len(self.prefixes) > LRU_SIZE:
            self.prefixes.popitem(last=False)
        return res.past_key_values

    # -- chat -----------------------------------------------------------------------------------
    def chat(self, req: ChatRequest, spec: str) -> tuple[str, str, list[TokenLogprob] | None, int, int]:
        import torch
        from transformers import GenerationConfig

        msgs = [{"role": m.role, "content": m.content} for m in req.messages]
        if req.json_schema is not None:
            msgs.append({"role": "system", "content": schema_instruction(req.json_schema)})
            if msgs[-2]["role"] == "user":  # keep the user turn last for templates that expect it
                msgs[-1], msgs[-2] = msgs[-2], msgs[-1]
        try:
            text = self.tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        except Exception as e:  # a template that rejects the roles given
            raise LLMError(f"{spec}: its chat template rejected the messages ({e}).") from e
        enc = self.tok(text, add_special_tokens=False, return_tensors="pt").to(self.device)
        eos = self.model.generation_config.eos_token_id
        eos = [eos] if isinstance(eos, int) else list(eos or [])
        if self.tok.eos_token_id is not None and self.tok.eos_token_id not in eos:
            eos.append(self.tok.eos_token_id)
        sample = req.temperature > 0
        cfg = GenerationConfig(
            max_new_tokens=req.max_tokens,
            do_sample=sample,
            temperature=req.temperature if sample else None,
            top_p=None,
            top_k=None,
            eos_token_id=eos,
            pad_token_id=self.tok.pad_token_id if self.tok.pad_token_id is not None else eos[0],
            stop_strings=req.stop or None,
            output_logits=req.top_logprobs > 0,
            return_dict_in_generate=True,
        )
        with self.lock, torch.inference_mode():
            if sample:
                torch.manual_seed(req.seed if req.seed is not None else time.time_ns() % 2**31)
            out = self.model.generate(**enc, generation_config=cfg, tokenizer=self.tok)
        n_prompt = enc["input_ids"].shape[1]
        gen = out.sequences[0, n_prompt:].tolist()
        finish = "length"
        if gen and gen[-1] in eos:
            gen, finish = gen[:-1], "stop"
        answer = self.tok.decode(gen, skip_special_tokens=True)
        for s in req.stop or []:
            if s in answer:
                answer, finish = answer[: answer.index(s)], "stop"
        logprobs = None
        if req.top_logprobs > 0:
            logprobs = []
            for t, step in zip(gen, out.logits, strict=False):
                lp = step[0].float().log_softmax(-1)
                top = torch.topk(lp, req.top_logprobs)
                alts: dict[str, float] = {}
                for v, i in zip(top.values.tolist(), top.indices.tolist(), strict=True):
                    alts.setdefault(self.tok.decode([i]), v)
                logprobs.append(TokenLogprob(token=self.tok.decode([t]), logprob=lp[t].item(), top=alts))
        del out  # the generation's key/values and logits, freed before the trim
        with self.lock:
            self._release()
        if req.json_schema is not None:
            parse_json_answer(answer, req.json_schema, spec)
        return answer, finish, logprobs, n_prompt, len(gen)


_PLAIN_HEADS = {"LlamaForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM", "MistralForCausalLM"}


def _plain_head(model) -> tuple | None:  # noqa: ANN001
    """(decoder, lm_head) of a model whose logits are exactly `lm_head(decoder(...).last_hidden_state)`
    (no soft-capping or logit scaling); None for any other model."""
    if type(model).__name__ not in _PLAIN_HEADS:
        return None
    decoder, head = getattr(model, "model", None), getattr(model, "lm_head", None)
    return (decoder, head) if decoder is not None and head is not None else None


def _past(kv, rows: int) -> dict:  # noqa: ANN001
    """The model keyword for a pass of `rows` rows after the cached prefix `kv` (a copy, repeated per
    row: the pass appends to it); none without a prefix."""
    if kv is None:
        return {}
    past = copy.deepcopy(kv)
    if rows > 1:
        past.batch_repeat_interleave(rows)
    return {"past_key_values": past}


def _batch_group(preps: list[_Prepared]) -> tuple[list[int], int]:
    """All rows as one group from the batch's common prefix (the engine before grouping)."""
    shared = _lcp([p.ids for p in preps]) if len(preps) > 1 else 0
    shared = min(shared, *(p.first_read for p in preps))
    return list(range(len(preps))), shared


def _row_groups(preps: list[_Prepared]) -> list[tuple[list[int], int]]:
    """The batch's rows in groups, each with the prefix its rows share (capped at each row's first read
    position, whose logits must be computed): (row indices, prefix length) per group.

    Rows are sorted by token ids, so rows sharing a prefix are neighbours and every group is a run of
    them; the runs form a tree (a run shares more than the run it is cut from). A run is cut into its
    sub-runs where that forwards fewer tokens: each row forwards its tokens after its group's prefix,
    each group its prefix's tokens beyond the enclosing run's once, plus `GROUP_COST` per group (a
    pass and a key/value copy). Rows left alone by a cut stay together on the run's own prefix. With
    two explanations' listings in one batch this gives a group per explanation, each from the end of
    its explanation line instead of the batch's "Explanation: "."""
    n = len(preps)
    if n == 1:
        return [_batch_group(preps)]
    order = sorted(range(n), key=lambda i: preps[i].ids)
    ids = [preps[i].ids for i in order]
    cap = [preps[i].first_read for i in order]
    adj = [_lcp2(ids[k], ids[k + 1]) for k in range(n - 1)]  # with the next row in sorted order

    def prefix(run: list[int]) -> int:
        """What the sorted rows `run` share (the common prefix of sorted rows is the least of their
        neighbours' between the first and the last), up to their first read position."""
        return min(min(adj[run[0] : run[-1]], default=len(ids[run[0]])), min(cap[k] for k in run))

    def plan(run: list[int], outer: int, depth: int) -> tuple[int, list[tuple[list[int], int]]]:
        """(cost, groups) of the sorted rows `run` inside a group forwarded from `outer`."""
        p = prefix(run)
        keep = (p - outer + sum(len(ids[k]) - p for k in run) + GROUP_COST, [(run, p)])
        if depth >= GROUP_DEPTH:
            return keep
        subs: list[list[int]] = []
        alone = [k for k in run if cap[k] <= p]  # read at the run's prefix: nothing more to share
        for k in run:
            if cap[k] <= p:
                continue
            if subs and min(adj[subs[-1][-1] : k]) > p:
                subs[-1].append(k)
            else:
                subs.append([k])
        alone += [k for x in subs if len(x) == 1 or prefix(x) <= p for k in x]
        subs = [x for x in subs if len(x) > 1 and prefix(x) > p]
        if not subs:
            return keep
        cost, groups = p - outer, []
        for sub in subs:
            c, g = plan(sub, p, depth + 1)
            cost += c
            groups += g
        if alone:
            cost += sum(len(ids[k]) - p for k in alone) + GROUP_COST
            groups.append((sorted(alone), p))
        return min(keep, (cost, groups), key=lambda x: x[0])

    return [([order[k] for k in run], p) for run, p in plan(list(range(n)), 0, 0)[1]]


def _lcp2(a: list, b: list) -> int:
    """Length of the common prefix of two token lists (binary search on slice equality: C-speed)."""
    lo, hi = 0, min(len(a), len(b))
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[lo:mid] == b[lo:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _lcp(seqs: list) -> int:
    """Length of the longest common prefix of token sequences (the least with the first: `_lcp2`)."""
    if not seqs:
        return 0
    return min((_lcp2(seqs[0], s) for s in seqs[1:]), default=len(seqs[0]))


_ENGINES: dict[tuple[str, str], Engine] = {}
_ENGINES_LOCK = threading.Lock()


def resolve(source: str) -> tuple[str, Path | None]:
    """(display name, local path or None for a hub id) of a `local:` model source."""
    from autointerp import assets

    if source in assets.embedded_models():
        return source, None
    p = Path(source).expanduser()
    if p.exists():
        if p.is_file() and p.suffix != ".gguf":
            raise UserError(
                f"{p} is neither a model directory nor a .gguf file; pass one of those to local:."
            )
        return p.name, p
    if source.endswith(".gguf") or source.startswith(("/", "./", "~")):
        raise UserError(f"No model file at {p}; check the path given to local:.")
    return source, None


def load_engine(source: str, dtype: str = "bfloat16") -> Engine:
    """Load (once per process) the model behind a `local:` source."""
    with _ENGINES_LOCK:
        key = (source, dtype)
        if key not in _ENGINES:
            _ENGINES[key] = _load(source, dtype)
        return _ENGINES[key]


def _load(source: str, dtype: str) -> Engine:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from autointerp import assets

    name, path = resolve(source)
    td = getattr(torch, dtype)
    gguf: dict = {}
    if source in assets.embedded_models():
        where = str(assets.ensure_model(source))
    elif path is not None and path.is_file():
        where, gguf = str(path.parent), {"gguf_file": path.name}
    elif path is not None:
        where = str(path)
    else:
        where = source
    try:
        tok = AutoTokenizer.from_pretrained(where, **gguf)
        model = AutoModelForCausalLM.from_pretrained(where, dtype=td, **gguf)
    except OSError as e:
        raise UserError(
            f"Could not load {source!r}: it is not a local model directory and not in the Hugging Face "
            "cache (no network); use local:qwen2.5-coder-1.5b, local:smollm2-135m or local:PATH."
        ) from e
    except Exception as e:  # a damaged file of the user's own model (e.g. a safetensors header)
        if path is None or source in assets.embedded_models():
            raise
        raise UserError(
            f"Could not load the model at {path} ({type(e).__name__}: {e}); its files look damaged: "
            "copy or download them again."
        ) from e
    if gguf:
        assets.strip_quantization(model)
    dev = _device()
    model.to(dev).eval()
    # Neutral generation defaults: a checkpoint's own (e.g. Qwen's top_p, repetition_penalty) must not
    # leak into requests; every request states its own sampling settings.
    g = model.generation_config
    model.generation_config = GenerationConfig(
        bos_token_id=g.bos_token_id, eos_token_id=g.eos_token_id, pad_token_id=g.pad_token_id
    )
    if tok.chat_template is None:
        tok.chat_template = _PLAIN_TEMPLATE
    return Engine(name=name, model=model, tok=tok, device=dev)


_PLAIN_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}"
)


class LocalLLM(LLM):
    """`local:SOURCE`: an embedded model name, a model directory, a .gguf file or a hub id (cached)."""

    backend = "local"
    capabilities = Capabilities(token_probs=True, top_logprobs=True, tools=False, json_schema=False)

    def __init__(
        self,
        source: str,
        *,
        dtype: str = "bfloat16",
        prefix_cache: bool = True,
        prepack: bool | None = None,
        fuse: bool | None = None,
    ):
        """`prepack`: run the linear layers on prepacked bf16 weights where supported (CPU, oneDNN);
        None: off unless AUTOINTERP_PREPACK=1. `fuse`: compile the element-wise ops into fused
        kernels where supported (llm/fused.py; not with prepacking); None: on unless
        AUTOINTERP_FUSE=0. The engine is shared per process: the last LocalLLM to load it sets both."""
        from autointerp.llm import fused
        from autointerp.llm.prepack import enabled_by_env

        self.spec = f"local:{source}"
        self.source = source
        self.dtype = dtype
        self.prefix_cache = prefix_cache
        self.prepack = enabled_by_env() if prepack is None else prepack
        self.fuse = fused.enabled_by_env() if fuse is None else fuse
        self.model = resolve(source)[0] + ("" if dtype == "bfloat16" else f"@{dtype}")
        self._engine: Engine | None = None
        self._pending = PerLoop(list)  # (prepared, future) waiting for the next batch
        self._worker = PerLoop(lambda: [None])

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            engine = load_engine(self.source, self.dtype)
            engine.set_prepack(self.prepack)
            engine.set_fuse(self.fuse and not self.prepack)
            self._engine = engine
        return self._engine

    async def chat(self, request: ChatRequest) -> ChatResponse:
        if request.tools:
            raise LLMError(
                f"{self.spec} cannot call tools; use an openai: or anthropic: model for tool calls."
            )
        t0 = time.perf_counter()
        engine = await asyncio.to_thread(lambda: self.engine)
        text, finish, logprobs, n_in, n_out = await asyncio.to_thread(engine.chat, request, self.spec)
        usage = Usage(prompt_tokens=n_in, completion_tokens=n_out, latency_s=time.perf_counter() - t0)
        return ChatResponse(
            text=text,
            logprobs=logprobs,
            finish_reason=finish,
            model=self.model,
            backend=self.backend,
            usage=usage,
        )

    async def token_probs(self, request: TokenProbsRequest) -> TokenProbsResponse:
        """One prompt; concurrent calls are gathered into a single batch with a shared prefix."""
        engine = await asyncio.to_thread(lambda: self.engine)
        prep = engine.prepare(request)
        fut = asyncio.get_running_loop().create_future()
        self._pending.get().append((request, prep, fut))
        worker = self._worker.get()
        if worker[0] is None or worker[0].done():
            worker[0] = asyncio.create_task(self._drain(engine))
        return await fut

    async def stepwise_many(self, requests: list[StepwiseRequest]) -> list[StepwiseResponse]:
        """Stepwise read-outs (see `StepwiseRequest`), decoded together in batched forward steps."""
        engine = await asyncio.to_thread(lambda: self.engine)
        preps = [engine.prepare_steps(r) for r in requests]
        t0 = time.perf_counter()
        try:
            results = await asyncio.to_thread(engine.stepwise_batch, preps)
        except (LLMError, UserError):
            raise
        except Exception as e:  # noqa: BLE001 - a torch failure becomes one clear LLMError
            raise LLMError(f"{self.spec}: stepwise forward pass failed: {e}") from e
        share = (time.perf_counter() - t0) / max(1, len(requests))
        return [
            StepwiseResponse(
                probs=[dict(zip(req.candidates, row, strict=True)) for row in probs],
                mass=mass,
                chosen=[req.candidates[c] for c in chosen],
                model=self.model,
                backend=self.backend,
                usage=Usage(
                    prompt_tokens=len(p.head) + sum(map(len, p.steps)),
                    completion_tokens=len(chosen),
                    reused_prompt_tokens=reused,
                    latency_s=share,
                ),
            )
            for req, p, (probs, mass, chosen, reused) in zip(requests, preps, results, strict=True)
        ]

    async def _drain(self, engine: Engine) -> None:
        pending = self._pending.get()
        while pending:
            batch = pending[:]
            pending.clear()
            t0 = time.perf_counter()
            try:
                preps = [p for _, p, _ in batch]
                results = await asyncio.to_thread(engine.token_probs_batch, preps, self.prefix_cache)
            except Exception as e:  # noqa: BLE001 - handed to every waiting caller
                err = (
                    e
                    if isinstance(e, LLMError | UserError)
                    else LLMError(f"{self.spec}: forward pass failed: {e}")
                )
                for _, _, fut in batch:
                    if not fut.done():
                        fut.set_exception(err)
                continue
            share = (time.perf_counter() - t0) / len(batch)
            for (req, prep, fut), (probs, mass, computed) in zip(batch, results, strict=True):
                if fut.done():
                    continue
                fut.set_result(
                    TokenProbsResponse(
                        probs=[dict(zip(req.candidates, row, strict=True)) for row in probs],
                        mass=mass,
                        model=self.model,
                        backend=self.backend,
                        usage=Usage(
                            prompt_tokens=prep.n_prompt,
                            reused_prompt_tokens=max(0, prep.n_prompt - computed),
                            latency_s=share,
                        ),
                    )
                )
