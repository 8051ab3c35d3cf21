"""Train a TopK SAE on a subject model's hook, evaluate it (variance explained, loss recovered), and save
it in SAELens format (cfg.json + sae_weights.safetensors + metrics.json) loadable by `sae.load_sae`.

Activations are streamed from the corpus (forward stopped after the hook's layer), cast from bf16 to
float32, and mixed in a shuffled buffer; the BOS position is skipped (its huge norm is not a feature).
Centred inputs are scaled to mean squared norm d_in for training; the scale is folded into the saved weights.
"""

from __future__ import annotations

import itertools
import json
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from pydantic import BaseModel

from autointerp import corpus
from autointerp.errors import UserError
from autointerp.subject.model import SubjectModel
from autointerp.subject.sae import CFG_FILE, METRICS_FILE, WEIGHTS_FILE

Log = Callable[[str], None]


class SaeMetrics(BaseModel):
    """Reconstruction quality of an SAE on held-out tokens."""

    n_tokens: int
    fve: float  # fraction of variance explained (BOS excluded)
    loss_clean: float
    loss_spliced: float  # next-token loss with the SAE's reconstruction in place of the hook (BOS kept clean)
    loss_zero: float  # ... with the hook zero-ablated
    loss_recovered: float  # (zero - spliced) / (zero - clean)
    l0: float  # mean active latents per token
    dead_frac: float  # latents that never fired on these tokens


class SaeTrainResult(BaseModel):
    path: str
    name: str
    hook: str
    width: int
    k: int
    train_tokens: int
    train_windows: int  # windows of the corpus used for training: held-out evaluation starts after them
    ctx: int
    seconds: float
    tokens_per_s: float
    dead_frac_train: float  # latents that did not fire in the last `dead_tokens` training tokens
    eval: SaeMetrics


def _batches(
    subject: SubjectModel, sources: list[str], ctx: int, n_windows: int, skip: int, batch: int
) -> Iterator[torch.Tensor]:
    wins = corpus.windows(sources, subject.tokenizer, ctx, subject.bos_id)
    it = itertools.islice(wins, skip, skip + n_windows)
    while chunk := list(itertools.islice(it, batch)):
        yield torch.tensor(chunk, dtype=torch.long)


def _first(subject: SubjectModel) -> int:
    return 1 if subject.bos_id is not None else 0


class _GatherRows(torch.autograd.Function):
    """weight[idx] whose backward is one index_add_ (F.embedding's backward sorts: slow on CPU)."""

    @staticmethod
    def forward(ctx, weight: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        ctx.save_for_backward(idx)
        ctx.n_rows = weight.shape[0]
        return weight[idx]

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # noqa: ANN001
        (idx,) = ctx.saved_tensors
        out = grad.new_zeros(ctx.n_rows, grad.shape[-1])
        return out.index_add_(0, idx.reshape(-1), grad.reshape(-1, grad.shape[-1])), None


class _TopK(torch.nn.Module):
    """Training-time TopK SAE on scaled inputs.

    The dense pre-activation is computed without autograd only to pick each token's top k; the k values
    are then recomputed from gathered encoder rows, so the backward pass (like decoding) touches only
    k latents per token instead of a dense (tokens x width) gradient.
    """

    def __init__(self, d_in: int, width: int, k: int, b_dec: torch.Tensor, gen: torch.Generator):
        super().__init__()
        w = torch.randn(width, d_in, generator=gen)
        w = w / w.norm(dim=-1, keepdim=True)
        self.W_dec = torch.nn.Parameter(w)
        self.W_enc_T = torch.nn.Parameter(w.clone())  # (width, d_in): rows gather cheaply
        self.b_enc = torch.nn.Parameter(torch.zeros(width))
        self.b_dec = torch.nn.Parameter(b_dec.clone())
        self.k = k

    @torch.no_grad()
    def pre(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addmm(self.b_enc, x - self.b_dec, self.W_enc_T.T)

    def values(self, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Pre-activations of latents `idx` (N, j), differentiable: gathered encoder rows only."""
        rows = _GatherRows.apply(self.W_enc_T, idx)  # (N, j, d)
        return torch.bmm(rows, (x - self.b_dec).unsqueeze(-1)).squeeze(-1) + self.b_enc[idx]

    def decode(self, vals: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return torch.bmm(vals.unsqueeze(1), _GatherRows.apply(self.W_dec, idx)).squeeze(1)

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        self.W_dec /= self.W_dec.norm(dim=-1, keepdim=True).clamp(min=1e-8)


def _save(
    model: _TopK,
    scale: float,
    out: Path,
    hook: str,
    subject: SubjectModel,
    ctx: int,
    weights_dtype: torch.dtype,
) -> None:
    """Fold the input scale into the weights and write an SAELens TopK SAE."""
    from sae_lens import TopKSAE, TopKSAEConfig
    from sae_lens.saes.sae import SAEMetadata
    from safetensors.torch import save_file

    cfg = TopKSAEConfig(
        d_in=model.W_dec.shape[1],
        d_sae=model.W_dec.shape[0],
        k=model.k,
        dtype="float32",
        device="cpu",
        apply_b_dec_to_input=True,
        normalize_activations="none",
        metadata=SAEMetadata(
            model_name=subject.name,
            hook_name=hook,
            hook_head_index=None,
            context_size=ctx,
            prepend_bos=subject.bos_id is not None,
            dataset_path="autointerp:default",
        ),
    )
    sae = TopKSAE(cfg)
    with torch.no_grad():
        state = {
            "W_enc": model.W_enc_T.T * scale,  # (x - b_dec/s) @ (s W_enc) == (s x - b_dec) @ W_enc
            "b_enc": model.b_enc.clone(),
            "W_dec": model.W_dec / scale,
            "b_dec": model.b_dec / scale,
        }
    sae.load_state_dict({k: v.float() for k, v in state.items()})
    sd = sae.state_dict()
    sae.process_state_dict_for_saving(sd)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().to(weights_dtype).contiguous() for k, v in sd.items()}, str(out / WEIGHTS_FILE))
    (out / CFG_FILE).write_text(json.dumps(sae.cfg.to_dict(), indent=1))


def evaluate_sae(
    subject: SubjectModel,
    sae,
    hook: str,
    sources: list[str],
    n_tokens: int,  # noqa: ANN001
    ctx: int = 128,
    skip_windows: int = 0,
    batch: int = 8,
) -> SaeMetrics:
    """FVE and next-token loss (clean / SAE spliced in / zero-ablated) on `n_tokens` corpus tokens."""
    first = _first(subject)
    n_win = max(n_tokens // ctx, 1)
    sse = sum_x = sum_xx = 0.0
    n = 0
    losses = {"clean": 0.0, "spliced": 0.0, "zero": 0.0}
    n_loss = 0
    fired = torch.zeros(sae.cfg.d_sae, dtype=torch.bool)
    l0 = 0.0
    model = subject.model

    def splice(act: torch.Tensor, hook) -> torch.Tensor:  # noqa: ANN001
        x = act[:, first:].float()
        f = sae.encode(x)
        act = act.clone()
        act[:, first:] = sae.decode(f).to(act.dtype)
        return act

    def zero(act: torch.Tensor, hook) -> torch.Tensor:  # noqa: ANN001
        act = act.clone()
        act[:, first:] = 0
        return act

    with torch.no_grad():
        for toks in _batches(subject, sources, ctx, n_win, skip_windows, batch):
            store: dict[str, torch.Tensor] = {}

            def grab(act: torch.Tensor, hook) -> None:  # noqa: ANN001
                store["a"] = act.detach()  # noqa: B023 - called within this iteration

            clean = model.run_with_hooks(
                toks, fwd_hooks=[(hook, grab)], return_type="loss", loss_per_token=True
            )
            spliced = model.run_with_hooks(
                toks, fwd_hooks=[(hook, splice)], return_type="loss", loss_per_token=True
            )
            zeroed = model.run_with_hooks(
                toks, fwd_hooks=[(hook, zero)], return_type="loss", loss_per_token=True
            )
            # loss at position t predicts token t+1; score predictions made from SAE-affected positions
            for key, lo in (("clean", clean), ("spliced", spliced), ("zero", zeroed)):
                losses[key] += float(lo[:, first:].float().sum())
            n_loss += lo[:, first:].numel()
            x = store["a"][:, first:].float().reshape(-1, store["a"].shape[-1])
            f = sae.encode(x)
            sse += float((sae.decode(f) - x).square().sum())
            sum_x_vec = x.sum(0)
            sum_x = sum_x + sum_x_vec if isinstance(sum_x, torch.Tensor) else sum_x_vec
            sum_xx += float(x.square().sum())
            n += x.shape[0]
            fired |= (f > 0).any(0)
            l0 += float((f > 0).sum())
    if n == 0:
        raise UserError("The corpus is too short to evaluate the SAE; add text or lower --eval-tokens.")
    total_var = sum_xx - float((sum_x * sum_x).sum()) / n
    lc, ls, lz = (losses[k] / n_loss for k in ("clean", "spliced", "zero"))
    return SaeMetrics(
        n_tokens=n,
        fve=1 - sse / total_var,
        loss_clean=lc,
        loss_spliced=ls,
        loss_zero=lz,
        loss_recovered=(lz - ls) / (lz - lc) if lz != lc else float("nan"),
        l0=l0 / n,
        dead_frac=1 - float(fired.float().mean()),
    )


def train_sae(
    subject: SubjectModel,
    hook: str = "blocks.6.hook_resid_post",
    out: str | Path = "sae-out",
    width: int = 4096,
    k: int = 32,
    tokens: int = 1_000_000,
    corpus_sources: list[str] | None = None,
    ctx: int = 128,
    batch_size: int = 1024,
    lr: float | None = None,
    buffer_tokens: int = 1 << 17,
    passes: float = 1.0,
    aux_k: int = 256,
    aux_coef: float = 1 / 32,
    dead_tokens: int = 100_000,
    eval_tokens: int = 8192,
    weights_dtype: torch.dtype = torch.float16,
    seed: int = 0,
    log: Log | None = None,
) -> SaeTrainResult:
    """Train a TopK SAE (Adam, unit-norm decoder rows, AuxK loss on dead latents) and save it to `out`.

    `passes`: how many times each streamed token is trained on, on average (>1 reuses the buffer).
    """
    width_in = subject.check_hook(hook)
    if k < 1 or k > width or width < 1:
        raise UserError(f"--k must be between 1 and --width ({width}); fix the values.")
    sources = corpus_sources or ["default"]
    log = log or (lambda m: None)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    first = _first(subject)
    per_win = ctx - first
    n_win = max(tokens // per_win, 1)
    fwd_batch = 16
    lr = lr or 2e-4 / math.sqrt(width / 2**14) * math.sqrt(batch_size / 1024)
    t0 = time.perf_counter()

    stream = _batches(subject, sources, ctx, n_win, 0, fwd_batch)

    def fill(n: int) -> torch.Tensor:
        parts, got = [], 0
        for toks in stream:
            a = subject.hook_acts(toks, [hook])[hook][:, first:].reshape(-1, width_in)
            parts.append(a)
            got += a.shape[0]
            if got >= n:
                break
        return torch.cat(parts).float() if parts else torch.zeros(0, width_in)

    buf = fill(buffer_tokens)
    if buf.shape[0] < batch_size:
        raise UserError(
            f"The corpus gave only {buf.shape[0]} tokens; train on at least {batch_size} (--tokens)."
        )
    # scale by the spread around the mean, not the raw norm: residual streams carry large constant offsets
    scale = math.sqrt(width_in / float((buf - buf.mean(0)).square().sum(-1).mean()))
    buf *= scale
    sae = _TopK(width_in, width, k, buf.mean(0), gen)
    with torch.no_grad():  # start the dictionary on centred data points: far fewer steps to converge
        pick = torch.randint(0, buf.shape[0], (width,), generator=gen)
        rows = buf[pick] - buf.mean(0)
        rows = 0.5 * rows / rows.norm(dim=-1, keepdim=True).clamp(min=1e-8) + 0.5 * sae.W_dec
        sae.W_dec.copy_(rows / rows.norm(dim=-1, keepdim=True))
        sae.W_enc_T.copy_(sae.W_dec)
        # scale the encoder so the initial reconstruction has the right size (topk+ReLU is homogeneous)
        xs = buf[: 4 * batch_size] - sae.b_dec
        idx = sae.pre(buf[: 4 * batch_size]).topk(k, dim=-1, sorted=False).indices
        rec = sae.decode(sae.values(buf[: 4 * batch_size], idx).clamp(min=0), idx)
        sae.W_enc_T.mul_(float((xs * rec).sum() / rec.square().sum().clamp(min=1e-8)))
    opt = torch.optim.Adam(sae.parameters(), lr=lr, betas=(0.9, 0.999))
    since_fired = torch.zeros(width, dtype=torch.long)
    seen = step = 0
    total_steps = max(int(tokens * passes / batch_size), 1)
    decay_from = int(0.8 * total_steps)
    stats_t = time.perf_counter()
    while True:
        order = torch.randperm(buf.shape[0], generator=gen)
        n_train = int(buf.shape[0] * passes) if seen == 0 else int(buf.shape[0] / 2 * passes)
        idx_all = order.repeat(math.ceil(n_train / len(order)) + 1)[:n_train] if n_train else order[:0]
        mse_sum = var_sum = 0.0
        for i in range(0, n_train - batch_size + 1, batch_size):
            x = buf[idx_all[i : i + batch_size]]
            pre = sae.pre(x)
            idx = pre.topk(k, dim=-1, sorted=False).indices
            vals = sae.values(x, idx).clamp(min=0)
            recon = sae.decode(vals, idx) + sae.b_dec
            err = recon - x
            denom = (x - x.mean(0)).square().sum(-1).mean()
            loss = err.square().sum(-1).mean() / denom
            with torch.no_grad():
                fired = torch.zeros(width, dtype=torch.bool)
                fired[idx[vals > 0]] = True
                since_fired += batch_size
                since_fired[fired] = 0
            dead = since_fired > dead_tokens
            if dead.any():
                ka = min(aux_k, int(dead.sum()))
                didx = pre.masked_fill(~dead, -math.inf).topk(ka, dim=-1, sorted=False).indices
                e_hat = sae.decode(sae.values(x, didx).clamp(min=0), didx)
                e = (x - recon).detach()
                aux = (e_hat - e).square().sum(-1).mean() / e.square().sum(-1).mean().clamp(min=1e-8)
                loss = loss + aux_coef * torch.nan_to_num(aux)
            step_lr = (
                lr * min(1.0, (total_steps - step) / max(total_steps - decay_from, 1))
                if step > decay_from
                else lr
            )
            for g in opt.param_groups:
                g["lr"] = max(step_lr, lr * 0.05)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sae.normalize_decoder()
            step += 1
            mse_sum += float(err.detach().square().sum())
            var_sum += float(denom) * batch_size
        seen = seen + (buf.shape[0] if seen == 0 else buf.shape[0] // 2)
        if var_sum:
            dead_now = float((since_fired > dead_tokens).float().mean())
            el = time.perf_counter() - t0
            log(
                f"  tokens {min(seen, tokens):,}/{tokens:,}  fve {1 - mse_sum / var_sum:.3f}  "
                f"dead {dead_now:.3f}  "
                f"step {step}  {el:.0f}s"
            )
        if seen >= tokens:
            break
        fresh = fill(buf.shape[0] // 2)
        if fresh.shape[0] == 0:
            break
        keep = buf[torch.randperm(buf.shape[0], generator=gen)[: buf.shape[0] - fresh.shape[0]]]
        buf = torch.cat([keep, fresh * scale])
    train_s = time.perf_counter() - stats_t
    out = Path(out)
    _save(sae, scale, out, hook, subject, ctx, weights_dtype)
    from autointerp.subject.sae import load_sae

    saved, info = load_sae(out, hook=hook)
    train_windows = n_win
    log(f"  evaluating on {eval_tokens:,} held-out tokens")
    metrics = evaluate_sae(subject, saved, hook, sources, eval_tokens, ctx=ctx, skip_windows=train_windows)
    result = SaeTrainResult(
        path=str(out),
        name=info.name,
        hook=hook,
        width=width,
        k=k,
        train_tokens=min(seen, tokens),
        train_windows=train_windows,
        ctx=ctx,
        seconds=time.perf_counter() - t0,
        tokens_per_s=min(seen, tokens) / train_s if train_s else 0.0,
        dead_frac_train=float((since_fired > dead_tokens).float().mean()),
        eval=metrics,
    )
    (out / METRICS_FILE).write_text(json.dumps(result.model_dump(), indent=1))
    return result


def train_sae_command(
    out: str | Path,
    hook: str = "blocks.6.hook_resid_post",
    model: str = "gemma-3-270m",
    model_path: str | None = None,
    width: int = 4096,
    k: int = 32,
    tokens: int = 1_000_000,
    corpus_sources: list[str] | None = None,
    passes: float = 1.0,
    lr: float | None = None,
    eval_tokens: int = 8192,
    seed: int = 0,
    log: Log = print,
) -> SaeTrainResult:
    """What `autointerp train-sae` runs: load the subject, check the output folder, train, save, report."""
    from autointerp.subject.model import load_subject, precheck_hooks

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{out} exists and is not empty; pass a new --out folder for the SAE.")
    if tokens < 4096 or width < 1 or not 1 <= k <= width:
        raise UserError("--tokens must be >= 4096 and --k between 1 and --width; fix the values.")
    if passes <= 0 or eval_tokens < 1 or (lr is not None and lr <= 0):
        raise UserError("--passes and --lr must be > 0 and --eval-tokens >= 1; fix the values.")
    corpus.check_sources(corpus_sources or ["default"])  # before the slow model load
    precheck_hooks(model, model_path, [hook], None)
    subject = load_subject(model, model_path)
    subject.check_hook(hook)
    return train_sae(
        subject,
        hook=hook,
        out=out,
        width=width,
        k=k,
        tokens=tokens,
        corpus_sources=corpus_sources,
        passes=passes,
        lr=lr,
        eval_tokens=eval_tokens,
        seed=seed,
        log=log,
    )
