"""`autointerp chat`: a conversation about one unit in the terminal.

A plain line goes to the agent, which runs tools (each shown as it runs) until it answers with the
`answer` tool. Lines starting with `/` run a tool directly (recorded as the person's experiment, and
shown to the agent in its transcript) or manage the conversation. The transcript and every experiment
are stored after each step, so `--resume ID` picks the conversation up again.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable

from rich.console import RenderableType

from autointerp.agent.loop import MAX_INVALID, Investigator
from autointerp.agent.tools import ActionError, Toolbox, ToolError
from autointerp.agent.view import end_view
from autointerp.llm.base import LLMError, Message
from autointerp.types import Experiment

HELP = """a plain question goes to the agent; commands:
  /act "text" ["text" ...]   the unit's activations on your texts
  /compare "text" "edited"   activations before and after an edit
  /examples [KIND] [N]       explain-split examples: top, random, quantile, negative
  /search "regex"            explain-split windows matching a pattern, with the unit's activation
  /effect                    tokens the unit's output direction promotes and suppresses
  /steer STRENGTH "prompt"   next-token change with the unit set to STRENGTH x its max
  /ablate "prompt"           next-token change with the unit zeroed
  /score "explanation"       simulate the unit from an explanation (explain split)
  /save                      store the hypothesis as an explanation (method agent)
  /quit                      end the conversation"""


class CommandError(Exception):
    """A chat line that is not a command; shown, and the conversation goes on."""


def parse_command(line: str) -> tuple[str, dict] | tuple[str, None]:
    """`/act "a" "b"` -> ("activations", {"texts": [...]}); /save, /quit, /help -> (name, None)."""
    try:
        words = shlex.split(line[1:])
    except ValueError as e:
        raise CommandError(f"cannot read {line!r} ({e}); quote texts with double quotes") from None
    if not words:
        raise CommandError("an empty command; /help lists them")
    name, rest = words[0].lower(), words[1:]
    if name in ("save", "quit", "exit", "help"):
        return ("quit" if name == "exit" else name), None
    if name == "act":
        return "activations", {"texts": rest}
    if name == "compare":
        if len(rest) != 2:
            raise CommandError('/compare takes two quoted texts: /compare "text" "edited text"')
        return "compare", {"text": rest[0], "edited_text": rest[1]}
    if name == "examples":
        args: dict = {"kind": rest[0]} if rest else {}
        if len(rest) > 1:
            if not rest[1].isdigit():
                raise CommandError(f"/examples {rest[0]} {rest[1]}: the count must be a number")
            args["n"] = int(rest[1])
        return "examples", args
    if name == "score":
        return "score", {"explanation": " ".join(rest)}
    if name == "search":
        if len(rest) != 1:
            raise CommandError('/search takes one quoted pattern: /search "March|May"')
        return "search", {"pattern": rest[0]}
    if name in ("effect", "output_effect"):
        return "output_effect", {}
    if name == "steer":
        if len(rest) != 2:
            raise CommandError('/steer takes a strength and a quoted prompt: /steer 4 "We met in"')
        try:
            strength = float(rest[0])
        except ValueError:
            raise CommandError(f"/steer {rest[0]}: the strength must be a number, e.g. 4 or -2") from None
        return "steer", {"prompt": rest[1], "strength": strength}
    if name == "ablate":
        if len(rest) != 1:
            raise CommandError('/ablate takes one quoted prompt: /ablate "We met in"')
        return "ablate", {"prompt": rest[0]}
    raise CommandError(f"/{name} is not a command; /help lists them")


class ChatSession:
    """One conversation: the agent's investigator in chat mode, and the tools for the person."""

    def __init__(self, agent: Investigator, show: Callable[[RenderableType], None]):
        self.agent, self.show = agent, show

    async def ask(self, question: str) -> Experiment | None:
        """The agent works on a question until it answers (or its per-question budget runs out)."""
        agent = self.agent
        agent.messages.append(Message(role="user", content=question))
        agent.invalid, used = 0, 0
        while True:
            if reason := agent.over_budget(used):
                self.show(f"[yellow]no answer[/yellow]: {reason}")
                return None
            try:
                exp = await agent.step()
            except LLMError as e:
                self.show(f"[red]the agent's LLM failed[/red]: {e}; ask again.")
                if agent.messages and agent.messages[-1].content == question:
                    agent.messages.pop()
                return None
            used += 1
            if agent.invalid >= MAX_INVALID:
                self.show(f"[red]no answer[/red]: {MAX_INVALID} invalid actions in a row; ask again.")
                return None
            if exp.tool == "answer" and not exp.error:
                return exp

    async def direct(self, name: str, raw: dict) -> Experiment:
        """Run a tool for the person: stored as an experiment, and told to the agent."""
        agent = self.agent
        exp = Experiment(
            id=agent.next_id(),
            investigation_id=agent.inv.id,
            step=agent.inv.steps,
            tool=name,
            source="person",
        )
        try:
            args = Toolbox.parse(name, raw, agent.tools)
            exp.arguments = args.model_dump()
            result = await agent.toolbox.run(name, args)
            exp.result = result.model_dump()
            agent.note_hypothesis(args)
            agent.messages.append(
                Message(role="user", content=f"The person ran {exp.id} {name}: {result.brief()}")
            )
        except (ActionError, ToolError) as e:
            exp.arguments, exp.error = exp.arguments or raw, str(e)
        agent.record(exp)
        return exp

    async def save(self) -> None:
        text = self.agent.hypothesis
        if not text:
            self.show("[yellow]no hypothesis yet[/yellow]: ask the agent, or /score one first.")
            return
        scores = await self.agent.save(text)
        self.show(end_view(self.agent.inv, scores))

    async def handle(self, line: str) -> bool:
        """One line of input; False when the conversation ends."""
        line = line.strip()
        if not line:
            return True
        if not line.startswith("/"):
            await self.ask(line)
            return True
        try:
            name, raw = parse_command(line)
        except CommandError as e:
            self.show(f"[red]{e}[/red]")
            return True
        if name == "quit":
            return False
        if name == "help":
            self.show(HELP)
        elif name == "save":
            try:
                await self.save()
            except LLMError as e:
                self.show(f"[red]scoring failed[/red]: {e}; /save again.")
        else:
            try:
                await self.direct(name, raw)  # type: ignore[arg-type]
            except LLMError as e:
                self.show(f"[red]the simulator failed[/red]: {e}")
        return True

    async def run(self, read: Callable[[], str | None]) -> None:
        """Read lines (None: end of input) until /quit; the investigation's row ends `finished`."""
        while (line := read()) is not None:
            if not await self.handle(line):
                break
        self.agent.end("finished", "")
