"""The benchmark of explanation methods: every method on the same units, examples and seed.

`run_bench` records the suite's units (synthetic ground-truth units, a user's file of them, or real
neurons), explains and scores them with each method through the ordinary Labeller (rows in the store's
explanations / scores tables), scores the true explanation (method `true`) and distractors
(`distractor:other`, `distractor:negated`, `distractor:near_miss`) with the same scorers, and
scores a random-explanation floor (method `random`: each unit gets the explanation the first method
generated for another unit, chosen by seed) with the same scorers, in every suite, and summarises:
per method the mean score with a bootstrap 95% CI, failures, tokens and time; the share of generated
explanations that match the truth; the scorer meta-evaluation.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import random
import re
import time
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel, Field

from autointerp.aio import run_sync
from autointerp.bench import meta
from autointerp.bench.meta import MetaEval
from autointerp.bench.synthetic import BUILTIN, SyntheticUnit, load_units, synthetic_sources
from autointerp.errors import UserError
from autointerp.explain import EXPLAINERS
from autointerp.llm import LLM, get_llm
from autointerp.pipeline import AGENT, Labeller, LabelSettings, RoleUsage
from autointerp.sampling import SampleSettings, sample_unit
from autointerp.score import SCORERS, ScoreSettings
from autointerp.store import Store
from autointerp.types import Explanation, RecordSettings, RunRecord, Score, now
from autointerp.version import code_version

REAL_HOOK = "blocks.6.mlp.hook_post"
DISTRACTORS = ("other", "negated", "near_miss")
RANDOM = "random"  # the floor: another unit's generated explanation
STOPWORDS = frozenset(
    [
        "a",
        "an",
        "the",
        "of",
        "in",
        "on",
        "at",
        "to",
        "for",
        "and",
        "or",
        "like",
        "such",
        "as",
        "with",
        "by",
        "from",
        "its",
        "it",
        "is",
        "are",
        "be",
        "word",
        "words",
        "token",
        "tokens",
        "right",
        "after",
        "before",
        "code",
        "python",
    ]
)


class BenchSettings(BaseModel):
    suite: str = "synthetic"  # synthetic | real | a .py / .json / .yaml file of ground-truth units
    methods: list[str] = Field(default_factory=lambda: ["top", "highlight", "contrastive"])
    explainer: str = "local:qwen2.5-coder-1.5b"
    simulator: str | None = None  # default: the explainer
    scorers: list[str] = Field(default_factory=lambda: ["correlation"])
    seed: int = 0
    n_units: int | None = None  # the first N units of the suite (all when None)
    model: str = "gemma-3-270m"
    corpus: list[str] = Field(default_factory=lambda: ["default"])
    tokens: int = 120_000
    ctx: int = 64
    meta: bool = True  # score the truth and distractors (ground-truth suites only)
    match_threshold: float = 0.6  # MiniLM cosine at or above which a generated explanation matches the truth
    keyword_threshold: float = 0.5  # share of the truth's keywords present (fallback without the embedder)
    concurrency: int = 1
    real_hook: str = REAL_HOOK
    n_test_top: int = 10  # held-out top windows in each correlation test set (the labeller's default)
    n_test_random: int = 10  # random windows in each correlation test set
    n_per_quantile: int = 1  # quantile windows simulated per quantile (per-quantile correlations; 0: none)
    delphi: bool = False  # detection / fuzzing with delphi's protocol (ScoreSettings.delphi())
    agent_steps: int = 16  # method `agent`: steps per unit
    agent_mode: str = "auto"  # method `agent`: guided, free or auto (agent/loop.py resolve_mode)


class Match(BaseModel):
    similarity: float | None
    matched: bool | None


class UnitRow(BaseModel):
    unit_id: str
    name: str
    truth: str | None
    explanations: dict[str, str | None]  # candidate key (gen:METHOD, true, dis:KIND, random) -> text
    scores: dict[str, dict[str, float | None]]  # candidate key -> scorer -> value (None: nan / failed)
    status: dict[str, dict[str, str]] = Field(
        default_factory=dict
    )  # candidate key -> scorer -> ok/nan/failed
    errors: dict[str, str] = Field(default_factory=dict)  # method -> why its explanation failed
    match: dict[str, Match] = Field(default_factory=dict)  # method -> similarity to the truth
    aucs: dict[str, dict[str, float | None]] = Field(
        default_factory=dict
    )  # candidate key -> judge scorer -> AUC over the judge's P("1") (from the score's details)


class ScorerStat(BaseModel):
    n: int
    mean: float | None
    ci_low: float | None
    ci_high: float | None
    n_nan: int
    n_failed: int


class MethodRow(BaseModel):
    method: str  # an explainer method, `true`, `distractor:KIND`, or `random` (the floor)
    n_units: int
    failures: int  # explanations that failed (never stored as results)
    stats: dict[str, ScorerStat]
    prompt_tokens: int = 0  # tokens of the LLM calls this invocation made (explaining and scoring)
    completion_tokens: int = 0
    cached_calls: int = 0  # LLM calls served from the store's cache: they cost nothing
    cached_tokens: int = 0  # prompt + completion tokens of those calls
    seconds: float = 0.0  # compute time recorded with the stored rows (explaining + scoring), summed
    resumed: int = 0  # units whose stored results were reused: their tokens are not counted again
    match_share: float | None = None  # generated explanations matching the truth


class BenchResult(BaseModel):
    settings: BenchSettings
    db: str
    run_id: str
    units: list[UnitRow]
    skipped_units: dict[str, str]  # unit id -> why it was left out (e.g. never fired)
    methods: list[MethodRow]
    meta: MetaEval | None = None
    match_measure: str = ""  # how `match` was computed, with its threshold
    near_miss_match_rate: float | None = None  # share of near-miss distractors the measure calls a match
    seconds: float = 0.0
    code_version: str = ""


def _fnum(x: float | None) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else x


# -- the suite ----------------------------------------------------------------------------------------
def suite_units(suite: str) -> list[SyntheticUnit] | None:
    """The suite's ground-truth units; None for the real suite."""
    if suite == "synthetic":
        return list(BUILTIN)
    if suite == "real":
        return None
    return load_units(suite)


def record_suite(
    store: Store,
    s: BenchSettings,
    units: list[SyntheticUnit] | None,
    subject=None,  # noqa: ANN001
) -> tuple[list[str], dict[str, str]]:
    """Record the suite's units into the store; returns unit ids and their names (synthetic: rule names)."""
    from autointerp.subject.model import load_subject

    subject = subject or load_subject(s.model)
    common = {"corpus": s.corpus, "max_tokens": s.tokens, "ctx": s.ctx, "seed": s.seed}
    if units is None:
        from autointerp import record_units

        indices = list(range(s.n_units or 8))
        record_units(store.path, [s.real_hook], units=indices, subject=subject, **common)
        ids = [f"{subject.short}/{s.real_hook}/{i}" for i in indices]
        return ids, {u: u.split("/", 1)[1] for u in ids}
    from autointerp.subject.recorder import Recorder

    settings = RecordSettings(model=subject.name, hooks=[u.hook for u in units], **common)
    run_key = {"synthetic": [u.definition() for u in units]}
    Recorder(subject, settings, synthetic_sources(subject.token_strs, units), run_key=run_key).run(store)
    return [u.unit_id(subject.short) for u in units], {u.unit_id(subject.short): u.name for u in units}


# -- truth and distractors -------------------------------------------------------------------------
def negate(text: str) -> str:
    return f"anything except {text}"


def distractors(units: list[SyntheticUnit], i: int) -> dict[str, str]:
    """A unit's distractor explanations: the next unit's truth, the negated truth, its near miss."""
    out = {"negated": negate(units[i].explanation)}
    if len(units) > 1:
        out["other"] = units[(i + 1) % len(units)].explanation
    if units[i].near_miss:
        out["near_miss"] = units[i].near_miss
    return out


def random_explanations(unit_ids: list[str], texts: dict[str, str | None], seed: int) -> dict[str, str]:
    """The floor: for each unit, another unit's explanation (`texts`: the first method's, None if it
    failed), chosen by a seeded shift over the units, so no unit gets its own."""
    donors = [u for u in unit_ids if texts.get(u)]
    if len(unit_ids) < 2 or not donors:
        return {}
    shift = random.Random(seed).randrange(1, len(unit_ids))
    out = {}
    for i, uid in enumerate(unit_ids):
        for k in range(len(unit_ids)):
            other = unit_ids[(i + shift + k) % len(unit_ids)]
            if other != uid and texts.get(other):
                out[uid] = texts[other]  # type: ignore[assignment]
                break
    return out


def candidate_key(method: str) -> str:
    """A method's key in UnitRow: gen:METHOD, true, dis:KIND or random."""
    if method in ("true", RANDOM):
        return method
    if method.startswith("distractor:"):
        return "dis:" + method.split(":", 1)[1]
    return f"gen:{method}"


def given_id(unit_id: str, method: str, text: str, s: LabelSettings) -> str:
    key = {"unit": unit_id, "method": method, "text": text, "sample": s.sample.model_dump()}
    return "exp-" + hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


async def score_given(
    labeller: Labeller,
    store: Store,
    items: list[tuple[str, str, str]],
    tick: Callable[[], None] = lambda: None,
) -> None:
    """Score given texts (unit id, method, text) with the labeller's scorers; stored like any explanation.
    `tick` is called as each one is done (or found done)."""
    sem = asyncio.Semaphore(labeller.s.concurrency)

    async def one(unit_id: str, method: str, text: str) -> None:
        exp_id = given_id(unit_id, method, text, labeller.s)
        sample = sample_unit(store, unit_id, labeller.s.sample)
        if labeller.done(exp_id, sample):
            tick()
            return
        async with sem:
            scores = await labeller.score_explanation(exp_id, unit_id, text, sample)
        exp = Explanation(
            id=exp_id,
            unit_id=unit_id,
            text=text,
            method=method,
            model="",
            prompt="",
            settings={"given": True, "code_version": code_version()},
            run_id=labeller.run_id,
        )
        store.put_explanation(exp, scores)
        tick()

    await asyncio.gather(*(one(*it) for it in items))


async def score_given_by_kind(
    store: Store,
    s: LabelSettings,
    explainer: LLM,
    simulator: LLM,
    items: list[tuple[str, str, str]],
    tick: Callable[[], None] = lambda: None,
) -> dict[str, dict[str, RoleUsage]]:
    """`score_given` one kind (`true`, `distractor:KIND`, `random`) after the other, each by a labeller
    with its own token meters: what each kind spent, by LLM role."""
    spent: dict[str, dict[str, RoleUsage]] = {}
    for kind in dict.fromkeys(m for _, m, _ in items):
        metered = Labeller(store, s, explainer, simulator)
        await score_given(metered, store, [it for it in items if it[1] == kind], tick)
        spent[kind] = {role: m.usage for role, m in metered.meters.items()}
    return spent


# -- matching generated explanations to the truth --------------------------------------------------
def keywords(text: str) -> set[str]:
    words = re.findall(r"[a-z0-9']+", text.lower())
    return {w.rstrip("s") if len(w) > 3 else w for w in words if w not in STOPWORDS}


def keyword_overlap(generated: str, truth: str) -> float:
    """Share of the truth's keywords (stop words dropped, plural s stripped) found in the generated text."""
    want = keywords(truth)
    return len(want & keywords(generated)) / len(want) if want else 0.0


def similarities(pairs: list[tuple[str, str]], s: BenchSettings) -> tuple[list[float], float, str]:
    """Similarity of each (generated, truth) pair, the threshold, and how it was measured."""
    if not pairs:
        return [], s.match_threshold, ""
    try:
        from autointerp.embed import MODEL_ID, embed

        vecs = embed([t for p in pairs for t in p])
    except Exception as e:  # noqa: BLE001 - any failure to load the embedder: fall back, and say so
        sims = [keyword_overlap(g, t) for g, t in pairs]
        how = (
            f"keyword overlap (share of the truth's content words in the explanation) >= "
            f"{s.keyword_threshold}; the embedder was unavailable ({type(e).__name__}: {e})"
        )
        return sims, s.keyword_threshold, how
    sims = [float(vecs[2 * i] @ vecs[2 * i + 1]) for i in range(len(pairs))]
    return sims, s.match_threshold, f"cosine similarity of {MODEL_ID} embeddings >= {s.match_threshold}"


# -- the run ---------------------------------------------------------------------------------------
def stored_scores(store: Store, labeller: Labeller, exp_id: str) -> dict[str, Score]:
    """The explanation's scores under the labeller's scorer settings, one per scorer (the latest)."""
    out: dict[str, Score] = {}
    for x in store.scores(exp_id):
        if x.scorer not in labeller.s.scorers:
            continue
        f = labeller.score_fields(x.scorer)
        if (x.simulator, x.prompt) == (f["simulator"], f["prompt"]):
            out[x.scorer] = x
    return out


def _collect(row: UnitRow, key: str, scores: dict[str, Score], spent: dict[str, float]) -> None:
    """Put the stored scores in the row; add their recorded compute time to spent[key]."""
    row.scores[key] = {sc: _fnum(x.value) for sc, x in scores.items()}
    row.status[key] = {sc: x.status for sc, x in scores.items()}
    row.aucs[key] = {
        sc: _fnum(x.details.get("auc"))
        for sc, x in scores.items()
        if "auc" in x.details and x.status != "failed"
    }
    spent[key] = spent.get(key, 0.0) + sum(float(x.details.get("seconds", 0.0)) for x in scores.values())


def usage_fields(usage: dict[str, RoleUsage]) -> dict[str, int]:
    """A MethodRow's token fields from what each LLM role spent (cache hits apart)."""
    return {
        "prompt_tokens": sum(u.prompt_tokens for u in usage.values()),
        "completion_tokens": sum(u.completion_tokens for u in usage.values()),
        "cached_calls": sum(u.cached_calls for u in usage.values()),
        "cached_tokens": sum(u.cached_prompt_tokens + u.cached_completion_tokens for u in usage.values()),
    }


def _stat(values: list[float | None], statuses: list[str], seed: int) -> ScorerStat:
    ok = [v for v in values if v is not None]
    lo, hi = meta.bootstrap_ci(ok, seed=seed)
    return ScorerStat(
        n=len(ok),
        mean=sum(ok) / len(ok) if ok else None,
        ci_low=_fnum(lo),
        ci_high=_fnum(hi),
        n_nan=statuses.count("nan"),
        n_failed=statuses.count("failed"),
    )


def run_bench(db: str | Path, suite: str = "synthetic", **kwargs) -> BenchResult:
    """Run the benchmark into the store at `db` (keyword arguments as `arun_bench`); works with or
    without a running event loop."""
    return run_sync(arun_bench(db, suite, **kwargs))


async def arun_bench(
    db: str | Path,
    suite: str = "synthetic",
    methods: list[str] | None = None,
    explainer: str = "local:qwen2.5-coder-1.5b",
    simulator: str | None = None,
    scorers: list[str] | None = None,
    seed: int = 0,
    n_units: int | None = None,
    progress: Callable[[str], None] | None = None,
    phases: Callable[[str, int], Callable[[], None]] | None = None,
    subject=None,  # noqa: ANN001 - a loaded SubjectModel to reuse
    timeout: float | None = None,
    retries: int | None = None,
    **settings,
) -> BenchResult:
    """Run the benchmark into the store at `db` and return its result (write the report with report.py).

    `timeout` / `retries`: per API LLM request (see `llm.connection`); not part of the bench's settings.
    """
    s = BenchSettings(
        suite=suite,
        methods=methods or ["top", "highlight", "contrastive"],
        explainer=explainer,
        simulator=simulator,
        scorers=scorers or ["correlation"],
        seed=seed,
        n_units=n_units,
        **settings,
    )
    EXPLAINERS.check([m for m in s.methods if m != AGENT])
    SCORERS.check(s.scorers)
    say = progress or (lambda _msg: None)

    def phase(label: str, total: int) -> Callable[[], None]:
        """Announce a phase; with `phases`, its count and ETA (`phases(label, total)` gives the tick)."""
        if phases is None:
            say(label)
            return lambda: None
        return phases(label, total)

    t0 = time.perf_counter()
    store = Store(db)
    sim_spec = s.simulator or s.explainer
    llm_options = dict(concurrency=s.concurrency, timeout=timeout, retries=retries)
    exp_llm = get_llm(s.explainer, store, **llm_options)  # a bad spec or setting fails before recording
    sim_llm = exp_llm if sim_spec == s.explainer else get_llm(sim_spec, store, **llm_options)
    truth_units = suite_units(s.suite)
    if truth_units is not None and s.n_units:
        truth_units = truth_units[: s.n_units]
    say("recording the suite's units")
    unit_ids, names = record_suite(store, s, truth_units, subject)
    by_name = {u.name: u for u in truth_units or []}
    truth = {uid: by_name[n] for uid, n in names.items() if n in by_name}

    sample_s = SampleSettings(n_test_top=s.n_test_top, n_test_random=s.n_test_random)
    skipped: dict[str, str] = {}
    usable = []
    for uid in unit_ids:
        try:
            sample = sample_unit(store, uid, sample_s)
        except UserError as e:
            skipped[uid] = str(e)
            continue
        if len([e for e in sample.test if e.kind == "top"]) < 2:
            skipped[uid] = "fewer than 2 held-out activating windows; raise --tokens"
            continue
        usable.append(uid)
    if not usable:
        raise UserError("No unit of the suite fired on the corpus; raise --tokens or check the rules.")

    run_id = "bench-" + hashlib.sha1(json.dumps(s.model_dump(), sort_keys=True).encode()).hexdigest()[:12]
    store.start_run(
        RunRecord(
            id=run_id,
            kind="bench",
            settings={
                **s.model_dump(),
                "units": usable,
                "definitions": [u.definition() for u in truth_units or []],
            },
            code_version=code_version(),
            started_at=now(),
        )
    )

    try:  # whatever happens from here (an error, Ctrl-C, out of credit), the run's row ends

        def label_settings(methods: list[str]) -> LabelSettings:
            return LabelSettings(
                explainer=s.explainer,
                simulator=sim_spec,
                methods=methods,
                scorers=s.scorers,
                concurrency=s.concurrency,
                sample=sample_s,
                score=(ScoreSettings.delphi if s.delphi else ScoreSettings)(
                    seed=s.seed, n_per_quantile=s.n_per_quantile
                ),
            )

        from autointerp.agent.bulk import AgentBudget

        units_file = s.suite if s.suite not in ("synthetic", "real") else None
        agent_budget = AgentBudget(max_steps=s.agent_steps, agent_mode=s.agent_mode, units_file=units_file)
        rows = {
            uid: UnitRow(
                unit_id=uid,
                name=names[uid],
                truth=truth[uid].explanation if uid in truth else None,
                explanations={},
                scores={},
            )
            for uid in usable
        }
        method_rows: list[MethodRow] = []
        spent: dict[str, float] = {}  # candidate key -> recorded seconds
        for method in s.methods:
            tick = phase(f"method {method}", len(usable))
            labeller = Labeller(store, label_settings([method]), exp_llm, sim_llm, agent=agent_budget)
            summary = await labeller.run(usable, lambda _r, tick=tick: tick())
            for r in summary.results:
                row = rows[r.unit_id]
                key = f"gen:{method}"
                row.explanations[key] = r.explanation
                if r.error:
                    row.errors[method] = r.error
                else:
                    exp_id = r.explanation_id
                    _collect(row, key, stored_scores(store, labeller, exp_id), spent)
                    exp = store.get_explanation(exp_id)
                    spent[key] += float(exp.settings.get("seconds", 0.0)) if exp else 0.0
            method_rows.append(
                MethodRow(
                    method=method,
                    n_units=len(usable),
                    failures=len(summary.failures),
                    stats={},
                    resumed=sum(r.skipped for r in summary.results),
                    **usage_fields(summary.usage),
                )
            )

        given: list[tuple[str, str, str]] = []
        if truth and s.meta:
            ordered = [truth[u] for u in usable]
            for i, uid in enumerate(usable):
                given.append((uid, "true", truth[uid].explanation))
                given += [(uid, f"distractor:{k}", text) for k, text in distractors(ordered, i).items()]
        first = {u: rows[u].explanations.get(f"gen:{s.methods[0]}") for u in usable}
        given += [(uid, RANDOM, text) for uid, text in random_explanations(usable, first, s.seed).items()]
        if given:
            tick = phase("given explanations (truth, distractors, the random floor)", len(given))
            labeller = Labeller(store, label_settings([s.methods[0]]), exp_llm, sim_llm)
            given_usage = await score_given_by_kind(store, labeller.s, exp_llm, sim_llm, given, tick)
            for uid, method, text in given:
                rows[uid].explanations[candidate_key(method)] = text
                exp_id = given_id(uid, method, text, labeller.s)
                _collect(rows[uid], candidate_key(method), stored_scores(store, labeller, exp_id), spent)
            for kind in ["true", *(f"distractor:{k}" for k in DISTRACTORS), RANDOM]:
                if any(m == kind for _, m, _ in given):
                    method_rows.append(
                        MethodRow(
                            method=kind,
                            n_units=sum(1 for _, m, _ in given if m == kind),
                            failures=0,
                            stats={},
                            **usage_fields(given_usage.get(kind, {})),
                        )
                    )

        # Per-method statistics from the stored rows (statuses include nan and failed).
        for mr in method_rows:
            key = candidate_key(mr.method)
            mr.seconds = round(spent.get(key, 0.0), 1)
            for sc in s.scorers:
                have = [u for u in usable if key in rows[u].scores]
                vals = [rows[u].scores[key].get(sc) for u in have]
                statuses = [rows[u].status[key].get(sc, "failed") for u in have]
                mr.stats[sc] = _stat(vals, statuses, s.seed)

        match_measure = ""
        near_miss_match_rate = None
        if truth:
            pairs = [
                (uid, m, rows[uid].explanations.get(f"gen:{m}"), rows[uid].truth)
                for uid in usable
                for m in s.methods
                if rows[uid].explanations.get(f"gen:{m}")
            ]
            # The near misses calibrate the measure: a wrong phrase that still "matches" is a false match.
            near = [(truth[u].near_miss, truth[u].explanation) for u in usable if truth[u].near_miss]
            all_pairs = [(g, t) for _, _, g, t in pairs] + near
            sims, threshold, match_measure = similarities(all_pairs, s)  # type: ignore[arg-type]
            for (uid, m, _, _), sim in zip(pairs, sims[: len(pairs)], strict=True):
                rows[uid].match[m] = Match(similarity=round(sim, 4), matched=sim >= threshold)
            near_sims = sims[len(pairs) :]
            if near_sims:
                near_miss_match_rate = sum(x >= threshold for x in near_sims) / len(near_sims)
            for mr in method_rows:
                if mr.method in EXPLAINERS or mr.method == AGENT:
                    got = [rows[u].match[mr.method].matched for u in usable if mr.method in rows[u].match]
                    mr.match_share = sum(got) / len(usable) if usable else None

        meta_eval = None
        if truth and s.meta:
            # The judges' AUCs are meta-evaluated beside their balanced accuracies: a judge that says
            # "1" to every text has no balanced accuracy (nan) but its P("1") may still rank the texts.
            judged = [sc for sc in s.scorers if any(sc in a for u in usable for a in rows[u].aucs.values())]
            cands = [
                {
                    k: {**v, **{f"{sc} AUC": a for sc, a in rows[u].aucs.get(k, {}).items()}}
                    for k, v in rows[u].scores.items()
                }
                for u in usable
            ]
            meta_eval = meta.meta_evaluate(cands, s.scorers + [f"{sc} AUC" for sc in judged])

        result = BenchResult(
            settings=s,
            db=str(store.path),
            run_id=run_id,
            units=[rows[u] for u in usable],
            skipped_units=skipped,
            methods=method_rows,
            meta=meta_eval,
            match_measure=match_measure,
            near_miss_match_rate=near_miss_match_rate,
            seconds=round(time.perf_counter() - t0, 2),
            code_version=code_version(),
        )
        store.finish_run(
            run_id, "complete", json.loads(result.model_dump_json(exclude={"units", "settings"}))
        )
        return result
    except BaseException as e:
        interrupted = isinstance(e, KeyboardInterrupt | asyncio.CancelledError)
        store.finish_run(run_id, "failed", {"error": "interrupted" if interrupted else repr(e)})
        raise
