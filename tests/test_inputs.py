"""Input checks before anything slow: one sentence and exit 2, with no model (or LLM) loaded."""

from __future__ import annotations

import errno
import json
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from autointerp import cli, corpus, logs
from autointerp.errors import UserError, environment_error
from autointerp.store import Store
from autointerp.types import RecordSettings, RunRecord
from tests.conftest import build_month_store

HOOK = "blocks.0.mlp.hook_post"
WIDTHS = {HOOK: 2048, "blocks.0.hook_resid_post": 640, "blocks.1.hook_resid_post": 640}


def invoke(*args: str):  # noqa: ANN201 - click Result
    return CliRunner().invoke(cli.app, [str(a) for a in args])


@pytest.fixture
def no_model(monkeypatch, tmp_path):
    """Loading the subject model (or labelling) fails the test; hook widths come from a known cache."""

    def boom(*a, **k):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("a model was loaded before the input was checked")

    monkeypatch.setattr("autointerp.subject.recorder.load_subject", boom)
    monkeypatch.setattr("autointerp.pipeline.label", boom)
    monkeypatch.setenv("AUTOINTERP_HOME", str(tmp_path / "home"))
    cache = tmp_path / "home" / "hooks" / "gemma-3-270m.json"
    cache.parent.mkdir(parents=True)
    cache.write_text(json.dumps(WIDTHS))


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--concurrency", "0"], "--concurrency"),
        (["--concurrency", "-1"], "--concurrency"),
        (["--limit", "0"], "--limit"),
        (["--best-of", "0"], "--best-of"),
        (["--simulator-mode", "bogus"], "'bogus' is not one of"),
        (["--methods", ","], "names nothing"),
        (["--scorers", "correlation,bogus"], "Unknown scorer 'bogus'"),
        (["--explainer", "bogus:x"], "'bogus:x' is not an LLM spec"),
        (["--simulator", "gpt-4o"], "'gpt-4o' is not an LLM spec"),
    ],
)
def test_label_rejects_bad_options(tmp_path, no_model, args, says):
    build_month_store(tmp_path / "m.db")
    out = invoke("label", "--db", tmp_path / "m.db", *args)
    assert out.exit_code == 2, out.output
    assert says in " ".join(out.output.split())
    assert "Traceback" not in out.output and "labelling:" not in out.output  # refused before the run


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--top-k", "-1"], "--top-k"),
        (["--top-k", "0"], "--top-k"),
        (["--units", "3:x"], "is not a list like"),
        (["--units", "0:99999"], "out of range for blocks.0.mlp.hook_post"),
        (["--hook", "blocks.0.mlp.hook_bogus"], "is not a hook of gemma-3-270m"),
        (["--corpus", "/no/such/file.txt"], "neither a file"),
        (["--encoding", "klingon"], "is not a codec"),
    ],
)
def test_record_checks_input_before_the_model_loads(tmp_path, no_model, args, says):
    out = invoke("record", "--db", tmp_path / "r.db", "--hook", HOOK, *args)
    assert out.exit_code == 2, out.output
    assert says in " ".join(out.output.split())


@pytest.fixture
def fresh_home(monkeypatch, tmp_path):
    """A fresh machine: no hook widths cached; loading the subject model fails the test."""

    def boom(*a, **k):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("a model was loaded before the input was checked")

    monkeypatch.setattr("autointerp.subject.recorder.load_subject", boom)
    monkeypatch.setenv("AUTOINTERP_HOME", str(tmp_path / "fresh"))
    return tmp_path / "fresh"


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (
            ["--hook", "blocks.99.mlp.hook_post"],
            "names layer 99, but gemma-3-270m has 18 layers (blocks.0 .. blocks.17)",
        ),
        (["--hook", "blocks.6.mlp.hook_psot"], "'blocks.6.mlp.hook_psot' is not a hook of gemma-3-270m"),
        (["--hook", "blocks.6.attn.hook_z"], "has one vector per head, not one per token"),
        (
            ["--hook", "resid_post"],
            "'resid_post' is not a hook of gemma-3-270m; valid hooks are blocks.L.<name>",
        ),
        (["--hook", "blocks.6.mlp.hook_post", "--units", "0:5000"], "has 2048 units (0..2047)"),
        (["--hook", "blocks.6.hook_resid_post", "--units", "640"], "has 640 units (0..639)"),
    ],
)
def test_bad_hooks_are_refused_from_the_config_on_a_fresh_machine(tmp_path, fresh_home, args, says):
    out = invoke("record", "--db", tmp_path / "r.db", *args)
    assert out.exit_code == 2, out.output
    text = " ".join(out.output.split())
    assert says in text and "Traceback" not in text
    assert not (fresh_home / "hooks").exists()  # nothing loaded, nothing cached


def test_valid_hooks_pass_the_config_check():
    from autointerp.subject.model import EMBEDDED_SHAPES, check_hook_by_shape

    shape = EMBEDDED_SHAPES["gemma-3-270m"]
    assert check_hook_by_shape(shape, "blocks.17.mlp.hook_post", "g") == 2048
    assert check_hook_by_shape(shape, "blocks.0.hook_resid_pre", "g") == 640
    assert check_hook_by_shape(shape, "blocks.3.ln1.hook_scale", "g") == 1
    assert check_hook_by_shape(shape, "ln_final.hook_normalized", "g") == 640


def gpt2_folder(root: Path, **cfg) -> Path:
    """A Hugging Face folder with a GPT-2 config.json of 2 layers, d_model 8 (d_mlp 4 x 8) and no weights."""
    root.mkdir()
    config = {"model_type": "gpt2", "n_layer": 2, "n_embd": 8, "n_head": 2, "n_inner": None, **cfg}
    (root / "config.json").write_text(json.dumps(config))
    return root


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (
            ["--hook", "blocks.2.hook_resid_post"],
            "'blocks.2.hook_resid_post' names layer 2, but gpt2 has 2 layers",
        ),
        (["--hook", "blocks.1.mlp.hook_post", "--units", "0:40"], "which has 32 units (0..31)"),
        (["--hook", "blocks.1.hook_resid_post", "--units", "8"], "which has 8 units (0..7)"),
    ],
)
def test_a_model_path_config_decides_the_hooks_before_loading(tmp_path, fresh_home, args, says):
    folder = gpt2_folder(tmp_path / "gpt2")
    out = invoke("record", "--db", tmp_path / "r.db", "--model", "gpt2", "--model-path", folder, *args)
    assert out.exit_code == 2, out.output
    assert says in " ".join(out.output.split())


@pytest.mark.parametrize(
    ("make", "says"),
    [
        (lambda d: d.write_text("not a folder"), "is not a directory"),
        (lambda d: d.mkdir(), "has no config.json"),
        (
            lambda d: (d.mkdir(), (d / "config.json").write_text('{"n_layer": 2,')),
            "has a damaged config.json",
        ),
        (
            lambda d: (d.mkdir(), (d / "config.json").write_bytes(b"\xff\xfe\x00garbage")),
            "damaged config.json",
        ),
    ],
)
def test_a_damaged_or_wrong_model_path_is_one_sentence(tmp_path, fresh_home, make, says):
    folder = tmp_path / "model"
    make(folder)
    out = invoke(
        "record", "--db", tmp_path / "r.db", "--model", "gpt2", "--model-path", folder, "--hook", HOOK
    )
    assert out.exit_code == 2, out.output
    text = " ".join(out.output.split())
    assert text.startswith("error: --model-path") and says in text and "Traceback" not in text


def test_damaged_weights_in_a_model_path_are_one_sentence(tmp_path):
    pytest.importorskip("transformer_lens")
    from autointerp.subject.model import load_subject

    folder = gpt2_folder(tmp_path / "gpt2", vocab_size=50, n_positions=16, architectures=["GPT2LMHeadModel"])
    (folder / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage" + bytes(64))
    with pytest.raises(
        UserError, match=r"The model files of 'gpt2' in .*gpt2 do not load \(.*restore or re-download"
    ):
        load_subject("gpt2", str(folder))


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (
            ["--keep-frac", "5"],
            "--keep-frac: input should be less than or equal to 1 (got 5.0); fix the value.",
        ),
        (["--off-frac", "-1"], "--off-frac: input should be greater than 0 (got -1.0); fix the value."),
    ],
)
def test_counterfactuals_settings_are_one_sentence_before_the_model_loads(tmp_path, no_model, args, says):
    build_month_store(tmp_path / "m.db")
    out = invoke("counterfactuals", "--db", tmp_path / "m.db", "--no-llm", *args)
    assert out.exit_code == 2, out.output
    assert " ".join(out.output.split()) == f"error: {says}"


def test_record_of_a_complete_run_loads_no_model(tmp_path, no_model):
    from autointerp.subject.recorder import run_id_for

    db = tmp_path / "r.db"
    s = RecordSettings(model="gemma-3-270m", hooks=[HOOK], units=[0, 1], max_tokens=640)
    store = Store(db)
    store.start_run(RunRecord(id=run_id_for(s), kind="record", settings={}, code_version="t", started_at="t"))
    store.finish_run(run_id_for(s), "complete", {})
    out = invoke("record", "--db", db, "--hook", HOOK, "--units", "0:2", "--tokens", "640")
    assert out.exit_code == 0, out.output
    assert "already complete" in out.output


def test_encoding_keeps_utf8_run_ids_and_names_others():
    from autointerp.subject.recorder import run_id_for

    base = RecordSettings(model="m", hooks=[HOOK])
    assert run_id_for(base) == run_id_for(RecordSettings(model="m", hooks=[HOOK], encoding="utf-8"))
    assert run_id_for(base) != run_id_for(RecordSettings(model="m", hooks=[HOOK], encoding="latin-1"))
    dump = base.model_dump(exclude={"encoding"})
    assert "encoding" not in dump  # what the hash of a utf-8 run covers: the settings before `encoding`


@pytest.mark.parametrize(
    ("data", "says"),
    [
        ("café crème".encode("latin-1"), "undecodable byte"),
        ("hello world".encode("utf-16"), "undecodable byte"),
        ("hello world".encode("utf-16-le"), "NUL"),
        (bytes(range(256)) * 4, "not utf-8 text"),
    ],
)
def test_corpus_files_that_are_not_utf8_text_are_refused(tmp_path, data, says):
    f = tmp_path / "x.txt"
    f.write_bytes(data)
    with pytest.raises(UserError, match=says):
        corpus.check_sources([str(f)])
    with pytest.raises(UserError, match=says):
        list(corpus.texts([str(f)]))


def test_corpus_encoding_option_decodes(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.txt").write_bytes("café crème".encode("latin-1"))
    (tmp_path / "d" / "b.jsonl").write_bytes(
        json.dumps({"text": "naïve"}, ensure_ascii=False).encode("utf-16")
    )
    corpus.check_sources([str(tmp_path / "d" / "a.txt")], "latin-1")
    assert list(corpus.texts([str(tmp_path / "d" / "a.txt")], "latin-1")) == ["café crème"]
    assert list(corpus.texts([str(tmp_path / "d" / "b.jsonl")], "utf-16")) == ["naïve"]
    with pytest.raises(UserError, match=r"a\.txt is not utf-8 text"):
        corpus.check_sources([str(tmp_path / "d")])
    good = tmp_path / "ok.txt"
    good.write_bytes(("x" + "é" * (corpus.CHECK_BYTES // 2)).encode())  # a 2-byte char cut at the head's end
    corpus.check_sources([str(good)])


def test_record_refuses_a_latin1_corpus_before_the_model_loads(tmp_path, no_model):
    f = tmp_path / "latin.txt"
    f.write_bytes("café crème".encode("latin-1"))
    out = invoke("record", "--db", tmp_path / "r.db", "--hook", HOOK, "--corpus", f)
    assert out.exit_code == 2
    assert "is not utf-8 text" in " ".join(out.output.split())


@pytest.mark.parametrize(
    "exc",
    [
        OSError(errno.ENOSPC, "No space left on device"),
        sqlite3.OperationalError("database or disk is full"),
        sqlite3.OperationalError("attempt to write a readonly database"),
        OSError(errno.EROFS, "Read-only file system", "/x/y.db"),
    ],
)
def test_full_disk_and_read_only_paths_are_one_sentence(tmp_path, no_model, monkeypatch, exc):
    def fail(*a, **k):  # noqa: ANN002, ANN003, ANN202
        raise exc

    monkeypatch.setattr("autointerp.subject.recorder.record_units", fail)
    out = invoke("record", "--db", tmp_path / "r.db", "--hook", HOOK)
    assert out.exit_code == 2, out.output
    text = " ".join(out.output.split())
    assert text.startswith("error: Cannot write") and text.count(". ") == 0, text


def test_unrelated_os_errors_are_not_disguised():
    assert environment_error(OSError(errno.ENOENT, "gone")) is None
    assert environment_error(sqlite3.OperationalError("no such table: x")) is None


def test_a_read_only_store_is_not_called_a_bad_file(tmp_path, monkeypatch):
    def readonly(*a, **k):  # noqa: ANN002, ANN003, ANN202
        raise sqlite3.OperationalError("attempt to write a readonly database")

    monkeypatch.setattr("autointerp.store.sqlite_utils.Database", readonly)
    with pytest.raises(UserError, match="Cannot write .*r.db: permission denied") as e:
        Store(tmp_path / "r.db")
    assert "not an autointerp store" not in str(e.value)


def test_garbage_store_and_checkpoint_are_user_errors(tmp_path):
    from autointerp.subject.recorder import load_checkpoint

    (tmp_path / "g.db").write_bytes(b"garbage" * 100)
    with pytest.raises(UserError, match="not an autointerp store"):
        Store(tmp_path / "g.db")
    (tmp_path / "c.pt").write_bytes(b"garbage" * 100)
    with pytest.raises(UserError, match=r"c\.pt is unreadable .*delete it"):
        load_checkpoint(tmp_path / "c.pt")


def test_version_and_python_m():
    out = invoke("--version")
    assert out.exit_code == 0 and out.output.startswith("autointerp 0.")
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run(
        [sys.executable, "-m", "autointerp", "--version"],
        capture_output=True,
        text=True,
        cwd=root,
        timeout=60,
    )
    assert proc.returncode == 0 and proc.stdout.startswith("autointerp "), proc.stderr


def test_quiet_third_party_sets_library_switches(monkeypatch):
    for key in logs.QUIET_ENV:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("TRANSFORMERS_VERBOSITY", "info")  # a user's own choice is kept
    logs.quiet_third_party()
    import os

    assert os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1"
    assert os.environ["TRANSFORMERS_VERBOSITY"] == "info"


def test_sae_release_resolves_from_the_hf_cache(tmp_path, monkeypatch):
    import huggingface_hub.constants

    from autointerp.subject.sae import EMBEDDED_SAE, embedded_sae_path, resolve_sae_path

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    spec = "gpt2-small-res-jb/blocks.3.hook_resid_pre"
    with pytest.raises(UserError, match="not in the local Hugging Face cache.*hf download jbloom/GPT2-Small"):
        resolve_sae_path(spec)
    repo = tmp_path / "hub" / "models--jbloom--GPT2-Small-SAEs-Reformatted"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    folder = repo / "snapshots" / "abc123" / "blocks.3.hook_resid_pre"
    shutil.copytree(embedded_sae_path(), folder)
    assert resolve_sae_path(spec) == folder
    with pytest.raises(UserError, match="has no SAE 'nope'"):
        resolve_sae_path("gpt2-small-res-jb/nope")
    with pytest.raises(UserError, match="does not exist"):
        resolve_sae_path("no-such-release/x")
    assert resolve_sae_path("embedded").name == EMBEDDED_SAE


@pytest.mark.slow
def test_real_record_prints_only_our_lines_on_stdout(tmp_path):
    """A real `record` (model load included): stdout holds its one summary line, nothing third-party."""
    root = Path(__file__).resolve().parent.parent
    args = ["record", "--db", str(tmp_path / "r.db"), "--hook", HOOK, "--units", "0:4"]
    cmd = [sys.executable, "-m", "autointerp", *args, "--tokens", "640", "--batch-size", "4"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=root, timeout=600)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.split("\n")
    assert " ".join(proc.stdout.split()).startswith("recorded 4 units over 640 tokens"), proc.stdout
    assert not any(x in proc.stdout for x in ("Loaded pretrained", "Loading weights", "deprecated")), lines
    assert "Loading weights" not in proc.stderr and "Loaded pretrained" not in proc.stderr


def tiny_gpt2(folder: Path) -> Path:
    """A random 2-layer GPT-2 with a word-level tokenizer, saved as a Hugging Face folder (no download)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(50)} | {"[UNK]": 50}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]", bos_token="w0", eos_token="w1")
    GPT2LMHeadModel(
        GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=51, n_positions=32)
    ).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.mark.slow  # no real model, but TransformerLens' import and conversion take ~20 s here
def test_a_model_path_of_another_model_or_without_its_hub_config_is_one_sentence(tmp_path, monkeypatch):
    pytest.importorskip("transformer_lens")
    from huggingface_hub import try_to_load_from_cache

    from autointerp.subject.model import load_subject

    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)  # no retries against the network
    folder = tiny_gpt2(tmp_path / "tiny")
    # Gemma's config is built into TransformerLens: GPT-2 weights do not fit it
    wrong = r"does not hold 'google/gemma-3-270m' weights TransformerLens can convert"
    with pytest.raises(UserError, match=wrong):
        load_subject("google/gemma-3-270m", str(folder))
    if isinstance(try_to_load_from_cache("gpt2", "config.json"), str):
        return  # this machine has gpt2's hub config: nothing is missing
    # offline, TransformerLens needs gpt2's config.json from the hub cache
    with pytest.raises(
        UserError, match=r"configuration of gpt2 from the Hugging Face cache, which does not hold"
    ):
        load_subject("gpt2", str(folder))


@pytest.mark.parametrize(
    "args",
    [
        ["record", "--model", "gpt-17", "--hook", HOOK],
        ["bench", "--suite", "nope.json", "--no-meta"],
    ],
)
def test_a_refused_command_leaves_no_empty_store_behind(no_model, tmp_path, args):
    db = tmp_path / "new.db"
    result = invoke(*args, "--db", db)
    assert result.exit_code == 2, result.output
    assert not db.exists() and not Path(f"{db}-wal").exists()


def test_a_refused_command_keeps_a_store_that_holds_something(no_model, tmp_path):
    from autointerp.store import discard_if_blank

    db = tmp_path / "x.db"
    build_month_store(db)
    assert invoke("record", "--model", "gpt-17", "--hook", HOOK, "--db", db).exit_code == 2
    assert db.exists() and not discard_if_blank(db)
    Store(tmp_path / "blank.db")
    assert discard_if_blank(tmp_path / "blank.db") and not (tmp_path / "blank.db").exists()
