"""The subject model: a TransformerLens HookedTransformer, the embedded Gemma 3 270M by default."""

from __future__ import annotations

import os
import re
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from autointerp import assets
from autointerp.errors import UserError

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


class SubjectModel:
    """A loaded subject model with what the recorder needs: hooks, their widths, token strings, and the
    one hooked forward pass (`hook_acts`) the recorder, the counterfactual probe and SAE training use."""

    def __init__(self, name: str, model, tokenizer):  # noqa: ANN001 - HookedTransformer, HF tokenizer
        self.name = name
        self.model = model
        self.tokenizer = tokenizer
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

        toks = torch.tensor([[self.bos_id or 0, 1]])
        acts = self.hook_acts(toks, list(self.model.hook_dict), to_cpu=False)
        return {h: a.shape[-1] for h, a in acts.items() if a.ndim == 3}

    def check_hook(self, hook: str) -> int:
        """The hook's width, or a clear error listing valid hooks."""
        if hook not in self.unit_hooks:
            layer0 = sorted(h for h in self.unit_hooks if h.startswith("blocks.0."))
            raise UserError(
                f"{hook!r} is not a hook of {self.name} with one vector per token; valid hooks are "
                f"blocks.L.<name> for L in 0..{self.n_layers - 1} with <name> one of "
                f"{', '.join(h.removeprefix('blocks.0.') for h in layer0)}."
            )
        return self.unit_hooks[hook]

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
    if name in assets.HF_IDS and path is None:
        path = str(assets.ensure_model(name))
        tl_name = assets.HF_IDS[name]
    else:
        try:
            tl_name = get_official_model_name(name)
        except ValueError as e:
            raise UserError(
                f"{name!r} is neither the embedded {assets.SUBJECT_DEFAULT} nor a model TransformerLens "
                "supports; pick a name from transformer_lens.loading.OFFICIAL_MODEL_NAMES."
            ) from e
    source = path or tl_name
    if path is not None and not Path(path).is_dir():
        raise UserError(f"--model-path {path} is not a directory; point it at a Hugging Face model folder.")
    try:
        hf = AutoModelForCausalLM.from_pretrained(source, dtype=dtype)
        tok = AutoTokenizer.from_pretrained(source)
    except OSError as e:
        raise UserError(
            f"No local weights for {name!r}; download them on a machine with network access "
            f"(`hf download {tl_name}`) into the Hugging Face cache, or pass --model-path DIR."
        ) from e
    assets.strip_quantization(hf)
    with torch.no_grad():
        model = HookedTransformer.from_pretrained_no_processing(
            tl_name, hf_model=hf, tokenizer=tok, device=device, dtype=dtype
        )
    model.eval()
    return SubjectModel(name=name, model=model, tokenizer=tok)
