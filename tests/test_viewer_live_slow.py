"""`serve --live` on the real embedded Gemma: per-token activations of a neuron and of an embedded-SAE
latent, output tokens through the unembedding, a steered completion, and the chat agent's tool reading
the neuron on the same loaded model."""

from __future__ import annotations

import pytest
import torch
from fastapi.testclient import TestClient

from autointerp.store import Store
from autointerp.types import Context, Example, RunRecord, Unit, UnitRef, UnitStats
from autointerp.viewer.app import create_app
from autointerp.viewer.live import LiveModel

pytestmark = pytest.mark.slow
HOOK, SAE_HOOK, TEXT = (
    "blocks.6.mlp.hook_post",
    "blocks.6.hook_resid_post",
    "The meeting is on the 3rd of March.",
)


@pytest.fixture
def live_store(tmp_path) -> Store:
    from autointerp.subject.sae import embedded_sae_path, sae_sha256, sae_unit_name

    sae = str(embedded_sae_path())
    settings = {"model": "gemma-3-270m", "sae": {SAE_HOOK: sae}, "sae_sha256": {SAE_HOOK: sae_sha256(sae)}}
    store = Store(tmp_path / "g.db")
    store.start_run(RunRecord(id="r", kind="record", settings=settings, code_version="t", started_at="now"))
    stats = UnitStats(
        n_tokens=10, max=2.0, mean=0.0, std=1.0, frac_firing=0.1, fire_threshold=0.0,
        hist_edges=[float("-inf"), 0.0, float("inf")], hist_counts=[9, 1],
    )  # fmt: skip
    refs = [UnitRef(model="gemma-3-270m", hook=HOOK, index=3)]
    refs.append(UnitRef(model="gemma-3-270m", hook=SAE_HOOK, index=5, sae=sae_unit_name(sae)))
    units = [Unit(ref=r, run_id="r", stats=stats) for r in refs]
    ctx = Context(id="c", token_ids=[2, 100], tokens=["<bos>", " a"])
    store.write_units(
        units, [Example(unit_id=u.id, kind="top", rank=0, context=ctx, acts=[0, 1]) for u in units]
    )
    return store


@pytest.fixture
def client(gemma, live_store) -> TestClient:
    return TestClient(create_app(live_store.path, LiveModel(subject=gemma)))


def test_live_neuron_activations_match_the_hooked_forward_pass(client, gemma):
    uid = f"gemma-3-270m/{HOOK}/3"
    r = client.post(f"/api/live/{uid}", json={"text": TEXT})
    assert r.status_code == 200, r.text
    tokens = r.json()["tokens"]
    ids = gemma.tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    assert [t["text"] for t in tokens] == gemma.token_strs(ids)  # BOS read, not shown
    want = gemma.hook_acts(torch.tensor([[gemma.bos_id, *ids]]), [HOOK])[HOOK][0, 1:, 3].float()
    got = torch.tensor([t["act"] for t in tokens])
    assert torch.allclose(got, want, atol=1e-3), (got, want)
    assert sum(t["peak"] for t in tokens) == (1 if want.max() > 0 else 0)

    logits = client.get(f"/api/logits/{uid}").json()
    promoted, suppressed = logits["promoted"], logits["suppressed"]
    assert len(promoted) == len(suppressed) == 10
    direction = gemma.model.blocks[6].mlp.W_out[3].float() @ gemma.model.W_U.float()
    assert promoted[0]["token"] == gemma.token_strs([int(direction.argmax())])[0]
    assert promoted[0]["value"] >= promoted[-1]["value"] > suppressed[-1]["value"]

    r = client.post(
        f"/api/steer/{uid}", json={"text": "My favourite month is", "clamp": 500, "max_new_tokens": 6}
    )
    assert r.status_code == 200, r.text
    steer = r.json()
    assert steer["plain"] and steer["steered"] != steer["plain"]  # a neuron held at 500 moves the completion


def test_live_sae_latent_and_bad_text(client):
    uid = next(u for u in client.get("/api/units").json()["rows"] if u["sae"])["unit_id"]
    r = client.post(f"/api/live/{uid}", json={"text": TEXT})
    assert r.status_code == 200, r.text
    acts = [t["act"] for t in r.json()["tokens"]]
    assert len(acts) > 5 and min(acts) >= 0.0  # a TopK latent: never negative
    assert len(client.get(f"/api/logits/{uid}").json()["promoted"]) == 10
    r = client.post(f"/api/live/{uid}", json={"text": "   "})
    assert r.status_code == 400 and "empty" in r.json()["error"]


def test_the_chat_agents_activations_tool_reads_the_neuron_on_the_live_model(gemma, live_store, scripted):
    import json

    from autointerp.agent.loop import AgentSettings
    from autointerp.viewer.chat import ChatRooms

    uid = f"gemma-3-270m/{HOOK}/3"
    llm = scripted("agent")
    llm.enqueue(
        json.dumps({"thought": "", "tool": "activations", "args": {"texts": [TEXT]}}),
        json.dumps({"thought": "", "tool": "answer", "args": {"text": "done"}}),
    )
    live = LiveModel(subject=gemma)
    rooms = ChatRooms(live_store.path, AgentSettings(agent=llm.spec, max_steps=3), live.reader)
    client = TestClient(create_app(live_store.path, live, rooms))
    want = client.post(f"/api/live/{uid}", json={"text": TEXT}).json()["max_act"]
    reply = client.post(f"/api/chat/{uid}", json={"question": "what does it read on this?"}).json()
    assert reply["answer"] == "done", reply
    assert f"max {want:.2f}" in reply["steps"][0]["result"]  # the same model, the same reading
    (inv,) = Store(live_store.path).investigations(uid)
    assert inv.mode == "chat"
