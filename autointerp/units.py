"""Unit specs on the command line and in the API: index lists (`0:512`, `3,17,42`) and recorded unit ids."""

from __future__ import annotations

import re

from autointerp.errors import UserError
from autointerp.store import Store
from autointerp.types import UnitRef


def parse_units(spec: str | None) -> list[int] | None:
    """`0:512`, `3,17,42` or `0:8,100` -> sorted unique indices; None or "" -> None (all)."""
    if not spec:
        return None
    out: list[int] = []
    try:
        for part in spec.split(","):
            if ":" in part:
                a, b = part.split(":")
                out.extend(range(int(a), int(b)))
            else:
                out.append(int(part))
    except ValueError:
        raise UserError(f"--units {spec!r} is not a list like 0:512 or 3,17,42; fix the value.") from None
    if not out:
        raise UserError(f"--units {spec!r} selects no unit; give a non-empty range such as 0:512.")
    return sorted(set(out))


_HEAD_RE = re.compile(r"^(\d+)\.(\d+)$")


def head_hook(layer: int) -> str:
    """The unit "hook" of layer `layer`'s heads (a name, not a TransformerLens hook point)."""
    return f"blocks.{layer}.attn"


def parse_heads(spec: str | None) -> list[tuple[int, int]] | None:
    """`3.1,5.0` -> [(3, 1), (5, 0)] (sorted, unique); `all` -> [] (every head); None or "" -> None."""
    if not spec:
        return None
    if spec.strip() == "all":
        return []
    out = set()
    for part in spec.split(","):
        m = _HEAD_RE.match(part.strip())
        if not m:
            raise UserError(
                f"--heads {spec!r} is not `all` or a list of LAYER.HEAD like 3.1,5.0; fix the value."
            )
        out.add((int(m[1]), int(m[2])))
    return sorted(out)


def head_names(heads: list[tuple[int, int]]) -> list[str]:
    return [f"{layer}.{h}" for layer, h in heads]


def resolve_unit_ids(
    store: Store,
    unit: list[str] | None = None,
    hook: str | None = None,
    units: str | None = None,
    heads: str | None = None,
) -> list[str]:
    """Recorded unit ids: `unit` ids (each checked), or the recorded heads of the `heads` spec (`all`,
    `3.1,5.0`), or those of `hook` (all hooks if None) whose index is in the `units` spec (all if None)."""
    if heads:
        wanted_heads = parse_heads(heads)
        recorded = [u for u in store.units() if u.ref.is_head]
        if wanted_heads:
            keep_heads = set(wanted_heads)
            recorded = [u for u in recorded if (u.ref.layer, u.ref.index) in keep_heads]
        if not recorded:
            raise UserError(
                f"No recorded attention heads match --heads {heads} in {store.path}; "
                "record them with `autointerp record --heads ...`."
            )
        return [u.id for u in recorded]
    if unit:
        ids = [UnitRef.parse(u).id for u in unit]
        missing = [u for u in ids if store.get_unit(u) is None]
        if missing:
            raise UserError(
                f"{missing[0]} is not recorded in {store.path}; run `autointerp record` for it first."
            )
        return ids
    recorded = store.units(hook=hook)
    wanted = parse_units(units)
    if wanted is not None:
        keep = set(wanted)
        recorded = [u for u in recorded if u.ref.index in keep]
    if not recorded:
        raise UserError(
            f"No recorded units match in {store.path}; check --hook/--units or run `autointerp record`."
        )
    return [u.id for u in recorded]


def find_unit(store: Store, text: str) -> str:
    """The recorded unit `text` names (its full id, or its end when unique, e.g. HOOK/INDEX)."""
    found = store.find_unit_ids(text)
    if len(found) > 1:
        raise UserError(f"{text!r} matches {len(found)} units ({found[0]}, ...); give more of its id.")
    if not found:
        ref = UnitRef.parse(text)  # a malformed id says how to write one
        raise UserError(
            f"{ref.id} is not recorded in {store.path}; record its hook first (`autointerp record`)."
        )
    return found[0]
