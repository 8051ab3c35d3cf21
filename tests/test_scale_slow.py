"""Shards on the real embedded Gemma: two record shards + merge equal the single run, unit by unit, in
one process and as Ray tasks on a local Ray (the `scale` extra)."""

from __future__ import annotations

from pathlib import Path

import pytest

from autointerp.scale.merge import merge_stores
from autointerp.store import Store
from autointerp.subject.recorder import record_units
from tests.test_scale import assert_same_store

pytestmark = pytest.mark.slow
SETTINGS = dict(
    hooks=["blocks.2.mlp.hook_post"], units=list(range(24)), max_tokens=1024, ctx=32, batch_size=8
)
SAE = dict(saes={"blocks.6.hook_resid_post": "embedded"}, units=list(range(24)))


@pytest.fixture(scope="module")
def single(gemma, tmp_path_factory):
    """One process over the whole stream: MLP neurons and embedded SAE latents."""
    db = tmp_path_factory.mktemp("single") / "single.db"
    record_units(db, subject=gemma, **SETTINGS | SAE)
    return Store(db)


def test_two_record_shards_merge_into_the_single_run_on_gemma(gemma, single, tmp_path):
    paths = [tmp_path / f"s{i}.db" for i in range(2)]
    for i, path in enumerate(paths):
        record_units(path, subject=gemma, shard=f"{i}/2", **SETTINGS | SAE)
    merge_stores(tmp_path / "merged.db", paths)
    assert_same_store(Store(tmp_path / "merged.db"), single)


def test_scale_record_on_a_local_ray_equals_the_single_run(gemma, tmp_path):
    """`autointerp scale record --ray local --shards 2`: two Ray tasks (subprocesses loading Gemma) and
    the merge give the single-process store. Ray runs a one-CPU task with OMP_NUM_THREADS=1, and bf16
    sums depend on the thread count, so the single run here uses one thread too."""
    ray = pytest.importorskip("ray")
    import torch

    from autointerp.scale import ray_driver

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        record_units(tmp_path / "single.db", subject=gemma, **SETTINGS | SAE)
    finally:
        torch.set_num_threads(threads)
    args = [
        "--hook",
        "blocks.2.mlp.hook_post",
        "--sae",
        "blocks.6.hook_resid_post=embedded",
        "--units",
        "0:24",
    ]
    args += ["--tokens", "1024", "--ctx", "32", "--batch-size", "8"]
    out = tmp_path / "ray.db"
    result = ray_driver.run_scaled(
        "record", args, db=out, out=out, shards=2, num_cpus=2
    )  # ray.init(num_cpus=2)
    assert not ray.is_initialized() and [o.exit_code for o in result.shards] == [0, 0]
    assert_same_store(Store(out), Store(tmp_path / "single.db"))


def flaky_run_shard(cmd: list[str], cwd: str | None = None):  # noqa: ANN201 - a ShardOutcome
    """Each shard fails once (a lost worker, say) before it runs: Ray must retry it."""
    from autointerp.scale import ray_driver

    marker = Path(cmd[cmd.index("--out") + 1] + ".failed-once")
    if not marker.exists():
        marker.write_text("x")
        raise ray_driver.ShardFailed("injected failure")
    return ray_driver.run_shard(cmd, cwd)


def test_scale_label_on_a_local_ray_equals_the_single_run(tmp_path, monkeypatch):
    """`autointerp scale label --ray local --shards 2` against an OpenAI-compatible server, each shard
    failing once and retried: the merged store holds the explanations and scores of one
    single-process run, each once."""
    pytest.importorskip("ray")
    import sys

    from ray import cloudpickle

    from autointerp.scale import ray_driver

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # pytest imports this file by its name
    monkeypatch.setattr(ray_driver, "run_shard", flaky_run_shard)
    import threading
    from http.server import ThreadingHTTPServer

    from typer.testing import CliRunner

    from autointerp import cli
    from autointerp.pipeline import label
    from tests.conftest import build_month_store
    from tests.test_packaging import FakeOpenAI

    build_month_store(tmp_path / "rec.db", n_units=3).copy_to(tmp_path / "single.db")
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeOpenAI)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    llm = ["--explainer", "openai:fake", "--simulator-mode", "json"]
    llm += ["--base-url", f"http://127.0.0.1:{server.server_port}/v1"]
    try:
        label(tmp_path / "single.db", explainer="openai:fake", simulator_mode="json", base_url=llm[-1])
        out = CliRunner().invoke(
            cli.app,
            ["scale", "label", "--db", str(tmp_path / "rec.db"), "--out", str(tmp_path / "lab.db"), *llm],
        )
    finally:
        server.shutdown()
    assert out.exit_code == 0, out.output
    assert len(list((tmp_path / "lab.db.shards").glob("*.failed-once"))) == 2  # both failed, were retried
    merged, single = Store(tmp_path / "lab.db"), Store(tmp_path / "single.db")

    def rows(store: Store) -> list:
        return sorted((x.explanation_id, x.unit_id, x.scorer, x.value) for x in store.scores())

    assert rows(merged) == rows(single) and len(rows(single)) == 3
    assert sorted(e.id for e in merged.explanations()) == sorted(e.id for e in single.explanations())
