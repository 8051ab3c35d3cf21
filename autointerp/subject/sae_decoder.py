"""SAE decoder rows without torch, read from the weights the recording run used (safetensors, as numpy):
the viewer's neighbours, and the output direction of a latent (steering, `output_effect`)."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from autointerp.store import Store
from autointerp.types import Unit

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


def decoder_row(path: Path, index: int) -> np.ndarray:
    return decoder(str(path), path.stat().st_mtime_ns)[index]
