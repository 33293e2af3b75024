"""Sharded, asynchronous training checkpoints through ``torch.distributed.checkpoint`` (DCP).

One checkpoint is a folder ``RUN/checkpoints/step_0000123/``:

    .metadata, __<rank>_0.distcp   model and optimizer state written by DCP; under FSDP every rank writes
                                   only its own shard, under DDP / one process the whole state once
    trainer.pt                     step, data position, plan, LR-scheduler state (rank 0)
    rng_<rank>.pt                  every RNG state of that rank, all on the CPU (torch, CUDA, numpy, python)

It is written to ``step_N.tmp/`` and renamed to ``step_N/`` by rank 0 only after every rank's write has
finished, so a folder without the ``.tmp`` suffix is always complete. With ``async_save`` the state is
copied to host memory and written by a background thread while training continues; the write is
awaited before the next checkpoint and at the end of the run. Checkpoints are due at a wall-clock
interval (default 30 minutes, decided on rank 0 and broadcast), every N steps if asked, and at the end.

Loading never touches the GPU for RNG state (``map_location="cpu"``): ``torch.set_rng_state`` and
``torch.cuda.set_rng_state`` take CPU tensors only.
"""

from __future__ import annotations

import logging
import random
import shutil
import time
import warnings
from concurrent.futures import Future
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
TRAINER_FILE = "trainer.pt"
DEFAULT_INTERVAL_S = 30 * 60.0
_NO_PG = "torch.distributed is disabled, unavailable or uninitialized"
warnings.filterwarnings("ignore", message=_NO_PG)  # also for async_save's background thread


def _quiet(fn, *args, **kwargs):
    """Call a DCP function without its warning that one process has no process group (a normal case here)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_NO_PG)
        return fn(*args, **kwargs)


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def checkpoints(out_dir: str | Path) -> list[Path]:
    """Complete checkpoint folders of a run, oldest first."""
    d = Path(out_dir) / CHECKPOINT_DIR
    if not d.is_dir():
        return []
    return sorted(p for p in d.glob("step_*") if p.is_dir() and not p.name.endswith(".tmp")
                  and (p / TRAINER_FILE).is_file())


def rng_state(device: torch.device) -> dict:
    """Every RNG state of this process, as CPU objects."""
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device).cpu()
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"].cpu())
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)


class Checkpointer:
    """Writes checkpoints of one run (every rank calls every method, in the same order)."""

    def __init__(self, out_dir: str | Path, *, device: torch.device, keep: int = 2, every_steps: int | None = None,
                 interval_s: float | None = DEFAULT_INTERVAL_S, async_save: bool = True) -> None:
        self.dir = Path(out_dir) / CHECKPOINT_DIR
        self.device, self.keep, self.every_steps = device, keep, every_steps
        self.interval_s, self.async_save = interval_s, async_save
        self.rank = dist.get_rank() if _distributed() else 0
        self.world = dist.get_world_size() if _distributed() else 1
        self._last = time.monotonic()
        self._pending: tuple[Future | None, Path, Path, dict] | None = None
        # DCP's background write runs collectives; keep them off the training (NCCL) process group.
        self._pg = dist.new_group(backend="gloo") if (_distributed() and async_save) else None

    def due(self, step: int, is_last: bool) -> bool:
        """Whether to checkpoint after ``step``: the end, every ``every_steps``, or the wall-clock interval
        (never with ``keep=0``: a run that writes no checkpoints, e.g. a throughput benchmark)."""
        if self.keep <= 0:
            return False
        now = is_last or bool(self.every_steps and step % self.every_steps == 0)
        if not now and self.interval_s:
            now = time.monotonic() - self._last >= self.interval_s
            if _distributed():  # rank 0's clock decides, so every rank takes the same branch
                flag = torch.tensor([int(now)], device=self.device)
                dist.broadcast(flag, src=0)
                now = bool(flag.item())
        return now

    def save(self, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
             scheduler: torch.optim.lr_scheduler.LRScheduler, *, plan: dict, sample_pos: int) -> Path:
        """Start writing ``step_N`` (asynchronously if configured); returns its final path."""
        self.wait()
        final = self.dir / f"step_{step:07d}"
        tmp = self.dir / f"step_{step:07d}.tmp"
        if self.rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        if _distributed():
            dist.barrier()
        torch.save(rng_state(self.device), tmp / f"rng_{self.rank}.pt")
        model_sd, optim_sd = get_state_dict(model, optimizer)
        state = {"model": model_sd, "optim": optim_sd}
        meta = {"step": step, "sample_pos": sample_pos, "plan": plan, "scheduler": scheduler.state_dict(),
                "world_size": self.world}
        future = None
        if self.async_save:
            future = _quiet(dcp.async_save, state, checkpoint_id=str(tmp), process_group=self._pg)
        else:
            _quiet(dcp.save, state, checkpoint_id=str(tmp))
        self._pending = (future, tmp, final, meta)
        self._last = time.monotonic()
        if not self.async_save:
            self.wait()
        return final

    def wait(self) -> None:
        """Finish the checkpoint in flight (if any): await the write, then commit it by renaming."""
        if self._pending is None:
            return
        future, tmp, final, meta = self._pending
        self._pending = None
        if future is not None:
            future.result()
        if _distributed():
            dist.barrier()
        if self.rank == 0:
            torch.save(meta, tmp / TRAINER_FILE)
            shutil.rmtree(final, ignore_errors=True)
            tmp.rename(final)
            for old in checkpoints(self.dir.parent)[: -self.keep]:
                shutil.rmtree(old, ignore_errors=True)
            log.info("checkpoint %s", final)
        if _distributed():
            dist.barrier()

    def close(self) -> None:
        self.wait()
        if self._pg is not None:
            dist.destroy_process_group(self._pg)
            self._pg = None


def read_meta(path: str | Path) -> dict:
    """``trainer.pt`` of a checkpoint: step, sample_pos, plan, scheduler, world_size."""
    return torch.load(Path(path) / TRAINER_FILE, map_location="cpu", weights_only=False)


def load(path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
         scheduler: torch.optim.lr_scheduler.LRScheduler, device: torch.device) -> dict:
    """Restore model, optimizer, scheduler and this rank's RNG states from ``path``; returns the meta."""
    path = Path(path)
    model_sd, optim_sd = get_state_dict(model, optimizer)
    state = {"model": model_sd, "optim": optim_sd}
    _quiet(dcp.load, state, checkpoint_id=str(path))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    meta = read_meta(path)
    scheduler.load_state_dict(meta["scheduler"])
    rank = dist.get_rank() if _distributed() else 0
    rng_file = path / f"rng_{rank}.pt"
    if not rng_file.is_file():  # resumed on more ranks than saved: new ranks start from rank 0's streams
        rng_file = path / "rng_0.pt"
    set_rng_state(torch.load(rng_file, map_location="cpu", weights_only=False), device)
    return meta


def load_model_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The full (unsharded) model state dict of a checkpoint, on the CPU, without a process group."""
    from slimpipe.train.model import GPT, ModelConfig

    meta = read_meta(path)
    with torch.device("meta"):
        model = GPT(ModelConfig.from_dict(meta["plan"]["model"]))
    state = {k: torch.empty_like(v, device="cpu") for k, v in model.state_dict().items()}
    _quiet(dcp.load, {"model": state}, checkpoint_id=str(path))
    return state


def read_checkpoint(path: str | Path) -> dict:
    """A whole checkpoint as one CPU dict, without a process group: ``model`` (full state dict),
    ``optimizer`` (``{"state": {param name: {...}}, "param_groups": [...]}``) and the trainer meta
    (step, sample_pos, plan, scheduler, world_size). For tests, inspection and conversion."""
    import tempfile

    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    with tempfile.TemporaryDirectory() as tmp:
        flat = Path(tmp) / "flat.pt"
        _quiet(dcp_to_torch_save, str(path), str(flat))
        state = torch.load(flat, map_location="cpu", weights_only=False)
    return {"model": state["model"], "optimizer": state["optim"], **read_meta(path)}
