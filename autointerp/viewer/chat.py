"""`serve --live`: the chat panel of a unit page. A question goes to the investigation agent
(`autointerp.agent`), which runs its tools on the live model until it answers. Each conversation is an
investigation in mode `chat`, stored step by step as `autointerp chat` stores it (so `chat --resume ID`
continues it in the terminal): the only writes the viewer makes, through a store of its own."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, Field

from autointerp.errors import UserError
from autointerp.store import Store
from autointerp.types import Experiment, Unit

if TYPE_CHECKING:
    from autointerp.agent.chat import ChatSession
    from autointerp.agent.loop import AgentSettings
    from autointerp.agent.reader import ActReader

MAX_QUESTION_CHARS = 2000
RESULT_CHARS = 600  # of a tool's result, shown per step


class ChatAsk(BaseModel):
    question: str = Field(min_length=1, max_length=MAX_QUESTION_CHARS)
    conversation: str | None = None  # None: start one


class ChatStep(BaseModel):
    """One experiment of the conversation, compact: the tool, its arguments, and what the agent saw."""

    id: str
    tool: str
    source: str  # agent | person
    thought: str = ""
    arguments: dict = Field(default_factory=dict)
    result: str = ""  # the result as the agent was shown it (cut at RESULT_CHARS)
    error: str = ""


class ChatReply(BaseModel):
    conversation: str  # the investigation's id
    unit_id: str
    answer: str | None  # None: no answer this time (budget, invalid actions, the LLM failed): see `note`
    hypothesis: str | None
    steps: list[ChatStep]
    note: str = ""


def chat_step(exp: Experiment) -> ChatStep:
    from autointerp.agent.tools import brief

    result = ""
    if not exp.error and exp.tool and exp.result:
        text = brief(exp.tool, exp.result)
        result = text if len(text) <= RESULT_CHARS else text[:RESULT_CHARS] + " …"
    return ChatStep(
        id=exp.id, tool=exp.tool, source=exp.source, thought=exp.thought, arguments=exp.arguments,
        result=result, error=exp.error,
    )  # fmt: skip


class ChatRooms:
    """The conversations of one served store. Agent turns run on one event loop of their own (the LLM
    clients stay on it); one question at a time per conversation."""

    def __init__(
        self,
        db: str | Path,
        settings: AgentSettings,
        reader: Callable[[Store, Unit], ActReader],
        **llm_options,
    ):
        """`reader(store, unit)`: the unit's activations on new text (the live model's)."""
        self.db, self.settings, self.reader, self.llm_options = Path(db), settings, reader, llm_options
        self._sessions: dict[str, ChatSession] = {}
        self._busy: set[str] = set()
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def agent(self) -> str:
        return self.settings.agent

    def _run(self, coro):  # noqa: ANN001, ANN202
        with self._lock:
            if self._loop is None:
                self._loop = asyncio.new_event_loop()
                threading.Thread(target=self._loop.run_forever, name="autointerp-chat", daemon=True).start()
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def _session(self, store: Store, unit: Unit, conversation: str | None) -> ChatSession:
        from autointerp.agent.chat import ChatSession
        from autointerp.agent.loop import prepare

        if conversation in self._sessions:
            session = self._sessions[conversation]
        else:
            if conversation is not None and store.get_investigation(conversation) is None:
                raise UserError(f"No conversation {conversation} in {self.db.name}; ask without one.")
            investigator = prepare(
                self.db, unit.id, self.settings, mode="chat", resume=conversation,
                reader=self.reader(store, unit), **self.llm_options,
            )  # fmt: skip
            session = ChatSession(investigator, lambda _: None)
        if session.agent.inv.unit_id != unit.id:
            raise UserError(
                f"Conversation {session.agent.inv.id} is about {session.agent.inv.unit_id}; ask on its page."
            )
        return session

    def ask(self, store: Store, unit: Unit, body: ChatAsk) -> ChatReply:
        """The agent's answer to one question, with every tool it ran on the way."""
        if not body.question.strip():
            raise UserError("The question is empty; type a question about the unit.")
        with self._lock:
            if body.conversation in self._busy:
                raise UserError(f"Conversation {body.conversation} is still answering; wait for it.")
            if body.conversation is not None:
                self._busy.add(body.conversation)
        inv_id = body.conversation
        try:
            session = self._session(store, unit, body.conversation)
            inv_id = session.agent.inv.id
            with self._lock:
                self._sessions[inv_id] = session
                self._busy.add(inv_id)
            steps: list[Experiment] = []
            notes: list[str] = []
            session.agent.on_step = steps.append
            session.show = lambda msg: notes.append(_plain(msg))
            answer = self._run(_answer(session, body.question.strip()))
        finally:
            with self._lock:
                self._busy.discard(inv_id)
        return ChatReply(
            conversation=inv_id,
            unit_id=unit.id,
            answer=answer.result.get("text") if answer else None,
            hypothesis=session.agent.hypothesis,
            steps=[chat_step(e) for e in steps],
            note=" ".join(notes),
        )


async def _answer(session: ChatSession, question: str) -> Experiment | None:
    """The agent's `answer` experiment (None: none); the stored conversation reads `finished` between
    questions, as `autointerp chat` leaves it."""
    try:
        return await session.ask(question)
    finally:
        session.agent.end("finished", "")


def _plain(msg: object) -> str:
    from rich.text import Text

    return Text.from_markup(msg).plain if isinstance(msg, str) else str(msg)
