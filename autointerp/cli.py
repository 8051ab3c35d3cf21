"""The `autointerp` command line (typer + rich)."""

from __future__ import annotations

import contextlib
import functools
import json
import sqlite3
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from autointerp.config import SimulatorMode
from autointerp.errors import LOCAL_STACK, SAE_STACK, UserError, environment_error, require_local
from autointerp.units import parse_units, resolve_unit_ids, select_unit_ids
from autointerp.viewer.links import VIEWER_URL, check_viewer_url

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="Automated interpretability of transformers."
)
console = Console()
err = Console(stderr=True)


def _version(value: bool) -> None:
    if value:
        from autointerp.version import code_version

        console.print(f"autointerp {code_version()}")
        raise typer.Exit()


DEFAULT_LLM = "local:qwen2.5-coder-1.5b"
_GLOBAL: dict[str, Path | None] = {"config": None}  # the app-wide --config of this invocation


@app.callback()
def main_options(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit."),
    ] = False,
    config: Annotated[
        Path | None,
        typer.Option(
            help="Config file for every command [default: ./autointerp.toml, else [tool.autointerp] in "
            "./pyproject.toml]: models, API key variables, prices, label defaults."
        ),
    ] = None,
) -> None:
    """Automated interpretability of transformers."""
    from autointerp.logs import quiet_third_party

    quiet_third_party()
    _GLOBAL["config"] = config


def config_in_force(path: Path | None = None):  # noqa: ANN201 - autointerp.config.Config
    """The config file's settings (a command's own --config, else the app-wide one, else found in the
    working directory), its prices and key variables made the process's; a bad file fails here."""
    from autointerp.config import load_config

    cfg = load_config(path or _GLOBAL["config"])
    cfg.apply()
    return cfg


def names(value: str, option: str, registry, extra: tuple[str, ...] = ()) -> list[str]:  # noqa: ANN001 - a Registry
    """A comma-separated option value -> its names, each known to `registry` (or in `extra`)."""
    out = list(dict.fromkeys(x.strip() for x in value.split(",") if x.strip()))
    if not out:
        raise UserError(
            f"{option} {value!r} names nothing; give one or more of {', '.join(registry.names())}."
        )
    registry.check([x for x in out if x not in extra])
    return out


DbOpt = Annotated[Path, typer.Option("--db", help="SQLite store file (created if missing).")]
StoreOpt = Annotated[Path, typer.Option("--db", help="SQLite store file (an existing one).")]
ModelOpt = Annotated[str, typer.Option(help="Embedded name or a TransformerLens model name.")]
ModelPathOpt = Annotated[str | None, typer.Option(help="Local Hugging Face folder with the weights.")]
TimeoutOpt = Annotated[
    float | None,
    typer.Option(
        help="Seconds an API LLM (openai:, anthropic:) may take per request [default: 120].",
        envvar="AUTOINTERP_LLM_TIMEOUT",
    ),
]
RetriesOpt = Annotated[
    int | None,
    typer.Option(
        help="Retries of a failed API LLM request (rate limits, 5xx, timeouts) [default: 5].",
        envvar="AUTOINTERP_LLM_RETRIES",
    ),
]
SimulatorModeOpt = Annotated[
    SimulatorMode,
    typer.Option(
        help="exact (one pass), exact-follow (stepwise), json, head-exact (attention heads) or auto."
    ),
]
BaseUrlOpt = Annotated[str | None, typer.Option(help="OpenAI-compatible server URL.")]
AgentModeOpt = Annotated[
    Literal["auto", "guided", "free"],
    typer.Option(
        help="guided: the code drives hypotheses -> scores -> one revision, the LLM writes plain text; "
        "free: the LLM calls tools; auto: free for openai:/anthropic:, guided otherwise."
    ),
]
NoCacheOpt = Annotated[bool, typer.Option("--no-cache", help="Call the LLMs even for cached requests.")]
ViewerUrlOpt = Annotated[
    str,
    typer.Option(
        help="The report links each unit to its page on the viewer here (`autointerp serve --db DB`); "
        "'' for no links."
    ),
]


@contextlib.contextmanager
def option_errors() -> Iterator[None]:
    """Settings built from options: a value pydantic refuses is one sentence naming the option."""
    from pydantic import ValidationError

    try:
        yield
    except ValidationError as e:
        first = e.errors()[0]
        option = "--" + str(first["loc"][0]).replace("_", "-")
        msg = first["msg"][:1].lower() + first["msg"][1:]
        raise UserError(f"{option}: {msg} (got {first.get('input')!r}); fix the value.") from None


def user_errors(fn: Callable) -> Callable:
    """Turn a UserError (or an LLM provider's out-of-credit refusal) into one red sentence on stderr and
    exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        db = kwargs.get("db")
        new_db = db if isinstance(db, Path) and not db.exists() else None  # created by this command?
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            if new_db is not None:  # a command refused on its input leaves no empty store behind
                from autointerp.store import discard_if_blank

                discard_if_blank(new_db)
            err.print(f"[red]error:[/red] {escape(str(e))}")  # a message is text, not markup
            raise typer.Exit(2) from None
        except (OSError, sqlite3.DatabaseError) as e:  # a full disk, a read-only store or folder
            if (found := environment_error(e)) is None:
                raise
            err.print(f"[red]error:[/red] {escape(str(found))}")
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err.print("[yellow]interrupted[/yellow]: run the same command again to resume.")
            raise typer.Exit(130) from None
        except Exception as e:
            if "autointerp.llm.base" in sys.modules:  # imported lazily: only a run that used an LLM
                from autointerp.llm.base import OutOfCreditError

                if isinstance(e, OutOfCreditError):  # the provider's own message; no call can succeed
                    err.print(f"[red]error:[/red] {escape(str(e))}")
                    raise typer.Exit(2) from None
            raise

    return wrapper


@app.command()
@user_errors
def setup(
    only: Annotated[list[str] | None, typer.Option(help="Only these assets (default: all).")] = None,
) -> None:
    """Fetch, assemble, verify (sha256) and cache the embedded models and corpus. Idempotent."""
    from autointerp import assets

    unknown = [n for n in only or [] if n not in assets.ASSETS]
    if unknown:
        raise UserError(f"Unknown asset {unknown[0]!r}; choose from {', '.join(assets.ASSETS)}.")
    if any(assets.ASSETS[n].kind == "gguf" for n in only or assets.ASSETS):  # cached as bf16 copies
        require_local("autointerp setup", ("torch", "transformers"))
    with err.status("setting up embedded assets"):
        paths = assets.setup(only, log=lambda m: err.print(f"  [green]ok[/green] {m}"))
    console.print(f"{len(paths)} assets ready under {assets.home()}")


@app.command()
@user_errors
def record(
    db: DbOpt,
    hook: Annotated[list[str] | None, typer.Option("--hook", help="Hook to record (repeatable).")] = None,
    sae: Annotated[
        list[str] | None,
        typer.Option(
            "--sae",
            help="Record SAE latents: 'embedded', an SAE folder (SAELens cfg.json + "
            "sae_weights.safetensors), or HOOK=DIR (also for a Gemma Scope params.npz). Repeatable.",
        ),
    ] = None,
    units: Annotated[
        str | None, typer.Option(help="Unit (or latent) indices, e.g. 0:512 or 3,17,42 (default all).")
    ] = None,
    model: ModelOpt = "gemma-3-270m",
    model_path: ModelPathOpt = None,
    corpus: Annotated[
        list[str] | None, typer.Option(help="default, wiki, code, a file/dir, hf:NAME.")
    ] = None,
    tokens: Annotated[int, typer.Option(help="Tokens to stream.")] = 200_000,
    ctx: Annotated[int, typer.Option(help="Window length in tokens (BOS included).")] = 64,
    batch_size: Annotated[int, typer.Option(help="Windows per forward pass.")] = 32,
    top_k: Annotated[int, typer.Option(min=1, help="Max-activating windows kept per unit.")] = 20,
    encoding: Annotated[
        str, typer.Option(help="Text encoding of corpus files (e.g. latin-1, utf-16); others are refused.")
    ] = "utf-8",
    seed: int = 0,
    keep_bos: Annotated[
        bool,
        typer.Option(
            "--keep-bos",
            help="Keep BOS and other special-token positions in examples and statistics "
            "(left out by default).",
        ),
    ] = False,
    shard: Annotated[
        str | None,
        typer.Option(
            help="i/n: record only the i-th of n contiguous blocks of the window stream, into its own "
            "--db; `autointerp merge` joins the n stores into what one run writes.",
        ),
    ] = None,
    heads: Annotated[
        str | None,
        typer.Option(help="Attention heads as units: 'all' or LAYER.HEAD list, e.g. 3.1,5.0."),
    ] = None,
    head_activation: Annotated[
        str,
        typer.Option(
            help="A head's activation at a token: max-attn (largest weight to a non-BOS key) or "
            "out-norm (norm of the head's output)."
        ),
    ] = "max-attn",
) -> None:
    """Stream the corpus through the subject model and keep, per unit, examples and statistics."""
    from autointerp.scale.shards import ShardSpec

    shard_spec = str(ShardSpec.parse(shard)) if shard is not None else None
    require_local("autointerp record", SAE_STACK if sae else LOCAL_STACK)
    from autointerp.subject.heads import HEAD_ACTIVATIONS, parse_heads
    from autointerp.subject.recorder import record_units
    from autointerp.subject.sae import parse_sae_specs

    saes = parse_sae_specs(sae or [])
    if not hook and not saes and parse_heads(heads) is None:
        raise UserError(
            "Give at least one --hook, --sae or --heads, e.g. --hook blocks.6.mlp.hook_post, "
            "--sae embedded or --heads all."
        )
    if head_activation not in HEAD_ACTIVATIONS:
        raise UserError(
            f"--head-activation {head_activation!r} is not one of {', '.join(HEAD_ACTIVATIONS)}; "
            "fix the value."
        )
    if ctx < 2 or tokens < ctx or batch_size < 1:
        raise UserError("--ctx must be >= 2, --tokens >= --ctx and --batch-size >= 1; fix the values.")
    from autointerp.corpus import check_encoding

    check_encoding(encoding)
    unit_list = parse_units(units)
    from autointerp.progress import RateProgress

    # The bar (and its clock) starts at the first report, once the model has loaded: the rate counts
    # streaming only, and a run that stops before (bad input, already complete) prints no bar. Piped or
    # logged, one plain line every ~10 s instead.
    with RateProgress(err, "recording", total=tokens) as bar:
        result = record_units(
            db=db,
            model=model,
            model_path=model_path,
            hooks=hook or [],
            saes=saes,
            units=unit_list,
            corpus=corpus or ["default"],
            encoding=encoding,
            max_tokens=tokens,
            ctx=ctx,
            batch_size=batch_size,
            top_k=top_k,
            seed=seed,
            include_special=keep_bos,
            shard=shard_spec,
            heads=heads,
            head_activation=head_activation,
            progress=bar.update,
        )
    if result.already_complete:
        console.print(f"run {result.run_id} is already complete in {db}; nothing to do.")
        return
    resumed = f" (resumed at {result.resumed_from:,} tokens)" if result.resumed_from else ""
    console.print(
        f"recorded {result.n_units:,} units over {result.n_tokens:,} tokens in {result.seconds:.1f} s"
        f"{resumed} -> {db} (run {result.run_id})"
    )


@app.command()
@user_errors
def merge(
    out: Annotated[Path, typer.Argument(help="The merged store to create (a new file).")],
    shards: Annotated[list[Path], typer.Argument(help="The shard stores (record --shard or label --shard).")],
) -> None:
    """Join shard stores into OUT: exactly what one `record` or `label` run would have written."""
    from autointerp.scale.merge import merge_stores

    result = merge_stores(out, shards)
    what = (
        f"{result.units:,} units of {len(result.record_runs)} sharded recording(s)"
        if result.record_runs
        else ""
    )
    labels = f"{len(result.label_runs)} label run(s)" if result.label_runs else ""
    console.print(
        f"merged {result.inputs} stores ({', '.join(x for x in (what, labels) if x) or 'no runs'}) -> {out}"
    )


scale_app = typer.Typer(
    help="Run record or label as n shards on a Ray cluster (or a local Ray), retry failed shards, merge.",
    no_args_is_help=True,
)
app.add_typer(scale_app, name="scale")
PASS_THROUGH = {"allow_extra_args": True, "ignore_unknown_options": True}
RayOpt = Annotated[
    str, typer.Option("--ray", help="Ray cluster address (HOST:PORT, ray://HOST:PORT, auto) or 'local'.")
]
ShardsOpt = Annotated[int, typer.Option(min=1, help="Number of shards (Ray tasks).")]
RetriesShardOpt = Annotated[int, typer.Option(min=0, help="Retries of a failed shard.")]


def run_scaled_command(
    kind: str, args: list[str], db: Path, out: Path, shards: int, ray: str, retries: int
) -> None:
    from autointerp.scale.ray_driver import run_scaled

    result = run_scaled(
        kind, args, db=db, out=out, shards=shards, address=ray, max_retries=retries, log=err.print
    )
    failed = [o.spec for o in result.shards if o.exit_code]
    console.print(
        f"{len(result.shards)} {kind} shards merged -> {out}"
        + (f" ({result.merged.units:,} units)" if result.merged.units else "")
        + (f"; shards {', '.join(failed)} ended with failed units (see `autointerp units`)" if failed else "")
    )
    if failed:
        raise typer.Exit(1)


@scale_app.command("record", context_settings=PASS_THROUGH)
@user_errors
def scale_record(
    ctx: typer.Context,
    db: Annotated[Path, typer.Option("--db", help="The merged store to create (a new file).")],
    ray: RayOpt = "local",
    shards: ShardsOpt = 2,
    max_retries: RetriesShardOpt = 2,
) -> None:
    """`autointerp record` as n shards (GPU tasks when the cluster has GPUs), merged into --db.

    Every other option is passed to `record` (e.g. --hook, --sae, --units, --tokens, --corpus)."""
    run_scaled_command("record", list(ctx.args), db, db, shards, ray, max_retries)


@scale_app.command("label", context_settings=PASS_THROUGH)
@user_errors
def scale_label(
    ctx: typer.Context,
    db: Annotated[Path, typer.Option("--db", help="The recorded store to label (read, not written).")],
    out: Annotated[Path, typer.Option(help="The merged labelled store to create (a new file).")],
    ray: RayOpt = "local",
    shards: ShardsOpt = 2,
    max_retries: RetriesShardOpt = 2,
) -> None:
    """`autointerp label` as n CPU shards (units split by a hash of their id), merged into --out.

    Every other option is passed to `label` (e.g. --explainer openai:MODEL --base-url URL, --limit)."""
    run_scaled_command("label", list(ctx.args), db, out, shards, ray, max_retries)


@app.command("train-sae")
@user_errors
def train_sae(
    out: Annotated[Path, typer.Option("--out", help="New folder for the SAE (SAELens format).")],
    hook: Annotated[str, typer.Option(help="Hook to train on.")] = "blocks.6.hook_resid_post",
    model: ModelOpt = "gemma-3-270m",
    model_path: ModelPathOpt = None,
    width: Annotated[int, typer.Option(min=1, help="Number of latents.")] = 4096,
    k: Annotated[int, typer.Option(min=1, help="Active latents per token (TopK).")] = 32,
    tokens: Annotated[int, typer.Option(help="Corpus tokens to stream through the model.")] = 1_000_000,
    passes: Annotated[
        float, typer.Option(help="Times each streamed token is trained on (buffer reuse).")
    ] = 1.0,
    corpus: Annotated[
        list[str] | None, typer.Option(help="default, wiki, code, a file/dir, hf:NAME.")
    ] = None,
    lr: Annotated[float | None, typer.Option(help="Adam learning rate (default: scaled by width).")] = None,
    eval_tokens: Annotated[int, typer.Option(help="Held-out tokens for the final evaluation.")] = 8192,
    seed: int = 0,
) -> None:
    """Train a TopK SAE on a hook and report variance explained, loss recovered and dead latents."""
    require_local("autointerp train-sae", SAE_STACK)
    from autointerp.subject.sae_train import train_sae_command

    r = train_sae_command(
        out=out,
        hook=hook,
        model=model,
        model_path=model_path,
        width=width,
        k=k,
        tokens=tokens,
        corpus_sources=corpus,
        passes=passes,
        lr=lr,
        eval_tokens=eval_tokens,
        seed=seed,
        log=lambda m: err.print(m),
    )
    m = r.eval
    console.print(
        f"saved {r.name} ({r.width} latents, k={r.k}) to {r.path}: "
        f"{r.train_tokens:,} tokens in {r.seconds:.0f} s; "
        f"held-out FVE {m.fve:.3f}, loss clean {m.loss_clean:.3f} / SAE {m.loss_spliced:.3f} / zero "
        f"{m.loss_zero:.3f} -> {m.loss_recovered:.1%} recovered, L0 {m.l0:.1f}, dead {m.dead_frac:.1%}"
    )
    console.print(f"record its latents with: autointerp record --db DB --sae {r.path}")


@app.command("counterfactuals")
@user_errors
def counterfactuals(
    db: Annotated[Path, typer.Option("--db", help="SQLite store file with recorded units.")],
    unit: Annotated[list[str] | None, typer.Option("--unit", help="Unit id (repeatable).")] = None,
    hook: Annotated[str | None, typer.Option("--hook", help="Only units of this hook.")] = None,
    units: Annotated[
        str | None,
        typer.Option(
            "--units", help="Unit indices (0:8, 3,17; with --hook), or heads, ids, patterns (5.1,5.*)."
        ),
    ] = None,
    llm: Annotated[
        str | None,
        typer.Option(
            "--llm",
            help="LLM spec that writes edits [default: config's explainer, else " + DEFAULT_LLM + "].",
        ),
    ] = None,
    no_llm: Annotated[
        bool, typer.Option("--no-llm", help="Only attributions, minimal examples, hard negatives.")
    ] = False,
    model: Annotated[str, typer.Option("--model", help="Subject model.")] = "gemma-3-270m",
    model_path: Annotated[
        str | None, typer.Option("--model-path", help="Local weights of the subject model.")
    ] = None,
    n_examples: Annotated[int, typer.Option("--n-examples", min=1, help="Top examples per unit.")] = 4,
    n_on: Annotated[
        int, typer.Option("--n-on", min=0, help="Non-firing examples to switch on per unit.")
    ] = 2,
    keep_frac: Annotated[float, typer.Option("--keep-frac", help="Minimal example keeps this share.")] = 0.8,
    off_frac: Annotated[
        float, typer.Option("--off-frac", help="`off` edit verifies below this share.")
    ] = 0.3,
    on_frac: Annotated[
        float, typer.Option("--on-frac", help="`on` edit verifies above this share of max.")
    ] = 0.5,
    n_hard: Annotated[int, typer.Option("--n-hard", min=0, help="Hard negatives per unit.")] = 5,
    corpus_windows: Annotated[
        int, typer.Option("--corpus-windows", min=0, help="Extra hard-negative candidates.")
    ] = 0,
) -> None:
    """Minimal examples, token attributions, LLM-written counterfactuals checked on the subject model,
    and hard negatives, for recorded units (resumable)."""
    cfg = config_in_force()
    llm = llm or cfg.models.explainer or DEFAULT_LLM
    require_local("autointerp counterfactuals")
    from autointerp.counterfactual import CounterfactualSettings, ProgressEvent, generate_counterfactuals
    from autointerp.progress import CountProgress
    from autointerp.store import Store
    from autointerp.subject.model import load_subject

    if not db.exists():
        raise UserError(f"No store at {db}; run `autointerp record --db {db} ...` first.")
    store = Store(db)
    ids = resolve_unit_ids(store, unit, hook, units)
    with option_errors():
        s = CounterfactualSettings(
            n_examples=n_examples,
            n_on=n_on,
            keep_frac=keep_frac,
            off_frac=off_frac,
            on_frac=on_frac,
            n_hard=n_hard,
            corpus_windows=corpus_windows,
        )
    client = None
    if not no_llm:
        from autointerp.llm import get_llm

        client = get_llm(llm, store)
    subject = load_subject(model, model_path)
    with CountProgress(err, "counterfactuals", total=len(ids)) as bar:

        def on_progress(ev: ProgressEvent) -> None:
            if ev.stage in ("done", "skipped"):
                bar.advance(f"{escape(ev.unit_id)} {ev.stage} · verified {ev.verified}/{ev.candidates}")

        summary = generate_counterfactuals(store, subject, ids, client, s, on_progress)
    t = summary.totals()
    console.print(
        f"{t['units']} units ({t['skipped']} already done): {t['minimal']} minimal examples "
        f"({t['minimal_shortened']} shortened), {t['verified']}/{t['candidates']} counterfactuals verified, "
        f"{t['hard_negatives']} hard negatives -> {db}"
    )


def highlight(tokens: list[str], acts: list[float], top: float) -> Text:
    """Tokens with background intensity by activation (relative to the unit's max)."""
    text = Text()
    for tok, a in zip(tokens, acts, strict=True):
        shown = tok.replace("\n", "⏎")
        frac = max(0.0, min(1.0, a / top)) if top > 0 else 0.0
        if frac > 0.05:
            g = int(80 + 175 * frac)
            text.append(
                shown, style=f"bold black on rgb({g},{g},0)" if frac > 0.5 else f"on rgb(0,{g // 2},0)"
            )
        else:
            text.append(shown, style="dim")
    return text


def open_store(db: Path):  # noqa: ANN201 - autointerp.store.Store
    """The store at `db`, which must exist (a reading command never creates one)."""
    from autointerp.store import Store

    if not db.exists():
        raise UserError(f"No store at {db}; run `autointerp record --db {db} ...` first.")
    return Store(db, read_only=True)


def score_cell(score) -> str:  # noqa: ANN001 - autointerp.types.Score | None
    """A score's value, or why it has none (nan: undefined, failed); empty when not scored."""
    if score is None:
        return ""
    return f"{score.value:.3f}" if score.value is not None else score.status


@app.command()
@user_errors
def show(
    unit_id: Annotated[
        str,
        typer.Argument(
            help="e.g. gemma-3-270m/blocks.6.mlp.hook_post/1234, or its end when unique: "
            "blocks.6.mlp.hook_post/1234."
        ),
    ],
    db: StoreOpt,
    kind: Annotated[str, typer.Option(help="Example kind: top, quantile, random, negative, ...")] = "top",
    n: Annotated[int, typer.Option(min=1, help="How many examples.")] = 10,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead.")] = False,
    width: Annotated[
        int, typer.Option(min=0, help="Tokens shown around each peak (0: the whole window).")
    ] = 24,
) -> None:
    """Show a unit's statistics, explanations with their scores, and examples (activating tokens
    highlighted)."""
    from typing import get_args

    from autointerp.listing import unit_explanations
    from autointerp.render import peak_slice
    from autointerp.types import ExampleKind

    kinds = get_args(ExampleKind)
    if kind not in kinds:
        raise UserError(f"--kind {kind!r} is not an example kind; choose from {', '.join(kinds)}.")
    from autointerp.units import find_unit

    store = open_store(db)
    unit = store.get_unit(find_unit(store, unit_id))
    s = unit.stats
    fired = s.frac_firing > 0
    explained = unit_explanations(store, unit.id)
    investigations = store.investigations(unit.id)
    # a unit that never fired has no activating examples: its "top" windows would all read max 0
    examples = store.examples(unit.id, kind)[:n] if fired or kind not in ("top", "quantile") else []
    if as_json:
        from pydantic_core import to_json  # strict JSON: infinite histogram edges become null

        out = {"unit": unit, "fired": fired, "explanations": explained, "examples": examples}
        out["investigations"] = [i.model_dump(exclude={"messages"}) for i in investigations]
        print(to_json(out, inf_nan_mode="null").decode())
        return
    firing = (
        f"fires on {round(s.frac_firing * s.n_tokens):,} of {s.n_tokens:,} tokens "
        f"({100 * s.frac_firing:.2f}%)"
        if fired
        else f"[yellow]never fired[/yellow] on its {s.n_tokens:,} recorded tokens"
    )
    console.print(
        f"[bold]{escape(unit.id)}[/bold]  max {s.max:.3g}  mean {s.mean:.3g}  std {s.std:.3g}  {firing}"
    )
    if explained:
        scorers = sorted({name for se in explained for name in se.scores})
        table = Table(title="explanations", show_header=True, header_style="bold")
        table.add_column("method")
        table.add_column("explanation", ratio=1)
        for name in scorers:
            table.add_column(name, justify="right")
        for se in explained:
            cells = [score_cell(se.scores.get(name)) for name in scorers]
            table.add_row(se.explanation.method, escape(se.explanation.text), *cells)
        console.print(table)
    else:
        console.print(f"(no explanations yet: `autointerp label --db {db} --unit {unit.id}`)")
    if investigations:
        table = Table(title="investigations", show_header=True, header_style="bold")
        for col in ("id", "mode", "status", "steps", "explanation"):
            table.add_column(col)
        for inv in investigations:
            text = inv.explanation or inv.reason
            table.add_row(inv.id, inv.mode, inv.status, str(inv.steps), escape(text or ""))
        console.print(table)
    if not fired and kind in ("top", "quantile"):
        console.print(f"(no {kind} examples: the unit never fired on the corpus)")
        return
    table = Table(show_header=True, header_style="bold", title=f"{kind} examples")
    table.add_column("#", justify="right")
    table.add_column("max", justify="right")
    table.add_column("context")
    heads = unit.ref.is_head
    if heads:  # where the head looked from its peak token
        table.add_column("peak token <- sources (weight)")
    for e in examples:
        label = f"{e.rank}" + (f" q{e.quantile}" if e.quantile is not None else "")
        row = [label, f"{e.max_act:.3g}", highlight(*peak_slice(e, width), s.max)]
        if heads:
            from autointerp.render import head_marked

            row.append(escape(head_marked(e, width)[1]))
        table.add_row(*row)
    console.print(table)
    if not examples:
        console.print(f"(no {kind} examples)")


@app.command("units")
@user_errors
def units_command(
    db: StoreOpt,
    sort: Annotated[
        str,
        typer.Option(help="index, freq (firing frequency), max (activation) or score (best explanation)."),
    ] = "index",
    hook: Annotated[str | None, typer.Option(help="Only units of this hook.")] = None,
    limit: Annotated[int | None, typer.Option(help="Show at most this many units.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead.")] = False,
) -> None:
    """List recorded units: how often they fire, their max activation, best explanation and its scores."""
    from typing import get_args

    from autointerp.listing import Sort, unit_summaries

    if sort not in get_args(Sort):
        raise UserError(f"--sort {sort!r} is not a sort order; choose from {', '.join(get_args(Sort))}.")
    if limit is not None and limit < 1:
        raise UserError("--limit must be at least 1; fix the value.")
    store = open_store(db)
    if hook and not store.units(hook=hook):
        hooks = sorted({u.ref.hook for u in store.units()})
        raise UserError(f"No recorded units of hook {hook!r} in {db}; recorded hooks: {', '.join(hooks)}.")
    rows = unit_summaries(store, hook, sort)[:limit]
    if as_json:
        from pydantic_core import to_json

        out = [r.model_dump() | {"fired": r.fired, "score": r.score} for r in rows]
        print(to_json(out, inf_nan_mode="null").decode())
        return
    if not rows:
        console.print(f"{db} holds no recorded units; run `autointerp record --db {db} ...` first.")
        return
    for source, members in by_source(rows).items():
        n = f"{len(members)} unit{'s' * (len(members) != 1)}"
        console.print(f"[bold]{escape(source)}/[/bold]INDEX  ({n} in {escape(str(db))})")
        console.print(units_table(members))
    example = rows[0].unit_id
    console.print(f"inspect a unit: autointerp show {escape(example)} --db {escape(str(db))}")


def units_table(rows: list) -> Table:  # rows: autointerp.listing.UnitSummary
    scorers = sorted({name for r in rows if r.best for name in r.best.scores})
    table = Table(show_header=True, header_style="bold")
    table.add_column("index", justify="right", no_wrap=True)
    table.add_column("fires", justify="right", no_wrap=True)
    table.add_column("freq", justify="right", no_wrap=True)
    table.add_column("max", justify="right", no_wrap=True)
    table.add_column("best explanation", ratio=1)
    for name in scorers:
        table.add_column(name, justify="right")
    for r in rows:
        best = r.best
        text = escape(best.explanation.text) if best else "" if r.fired else "[dim]never fired[/dim]"
        cells = [score_cell(best.scores.get(name) if best else None) for name in scorers]
        freq = f"{100 * r.frac_firing:.2g}%"
        index = r.unit_id.rsplit("/", 1)[1]
        table.add_row(index, f"{r.n_firing:,}", freq, f"{r.max:.3g}", text, *cells)
    return table


@app.command()
@user_errors
def label(
    db: DbOpt,
    units: Annotated[
        list[str] | None,
        typer.Option(
            "--unit", help="Unit id, its end, a head L.H or a pattern like 5.* (repeatable; default all)."
        ),
    ] = None,
    hook: Annotated[
        list[str] | None, typer.Option("--hook", help="Only units at this hook (repeatable).")
    ] = None,
    unit_spec: Annotated[
        str | None,
        typer.Option(
            "--units", help="Indices of the --hook units (0:8,17), or heads, ids, patterns (5.1,5.*)."
        ),
    ] = None,
    min_count: Annotated[
        int, typer.Option(help="Only units that fired on at least this many tokens (delphi's min_examples).")
    ] = 0,
    order: Annotated[
        str,
        typer.Option(help="index (as recorded), selective (rarest-firing first) or random (seeded)."),
    ] = "index",
    limit: Annotated[int | None, typer.Option(help="Label at most this many units.")] = None,
    explainer: Annotated[
        str | None,
        typer.Option(help="LLM spec of the explainer [default: config, else local:qwen2.5-coder-1.5b]."),
    ] = None,
    simulator: Annotated[
        str | None,
        typer.Option(help="LLM spec of the simulator and judges [default: config, else the explainer]."),
    ] = None,
    simulator_mode: Annotated[
        SimulatorMode | None,
        typer.Option(help="exact, exact-follow, json, head-exact or auto [default: config, else auto]."),
    ] = None,
    methods: Annotated[
        str | None,
        typer.Option(
            help="Explainer methods: top,highlight,contrastive,head, agent (an investigation per unit) "
            "[default: config, else highlight, and head with the head-exact simulator for attention heads]."
        ),
    ] = None,
    scorers: Annotated[
        str | None,
        typer.Option(
            help="correlation,detection,fuzzing,embedding,counterfactual [default: config, else correlation]."
        ),
    ] = None,
    agent_steps: Annotated[int, typer.Option(min=1, help="Method agent: steps per unit at most.")] = 16,
    agent_tokens: Annotated[
        int | None,
        typer.Option(min=1, help="Method agent: agent tokens per unit at most."),
    ] = None,
    agent_mode: AgentModeOpt = "auto",
    best_of: Annotated[
        int, typer.Option(min=1, help="Explanations sampled; the best on validation is kept.")
    ] = 1,
    revise: Annotated[
        bool, typer.Option("--revise", help="One revision round with the examples it predicted worst.")
    ] = False,
    concurrency: Annotated[
        int | None, typer.Option(min=1, help="Units in flight at once [default: config, else 4].")
    ] = None,
    base_url: BaseUrlOpt = None,
    timeout: TimeoutOpt = None,
    retries: RetriesOpt = None,
    no_cache: NoCacheOpt = False,
    report: Annotated[Path | None, typer.Option(help="Also write an HTML report here.")] = None,
    viewer_url: ViewerUrlOpt = VIEWER_URL,
    counterfactuals: Annotated[
        bool, typer.Option("--counterfactuals", help="First generate verified counterfactuals for the units.")
    ] = False,
    delphi: Annotated[
        bool,
        typer.Option(
            "--delphi", help="Detection / fuzzing with delphi's protocol (32 tokens, 5 per prompt)."
        ),
    ] = False,
    per_quantile: Annotated[
        int,
        typer.Option(
            min=0,
            help="Quantile windows simulated per activation quantile for the per-quantile correlations "
            "in a correlation score's details; 0 skips them (about a third fewer simulations).",
        ),
    ] = 1,
    shard: Annotated[
        str | None,
        typer.Option(
            help="i/n: label only the selected units of shard i of n (by a hash of the unit id), into "
            "a copy of --db (--out); `autointerp merge` joins the shard stores.",
        ),
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="The shard's store (default DB.label-I-of-N.db beside --db).")
    ] = None,
    batch: Annotated[
        bool,
        typer.Option(
            "--batch",
            help="Send the chat calls as OpenAI / Anthropic batches (half price): submit, then run the "
            "same command later to collect and continue (docs/labelling.md#batch-apis).",
        ),
    ] = False,
    config: Annotated[
        Path | None,
        typer.Option(
            help="Config file [default: ./autointerp.toml, else [tool.autointerp] in ./pyproject.toml]."
        ),
    ] = None,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="Count the units, LLM calls and tokens the run would send, and their cost; call nothing, "
            "write nothing.",
        ),
    ] = False,
) -> None:
    """Explain, simulate and score recorded units: bulk, resumable, with progress and a summary.

    A unit that never fired is skipped with its reason; exit 1 when an explanation failed or every
    score of a unit failed. --dry-run builds the run's prompts and counts them with the models'
    tokenizers (no model loads), and prices them for API models."""
    from autointerp.agent.bulk import AgentBudget
    from autointerp.llm import connection, parse_spec
    from autointerp.pipeline import LabelSettings
    from autointerp.scale.shards import ShardSpec, label_shard_store

    viewer = check_viewer_url(viewer_url)
    cfg = config_in_force(config)  # flags override it; a bad file fails here, before anything loads
    default = LabelSettings()
    explainer = explainer or cfg.models.explainer or default.explainer
    simulator = simulator or cfg.models.simulator
    simulator_mode = simulator_mode or cfg.label.simulator_mode or default.simulator_mode
    methods = methods or (",".join(cfg.label.methods) if cfg.label.methods else None)  # None: by unit kind
    scorers = scorers or ",".join(cfg.label.scorers or default.scorers)
    concurrency = concurrency or cfg.label.concurrency or default.concurrency
    shard_spec = ShardSpec.parse(shard) if shard is not None else None
    if out is not None and shard_spec is None:
        raise UserError("--out names a shard's store; give --shard i/n with it.")
    connection(timeout, retries)  # a bad value fails here, before anything loads
    for spec in (explainer, simulator or explainer):
        parse_spec(spec)
    if counterfactuals and not batch:
        require_local("autointerp label --counterfactuals")
    from autointerp.dryrun import estimate
    from autointerp.explain import EXPLAINERS
    from autointerp.pipeline import label as run_label
    from autointerp.pipeline import select_units
    from autointerp.progress import CountProgress
    from autointerp.score import SCORERS, ScoreSettings
    from autointerp.store import Store

    method_list = names(methods, "--methods", EXPLAINERS, extra=("agent",)) if methods is not None else None
    scorer_list = names(scorers, "--scorers", SCORERS)
    if batch:
        from autointerp.pipeline import LabelSettings, check_batch

        check_batch(
            LabelSettings(
                explainer=explainer, simulator=simulator or explainer, simulator_mode=simulator_mode
            ),
            counterfactuals=counterfactuals,
            no_cache=no_cache,
        )

    if not db.exists():
        raise UserError(f"No store at {db}; run `autointerp record --db {db} ...` first.")
    store = Store.reader(db) if dry_run else Store(db)  # a dry run writes nothing, not even a migration
    chosen = select_unit_ids(store, units, unit_spec, hook)
    ids = select_units(store, chosen, hooks=hook, min_count=min_count, order=order, limit=limit)
    if shard_spec:
        ids = [u for u in ids if shard_spec.has_unit(u)]
    with option_errors():
        settings = LabelSettings(
            explainer=explainer,
            simulator=simulator or explainer,
            simulator_mode=simulator_mode,
            methods=method_list,
            scorers=scorer_list,
            best_of=best_of,
            revise=revise,
            concurrency=concurrency,
            score=(ScoreSettings.delphi if delphi else ScoreSettings)(n_per_quantile=per_quantile),
        )
    if dry_run:
        print_estimate(estimate(db, ids, settings, base_url=base_url, no_cache=no_cache), counterfactuals)
        return
    if shard_spec:
        db = label_shard_store(db, shard_spec, out)
        err.print(f"shard {shard_spec}: {len(ids)} units -> {db}")
    with CountProgress(err, "labelling", total=len(ids) * len(method_list or [None])) as bar:

        def on_result(r) -> None:  # noqa: ANN001 - pipeline.UnitResult
            note = (
                "skipped (done)"
                if r.skipped
                else "skipped (never fired)"
                if r.skip_reason
                else "[red]failed[/red]"
                if r.error
                else f"waiting for the batch ({r.pending})"
                if r.pending
                else escape((r.explanation or "")[:40])
            )
            bar.advance(note, failed=bool(r.error or r.scores_failed))

        summary = run_label(
            db,
            ids,
            base_url=base_url,
            timeout=timeout,
            retries=retries,
            no_cache=no_cache,
            progress=on_result,
            counterfactuals=counterfactuals,
            shard=str(shard_spec) if shard_spec else None,
            batch_api=batch,
            **settings.model_dump(),
            agent=AgentBudget(max_steps=agent_steps, max_tokens=agent_tokens, agent_mode=agent_mode),
        )
    print_summary(summary)
    if summary.batch is not None:
        print_batch(summary)
    if report:
        from autointerp.report import write_report

        console.print(f"report: {write_report(Store(db), report, viewer)}")
    if not summary.ok:
        raise typer.Exit(1)


@app.command()
@user_errors
def investigate(
    db: StoreOpt,
    unit_id: Annotated[
        str | None, typer.Argument(help="The unit, e.g. gemma-3-270m/synthetic.months/0 (or its unique end).")
    ] = None,
    agent: Annotated[
        str | None,
        typer.Option(help="LLM spec of the agent [default: config's explainer, else " + DEFAULT_LLM + "]."),
    ] = None,
    simulator: Annotated[
        str | None, typer.Option(help="LLM spec of the simulator that scores (default: the agent).")
    ] = None,
    simulator_mode: SimulatorModeOpt = "auto",
    scorers: Annotated[str, typer.Option(help="Scorers of the final explanation.")] = "correlation",
    max_steps: Annotated[int, typer.Option(min=1, help="Agent turns at most.")] = 20,
    max_tokens: Annotated[
        int | None, typer.Option(min=1, help="Agent prompt + completion tokens at most.")
    ] = None,
    max_seconds: Annotated[float | None, typer.Option(min=0.001, help="Seconds at most.")] = None,
    max_scores: Annotated[int, typer.Option(min=0, help="Calls of the score tool at most.")] = 7,
    agent_mode: AgentModeOpt = "auto",
    resume: Annotated[
        str | None, typer.Option(help="Continue this investigation (its id) from its last stored step.")
    ] = None,
    synthetic: Annotated[
        Path | None, typer.Option(help="File defining the synthetic unit (default: the built-in suite).")
    ] = None,
    base_url: BaseUrlOpt = None,
    timeout: TimeoutOpt = None,
    retries: RetriesOpt = None,
    no_cache: NoCacheOpt = False,
) -> None:
    """Investigate a unit with an agent: it reads examples, tests hypotheses on texts it writes, and ends
    with an explanation (method `agent`) and its evidence, scored on the held-out test set.

    Exit 1 when the investigation did not finish (budget, invalid actions, LLM failure: resume it)."""
    from autointerp.agent.loop import AgentSettings, prepare
    from autointerp.agent.view import end_view, step_view
    from autointerp.aio import run_sync
    from autointerp.llm import connection, parse_spec
    from autointerp.score import SCORERS

    connection(timeout, retries)  # bad values fail here, before anything loads
    cfg = config_in_force()
    agent = agent or cfg.models.explainer or DEFAULT_LLM
    simulator = simulator or cfg.models.simulator
    if unit_id is None and resume is None:
        raise UserError("Name the unit to investigate (UNIT_ID), or pass --resume ID.")
    for spec in (agent, simulator):
        if spec is not None:
            parse_spec(spec)
    if synthetic is not None and not synthetic.is_file():
        raise UserError(f"No synthetic unit file at {synthetic}; pass a .py, .json or .yaml file.")
    s = AgentSettings(
        agent=agent,
        simulator=simulator,
        simulator_mode=simulator_mode,
        scorers=names(scorers, "--scorers", SCORERS),
        max_steps=max_steps,
        max_tokens=max_tokens,
        max_seconds=max_seconds,
        max_scores=max_scores,
        agent_mode=agent_mode,
    )
    investigator = prepare(
        db,
        unit_id or "",
        s,
        resume=resume,
        units_file=str(synthetic) if synthetic else None,
        on_step=lambda exp: console.print(step_view(exp)),
        base_url=base_url,
        timeout=timeout,
        retries=retries,
        no_cache=no_cache,
    )
    console.print(f"[bold]investigating {escape(investigator.inv.unit_id)}[/bold] ({investigator.inv.id})")
    out = run_sync(investigator.run())
    console.print(end_view(out.investigation, out.scores))
    if out.investigation.status != "finished":
        raise typer.Exit(1)


@app.command()
@user_errors
def chat(
    db: StoreOpt,
    unit_id: Annotated[str | None, typer.Argument(help="The unit (or its unique end).")] = None,
    agent: Annotated[
        str | None,
        typer.Option(help="LLM spec of the agent [default: config's explainer, else " + DEFAULT_LLM + "]."),
    ] = None,
    simulator: Annotated[
        str | None, typer.Option(help="LLM spec of the simulator of /score and /save (default: the agent).")
    ] = None,
    max_steps: Annotated[int, typer.Option(min=1, help="Agent turns per question at most.")] = 8,
    resume: Annotated[str | None, typer.Option(help="Continue this conversation (its id).")] = None,
    synthetic: Annotated[
        Path | None, typer.Option(help="File defining the synthetic unit (default: the built-in suite).")
    ] = None,
    base_url: BaseUrlOpt = None,
) -> None:
    """Talk with an agent about a unit: plain questions go to it; /act "text", /compare "a" "b",
    /examples top 5, /search "regex", /effect, /steer 4 "prompt", /ablate "prompt", /score "explanation"
    run tools; /save stores the hypothesis; /quit ends."""
    from autointerp.agent.chat import HELP, ChatSession
    from autointerp.agent.loop import AgentSettings, prepare
    from autointerp.agent.view import step_view
    from autointerp.aio import run_sync
    from autointerp.llm import parse_spec

    cfg = config_in_force()
    agent = agent or cfg.models.explainer or DEFAULT_LLM
    simulator = simulator or cfg.models.simulator
    if unit_id is None and resume is None:
        raise UserError("Name the unit to talk about (UNIT_ID), or pass --resume ID.")
    for spec in (agent, simulator):
        if spec is not None:
            parse_spec(spec)
    if synthetic is not None and not synthetic.is_file():
        raise UserError(f"No synthetic unit file at {synthetic}; pass a .py, .json or .yaml file.")
    s = AgentSettings(agent=agent, simulator=simulator, max_steps=max_steps)
    investigator = prepare(
        db,
        unit_id or "",
        s,
        mode="chat",
        resume=resume,
        units_file=str(synthetic) if synthetic else None,
        on_step=lambda exp: console.print(step_view(exp)),
        base_url=base_url,
    )
    console.print(f"[bold]{escape(investigator.inv.unit_id)}[/bold] (conversation {investigator.inv.id})")
    console.print(HELP, style="dim", markup=False)

    def read() -> str | None:
        try:
            return console.input("[bold]> [/bold]")
        except EOFError:
            return None

    run_sync(ChatSession(investigator, console.print).run(read))
    console.print(
        f"conversation {investigator.inv.id} stored; `--resume {investigator.inv.id}` continues it."
    )


def by_source(rows: list) -> dict[str, list]:
    """Rows with a `unit_id`, grouped by source (model/hook[/sae:NAME]): one table each, the unit shown by
    its index, so ids stay whole at 80 columns."""
    groups: dict[str, list] = {}
    for r in rows:
        groups.setdefault(r.unit_id.rsplit("/", 1)[0], []).append(r)
    return groups


def print_batch(summary) -> None:  # noqa: ANN001 - pipeline.LabelSummary
    """What a --batch run collected, submitted and still waits for, and what to do next."""
    b = summary.batch
    parts = [f"batch: {b.collected} results collected ({b.prompt_tokens}+{b.completion_tokens} tokens"]
    parts[0] += f", ${b.cost_usd:.4f} at the batch price)" if b.cost_usd is not None else ")"
    if b.errored:
        parts.append(f"{b.errored} came back without an answer")
    parts += [f"submitted {s.requests} requests to {escape(s.spec)} as {s.provider_id}" for s in b.submitted]
    if b.waiting:
        parts.append(f"{b.waiting} requests waiting in {len(b.open_batches) or 'open'} batch(es)")
    console.print(" · ".join(parts))
    if summary.pending:
        err.print(
            f"{len(summary.pending)} unit(s) wait for batch results; run the same command later (batches "
            "finish within 24 hours) to collect them and continue."
        )


def print_summary(summary) -> None:  # noqa: ANN001 - pipeline.LabelSummary
    scorers = sorted({k for r in summary.results for k in r.scores})
    shown = [r for r in summary.results if not r.skip_reason]  # dead units are counted below
    for source, members in by_source(shown).items():
        table = Table(title=f"explanations of {escape(source)}/INDEX", show_header=True, header_style="bold")
        table.add_column("index", justify="right", no_wrap=True)
        table.add_column("method")
        table.add_column("explanation", ratio=1)
        for sc in scorers:
            table.add_column(sc, justify="right")
        for r in members:
            # only numbers that measure something: an undefined score reads "nan", a failed one "failed"
            cells = [
                f"{r.scores[sc]:.3f}" if r.scores.get(sc) is not None else r.status.get(sc, "nan")
                for sc in scorers
            ]
            text = escape(r.explanation) if r.explanation else f"[red]{escape(r.error or '')}[/red]"
            if r.pending:
                text = f"[yellow]waiting for the batch ({r.pending})[/yellow]"
            table.add_row(r.unit_id.rsplit("/", 1)[1], r.method, text, *cells)
        console.print(table)
    done = [r for r in summary.results if not (r.error or r.skip_reason or r.pending)]
    parts = [
        f"{len(done)} done ({sum(r.skipped for r in done)} already in the store)",
        f"{len(summary.failures)} failed",
    ]
    if summary.unlabellable:
        parts.append(f"{len(summary.unlabellable)} skipped: never fired")
    for sc in scorers:
        st = summary.stats(sc)
        if st["n"]:
            parts.append(f"{sc} mean {st['mean']:.3f} median {st['median']:.3f} (n={st['n']})")
    console.print(" · ".join(parts) + f" · {summary.seconds:.0f} s")
    counts = summary.score_counts()
    if counts["nan"] or counts["failed"]:
        console.print(
            f"scores: {counts['ok']} ok · {counts['nan']} nan (undefined) · {counts['failed']} failed"
        )
    from autointerp.usage_view import usage_table

    console.print(usage_table(summary))
    console.print(usage_line(summary))
    if not summary.ok:
        n_fail, n_scores = len(summary.failures), len(summary.score_failures)
        err.print(
            f"[red]run {summary.run_id} failed:[/red] {n_fail} explanation(s) failed, "
            f"{n_scores} unit(s) with every score failed (reasons: autointerp show UNIT_ID --db DB)."
        )


def print_estimate(est, counterfactuals: bool) -> None:  # noqa: ANN001 - dryrun.DryRunEstimate
    from autointerp.usage_view import estimate_lines, estimate_table

    console.print(estimate_table(est))
    for line in estimate_lines(est):
        console.print(escape(line))
    if counterfactuals:
        console.print("--counterfactuals: generating them runs the subject model and is not counted here.")


def usage_line(summary) -> str:  # noqa: ANN001 - pipeline.LabelSummary
    """Tokens spent by each LLM role (prompt + completion), cache hits apart, and the cost where known."""
    roles = [
        f"{role} {u.prompt_tokens:,} + {u.completion_tokens:,}"
        for role, u in summary.usage.items()
        if u.calls or u.cached_calls
    ]
    line = "tokens spent (prompt + completion): " + (" · ".join(roles) or "none")
    hits = sum(u.cached_calls for u in summary.usage.values())
    if hits:
        saved = sum(u.cached_prompt_tokens + u.cached_completion_tokens for u in summary.usage.values())
        line += f" · cache hits: {hits:,} calls ({saved:,} tokens not spent)"
    cost = summary.cost_usd
    if cost is not None:
        unpriced = sum(u.unpriced_calls for u in summary.usage.values())
        line += f" · cost ${cost:.4f}" + (f" (+ {unpriced:,} calls without a price)" if unpriced else "")
    return line


@app.command()
@user_errors
def demo(
    db: Annotated[Path, typer.Option("--db", help="Where the demo store goes.")] = Path("runs/demo.db"),
    tokens: Annotated[int, typer.Option(help="Tokens to record.")] = 60_000,
    units: Annotated[str, typer.Option(help="Neurons and SAE latents to record.")] = "0:256",
    n_label: Annotated[
        int, typer.Option("--label", help="How many units of each kind to label with the embedded LLM.")
    ] = 3,
    min_count: Annotated[
        int, typer.Option(help="Label only units that fired on at least this many tokens.")
    ] = 20,
    order: Annotated[
        str, typer.Option(help="Which units first: selective (rarest-firing), random or index.")
    ] = "selective",
) -> None:
    """The main job on the embedded default: record Gemma 3 270M neurons and SAE latents, label a few
    of each kind, chosen as `label --hook H --min-count N --order O --limit N` would."""
    require_local("autointerp demo", SAE_STACK)
    from autointerp import assets
    from autointerp.pipeline import ORDERS, select_units
    from autointerp.store import Store

    if order not in ORDERS or min_count < 0 or n_label < 1:
        raise UserError(
            f"--order is one of {', '.join(ORDERS)}, --min-count >= 0 and --label >= 1; fix the values."
        )
    with err.status("checking embedded assets"):
        assets.setup(log=lambda m: None)
    hook, sae_hook = "blocks.6.mlp.hook_post", "blocks.6.hook_resid_post"
    record(db=db, hook=[hook], sae=["embedded"], units=units, tokens=tokens)
    store = Store(db)
    chosen = [
        uid
        for h in (hook, sae_hook)
        for uid in select_units(store, hooks=[h], min_count=min_count, order=order, limit=n_label)
    ]
    label(
        db=db,
        units=chosen,
        # Only a score that measures with the embedded models: the 1.5B judge says "1" to nearly every
        # window, so its detection balanced accuracy sits at chance (docs/benchmarks.md, meta-evaluation).
        scorers="correlation",
        concurrency=2,
        report=db.with_suffix(".html"),
    )
    console.print(f"store: {db}  ·  inspect a unit: autointerp show UNIT_ID --db {db}")


@app.command()
@user_errors
def bench(
    db: DbOpt,
    suite: Annotated[
        str, typer.Option(help="synthetic, real, or a .py/.json/.yaml file of units.")
    ] = "synthetic",
    units: Annotated[int | None, typer.Option("--units", min=1, help="Benchmark the first N units.")] = None,
    methods: Annotated[
        str, typer.Option(help="Explainer methods (agent: an investigation per unit).")
    ] = "top,highlight,contrastive",
    agent_steps: Annotated[int, typer.Option(min=1, help="Method agent: steps per unit.")] = 16,
    agent_mode: AgentModeOpt = "auto",
    explainer: Annotated[
        str | None,
        typer.Option(help="LLM spec of the explainer [default: config, else " + DEFAULT_LLM + "]."),
    ] = None,
    simulator: Annotated[
        str | None, typer.Option(help="LLM spec of the simulator (default: explainer).")
    ] = None,
    scorers: Annotated[str, typer.Option(help="correlation,detection,fuzzing,embedding.")] = "correlation",
    tokens: Annotated[int, typer.Option(min=1, help="Corpus tokens to record the units over.")] = 120_000,
    ctx: Annotated[int, typer.Option(min=2, help="Tokens per window.")] = 64,
    seed: Annotated[int, typer.Option(help="Seed of recording, sampling and scoring.")] = 0,
    concurrency: Annotated[int, typer.Option(min=1, help="Units in flight at once.")] = 1,
    timeout: TimeoutOpt = None,
    retries: RetriesOpt = None,
    no_meta: Annotated[
        bool, typer.Option("--no-meta", help="Skip scoring the truth and distractors.")
    ] = False,
    out: Annotated[Path | None, typer.Option(help="Report folder (default: beside the store).")] = None,
    viewer_url: ViewerUrlOpt = VIEWER_URL,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    delphi: Annotated[
        bool,
        typer.Option(
            "--delphi", help="Detection / fuzzing with delphi's protocol (32 tokens, 5 per prompt)."
        ),
    ] = False,
) -> None:
    """Benchmark explanation methods on ground-truth (or real) units: scores, CIs, matches, meta-eval."""
    from autointerp.llm import connection, parse_spec

    connection(timeout, retries)  # a bad value fails here, before anything loads
    cfg = config_in_force()
    explainer = explainer or cfg.models.explainer or DEFAULT_LLM
    simulator = simulator or cfg.models.simulator
    viewer = check_viewer_url(viewer_url)
    for spec in (explainer, simulator or explainer):
        parse_spec(spec)
    require_local("autointerp bench")
    from autointerp.bench.report import tables, write_report
    from autointerp.bench.run import run_bench
    from autointerp.explain import EXPLAINERS
    from autointerp.progress import PhaseProgress
    from autointerp.score import SCORERS

    method_list = names(methods, "--methods", EXPLAINERS, extra=("agent",))
    scorer_list = names(scorers, "--scorers", SCORERS)

    with PhaseProgress(err) as bars:
        result = run_bench(
            db,
            suite=suite,
            methods=method_list,
            explainer=explainer,
            simulator=simulator,
            scorers=scorer_list,
            seed=seed,
            n_units=units,
            tokens=tokens,
            ctx=ctx,
            concurrency=concurrency,
            timeout=timeout,
            retries=retries,
            meta=not no_meta,
            delphi=delphi,
            agent_steps=agent_steps,
            agent_mode=agent_mode,
            progress=lambda msg: err.print(f"[dim]{msg}[/dim]"),
            phases=bars.start,
        )
    paths = write_report(result, out or db.with_name(db.stem + "-bench"), viewer)
    if as_json:
        print(result.model_dump_json(indent=1))
        return
    for key, rows in tables(result).items():
        if key == "units":
            continue
        table = Table(title=key)
        for col in rows[0]:
            table.add_column(col)
        for row in rows[1:]:
            table.add_row(*row)
        console.print(table)
    console.print(f"report: {paths['html']} (+ .md, .png, .json)")


def open_reader(db: Path):  # noqa: ANN201 - autointerp.store.Store
    """The existing store at `db` on a connection that cannot write; an older schema is upgraded first."""
    from autointerp.store import Store

    if not db.exists():
        raise UserError(f"No store at {db}; run `autointerp record --db {db} ...` first.")
    try:
        return Store.reader(db)
    except UserError:
        Store(db)  # an older store gains the current schema (or this says why it cannot)
        return Store.reader(db)


@app.command()
@user_errors
def serve(
    db: StoreOpt,
    port: Annotated[int, typer.Option(min=1, max=65535, help="TCP port.")] = 8000,
    host: Annotated[str, typer.Option(help="Address to bind (127.0.0.1: this machine only).")] = "127.0.0.1",
    live: Annotated[
        bool, typer.Option("--live", help="Load the subject model (on first use) to read units on new text.")
    ] = False,
    model: Annotated[
        str | None, typer.Option(help="With --live: the subject model (default: the one that recorded).")
    ] = None,
    model_path: ModelPathOpt = None,
    agent: Annotated[
        str,
        typer.Option(
            help="With --live: the LLM spec of the agent in each unit page's chat panel ('' for no chat) "
            "[default: config's explainer, else " + DEFAULT_LLM + "]."
        ),
    ] = None,
    base_url: BaseUrlOpt = None,
) -> None:
    """A local web viewer of the store: an index of every unit with search, and a page per unit.

    Read-only on the store, but for the chat panel (--live): its conversations are stored as
    investigations, as `autointerp chat` stores them."""
    import socket

    from autointerp.errors import VIEWER_STACK

    require_local("autointerp serve", VIEWER_STACK, extra="viewer")
    if live:
        require_local("autointerp serve --live", SAE_STACK)
    if agent is None:
        agent = config_in_force().models.explainer or DEFAULT_LLM
    chat_agent = agent.strip() if live else ""
    if chat_agent:
        from autointerp.llm import parse_spec

        parse_spec(chat_agent)
    open_reader(db)
    try:
        with socket.create_server((host, port)):
            pass
    except OSError as e:
        raise UserError(
            f"Cannot listen on {host}:{port} ({e.strerror}); pass another --port or --host."
        ) from None
    import uvicorn

    from autointerp.viewer.app import create_app
    from autointerp.viewer.live import LiveModel

    live_model = LiveModel(model, model_path) if live else None
    rooms = None
    if live_model is not None and chat_agent:
        from autointerp.agent.loop import AgentSettings
        from autointerp.viewer.chat import ChatRooms

        settings = AgentSettings(agent=chat_agent, max_steps=8)  # per question, as in `autointerp chat`
        rooms = ChatRooms(db, settings, live_model.reader, base_url=base_url)
    app_ = create_app(db, live_model, rooms)
    console.print(f"autointerp viewer on [bold]http://{host}:{port}/[/bold]  ({escape(str(db))}, read-only)")
    uvicorn.run(app_, host=host, port=port, log_level="warning")


@app.command()
@user_errors
def export(
    db: StoreOpt,
    out: Annotated[Path, typer.Option(help="Folder to write the files into.")],
    fmt: Annotated[
        str, typer.Option("--format", help="neuronpedia: one JSON file per unit.")
    ] = "neuronpedia",
    unit: Annotated[list[str] | None, typer.Option(help="A unit id (repeatable).")] = None,
    hook: Annotated[str | None, typer.Option(help="Only units of this hook.")] = None,
    units: Annotated[
        str | None,
        typer.Option(help="Only these indices (0:512, 3,17,42), or heads, ids, patterns (5.1,5.*)."),
    ] = None,
) -> None:
    """Export units with their examples, explanations and scores (Neuronpedia's feature JSON)."""
    if fmt != "neuronpedia":
        raise UserError(f"--format {fmt!r} is not an export format; use neuronpedia.")
    from autointerp.neuronpedia import export_neuronpedia

    store = open_reader(db)
    ids = resolve_unit_ids(store, unit, hook, units)
    paths = export_neuronpedia(store, out, ids)
    console.print(f"wrote {len(paths)} feature files and manifest.json to {escape(str(out))}")


@app.command("heads")
@user_errors
def heads_command(
    db: StoreOpt,
    model: Annotated[
        str | None, typer.Option(help="Subject model [default: the one the store recorded].")
    ] = None,
    model_path: ModelPathOpt = None,
    corpus: Annotated[list[str] | None, typer.Option(help="Text the text detectors read.")] = None,
    ctx: Annotated[int, typer.Option(min=4, help="Tokens per text window.")] = 64,
    recompute: Annotated[bool, typer.Option(help="Compute again even when the store has the table.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead.")] = False,
) -> None:
    """The head wiki: every attention head's detector scores (previous-token, induction, duplicate-token,
    BOS, self, entropy, query-key distance) and categories; computed once and kept in the store."""
    from autointerp.head_wiki import head_metrics
    from autointerp.subject.head_detect import THRESHOLDS

    open_store(db)
    rows = head_metrics(
        db, model=model, model_path=model_path, recompute=recompute, corpus=corpus or ["default"], ctx=ctx
    )
    if as_json:
        print(json.dumps([m.model_dump(exclude={"settings"}) for m in rows]))
        return
    table = Table(show_header=True, header_style="bold", title=f"attention heads of {escape(rows[0].model)}")
    for col in ("head", "prev", "induct", "dup", "bos", "self", "entropy", "dist", "categories"):
        table.add_column(col, justify="left" if col in ("head", "categories") else "right")
    for m in rows:
        nums = (m.previous_token, m.induction, m.duplicate_token, m.bos, m.self_attn)
        table.add_row(
            f"{m.layer}.{m.head}",
            *(f"{x:.2f}" for x in nums),
            f"{m.entropy:.2f}",
            f"{m.mean_distance:.1f}",
            ", ".join(m.categories),
        )
    console.print(table)
    rules = ", ".join(f"{name}: {metric} >= {t}" for name, (metric, t) in THRESHOLDS.items())
    console.print(f"[dim]categories: {rules} (docs/heads.md)[/dim]")


def main() -> None:  # pragma: no cover - console entry point
    sys.exit(app())
