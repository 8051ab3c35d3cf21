"""Sentence embeddings with the embedded all-MiniLM-L6-v2 (transformers + mean pooling, no network).

`embed(texts)` returns L2-normalised float32 vectors (N, 384), so a dot product is a cosine similarity.
The model is loaded once per process from `assets.ensure_asset("all-minilm-l6-v2")`; its pooling is the
sentence-transformers one (mean over real tokens, 256-token limit), reproduced here without that package.
"""

from __future__ import annotations

import os
import threading

import numpy as np

from autointerp import assets

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ASSET = "all-minilm-l6-v2"
MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"  # what results record as the embedder
DIM = 384
MAX_TOKENS = 256

_LOCK = threading.Lock()
_LOADED: tuple | None = None  # (tokenizer, model)


def _load() -> tuple:
    global _LOADED
    with _LOCK:
        if _LOADED is None:
            import torch
            from transformers import AutoModel, AutoTokenizer

            path = assets.ensure_asset(ASSET)
            tok = AutoTokenizer.from_pretrained(path)
            model = AutoModel.from_pretrained(path, dtype=torch.float32).eval()
            _LOADED = (tok, model)
        return _LOADED


def embed(texts: list[str], batch_size: int = 64) -> np.ndarray:
    """(N, 384) float32, each row L2-normalised (an empty text embeds like the model's empty input)."""
    import torch

    if not texts:
        return np.zeros((0, DIM), dtype=np.float32)
    tok, model = _load()
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths: less padding
    out = np.zeros((len(texts), DIM), dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            enc = tok(
                [texts[i] for i in idx],
                padding=True,
                truncation=True,
                max_length=MAX_TOKENS,
                return_tensors="pt",
            )
            hidden = model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
            out[idx] = pooled.numpy()
    return out
