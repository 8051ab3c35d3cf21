"""autointerp: record, explain, simulate and score the units of a transformer.

The public API is imported on first use, so `import autointerp` does not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from autointerp.errors import UserError

if TYPE_CHECKING:
    from autointerp.head_wiki import head_table
    from autointerp.listing import results
    from autointerp.pipeline import label
    from autointerp.subject.recorder import record_units

__all__ = ["UserError", "head_table", "label", "record_units", "results"]
_LAZY = {
    "head_table": "autointerp.head_wiki",
    "label": "autointerp.pipeline",
    "record_units": "autointerp.subject.recorder",
    "results": "autointerp.listing",
}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'autointerp' has no attribute {name!r}")
