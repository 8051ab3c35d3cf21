"""Unit ids, the --units syntax, and corpus sources."""

import json

import pytest

from autointerp import corpus
from autointerp.errors import UserError
from autointerp.types import UnitRef
from autointerp.units import parse_units


def test_unit_ids_round_trip():
    ids = ["gemma-3-270m/blocks.6.mlp.hook_post/1234", "gemma-3-270m/blocks.6.hook_resid_post/sae:res6/7"]
    for uid in ids:
        assert UnitRef.parse(uid).id == uid
    ref = UnitRef.parse("gemma-3-270m/blocks.6.hook_resid_post/sae:res6/7")
    assert (ref.sae, ref.index, ref.hook) == ("res6", 7, "blocks.6.hook_resid_post")


@pytest.mark.parametrize("bad", ["", "gemma/blocks.6", "m/h/x", "m/h/-1"])
def test_bad_unit_ids_are_user_errors(bad):
    with pytest.raises(UserError, match="not a unit id"):
        UnitRef.parse(bad)


def test_parse_units():
    assert parse_units("0:4") == [0, 1, 2, 3]
    assert parse_units("5,1,3:5") == [1, 3, 4, 5]
    assert parse_units(None) is None
    for bad in ["a:b", "3:3", "1,,x"]:
        with pytest.raises(UserError):
            parse_units(bad)


class CharTokenizer:
    """One token per character: enough to check the windowing arithmetic exactly."""

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) for c in text]}


def test_windows_have_fixed_length_and_bos(tmp_path):
    f = tmp_path / "a.txt"
    f.write_text("abcdefghij" * 3)
    wins = list(corpus.windows([str(f)], CharTokenizer(), ctx=8, bos_id=0))
    assert all(len(w) == 8 and w[0] == 0 for w in wins)
    body = [c for w in wins for c in w[1:]]
    assert "".join(map(chr, body)) == ("abcdefghij" * 3 + "\n\n")[: len(body)]
    assert len(wins) == (30 + 2) // 7


def test_jsonl_and_directory_sources(tmp_path):
    (tmp_path / "d").mkdir()
    lines = json.dumps({"text": "hello"}) + "\n\n" + json.dumps({"text": "world"})
    (tmp_path / "d" / "x.jsonl").write_text(lines)
    (tmp_path / "d" / "y.md").write_text("third")
    (tmp_path / "d" / "skip.bin").write_bytes(b"\x00")
    assert list(corpus.texts([str(tmp_path / "d")])) == ["hello", "world", "third"]


def test_bad_sources_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="neither a file"):
        list(corpus.texts([str(tmp_path / "missing")]))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\nnot json\n')
    with pytest.raises(UserError, match="bad.jsonl:2"):
        list(corpus.texts([str(bad)]))
    empty = tmp_path / "empty.txt"
    empty.write_text("   \n")
    with pytest.raises(UserError, match="no text"):
        list(corpus.windows([str(empty)], CharTokenizer(), ctx=8, bos_id=0))


def test_default_corpus_mixes_prose_and_code():
    first = list(__import__("itertools").islice(corpus.default_texts(), 8))
    assert len(first) == 8
    assert sum("def " in t or "import " in t for t in first) >= 1


def test_resolve_unit_ids(tmp_path):
    from test_store import make_unit  # tests/ is on sys.path

    from autointerp.store import Store
    from autointerp.types import RunRecord
    from autointerp.units import resolve_unit_ids

    store = Store(tmp_path / "x.db")
    store.start_run(RunRecord(id="r1", kind="record", settings={}, code_version="t", started_at="now"))
    units = [make_unit(i) for i in range(4)]
    store.write_units(units, [])
    hook = units[0].ref.hook
    assert resolve_unit_ids(store) == [u.id for u in units]
    assert resolve_unit_ids(store, hook=hook, units="1:3,9") == [units[1].id, units[2].id]
    assert resolve_unit_ids(store, unit=[f" {units[3].id}"]) == [units[3].id]  # given ids are parsed
    with pytest.raises(UserError, match="not recorded"):
        resolve_unit_ids(store, unit=["m/blocks.0.mlp.hook_post/7"])
    with pytest.raises(UserError, match="No recorded units match"):
        resolve_unit_ids(store, hook="blocks.1.x")


def test_counterfactual_does_not_import_the_cli():
    """No cycle: the counterfactual package and units.py stand without cli.py."""
    import subprocess
    import sys

    code = "import sys, autointerp.counterfactual, autointerp.units; print('autointerp.cli' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
