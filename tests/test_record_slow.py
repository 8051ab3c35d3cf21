"""Recording on the real embedded Gemma 3 270M (slow: loads the model once per session)."""

import pytest
import torch
from typer.testing import CliRunner

from autointerp import record_units
from autointerp.cli import app
from autointerp.errors import UserError
from autointerp.store import Store
from autointerp.subject import recorder

pytestmark = pytest.mark.slow
HOOK = "blocks.6.mlp.hook_post"
SETTINGS = dict(max_tokens=3072, ctx=32, batch_size=16, top_k=5, quantile_pool=10, n_random=4, n_negative=3)
N_COUNTED = 3072 - 3072 // 32  # every window's BOS is left out


@pytest.fixture(scope="module")
def recorded(gemma, tmp_path_factory):
    db = tmp_path_factory.mktemp("rec") / "x.db"
    result = record_units(db, [HOOK], units=list(range(16)), subject=gemma, **SETTINGS)
    return db, result


def test_stored_top_example_reproduces_on_the_model(gemma, recorded):
    db, result = recorded
    assert result.n_units == 16 and result.n_tokens == 3072
    store = Store(db)
    for index in (0, 7, 15):
        unit = store.get_unit(f"gemma-3-270m/{HOOK}/{index}")
        top = store.examples(unit.id, "top")
        assert len(top) == 5
        assert top[0].max_act == pytest.approx(unit.stats.max)
        assert [e.max_act for e in top] == sorted((e.max_act for e in top), reverse=True)
        _, cache = gemma.model.run_with_cache(
            torch.tensor([top[0].context.token_ids]), names_filter=HOOK, stop_at_layer=7
        )
        again = cache[HOOK][0, 1:, index].float()  # BOS (position 0) is left out of the recording
        assert torch.allclose(again, torch.tensor(top[0].acts[1:]), atol=0.02 * abs(unit.stats.max) + 1e-3)
        assert top[0].context.tokens == gemma.token_strs(top[0].context.token_ids)


def test_kinds_and_stats_are_consistent(recorded):
    db, _ = recorded
    store = Store(db)
    unit = store.get_unit(f"gemma-3-270m/{HOOK}/3")
    by_kind = {k: store.examples(unit.id, k) for k in ("quantile", "random", "negative")}
    assert all(e.max_act > 0 for e in by_kind["quantile"])
    assert all(e.max_act <= 0 for e in by_kind["negative"])
    assert len(by_kind["random"]) == 4
    qs = [e.quantile for e in by_kind["quantile"]]
    assert qs == sorted(qs) and qs[0] == 0
    assert sum(unit.stats.hist_counts) == unit.stats.n_tokens == N_COUNTED
    run = store.get_run(store.runs("record")[0].id)
    assert run.status == "complete" and run.settings["ctx"] == 32 and run.code_version


def test_second_run_with_same_settings_does_nothing(gemma, recorded):
    db, _ = recorded
    again = record_units(db, [HOOK], units=list(range(16)), subject=gemma, **SETTINGS)
    assert again.already_complete


def test_killed_run_resumes_to_the_same_result(gemma, recorded, tmp_path, monkeypatch):
    db_straight, _ = recorded
    monkeypatch.setattr(recorder, "CHECKPOINT_EVERY_S", 0.0)
    db = tmp_path / "killed.db"
    calls = []

    def die_after_three(done, total):  # a call at the start, then one per batch
        calls.append(done)
        if len(calls) == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        record_units(db, [HOOK], units=list(range(16)), subject=gemma, progress=die_after_three, **SETTINGS)
    store = Store(db)
    assert store.count_units() == 0  # nothing half-written is visible
    assert store.runs("record")[0].status == "failed"  # its row says so; the rerun resumes
    result = record_units(db, [HOOK], units=list(range(16)), subject=gemma, **SETTINGS)
    assert result.resumed_from == 2 * 16 * 32  # the checkpoint after the second batch
    straight = Store(db_straight)
    for index in (2, 9):
        uid = f"gemma-3-270m/{HOOK}/{index}"
        assert store.get_unit(uid).stats.n_tokens == straight.get_unit(uid).stats.n_tokens
        for kind in ("top", "quantile", "random", "negative"):
            got = [(e.context.id, e.acts) for e in store.examples(uid, kind)]
            want = [(e.context.id, e.acts) for e in straight.examples(uid, kind)]
            assert got == want, kind


def test_checkpoint_of_another_format_is_refused_and_kept(gemma, tmp_path, monkeypatch):
    monkeypatch.setattr(recorder, "CHECKPOINT_EVERY_S", 0.0)
    db = tmp_path / "old.db"

    calls = []

    def die(done, total):  # called once at the start, then before each batch's checkpoint
        calls.append(done)
        if len(calls) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        record_units(db, [HOOK], units=[0], subject=gemma, progress=die, **SETTINGS)
    (ckpt,) = (tmp_path / "old.db.ckpt").glob("*.pt")
    blob = torch.load(ckpt, weights_only=False)
    del blob["format"]  # as written before the format was recorded
    torch.save(blob, ckpt)
    with pytest.raises(UserError, match="written by another autointerp version; delete it"):
        record_units(db, [HOOK], units=[0], subject=gemma, **SETTINGS)
    assert ckpt.exists()


def test_bad_hook_and_unit_are_clear_errors(gemma, tmp_path):
    with pytest.raises(UserError, match="valid hooks are blocks.L.<name>.*mlp.hook_post"):
        record_units(tmp_path / "x.db", ["blocks.6.mlp.hook_typo"], subject=gemma)
    with pytest.raises(UserError, match="out of range for blocks.6.mlp.hook_post, which has 2048 units"):
        record_units(tmp_path / "x.db", [HOOK], units=[2048], subject=gemma)
    with pytest.raises(UserError, match="shorter than one window"):
        short = tmp_path / "short.txt"
        short.write_text("just a few words")
        record_units(tmp_path / "y.db", [HOOK], units=[0], subject=gemma, corpus=[str(short)], ctx=64)


def test_show_highlights_top_examples(recorded):
    db, _ = recorded
    out = CliRunner().invoke(app, ["show", f"gemma-3-270m/{HOOK}/3", "--db", str(db), "--n", "2"])
    assert out.exit_code == 0, out.output
    flat = " ".join(out.output.split())
    assert "fires on" in flat and f"of {N_COUNTED:,} tokens" in flat
    missing = CliRunner().invoke(app, ["show", f"gemma-3-270m/{HOOK}/999", "--db", str(db)])
    assert missing.exit_code == 2 and "not recorded" in missing.output


def test_bos_is_left_out_unless_keep_bos(gemma, recorded, monkeypatch):
    """By default no stored BOS position is a window's peak; `record --keep-bos` is another run that
    counts every token and says so in the store."""
    db, default = recorded
    store = Store(db)
    for unit in store.units(hook=HOOK):
        for e in store.examples(unit.id):
            assert e.acts[0] <= max(e.acts[1:]) and e.acts[0] in (0.0, min(e.acts[1:]))
            assert e.provenance["special_tokens"] == "excluded"
    monkeypatch.setattr("autointerp.subject.recorder.load_subject", lambda *a, **k: gemma)
    args = ["record", "--db", str(db), "--hook", HOOK, "--units", "0:16", "--tokens", "3072", "--ctx", "32"]
    args += ["--batch-size", "16", "--top-k", "5", "--keep-bos"]
    out = CliRunner().invoke(app, args)
    assert out.exit_code == 0, out.output
    (kept,) = [r for r in store.runs("record") if r.settings["include_special"]]
    assert kept.id != default.run_id and kept.summary["special_tokens"] == "included"
    unit = store.get_unit(f"gemma-3-270m/{HOOK}/3")
    assert unit.run_id == kept.id and unit.stats.n_tokens == 3072


def test_the_config_check_of_hooks_agrees_with_the_loaded_model(gemma):
    """What a fresh machine checks before loading (the shape, TransformerLens' hook names) accepts every
    per-token hook of the real model with its real width, and refuses every other hook it has."""
    import json

    from autointerp import assets
    from autointerp.subject.model import EMBEDDED_SHAPES, check_hook_by_shape, shape_from_hf_config

    shape = EMBEDDED_SHAPES["gemma-3-270m"]
    assert (
        shape_from_hf_config(json.loads((assets.bf16_dir("gemma-3-270m") / "config.json").read_text()))
        == shape
    )
    widths = gemma.unit_hooks
    assert len(widths) > 18 * 10
    for hook, width in widths.items():
        assert check_hook_by_shape(shape, hook, "gemma-3-270m") in (width, None), hook
    flagged = {"hook_mlp_in", "unembed.hook_in", "unembed.hook_out"}  # fire only with a config flag
    for hook in set(gemma.model.hook_dict) - set(widths):
        if hook.split(".", 2)[-1] not in flagged and hook not in flagged:
            with pytest.raises(UserError):
                check_hook_by_shape(shape, hook, "gemma-3-270m")
