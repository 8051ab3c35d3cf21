"""Installable anywhere: no torch at import or `--help`, one sentence naming the extra when torch is
missing, templates and the embedded SAE inside the package, and a built wheel that labels a store from
outside the checkout with an OpenAI-compatible server and no torch."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from test_store import make_unit  # tests/ is on sys.path (pytest rootdir, no package)

from autointerp.store import Store
from autointerp.types import Context, Example, RunRecord

REPO = Path(__file__).resolve().parents[1]
SITE = Path(sysconfig.get_paths()["purelib"])
HEAVY = ("torch", "transformers", "transformer_lens", "sae_lens")
EXTRA_HINT = "pip install 'autointerp[local]'"


def run(args: list[str], path: list[Path], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    """`python -S ARGS`: only `path` (no site-packages, no editable install) is importable."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("AUTOINTERP_", "OPENAI_"))}
    environ.update(PYTHONPATH=os.pathsep.join(map(str, path)), COLUMNS="300", **env)
    return subprocess.run(
        [sys.executable, "-S", *args], cwd=cwd, env=environ, capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def no_torch_site(tmp_path_factory) -> Path:
    """The venv's site-packages without torch, transformers, transformer_lens, sae_lens (nor autointerp)."""
    out = tmp_path_factory.mktemp("site-without-torch")
    for entry in SITE.iterdir():
        top = re.split(r"[-.]", entry.name)[0].lower()
        if top in HEAVY or "autointerp" in entry.name or entry.suffix == ".pth":
            continue
        (out / entry.name).symlink_to(entry)
    return out


def test_import_and_help_do_not_import_torch(tmp_path):
    code = (
        "import sys, autointerp, autointerp.cli\n"
        "from typer.testing import CliRunner\n"
        "for args in (['--help'], ['label', '--help'], ['record', '--help']):\n"
        "    r = CliRunner().invoke(autointerp.cli.app, args)\n"
        "    assert r.exit_code == 0 and 'Usage' in r.output, r.output\n"
        f"print([m for m in {HEAVY!r} if m in sys.modules])\n"
    )
    p = run(["-c", code], [REPO, SITE], tmp_path)  # torch is installed here, and not imported
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "[]"


def test_help_and_api_work_where_torch_is_not_installed(tmp_path, no_torch_site):
    p = run(["-m", "autointerp", "--help"], [REPO, no_torch_site], tmp_path)
    assert p.returncode == 0, p.stderr
    assert all(cmd in p.stdout for cmd in ("record", "label", "bench", "counterfactuals"))
    p = run(["-c", "import autointerp; print(autointerp.label.__module__)"], [REPO, no_torch_site], tmp_path)
    assert p.returncode == 0 and p.stdout.strip() == "autointerp.pipeline", p.stderr


LOCAL = "torch, transformers, transformer_lens"


@pytest.mark.parametrize(
    ("args", "what", "missing"),
    [
        (["record", "--db", "x.db", "--hook", "blocks.6.mlp.hook_post"], "autointerp record", LOCAL),
        (["record", "--db", "x.db", "--sae", "embedded"], "autointerp record", LOCAL + ", sae_lens"),
        (["counterfactuals", "--db", "x.db"], "autointerp counterfactuals", LOCAL),
        (["bench", "--db", "x.db"], "autointerp bench", LOCAL),
        (["setup"], "autointerp setup", "torch, transformers"),
        (["label", "--db", "s/y.db"], "local:qwen2.5-coder-1.5b", "torch, transformers"),
    ],
)
def test_model_commands_name_the_extra_when_torch_is_missing(tmp_path, no_torch_site, args, what, missing):
    (tmp_path / "s").mkdir()
    tiny_store(tmp_path / "s" / "y.db")  # labelling needs a store; the default explainer is a local model
    p = run(["-m", "autointerp", *args], [REPO, no_torch_site], tmp_path, AUTOINTERP_HOME=str(tmp_path))
    assert p.returncode == 2, p.stdout + p.stderr
    message = " ".join(p.stderr.split())
    expected = f"error: {what} runs a model here and needs the local extra ({missing} missing): {EXTRA_HINT}."
    assert message.endswith(expected) and message.count("error:") == 1, message
    assert [f.name for f in tmp_path.iterdir()] == ["s"]  # checked before anything is written


def test_prompts_env_var_overrides_the_packaged_templates(tmp_path):
    (tmp_path / "explain_top.j2").write_text("{#- name: my-explainer version: 7 -#}\nhello\n")
    code = (
        "from autointerp.prompts import PROMPTS_DIR, prompt; print(PROMPTS_DIR, prompt('explain_top.j2').id)"
    )
    p = run(["-c", code], [REPO, SITE], tmp_path, AUTOINTERP_PROMPTS=str(tmp_path))
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == [str(tmp_path), "my-explainer@7"]
    p = run(["-c", code], [REPO, SITE], tmp_path)
    assert p.stdout.split() == [
        str(REPO / "autointerp" / "templates"),
        "explain-top@" + _version("explain_top"),
    ]


def _version(name: str) -> str:
    head = (REPO / "autointerp" / "templates" / f"{name}.j2").read_text().splitlines()[0]
    return re.search(r"version:\s*(\w+)", head)[1]


# -- the built wheel ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """Build the wheel from a copy of the checkout and install it (no deps) into a fresh folder."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    junk = shutil.ignore_patterns(".git", ".venv", "runs", "build", "*.egg-info", "__pycache__", ".*_cache")
    shutil.copytree(REPO, src, ignore=junk)
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    subprocess.run(
        [*pip, "wheel", str(src), "--no-deps", "--no-build-isolation", "-w", tmp / "dist"], check=True
    )
    (wheel,) = (tmp / "dist").glob("autointerp-*.whl")
    target = tmp / "target"
    subprocess.run([*pip, "install", "--no-deps", "--target", target, wheel], check=True)
    return target


class FakeOpenAI(BaseHTTPRequestHandler):
    """An OpenAI-compatible chat server: explains every unit as 'the letter b'; the JSON simulator
    predicts 9 on tokens with a 'b' and 0 elsewhere."""

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        msgs = body["messages"]
        if "predict the activations" in msgs[0]["content"]:
            lines = msgs[-1]["content"].split("Tokens (one per line):\n")[1].split("\n")
            n = int(re.search(r"Give exactly (\d+) integers", msgs[-1]["content"])[1])
            text = json.dumps([9 if "b" in tok else 0 for tok in lines[:n]])
        else:
            text = "the letter b"
        answer = {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 0,
            "model": body["model"],
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
            ],
            "usage": {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13},
        }
        data = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:  # noqa: ANN002 - quiet
        pass


def tiny_store(path: Path) -> str:
    """One unit that fires on ' b': six top windows and four quiet random ones."""
    store = Store(path)
    store.start_run(RunRecord(id="r1", kind="record", settings={}, code_version="t", started_at="now"))
    unit = make_unit(0)
    words = [" a", " c", " d", " e", " f", " g"]

    def example(kind: str, rank: int, tokens: list[str]) -> Example:
        ctx = Context(id=f"{kind}{rank}", token_ids=list(range(len(tokens))), tokens=tokens)
        acts = [2.0 - 0.1 * rank if tok == " b" else 0.0 for tok in tokens]
        return Example(unit_id=unit.id, kind=kind, rank=rank, context=ctx, acts=acts)

    tops = [example("top", r, ["x", words[r], " b", words[-1 - r]]) for r in range(6)]
    randoms = [example("random", r, ["y", words[r], words[r + 1], " h"]) for r in range(4)]
    store.write_units([unit], tops + randoms)
    return unit.id


def test_wheel_works_outside_the_checkout(installed, no_torch_site, tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    pkg = installed / "autointerp"
    assert (pkg / "py.typed").exists()
    assert {p.name for p in (pkg / "templates").glob("*.j2")} == {
        p.name for p in (REPO / "autointerp" / "templates").glob("*.j2")
    }
    viewer = REPO / "autointerp" / "viewer"
    for folder in ("templates", "static"):  # the viewer's pages, styles and script ship as package data
        want = {p.name for p in (viewer / folder).iterdir() if p.is_file()}
        assert {p.name for p in (pkg / "viewer" / folder).iterdir()} == want

    p = run(["-m", "autointerp", "--help"], [installed, no_torch_site], outside)
    assert p.returncode == 0 and "label" in p.stdout, p.stderr

    # the embedded SAE from the installed package (its content hash names it), with torch this time
    code = (
        "import autointerp; from autointerp.prompts import PROMPTS_DIR\n"
        "from autointerp.subject.sae import embedded_sae_path, sae_unit_name\n"
        "print(autointerp.__file__, PROMPTS_DIR, embedded_sae_path(), sae_unit_name('embedded'))\n"
    )
    p = run(["-c", code], [installed, SITE], outside)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == [
        str(pkg / "__init__.py"),
        str(pkg / "templates"),
        str(pkg / "data" / "saes" / "gemma-3-270m-res6-4k"),
        "gemma-3-270m-res6-4k-8bb87dd3",
    ]

    # label a store with an OpenAI-compatible server, torch not installed
    unit_id = tiny_store(outside / "x.db")
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeOpenAI)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        args = ["label", "--db", "x.db", "--explainer", "openai:fake", "--simulator-mode", "json"]
        url = f"http://127.0.0.1:{server.server_port}/v1"
        p = run(["-m", "autointerp", *args, "--base-url", url], [installed, no_torch_site], outside)
    finally:
        server.shutdown()
    assert p.returncode == 0, p.stdout + p.stderr
    store = Store(outside / "x.db")
    (exp,) = store.explanations(unit_id)
    assert exp.text == "the letter b"
    (score,) = [s for s in store.scores(exp.id) if s.scorer == "correlation"]
    assert score.status == "ok" and score.value > 0.99  # it predicts the b tokens: it was read
