"""The label and bench reports link each unit to its viewer page: ids with `/`, `:` and characters that
mean something in a URL or in HTML stay one path, and the link opens that unit's page."""

from __future__ import annotations

import html as htmllib
import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from autointerp.bench.run import BenchResult, BenchSettings, UnitRow
from autointerp.errors import UserError
from autointerp.types import Explanation
from autointerp.viewer.app import create_app
from autointerp.viewer.links import check_viewer_url, unit_path, unit_url
from tests.viewer_stores import head_store

ODD_MODEL = "org&co #1?%"  # every character here breaks an unquoted URL or unescaped HTML
ODD_HEAD = f"{ODD_MODEL}/blocks.1.attn/head:2"
ODD_PATH = "/unit/org%26co%20%231%3F%25/blocks.1.attn/head%3A2"


def test_unit_path_keeps_slashes_and_encodes_the_rest():
    assert unit_path("m/blocks.1.attn/head:2") == "/unit/m/blocks.1.attn/head%3A2"
    assert unit_path("m/blocks.1.hook_resid_post/sae:res-1a2b/7") == (
        "/unit/m/blocks.1.hook_resid_post/sae%3Ares-1a2b/7"
    )
    assert unit_path(ODD_HEAD) == ODD_PATH
    assert unit_url("http://h:9000/viewer/", ODD_HEAD) == "http://h:9000/viewer" + ODD_PATH


def test_viewer_url_is_checked():
    assert check_viewer_url("http://127.0.0.1:8000/") == "http://127.0.0.1:8000"
    assert check_viewer_url("https://lab.example/viewer") == "https://lab.example/viewer"
    assert check_viewer_url("") is None and check_viewer_url("none") is None
    for bad in ("127.0.0.1:8000", "ftp://h", "http://h/x?y=1", "http://h x", "javascript:alert(1)"):
        with pytest.raises(UserError, match="not an http"):
            check_viewer_url(bad)


@pytest.fixture
def odd_store(tmp_path: Path):
    store = head_store(tmp_path / "h.db", model=ODD_MODEL)
    e = Explanation(
        id="e0", unit_id=ODD_HEAD, text="<b>Potter</b> after Harry", method="head", model="t", prompt="p@1"
    )
    store.put_explanation(e)
    return store


def test_label_report_links_an_odd_unit_id_to_its_page(odd_store, tmp_path):
    from autointerp.report import write_report

    page = write_report(odd_store, tmp_path / "r.html", "http://127.0.0.1:8000/").read_text()
    (href,) = re.findall(r'<a href="([^"]*)">', page)
    assert href == "http://127.0.0.1:8000" + ODD_PATH
    assert f">{htmllib.escape(ODD_HEAD)}</a>" in page and "&lt;b&gt;Potter" in page
    assert f"autointerp serve --db {odd_store.path}" in page  # how to start the viewer, beside the links
    got = TestClient(create_app(odd_store.path)).get(href.removeprefix("http://127.0.0.1:8000"))
    assert got.status_code == 200 and f'data-unit="{htmllib.escape(ODD_HEAD)}"' in got.text
    plain = write_report(odd_store, tmp_path / "plain.html", None).read_text()
    assert "<a href" not in plain and "autointerp serve" not in plain


def bench_result(unit_ids: list[str]) -> BenchResult:
    units = [
        UnitRow(unit_id=uid, name=f"u_{i}[x]", truth="t", explanations={"gen:top": "e"}, scores={})
        for i, uid in enumerate(unit_ids)
    ]
    return BenchResult(
        settings=BenchSettings(methods=["top"]), db="runs/b.db", run_id="b1", units=units,
        skipped_units={}, methods=[],
    )  # fmt: skip


def test_bench_report_links_each_unit_name_in_html_and_markdown(odd_store, tmp_path):
    from autointerp.bench.report import html, markdown, write_report

    r = bench_result([ODD_HEAD, "m/synthetic.months/0"])
    page = html(r, "bench.png", "http://h:9000")
    links = re.findall(r'<a href="([^"]*)">([^<]*)</a>', page)
    assert links == [
        ("http://h:9000" + ODD_PATH, "u_0[x]"),
        ("http://h:9000/unit/m/synthetic.months/0", "u_1[x]"),
    ]
    assert "autointerp serve --db runs/b.db" in page
    md = markdown(r, "bench.png", "http://h:9000")
    assert f"| [u\\_0\\[x\\]](http://h:9000{ODD_PATH}) |" in md
    assert "<a href" not in html(r, "bench.png", None) and "](http" not in markdown(r, "bench.png", None)
    got = TestClient(create_app(odd_store.path)).get(links[0][0].removeprefix("http://h:9000"))
    assert got.status_code == 200
    paths = write_report(r, tmp_path / "report")  # the default: the viewer on this machine
    assert f'<a href="http://127.0.0.1:8000{ODD_PATH}">' in paths["html"].read_text()
    assert f"](http://127.0.0.1:8000{ODD_PATH})" in paths["md"].read_text()


def test_label_and_bench_refuse_a_bad_viewer_url_before_anything_loads(tmp_path, monkeypatch):
    from autointerp.cli import app

    def boom(*a, **k):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("loaded something")

    monkeypatch.setattr("autointerp.pipeline.label", boom)
    monkeypatch.setattr("autointerp.bench.run.run_bench", boom)
    for cmd in (["label"], ["bench"]):
        r = CliRunner().invoke(app, [*cmd, "--db", str(tmp_path / "x.db"), "--viewer-url", "localhost:8000"])
        assert r.exit_code == 2 and "--viewer-url 'localhost:8000' is not an http(s) address" in r.output
