"""Neighbours of an SAE latent by decoder cosine, read from the weights the recording run used."""

from __future__ import annotations

import functools

import numpy as np

from autointerp.store import Store
from autointerp.subject.sae_decoder import decoder, sae_weights
from autointerp.types import Unit
from autointerp.viewer.pages import Neighbour


@functools.lru_cache(maxsize=2)
def _unit_rows(path: str, mtime_ns: int) -> np.ndarray:
    w = decoder(path, mtime_ns)
    return w / np.maximum(np.linalg.norm(w, axis=1, keepdims=True), 1e-12)


def neighbours(store: Store, unit: Unit, k: int = 10) -> tuple[list[Neighbour] | None, str]:
    """The k latents of the same SAE whose decoder rows are nearest in cosine, or None and why not."""
    path, why = sae_weights(store, unit)
    if path is None:
        return None, why
    try:
        rows = _unit_rows(str(path), path.stat().st_mtime_ns)
    except ImportError:
        return None, "reading SAE weights needs the safetensors package (pip install safetensors)"
    except (OSError, KeyError, ValueError) as e:
        return None, f"the SAE weights at {path} could not be read ({e})"
    i = unit.ref.index
    if i >= len(rows):
        return None, f"latent {i} is outside the SAE's {len(rows)} latents"
    cos = rows @ rows[i]
    cos[i] = -np.inf
    order = np.argsort(-cos)[: min(k, len(rows) - 1)]
    ids = [unit.ref.model_copy(update={"index": int(j)}).id for j in order]
    recorded = store.existing_unit_ids(ids)
    return [
        Neighbour(unit_id=uid, cosine=round(float(cos[j]), 4), recorded=uid in recorded)
        for uid, j in zip(ids, order, strict=True)
    ], ""
