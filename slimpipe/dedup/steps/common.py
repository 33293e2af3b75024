"""What the dedup steps share: row layouts, node ids, partitioning and the job's catalog.

A node id is ``task << 40 | line within the task's input range``, so the task that read a document is
``node >> 40`` (no lookup table) and "smallest id" still means first file, first line: tasks are
numbered in file order, then byte order. The stable ``source/file:line`` id needs the line number of a
range's first line, which its read task learns (no serial pass over the file in the driver); the
driver stores it, with every task's file and the job's source names, in the workspace's catalog.
"""

from __future__ import annotations

import numpy as np

from slimpipe.dedup.components import hash_partition
from slimpipe.dedup.graph import EDGE_DTYPE
from slimpipe.runtime import Workspace

NODE_SHIFT = 40
LINE_MASK = (1 << NODE_SHIFT) - 1

PREPASS_DTYPE = np.dtype(
    [("node", "<i8"), ("src", "<i2"), ("short", "?"), ("nbytes", "<i8"), ("clen", "<i8"), ("xhash", "<u8")]
)
KEYROW_DTYPE = np.dtype([("key", "<u8"), ("node", "<i8"), ("src", "<i2")])
VERIFIED_DTYPE = np.dtype(EDGE_DTYPE.descr + [("j", "<f4")])
CC_DTYPE = np.dtype([("node", "<i8"), ("label", "<i8")])
REMOVED_DTYPE = np.dtype(
    [("node", "<i8"), ("label", "<i8"), ("keeper", "<i8"), ("reason", "i1"), ("src", "<i2"), ("ksrc", "<i2")]
)
EXACT, NEAR = 1, 2
REASON_NAMES = {EXACT: "exact_duplicate", NEAR: "near_duplicate"}
MODES = ("global", "local")
CATALOG = "catalog.json"
REMAP = "source_codes.npy"


def partition_of(keys: np.ndarray, n: int) -> np.ndarray:
    """Hash partition of uint64 band/exact keys or int64 node ids (splitmix64, so sequential ids spread)."""
    return hash_partition(keys.view(np.int64) if keys.dtype == np.uint64 else keys, n)


def task_of(nodes: np.ndarray) -> np.ndarray:
    return np.asarray(nodes, np.int64) >> NODE_SHIFT


def node_of(task: int, line_in_task: int) -> int:
    return (task << NODE_SHIFT) | line_in_task


def read_rows(ws: Workspace, t: int, mmap: bool = False) -> np.ndarray:
    """The read step's per-document rows of task ``t`` (sorted by node; ``src`` in the task's own codes)."""
    return ws.load_array(f"read/t{t:05d}.npy", mmap=mmap)


def load_remap(ws: Workspace) -> np.ndarray:
    """``remap[task, local code]`` → the job's source code (an index into the catalog's ``sources``)."""
    return ws.load_array(REMAP)


def to_global(src: np.ndarray, nodes: np.ndarray, remap: np.ndarray) -> np.ndarray:
    if len(src) == 0:
        return np.asarray(src, np.int16)
    return remap[task_of(nodes), src.astype(np.int64)].astype(np.int16)


class Catalog:
    """Per task: its file (relative name, index) and the line number its range starts at; the sources."""

    def __init__(self, d: dict):
        self.sources: list[str] = d["sources"]
        self.task_rel: list[str] = d["task_rel"]
        self.task_first_line: list[int] = d["task_first_line"]
        self.task_file: list[int] = d["task_file"]

    @classmethod
    def load(cls, ws: Workspace) -> Catalog:
        import json

        return cls(json.loads(ws.read_bytes(CATALOG)))

    def stable_node(self, node: int) -> int:
        """``file index << 40 | line in the file``: the same number however the file was cut into ranges."""
        t = node >> NODE_SHIFT
        return (self.task_file[t] << NODE_SHIFT) | (self.task_first_line[t] + (node & LINE_MASK))

    def doc_id(self, node: int, src: int) -> str:
        t = node >> NODE_SHIFT
        return f"{self.sources[src]}/{self.task_rel[t]}:{self.task_first_line[t] + (node & LINE_MASK)}"
