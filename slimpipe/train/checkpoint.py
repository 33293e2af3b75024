"""Sharded, asynchronous training checkpoints through ``torch.distributed.checkpoint`` (DCP).

One checkpoint is a folder ``RUN/checkpoints/step_0000123/``:

    .metadata, __<rank>_0.distcp   model and optimizer state written by DCP; under FSDP every rank writes
                                   only its own shard, under DDP / one process rank 0 alone stages (in
                                   pinned host memory on CUDA) and writes the whole state, once
    model.safetensors              the full model weights (rank 0): what export, eval and --init-from read
    trainer.json                   step, data position, plan, LR-scheduler state (rank 0)
    rng_<rank>.json                every RNG state of that rank (torch, CUDA, numpy, python)

Nothing here is unpickled by ``export``, ``eval`` or ``--init-from``: they read ``model.safetensors`` and
``trainer.json`` only, so a run folder someone sent cannot run code. ``--resume`` also reads DCP's files;
DCP's ``.metadata`` is a pickle, which is read with an unpickler that admits only DCP's own metadata
classes (anything else is refused), and its non-tensor items with ``torch.load(weights_only=True)``.
Checkpoints of older slimpipe versions (``trainer.pt``, ``rng_*.pt``) are resumed the same way (pickles
with ``weights_only=True``), and refused by export/eval/--init-from (no ``model.safetensors``).

It is written to ``step_N.tmp/`` and renamed to ``step_N/`` by rank 0 only after every rank's write has
finished, so a folder without the ``.tmp`` suffix is always complete. With ``async_save`` the state is
copied to host memory and written by a background thread while training continues; the write is
awaited before the next checkpoint and at the end of the run. Checkpoints are due at a wall-clock
interval (default 30 minutes, decided on rank 0 and broadcast), every N steps if asked, and at the end.

RNG states are restored as CPU tensors: ``torch.set_rng_state`` and ``torch.cuda.set_rng_state`` take
CPU tensors only.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import pickle
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
TRAINER_FILE = "trainer.json"
LEGACY_TRAINER_FILE = "trainer.pt"  # older slimpipe: a pickle, read only by --resume, with weights_only=True
MODEL_FILE = "model.safetensors"
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
                  and ((p / TRAINER_FILE).is_file() or (p / LEGACY_TRAINER_FILE).is_file()))


def _b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.cpu().numpy().tobytes()).decode("ascii")


def _unb64(text: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8)


def rng_state(device: torch.device) -> dict:
    """Every RNG state of this process, as JSON-able values (byte states base64-encoded)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {"torch": _b64(torch.get_rng_state()),
             "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],
             "python": [version, list(internal), gauss_next]}
    if device.type == "cuda":
        state["cuda"] = _b64(torch.cuda.get_rng_state(device))
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    """Restore what :func:`rng_state` returned (or an older checkpoint's tensors and tuples)."""
    def tensor(v):
        return _unb64(v) if isinstance(v, str) else v.cpu()

    torch.set_rng_state(tensor(state["torch"]))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), int(pos), int(has_gauss), float(cached)))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(tensor(state["cuda"]), device)


# DCP's .metadata is a pickle; these are the only globals it may name (DCP's own dataclasses, torch dtypes,
# layouts and sizes). Anything else (os.system, builtins.eval, ...) is refused before it is called.
_DCP_MODULES = ("torch.distributed.checkpoint.metadata", "torch.distributed.checkpoint.filesystem",
                "torch.distributed.checkpoint.planner")
_TORCH_NAMES = {("torch", "Size"), ("torch.serialization", "_get_layout"),
                ("torch.serialization", "_MEM_FORMAT_ENCODING"), ("collections", "OrderedDict"),
                ("pathlib", "PosixPath"), ("pathlib", "PurePosixPath"), ("pathlib", "WindowsPath"),
                ("pathlib", "PureWindowsPath")}  # StorageMeta.checkpoint_id


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if module in _DCP_MODULES:  # DCP's dataclasses and enums (classes only: no function is ever called)
            obj = super().find_class(module, name)
            if isinstance(obj, type):
                return obj
        elif (module, name) in _TORCH_NAMES:
            return super().find_class(module, name)
        elif module == "torch" and isinstance(getattr(torch, name, None), (torch.dtype, torch.layout,
                                                                             torch.memory_format)):
            return getattr(torch, name)
        raise pickle.UnpicklingError(f"checkpoint metadata names {module}.{name}, which a DCP checkpoint never "
                                     "does: refusing to load it")


class SafeReader(dcp.FileSystemReader):
    """DCP's file reader with its metadata read by :class:`_MetadataUnpickler` (never arbitrary code)."""

    def read_metadata(self, *args, **kwargs):
        from torch.distributed.checkpoint.metadata import StorageMeta

        path = self._get_metadata_path(kwargs.get("rank"))
        with self.fs.create_stream(path, "rb") as fh:
            try:
                metadata = _MetadataUnpickler(fh).load()
            except (pickle.UnpicklingError, AttributeError, EOFError, TypeError, ValueError) as exc:
                raise ValueError(f"{path}: {exc}") from None
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


def _safe_load_bytes(value: io.BytesIO) -> object:
    return torch.load(value, weights_only=True)


class SafePlanner(dcp.DefaultLoadPlanner):
    """DCP's default load planner, with non-tensor items read by ``torch.load(weights_only=True)``."""

    def load_bytes(self, read_item, value: io.BytesIO) -> None:
        from torch.distributed.checkpoint._traverse import set_element

        obj = _safe_load_bytes(value)
        if self.flatten_state_dict:
            set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], obj)
        else:
            self.state_dict[read_item.dest_index.fqn] = obj


def _dcp_load(state: dict, path: Path, planner: dcp.LoadPlanner | None = None) -> None:
    SafeReader(str(path)).read_metadata()  # a refused .metadata: one ValueError line, not DCP's rank report
    _quiet(dcp.load, state, storage_reader=SafeReader(str(path)), planner=planner or SafePlanner())


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
        # On CUDA the asynchronous copy goes to pinned host memory, kept for the next checkpoint (torchtitan's
        # async_with_pinned_mem); None: DCP's default (pageable) staging, which is what the CPU needs.
        self._stager = None
        if async_save and device.type == "cuda":
            from torch.distributed.checkpoint.staging import DefaultStager, StagingOptions

            self._stager = DefaultStager(StagingOptions(use_pinned_memory=True, use_shared_memory=False,
                                                        use_async_staging=False, use_non_blocking_copy=False))

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
        (tmp / f"rng_{self.rank}.json").write_text(json.dumps(rng_state(self.device)))
        model_sd, optim_sd = get_state_dict(model, optimizer)
        _write_safetensors(model, model_sd, tmp / MODEL_FILE, self.rank)
        state = {"model": model_sd, "optim": optim_sd}
        meta = {"step": step, "sample_pos": sample_pos, "plan": plan, "scheduler": scheduler.state_dict(),
                "world_size": self.world}
        future = None
        # Sharded (FSDP2): every rank writes its shard. Replicated (DDP, one process): every rank holds the
        # same model and optimizer state, so rank 0 alone stages (copies to host memory) and writes it, and
        # the other ranks only their RNG file (#20.6: before, each of 8 ranks staged 15.7 GB at 1.3B).
        sharded = any(hasattr(v, "full_tensor") for v in model_sd.values())
        if sharded or self.rank == 0:
            if self.async_save:  # the gloo group: async_save needs a CPU backend even without collectives
                future = _quiet(dcp.async_save, state, checkpoint_id=str(tmp), process_group=self._pg,
                                no_dist=not sharded, async_stager=self._stager)
            else:
                _quiet(dcp.save, state, checkpoint_id=str(tmp), no_dist=not sharded)
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
            (tmp / TRAINER_FILE).write_text(json.dumps(meta))
            shutil.rmtree(final, ignore_errors=True)
            tmp.rename(final)
            for old in checkpoints(self.dir.parent)[: -self.keep]:
                shutil.rmtree(old, ignore_errors=True)
            log.info("checkpoint %s", final)
        if _distributed():
            dist.barrier()

    def close(self) -> None:
        self.wait()
        if self._stager is not None:
            self._stager.close()
            self._stager = None
        if self._pg is not None:
            dist.destroy_process_group(self._pg)
            self._pg = None


def _write_safetensors(model: torch.nn.Module, model_sd: dict, path: Path, rank: int) -> None:
    """The full model weights as safetensors, by rank 0 (under FSDP a gather every rank joins)."""
    from safetensors.torch import save_file

    if any(hasattr(v, "full_tensor") for v in model_sd.values()):  # FSDP2 shards: gather the full weights
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        model_sd = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if rank == 0:
        save_file({k: v.detach().to("cpu").contiguous() for k, v in model_sd.items()}, str(path),
                  metadata={"format": "pt"})


def read_meta(path: str | Path, *, legacy: bool = False) -> dict:
    """``trainer.json`` of a checkpoint: step, sample_pos, plan, scheduler, world_size. JSON only; with
    ``legacy`` (``--resume`` only) an older slimpipe's ``trainer.pt`` is read with ``weights_only=True``."""
    path = Path(path)
    if (path / TRAINER_FILE).is_file():
        return json.loads((path / TRAINER_FILE).read_text())
    if not legacy:
        raise ValueError(f"{path}: no {TRAINER_FILE} (a checkpoint from an older slimpipe, whose pickled files are "
                         "not read here); resume the run with this version (--resume) to write one")
    try:
        return torch.load(path / LEGACY_TRAINER_FILE, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001  (the unpickler's refusals have many types)
        raise ValueError(f"{path / LEGACY_TRAINER_FILE}: not loadable without running pickled code ({exc})") from None


def _read_rng(path: Path, rank: int) -> dict:
    for r in (rank, 0):  # resumed on more ranks than saved: new ranks start from rank 0's streams
        if (path / f"rng_{r}.json").is_file():
            return json.loads((path / f"rng_{r}.json").read_text())
        if (path / f"rng_{r}.pt").is_file():  # older slimpipe
            try:
                return torch.load(path / f"rng_{r}.pt", map_location="cpu", weights_only=True)
            except Exception as exc:  # noqa: BLE001
                raise ValueError(f"{path / f'rng_{r}.pt'}: not loadable without running pickled code "
                                 f"({exc})") from None
    raise ValueError(f"{path}: no RNG state (rng_{rank}.json)")


def load(path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
         scheduler: torch.optim.lr_scheduler.LRScheduler, device: torch.device) -> dict:
    """Restore model, optimizer, scheduler and this rank's RNG states from ``path`` (``--resume``); returns
    the meta. DCP's pickled metadata goes through the restricted unpickler (:class:`SafeReader`)."""
    path = Path(path)
    meta = read_meta(path, legacy=True)
    rng = _read_rng(path, dist.get_rank() if _distributed() else 0)
    model_sd, optim_sd = get_state_dict(model, optimizer)
    state = {"model": model_sd, "optim": optim_sd}
    _dcp_load(state, path)
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    scheduler.load_state_dict(meta["scheduler"])
    set_rng_state(rng, device)
    return meta


def load_model_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The full model state dict of a checkpoint, on the CPU, from its ``model.safetensors`` (never a
    pickle: export, eval and --init-from use this). ValueError (one line) when the checkpoint has none."""
    from safetensors.torch import load_file

    f = Path(path) / MODEL_FILE
    if not f.is_file():
        raise ValueError(f"{path}: no {MODEL_FILE} (a checkpoint from an older slimpipe, whose pickled files are "
                         "not read here); resume the run with this version (--resume) to write one")
    return load_file(str(f), device="cpu")


def read_checkpoint(path: str | Path) -> dict:
    """A whole checkpoint as one CPU dict, without a process group: ``model`` (full state dict),
    ``optimizer`` (``{"state": {param name: {...}}, "param_groups": [...]}``) and the trainer meta
    (step, sample_pos, plan, scheduler, world_size). For tests, inspection and conversion; read through
    the same restricted readers as ``--resume``."""
    from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

    class _Planner(_EmptyStateDictLoadPlanner):
        load_bytes = SafePlanner.load_bytes

    state: dict = {}  # filled from the checkpoint's own metadata (what dcp_to_torch_save does)
    SafeReader(str(path)).read_metadata()
    _load_state_dict(state, storage_reader=SafeReader(str(path)), planner=_Planner(), no_dist=True)
    return {"model": state["model"], "optimizer": state["optim"], **read_meta(path, legacy=True)}
