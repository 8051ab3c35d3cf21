"""The per-model head wiki: head detector scores kept in the store (`head_metrics`), computed on the store's
subject model once, and `head_table(db)`: one pandas row per head. `autointerp heads` prints it."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from autointerp.errors import UserError
from autointerp.store import Store
from autointerp.types import HeadMetrics

if TYPE_CHECKING:
    import pandas as pd

    from autointerp.subject.model import SubjectModel

COLUMNS = [
    "model", "layer", "head", "previous_token", "induction", "duplicate_token", "bos", "self_attn",
    "entropy", "mean_distance", "categories",
]  # fmt: skip


def store_model(store: Store) -> str:
    """The subject model of the store's latest recording, or a UserError saying to record or name one."""
    runs = [r for r in store.runs(kind="record") if r.settings.get("model")]
    if not runs:
        raise UserError(
            f"{store.path} holds no recording to take the subject model from; pass --model "
            "(e.g. --model gemma-3-270m) or record first."
        )
    return runs[-1].settings["model"]


def head_metrics(
    db: str | Path,
    model: str | None = None,
    model_path: str | None = None,
    recompute: bool = False,
    subject: SubjectModel | None = None,
    **settings,
) -> list[HeadMetrics]:
    """Every head's detector scores for the store's subject model (or `model`): read from the store, or
    computed on the model and stored when missing, when `recompute`, or when `settings` (DetectSettings
    fields) differ from those stored."""
    from autointerp.subject.head_detect import DetectSettings

    if not Path(db).exists():
        raise UserError(f"No store at {db}; run `autointerp record --db {db} ...` first.")
    s = DetectSettings(**settings)
    store = Store(db)
    name = subject.name if subject else model or store_model(store)
    from autointerp.subject.model import short_name

    stored = store.head_metrics(short_name(name))
    if stored and not recompute and all(m.settings == s.model_dump() for m in stored):
        return stored
    from autointerp.corpus import check_sources
    from autointerp.errors import LOCAL_STACK, require_local

    require_local("autointerp heads", LOCAL_STACK)
    check_sources(s.corpus, "utf-8")
    from autointerp.subject.head_detect import detect_heads
    from autointerp.subject.model import load_subject
    from autointerp.version import code_version

    subject = subject or load_subject(name, model_path)
    version = code_version()
    metrics = [
        m.model_copy(update={"settings": s.model_dump(), "code_version": version})
        for m in detect_heads(subject, s)
    ]
    store.put_head_metrics(metrics)
    return metrics


def head_table(db: str | Path, **kwargs) -> pd.DataFrame:
    """One row per head: its detector scores and categories (a list), as `head_metrics` gives them."""
    try:
        import pandas as pd
    except ImportError:
        raise UserError("autointerp.head_table needs pandas; install it with `pip install pandas`.") from None
    rows = [m.model_dump(include=set(COLUMNS)) for m in head_metrics(db, **kwargs)]
    return pd.DataFrame(rows, columns=COLUMNS)
