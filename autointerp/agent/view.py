"""How an investigation is shown in the terminal (rich): one compact block per experiment, and the end."""

from __future__ import annotations

from rich.console import Group
from rich.markup import escape
from rich.text import Text

from autointerp.agent.tools import brief
from autointerp.types import Experiment, Investigation, Score

MAX_LINES = 8  # lines of a tool result shown per experiment


def step_view(exp: Experiment) -> Group:
    """`e3 activations  (thought)` and the result the agent was shown, or the error in red."""
    who = "" if exp.source == "agent" else " [cyan](you)[/cyan]"
    head = f"[bold]{exp.id}[/bold] {escape(exp.tool or '(no action)')}{who}"
    if exp.thought:
        head += f"  [italic]{escape(exp.thought[:120])}[/italic]"
    if exp.error:
        return Group(head, Text("  " + exp.error, style="red"))
    lines = brief(exp.tool, exp.result).splitlines()
    more = [f"  ... {len(lines) - MAX_LINES} more lines"] if len(lines) > MAX_LINES else []
    return Group(head, Text("\n".join("  " + x for x in lines[:MAX_LINES] + more), style="dim"))


def end_view(inv: Investigation, scores: list[Score]) -> Group:
    """Status, explanation, evidence, held-out scores and what the investigation spent."""
    status = "saved" if inv.status == "running" else inv.status  # a chat's /save
    colour = {"finished": "green", "saved": "green", "exhausted": "yellow"}.get(status, "red")
    parts = [f"[{colour}]{status}[/{colour}]" + (f": {escape(inv.reason)}" if inv.reason else "")]
    if inv.explanation:
        parts.append(f"explanation: [bold]{escape(inv.explanation)}[/bold]")
    for side in ("supporting", "refuting"):
        if inv.evidence.get(side):
            parts.append(f"{side}: {', '.join(inv.evidence[side])}")
    for x in scores:
        value = f"{x.value:.3f}" if x.value is not None else f"{x.status} ({x.reason})"
        parts.append(f"{x.scorer} on the held-out test set: {escape(value)}")
    parts.append(
        f"{inv.steps} steps, {inv.prompt_tokens + inv.completion_tokens:,} agent tokens, "
        f"{inv.seconds:.1f} s; investigation {inv.id}"
    )
    return Group(*parts)
