"""The training loop: one function, :func:`train`, used as-is locally and inside every Ray Train worker.

* AdamW (0.9, 0.95, eps 1e-8), weight decay 0.1 on matrices, gradient clipping at 1.0.
* Linear warmup, then linear decay to zero (default) or cosine to 10% (``schedule="cosine"``).
* The global batch (in sequences) is exact: micro-batch x accumulation x world size equals it, or the run
  is refused with the nearest valid choices (:func:`split_batch`).
* bf16 autocast on CUDA only; ``torch.compile`` by default on CUDA only (on CPU it costs minutes of
  compilation for little gain at these sizes; ``compile=True`` forces it).
* Several processes: DDP (default) or FSDP2 (``parallel="fsdp"``: ``fully_shard`` per block, bf16
  parameters, fp32 gradient reduction); optional activation checkpointing.
* Data order: one seeded permutation per epoch; the data position is simply ``step * global_batch``;
  a background thread reads the next batches ahead (:mod:`slimpipe.train.data`).
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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from slimpipe.train import checkpoint as ckpt_io
from slimpipe.train.checkpoint import CHECKPOINT_DIR, checkpoints  # noqa: F401  (re-exported)
from slimpipe.train.data import PrefetchLoader
from slimpipe.train.evaluate import evaluate_sets
from slimpipe.train.model import (
    GPT,
    ModelConfig,
    count_params_meta,
    resolve_attention,
    training_flops_per_token,
)
from slimpipe.train.presets import load_preset

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Everything a run needs; ``None`` means "take it from the preset" (or from the data)."""

    mix_dir: str
    out_dir: str
    model: str = "tiny"
    max_steps: int | None = None
    tokens: int | None = None
    eval_interval: int = 50
    eval_sequences: int = 64  # per source at interval evaluations; the final evaluation uses every sequence
    eval_batch: int | None = None
    log_interval: int = 1
    checkpoint_interval: int | None = None  # steps between checkpoints (default: only by wall clock)
    checkpoint_minutes: float | None = 30.0  # wall-clock interval between checkpoints (None/0: off)
    async_checkpoint: bool = True  # write checkpoints in the background (torch.distributed.checkpoint)
    keep_checkpoints: int = 2  # the latest N are kept; 0 writes none (throughput benchmarks)
    seed: int = 1337
    lr: float | None = None
    schedule: str | None = None  # "linear" (to zero) | "cosine" (to min_lr_ratio, default 10%)
    min_lr_ratio: float | None = None
    warmup_steps: int | None = None
    batch_size: int | None = None
    micro_batch: int | None = None
    seq_len: int | None = None
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0
    compile: bool | None = None
    attention: str | None = None
    mup: bool | None = None
    parallel: str = "ddp"  # with several processes: "ddp" | "fsdp" (FSDP2, bf16 params, fp32 reduce)
    activation_checkpointing: bool = False
    prefetch: int = 2  # batches read ahead by a background thread (0: read in the loop)
    device: str | None = None
    resume: bool = False
    export: bool = True
    threads: int | None = None  # torch intra-op threads for this run (default: torch's choice)
    phases: list[dict] | None = None  # multi-phase data schedule, see slimpipe.train.phases
    init_from: str | None = None  # continual pretraining from this run's final checkpoint (train/continual.py)
    eval_seq_lens: list[int] | None = None  # final bpb at these context lengths, ALiBi slopes +- interpolation

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class LRSchedule:
    """Multiplier on the peak LR: linear warmup over ``warmup`` steps, then decay until ``total``.

    A callable object (not a lambda) so ``LambdaLR.state_dict()`` saves it with the checkpoint.
    """

    def __init__(self, warmup: int, total: int, kind: str = "linear", min_ratio: float = 0.0) -> None:
        if kind not in ("linear", "cosine"):
            raise ValueError(f"schedule must be 'linear' or 'cosine', not {kind!r}")
        self.warmup, self.total, self.kind, self.min_ratio = int(warmup), int(total), kind, float(min_ratio)

    def __call__(self, step: int) -> float:
        # LambdaLR calls this with the number of completed steps; the update about to happen is step+1.
        s = step + 1
        if self.warmup > 0 and s <= self.warmup:
            return s / self.warmup
        span = max(1, self.total - self.warmup)
        frac = min(1.0, max(0.0, (s - self.warmup) / span))
        if self.kind == "linear":
            return self.min_ratio + (1.0 - self.min_ratio) * (1.0 - frac)
        return self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + math.cos(math.pi * frac))


@dataclass
class Plan:
    """The resolved shape of a run (what goes into ``config.json``)."""

    preset: str
    model: dict
    n_params: int
    seq_len: int
    micro_batch: int
    accum: int
    world_size: int
    global_batch: int
    total_steps: int
    warmup_steps: int
    lr: float
    schedule: str
    min_lr_ratio: float
    device: str
    autocast: str | None
    compile: bool
    attention: str
    tokens_per_step: int  # with phases: of the last one (seq_len too); data.tokens_at(step) is exact
    phases: list[dict] | None = None
    parallel: str = "none"  # "none" (one process) | "ddp" | "fsdp"


def _dist() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def resolve_device(spec: torch.device | str | None, local_rank: int | None = None) -> torch.device:
    """``spec`` (default: cuda if available, else cpu) with a CUDA index: a bare ``cuda`` becomes
    ``cuda:LOCAL_RANK`` (this process's GPU on its node; ``torch.cuda.set_device`` rejects a bare one)."""
    dev = torch.device(spec) if spec is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dev.type == "cuda" and dev.index is None:
        if local_rank is None:
            env = os.environ.get("LOCAL_RANK")
            local_rank = int(env) if env else (torch.cuda.current_device() if torch.cuda.is_available() else 0)
        dev = torch.device("cuda", local_rank)
    return dev


def _resolve_device(cfg: TrainConfig, device: torch.device | str | None) -> torch.device:
    return resolve_device(device if device is not None else (cfg.device or None))


def _near(values: list[int], target: int, n: int = 4) -> list[int]:
    return sorted(sorted(set(values), key=lambda v: (abs(v - target), v))[:n])


def split_batch(batch: int, world: int, micro: int | None = None, micro_cap: int | None = None) -> tuple[int, int]:
    """``(micro, accum)`` with ``micro * accum * world == batch`` exactly.

    ``micro`` (the user's ``--micro-batch``) must divide the per-worker share, else ValueError naming the
    valid micro-batches nearest to it. Without it, the largest divisor of the share not above
    ``micro_cap`` (the preset's micro-batch, a memory bound) is chosen. A batch that the world size does
    not divide is refused with the nearest valid batch sizes.
    """
    if batch < 1 or world < 1:
        raise ValueError(f"global batch {batch} and world size {world} must be positive")
    if batch % world:
        near = [b for b in (batch // world * world, -(-batch // world) * world) if b > 0]
        raise ValueError(f"global batch {batch} is not divisible by {world} workers; nearest valid batches: "
                         f"{', '.join(map(str, near))} (or a worker count dividing {batch})")
    per = batch // world
    divisors = [d for d in range(1, per + 1) if per % d == 0]
    if micro is not None:
        if micro < 1 or per % micro:
            raise ValueError(f"micro-batch {micro} does not divide the {per} sequences per worker (batch {batch} / "
                             f"{world} workers); nearest valid micro-batches: "
                             f"{', '.join(map(str, _near(divisors, micro)))}")
        return micro, per // micro
    cap = max(1, micro_cap or per)
    m = max(d for d in divisors if d <= cap)
    return m, per // m


def plan_run(cfg: TrainConfig, stored_seq_len: int, vocab_size: int, world: int, device: torch.device) -> Plan:
    """Combine preset, overrides, data and world size into concrete batch/step/schedule numbers."""
    preset = load_preset(cfg.model)
    t = preset.train
    seq_len = cfg.seq_len or t.get("seq_len") or stored_seq_len
    if stored_seq_len % seq_len:
        if cfg.seq_len:
            raise ValueError(f"--seq-len {seq_len} must divide the mix's sequence length {stored_seq_len}")
        seq_len = stored_seq_len
    seq_len = min(seq_len, stored_seq_len)
    mcfg = dataclasses.replace(preset.model, vocab_size=vocab_size, max_seq_len=max(seq_len, preset.model.max_seq_len))
    if cfg.attention:
        mcfg = dataclasses.replace(mcfg, attention=cfg.attention)
    attention = resolve_attention(mcfg.attention, device)
    if attention == "flex" and device.type != "cuda":
        raise ValueError("attention 'flex' trains on CUDA only (FlexAttention has no CPU backward); use 'sdpa'")
    if cfg.parallel not in ("ddp", "fsdp"):
        raise ValueError(f"parallel must be 'ddp' or 'fsdp', not {cfg.parallel!r}")
    if cfg.parallel == "fsdp" and not (dist.is_available() and dist.is_initialized()):
        raise ValueError("parallel 'fsdp' needs a torch.distributed process group (Ray Train workers or torchrun)")
    parallel = "fsdp" if cfg.parallel == "fsdp" else ("ddp" if world > 1 else "none")
    if cfg.mup is not None:
        mcfg = dataclasses.replace(mcfg, mup=cfg.mup)
    n_params = count_params_meta(mcfg)
    batch = cfg.batch_size or t.get("batch_size") or 8
    micro, accum = split_batch(batch, world, cfg.micro_batch, t.get("micro_batch"))
    global_batch = micro * accum * world
    tokens_per_step = global_batch * seq_len
    if cfg.max_steps:
        steps = int(cfg.max_steps)
    else:
        budget = cfg.tokens or t.get("tokens") or 20 * n_params
        steps = max(1, math.ceil(budget / tokens_per_step))
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else round(t.get("warmup_fraction", 0.01) * steps)
    schedule = cfg.schedule or t.get("schedule") or "linear"
    min_ratio = cfg.min_lr_ratio if cfg.min_lr_ratio is not None else t.get(
        "min_lr_ratio", 0.1 if schedule == "cosine" else 0.0)
    use_compile = cfg.compile if cfg.compile is not None else device.type == "cuda"
    # muP: the LR is the base model's LR (the standard preset LR would leave hidden layers ~30x too slow)
    lr = cfg.lr or (mcfg.mup_base_lr if mcfg.mup else t.get("lr")) or 6e-4
    return Plan(preset=preset.name, model=mcfg.to_dict(), n_params=n_params, seq_len=seq_len,
                micro_batch=micro, accum=accum, world_size=world, global_batch=global_batch,
                total_steps=steps, warmup_steps=int(min(warmup, steps)), lr=float(lr),
                schedule=schedule, min_lr_ratio=float(min_ratio), device=str(device),
                # bf16 autocast on CUDA, except under FSDP2, where MixedPrecisionPolicy alone casts (#20.4)
                autocast="bfloat16" if device.type == "cuda" and parallel != "fsdp" else None,
                compile=bool(use_compile),
                attention=attention, tokens_per_step=tokens_per_step, parallel=parallel)


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


CPU_EVAL_TOKENS = 16384  # tokens per evaluation forward pass on the CPU (no gradients, no logits kept)


def eval_batch_size(cfg: TrainConfig, plan: Plan, device: torch.device) -> int:
    """Sequences per evaluation batch: ``--eval-batch`` if given; on the CPU about 16k tokens (evaluation
    keeps no activations and, with the chunked head, no logits, and with 2 threads a 16-sequence batch
    spends most of its time in per-op overhead: 2-2.5x slower per token, measured); else the micro-batch."""
    if cfg.eval_batch:
        return cfg.eval_batch
    if device.type == "cpu":
        return max(plan.micro_batch, CPU_EVAL_TOKENS // plan.seq_len)
    return plan.micro_batch


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


def _wrap(model: GPT, plan: Plan, dev: torch.device, world: int) -> torch.nn.Module:
    """DDP or FSDP2 around ``model`` (FSDP2 shards ``model`` in place and returns it)."""
    if plan.parallel == "fsdp":
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        # the policy alone sets the numerics (no autocast on top: plan_run); the last block is not resharded
        # after forward, since backward needs it at once (torchtitan's choice)
        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        last = len(model.blocks) - 1
        for i, block in enumerate(model.blocks):
            fully_shard(block, mp_policy=mp, reshard_after_forward=i < last)
        fully_shard(model, mp_policy=mp)
        return model
    if world > 1:
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)
    return model


@contextlib.contextmanager
def _gathered(model: torch.nn.Module, plan: Plan):
    """Under FSDP, hold every parameter unsharded (no per-layer all-gathers), so ranks may run different
    numbers of evaluation batches without deadlocking; a no-op otherwise."""
    if plan.parallel != "fsdp":
        yield
        return
    mods = [m for m in model.modules() if hasattr(m, "unshard") and hasattr(m, "set_reshard_after_forward")]
    for m in mods:
        m.unshard()
        m.set_reshard_after_forward(False, recurse=False)
    try:
        yield
    finally:
        for m in mods:
            m.set_reshard_after_forward(True, recurse=False)
            m.reshard()


def _full_model(model: GPT, plan: Plan) -> GPT:
    """An unsharded CPU copy of an FSDP model (a collective: every rank calls it); the model otherwise."""
    if plan.parallel != "fsdp":
        return model
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    full = GPT(ModelConfig.from_dict(plan.model))
    full.load_state_dict(state)
    return full


_RESUME_KEYS = ("model", "seq_len", "global_batch", "total_steps", "warmup_steps", "lr", "schedule", "min_lr_ratio",
               "phases")


def _comparable(key: str, value: object) -> object:
    """A plan value as resume compares it: the attention kernel may change (same function)."""
    if key == "model" and isinstance(value, dict):
        return {k: v for k, v in value.items() if k != "attention"}
    return value


# ---------------------------------------------------------------------------------------------- loop

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
        return _train(cfg, device, on_eval)
    finally:
        torch.set_num_threads(threads_before)


def _train(cfg: TrainConfig, device: torch.device | str | None, on_eval: Callable[[dict], None] | None) -> dict:
    rank, world = _dist()
    dev = _resolve_device(cfg, device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{dev} requested (--device/--use-gpu) but torch {torch.__version__} sees no CUDA GPU")
        torch.cuda.set_device(dev)
    else:
        tune_cpu_malloc()
    from slimpipe.mix.packed import local_mix
    from slimpipe.train.phases import open_training_data

    if cfg.mix_dir:  # a mix URI (s3://, gs://, ...) is copied once to this node's disk and memory-mapped there
        cfg = dataclasses.replace(cfg, mix_dir=str(local_mix(cfg.mix_dir)))
    out = Path(cfg.out_dir).resolve()
    data, eval_sets, plan = open_training_data(cfg, world, dev)
    train_set = data.train_set

    existing = checkpoints(out)
    if rank == 0:
        if (out / "train_log.jsonl").exists() and not cfg.resume:
            raise FileExistsError(f"{out} already holds a run; pass resume=True (--resume) or use a new directory")
        out.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed % 2**32)
    random.seed(cfg.seed)
    with torch.device("meta"):  # no CPU copy first: the weights are materialised on this rank's device
        model = GPT(ModelConfig.from_dict(plan.model))
    model.to_empty(device=dev)
    model.init_weights()
    model.activation_checkpointing = cfg.activation_checkpointing
    init_info = None
    if cfg.init_from:  # continual pretraining from another run's final weights (slimpipe.train.continual)
        from slimpipe.train.continual import init_from_run

        init_info = init_from_run(model, cfg.init_from, train_set, cfg.mix_dir, eval_sets,
                                  batch_size=eval_batch_size(cfg, plan, dev), device=dev)
    if plan.compile:  # each block + the output head, before DDP/FSDP2 wrap them (compiles in ~one layer's time)
        model.compile_regions()
    run_model = _wrap(model, plan, dev, world)  # before the optimizer: FSDP2 replaces the parameters
    optimizer = torch.optim.AdamW(model.param_groups(plan.lr, cfg.weight_decay), lr=plan.lr,
                                  betas=(cfg.beta1, cfg.beta2), eps=cfg.eps,
                                  fused=True if dev.type == "cuda" else None)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, LRSchedule(plan.warmup_steps, plan.total_steps, plan.schedule, plan.min_lr_ratio))

    step = 0
    if cfg.resume and existing:
        saved = ckpt_io.read_meta(existing[-1], legacy=True)["plan"]
        mismatched = [k for k in _RESUME_KEYS if _comparable(k, saved.get(k)) != _comparable(k, getattr(plan, k))]
        if mismatched:
            raise ValueError(f"cannot resume {existing[-1]}: {mismatched} differ from this run's settings")
        step = int(ckpt_io.load(existing[-1], model, optimizer, scheduler, dev)["step"])
        log.info("resumed from %s (step %d)", existing[-1], step)
    if rank == 0:
        for name in ("train_log.jsonl", "eval_log.jsonl"):
            _truncate_jsonl(out / name, step)
        _write_json(out / "config.json", {"train": cfg.to_dict(), "plan": dataclasses.asdict(plan),
                                           "mix": {"train": train_set.index, "eval": list(eval_sets)},
                                           "phases": data.describe()})

    eval_model: torch.nn.Module = model
    autocast_dtype = torch.bfloat16 if plan.autocast == "bfloat16" else None
    local_batch = plan.micro_batch * plan.accum
    eval_batch = eval_batch_size(cfg, plan, dev)
    checkpointer = ckpt_io.Checkpointer(out, device=dev, keep=cfg.keep_checkpoints, every_steps=cfg.checkpoint_interval,
                                        interval_s=(cfg.checkpoint_minutes or 0) * 60, async_save=cfg.async_checkpoint)
    lo, hi = rank * local_batch, (rank + 1) * local_batch

    def fetch(s: int) -> np.ndarray:
        return data.batch(s)[lo:hi]

    loader = (PrefetchLoader(fetch, start=step, stop=plan.total_steps, device=dev, depth=cfg.prefetch)
              if cfg.prefetch > 0 else None)
    batches = iter(loader) if loader is not None else None

    def run_eval(at_step: int, final: bool) -> dict:
        with _gathered(model, plan):
            res = evaluate_sets(eval_model, eval_sets, batch_size=eval_batch, device=dev,
                                max_sequences=None if final else cfg.eval_sequences, autocast_dtype=autocast_dtype)
        record = {"step": at_step, "tokens": data.tokens_at(at_step), "final": final, **res}
        if rank == 0:
            _append_jsonl(out / "eval_log.jsonl", record)
            log.info("eval step %d (packed windows): loss %.4f bpb %.4f (%s)", at_step, res["total"]["loss"], res["total"]["bpb"],
                     ", ".join(f"{k} {v['bpb']:.3f}" for k, v in res["sources"].items()))
        if on_eval is not None:
            on_eval({"step": at_step, "eval_bpb": res["total"]["bpb"], "eval_loss": res["total"]["loss"]})
        return record

    run_model.train()
    train_time, train_tokens, first_step = 0.0, 0, step
    last_loss = float("nan")
    while step < plan.total_steps:
        t0 = time.perf_counter()
        data.prepare_step(model, step)
        if batches is not None:
            got, rows = next(batches)
            assert got == step, (got, step)
        else:
            rows = torch.from_numpy(fetch(step)).to(dev)
        loss_sum = torch.zeros((), device=dev)
        for a in range(plan.accum):
            chunk = rows[a * plan.micro_batch : (a + 1) * plan.micro_batch]
            sync = a == plan.accum - 1 or world == 1
            if plan.parallel == "fsdp":
                model.set_requires_gradient_sync(sync)
            ctx = run_model.no_sync() if (plan.parallel == "ddp" and not sync) else contextlib.nullcontext()
            ac = torch.autocast(dev.type, dtype=autocast_dtype) if autocast_dtype else contextlib.nullcontext()
            with ctx, ac:
                _, loss = run_model(chunk[:, :-1], chunk[:, 1:])
            (loss / plan.accum).backward()
            loss_sum += loss.detach()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        if hasattr(grad_norm, "full_tensor"):  # a DTensor under FSDP
            grad_norm = grad_norm.full_tensor()
        lr_now = optimizer.param_groups[0]["lr"] / optimizer.param_groups[0].get("lr_scale", 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        logging_now = step % cfg.log_interval == 0 or step == plan.total_steps
        if logging_now:
            mean_loss = loss_sum / plan.accum
            if world > 1:
                dist.all_reduce(mean_loss)
                mean_loss /= world
            last_loss = float(mean_loss)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        dt = time.perf_counter() - t0
        step_tokens = data.tokens_at(step) - data.tokens_at(step - 1)
        if step > first_step + 1 or plan.total_steps - first_step == 1:  # the first step warms up / compiles
            train_time += dt
            train_tokens += step_tokens
        if rank == 0 and logging_now:
            _append_jsonl(out / "train_log.jsonl", {
                "step": step, "tokens": data.tokens_at(step), "loss": last_loss, "lr": lr_now,
                "grad_norm": float(grad_norm), "step_s": dt, "tokens_per_s": step_tokens / dt})
        if rank == 0 and (step == 1 or step % max(1, plan.total_steps // 20) == 0 or step == plan.total_steps):
            log.info("step %d/%d loss %.4f lr %.3g grad_norm %.3f %.0f tokens/s", step, plan.total_steps,
                     last_loss, lr_now, float(grad_norm), step_tokens / dt)
        if not math.isfinite(last_loss):
            raise FloatingPointError(f"loss is {last_loss} at step {step}")
        is_last = step == plan.total_steps
        if cfg.eval_interval and step % cfg.eval_interval == 0 and not is_last and eval_sets:
            run_eval(step, final=False)
        if checkpointer.due(step, is_last):
            checkpointer.save(step, model, optimizer, scheduler, plan=dataclasses.asdict(plan),
                              sample_pos=step * plan.global_batch)
    if loader is not None:
        loader.close()
    checkpointer.close()

    final = run_eval(step, final=True) if eval_sets else {"sources": {}, "total": {}}
    metrics = {
        "preset": plan.preset, "n_params": plan.n_params, "steps": step,
        "tokens": data.tokens_at(step), "final_train_loss": last_loss,
        "eval": {"sources": final["sources"], "total": final["total"], "mean_bpb": final.get("mean_bpb")},
        "throughput": {
            "tokens_per_s": train_tokens / train_time if train_time else None,  # all ranks; first step excluded
            "tokens_per_s_per_device": train_tokens / train_time / world if train_time else None,  # for MFU
            "model_flops_per_token": training_flops_per_token(
                plan.n_params, plan.model["n_layer"], plan.model["d_model"], plan.seq_len),
            "steps_timed": max(0, step - first_step - 1) if plan.total_steps - first_step > 1 else 1,
            "train_seconds": train_time,
            "peak_memory_gb": torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else None,
        },
        "parallel": plan.parallel, "activation_checkpointing": cfg.activation_checkpointing,
        "attention": plan.attention, "device": plan.device, "world_size": world, "compile": plan.compile,
        "autocast": plan.autocast, "phases": data.describe(),
    }
    if init_info is not None:  # where the run started, and bits per byte per source before -> after
        from slimpipe.train.continual import forgetting

        metrics["init_from"] = {**init_info, "forgetting": forgetting(init_info.pop("eval_before"), final)}
    if eval_sets:  # per-document bpb + eval_losses.npz + the eval set's identity (compare's inputs)
        from slimpipe.train.evaluate import final_document_eval

        with _gathered(model, plan):
            metrics.update(final_document_eval(eval_model, eval_sets, cfg.mix_dir, out, seq_len=plan.seq_len,
                                               batch_size=eval_batch, device=dev, autocast_dtype=autocast_dtype,
                                               write=rank == 0))
    if cfg.eval_seq_lens and eval_sets:  # ALiBi at other context lengths, with/without slope interpolation
        from slimpipe.train.interp import context_length_eval

        with _gathered(model, plan):
            metrics["context_length"] = context_length_eval(
                model, eval_sets, cfg.eval_seq_lens, train_seq_len=plan.seq_len, mix_dir=cfg.mix_dir,
                batch_size=eval_batch, device=dev, autocast_dtype=autocast_dtype,
                plot_dir=out if rank == 0 else None)
    export_from = _full_model(model, plan) if cfg.export else model  # a collective under FSDP
    if rank == 0:
        _write_json(out / "metrics.json", metrics)
        if cfg.export:
            from slimpipe.train.export import export_model

            export_model(export_from, out / "model", mix_dir=cfg.mix_dir, tokenizer_info=train_set.tokenizer)
    if world > 1:
        dist.barrier()
    return metrics
