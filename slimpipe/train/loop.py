"""The training loop: :class:`Trainer` (setup / train_step / evaluate / finish) and :func:`train`, used as-is
locally and inside every Ray Train worker.

What the run is (batch, steps, schedule, device, numerics) is decided in :mod:`slimpipe.train.plan`; how the
model is spread over processes (DDP, FSDP2, compile, activation checkpointing) in
:mod:`slimpipe.train.parallelize`; what it reads (the :class:`~slimpipe.train.data.Mix`, opened once; the
phases of :mod:`slimpipe.train.phases`) in :mod:`slimpipe.train.data`. Here:

* AdamW (0.9, 0.95, eps 1e-8), weight decay 0.1 on matrices, gradient clipping at 1.0; gradient
  accumulation over micro-batches, gradients reduced across ranks on the last one only.
* Data order: one seeded permutation per epoch; the data position is simply ``step * global_batch``;
  a background thread reads the next batches ahead (:class:`slimpipe.train.data.PrefetchLoader`).
* Checkpoints (:mod:`slimpipe.train.checkpoint`): sharded and asynchronous through
  ``torch.distributed.checkpoint``, every 30 minutes of wall clock by default and at the end; they hold
  model, optimizer, scheduler, step/data position and every RNG state, and resuming reproduces the
  uninterrupted run bit for bit on CPU (tested).
* The CUDA device is indexed per local rank (``LOCAL_RANK``), never a bare ``cuda``.

Files written to the run directory (rank 0 only)::

    config.json        resolved configuration (preset, batch, steps, schedule, world size, device)
    train_log.jsonl    one line per logged step: step, tokens, loss, lr, grad_norm, step_s, tokens_per_s
    eval_log.jsonl     one line per evaluation: step, tokens, per-source and total loss/bpb
    metrics.json       final: full held-out evaluation, parameter count, throughput, attention backend
    checkpoints/       step_XXXXXXX/ (the latest ``keep_checkpoints``, see slimpipe.train.checkpoint)
    model/             exported safetensors + config.json + tokenizer (see :mod:`slimpipe.train.export`)
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import random
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from slimpipe.train import checkpoint as ckpt_io
from slimpipe.train.checkpoint import checkpoints
from slimpipe.train.data import Mix, PrefetchLoader
from slimpipe.train.evaluate import evaluate_sets, final_document_eval
from slimpipe.train.export import export_model
from slimpipe.train.interp import context_length_eval
from slimpipe.train.model import GPT, ModelConfig, training_flops_per_token
from slimpipe.train.parallelize import full_model, gathered, gradient_sync, parallelize
from slimpipe.train.phases import open_training_data
from slimpipe.train.plan import (
    LRSchedule,
    TrainConfig,
    check_resumable,
    eval_batch_size,
    rank_and_world,
    resolve_device,
)

log = logging.getLogger(__name__)


def tune_cpu_malloc() -> bool:
    """Keep large freed blocks in glibc's heap instead of returning them to the OS.

    CPU training allocates and frees the same ~100 MB activations (the logits) every micro-step; by
    default glibc serves them with mmap/munmap, so every step pays page faults on fresh memory (we
    measured 1.3-2.3x tokens/s on the tiny preset without them). Process-wide and one-way, so only done
    when a CPU run starts; ``SLIMPIPE_MALLOPT=0`` opts out. Returns whether it was applied.
    """
    import ctypes
    import platform

    if os.environ.get("SLIMPIPE_MALLOPT", "1") == "0" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # from <malloc.h>
    return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 1 << 30))


# ---------------------------------------------------------------------------------------------- files

def _append_jsonl(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def _truncate_jsonl(path: Path, max_step: int) -> None:
    """Drop log lines past the checkpoint being resumed (and final evaluations, which are redone), so the
    log reads as one uninterrupted run."""
    if not path.exists():
        return
    records = [(ln, json.loads(ln)) for ln in path.read_text().splitlines() if ln.strip()]
    keep = [ln for ln, r in records if r.get("step", 0) <= max_step and not r.get("final")]
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text("".join(ln + "\n" for ln in keep))
    tmp.replace(path)


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    tmp.replace(path)


# ---------------------------------------------------------------------------------------------- trainer

class Trainer:
    """One run: :meth:`setup` (device, data and plan, model, optimizer, resume, config.json), then
    :meth:`train_step` until the plan's last step (with :meth:`evaluate` and checkpoints when due), then
    :meth:`finish` (final evaluations, metrics.json, export). :meth:`run` does all of it.

    Works in a single process or under an initialised ``torch.distributed`` process group (DDP/FSDP2), as
    Ray Train sets up; only rank 0 writes files. ``on_eval`` is called on every rank after each
    evaluation (Ray uses it to report metrics).
    """

    def __init__(self, cfg: TrainConfig, *, device: torch.device | str | None = None,
                 on_eval: Callable[[dict], None] | None = None) -> None:
        self.cfg, self.on_eval = cfg, on_eval
        self.rank, self.world = rank_and_world()
        self.device = resolve_device(device if device is not None else (cfg.device or None))
        self.step = 0
        self.last_loss = float("nan")
        self.train_time, self.train_tokens, self.first_step = 0.0, 0, 0
        self.init_info: dict | None = None

    # ------------------------------------------------------------------------------------------ setup

    def setup(self) -> None:
        cfg, dev = self.cfg, self.device
        if dev.type == "cuda":
            if not torch.cuda.is_available():
                raise ValueError(f"{dev} requested (--device/--use-gpu) but torch {torch.__version__} sees no CUDA GPU")
            torch.cuda.set_device(dev)
        else:
            tune_cpu_malloc()
        # the mix, opened once: a URI (s3://, gs://, ...) is copied to this node's disk and memory-mapped there
        self.mix = Mix.open(cfg.mix_dir) if cfg.mix_dir else None
        if self.mix is not None:
            cfg = self.cfg = dataclasses.replace(cfg, mix_dir=str(self.mix.root))
        self.out = Path(cfg.out_dir).resolve()
        self.data, self.eval_sets, self.plan = open_training_data(cfg, self.world, dev, self.mix)
        existing = checkpoints(self.out)
        if self.rank == 0:
            if (self.out / "train_log.jsonl").exists() and not cfg.resume:
                raise FileExistsError(f"{self.out} already holds a run; pass resume=True (--resume) or use a new "
                                      "directory")
            self.out.mkdir(parents=True, exist_ok=True)
        self._build_model()
        if cfg.resume and existing:
            self._resume(existing[-1])
        if self.rank == 0:
            self._write_config()
        self.autocast_dtype = torch.bfloat16 if self.plan.autocast == "bfloat16" else None
        self.eval_batch = eval_batch_size(cfg, self.plan, dev)
        self.checkpointer = ckpt_io.Checkpointer(
            self.out, device=dev, keep=cfg.keep_checkpoints, every_steps=cfg.checkpoint_interval,
            interval_s=(cfg.checkpoint_minutes or 0) * 60, async_save=cfg.async_checkpoint)
        self.loader = (PrefetchLoader(self._rows, start=self.step, stop=self.plan.total_steps, device=dev,
                                      depth=cfg.prefetch) if cfg.prefetch > 0 else None)
        self.batches = iter(self.loader) if self.loader is not None else None
        self.first_step = self.step

    def _build_model(self) -> None:
        """Seeded weights on this rank's device (``--init-from``: another run's), parallelized, and the
        optimizer and LR schedule over them.

        The model is built on the meta device. One process and DDP materialise it whole on the device and
        initialise it from the global generator, then wrap it. FSDP2 shards it first, on meta, and then
        materialises and initialises only this rank's shards (torchtitan's order, #20.8): no rank ever
        holds the full model (``--init-from`` excepted: it loads a full state, so it shards after)."""
        cfg, plan, dev = self.cfg, self.plan, self.device
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed % 2**32)
        random.seed(cfg.seed)
        with torch.device("meta"):  # no CPU copy first: the weights are materialised on this rank's device
            model = GPT(ModelConfig.from_dict(plan.model))
        shard_first = plan.parallel == "fsdp" and not cfg.init_from
        if shard_first:
            # compile + fully_shard on meta, then each rank allocates and draws its own rows only
            self.run_model = parallelize(model, plan, dev, activation_checkpointing=cfg.activation_checkpointing)
            model.to_empty(device=dev)
            model.init_weights(seed=cfg.seed)
            self.model = model
        else:
            self._materialise_whole(model)
        self.optimizer = torch.optim.AdamW(model.param_groups(plan.lr, cfg.weight_decay), lr=plan.lr,
                                           betas=(cfg.beta1, cfg.beta2), eps=cfg.eps,
                                           fused=True if dev.type == "cuda" else None)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, LRSchedule(plan.warmup_steps, plan.total_steps, plan.schedule, plan.min_lr_ratio))

    def _materialise_whole(self, model: GPT) -> None:
        """One process, DDP, or ``--init-from``: the whole model on this rank's device, then parallelized."""
        cfg, plan, dev = self.cfg, self.plan, self.device
        model.to_empty(device=dev)
        model.init_weights()
        if cfg.init_from:  # continual pretraining from another run's final weights (slimpipe.train.continual)
            # imported here: continual.py also holds the extend-tokenizer click command
            from slimpipe.train.continual import init_from_run

            self.init_info = init_from_run(model, cfg.init_from, self.data.train_set, self.mix, self.eval_sets,
                                           batch_size=eval_batch_size(cfg, plan, dev), device=dev)
        self.model = model
        # before the optimizer: FSDP2 replaces the parameters
        self.run_model = parallelize(model, plan, dev, activation_checkpointing=cfg.activation_checkpointing)

    def _resume(self, path: Path) -> None:
        check_resumable(ckpt_io.read_meta(path, legacy=True)["plan"], self.plan, path)
        self.step = int(ckpt_io.load(path, self.model, self.optimizer, self.scheduler, self.device)["step"])
        log.info("resumed from %s (step %d)", path, self.step)

    def _write_config(self) -> None:
        for name in ("train_log.jsonl", "eval_log.jsonl"):
            _truncate_jsonl(self.out / name, self.step)
        _write_json(self.out / "config.json", {
            "train": self.cfg.to_dict(), "plan": dataclasses.asdict(self.plan),
            "mix": {"train": self.data.train_set.index, "eval": list(self.eval_sets)},
            "phases": self.data.describe()})

    # ------------------------------------------------------------------------------------------ steps

    def _rows(self, step: int) -> np.ndarray:
        """This rank's rows of the global batch of optimizer step ``step + 1``."""
        local = self.plan.micro_batch * self.plan.accum
        return self.data.batch(step)[self.rank * local : (self.rank + 1) * local]

    def _next_batch(self) -> torch.Tensor:
        if self.batches is None:
            return torch.from_numpy(self._rows(self.step)).to(self.device)
        got, rows = next(self.batches)
        assert got == self.step, (got, self.step)
        return rows

    def forward_backward_step(self, rows: torch.Tensor) -> torch.Tensor:
        """Forward and backward over the micro-batches of ``rows`` (gradients accumulate, reduced across
        ranks on the last one); returns the summed micro-batch losses (detached)."""
        plan, dev = self.plan, self.device
        loss_sum = torch.zeros((), device=dev)
        for a in range(plan.accum):
            chunk = rows[a * plan.micro_batch : (a + 1) * plan.micro_batch]
            sync = gradient_sync(self.model, self.run_model, plan, a == plan.accum - 1 or self.world == 1)
            ac = torch.autocast(dev.type, dtype=self.autocast_dtype) if self.autocast_dtype else contextlib.nullcontext()
            with sync, ac:
                _, loss = self.run_model(chunk[:, :-1], chunk[:, 1:])
            (loss / plan.accum).backward()
            loss_sum += loss.detach()
        return loss_sum

    def train_step(self) -> None:
        """One optimizer step: the batch, forward/backward, clipping, the update; then the log line."""
        t0 = time.perf_counter()
        self.data.prepare_step(self.model, self.step)
        loss_sum = self.forward_backward_step(self._next_batch())
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        if hasattr(grad_norm, "full_tensor"):  # a DTensor under FSDP
            grad_norm = grad_norm.full_tensor()
        group = self.optimizer.param_groups[0]
        lr_now = group["lr"] / group.get("lr_scale", 1.0)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self._log_step(t0, loss_sum, grad_norm, lr_now)

    def _logging_now(self) -> bool:
        return self.step % self.cfg.log_interval == 0 or self.step == self.plan.total_steps

    def _log_step(self, t0: float, loss_sum: torch.Tensor, grad_norm: torch.Tensor, lr_now: float) -> None:
        step, plan, data = self.step, self.plan, self.data
        logging_now = self._logging_now()
        if logging_now:
            mean_loss = loss_sum / plan.accum
            if self.world > 1:
                dist.all_reduce(mean_loss)
                mean_loss /= self.world
            self.last_loss = float(mean_loss)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        dt = time.perf_counter() - t0
        step_tokens = data.tokens_at(step) - data.tokens_at(step - 1)
        if step > self.first_step + 1 or plan.total_steps - self.first_step == 1:  # the first step warms up / compiles
            self.train_time += dt
            self.train_tokens += step_tokens
        if self.rank == 0 and logging_now:
            _append_jsonl(self.out / "train_log.jsonl", {
                "step": step, "tokens": data.tokens_at(step), "loss": self.last_loss, "lr": lr_now,
                "grad_norm": float(grad_norm), "step_s": dt, "tokens_per_s": step_tokens / dt})
        if self.rank == 0 and (step == 1 or step % max(1, plan.total_steps // 20) == 0 or step == plan.total_steps):
            log.info("step %d/%d loss %.4f lr %.3g grad_norm %.3f %.0f tokens/s", step, plan.total_steps,
                     self.last_loss, lr_now, float(grad_norm), step_tokens / dt)
        if not math.isfinite(self.last_loss):
            raise FloatingPointError(f"loss is {self.last_loss} at step {step}")

    def save_checkpoint(self) -> None:
        self.checkpointer.save(self.step, self.model, self.optimizer, self.scheduler,
                               plan=dataclasses.asdict(self.plan), sample_pos=self.step * self.plan.global_batch)

    # ------------------------------------------------------------------------------------------ evaluation

    def evaluate(self, final: bool = False) -> dict:
        """Loss and bits per byte per held-out set (``eval_sequences`` of each, all of them when ``final``),
        appended to eval_log.jsonl and passed to ``on_eval``."""
        with gathered(self.model, self.plan):
            res = evaluate_sets(self.model, self.eval_sets, batch_size=self.eval_batch, device=self.device,
                                max_sequences=None if final else self.cfg.eval_sequences,
                                autocast_dtype=self.autocast_dtype)
        record = {"step": self.step, "tokens": self.data.tokens_at(self.step), "final": final, **res}
        if self.rank == 0:
            _append_jsonl(self.out / "eval_log.jsonl", record)
            log.info("eval step %d (packed windows): loss %.4f bpb %.4f (%s)", self.step, res["total"]["loss"],
                     res["total"]["bpb"], ", ".join(f"{k} {v['bpb']:.3f}" for k, v in res["sources"].items()))
        if self.on_eval is not None:
            self.on_eval({"step": self.step, "eval_bpb": res["total"]["bpb"], "eval_loss": res["total"]["loss"]})
        return record

    def run(self) -> dict:
        """Set up, train to the plan's last step, finish; returns the final metrics."""
        self.setup()
        self.run_model.train()
        total = self.plan.total_steps
        while self.step < total:
            self.train_step()
            is_last = self.step == total
            if self.cfg.eval_interval and self.step % self.cfg.eval_interval == 0 and not is_last and self.eval_sets:
                self.evaluate(final=False)
            if self.checkpointer.due(self.step, is_last):
                self.save_checkpoint()
        return self.finish()

    def finish(self) -> dict:
        """Close the loader and checkpointer; the final evaluations, metrics.json and the export."""
        cfg, plan, dev = self.cfg, self.plan, self.device
        if self.loader is not None:
            self.loader.close()
        self.checkpointer.close()
        final = self.evaluate(final=True) if self.eval_sets else {"sources": {}, "total": {}}
        metrics = self._metrics(final)
        if self.init_info is not None:  # where the run started, and bits per byte per source before -> after
            from slimpipe.train.continual import forgetting

            metrics["init_from"] = {**self.init_info, "forgetting": forgetting(self.init_info.pop("eval_before"), final)}
        if self.eval_sets:  # per-document bpb + eval_losses.npz + the eval set's identity (compare's inputs)
            with gathered(self.model, plan):
                metrics.update(final_document_eval(
                    self.model, self.eval_sets, self.mix, self.out, seq_len=plan.seq_len, batch_size=self.eval_batch,
                    device=dev, autocast_dtype=self.autocast_dtype, write=self.rank == 0))
        if cfg.eval_seq_lens and self.eval_sets:  # ALiBi at other context lengths, with/without slope interpolation
            with gathered(self.model, plan):
                metrics["context_length"] = context_length_eval(
                    self.model, self.eval_sets, cfg.eval_seq_lens, train_seq_len=plan.seq_len, mix=self.mix,
                    batch_size=self.eval_batch, device=dev, autocast_dtype=self.autocast_dtype,
                    plot_dir=self.out if self.rank == 0 else None)
        export_from = full_model(self.model, plan) if cfg.export else self.model  # a collective under FSDP
        if self.rank == 0:
            _write_json(self.out / "metrics.json", metrics)
            if cfg.export:
                export_model(export_from, self.out / "model", mix=self.mix, tokenizer_info=self.data.train_set.tokenizer)
        if self.world > 1:
            dist.barrier()
        return metrics

    def _metrics(self, final: dict) -> dict:
        cfg, plan, step, dev = self.cfg, self.plan, self.step, self.device
        timed = self.train_time
        return {
            "preset": plan.preset, "n_params": plan.n_params, "steps": step,
            "tokens": self.data.tokens_at(step), "final_train_loss": self.last_loss,
            "eval": {"sources": final["sources"], "total": final["total"], "mean_bpb": final.get("mean_bpb")},
            "throughput": {
                "tokens_per_s": self.train_tokens / timed if timed else None,  # all ranks; first step excluded
                "tokens_per_s_per_device": self.train_tokens / timed / self.world if timed else None,  # for MFU
                "model_flops_per_token": training_flops_per_token(
                    plan.n_params, plan.model["n_layer"], plan.model["d_model"], plan.seq_len),
                "steps_timed": (max(0, step - self.first_step - 1) if plan.total_steps - self.first_step > 1 else 1),
                "train_seconds": timed,
                "peak_memory_gb": torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else None,
            },
            "parallel": plan.parallel, "activation_checkpointing": cfg.activation_checkpointing,
            "attention": plan.attention, "device": plan.device, "world_size": self.world, "compile": plan.compile,
            "autocast": plan.autocast, "phases": self.data.describe(),
        }


def train(cfg: TrainConfig, *, device: torch.device | str | None = None,
          on_eval: Callable[[dict], None] | None = None) -> dict:
    """Train one model on one mix and evaluate it; returns the final metrics (also in ``metrics.json``).

    Works in a single process or under an initialised ``torch.distributed`` process group (DDP), as
    Ray Train sets up; only rank 0 writes files. ``on_eval`` is called on every rank after each
    evaluation (Ray uses it to report metrics).
    """
    threads_before = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        return Trainer(cfg, device=device, on_eval=on_eval).run()
    finally:
        torch.set_num_threads(threads_before)
