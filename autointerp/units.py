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
        if all(_HEAD_SPEC_RE.match(p.strip()) for p in spec.split(",")):
            raise UserError(
                f"--units {spec!r} names attention heads; record them with --heads {spec}."
            ) from None
        raise UserError(f"--units {spec!r} is not a list like 0:512 or 3,17,42; fix the value.") from None
    if not out:
        raise UserError(f"--units {spec!r} selects no unit; give a non-empty range such as 0:512.")
    return sorted(set(out))


_HEAD_RE = re.compile(r"^(\d+)\.(\d+)$")
_HEAD_SPEC_RE = re.compile(r"^(\d+|\*)\.(\d+|\*)$")  # a head LAYER.HEAD; either may be `*`
_INDEX_SPEC_RE = re.compile(r"^[\d:,\s]+$")  # indices: 0:512, 3,17,42
_GLOB_CHARS = re.compile(r"[*?\[]")


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


def unit_glob(spec: str) -> str | None:
    """The glob pattern over unit ids that `spec` stands for: a head `L.H` (`5.1`, `5.*`, `*.0`) or a
    pattern with `*`, `?` or `[...]`; None for a plain unit id (or its end)."""
    spec = spec.strip()
    if m := _HEAD_SPEC_RE.match(spec):
        return f"blocks.{m[1]}.attn/head:{m[2]}"
    return spec if _GLOB_CHARS.search(spec) else None


def no_match(store: Store, spec: str) -> UserError:
    return UserError(f"No recorded unit of {store.path} matches {spec!r}; list them with `autointerp units`.")


def match_unit_ids(store: Store, specs: list[str]) -> list[str]:
    """The recorded unit ids `specs` name, in order, each once. A spec is a unit id, its unique end
    (`blocks.5.attn/head:1`), an attention head `L.H` (either may be `*`: `5.*` is every recorded head
    of layer 5), or a glob pattern over ids, whole or from a `/` (`blocks.*.attn/head:0`, `*/sae:*/7`)."""
    out: list[str] = []
    for spec in (x.strip() for x in specs):
        if not spec:
            continue
        glob = unit_glob(spec)
        found = store.glob_unit_ids(glob) if glob is not None else [find_unit(store, spec)]
        if not found:
            raise no_match(store, spec)
        out.extend(found)
    return list(dict.fromkeys(out))


def select_unit_ids(
    store: Store, unit: list[str] | None = None, units: str | None = None, hooks: list[str] | None = None
) -> list[str] | None:
    """The unit ids `--unit` (repeatable spec, as `match_unit_ids`) and `--units` (indices such as
    `0:8,17` of the `hooks` (all hooks if None), or comma-separated specs: `5.1,5.2`) name together;
    None when neither is given (every unit)."""
    if not unit and not units:
        return None
    ids = match_unit_ids(store, unit or [])
    if units and _INDEX_SPEC_RE.match(units):
        wanted = set(parse_units(units) or [])
        pool = [u for h in hooks or [None] for u in store.units(hook=h)]
        picked = [u.id for u in pool if u.ref.index in wanted]
        if not picked:
            where = f"hook {', '.join(hooks)}" if hooks else "any hook"
            raise UserError(
                f"No recorded unit of {where} has an index in --units {units} in {store.path}; "
                "check --hook/--units or run `autointerp record`."
            )
        ids += picked
    elif units:
        ids += match_unit_ids(store, units.split(","))
    return list(dict.fromkeys(ids))


def resolve_unit_ids(
    store: Store,
    unit: list[str] | None = None,
    hook: str | None = None,
    units: str | None = None,
    heads: str | None = None,
) -> list[str]:
    """Recorded unit ids: the `unit` specs (ids, their ends, heads `L.H`, patterns: `match_unit_ids`), or
    the recorded heads of the `heads` spec (`all`, `3.1,5.0`), or those of `hook` (all hooks if None)
    that the `units` spec selects (indices `0:8,17` or specs `5.1,5.*`; all if None)."""
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
        return match_unit_ids(store, unit)
    if units:
        ids = select_unit_ids(store, units=units, hooks=[hook] if hook else None) or []
        ids = [u for u in ids if hook is None or UnitRef.parse(u).hook == hook]
    else:
        ids = [u.id for u in store.units(hook=hook)]
    if not ids:
        raise UserError(
            f"No recorded units match in {store.path}; check --hook/--units or run `autointerp record`."
        )
    return ids


def find_unit(store: Store, text: str) -> str:
    """The one recorded unit `text` names: its full id, its end (HOOK/INDEX), a head `L.H`, or a pattern
    (`unit_glob`) that matches it alone."""
    glob = unit_glob(text)
    found = store.glob_unit_ids(glob) if glob is not None else store.find_unit_ids(text)
    if glob is not None and not found:
        raise no_match(store, text)
    if len(found) > 1:
        raise UserError(f"{text!r} matches {len(found)} units ({found[0]}, ...); give more of its id.")
    if not found:
        ref = UnitRef.parse(text)  # a malformed id says how to write one
        raise UserError(
            f"{ref.id} is not recorded in {store.path}; record its hook first (`autointerp record`)."
        )
    return found[0]
