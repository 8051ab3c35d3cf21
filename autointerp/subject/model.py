"""The subject model: a TransformerLens HookedTransformer, the embedded Gemma 3 270M by default."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel

from autointerp import assets
from autointerp.errors import UserError
from autointerp.types import HEAD_HOOK_RE

if TYPE_CHECKING:
    import torch

# Never hang on a hub call: a user with network access who wants downloads sets HF_HUB_OFFLINE=0.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

_LAYER_RE = re.compile(r"^blocks\.(\d+)\.")


def short_name(model: str) -> str:
    """The name a model goes by in unit ids: the embedded name or the last part of a hub id."""
    return model.rstrip("/").split("/")[-1]


def device_and_dtype():  # noqa: ANN201 - (str, torch.dtype)
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    return device, torch.bfloat16


def hooks_cache(name: str, path: str | None = None) -> Path:
    """Where a model's hook widths are kept once it has loaded (so later runs check hooks before loading)."""
    key = (
        name
        if path is None
        else f"{short_name(name)}-{hashlib.sha1(str(Path(path).resolve()).encode()).hexdigest()[:8]}"
    )
    return assets.home() / "hooks" / f"{re.sub(r'[^A-Za-z0-9._-]+', '-', key)}.json"


def known_hook_widths(name: str, path: str | None = None) -> dict[str, int] | None:
    """The hook widths a previous load of this model wrote, or None."""
    try:
        widths = json.loads(hooks_cache(name, path).read_text())
    except (OSError, ValueError):
        return None
    return widths if isinstance(widths, dict) and widths else None


def check_hook(widths: dict[str, int], hook: str, model: str) -> int:
    """The hook's width among `widths`, or a UserError listing the valid hooks."""
    if m := HEAD_HOOK_RE.match(hook):
        raise UserError(
            f"{hook!r} names the attention heads of layer {m['layer']}, not a hook; record them with "
            f"--heads {m['layer']}.0 (or --heads all)."
        )
    if hook not in widths:
        layer0 = sorted(h for h in widths if h.startswith("blocks.0.") and not HEAD_HOOK_RE.match(h))
        n_layers = 1 + max((int(m[1]) for h in widths if (m := _LAYER_RE.match(h))), default=0)
        raise UserError(
            f"{hook!r} is not a hook of {model} with one vector per token; valid hooks are "
            f"blocks.L.<name> for L in 0..{n_layers - 1} with <name> one of "
            f"{', '.join(h.removeprefix('blocks.0.') for h in layer0)}."
        )
    return widths[hook]


def check_indices(hook: str, width: int, indices: list[int] | None) -> None:
    """A UserError when a unit index is outside the hook's width."""
    bad = [i for i in indices or [] if not 0 <= i < width]
    if bad:
        raise UserError(
            f"Unit index {bad[0]} is out of range for {hook}, which has {width} units (0..{width - 1})."
        )


class ModelShape(BaseModel):
    """What a model's configuration says about its hooks, read without loading any weights."""

    n_layers: int
    d_model: int | None = None
    d_mlp: int | None = None  # None: no MLP, or experts (no single width)


# The embedded subject model's shape (its weights are pinned by sha256, so this cannot drift).
EMBEDDED_SHAPES = {assets.SUBJECT_DEFAULT: ModelShape(n_layers=18, d_model=640, d_mlp=2048)}

# Per block, every hook name TransformerLens' HookedTransformer gives one vector per token (the union over
# architectures: a model has a subset), with the width it has; and its hooks with a vector per head.
_BLOCK_VECTOR_HOOKS = {
    **dict.fromkeys(
        [
            "hook_resid_pre",
            "hook_resid_mid",
            "hook_resid_post",
            "hook_attn_out",
            "hook_mlp_out",
            "hook_mlp_in",
        ],
        "d_model",
    ),
    **{f"{ln}.hook_normalized": "d_model" for ln in ("ln1", "ln2", "ln1_post", "ln2_post")},
    **{f"{ln}.hook_scale": "one" for ln in ("ln1", "ln2", "ln1_post", "ln2_post", "mlp.ln")},
    **dict.fromkeys(["mlp.hook_pre", "mlp.hook_pre_linear", "mlp.hook_mid", "mlp.hook_post"], "d_mlp"),
    "mlp.ln.hook_normalized": "d_mlp",
    "attn.hook_attn_input": "d_model",  # shortformer position embeddings
    **dict.fromkeys(["mlp.hook_expert_weights", "mlp.hook_expert_indices"], "unknown"),  # mixtures of experts
}
_EXPERT_RE = re.compile(r"^mlp\.experts\.\d+\.hook_(pre|pre_linear|gate|post)$")
_BLOCK_HEAD_HOOKS = {
    "hook_attn_in",
    "hook_q_input",
    "hook_k_input",
    "hook_v_input",
    *(f"attn.hook_{n}" for n in ("q", "k", "v", "z", "attn_scores", "pattern", "result", "rot_q", "rot_k")),
    *(f"attn.{n}_norm.hook_{h}" for n in ("q", "k") for h in ("scale", "normalized")),  # Gemma 3's QK norms
}
_TOP_HOOKS = {"hook_embed": "d_model", "hook_pos_embed": "d_model", "ln_final.hook_normalized": "d_model"}
_TOP_HOOKS.update({"ln_final.hook_scale": "one", "unembed.hook_in": "d_model", "unembed.hook_out": "unknown"})
# Config keys of the number of layers / d_model / d_mlp across Hugging Face architectures.
_LAYER_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")
_DMODEL_KEYS = ("hidden_size", "n_embd", "d_model")
_DMLP_KEYS = ("intermediate_size", "n_inner", "ffn_dim", "d_ff")
_EXPERT_KEYS = ("num_experts", "num_local_experts", "n_routed_experts")


def shape_from_hf_config(cfg: dict) -> ModelShape | None:
    """The shape a Hugging Face config.json gives, or None when it names no number of layers."""
    cfg = {**cfg, **(cfg.get("text_config") or {})}
    n_layers = next((cfg[k] for k in _LAYER_KEYS if isinstance(cfg.get(k), int)), None)
    if n_layers is None:
        return None
    d_model = next((cfg[k] for k in _DMODEL_KEYS if isinstance(cfg.get(k), int)), None)
    d_mlp = next((cfg[k] for k in _DMLP_KEYS if isinstance(cfg.get(k), int)), None)
    if d_mlp is None and "n_inner" in cfg and d_model:  # GPT-2 style: n_inner null means 4 x d_model
        d_mlp = 4 * d_model
    if any(cfg.get(k) for k in _EXPERT_KEYS):
        d_mlp = None
    return ModelShape(n_layers=n_layers, d_model=d_model, d_mlp=d_mlp)


def check_model_path(path: str) -> dict:
    """A --model-path folder's config.json; a UserError in one sentence when it is not usable."""
    folder = Path(path)
    if not folder.is_dir():
        raise UserError(f"--model-path {path} is not a directory; point it at a Hugging Face model folder.")
    cfg_file = folder / "config.json"
    try:
        cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(
            f"--model-path {path} has no config.json; point it at a Hugging Face model folder "
            "(config.json, the weights and the tokenizer)."
        ) from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise UserError(
            f"--model-path {path} has a damaged config.json ({type(e).__name__}: {e}); restore or "
            "re-download the model folder."
        ) from e
    if not isinstance(cfg, dict):
        raise UserError(f"--model-path {path} has a config.json that is not a JSON object; restore it.")
    return cfg


def model_shape(name: str, path: str | None) -> ModelShape | None:
    """The model's shape from its configuration alone (no weights): the --model-path folder's config.json,
    the embedded model's known shape, or TransformerLens' config of a named model; None if unknown."""
    if path is not None:
        return shape_from_hf_config(check_model_path(path))
    if name in EMBEDDED_SHAPES:
        return EMBEDDED_SHAPES[name]
    try:
        from transformer_lens.loading_from_pretrained import (
            get_official_model_name,
            get_pretrained_model_config,
        )
    except ImportError:  # no local extra: `record` says so before this
        return None
    try:
        official = get_official_model_name(name)
    except ValueError as e:
        raise UserError(unknown_model(name)) from e
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            cfg = get_pretrained_model_config(official)
    except Exception:  # noqa: BLE001 - its config is not in the local cache: the load says so
        return None
    return ModelShape(n_layers=cfg.n_layers, d_model=cfg.d_model, d_mlp=None if cfg.attn_only else cfg.d_mlp)


def unknown_model(name: str) -> str:
    return (
        f"{name!r} is neither the embedded {assets.SUBJECT_DEFAULT} nor a model TransformerLens "
        "supports; pick a name from transformer_lens.loading.OFFICIAL_MODEL_NAMES."
    )


def check_hook_by_shape(shape: ModelShape, hook: str, model: str) -> int | None:
    """Check a hook name against what the model's shape allows (before it loads): a UserError when no
    model of that shape has it; its width where the shape gives it, else None."""
    m = _LAYER_RE.match(hook)
    rest = hook[m.end() :] if m else hook
    kinds = _BLOCK_VECTOR_HOOKS if m else _TOP_HOOKS
    last = shape.n_layers - 1
    if m and int(m[1]) > last:
        raise UserError(
            f"{hook!r} names layer {m[1]}, but {model} has {shape.n_layers} layers "
            f"(blocks.0 .. blocks.{last})."
        )
    if m and _EXPERT_RE.match(rest):
        return None  # an expert's MLP: its width is the expert's
    if rest not in kinds:
        why = (
            "has one vector per head, not one per token"
            if m and rest in _BLOCK_HEAD_HOOKS
            else "is not a hook"
        )
        raise UserError(
            f"{hook!r} {why} of {model}; valid hooks are blocks.L.<name> for L in 0..{last} with <name> "
            "one of hook_resid_pre, hook_resid_mid, hook_resid_post, hook_attn_out, hook_mlp_out, "
            "mlp.hook_pre, mlp.hook_post (gated MLPs: mlp.hook_pre_linear)."
        )
    return {"d_model": shape.d_model, "d_mlp": shape.d_mlp, "one": 1}.get(kinds[rest])


def known_head_counts(name: str, path: str | None = None) -> dict[str, int] | None:
    """Unit hook (`blocks.L.attn`) -> number of query heads, as a previous load wrote them, or None."""
    widths = known_hook_widths(name, path)
    if widths is None:
        return None
    counts = {h: n for h, n in widths.items() if HEAD_HOOK_RE.match(h)}
    return counts or None  # a cache from before heads were units: unknown


def precheck_hooks(name: str, path: str | None, hooks: list[str], units: list[int] | None) -> None:
    """Check hooks (and neuron indices of `hooks`) before the model loads: against the widths a previous
    load wrote, else against the model's configuration (number of layers, TransformerLens' hook names)."""
    widths = known_hook_widths(name, path)
    if widths:
        for hook in hooks:
            check_indices(hook, check_hook(widths, hook, name), units)
        return
    shape = model_shape(name, path)
    for hook in hooks if shape else []:
        width = check_hook_by_shape(shape, hook, name)
        if width is not None:
            check_indices(hook, width, units)


class SubjectModel:
    """A loaded subject model with what the recorder needs: hooks, their widths, token strings, and the
    one hooked forward pass (`hook_acts`) the recorder, the counterfactual probe and SAE training use."""

    def __init__(self, name: str, model, tokenizer, cache: Path | None = None):  # noqa: ANN001 - HookedTransformer, HF tokenizer
        """`cache`: a file to write the hook widths to once they are known (see `hooks_cache`)."""
        self.name = name
        self.model = model
        self.tokenizer = tokenizer
        self.cache = cache
        self._tok_str: dict[int, str] = {}

    @property
    def short(self) -> str:
        return short_name(self.name)

    @property
    def bos_id(self) -> int | None:
        return self.tokenizer.bos_token_id if self.model.cfg.default_prepend_bos else None

    @cached_property
    def special_ids(self) -> list[int]:
        """Token ids the recorder leaves out by default: the tokenizer's special tokens and BOS."""
        ids = set(getattr(self.tokenizer, "all_special_ids", None) or [])
        bos = getattr(self.tokenizer, "bos_token_id", None)
        return sorted(ids | ({bos} if bos is not None else set()))

    @property
    def n_layers(self) -> int:
        return self.model.cfg.n_layers

    def hook_acts(self, toks: torch.Tensor, hooks: list[str], to_cpu: bool = True) -> dict[str, torch.Tensor]:
        """One forward pass over token ids (B, T), stopped after the last layer the hooks need: each
        hook's activations (B, T, ...), detached, in the model's dtype, on the CPU unless `to_cpu=False`."""
        import torch

        acts: dict[str, torch.Tensor] = {}

        def grab(act: torch.Tensor, hook) -> None:  # noqa: ANN001
            acts[hook.name] = act.detach()

        with torch.no_grad():
            self.model.run_with_hooks(
                toks.to(self.model.cfg.device),
                fwd_hooks=[(h, grab) for h in hooks],
                stop_at_layer=self.stop_layer(hooks),
                return_type=None,
            )
        return {h: a.cpu() for h, a in acts.items()} if to_cpu else acts

    @cached_property
    def unit_hooks(self) -> dict[str, int]:
        """Hooks whose activation is one vector per token, with the vector's width."""
        import torch

        toks = torch.tensor([[self.bos_id or 0, 1]], device=self.model.cfg.device)
        acts = self.hook_acts(toks, list(self.model.hook_dict), to_cpu=False)
        widths = {h: a.shape[-1] for h, a in acts.items() if a.ndim == 3}
        if self.cache is not None:
            with contextlib.suppress(OSError):  # only a shortcut for the next run
                self.cache.parent.mkdir(parents=True, exist_ok=True)
                self.cache.write_text(json.dumps(widths | self.head_counts))
        return widths

    @cached_property
    def head_counts(self) -> dict[str, int]:
        """`blocks.L.attn` -> its number of query heads, for each layer whose attention pattern
        TransformerLens exposes per query head (`blocks.L.attn.hook_pattern`)."""
        from autointerp.units import head_hook

        hooks = self.model.hook_dict
        return {
            head_hook(layer): self.model.cfg.n_heads
            for layer in range(self.n_layers)
            if f"blocks.{layer}.attn.hook_pattern" in hooks
        }

    def check_hook(self, hook: str) -> int:
        """The hook's width, or a clear error listing valid hooks."""
        return check_hook(self.unit_hooks, hook, self.name)

    def stop_layer(self, hooks: list[str]) -> int | None:
        """The layer to stop the forward pass at: one past the last block any hook needs."""
        layers = []
        for hook in hooks:
            m = _LAYER_RE.match(hook)
            if not m:
                return None  # a hook outside the blocks (e.g. ln_final): run the whole model
            layers.append(int(m[1]))
        last = max(layers) + 1
        return last if last < self.n_layers else None

    def token_strs(self, ids: list[int]) -> list[str]:
        """Each token as text (leading spaces kept), decoded once per vocabulary id."""
        out = []
        for i in ids:
            s = self._tok_str.get(i)
            if s is None:
                s = self._tok_str[i] = self.tokenizer.decode([i], clean_up_tokenization_spaces=False)
            out.append(s)
        return out


def damaged(where: str, name: str, e: BaseException) -> UserError:
    """One sentence for a model folder whose files do not load."""
    detail = " ".join(str(e).split())[:160]
    return UserError(
        f"The model files of {name!r} in {where} do not load ({type(e).__name__}: {detail}); restore or "
        "re-download that folder."
    )


def load_subject(name: str = assets.SUBJECT_DEFAULT, path: str | None = None) -> SubjectModel:
    """Load the embedded model by name, or any TransformerLens model from local weights.

    `name` is the embedded name (gemma-3-270m) or a TransformerLens model name; `path` optionally
    points at a local Hugging Face directory holding that model's weights.
    """
    import torch
    from transformer_lens import HookedTransformer
    from transformer_lens.loading_from_pretrained import get_official_model_name
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device, dtype = device_and_dtype()
    cache = hooks_cache(name, path)
    user_path = path
    if path is not None:
        check_model_path(path)
    if name in assets.HF_IDS and path is None:
        path = str(assets.ensure_model(name))
        tl_name = assets.HF_IDS[name]
    else:
        try:
            tl_name = get_official_model_name(name)
        except ValueError as e:
            raise UserError(unknown_model(name)) from e
    source = path or tl_name
    try:
        hf = AutoModelForCausalLM.from_pretrained(source, dtype=dtype)
        tok = AutoTokenizer.from_pretrained(source)
    except OSError as e:
        if path is not None:
            raise damaged(path, name, e) from e
        raise UserError(
            f"No local weights for {name!r}; download them on a machine with network access "
            f"(`hf download {tl_name}`) into the Hugging Face cache, or pass --model-path DIR."
        ) from e
    except Exception as e:  # a damaged weights file, config or tokenizer (safetensors, json, ...)
        raise damaged(path or tl_name, name, e) from e
    assets.strip_quantization(hf)
    # TransformerLens prints "Loaded pretrained model ..." on stdout, which carries only our output
    try:
        with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
            model = HookedTransformer.from_pretrained_no_processing(
                tl_name, hf_model=hf, tokenizer=tok, device=device, dtype=dtype
            )
    except OSError as e:  # TransformerLens reads the hub configuration of models it has no table for
        raise UserError(
            f"TransformerLens converts {name!r} with the configuration of {tl_name} from the Hugging Face "
            f"cache, which does not hold it; fetch it where there is network access (`hf download {tl_name} "
            "config.json`) into the cache here."
        ) from e
    except Exception as e:  # weights of another architecture than `name` (shapes, missing keys)
        if user_path is None:
            raise
        raise UserError(
            f"--model-path {path} does not hold {name!r} weights TransformerLens can convert "
            f"({type(e).__name__}: {str(e)[:120]}); pass the --model its folder was saved from."
        ) from e
    model.eval()
    return SubjectModel(name=name, model=model, tokenizer=tok, cache=cache)
