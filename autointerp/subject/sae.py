"""Sparse autoencoders as units: load an SAE (SAELens format, via sae_lens), check it against the subject
model, and read its latents off a hook with the encoder only, for the requested latents only.

An SAE directory holds `cfg.json` + `sae_weights.safetensors` (SAELens 6.x or older configs; standard/ReLU,
TopK and JumpReLU architectures), or a raw Gemma Scope `params.npz` (JumpReLU; the hook must be given).
Unit ids: `MODEL/HOOK/sae:NAME-HASH/LATENT`, HASH the first 8 hex digits of `sae_sha256` (the files'
content), so replaced weights or two folders of the same name never share ids. The embedded default
is a TopK SAE trained here on gemma-3-270m `blocks.6.hook_resid_post` (see `sae_train.py`), shipped
under autointerp/data/saes/.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel

from autointerp.errors import UserError
from autointerp.subject.model import SubjectModel
from autointerp.subject.recorder import UnitSource

ARCHITECTURES = ("standard", "topk", "jumprelu")
EMBEDDED_SAE = "gemma-3-270m-res6-4k"
EMBEDDED_ALIASES = ("embedded", "default", EMBEDDED_SAE)
CFG_FILE, WEIGHTS_FILE, NPZ_FILE, METRICS_FILE = (
    "cfg.json",
    "sae_weights.safetensors",
    "params.npz",
    "metrics.json",
)
_NAME_RE = re.compile(r"[^A-Za-z0-9._-]+")
HASH_CHUNK = 1 << 20
_HASHES: dict[tuple, str] = {}  # (path, (file, size, mtime) ...) -> sha256: each file read once per process
FAST_MATMUL_MAX_REL_ERR = 1e-5  # plain bf16 is ~1e-2; fp32 is ~1e-6


@contextmanager
def _mkldnn_matmul(precision: str) -> Iterator[None]:
    """Run float32 CPU matmuls with oneDNN's `precision` ("bf16" or "ieee") inside the block."""
    flags = torch.backends.mkldnn.matmul
    old = flags.fp32_precision
    flags.fp32_precision = precision
    try:
        yield
    finally:
        flags.fp32_precision = old


def fast_matmul_ok(w: torch.Tensor) -> bool:
    """Whether oneDNN's "bf16" float32 matmul keeps float32 accuracy with `w` on this CPU.

    On CPUs with avx512_bf16 but no AMX it splits each float into bf16 parts: about 2x faster than
    the default float32 GEMM at ~1e-6 relative error. Where it would be plain bf16 (~1e-2), this says no.
    """
    if w.device.type != "cpu" or not torch.backends.mkldnn.is_available():
        return False
    x = torch.randn((64, w.shape[0]), generator=torch.Generator().manual_seed(0))
    want = x.double() @ w.double()
    with _mkldnn_matmul("bf16"):
        got = x @ w
    return bool((got.double() - want).abs().max() <= FAST_MATMUL_MAX_REL_ERR * want.abs().max())


def embedded_sae_path(name: str = EMBEDDED_SAE) -> Path:
    """Directory of an SAE shipped inside the package (SAELens format, with metrics.json beside it)."""
    path = Path(__file__).resolve().parent.parent / "data" / "saes" / name
    if not (path / CFG_FILE).exists():
        raise UserError(f"The embedded SAE {name!r} is missing from {path}; reinstall autointerp.")
    return path


def resolve_sae_path(spec: str | Path) -> Path:
    """`embedded` (or the embedded SAE's name) -> its directory; `RELEASE/SAE_ID` of SAELens's pretrained
    registry -> its folder in the local Hugging Face cache; anything else is a directory path."""
    if str(spec) in EMBEDDED_ALIASES:
        return embedded_sae_path()
    path = Path(spec).expanduser()
    if path.is_dir():
        return path
    if (found := pretrained_sae_path(str(spec))) is not None:
        return found
    raise UserError(
        f"SAE directory {path} does not exist; pass a folder with cfg.json + sae_weights.safetensors, "
        "a SAELens release and id (RELEASE/SAE_ID), or 'embedded'."
    )


def pretrained_sae_path(spec: str) -> Path | None:
    """The local folder of SAELens registry entry `RELEASE/SAE_ID`, None when `spec` names no entry,
    or a UserError saying how to fetch weights that are not in the Hugging Face cache."""
    release, _, sae_id = spec.partition("/")
    if not sae_id:
        return None
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    entry = get_pretrained_saes_directory().get(release)
    if entry is None:
        return None
    if sae_id not in entry.saes_map:
        ids = list(entry.saes_map)
        raise UserError(
            f"SAELens release {release!r} has no SAE {sae_id!r}; its ids include {', '.join(ids[:3])}"
            f" ({len(ids)} in all)."
        )
    folder = entry.saes_map[sae_id]
    try:
        root = snapshot_download(entry.repo_id, allow_patterns=[f"{folder}/*"], local_files_only=True)
    except LocalEntryNotFoundError:
        root = None
    path = Path(root, folder) if root else None
    if path is None or not path.is_dir():
        raise UserError(
            f"The weights of {spec} are not in the local Hugging Face cache; on a machine with network "
            f"access run `hf download {entry.repo_id} --include '{folder}/*'` and copy the cache here."
        )
    return path


def parse_sae_specs(specs: list[str]) -> dict[str, str]:
    """CLI `--sae` values (`DIR`, `embedded`, `HOOK=DIR`) -> {hook: DIR}; a bare DIR's hook: cfg.json."""
    out: dict[str, str] = {}
    for spec in specs:
        hook, sep, where = spec.partition("=")
        if not sep:
            where = spec
            hook = sae_hook(resolve_sae_path(where))
        if hook in out:
            raise UserError(f"Two SAEs given for {hook}; record one SAE per hook per run.")
        out[hook] = where
    return out


def sae_sha256(path: str | Path) -> str:
    """sha256 over an SAE folder's files that decide its latents: cfg.json + weights, or params.npz.

    Read in chunks; cached by each file's path, size and mtime, so a second call in a process is free
    and a replaced file is hashed again."""
    path = resolve_sae_path(path).resolve()
    files = [path / f for f in (CFG_FILE, WEIGHTS_FILE, NPZ_FILE) if (path / f).is_file()]
    if (path / CFG_FILE) in files:
        files = [f for f in files if f.name != NPZ_FILE]  # load_sae reads params.npz only without cfg.json
    key = (str(path), *((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files))
    if key not in _HASHES:
        h = hashlib.sha256()
        for f in files:
            h.update(f"{f.name}\0{f.stat().st_size}\0".encode())
            with f.open("rb") as fh:
                while chunk := fh.read(HASH_CHUNK):
                    h.update(chunk)
        _HASHES[key] = h.hexdigest()
    return _HASHES[key]


def sae_unit_name(path: str | Path, name: str | None = None) -> str:
    """The SAE's name in unit ids: `name` (default: the folder's name) + "-" + 8 hex digits of its hash."""
    base = _NAME_RE.sub("-", name or resolve_sae_path(path).name).strip("-") or "sae"
    return f"{base}-{sae_sha256(path)[:8]}"


class SaeInfo(BaseModel):
    """What autointerp knows of an SAE besides its weights."""

    name: str  # as in unit ids: folder name + 8 hex digits of sha256
    sha256: str  # of cfg.json + weights (or params.npz): what identifies the SAE
    path: str
    architecture: str
    hook: str
    d_in: int
    d_sae: int
    k: int | None = None
    model_name: str | None = None
    metrics: dict[str, Any] = {}


def _read_cfg(path: Path) -> dict[str, Any]:
    try:
        cfg = json.loads((path / CFG_FILE).read_text())
    except json.JSONDecodeError as e:
        raise UserError(
            f"{path / CFG_FILE} is not valid JSON ({e.msg}, line {e.lineno}); fix or replace it."
        ) from e
    if not isinstance(cfg, dict):
        raise UserError(f"{path / CFG_FILE} is not a JSON object; write the SAELens config as an object.")
    return cfg


def _cfg_hook(cfg: dict[str, Any]) -> str | None:
    meta = cfg.get("metadata") if isinstance(cfg.get("metadata"), dict) else {}
    return cfg.get("hook_name") or cfg.get("hook_point") or meta.get("hook_name")


def _cfg_architecture(cfg: dict[str, Any]) -> str:
    arch = cfg.get("architecture")
    if arch is None:  # pre-6.0 SAELens configs: the activation function decides
        act = cfg.get("activation_fn") or cfg.get("activation_fn_str") or "relu"
        arch = "topk" if act == "topk" else "standard"
    return arch


def sae_hook(path: Path) -> str:
    """The hook an SAE directory's cfg.json names (raises a UserError when absent)."""
    if not (path / CFG_FILE).exists():
        raise UserError(f"{path} has no {CFG_FILE}, so its hook is unknown; write --sae HOOK={path}.")
    hook = _cfg_hook(_read_cfg(path))
    if not hook:
        raise UserError(f"{path / CFG_FILE} names no hook (hook_name); add it, or write --sae HOOK={path}.")
    return hook


def _check_cfg(path: Path, cfg: dict[str, Any], hook: str | None) -> dict[str, Any]:
    """Validate a cfg.json before sae_lens sees it; return it with the hook filled in."""
    missing = [f for f in ("d_in", "d_sae") if not isinstance(cfg.get(f), int)]
    cfg_hook = _cfg_hook(cfg)
    if not cfg_hook and not hook:
        missing.append("hook_name")
    arch = _cfg_architecture(cfg)
    if arch == "topk" and cfg.get("k") is None and (cfg.get("activation_fn_kwargs") or {}).get("k") is None:
        missing.append("k")
    if missing:
        raise UserError(
            f"{path / CFG_FILE} lacks the field(s) {', '.join(missing)}; add them (SAELens format) and retry."
        )
    if arch not in ARCHITECTURES:
        raise UserError(
            f"SAE architecture {arch!r} in {path / CFG_FILE} is not supported; autointerp reads "
            f"{', '.join(ARCHITECTURES)} SAEs."
        )
    if cfg_hook and hook and cfg_hook != hook:
        raise UserError(
            f"The SAE in {path} was trained on {cfg_hook}, not {hook}; pass --sae {cfg_hook}={path}."
        )
    cfg = dict(cfg)
    if not cfg_hook:
        cfg["hook_name"] = hook
        if isinstance(cfg.get("metadata"), dict):
            cfg["metadata"] = {**cfg["metadata"], "hook_name": hook}
    if cfg.get("normalize_activations") not in (None, False, "none", "layer_norm"):
        raise UserError(
            f"{path / CFG_FILE} asks for normalize_activations={cfg['normalize_activations']!r}; autointerp "
            "reads SAEs with 'none' or 'layer_norm': fold the normalisation into the weights first."
        )
    if cfg.get("reshape_activations", "none") not in ("none", None):
        raise UserError(
            f"{path} is an attention hook_z SAE; autointerp reads SAEs on one-vector-per-token hooks."
        )
    return cfg


def _npz_loader(hook: str):  # noqa: ANN202 - a sae_lens PretrainedSaeDiskLoader
    """A sae_lens disk loader for a raw Gemma Scope `params.npz` (JumpReLU, no config file)."""
    import numpy as np

    def load(path: str | Path, device: str = "cpu", cfg_overrides: dict | None = None) -> tuple[dict, dict]:
        with np.load(Path(path) / NPZ_FILE) as z:
            state = {k: torch.from_numpy(z[k]).float().to(device) for k in z.files}
        d_in, d_sae = state["W_enc"].shape
        cfg = {
            "architecture": "jumprelu",
            "d_in": d_in,
            "d_sae": d_sae,
            "dtype": "float32",
            "device": device,
            "apply_b_dec_to_input": False,
            "normalize_activations": "none",
            "sae_lens_version": "6.0.0",
            "metadata": {"hook_name": hook},
            **(cfg_overrides or {}),
        }
        return cfg, state

    return load


def _json_loader(cfg: dict[str, Any]):  # noqa: ANN202 - a sae_lens PretrainedSaeDiskLoader
    """sae_lens's own disk loader, fed our validated (hook-completed) config."""
    from sae_lens.loading.pretrained_sae_loaders import read_sae_components_from_disk

    def load(path: str | Path, device: str = "cpu", cfg_overrides: dict | None = None) -> tuple[dict, dict]:
        cfg_dict = {**cfg, "device": device, **(cfg_overrides or {})}
        return read_sae_components_from_disk(
            cfg_dict=cfg_dict, weight_path=Path(path) / WEIGHTS_FILE, device=device
        )

    return load


def load_sae(path: str | Path, hook: str | None = None, name: str | None = None):  # noqa: ANN201 - (SAE, SaeInfo)
    """Load an SAE directory with sae_lens (float32, CPU) and describe it; errors are one UserError."""
    from sae_lens import SAE

    path = resolve_sae_path(path)
    if (path / CFG_FILE).exists():
        if not (path / WEIGHTS_FILE).exists():
            raise UserError(f"{path} has {CFG_FILE} but no {WEIGHTS_FILE}; copy the weights file beside it.")
        cfg = _check_cfg(path, _read_cfg(path), hook)
        loader = _json_loader(cfg)
    elif (path / NPZ_FILE).exists():
        if not hook:
            raise UserError(f"{path / NPZ_FILE} (Gemma Scope format) names no hook; write --sae HOOK={path}.")
        loader = _npz_loader(hook)
    else:
        raise UserError(
            f"{path} holds neither {CFG_FILE} + {WEIGHTS_FILE} nor {NPZ_FILE}; point --sae at an SAE folder."
        )
    try:
        sae = SAE.load_from_disk(path, device="cpu", dtype="float32", converter=loader)
    except (KeyError, ValueError, RuntimeError, TypeError, OSError) as e:
        raise UserError(
            f"sae_lens could not load the SAE in {path} "
            f"({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
            "check that its weights match cfg.json."
        ) from e
    arch = sae.cfg.architecture()
    if arch not in ARCHITECTURES:
        raise UserError(
            f"SAE architecture {arch!r} in {path} is not supported; use one of {', '.join(ARCHITECTURES)}."
        )
    metrics = json.loads((path / METRICS_FILE).read_text()) if (path / METRICS_FILE).exists() else {}
    info = SaeInfo(
        name=sae_unit_name(path, name),
        sha256=sae_sha256(path),
        path=str(path),
        architecture=arch,
        hook=sae.cfg.metadata.hook_name or hook,
        d_in=sae.cfg.d_in,
        d_sae=sae.cfg.d_sae,
        k=getattr(sae.cfg, "k", None),
        model_name=sae.cfg.metadata.model_name,
        metrics=metrics,
    )
    return sae, info


@dataclass
class SaeEncoder:
    """The encoder of an SAE restricted to some latents: (N, d_in) hook activations -> (N, U) latents.

    Only encoder weights are kept (W_enc columns, b_enc, JumpReLU thresholds). A TopK SAE needs the full
    pre-activation to find each token's top k; the matmul is done once, then only the kept columns remain.
    """

    architecture: str
    latents: list[int]
    W_enc: torch.Tensor  # (d_in, U), or (d_in, d_sae) for TopK
    b_enc: torch.Tensor
    b_dec_in: torch.Tensor  # subtracted from the input (zeros when apply_b_dec_to_input is off)
    threshold: torch.Tensor | None = None  # JumpReLU, (U,)
    k: int | None = None
    dec_norm: torch.Tensor | None = None  # TopK with rescale_acts_by_decoder_norm, (d_sae,)
    layer_norm: bool = False
    fast_matmul: bool = False  # oneDNN's split-bf16 float32 matmul, where it keeps float32 accuracy

    def __post_init__(self) -> None:
        self.fast_matmul = fast_matmul_ok(self.W_enc)
        self._all = self.latents == list(range(self.W_enc.shape[1]))

    @classmethod
    def from_sae(cls, sae, latents: list[int]) -> SaeEncoder:  # noqa: ANN001 - sae_lens SAE
        arch = sae.cfg.architecture()
        cols = torch.tensor(latents, dtype=torch.long)
        with torch.no_grad():
            W_enc, b_enc = sae.W_enc.detach().float(), sae.b_enc.detach().float()
            b_dec = sae.b_dec.detach().float() * float(sae.cfg.apply_b_dec_to_input)
            common = {
                "architecture": arch,
                "latents": latents,
                "b_dec_in": b_dec.clone(),
                "layer_norm": sae.cfg.normalize_activations == "layer_norm",
            }
            if arch == "topk":
                rescale = getattr(sae.cfg, "rescale_acts_by_decoder_norm", False)
                return cls(
                    W_enc=W_enc.contiguous(),
                    b_enc=b_enc.clone(),
                    k=sae.cfg.k,
                    dec_norm=sae.W_dec.detach().float().norm(dim=-1) if rescale else None,
                    **common,
                )
            thr = sae.threshold.detach().float()[cols].clone() if arch == "jumprelu" else None
            return cls(W_enc=W_enc[:, cols].contiguous(), b_enc=b_enc[cols].clone(), threshold=thr, **common)

    def to(self, device: torch.device | str) -> SaeEncoder:
        """The encoder's tensors on `device` (the subject model's: latents never pass through the host)."""
        for name in ("W_enc", "b_enc", "b_dec_in", "threshold", "dec_norm"):
            t = getattr(self, name)
            if t is not None:
                setattr(self, name, t.to(device))
        self.fast_matmul = fast_matmul_ok(self.W_enc)  # a CPU (oneDNN) setting: off elsewhere
        return self

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        if self.layer_norm:
            x = x - x.mean(dim=-1, keepdim=True)
            x = x / (x.std(dim=-1, keepdim=True) + 1e-5)
        with _mkldnn_matmul("bf16" if self.fast_matmul else "ieee"):
            pre = torch.addmm(self.b_enc, x - self.b_dec_in, self.W_enc)
        if self.architecture == "topk":
            if self.dec_norm is not None:
                pre = pre * self.dec_norm
            vals, idx = pre.topk(self.k, dim=-1, sorted=False)
            out = torch.zeros_like(pre).scatter_(-1, idx, vals.clamp_(min=0))
            if self._all:
                return out
            return out[:, torch.tensor(self.latents, dtype=torch.long, device=out.device)]
        if self.architecture == "jumprelu":
            return torch.where(pre > self.threshold, pre.clamp(min=0), torch.zeros((), dtype=pre.dtype))
        return pre.clamp(min=0)


def sae_source(
    subject: SubjectModel,
    path: str | Path,
    hook: str | None = None,
    latents: list[int] | None = None,
    name: str | None = None,
) -> tuple[UnitSource, SaeInfo]:
    """A recorder UnitSource reading SAE latents (all, or `latents`) off their hook; checks hook and d_in."""
    sae, info = load_sae(path, hook=hook, name=name)
    if info.hook not in subject.unit_hooks:
        raise UserError(
            f"The SAE in {info.path} reads {info.hook}, which is not a one-vector-per-token hook of "
            f"{subject.name}; use an SAE trained on this model."
        )
    width = subject.check_hook(info.hook)
    if width != info.d_in:
        raise UserError(
            f"The SAE in {info.path} expects d_in={info.d_in} but {subject.name} {info.hook} "
            f"has width {width}; "
            "use an SAE trained on this model and hook."
        )
    latents = list(range(info.d_sae)) if latents is None else latents
    bad = [i for i in latents if not 0 <= i < info.d_sae]
    if bad:
        raise UserError(
            f"Latent {bad[0]} is out of range for SAE {info.name}, which has {info.d_sae} latents."
        )
    enc = SaeEncoder.from_sae(sae, latents).to(getattr(subject.model.cfg, "device", None) or "cpu")
    del sae  # the decoder is never needed to record
    return UnitSource(hook=info.hook, indices=latents, sae=info.name, encode=enc), info
