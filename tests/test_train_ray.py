"""Ray Train launch: two CPU workers with gloo (DDP, FSDP2) train the same model a single process would."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from pydoc_data.topics import topics

import pytest
import torch

from slimpipe.mix.packed import open_mix, write_mix
from slimpipe.mix.tokenizer import train_bpe
from slimpipe.train.checkpoint import checkpoints, load_model_state
from slimpipe.train.launch import launch, launch_ray
from slimpipe.train.plan import TrainConfig

MICRO_YAML = """\
name: micro
model: {n_layer: 2, d_model: 64, n_head: 4, d_ff: 170, max_seq_len: 32}
train: {seq_len: 32, batch_size: 8, micro_batch: 2, lr: 3.0e-3, warmup_fraction: 0.25}
"""


@pytest.fixture(scope="module")
def mix(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ray-trainer")
    docs = [topics[k] for k in sorted(topics)]
    tok = train_bpe(docs, vocab_size=384, out=root / "bpe")
    write_mix(root / "mix", docs[:40], {"wikipedia": docs[-3:], "arxiv": docs[-6:-3]}, tok, 32)
    (root / "micro.yaml").write_text(MICRO_YAML)
    return root


def _cfg(mix: Path, out: Path) -> TrainConfig:
    return TrainConfig(mix_dir=str(mix / "mix"), out_dir=str(out), model=str(mix / "micro.yaml"), max_steps=4,
                       eval_interval=2, eval_sequences=6, export=False, threads=1)


def _losses(run: Path) -> list[float]:
    return [json.loads(ln)["loss"] for ln in (run / "train_log.jsonl").read_text().splitlines()]


def test_two_gloo_workers_match_a_single_process(ray_session, mix, tmp_path):
    ray_run, local_run = tmp_path / "ray", tmp_path / "local"
    metrics = launch_ray(_cfg(mix, ray_run), num_workers=2, use_gpu=False)
    assert metrics["world_size"] == 2 and metrics["steps"] == 4
    config = json.loads((ray_run / "config.json").read_text())
    assert config["plan"]["world_size"] == 2 and config["plan"]["accum"] == 2  # 8 = 2 micro x 2 accum x 2
    assert [p.name for p in checkpoints(ray_run)] == ["step_0000004"]
    # DDP: the state is the same on every rank, so rank 0 alone staged and wrote it (#20.6), and it resumes
    assert sorted(p.name for p in checkpoints(ray_run)[0].glob("*.distcp")) == ["__0_0.distcp"]
    evals = [json.loads(ln) for ln in (ray_run / "eval_log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in evals] == [2, 4]
    # the same global batches, split over two ranks with gradients all-reduced, give the same training
    local = launch(_cfg(mix, local_run))
    assert json.loads((local_run / "config.json").read_text())["plan"]["accum"] == 4
    assert _losses(ray_run) == pytest.approx(_losses(local_run), rel=1e-4)
    assert metrics["eval"]["total"]["bpb"] == pytest.approx(local["eval"]["total"]["bpb"], rel=1e-4)
    assert metrics["eval"]["total"]["tokens"] == local["eval"]["total"]["tokens"]
    resumed_run = tmp_path / "resumed"  # the DDP checkpoint, resumed in one process: model and optimizer load
    shutil.copytree(ray_run, resumed_run, ignore=shutil.ignore_patterns("ray"))
    (resumed_run / "metrics.json").unlink()
    resumed = launch(dataclasses.replace(_cfg(mix, resumed_run), resume=True))
    assert resumed["steps"] == 4 and resumed["eval"]["total"]["bpb"] == pytest.approx(metrics["eval"]["total"]["bpb"],
                                                                                        rel=1e-5)
    a = load_model_state(ray_run / "checkpoints" / "step_0000004")
    b = load_model_state(local_run / "checkpoints" / "step_0000004")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-3, atol=1e-5)
    # FSDP2 (bf16 parameters, fp32 reduction) on the same two ranks: sharded checkpoint, eval shards of
    # unequal size (an odd-sized set: no deadlock), and the fp32 run's training within bf16 precision
    assert any(len(ds) % 2 for ds in open_mix(mix / "mix")[1].values())
    fsdp_run = tmp_path / "fsdp"
    fsdp = launch_ray(dataclasses.replace(_cfg(mix, fsdp_run), parallel="fsdp"), num_workers=2, use_gpu=False)
    assert fsdp["parallel"] == "fsdp" and fsdp["steps"] == 4
    ckpt = ray_run.parent / "fsdp" / "checkpoints" / "step_0000004"
    assert sorted(p.name for p in ckpt.glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]  # one shard each
    assert _losses(fsdp_run) == pytest.approx(_losses(local_run), rel=3e-2)
    assert fsdp["eval"]["total"]["bpb"] == pytest.approx(local["eval"]["total"]["bpb"], rel=3e-2)
    c = load_model_state(ckpt)
    assert c.keys() == b.keys() and all(c[k].shape == b[k].shape for k in b)


def test_workers_read_a_mix_uri_as_written_and_local_paths_made_absolute(tmp_path, monkeypatch):
    """A mix URI reaches every Ray worker unchanged (each node caches it); it was turned into the local
    path '<cwd>/s3:/bucket/mix' by Path.resolve()."""
    from slimpipe.train.launch import worker_config

    monkeypatch.chdir(tmp_path)
    (tmp_path / "m.yaml").write_text(MICRO_YAML)
    remote = worker_config(TrainConfig(mix_dir="s3://bucket/mix", out_dir="run", model="m.yaml", device="cpu"), 3)
    assert remote.mix_dir == "s3://bucket/mix" and remote.out_dir == str(tmp_path / "run")
    assert remote.model == str(tmp_path / "m.yaml") and remote.device is None and remote.threads == 3
    assert worker_config(TrainConfig(mix_dir="mix", out_dir="run"), 1).mix_dir == str(tmp_path / "mix")

