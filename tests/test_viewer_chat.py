"""The viewer's chat endpoint, driven by the scripted LLM on a synthetic months unit (no model): the agent
runs its tools, answers, and the conversation is stored as a `chat` investigation that goes on."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from autointerp.agent.loop import AgentSettings
from autointerp.llm.base import ChatRequest, LLMError
from autointerp.store import Store
from autointerp.viewer.app import create_app
from autointerp.viewer.chat import ChatRooms
from autointerp.viewer.live import LiveModel
from tests.conftest import build_month_store
from tests.test_agent import UNIT, WordTokenizer, act


@pytest.fixture
def synth(tmp_path, monkeypatch) -> Store:
    monkeypatch.setattr("autointerp.agent.reader.load_tokenizer", lambda model: WordTokenizer())
    return build_month_store(tmp_path / "synth.db", n_units=1, hook="synthetic.months")


def chat_client(store: Store, spec: str) -> TestClient:
    live = LiveModel()
    rooms = ChatRooms(store.path, AgentSettings(agent=spec, max_steps=4), live.reader)
    return TestClient(create_app(store.path, live, rooms))


def test_chat_runs_the_agents_tools_answers_and_stores_the_conversation(synth, scripted):
    llm = scripted("agent")
    llm.enqueue(
        act("activations", "Test French months.", texts=["Il est né en juillet.", "Born in July."]),
        act("answer", text="It fires on English month names only.", hypothesis="English month names"),
    )
    client = chat_client(synth, llm.spec)
    r = client.post(f"/api/chat/{UNIT}", json={"question": "does it fire on French month names?"})
    assert r.status_code == 200, r.text
    reply = r.json()
    assert reply["answer"] == "It fires on English month names only."
    assert reply["hypothesis"] == "English month names" and reply["note"] == ""
    assert [(s["id"], s["tool"], s["source"]) for s in reply["steps"]] == [
        ("e1", "activations", "agent"),
        ("e2", "answer", "agent"),
    ]
    first = reply["steps"][0]
    assert first["arguments"] == {"texts": ["Il est né en juillet.", "Born in July."]}
    assert first["thought"] == "Test French months." and "' July' 1.00" in first["result"]
    conversation = reply["conversation"]
    store = Store(synth.path)
    (inv,) = store.investigations(UNIT)
    assert inv.id == conversation and inv.mode == "chat" and inv.status == "finished"
    assert [e.tool for e in store.experiments(inv.id)] == ["activations", "answer"]

    # the next question continues the same conversation: the agent sees what came before
    llm.enqueue(act("answer", text="Yes, May fires."))
    r = client.post(f"/api/chat/{UNIT}", json={"question": "and May?", "conversation": conversation})
    assert r.json()["answer"] == "Yes, May fires." and [s["id"] for s in r.json()["steps"]] == ["e3"]
    last = [q for q in llm.requests if isinstance(q, ChatRequest)][-1]
    assert any("does it fire on French month names?" in m.content for m in last.messages)
    assert [e.id for e in store.experiments(conversation)] == ["e1", "e2", "e3"]
    page = client.get(f"/unit/{UNIT}").text
    assert 'id="chat"' in page and llm.spec in page and conversation in page  # listed under investigations


def test_a_failed_llm_is_a_note_and_bad_questions_are_one_sentence(synth, scripted):
    llm = scripted("agent")
    llm.enqueue(LLMError("scripted:agent: the server went away"))
    client = chat_client(synth, llm.spec)
    reply = client.post(f"/api/chat/{UNIT}", json={"question": "what is it?"}).json()
    assert reply["answer"] is None and "the agent's LLM failed" in reply["note"] and reply["steps"] == []
    r = client.post(f"/api/chat/{UNIT}", json={"question": "  "})
    assert r.status_code == 400
    assert r.json() == {"error": "The question is empty; type a question about the unit."}
    r = client.post(f"/api/chat/{UNIT}", json={"question": "hi", "conversation": "inv-nope"})
    assert r.status_code == 400 and "No conversation inv-nope" in r.json()["error"]
    r = client.post("/api/chat/m/synthetic.months/9", json={"question": "hi"})
    assert r.status_code == 404


def test_without_the_chat_the_endpoint_says_so_and_the_page_has_no_panel(synth):
    client = TestClient(create_app(synth.path, LiveModel()))
    r = client.post(f"/api/chat/{UNIT}", json={"question": "hi"})
    assert r.status_code == 404 and "The chat is off" in r.json()["error"]
    assert 'id="chat"' not in client.get(f"/unit/{UNIT}").text
    assert Store(synth.path).investigations(UNIT) == []


def test_serve_refuses_a_bad_agent_spec_before_anything_starts(synth):
    from typer.testing import CliRunner

    from autointerp.cli import app

    r = CliRunner().invoke(app, ["serve", "--db", str(synth.path), "--live", "--agent", "gpt-4"])
    assert r.exit_code == 2 and "'gpt-4' is not an LLM spec" in r.output
