"""A job's working folder for the older, path-based stages (``slimpipe evalset``'s build).

New jobs use :class:`slimpipe.runtime.Workspace`, which works on any storage and records what each
step wrote. This module keeps the path-based helpers on the same primitives: every file is committed
through :func:`slimpipe.storage.open_output` (temporary name, fsync, rename) and a stage is complete
only when its ``<stage>.done.json`` exists, so a killed job resumes where it stopped.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from slimpipe import storage
from slimpipe.io.writers import atomic_write_json
from slimpipe.runtime.workspace import remove_temporaries

__all__ = ["WorkDir", "load_many", "load_npy", "remove_temporaries", "save_npy", "save_parquet"]


def save_npy(path: str | Path, array: np.ndarray) -> None:
    with storage.open_output(path) as fh:
        np.save(fh, array, allow_pickle=False)


def load_npy(path: str | Path, mmap: bool = False) -> np.ndarray:
    return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)


def load_many(paths: list[Path], dtype: np.dtype) -> np.ndarray:
    arrays = [load_npy(p) for p in paths]
    return np.concatenate(arrays) if arrays else np.empty(0, dtype)


def save_parquet(path: str | Path, table: pa.Table) -> None:
    with storage.open_output(path) as fh:
        pq.write_table(table, fh, compression="zstd")


class WorkDir:
    """Paths and markers under ``OUT/_work``."""

    def __init__(self, out: str | Path):
        self.out = Path(out)
        self.root = self.out / "_work"
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)

    def marker(self, stage: str) -> Path:
        return self.root / f"{stage}.done.json"

    def done(self, stage: str) -> dict | None:
        m = self.marker(stage)
        return json.loads(m.read_text()) if m.exists() else None

    def finish(self, stage: str, summary: dict) -> None:
        atomic_write_json(self.marker(stage), summary)

    @staticmethod
    def task_done(marker: Path) -> dict | None:
        return json.loads(marker.read_text()) if marker.exists() else None
