"""Where a training run executes: one local process, or DDP workers under Ray Train.

The same :func:`slimpipe.train.loop.train` runs in both cases. Under Ray, ``TorchTrainer`` starts
``num_workers`` processes, initialises a ``torch.distributed`` process group (gloo on CPU, NCCL with
``--use-gpu``; each worker on the GPU Ray assigned it, ``cuda:<index>``) and the loop wraps the model in
DDP, or shards it with FSDP2 (``parallel="fsdp"``). Rank 0 writes the run directory and every rank writes
its checkpoint shard, so with several nodes ``RUN`` (and ``MIX_DIR``, unless it is a URI) must be on a
filesystem every node sees. A local run with ``use_gpu`` takes ``cuda:LOCAL_RANK`` (``cuda:0`` alone).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

from slimpipe.train.loop import train
from slimpipe.train.plan import TrainConfig

log = logging.getLogger(__name__)


def launch(cfg: TrainConfig, *, ray_address: str | None = None, num_workers: int = 1, use_gpu: bool = False,
           cpus_per_worker: int | None = None) -> dict:
    """Train locally (no address and one worker) or through Ray Train; returns the final metrics."""
    if ray_address is None and num_workers <= 1:
        device = cfg.device or ("cuda" if use_gpu else None)
        return train(dataclasses.replace(cfg, device=device))
    return launch_ray(cfg, ray_address=ray_address, num_workers=num_workers, use_gpu=use_gpu,
                      cpus_per_worker=cpus_per_worker)


def _ray_worker(config: dict) -> None:
    """Body of every Ray Train worker: pick the device Ray assigned, train, report metrics to Ray."""
    import ray.train
    import ray.train.torch
    import torch

    cfg = TrainConfig(**config["train"])
    device = ray.train.torch.get_device() if config.get("use_gpu") else torch.device("cpu")
    train(cfg, device=device, on_eval=lambda metrics: ray.train.report(metrics))


def worker_config(cfg: TrainConfig, cpus: int) -> TrainConfig:
    """``cfg`` as every Ray worker reads it, whatever its working directory: the run folder, a local mix
    and a preset file made absolute; a mix URI (s3://, gs://, ...) kept as written (each node caches it,
    see :class:`slimpipe.train.data.Mix`); the device left to the worker; ``cpus`` torch threads."""
    from slimpipe import storage

    model = cfg.model
    if Path(model).suffix in (".yaml", ".yml") and Path(model).is_file():
        model = str(Path(model).resolve())
    return dataclasses.replace(cfg, out_dir=str(Path(cfg.out_dir).resolve()), mix_dir=storage.canonical(cfg.mix_dir),
                               model=model, device=None, threads=cpus)


def launch_ray(cfg: TrainConfig, *, ray_address: str | None = None, num_workers: int = 2, use_gpu: bool = False,
               cpus_per_worker: int | None = None) -> dict:
    """Run the loop on ``num_workers`` Ray Train workers (DDP); attaches to ``ray_address`` if given."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from slimpipe.engine import ensure_ray

    ensure_ray(address=ray_address)
    cpus = cpus_per_worker or 1
    conf = worker_config(cfg, cpus)
    out = Path(conf.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    trainer = TorchTrainer(
        _ray_worker,
        train_loop_config={"train": conf.to_dict(), "use_gpu": use_gpu},
        scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=use_gpu, resources_per_worker={"CPU": cpus}),
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        run_config=RunConfig(name="ray_train", storage_path=str(out / "ray")),
    )
    trainer.fit()
    return json.loads((out / "metrics.json").read_text())
