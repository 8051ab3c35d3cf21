"""SAE loading (SAELens format, three architectures, Gemma Scope npz), clear errors, the latent encoder."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from autointerp import record_units
from autointerp.errors import UserError
from autointerp.store import Store
from autointerp.subject.model import SubjectModel
from autointerp.subject.sae import (
    EMBEDDED_SAE,
    embedded_sae_path,
    load_sae,
    parse_sae_specs,
    sae_sha256,
    sae_source,
    sae_unit_name,
)
from autointerp.types import UnitRef

D_IN, D_SAE, HOOK = 16, 48, "blocks.1.hook_resid_post"


def write_sae(
    path: Path,
    arch: str,
    d_in: int = D_IN,
    d_sae: int = D_SAE,
    hook: str = HOOK,
    old_format: bool = False,
    drop: tuple[str, ...] = (),
    seed: int = 0,
) -> Path:
    """A random SAE directory in SAELens format (6.x config, or the pre-6.0 flat config)."""
    g = torch.Generator().manual_seed(seed)
    w = {
        "W_enc": torch.randn(d_in, d_sae, generator=g),
        "W_dec": torch.randn(d_sae, d_in, generator=g),
        "b_enc": torch.randn(d_sae, generator=g) * 0.5,
        "b_dec": torch.randn(d_in, generator=g) * 0.1,
    }
    if arch == "jumprelu":
        w["threshold"] = torch.rand(d_sae, generator=g)
    path.mkdir(parents=True, exist_ok=True)
    save_file(w, str(path / "sae_weights.safetensors"))
    if old_format:
        cfg = {
            "d_in": d_in,
            "d_sae": d_sae,
            "hook_point": hook,
            "model_name": "tiny",
            "dtype": "float32",
            "device": "cpu",
            "apply_b_dec_to_input": True,
            "activation_fn_str": "relu",
        }
    else:
        cfg = {
            "architecture": arch,
            "d_in": d_in,
            "d_sae": d_sae,
            "dtype": "float32",
            "device": "cpu",
            "apply_b_dec_to_input": arch != "jumprelu",
            "normalize_activations": "none",
            "reshape_activations": "none",
            "metadata": {"hook_name": hook, "model_name": "tiny", "sae_lens_version": "6.54.0"},
        }
        if arch == "topk":
            cfg["k"] = 5
    for f in drop:
        cfg.pop(f, None)
        cfg.get("metadata", {}).pop(f, None)
    (path / "cfg.json").write_text(json.dumps(cfg))
    return path


@pytest.mark.parametrize("arch", ["standard", "topk", "jumprelu"])
def test_load_each_architecture(tmp_path: Path, arch: str) -> None:
    sae, info = load_sae(write_sae(tmp_path / f"my {arch}", arch))
    assert info.architecture == arch and info.hook == HOOK and (info.d_in, info.d_sae) == (D_IN, D_SAE)
    assert re.fullmatch(f"my-{arch}-[0-9a-f]{{8}}", info.name)  # usable inside a unit id
    assert (
        info.name.endswith(info.sha256[:8]) and UnitRef.parse(f"m/{HOOK}/sae:{info.name}/3").sae == info.name
    )
    assert info.k == (5 if arch == "topk" else None)
    assert sae.W_enc.dtype == torch.float32


def test_load_pre_6_config(tmp_path: Path) -> None:
    _, info = load_sae(write_sae(tmp_path / "old", "standard", old_format=True))
    assert (info.architecture, info.hook) == ("standard", HOOK)


@pytest.mark.parametrize("arch", ["standard", "topk", "jumprelu"])
def test_encoder_matches_sae_lens(tmp_path: Path, tiny_subject: SubjectModel, arch: str) -> None:
    path = write_sae(tmp_path / arch, arch)
    latents = [0, 3, 7, 20, 47]
    src, info = sae_source(tiny_subject, path, latents=latents)
    assert src.sae == info.name == sae_unit_name(path) and src.hook == HOOK and src.indices == latents
    assert src.key == f"{HOOK}/sae:{info.name}"
    x = torch.randn(2, 9, D_IN) * 2
    got = src.unit_acts(x.to(torch.bfloat16))
    sae, _ = load_sae(path)
    want = sae.encode(x.to(torch.bfloat16).float())[..., latents]
    assert got.shape == (2, 9, len(latents))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert (got > 0).any() and (got == 0).any()  # a real sparse code, not all-zero or dense


def test_topk_selects_per_token_top_k(tmp_path: Path, tiny_subject: SubjectModel) -> None:
    src, _ = sae_source(tiny_subject, write_sae(tmp_path / "t", "topk"))
    acts = src.unit_acts(torch.randn(4, 8, D_IN))
    assert acts.shape == (4, 8, D_SAE)
    assert int((acts > 0).sum(-1).max()) <= 5


def test_gemma_scope_npz(tmp_path: Path, tiny_subject: SubjectModel) -> None:
    """A raw Gemma Scope params.npz (JumpReLU, no config): loads once the hook is named."""
    g = np.random.default_rng(0)
    d = tmp_path / "layer_1" / "width_16k" / "average_l0_20"
    d.mkdir(parents=True)
    params = {
        "W_enc": g.normal(size=(D_IN, D_SAE)),
        "W_dec": g.normal(size=(D_SAE, D_IN)),
        "b_enc": g.normal(size=D_SAE),
        "b_dec": g.normal(size=D_IN),
        "threshold": g.uniform(size=D_SAE),
    }
    np.savez(d / "params.npz", **{k: v.astype(np.float32) for k, v in params.items()})
    with pytest.raises(UserError, match="names no hook"):
        load_sae(d)
    src, info = sae_source(tiny_subject, d, hook=HOOK, latents=[1, 2])
    assert info.architecture == "jumprelu" and info.name == f"average_l0_20-{sae_sha256(d)[:8]}"
    x = torch.randn(3, 4, D_IN)
    pre = (x @ torch.tensor(params["W_enc"]).float() + torch.tensor(params["b_enc"]).float())[..., [1, 2]]
    thr = torch.tensor(params["threshold"]).float()[[1, 2]]
    torch.testing.assert_close(src.unit_acts(x), torch.where(pre > thr, pre, torch.zeros(())))


def test_error_missing_fields(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"lacks the field\(s\) d_in"):
        load_sae(write_sae(tmp_path / "a", "standard", drop=("d_in",)))
    with pytest.raises(UserError, match="hook_name"):
        load_sae(write_sae(tmp_path / "b", "jumprelu", drop=("hook_name",)))
    with pytest.raises(UserError, match="lacks the field.* k"):
        load_sae(write_sae(tmp_path / "c", "topk", drop=("k",)))


def test_error_unknown_architecture(tmp_path: Path) -> None:
    path = write_sae(tmp_path / "g", "standard")
    cfg = json.loads((path / "cfg.json").read_text())
    (path / "cfg.json").write_text(json.dumps({**cfg, "architecture": "gated"}))
    with pytest.raises(UserError, match="architecture 'gated'.*not supported"):
        load_sae(path)


def test_error_hook_and_width_mismatch(tmp_path: Path, tiny_subject: SubjectModel) -> None:
    with pytest.raises(UserError, match="trained on blocks.1.hook_resid_post, not blocks.0.hook_resid_post"):
        sae_source(tiny_subject, write_sae(tmp_path / "h", "standard"), hook="blocks.0.hook_resid_post")
    with pytest.raises(UserError, match="expects d_in=24 but tiny blocks.1.hook_resid_post has width 16"):
        sae_source(tiny_subject, write_sae(tmp_path / "w", "standard", d_in=24))
    with pytest.raises(UserError, match="not a one-vector-per-token hook"):
        sae_source(tiny_subject, write_sae(tmp_path / "x", "standard", hook="blocks.9.hook_resid_post"))
    with pytest.raises(UserError, match="Latent 48 is out of range"):
        sae_source(tiny_subject, write_sae(tmp_path / "r", "standard"), latents=[0, 48])


def test_error_bad_files(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        load_sae(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="neither cfg.json"):
        load_sae(tmp_path / "empty")
    path = write_sae(tmp_path / "j", "standard")
    (path / "cfg.json").write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        load_sae(path)
    path = write_sae(tmp_path / "s", "standard")
    save_file({"W_enc": torch.zeros(D_IN, 3)}, str(path / "sae_weights.safetensors"))
    with pytest.raises(UserError, match="could not load"):
        load_sae(path)


def test_parse_sae_specs(tmp_path: Path) -> None:
    path = write_sae(tmp_path / "p", "topk")
    assert parse_sae_specs([str(path)]) == {HOOK: str(path)}
    assert parse_sae_specs([f"blocks.0.hook_resid_post={path}"]) == {"blocks.0.hook_resid_post": str(path)}
    with pytest.raises(UserError, match="Two SAEs"):
        parse_sae_specs([str(path), f"{HOOK}={path}"])


def test_embedded_sae_ships_and_loads() -> None:
    path = embedded_sae_path()
    sae, info = load_sae("embedded")
    assert info.name == sae_unit_name("embedded") == f"{EMBEDDED_SAE}-{info.sha256[:8]}"
    assert path.name == EMBEDDED_SAE
    assert (info.architecture, info.hook, info.d_in, info.d_sae, info.k) == (
        "topk",
        "blocks.6.hook_resid_post",
        640,
        4096,
        32,
    )
    assert info.metrics["eval"]["loss_recovered"] >= 0.8
    assert (path / "sae_weights.safetensors").stat().st_size < 12 * 2**20


def test_fast_matmul_keeps_float32_accuracy(tmp_path: Path, tiny_subject: SubjectModel) -> None:
    """Where the encoder uses oneDNN's split-bf16 matmul, its latents equal the plain float32 ones."""
    src, _ = sae_source(tiny_subject, write_sae(tmp_path / "t", "topk"))
    enc = src.encode
    x = torch.randn(64, D_IN) * 3
    fast = enc(x)
    enc.fast_matmul = False
    exact = enc(x)
    torch.testing.assert_close(fast, exact, rtol=1e-5, atol=1e-5)
    plain_bf16 = (x.bfloat16() @ enc.W_enc.bfloat16()).float()
    assert not torch.allclose(plain_bf16, x @ enc.W_enc, rtol=1e-5, atol=1e-5)  # the check can tell


def test_sae_is_identified_by_its_content(tmp_path: Path, tiny_subject: SubjectModel) -> None:
    """New weights at the same path make a new run and new unit ids (not "already complete"); two
    folders of the same name with different weights never share unit ids in one store."""
    text = tmp_path / "c.txt"
    text.write_text("the cat sat on the mat. " * 10)
    kw = dict(corpus=[str(text)], ctx=8, max_tokens=64, batch_size=4, top_k=2, quantile_pool=2, n_random=2)
    db = tmp_path / "x.db"
    path = write_sae(tmp_path / "a" / "res", "standard")
    first = record_units(db, [], saes={HOOK: str(path)}, units=[0, 1], subject=tiny_subject, **kw)
    name = sae_unit_name(path)
    write_sae(path, "standard", seed=1)  # replaced in place
    assert sae_unit_name(path) != name
    again = record_units(db, [], saes={HOOK: str(path)}, units=[0, 1], subject=tiny_subject, **kw)
    assert not again.already_complete and again.run_id != first.run_id
    assert Store(db).get_run(again.run_id).settings["sae_sha256"] == {HOOK: sae_sha256(path)}
    other = write_sae(tmp_path / "b" / "res", "standard", seed=2)  # same folder name, other weights
    record_units(db, [], saes={HOOK: str(other)}, units=[0, 1], subject=tiny_subject, **kw)
    names = {u.ref.sae for u in Store(db).units(hook=HOOK)}
    assert len(names) == 3 and all(re.fullmatch("res-[0-9a-f]{8}", n) for n in names)
    assert len(Store(db).units(hook=HOOK)) == 6
    copy = write_sae(tmp_path / "c" / "res", "standard", seed=2)  # the same SAE elsewhere: the same name
    assert sae_unit_name(copy) == sae_unit_name(other)


def test_one_hooked_forward_pass_serves_recorder_probe_and_training(tiny_subject: SubjectModel) -> None:
    """`SubjectModel.hook_acts` returns what a full cached run sees, stops after the last layer needed,
    and is the pass behind the recorder and the counterfactual probe."""
    from autointerp.counterfactual import UnitProbe
    from autointerp.subject.recorder import Recorder, UnitSource
    from autointerp.types import RecordSettings

    toks = torch.tensor([[1, 5, 9, 12, 3], [1, 7, 7, 8, 20]])
    hooks = ["blocks.0.mlp.hook_post", HOOK]
    _, cache = tiny_subject.model.run_with_cache(toks)
    got = tiny_subject.hook_acts(toks, hooks)
    assert set(got) == set(hooks) and all(torch.equal(got[h], cache[h]) for h in hooks)
    seen: list[str] = []
    tiny_subject.model.blocks[1].hook_resid_pre.add_hook(lambda act, hook: seen.append(hook.name))
    try:
        tiny_subject.hook_acts(toks, ["blocks.0.mlp.hook_post"])  # stopped after block 0
        assert seen == []
        tiny_subject.hook_acts(toks, hooks)
        assert seen == ["blocks.1.hook_resid_pre"]
    finally:
        tiny_subject.model.reset_hooks()
    assert tiny_subject.unit_hooks["blocks.0.mlp.hook_post"] == 32 and tiny_subject.unit_hooks[HOOK] == D_IN

    rec = Recorder(tiny_subject, RecordSettings(model="tiny", hooks=hooks), [UnitSource(HOOK, [0, 1])])
    assert torch.equal(rec.forward(toks)[HOOK], cache[HOOK])
    probe = UnitProbe(tiny_subject, UnitSource(HOOK, [3]), include_special=True)
    assert np.allclose(probe.acts(toks.tolist())[1], cache[HOOK][1, :, 3].float().numpy())
