"""The recorder: stream corpus windows through the subject model once, keep per unit what explainers
and scorers need (top-k windows, quantile samples, random and non-firing windows, statistics).
`record_units` (also `autointerp.record_units`) is its Python API, the one behind `autointerp record`.

Memory does not grow with the corpus: every kept set is a fixed-size buffer updated by a keyed top-k
(the top windows by max activation; uniform reservoirs by random keys). State is checkpointed, so a
killed run resumes where it stopped; the store is written once, in one transaction, at the end.

Every kept set is a pure function of the window stream: ties are broken by the earlier window, and a
reservoir key is a hash of (seed, unit, window position), not a draw from a generator. So the result
does not depend on batch size, and n shards of the stream (`RecordSettings.shard`) merge into exactly
what one run writes (`autointerp.scale.merge`).
"""

from __future__ import annotations

import gc
import hashlib
import itertools
import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from autointerp import corpus
from autointerp.errors import UserError
from autointerp.scale.shards import ShardSpec
from autointerp.store import Store
from autointerp.subject.heads import (
    TOP_SOURCES,
    HeadReader,
    check_heads,
    head_hook,
    head_names,
    head_readers,
    parse_heads,
)
from autointerp.subject.model import (
    SubjectModel,
    check_indices,
    known_head_counts,
    load_subject,
    precheck_hooks,
)
from autointerp.types import Context, ExampleRows, RecordSettings, RunRecord, Unit, UnitRef, UnitStats, now
from autointerp.version import code_version

# Fixed symmetric log-spaced histogram edges (1e-4 .. 1e3 each side of 0), good for any unit's scale.
_POS = [10 ** (k / 4) for k in range(-16, 13)]
HIST_EDGES = torch.tensor([-e for e in reversed(_POS)] + [0.0] + _POS, dtype=torch.float32)
ZERO_BIN = int(torch.bucketize(torch.tensor(0.0), HIST_EDGES))  # bins are (edges[j-1], edges[j]]
SPARSE_BELOW = 8  # stats take the sparse path when fewer than 1 in 8 activations are nonzero
CHECKPOINT_EVERY_S = 30.0
CHECKPOINT_FORMAT = 3  # 3: reservoir keys hashed from window positions (no generator state)
KINDS = ("top", "quantile", "random", "negative")
RANDOM_SALT = 0  # the `random` windows' keys: one per window, the same for every unit and source
_M32 = 0xFFFFFFFF


def _mix32(x: torch.Tensor | int) -> torch.Tensor | int:
    """An integer hash of 32-bit values, a Python int or held in int64 (products stay below 2**59)."""
    x = (((x >> 16) ^ x) * 0x45D9F3B) & _M32
    x = (((x >> 16) ^ x) * 0x45D9F3B) & _M32
    return (x >> 16) ^ x


def source_salt(key: str) -> int:
    """A source's (hook, SAE) salt for its reservoir keys, so two sources sample independently."""
    return int.from_bytes(hashlib.sha1(key.encode()).digest()[:4], "little") | 1


def source_key(hook: str, sae: str | None) -> str:
    return f"{hook}/sae:{sae}" if sae else hook


def sample_keys(seed: int, salt: int, wids: torch.Tensor, units: torch.Tensor | None = None) -> torch.Tensor:
    """Reservoir keys, uniform on [0, 1) in float32 (24 bits): a pure function of (seed, salt, window
    position, unit index), on the device of `wids` (B,). (B, U) for `units` (U,), (B, 1) without."""
    base = _mix32(((seed * 0x9E3779B1) ^ salt) & _M32)  # a Python int: nothing crosses to the device
    h = _mix32((base ^ (wids & _M32)) & _M32)[:, None]  # (B, 1)
    if units is not None:
        h = _mix32((h + (units.to(wids.device)[None, :] & 0x3FFFFFFF) * 0x9E3779B1) & _M32)
    return (h >> 8).to(torch.float32) * 2.0**-24


def lexi_order(keys: torch.Tensor, wids: torch.Tensor) -> torch.Tensor:
    """Per row, the column order by key descending, ties by window position ascending."""
    by_wid = wids.argsort(dim=1)
    by_key = keys.gather(1, by_wid).argsort(dim=1, descending=True, stable=True)
    return by_wid.gather(1, by_key)


class KeyedTopK:
    """Per unit, the k windows with the largest key (ties: the earlier window), with their activations
    and token ids.

    keys: (U, k); acts: (U, k, T); toks: (U, k, T); wids: (U, k), each window's position in the
    stream (what tells two slots hold the same window, and breaks ties). An empty slot has key -inf.
    Slots are not kept in key order: a batch only writes the slots its windows take over, so after the
    first batches a batch costs little more than a comparison against each unit's current k-th key.
    Windows must come in stream order (each batch after the previous one), as the recorder streams them.
    """

    def __init__(
        self, k: int, n_units: int, ctx: int, device: torch.device | str = "cpu", n_sources: int = 0
    ):
        """`n_sources` > 0 (attention heads): each slot also keeps, per position, that many source
        positions (`src`, int16, -1: none) and their weights (`srcw`)."""
        self.keys = torch.full((n_units, k), -math.inf, device=device)
        self.acts = torch.zeros((n_units, k, ctx), device=device)
        self.toks = torch.zeros((n_units, k, ctx), dtype=torch.int32, device=device)
        self.wids = torch.full((n_units, k), -1, dtype=torch.long, device=device)
        self.src = (
            torch.full((n_units, k, ctx, n_sources), -1, dtype=torch.int16, device=device)
            if n_sources
            else None
        )
        self.srcw = torch.zeros((n_units, k, ctx, n_sources), device=device) if n_sources else None

    @property
    def k(self) -> int:
        return self.keys.shape[1]

    def update(
        self,
        keys: torch.Tensor,
        acts: torch.Tensor,
        toks: torch.Tensor,
        wids: torch.Tensor,
        sources: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> None:
        """keys (B, U), acts (B, T, U), toks (B, T), wids (B,) ascending, after every kept window; sources:
        positions and weights (B, T, U, K) when the buffer keeps them: merge this batch into the buffers."""
        if self.k == 0:
            return
        keys = keys.T  # (U, B)
        # A window whose key only ties the k-th comes later than it, so it loses the tie: strict >.
        cols = (keys > self.keys.min(dim=1, keepdim=True).values).any(dim=1).nonzero().squeeze(1)
        if cols.numel() == 0:
            return
        k = self.k
        merged = torch.cat([self.keys[cols], keys[cols]], dim=1)  # (C, k + B)
        merged_wids = torch.cat([self.wids[cols], wids.expand(len(cols), -1)], dim=1)
        chosen = torch.zeros_like(merged, dtype=torch.bool)
        chosen.scatter_(1, lexi_order(merged, merged_wids)[:, :k], True)
        # Per unit, the i-th evicted slot takes the i-th incoming window: nonzero() lists both in
        # (unit, position) order and each unit evicts exactly as many slots as windows come in.
        evicted = (~chosen[:, :k]).nonzero()
        incoming = chosen[:, k:].nonzero()
        if incoming.numel() == 0:
            return
        unit = cols[incoming[:, 0]]
        slot, window = evicted[:, 1], incoming[:, 1]
        self.keys[unit, slot] = keys[unit, window]
        self.acts[unit, slot] = acts[window, :, unit]
        self.toks[unit, slot] = toks[window]
        self.wids[unit, slot] = wids[window]
        if self.src is not None and self.srcw is not None and sources is not None:
            self.src[unit, slot] = sources[0][window, :, unit]
            self.srcw[unit, slot] = sources[1][window, :, unit]

    def entries(self, unit: int) -> list[tuple[float, np.ndarray, np.ndarray]]:
        """(key, acts, token ids) of the filled slots of one unit, in descending key order."""
        keys, acts, toks, _ = self.sorted()
        return [(float(keys[unit, i]), acts[unit, i], toks[unit, i]) for i in range(self.filled[unit])]

    def sorted(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """keys (U, k), acts (U, k, T), toks (U, k, T), wids (U, k) as numpy, each unit's slots in
        descending key order (ties: the earlier window first)."""
        order = lexi_order(self.keys, self.wids)
        idx = order.unsqueeze(-1).expand_as(self.acts)
        return (
            self.keys.gather(1, order).cpu().numpy(),
            self.acts.gather(1, idx).cpu().numpy(),
            self.toks.gather(1, idx).cpu().numpy(),
            self.wids.gather(1, order).cpu().numpy(),
        )

    def sorted_sources(self) -> tuple[np.ndarray, np.ndarray] | None:
        """Source positions and weights (U, k, T, K) in `sorted` order, or None when not kept."""
        if self.src is None or self.srcw is None:
            return None
        order = lexi_order(self.keys, self.wids)  # the order of `sorted`
        idx = order[:, :, None, None].expand_as(self.src)
        return self.src.gather(1, idx).cpu().numpy(), self.srcw.gather(1, idx).cpu().numpy()

    @property
    def filled(self) -> list[int]:
        return (self.keys > -math.inf).sum(dim=1).tolist()

    def state(self) -> dict:
        out = {"keys": self.keys, "acts": self.acts, "toks": self.toks, "wids": self.wids}
        return out | ({"src": self.src, "srcw": self.srcw} if self.src is not None else {})

    def load(self, state: dict) -> None:
        device = self.keys.device
        self.keys, self.acts, self.toks, self.wids = (
            state[k].to(device) for k in ("keys", "acts", "toks", "wids")
        )
        if "src" in state:
            self.src, self.srcw = state["src"].to(device), state["srcw"].to(device)


class UnitStatsAcc:
    """Streaming count, sum, sum of squares, max, firing count and histogram per unit."""

    def __init__(self, n_units: int, threshold: float, device: torch.device | str = "cpu"):
        self.threshold = threshold
        self.n = 0
        self.edges = HIST_EDGES.to(device)
        self.sum = torch.zeros(n_units, dtype=torch.float64, device=device)
        self.sumsq = torch.zeros(n_units, dtype=torch.float64, device=device)
        self.max = torch.full((n_units,), -math.inf, device=device)
        self.fire = torch.zeros(n_units, dtype=torch.int64, device=device)
        self.hist = torch.zeros((n_units, len(HIST_EDGES) + 1), dtype=torch.int64, device=device)

    def update(self, acts: torch.Tensor, win_max: torch.Tensor, n_excluded: int = 0) -> None:
        """acts: (N, U) activations of N tokens; win_max: (B, U) per-window maxima of the same tokens.

        `n_excluded` of the N rows are left-out positions (special tokens) holding exactly 0.0 for every
        unit: they are taken back out of the count, the zero bin and (threshold < 0) the firing count.
        Sparse activations (SAE latents: most entries exactly 0) are summed and binned from their
        nonzero entries only, with the zeros counted per unit; the result is the same as the dense way.
        """
        n_tokens, n_units = acts.shape
        self.n += n_tokens - n_excluded
        self.max = torch.maximum(self.max, win_max.amax(0))
        nbins = self.hist.shape[1]
        if int(torch.count_nonzero(acts)) * SPARSE_BELOW < acts.numel():
            rows, cols = acts.nonzero().unbind(1)
            vals = acts[rows, cols]
            zeros = n_tokens - torch.bincount(cols, minlength=n_units)
            self.sum.index_add_(0, cols, vals.double())
            self.sumsq.index_add_(0, cols, vals.double().square())
            self.fire += torch.bincount(cols[vals > self.threshold], minlength=n_units)
            if self.threshold < 0.0:  # zeros fire too
                self.fire += zeros
            bins = torch.bucketize(vals, self.edges) + cols * nbins
            self.hist += torch.bincount(bins, minlength=self.hist.numel()).view_as(self.hist)
            self.hist[:, ZERO_BIN] += zeros
        else:
            self.sum += acts.sum(0)  # a batch's fp32 sum is exact enough; the running total is fp64
            self.sumsq += acts.square().sum(0)
            self.fire += (acts > self.threshold).sum(0)
            bins = torch.bucketize(acts, self.edges) + torch.arange(n_units, device=acts.device) * nbins
            self.hist += torch.bincount(bins.flatten(), minlength=self.hist.numel()).view_as(self.hist)
        if n_excluded:
            self.hist[:, ZERO_BIN] -= n_excluded
            if self.threshold < 0.0:
                self.fire -= n_excluded

    def all_stats(self) -> list[UnitStats]:
        """Every unit's statistics (built from whole arrays: cheap for many units)."""
        cpu = [t.cpu().numpy() for t in (self.sum, self.sumsq, self.max, self.fire, self.hist)]
        return finish_stats(self.n, *cpu, self.threshold)

    def state(self) -> dict:
        return {k: getattr(self, k) for k in ("n", "sum", "sumsq", "max", "fire", "hist")}

    def load(self, state: dict) -> None:
        for k, v in state.items():
            setattr(self, k, v.to(self.edges.device) if isinstance(v, torch.Tensor) else v)


def finish_stats(
    n: int,
    sums: np.ndarray,
    sumsqs: np.ndarray,
    maxes: np.ndarray,
    fires: np.ndarray,
    hists: np.ndarray,
    threshold: float,
) -> list[UnitStats]:
    """Units' statistics from their accumulators (U,) each, (U, bins) for `hists`: the one formula both
    a recording and a merge of shards (whose accumulators add up) use."""
    mean = sums / n
    std = np.sqrt(np.maximum(sumsqs / n - mean * mean, 0.0))
    edges = [-math.inf, *HIST_EDGES.tolist(), math.inf]
    columns = zip(
        maxes.tolist(),
        mean.tolist(),
        std.tolist(),
        (fires.astype(np.float64) / n).tolist(),
        hists.tolist(),
        sums.tolist(),
        sumsqs.tolist(),
        strict=True,
    )
    return [
        UnitStats.model_construct(
            n_tokens=n,
            max=mx,
            mean=mu,
            std=sd,
            frac_firing=fire,
            fire_threshold=threshold,
            hist_edges=edges,
            hist_counts=counts,
            sum=total,
            sumsq=total_sq,
        )
        for mx, mu, sd, fire, counts, total, total_sq in columns
    ]


@dataclass
class UnitSource:
    """A set of units read off one hook: neurons (a slice of the hook) or SAE latents (an encoder)."""

    hook: str
    indices: list[int]
    sae: str | None = None
    # Maps the hook's activations (N, d_in) to the selected units' activations (N, U); None: slice.
    encode: Callable[[torch.Tensor], torch.Tensor] | None = None
    # Maps the batch's token ids (B, T) straight to unit activations (B, T, U), a new tensor, without
    # the model (synthetic ground-truth units); `hook` is then only a name. When every source has one,
    # the recorder skips the forward pass.
    from_tokens: Callable[[torch.Tensor], torch.Tensor] | None = None
    # Attention heads of one layer (`hook` is then the unit name blocks.L.attn, `indices` the heads): reads
    # the layer's attention hooks, and the kept examples carry each position's top source positions.
    head: HeadReader | None = None

    @property
    def key(self) -> str:
        return source_key(self.hook, self.sae)

    @property
    def hooks(self) -> list[str]:
        """The model hooks this source reads."""
        if self.head is not None:
            return self.head.hooks
        return [] if self.from_tokens is not None else [self.hook]

    def unit_acts(self, hook_acts: torch.Tensor) -> torch.Tensor:
        """(B, T, d) hook activations -> (B, T, U) float32 unit activations, a new tensor (never a view of
        `hook_acts`: the recorder writes into it)."""
        if self.from_tokens is not None:
            raise ValueError(f"{self.key} computes its activations from token ids; call from_tokens")
        if self.encode is None:
            n = len(self.indices)
            if self.indices == list(range(self.indices[0], self.indices[0] + n)):  # a range: no copy
                return hook_acts[..., self.indices[0] : self.indices[0] + n].to(torch.float32, copy=True)
            return hook_acts[..., self.indices].float()
        b, t, d = hook_acts.shape
        return self.encode(hook_acts.reshape(b * t, d)).float().reshape(b, t, -1)


@dataclass
class SourceState:
    """The kept sets and statistics of one source's units, on the device the activations come from."""

    top: KeyedTopK
    quantile: KeyedTopK
    random: KeyedTopK
    negative: KeyedTopK
    stats: UnitStatsAcc
    units: torch.Tensor  # (U,) the units' indices: with seed and salt, what their reservoir keys hash
    seed: int = 0
    salt: int = 0

    @classmethod
    def new(
        cls,
        s: RecordSettings,
        indices: list[int],
        key: str = "",
        device: torch.device | str = "cpu",
        n_sources: int = 0,
    ) -> SourceState:
        n_units = len(indices)
        return cls(
            top=KeyedTopK(s.top_k, n_units, s.ctx, device, n_sources),
            quantile=KeyedTopK(s.quantile_pool, n_units, s.ctx, device, n_sources),
            random=KeyedTopK(s.n_random, n_units, s.ctx, device, n_sources),
            negative=KeyedTopK(s.n_negative, n_units, s.ctx, device, n_sources),
            stats=UnitStatsAcc(n_units, s.fire_threshold, device),
            units=torch.tensor(indices, dtype=torch.long, device=device),
            seed=s.seed,
            salt=source_salt(key),
        )

    def buffers(self) -> dict[str, KeyedTopK]:
        return {"top": self.top, "quantile": self.quantile, "random": self.random, "negative": self.negative}

    def update(
        self,
        acts: torch.Tensor,
        toks: torch.Tensor,
        wids: torch.Tensor,
        special: tuple[torch.Tensor, torch.Tensor] | None = None,
        sources: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> None:
        """acts (B, T, U) float32, toks (B, T) int32, wids (B,) the windows' positions in the stream,
        all on this state's device; sources (attention heads): top source positions and weights
        (B, T, U, K).

        `special`: (window, position) index tensors of positions to leave out (special tokens); `acts`
        is then rewritten there in place (see `exclude_positions`), and their sources are dropped.
        """
        b, _, n_units = acts.shape
        if special is not None and special[0].numel():
            win_max = exclude_positions(acts, special, self.stats)
            if sources is not None:
                sources[0][special] = -1
                sources[1][special] = 0.0
        else:
            win_max = acts.amax(dim=1)  # (B, U)
            self.stats.update(acts.reshape(-1, n_units), win_max)
        fires = win_max > self.stats.threshold
        rand = sample_keys(self.seed, self.salt, wids, self.units)  # (B, U)
        shared = sample_keys(self.seed, RANDOM_SALT, wids).expand(b, n_units)  # one key per window
        self.top.update(win_max, acts, toks, wids, sources)
        self.quantile.update(torch.where(fires, rand, -math.inf), acts, toks, wids, sources)
        self.random.update(shared, acts, toks, wids, sources)
        self.negative.update(torch.where(fires, -math.inf, rand), acts, toks, wids, sources)


def exclude_positions(
    acts: torch.Tensor, special: tuple[torch.Tensor, torch.Tensor], stats: UnitStatsAcc | None = None
) -> torch.Tensor:
    """Leave the `special` (window, position) entries of `acts` (B, T, U) out; return the window maxima.

    The maxima (and so every kept set) and `stats` (when given) skip those positions. In place, they are
    then set to 0.0, or to the window's lowest activation where all of its others are below 0, so a
    left-out position is never a window's peak and reads as "off" downstream. Costs index writes of
    (K, U) entries, plus one min pass over the batch only when some window stays below 0 (dense neurons,
    never SAE codes). `UnitProbe` applies it too, so counterfactuals read like recorded examples.
    """
    rows, cols = special
    n_units = acts.shape[2]
    acts[rows, cols] = -math.inf
    win_max = acts.amax(dim=1)
    acts[rows, cols] = 0.0
    if stats is not None:
        stats.update(acts.reshape(-1, n_units), win_max, n_excluded=rows.numel())
    low = win_max[rows] < 0.0  # (K, U): 0.0 would rise above every other activation of the window
    if bool(low.any()):
        acts[rows, cols] = math.inf
        win_min = acts.amin(dim=1)[rows].clamp(max=0.0)  # a window of only special positions: 0.0
        acts[rows, cols] = torch.where(low, win_min, 0.0)
    return win_max


@dataclass
class RecordResult:
    run_id: str
    n_units: int
    n_tokens: int
    seconds: float
    tokens_per_s: float
    resumed_from: int = 0
    already_complete: bool = False
    per_source: dict[str, int] = field(default_factory=dict)


def run_id_for(settings: RecordSettings, extra: dict | None = None) -> str:
    """The run's name: a hash of its settings (and of `extra`, e.g. synthetic unit definitions)."""
    # Defaults added later (utf-8 corpus files, no shard, no heads) stay out of the hash: old run ids stay
    exclude = {"encoding"} if settings.encoding == "utf-8" else set()
    exclude |= {"shard"} if settings.shard is None else set()
    exclude |= set() if settings.heads else {"heads", "head_activation"}
    dump = settings.model_dump(exclude=exclude)
    blob = json.dumps(dump | ({"extra": extra} if extra else {}), sort_keys=True).encode()
    return "rec-" + hashlib.sha1(blob).hexdigest()[:12]


def special_tokens(settings: RecordSettings) -> str:
    """What a run did with special-token positions (BOS, ...): "excluded" (the default) or "included"."""
    return "included" if settings.include_special else "excluded"


def window_block(s: RecordSettings) -> tuple[int, int]:
    """[first, end) window positions a run streams: all `max_tokens // ctx`, or its shard's block."""
    total = max(s.max_tokens // s.ctx, 1)
    return ShardSpec.parse(s.shard).windows(total) if s.shard else (0, total)


def checkpoint_path(db_path: Path, run_id: str) -> Path:
    return db_path.with_name(db_path.name + ".ckpt") / f"{run_id}.pt"


def load_checkpoint(path: Path) -> dict:
    """A checkpoint written by this version, or a UserError saying to delete it."""
    try:
        saved = torch.load(path, weights_only=False)
    except Exception as e:  # noqa: BLE001 - torch raises many kinds for a damaged file
        raise UserError(
            f"The checkpoint {path} is unreadable ({type(e).__name__}); delete it to record this run "
            "from the start."
        ) from e
    if not isinstance(saved, dict) or saved.get("format") != CHECKPOINT_FORMAT:
        raise UserError(
            f"The checkpoint {path} was written by another autointerp version; "
            "delete it to record this run from the start."
        )
    return saved


def batches(windows: Iterator[list[int]], size: int, max_windows: int) -> Iterator[torch.Tensor]:
    it = itertools.islice(windows, max_windows)
    while chunk := list(itertools.islice(it, size)):
        yield torch.tensor(chunk, dtype=torch.long)


class Recorder:
    """Runs one recording: settings + subject model + unit sources -> units and examples in a store."""

    def __init__(
        self,
        subject: SubjectModel,
        settings: RecordSettings,
        sources: list[UnitSource],
        run_key: dict | None = None,
    ):
        """`run_key`: what else decides the result beyond `settings` (hashed into the run id)."""
        self.subject = subject
        self.settings = settings
        self.sources = sources
        self.run_key = run_key
        self.hooks = sorted({h for s in sources for h in s.hooks})
        # Buffers, statistics, SAE encoders and keys live where the model runs: no per-batch host copy.
        self.device = torch.device(getattr(subject.model.cfg, "device", None) or "cpu")
        ids = [] if settings.include_special else subject.special_ids
        self.special_ids = torch.tensor(ids, dtype=torch.long, device=self.device) if ids else None
        # Keys a head's activation and sources leave out: BOS and special tokens, also with --keep-bos.
        # (None when no head is recorded: the per-batch mask is then never needed.)
        heads = any(s.head is not None for s in sources)
        self.key_ids = (
            torch.tensor(subject.special_ids, dtype=torch.long, device=self.device)
            if heads and subject.special_ids
            else None
        )

    def special_positions(self, toks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(window, position) indices of the special tokens in `toks` (B, T), or None to keep them all."""
        if self.special_ids is None:
            return None
        return torch.isin(toks, self.special_ids).nonzero(as_tuple=True)

    def forward(self, toks: torch.Tensor) -> dict[str, torch.Tensor]:
        """One forward pass, stopped after the last needed layer; returns the hooks' activations."""
        if not self.hooks:  # every source reads token ids: no forward pass
            return {}
        return self.subject.hook_acts(toks, self.hooks, to_cpu=False)

    def run(self, store: Store, progress: Callable[[int, int], None] | None = None) -> RecordResult:
        """Record (or resume) the run; UserError when another process is recording it there. If it fails
        or is interrupted after starting, its row ends `failed` with the error, never `running`; the rerun
        resumes from the checkpoint."""
        run_id = run_id_for(self.settings, self.run_key)
        self._started = False
        with store.claim_run(run_id, "recording"):
            try:
                return self._run(store, run_id, progress)
            except BaseException as e:
                if self._started:  # only the row this process started
                    error = "interrupted" if isinstance(e, KeyboardInterrupt) else repr(e)
                    store.finish_run(run_id, "failed", {"error": error})
                raise

    def _run(self, store: Store, run_id: str, progress: Callable[[int, int], None] | None) -> RecordResult:
        s = self.settings
        existing = store.get_run(run_id)
        if existing and existing.status == "complete":
            return RecordResult(run_id, 0, 0, 0.0, 0.0, already_complete=True)
        check_shard_store(store, s)
        t0 = time.perf_counter()
        dev = self.device
        states = {
            src.key: SourceState.new(s, src.indices, src.key, dev, TOP_SOURCES if src.head else 0)
            for src in self.sources
        }
        ckpt = checkpoint_path(store.path, run_id)
        done_windows = 0
        if ckpt.exists():
            saved = load_checkpoint(ckpt)
            done_windows = saved["windows_done"]
            for key, st in states.items():
                for name, buf in st.buffers().items():
                    buf.load(saved["states"][key][name])
                st.stats.load(saved["states"][key]["stats"])
        resumed_from = done_windows
        store.start_run(
            RunRecord(
                id=run_id,
                kind="record",
                settings=s.model_dump(),
                code_version=code_version(),
                started_at=existing.started_at if existing else now(),
            )
        )
        self._started = True
        # A shard streams its contiguous block [first, end) of the run's windows; wids stay global.
        first, end = window_block(s)
        max_windows = end - first
        windows = corpus.windows(s.corpus, self.subject.tokenizer, s.ctx, self.subject.bos_id, s.encoding)
        windows = itertools.islice(windows, first + done_windows, None)
        last_ckpt = time.perf_counter()
        if progress:  # where streaming starts (after the model load, after a resumed checkpoint)
            progress(done_windows * s.ctx, max_windows * s.ctx)
        for toks in batches(windows, s.batch_size, max_windows - done_windows):
            toks = toks.to(dev, non_blocking=True)
            hook_acts = self.forward(toks)
            toks32 = toks.to(torch.int32)
            start = first + done_windows
            wids = torch.arange(start, start + toks.shape[0], device=dev)
            special = self.special_positions(toks)
            key_mask = torch.isin(toks, self.key_ids) if self.key_ids is not None else None
            for src in self.sources:
                sources = None
                if src.head is not None:
                    acts, src_pos, src_w = src.head.read(hook_acts, key_mask)
                    sources = (src_pos, src_w)
                elif src.from_tokens is not None:
                    acts = src.from_tokens(toks.cpu()).to(dev)
                else:
                    acts = src.unit_acts(hook_acts[src.hook])
                states[src.key].update(acts.float(), toks32, wids, special, sources)
            done_windows += toks.shape[0]
            if progress:
                progress(done_windows * s.ctx, max_windows * s.ctx)
            if time.perf_counter() - last_ckpt > CHECKPOINT_EVERY_S:
                self._checkpoint(ckpt, done_windows, states)
                last_ckpt = time.perf_counter()
        if done_windows == 0:
            if s.shard:
                raise UserError(
                    f"Shard {s.shard} holds no window: the corpus ends before window {first:,}; "
                    "use fewer shards or add text."
                )
            raise UserError(
                f"The corpus is shorter than one window of {s.ctx} tokens; add text or lower --ctx."
            )
        self._checkpoint(ckpt, done_windows, states)  # the write below may still be killed
        gc.disable()  # hundreds of thousands of short-lived rows: collection passes would only cost time
        try:
            units, examples = self._collect(run_id, states)
            store.write_units(units, examples)
        finally:
            gc.enable()
        seconds = time.perf_counter() - t0
        n_tokens = (done_windows - resumed_from) * s.ctx
        summary = {
            "windows": done_windows,
            "tokens": done_windows * s.ctx,
            "units": len(units),
            "special_tokens": special_tokens(s),
            "special_positions": done_windows * s.ctx - units[0].stats.n_tokens if units else 0,
        }
        if s.shard:  # what `autointerp merge` needs to join this shard with the others
            base = run_id_for(s.model_copy(update={"shard": None}), self.run_key)
            summary["shard"] = {"spec": s.shard, "run_id": base, "first_window": first}
        store.finish_run(run_id, "complete", summary)
        ckpt.unlink(missing_ok=True)
        return RecordResult(
            run_id=run_id,
            n_units=len(units),
            n_tokens=done_windows * s.ctx,
            seconds=seconds,
            tokens_per_s=n_tokens / seconds if seconds else 0.0,
            resumed_from=resumed_from * s.ctx,
            per_source={src.key: len(src.indices) for src in self.sources},
        )

    @staticmethod
    def _checkpoint(path: Path, done: int, states: dict[str, SourceState]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)

        def host(state: dict) -> dict:
            return {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in state.items()}

        blob = {
            "format": CHECKPOINT_FORMAT,
            "windows_done": done,
            "states": {
                key: {
                    **{n: host(b.state()) for n, b in st.buffers().items()},
                    "stats": host(st.stats.state()),
                }
                for key, st in states.items()
            },
        }
        tmp = path.with_suffix(".tmp")
        torch.save(blob, tmp)
        tmp.replace(path)

    def _collect(self, run_id: str, states: dict[str, SourceState]) -> tuple[list[Unit], ExampleRows]:
        """Units and their examples from the buffers, column-wise (no Python object per example)."""
        units: list[Unit] = []
        cols: dict[str, list[np.ndarray]] = {k: [] for k in ("unit_ids", "kinds", "ranks", "quantiles")}
        acts_parts, toks_parts, wid_parts, src_parts, srcw_parts, head_parts = [], [], [], [], [], []
        with_sources = any(src.head is not None for src in self.sources)
        for src in self.sources:
            st = states[src.key]
            refs = [
                UnitRef(model=self.subject.short, hook=src.hook, index=i, sae=src.sae) for i in src.indices
            ]
            stats = st.stats.all_stats()
            units += [
                Unit.model_construct(ref=r, run_id=run_id, stats=x) for r, x in zip(refs, stats, strict=True)
            ]
            ids = np.array([r.id for r in refs], dtype=object)
            for kind, buf in st.buffers().items():
                _, acts, toks, wids = buf.sorted()  # each unit's filled slots first
                filled = np.array(buf.filled)
                keep, rank, quantile = kind_rows(kind, acts, filled, self.settings.n_quantiles)
                cols["unit_ids"].append(np.repeat(ids, filled))
                cols["kinds"].append(np.full(int(filled.sum()), kind, dtype=object))
                cols["ranks"].append(rank[keep])
                cols["quantiles"].append(quantile[keep])
                acts_parts.append(acts[keep])
                toks_parts.append(toks[keep])
                wid_parts.append(wids[keep])
                if with_sources:  # rows of other units get empty sources, and no attn in the store
                    src_w = buf.sorted_sources()
                    n = int(keep.sum())
                    shape = (n, self.settings.ctx, TOP_SOURCES)
                    src_parts.append(src_w[0][keep] if src_w else np.full(shape, -1, dtype=np.int16))
                    srcw_parts.append(src_w[1][keep] if src_w else np.zeros(shape, dtype=np.float32))
                    head_parts.append(np.full(n, src_w is not None))
        context_ids, contexts = self._contexts(np.concatenate(toks_parts), np.concatenate(wid_parts))
        return units, ExampleRows(
            **{k: np.concatenate(v) for k, v in cols.items()},
            context_ids=context_ids,
            acts=np.concatenate(acts_parts),
            provenance={"run_id": run_id, "special_tokens": special_tokens(self.settings)},
            contexts=contexts,
            windows=np.concatenate(wid_parts),
            attn_src=np.concatenate(src_parts) if with_sources else None,
            attn_w=np.concatenate(srcw_parts) if with_sources else None,
            attn_rows=np.concatenate(head_parts) if with_sources else None,
        )

    def _contexts(self, toks: np.ndarray, wids: np.ndarray) -> tuple[np.ndarray, dict[str, Context]]:
        """Per row of `toks` (N, T) its context id, and each distinct window (by `wids`) once."""
        if (wids < 0).any():
            raise ValueError("a kept window has no stream position; KeyedTopK.update was given no wids")
        _, first, inverse = np.unique(wids, return_index=True, return_inverse=True)
        contexts: dict[str, Context] = {}
        ids = []
        for row in toks[first]:
            cid = hashlib.sha1(np.ascontiguousarray(row, dtype=np.int32).tobytes()).hexdigest()[:16]
            token_ids = row.tolist()
            contexts[cid] = Context.model_construct(
                id=cid, token_ids=token_ids, tokens=self.subject.token_strs(token_ids)
            )
            ids.append(cid)
        return np.array(ids, dtype=object)[inverse.reshape(-1)], contexts


def kind_rows(
    kind: str, acts: np.ndarray, filled: np.ndarray, n_quantiles: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For a kind's buffer in key order, acts (U, k, T) with `filled` (U,) slots used per unit: which
    slots to keep (U, k), their ranks and their quantile groups (-1: not a quantile example). Ranks
    follow key order; the quantile pool is ranked by max activation ascending and cut into groups."""
    k = acts.shape[1]
    slot = np.arange(k)
    keep = slot < filled[:, None]  # (U, k)
    rank = np.broadcast_to(slot, keep.shape)
    quantile = np.full(keep.shape, -1)
    if kind == "quantile":  # the uniform pool of firing windows, cut into equal-count groups
        order = np.argsort(np.where(keep, acts.max(-1), np.inf), axis=1, kind="stable")
        rank = np.argsort(order, axis=1)  # rank by max activation, ascending
        groups = quantile_groups(filled, k, n_quantiles)
        quantile = np.take_along_axis(groups, rank, axis=1)
    return keep, rank, quantile


def quantile_groups(filled: np.ndarray, k: int, n_quantiles: int) -> np.ndarray:
    """(U, k): for slot r of a unit with n filled slots (sorted ascending), its group among
    min(n_quantiles, n) near-equal groups, as numpy.array_split cuts them (the first n % g one larger)."""
    n = filled[:, None]
    g = np.clip(np.minimum(n_quantiles, n), 1, None)
    base, extra = n // g, n % g
    big = extra * (base + 1)
    r = np.arange(k)[None, :]
    return np.where(r < big, r // (base + 1), extra + (r - big) // np.maximum(base, 1))


def check_shard_store(store: Store, s: RecordSettings) -> None:
    """A UserError when `store` already holds another shard (or the whole) of the recording `s` is a
    shard of: shards share unit ids, so each needs its own store."""
    if s.shard:
        ShardSpec.parse(s.shard)
    own = run_id_for(s)
    mine = s.model_dump(exclude={"shard"})
    for run in store.runs("record"):
        if run.id == own or not (run.settings.get("shard") or s.shard):
            continue
        try:
            theirs = RecordSettings(**run.settings).model_dump(exclude={"shard"})
        except ValueError:
            continue
        if theirs == mine:
            held = f"shard {run.settings['shard']}" if run.settings.get("shard") else "the whole run"
            raise UserError(
                f"{store.path} already holds {held} of this recording; give each shard its own --db."
            )


def neuron_sources(subject: SubjectModel, hooks: list[str], units: list[int] | None) -> list[UnitSource]:
    """One source per hook, slicing out the requested neuron indices (all when None)."""
    out = []
    for hook in hooks:
        width = subject.check_hook(hook)
        check_indices(hook, width, units)
        indices = list(range(width)) if units is None else units
        out.append(UnitSource(hook=hook, indices=indices))
    return out


def head_sources(subject: SubjectModel, spec: list[str], activation: str) -> list[UnitSource]:
    """One source per layer among the heads of `spec` (["all"] or ["L.H", ...]), each head checked."""
    heads = check_heads(subject.head_counts, parse_heads(",".join(spec)) or [], subject.name)
    return [
        UnitSource(hook=head_hook(r.layer), indices=r.heads, head=r)
        for r in head_readers(subject.model, heads, activation)
    ]


def record_units(
    db: str | Path,
    hooks: list[str],
    units: list[int] | None = None,
    model: str = "gemma-3-270m",
    model_path: str | None = None,
    subject: SubjectModel | None = None,
    progress: Callable[[int, int], None] | None = None,
    saes: dict[str, str] | None = None,
    heads: str | None = None,
    **settings,
) -> RecordResult:
    """Record neurons of `hooks` (all, or the `units` indices) into the store at `db`.

    `heads` ("all" or "3.1,5.0": LAYER.HEAD) also records those attention heads as units
    `MODEL/blocks.L.attn/head:H`, in the same forward pass; `head_activation` ("max-attn", the default,
    or "out-norm") is a setting (see `autointerp.subject.heads`).

    `saes` maps a hook to an SAE directory (or "embedded"): that hook records the SAE's latents
    (all, or the `units` latent indices) instead of its neurons; its hook need not be in `hooks`.

    Extra keyword arguments are RecordSettings fields (corpus, encoding, max_tokens, ctx, batch_size, top_k,
    include_special: keep BOS and other special-token positions, ...). Settings, store, corpus and
    (once the model has loaded before) hooks and indices are checked before the model loads. The run is
    named by a hash of the settings, SAE content hashes included, so replaced SAE weights make a new run.
    A run with the same settings resumes from its checkpoint, or does nothing when already complete.
    """
    store = Store(db)  # open (and check) the store before the slow model load
    name = subject.name if subject else model
    sae_paths, sae_hashes = {}, {}
    if saes:
        from autointerp.subject.sae import resolve_sae_path, sae_sha256

        sae_paths = {h: str(resolve_sae_path(p).resolve()) for h, p in saes.items()}
        sae_hashes = {h: sae_sha256(p) for h, p in sae_paths.items()}
    all_hooks = list(dict.fromkeys([*hooks, *sae_paths]))
    head_list = parse_heads(heads)
    head_spec = [] if head_list is None else (head_names(head_list) or ["all"])
    if not all_hooks and not head_spec:
        raise UserError("Nothing to record; give a hook, an SAE or heads (e.g. --heads all).")
    s = RecordSettings(
        model=name,
        hooks=all_hooks,
        units=units,
        sae=sae_paths,
        sae_sha256=sae_hashes,
        heads=head_spec,
        **settings,
    )
    # Everything that can fail without the model fails here, before the ~30 s load.
    existing = store.get_run(run_id_for(s))
    if existing and existing.status == "complete":
        return RecordResult(existing.id, 0, 0, 0.0, 0.0, already_complete=True)
    check_shard_store(store, s)
    corpus.check_sources(s.corpus, s.encoding)
    if subject is None:  # a given subject checks its hooks itself below, at no cost
        precheck_hooks(name, model_path, [h for h in all_hooks if h not in sae_paths], units)
        precheck_hooks(name, model_path, list(sae_paths), None)
        if head_list and (counts := known_head_counts(name, model_path)):
            check_heads(counts, head_list, name)
        subject = load_subject(model, model_path)
    sae_sources = []
    if sae_paths:
        from autointerp.subject.sae import sae_source

        sae_sources = [sae_source(subject, p, hook=h, latents=units)[0] for h, p in sae_paths.items()]
    sources = neuron_sources(subject, [h for h in all_hooks if h not in s.sae], units) + sae_sources
    if head_spec:
        sources += head_sources(subject, head_spec, s.head_activation)
    return Recorder(subject, s, sources).run(store, progress=progress)
