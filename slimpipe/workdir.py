"""A job's working folder: atomic intermediate files and stage completion markers.

Every intermediate is written under a temporary name and renamed into place, and a stage is complete
only when its ``<stage>.done.json`` exists. A task whose own marker exists is skipped on resume, so a job
killed at any point restarts where it stopped and, because every task is deterministic, ends with the
same bytes as an uninterrupted run.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from slimpipe.io.writers import atomic_write_json


def save_npy(path: str | Path, array: np.ndarray) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        np.save(fh, array, allow_pickle=False)
    os.replace(tmp, path)


def load_npy(path: str | Path, mmap: bool = False) -> np.ndarray:
    return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)


def load_many(paths: list[Path], dtype: np.dtype) -> np.ndarray:
    arrays = [load_npy(p) for p in paths]
    return np.concatenate(arrays) if arrays else np.empty(0, dtype)


def save_parquet(path: str | Path, table: pa.Table) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, path)


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


def remove_temporaries(root: str | Path) -> int:
    """Delete ``.*.tmp`` files left by killed writers (never complete, never under a final name)."""
    n = 0
    for p in Path(root).rglob(".*.tmp"):
        p.unlink(missing_ok=True)
        n += 1
    return n
