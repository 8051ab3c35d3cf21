"""Rich tables of what a label run spent on LLMs (calls, tokens and cost per role, in total and per unit),
and of what a dry run estimates it would spend."""

from __future__ import annotations

from rich.table import Table

from autointerp.dryrun import DryRunEstimate
from autointerp.pipeline import LabelSummary, RoleUsage


def money(cost: float | None) -> str:
    """A cost in USD, or `-` where no price is known."""
    if cost is None:
        return "-"
    return f"${cost:.4f}" if cost < 100 else f"${cost:,.2f}"


def _row(name: str, u: RoleUsage) -> list[str]:
    hits = f"{u.cached_calls:,}" if u.cached_calls else ""
    return [
        name,
        f"{u.calls:,}",
        f"{u.prompt_tokens:,}",
        f"{u.reused_prompt_tokens:,}" if u.reused_prompt_tokens else "",
        f"{u.completion_tokens:,}",
        hits,
        money(u.cost_usd),
    ]


def usage_table(summary: LabelSummary) -> Table:
    """Per LLM role, the total, and the mean per unit labelled: calls, prompt tokens (of them reused from
    a prefix cache), completion tokens, cache hits (nothing spent) and cost at list prices."""
    table = Table(title="LLM usage", show_header=True, header_style="bold")
    table.add_column("role")
    for col in ("calls", "prompt tokens", "of them reused", "completion tokens", "cache hits", "cost"):
        table.add_column(col, justify="right")
    for role, u in summary.usage.items():
        if u.calls or u.cached_calls:
            table.add_row(*_row(role, u))
    table.add_row(*_row("total", summary.total), style="bold")
    per = summary.per_unit
    if per is not None:
        table.add_row(
            f"per unit (n={per.units:,})",
            f"{per.calls:,.1f}",
            f"{per.prompt_tokens:,.0f}",
            "",
            f"{per.completion_tokens:,.0f}",
            "",
            money(per.cost_usd),
        )
    return table


def estimate_table(est: DryRunEstimate) -> Table:
    """A dry run's estimate per LLM role and in total: calls, prompt tokens, completion tokens (typical
    and the max_tokens bound) and cost at list prices (typical / bound)."""
    table = Table(title="label --dry-run: what the run would send", show_header=True, header_style="bold")
    table.add_column("role")
    for col in ("calls", "cached", "prompt tokens", "completion typ / max", "cost typ / max"):
        table.add_column(col, justify="right")

    def cost(a: float | None, b: float | None) -> str:
        return "-" if a is None else f"{money(a)} / {money(b)}"

    for role, r in est.roles.items():
        mark = "" if r.exact else " ~"
        table.add_row(
            role,
            f"{r.calls:,}",
            f"{r.cached_calls:,}" if r.cached_calls else "",
            f"{r.prompt_tokens:,}{mark}",
            f"{r.completion_typical:,} / {r.completion_bound:,}{mark}",
            cost(r.cost_typical, r.cost_bound),
        )
    table.add_row(
        "total",
        f"{est.total('calls'):,}",
        "",
        f"{est.total('prompt_tokens'):,}",
        f"{est.total('completion_typical'):,} / {est.total('completion_bound'):,}",
        cost(est.total("cost_typical"), est.total("cost_bound")),
        style="bold",
    )
    n = est.to_label - est.failed
    if n > 0:
        per = est.total("cost_typical")
        table.add_row(
            f"per unit (n={n:,})",
            f"{est.total('calls') / n:,.1f}",
            "",
            f"{est.total('prompt_tokens') / n:,.0f}",
            f"{est.total('completion_typical') / n:,.0f} / {est.total('completion_bound') / n:,.0f}",
            "-" if per is None else money(per / n),
        )
    return table


def estimate_lines(est: DryRunEstimate) -> list[str]:
    """What the table does not say: which units, how tokens were counted, and notes."""
    lines = [
        f"{est.units:,} units: {est.to_label:,} to label, {est.already_done:,} already done (skipped), "
        f"{est.unlabellable:,} never fired"
        + (f", {est.failed:,} cannot be explained as asked" if est.failed else "")
    ]
    counted = {f"{r.spec}: {r.counted_by}" for r in est.roles.values()}
    lines.append(
        "tokens counted by "
        + "; ".join(sorted(counted))
        + ("" if all(r.exact for r in est.roles.values()) else " (~: an estimate)")
    )
    return lines + est.notes
