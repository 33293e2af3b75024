"""How the model runs on several processes and devices: one function per technique, applied in
:func:`parallelize`'s order (torchtitan's layout).

* :func:`apply_activation_checkpointing`: recompute each block's activations in the backward pass.
* :func:`apply_compile`: ``torch.compile`` of each block and the output head (regional compilation:
  compiles in about one layer's time), before any wrapper.
* :func:`apply_fsdp`: FSDP2 (``fully_shard`` per block, then the root), bf16 parameters, fp32 gradient
  reduction through ``MixedPrecisionPolicy`` (no autocast on top, see :func:`slimpipe.train.plan.plan_run`).
* :func:`apply_ddp`: DistributedDataParallel with several processes.

And what the training step and the evaluations need from a wrapped model: :func:`gradient_sync`
(skip the all-reduce on all but the last micro-batch), :func:`gathered` (hold an FSDP model unsharded
during evaluation) and :func:`full_model` (an unsharded CPU copy for the export).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from slimpipe.train.model import GPT, ModelConfig
from slimpipe.train.plan import Plan


def apply_activation_checkpointing(model: GPT, enabled: bool) -> None:
    """Recompute each block's activations in the backward pass (less memory, ~30% more compute)."""
    model.activation_checkpointing = enabled


def apply_compile(model: GPT) -> None:
    """Compile each block and the output head in place (before DDP/FSDP2 wrap them)."""
    model.compile_regions()


def apply_fsdp(model: GPT) -> GPT:
    """Shard ``model`` in place with FSDP2, one unit per block and the root; returns it."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    # the policy alone sets the numerics (no autocast on top: plan_run); the last block is not resharded
    # after forward, since backward needs it at once (torchtitan's choice)
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    last = len(model.blocks) - 1
    for i, block in enumerate(model.blocks):
        fully_shard(block, mp_policy=mp, reshard_after_forward=i < last)
    fully_shard(model, mp_policy=mp)
    return model


def apply_ddp(model: GPT, device: torch.device) -> torch.nn.Module:
    """DistributedDataParallel around ``model`` (on this rank's GPU when on CUDA)."""
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def parallelize(model: GPT, plan: Plan, device: torch.device, *, activation_checkpointing: bool = False
                ) -> torch.nn.Module:
    """Apply the plan's techniques to ``model`` in order; returns the module the training step calls
    (``model`` itself for one process or FSDP2, which shards it in place; a DDP wrapper otherwise).
    Call it before building the optimizer: FSDP2 replaces the parameters."""
    apply_activation_checkpointing(model, activation_checkpointing)
    if plan.compile:
        apply_compile(model)
    if plan.parallel == "fsdp":
        return apply_fsdp(model)
    if plan.parallel == "ddp":
        return apply_ddp(model, device)
    return model


def gradient_sync(model: GPT, run_model: torch.nn.Module, plan: Plan, sync: bool) -> contextlib.AbstractContextManager:
    """The context of one micro-batch's forward and backward: without ``sync`` (not the last micro-batch
    of an accumulation) gradients are not reduced across ranks (DDP ``no_sync``; FSDP2 keeps them local)."""
    if plan.parallel == "fsdp":
        model.set_requires_gradient_sync(sync)
    if plan.parallel == "ddp" and not sync:
        return run_model.no_sync()
    return contextlib.nullcontext()


@contextlib.contextmanager
def gathered(model: torch.nn.Module, plan: Plan) -> Iterator[None]:
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


def full_model(model: GPT, plan: Plan) -> GPT:
    """An unsharded CPU copy of an FSDP model (a collective: every rank calls it); the model otherwise."""
    if plan.parallel != "fsdp":
        return model
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    full = GPT(ModelConfig.from_dict(plan.model))
    full.load_state_dict(state)
    return full
