"""The shape of a training run, decided before any weight exists: what the user asked (:class:`TrainConfig`),
what it resolves to with the preset, the data and the world size (:class:`Plan`, written to ``config.json``),
and the learning-rate schedule (:class:`LRSchedule`).

* The global batch (in sequences) is exact: micro-batch x accumulation x world size equals it, or the run
  is refused with the nearest valid choices (:func:`split_batch`).
* Linear warmup, then linear decay to zero (default) or cosine to 10% (``schedule="cosine"``).
* bf16 autocast on CUDA only (not under FSDP2, whose MixedPrecisionPolicy casts); ``torch.compile`` by default
  on CUDA only (on CPU it costs minutes of compilation for little gain at these sizes; ``compile=True`` forces it).
* A resumed run must plan the same run as its checkpoint (:func:`check_resumable`).

Arithmetic over the preset and a few numbers from the data: no file is written, no model is built.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from slimpipe.train.model import count_params_meta, resolve_attention
from slimpipe.train.presets import load_preset


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


def rank_and_world() -> tuple[int, int]:
    """``(rank, world size)`` of the initialised process group, ``(0, 1)`` without one."""
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


RESUME_KEYS = ("model", "seq_len", "global_batch", "total_steps", "warmup_steps", "lr", "schedule", "min_lr_ratio",
               "phases")


def _comparable(key: str, value: object) -> object:
    """A plan value as resume compares it: the attention kernel may change (same function)."""
    if key == "model" and isinstance(value, dict):
        return {k: v for k, v in value.items() if k != "attention"}
    return value


def check_resumable(saved: dict, plan: Plan, checkpoint: object) -> None:
    """Refuse (ValueError, one line) to resume ``checkpoint``, whose plan was ``saved``, under a ``plan`` that
    would train another run (model, lengths, batch, steps, schedule or phases differ)."""
    mismatched = [k for k in RESUME_KEYS if _comparable(k, saved.get(k)) != _comparable(k, getattr(plan, k))]
    if mismatched:
        raise ValueError(f"cannot resume {checkpoint}: {mismatched} differ from this run's settings")
