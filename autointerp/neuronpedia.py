"""`autointerp export --format neuronpedia`: one JSON file per unit in the shape of Neuronpedia's feature
records (the `Feature`, `Activation` and `Explanation` models of its exports: camelCase field names,
`index` as a string, `layer` as the source id such as `6-res-...`), with what Neuronpedia has no field for
(the unit id, every score) under the key `autointerp`."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel, Field

from autointerp.errors import UserError
from autointerp.listing import unit_explanations
from autointerp.store import Store
from autointerp.types import Example, Unit

EXAMPLE_KINDS = ("top", "quantile")  # what Neuronpedia shows as a feature's activations
_LAYER_RE = re.compile(r"^blocks\.(\d+)\.(.+)$")


class NeuronpediaActivation(BaseModel):
    tokens: list[str]
    values: list[float]
    maxValue: float
    maxValueTokenIndex: int
    minValue: float
    binMin: float | None = None  # quantile examples: the range of peaks their quantile holds
    binMax: float | None = None
    binContains: float | None = None  # the share of firing windows in that range
    dataSource: str | None = None  # autointerp: KIND#RANK


class NeuronpediaExplanation(BaseModel):
    description: str
    typeName: str  # the explanation method
    explanationModelName: str
    notes: str | None = None


class AutointerpExtras(BaseModel):
    unit_id: str
    n_tokens: int
    mean: float
    std: float
    fire_threshold: float
    scores: list[dict] = Field(default_factory=list)  # explanation index, scorer, value, status, simulator


class NeuronpediaFeature(BaseModel):
    modelId: str
    layer: str
    index: str
    hookName: str
    maxActApprox: float
    frac_nonzero: float
    freq_hist_data_bar_heights: list[float]
    freq_hist_data_bar_values: list[float]  # bin centres of the firing part of the histogram
    pos_str: list[str] = Field(default_factory=list)  # output tokens: not computed (needs the model)
    pos_values: list[float] = Field(default_factory=list)
    neg_str: list[str] = Field(default_factory=list)
    neg_values: list[float] = Field(default_factory=list)
    topkCosSimIndices: list[int] = Field(default_factory=list)  # SAE latents: decoder cosine neighbours
    topkCosSimValues: list[float] = Field(default_factory=list)
    activations: list[NeuronpediaActivation]
    explanations: list[NeuronpediaExplanation]
    autointerp: AutointerpExtras


def source_id(unit: Unit) -> str:
    """Neuronpedia's `layer`: LAYER-NAME, NAME the SAE's name or the hook's, lower case with dashes."""
    m = _LAYER_RE.match(unit.ref.hook)
    layer, rest = (m[1], m[2]) if m else ("0", unit.ref.hook)
    name = unit.ref.sae or rest
    return f"{layer}-" + re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def activation(
    e: Example, bins: dict[int, tuple[float, float]], share: float | None
) -> NeuronpediaActivation:
    lo_hi = bins.get(e.quantile) if e.kind == "quantile" and e.quantile is not None else None
    return NeuronpediaActivation(
        tokens=e.context.tokens,
        values=[round(a, 5) for a in e.acts],
        maxValue=round(e.max_act, 5),
        maxValueTokenIndex=e.max_pos,
        minValue=round(min(e.acts), 5),
        binMin=lo_hi[0] if lo_hi else None,
        binMax=lo_hi[1] if lo_hi else None,
        binContains=share if lo_hi else None,
        dataSource=f"{e.kind}#{e.rank}",
    )


def feature(store: Store, unit: Unit, cos_k: int = 10) -> NeuronpediaFeature:
    """One unit as a Neuronpedia feature record."""
    from autointerp.viewer.decoder import neighbours

    examples = [e for kind in EXAMPLE_KINDS for e in store.examples(unit.id, kind)]
    quantiles = {e.quantile for e in examples if e.kind == "quantile" and e.quantile is not None}
    bins = {
        q: (min(e.max_act for e in group), max(e.max_act for e in group))
        for q in quantiles
        if (group := [e for e in examples if e.kind == "quantile" and e.quantile == q])
    }
    share = round(1 / len(quantiles), 4) if quantiles else None
    s = unit.stats
    heights, centres = [], []
    for i, count in enumerate(s.hist_counts):
        a, b = s.hist_edges[i], s.hist_edges[i + 1]
        if a >= s.fire_threshold and math.isfinite(a) and math.isfinite(b):
            heights.append(float(count))
            centres.append(round((a + b) / 2, 6))
    explained = unit_explanations(store, unit.id)
    near, _ = neighbours(store, unit, cos_k)
    return NeuronpediaFeature(
        modelId=unit.ref.model,
        layer=source_id(unit),
        index=str(unit.ref.index),
        hookName=unit.ref.hook,
        maxActApprox=round(s.max, 5),
        frac_nonzero=s.frac_firing,
        freq_hist_data_bar_heights=heights,
        freq_hist_data_bar_values=centres,
        topkCosSimIndices=[int(n.unit_id.rsplit("/", 1)[1]) for n in near or []],
        topkCosSimValues=[n.cosine for n in near or []],
        activations=[activation(e, bins, share) for e in examples],
        explanations=[
            NeuronpediaExplanation(
                description=se.explanation.text,
                typeName=se.explanation.method,
                explanationModelName=se.explanation.model,
                notes=f"prompt {se.explanation.prompt}" if se.explanation.prompt else None,
            )
            for se in explained
        ],
        autointerp=AutointerpExtras(
            unit_id=unit.id,
            n_tokens=s.n_tokens,
            mean=s.mean,
            std=s.std,
            fire_threshold=s.fire_threshold,
            scores=[
                {
                    "explanation": i,
                    "scorer": sc.scorer,
                    "value": sc.value,
                    "status": sc.status,
                    "simulator": sc.simulator,
                }
                for i, se in enumerate(explained)
                for sc in se.scores.values()
            ],
        ),
    )


def export_neuronpedia(
    store: Store, out: str | Path, unit_ids: list[str], progress: Callable[[int], None] | None = None
) -> list[Path]:
    """Write OUT/MODEL/LAYER/INDEX.json per unit and OUT/manifest.json (unit id -> file); the paths."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; pass a folder to write the JSON files into.")
    written, manifest = [], {}
    for n, uid in enumerate(unit_ids, 1):
        unit = store.get_unit(uid)
        if unit is None:
            raise UserError(f"{uid} is not recorded in {store.path}; pick a recorded unit.")
        f = feature(store, unit)
        path = out / f.modelId / f.layer / f"{f.index}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f.model_dump_json(indent=1))
        written.append(path)
        manifest[uid] = str(path.relative_to(out))
        if progress:
            progress(n)
    out.mkdir(parents=True, exist_ok=True)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return written
