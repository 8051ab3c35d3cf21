"""`autointerp serve` input errors (before anything starts) and `autointerp export --format neuronpedia`."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from typer.testing import CliRunner

from autointerp.cli import app
from tests.viewer_stores import SAE_NAME, explained_store, sae_store

runner = CliRunner()


def test_serve_needs_an_existing_store(tmp_path):
    r = runner.invoke(app, ["serve", "--db", str(tmp_path / "none.db")])
    assert r.exit_code == 2 and "No store at" in r.output
    assert not (tmp_path / "none.db").exists()


def test_serve_says_when_the_port_is_taken(tmp_path):
    store = explained_store(tmp_path / "v.db")
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        r = runner.invoke(app, ["serve", "--db", str(store.path), "--port", str(port)])
    assert r.exit_code == 2 and f"Cannot listen on 127.0.0.1:{port}" in r.output


def own_address() -> str | None:
    """This machine's address on its default route (a UDP connect sends nothing), or None."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))
        except OSError:
            return None
        return s.getsockname()[0]


def test_serve_starts_on_localhost_and_serves_the_store(tmp_path):
    import subprocess
    import sys
    import time
    import urllib.request

    store = explained_store(tmp_path / "v.db")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "autointerp", "serve", "--db", str(store.path), "--port", str(port)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        body, deadline = None, time.monotonic() + 60
        while body is None and time.monotonic() < deadline and proc.poll() is None:
            try:
                body = urllib.request.urlopen(f"http://127.0.0.1:{port}/api/units", timeout=5).read()
            except OSError:
                time.sleep(0.2)
        assert body is not None, proc.communicate(timeout=5)[0] if proc.poll() is not None else "no answer"
        assert json.loads(body)["total"] == 3
        outside = own_address()
        if outside and not outside.startswith("127."):  # not listening on the machine's other addresses
            with pytest.raises(OSError):
                socket.create_connection((outside, port), timeout=2).close()
    finally:
        proc.terminate()
        out = proc.communicate(timeout=20)[0]
    assert f"http://127.0.0.1:{port}/" in out


def test_export_neuronpedia_writes_one_feature_per_unit(tmp_path):
    store = explained_store(tmp_path / "v.db")
    out = tmp_path / "np"
    r = runner.invoke(app, ["export", "--db", str(store.path), "--format", "neuronpedia", "--out", str(out)])
    assert r.exit_code == 0, r.output
    manifest = json.loads((out / "manifest.json").read_text())
    u0 = store.units()[0].id
    assert len(manifest) == 3 and manifest[u0] == "m/0-mlp-hook-post/0.json"
    f = json.loads((out / manifest[u0]).read_text())
    assert (f["modelId"], f["layer"], f["index"], f["hookName"]) == (
        "m",
        "0-mlp-hook-post",
        "0",
        "blocks.0.mlp.hook_post",
    )
    assert f["maxActApprox"] == 4.0 and f["frac_nonzero"] == 0.05
    assert f["freq_hist_data_bar_heights"] == [] and f["topkCosSimIndices"] == []  # open-ended bins; a neuron
    acts = f["activations"]
    assert len(acts) == 22  # 12 top + 10 quantile
    top = acts[0]
    assert set(top) >= {"tokens", "values", "maxValue", "maxValueTokenIndex", "minValue", "binMin", "binMax"}
    assert len(top["tokens"]) == len(top["values"]) == 21
    assert top["values"][top["maxValueTokenIndex"]] == top["maxValue"]
    assert top["dataSource"] == "top#0" and top["binMin"] is None
    q = [a for a in acts if a["dataSource"].startswith("quantile")]
    assert all(a["binMin"] <= a["maxValue"] <= a["binMax"] for a in q) and q[0]["binContains"] == 0.2
    (e,) = f["explanations"]
    assert e == {
        "description": "months of the year",
        "typeName": "highlight",
        "explanationModelName": "scripted:test",
        "notes": "prompt explain_highlight@3",
    }
    assert f["autointerp"]["unit_id"] == u0
    assert f["autointerp"]["scores"] == [
        {
            "explanation": 0,
            "scorer": "correlation",
            "value": 0.81,
            "status": "ok",
            "simulator": "scripted:test",
        }
    ]


def test_export_sae_latents_with_decoder_neighbours(tmp_path):
    store = sae_store(tmp_path / "s.db", tmp_path / "sae")
    out = tmp_path / "np"
    r = runner.invoke(app, ["export", "--db", str(store.path), "--out", str(out), "--units", "0:2"])
    assert r.exit_code == 0, r.output
    f = json.loads((out / "m" / f"1-{SAE_NAME}" / "0.json").read_text())
    assert f["topkCosSimIndices"][0] == 3 and f["topkCosSimValues"][0] > 0.9
    assert f["freq_hist_data_bar_values"] == [0.5] and f["freq_hist_data_bar_heights"] == [8.0]
    assert len(json.loads((out / "manifest.json").read_text())) == 2


def test_export_input_errors(tmp_path: Path):
    store = explained_store(tmp_path / "v.db")
    r = runner.invoke(app, ["export", "--db", str(store.path), "--format", "saedashboard", "--out", "x"])
    assert r.exit_code == 2 and "--format 'saedashboard' is not an export format" in r.output
    (tmp_path / "file").write_text("")
    r = runner.invoke(app, ["export", "--db", str(store.path), "--out", str(tmp_path / "file")])
    assert r.exit_code == 2 and "pass a folder" in r.output
    r = runner.invoke(app, ["export", "--db", str(store.path), "--out", "x", "--unit", "m/h/9"])
    assert r.exit_code == 2 and "not recorded" in r.output


def test_serve_names_the_viewer_extra_when_it_is_missing(tmp_path, monkeypatch):
    from importlib.util import find_spec

    import autointerp.errors

    store = explained_store(tmp_path / "v.db")
    monkeypatch.setattr(autointerp.errors, "find_spec", lambda m: None if m == "fastapi" else find_spec(m))
    r = runner.invoke(app, ["serve", "--db", str(store.path)])
    assert r.exit_code == 2 and "needs the viewer extra (fastapi missing)" in r.output
    assert "pip install 'autointerp[viewer]'" in r.output.replace("\n", "")
