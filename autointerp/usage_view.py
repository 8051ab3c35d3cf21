"""Rich tables of what a label run spent on LLMs: calls, tokens and cost per role, in total and per unit."""

from __future__ import annotations

from rich.table import Table

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
