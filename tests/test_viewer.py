"""The viewer's app (starlette TestClient over a hand-made store): index, search, sort, filters, pages,
unit page panels, escaping, 404s, read-only access, SAE neighbours; and the store's FTS index."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from autointerp.errors import UserError
from autointerp.store import SCHEMA_VERSION, Store
from autointerp.types import Explanation, UnitQuery
from autointerp.viewer.app import create_app
from tests.viewer_stores import SAE_NAME, SCRIPT, explained_store, sae_store

HOOK = "blocks.0.mlp.hook_post"


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return explained_store(tmp_path / "v.db")


@pytest.fixture
def client(store: Store) -> TestClient:
    return TestClient(create_app(store.path))


def unit_ids(client: TestClient, **params) -> list[str]:
    r = client.get("/api/units", params=params)
    assert r.status_code == 200, r.text
    return [row["unit_id"] for row in r.json()["rows"]]


def test_index_lists_every_unit_with_best_explanation_and_scores(client, store):
    r = client.get("/api/units")
    data = r.json()
    assert data["total"] == 3 and data["scorers"] == ["correlation"]
    u0, u1, u2 = (u.id for u in store.units())
    assert data["explanations"] == {u0: "months of the year", u1: "the word cat"}
    assert data["scores"][u0]["correlation"] == pytest.approx(0.81)
    assert data["scores"][u1]["correlation"] is None  # failed: no value
    html = client.get("/").text
    assert "months of the year" in html and "the word cat" in html
    assert html.count('class="unit"') == 3


def test_search_uses_full_text_index(client, store):
    u0, u1, _ = (u.id for u in store.units())
    assert unit_ids(client, search="month") == [u0]  # a prefix, stemmed
    assert unit_ids(client, search="CAT word") == [u1]  # every word, any order and case
    assert unit_ids(client, search="dogs") == []
    assert unit_ids(client, search='"months (*') == [u0]  # FTS5 syntax in user text is only words
    html = client.get("/", params={"search": "cat"}).text
    assert re.search(r'<span id="total">1</span>', html)


def test_sort_filter_and_page(client, store, tmp_path):
    u0, u1, u2 = (u.id for u in store.units())
    assert unit_ids(client, sort="explanations", descending="true") == [u0, u1, u2]
    assert unit_ids(client, sort="index", descending="true") == [u2, u1, u0]
    assert unit_ids(client, explained="false") == [u2]
    assert unit_ids(client, explained="true") == [u0, u1]
    assert unit_ids(client, scorer="correlation", sort="score", descending="true")[0] == u0
    assert unit_ids(client, scorer="correlation", min_score="0.5") == [u0]
    assert unit_ids(client, min_freq="0.5") == []
    assert unit_ids(client, source=HOOK, per_page="1", page="2") == [u1]
    assert unit_ids(client, source=HOOK + "/sae:x") == []
    assert client.get("/api/units", params={"per_page": "1"}).json()["total"] == 3
    past_end = {"sort": "explanations", "per_page": "2", "page": "9"}  # counted again when no row comes back
    data = client.get("/api/units", params=past_end).json()
    assert (data["total"], data["rows"]) == (3, [])
    assert client.get("/api/units", params={**past_end, "page": "2"}).json()["total"] == 3
    # empty form fields are no filter; a bad value is a 400 naming the field
    assert len(unit_ids(client, min_freq="", explained="")) == 3
    r = client.get("/", params={"min_freq": "lots"})
    assert r.status_code == 400 and "min_freq" in r.text


def test_sort_links_and_pager_keep_the_filters(client):
    html = client.get("/", params={"search": "cat", "per_page": "1"}).text
    assert 'href="?per_page=1&amp;search=cat&amp;sort=max&amp;descending=true"' in html
    html = client.get("/", params={"per_page": "1"}).text
    assert 'href="?per_page=1&amp;page=2" rel="next"' in html
    html = client.get("/", params={"search": "cat", "scorer": "correlation", "min_score": "0.1"}).text
    by_score = "?min_score=0.1&amp;search=cat&amp;scorer=correlation&amp;sort=score&amp;descending=true"
    assert f'href="{by_score}"' in html  # a scorer's column head keeps the filters


def test_unit_page_shows_every_panel(client, store):
    u0 = store.units()[0].id
    r = client.get(f"/unit/{u0}")
    assert r.status_code == 200
    html = r.text
    assert "months of the year" in html and "explain_highlight@3" in html and "simulate_exact@3" in html
    assert "0.81" in html and 'badge">best' in html
    # tokens coloured by activation, the value on hover, the peak marked
    assert re.search(r'<span class="tok peak" data-act="4.0" title="4.0" style="--a:1.0"> March</span>', html)
    assert 'data-act="0.0" title="0.0" style="--a:0.0">' in html
    assert html.count("<rect x=") == 2 and 'id="hist"' in html  # the two stored histogram bins
    # simulated vs true per token for the scored test examples
    assert html.count('class="sim"') == 2 and 'title="simulated 9.0"' in html
    # counterfactual pair: the original top #0 and the edit, with both activations
    assert 'id="counterfactuals"' in html and "4 → 0" in html
    assert "Quantile examples" in html and "Random windows" in html and "Non-firing windows" in html
    assert "Not available: neighbours by decoder cosine exist for SAE latents only." in html
    assert "Not available: top output tokens need the model" in html
    data = client.get(f"/api/unit/{u0}").json()
    assert len(data["examples"]["top"]) == 12 and len(data["examples"]["quantile"]) == 10
    assert [e["quantile"] for e in data["examples"]["quantile"]] == sorted(
        e["quantile"] for e in data["examples"]["quantile"]
    )
    assert data["explanations"][0]["scores"][0]["details"] == {"top_only": 0.9}
    pair = data["counterfactuals"][0]
    assert pair["direction"] == "off" and pair["original"]["rank"] == 0 and pair["edited"]["max_act"] == 0.0


def test_token_text_is_escaped(client, store):
    html = client.get(f"/unit/{store.units()[0].id}").text
    assert SCRIPT not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_failed_score_and_unexplained_unit_render(client, store):
    _, u1, u2 = (u.id for u in store.units())
    html = client.get(f"/unit/{u1}").text
    assert "failed" in html and "read-out below the mass floor" in html
    html = client.get(f"/unit/{u2}").text
    assert "No explanation yet" in html


def test_unknown_unit_is_a_404_page(client):
    r = client.get("/unit/m/blocks.0.mlp.hook_post/99")
    assert r.status_code == 404 and "No unit" in r.text and "<h1>404</h1>" in r.text
    r = client.get("/api/unit/nope")
    assert r.status_code == 404 and r.json() == {"error": "No unit 'nope' in v.db."}


def test_short_unit_id_redirects_to_the_full_one(client, store):
    r = client.get(f"/unit/{HOOK}/1", follow_redirects=False)
    assert r.status_code == 307 and r.headers["location"] == "/unit/" + store.units()[1].id


def test_live_endpoints_say_the_model_is_off(client, store):
    r = client.post(f"/api/live/{store.units()[0].id}", json={"text": "in March"})
    assert r.status_code == 404 and "serve --live" in r.json()["error"]


def test_store_without_explanations_renders(tmp_path):
    from tests.conftest import build_month_store

    store = build_month_store(tmp_path / "bare.db")
    client = TestClient(create_app(store.path))
    assert client.get("/").status_code == 200
    assert client.get(f"/unit/{store.units()[0].id}").status_code == 200
    assert client.get("/api/units", params={"search": "x"}).json()["total"] == 0


def test_the_app_never_writes_the_store(store, client):
    files = sorted(store.path.parent.glob(store.path.name + "*"))
    before = {f: f.read_bytes() for f in files}
    for url in ("/", "/?search=month", f"/unit/{store.units()[0].id}", "/api/units"):
        assert client.get(url).status_code == 200
    assert {f: f.read_bytes() for f in sorted(store.path.parent.glob(store.path.name + "*"))} == before
    ro = Store.reader(store.path)
    with pytest.raises(sqlite3.OperationalError, match="readonly|read-only|query_only"):
        ro.db.execute("DELETE FROM units")


def test_read_only_open_refuses_missing_and_old_stores(tmp_path):
    with pytest.raises(UserError, match="No store"):
        Store.reader(tmp_path / "none.db")
    s = Store(tmp_path / "old.db")
    s.db["meta"].upsert({"key": "schema_version", "value": "6"}, pk="key")
    with pytest.raises(UserError, match="schema v6"):
        Store.reader(tmp_path / "old.db")


def test_fts_follows_updates_and_a_v6_store_is_indexed_on_upgrade(tmp_path):
    import sqlite_utils

    from autointerp import store as store_mod

    db = sqlite_utils.Database(tmp_path / "v6.db")
    for v in range(6):
        store_mod.MIGRATIONS[v](db)
    db["meta"].insert({"key": "schema_version", "value": "6"}, pk="key")
    db["explanations"].insert(
        {
            "id": "x",
            "unit_id": "m/h/0",
            "text": "dates in March",
            "method": "top",
            "model": "",
            "prompt": "",
            "settings": "{}",
            "run_id": None,
            "created_at": "t",
        }  # fmt: skip
    )
    db.conn.commit()
    s = Store(tmp_path / "v6.db")
    assert s.schema_version() == SCHEMA_VERSION  # v6 -> v7 (FTS) -> current
    match = (
        "SELECT e.id FROM explanations_fts f JOIN explanations e ON e.rowid = f.rowid "
        "WHERE explanations_fts MATCH ?"
    )
    assert s.db.execute(match, ['"march"']).fetchall() == [("x",)]
    e = Explanation(id="x", unit_id="m/h/0", text="names of weekdays", method="top", model="", prompt="")
    s.put_explanation(e)  # the same id: an update of the text
    assert s.db.execute(match, ['"march"']).fetchall() == []
    assert s.db.execute(match, ['"weekday"*']).fetchall() == [("x",)]
    s.db.execute("DELETE FROM explanations")
    assert s.db.execute(match, ['"weekday"*']).fetchall() == []


def test_unit_index_query_in_the_store(store):
    total, rows = store.unit_index(UnitQuery(sort="max", descending=True, per_page=2))
    assert total == 3 and len(rows) == 2 and rows[0].n_explanations in (0, 1)


def test_sae_latent_neighbours_by_decoder_cosine(tmp_path):
    store = sae_store(tmp_path / "s.db", tmp_path / "sae")
    client = TestClient(create_app(store.path))
    uid = store.units()[0].id
    assert uid == f"m/blocks.1.hook_resid_post/sae:{SAE_NAME}/0"
    near = client.get(f"/api/unit/{uid}").json()["neighbours"]
    assert near[0]["unit_id"].endswith("/3") and near[0]["cosine"] > 0.9
    cosines = [n["cosine"] for n in near]
    assert len(near) == 5 and cosines == sorted(cosines, reverse=True) and cosines[1] < 0.6
    assert [n["recorded"] for n in near if n["unit_id"].endswith("/5")] == [False]
    html = client.get(f"/unit/{uid}").text
    assert f'href="/unit/m/blocks.1.hook_resid_post/sae%3A{SAE_NAME}/3"' in html
    (tmp_path / "sae" / "sae_weights.safetensors").unlink()
    html = client.get(f"/unit/{store.units()[1].id}").text
    assert "Not available: the SAE weights are not available here" in html


def test_index_scores_are_the_latest_per_scorer_as_listing_reads_them(store):
    from autointerp.listing import unit_summaries
    from autointerp.types import Score

    u0 = store.units()[0].id
    later = Score(
        explanation_id="e0", unit_id=u0, scorer="correlation", value=0.2, status="ok", simulator="other",
        created_at="2999-01-01T00:00:00+00:00",
    )  # fmt: skip
    store.put_scores([later])  # a newer score from another simulator replaces 0.81 as the latest
    client = TestClient(create_app(store.path))
    assert client.get("/api/units").json()["scores"][u0]["correlation"] == pytest.approx(0.2)
    assert unit_ids(client, scorer="correlation", min_score="0.5") == []
    (summary,) = [s for s in unit_summaries(store) if s.unit_id == u0]
    assert summary.score == pytest.approx(0.2)


def test_label_report_links_each_unit_to_its_viewer_page(store, tmp_path, client):
    from autointerp.report import write_report

    u0 = store.units()[0].id
    html = write_report(store, tmp_path / "r.html").read_text()
    href = re.search(r'<a href="http://127.0.0.1:8000(/unit/[^"]+)">' + re.escape(u0) + "</a>", html)
    assert href and client.get(href[1]).status_code == 200  # the link is a page the viewer serves
    assert "<a href" not in write_report(store, tmp_path / "plain.html", viewer_url=None).read_text()


def test_unit_page_shows_investigations_with_their_experiments(store):
    from autointerp.types import Experiment, Investigation

    u0 = store.units()[0].id
    inv = Investigation(
        id="inv-1", unit_id=u0, agent="scripted:t", prompt="agent-investigate@1", status="finished",
        explanation="month names in dates", evidence={"supporting": ["e1"], "refuting": []}, steps=2,
    )  # fmt: skip
    exps = [
        Experiment(id="e1", investigation_id="inv-1", step=1, tool="activations",
                   arguments={"texts": ["In <March> it rained"]}, result={"max": 4.0}),
        Experiment(id="e2", investigation_id="inv-1", step=2, tool="", error="unreadable action"),
    ]  # fmt: skip
    store.put_investigation(inv, exps)
    html = TestClient(create_app(store.path)).get(f"/unit/{u0}").text
    assert 'id="investigations"' in html and "month names in dates" in html and "supporting: e1" in html
    assert "transcript (2 experiments)" in html and "unreadable action" in html
    assert "In <March>" not in html and "In \\u003cMarch\\u003e" in html  # the agent's text is escaped
    other = TestClient(create_app(store.path)).get(f"/unit/{store.units()[1].id}").text
    assert 'id="investigations"' not in other


def test_head_examples_carry_each_tokens_sources_and_other_units_none(tmp_path, client, store):
    from tests.viewer_stores import HEAD, head_store

    heads = TestClient(create_app(head_store(tmp_path / "h.db").path))
    (top,) = heads.get(f"/api/unit/{HEAD}").json()["examples"]["top"]
    shown = [t["text"] for t in top["tokens"]]
    assert shown[0] == " Harry" and len(shown) == 7  # BOS left out: the indices count from " Harry"
    peak = next(t for t in top["tokens"] if t["peak"])
    assert [(shown[i], w) for i, w in peak["sources"]] == [(" Potter", 0.7), (" Harry", 0.2)]
    assert top["tokens"][0]["sources"] == [] and top["tokens"][5]["sources"] == [[4, 0.5]]
    page = heads.get(f"/unit/{HEAD}").text
    assert 'id="head-note"' in page and page.count('class="toks attn"') == 1
    assert 'data-src="1:0.7 0:0.2">' in page and "> &lt;b&gt;</span>" in page
    u0 = store.units()[0].id
    assert "data-src" not in client.get(f"/unit/{u0}").text
    neuron = client.get(f"/api/unit/{u0}").json()["examples"]["top"][0]["tokens"]
    assert all(t["sources"] is None for t in neuron)
