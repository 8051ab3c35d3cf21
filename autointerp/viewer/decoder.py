"""SAE decoder rows without torch: neighbours of a latent by decoder cosine, read from the weights the
recording run used (safetensors, as numpy)."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from autointerp.store import Store
from autointerp.types import Unit
from autointerp.viewer.pages import Neighbour

WEIGHTS_FILE = "sae_weights.safetensors"


def sae_weights(store: Store, unit: Unit) -> tuple[Path | None, str]:
    """The weights file of the SAE a latent was recorded from, or None and why it is not available."""
    if unit.ref.sae is None:
        return None, "neighbours by decoder cosine exist for SAE latents only"
    run = store.get_run(unit.run_id)
    settings = run.settings if run else {}
    folder = (settings.get("sae") or {}).get(unit.ref.hook)
    digest = (settings.get("sae_sha256") or {}).get(unit.ref.hook, "")
    if not folder:
        return None, "the recording run names no SAE folder"
    path = Path(folder) / WEIGHTS_FILE
    if not path.is_file():
        return None, f"the SAE weights are not available here ({path} is missing)"
    if not unit.ref.sae.endswith("-" + digest[:8]):
        return None, f"the SAE at {folder} is not the one recorded ({unit.ref.sae})"
    return path, ""


@functools.lru_cache(maxsize=2)
def decoder(path: str, mtime_ns: int) -> np.ndarray:
    """W_dec (d_sae, d_in) as float32; `mtime_ns` keys the cache so a replaced file is read again."""
    from safetensors import safe_open

    with safe_open(path, framework="np") as f:
        return np.asarray(f.get_tensor("W_dec"), dtype=np.float32)


@functools.lru_cache(maxsize=2)
def _unit_rows(path: str, mtime_ns: int) -> np.ndarray:
    w = decoder(path, mtime_ns)
    return w / np.maximum(np.linalg.norm(w, axis=1, keepdims=True), 1e-12)


def decoder_row(path: Path, index: int) -> np.ndarray:
    return decoder(str(path), path.stat().st_mtime_ns)[index]


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
