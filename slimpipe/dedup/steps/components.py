"""Connected components of the duplicate graph, for global and local dedup from the same edges.

* **single process** (the edges fit ``--max-edges-in-memory``): numba union-find in one task.
* **distributed**: alternating large-star and small-star contraction over edge partitions until no edge
  changes, each half a bounded shuffle (one file per map task), then the converged stars become
  (node, label) rows partitioned by label.

Either way the output is one shuffle file per task holding (node, label) rows partitioned by label, the
keep step's input; local mode drops cross-source edges first.
"""

from __future__ import annotations

import numpy as np

from slimpipe.dedup.components import (
    large_star,
    large_star_map,
    small_star,
    small_star_map,
    star_labels,
    union_find,
)
from slimpipe.dedup.graph import EDGE_DTYPE, local_only
from slimpipe.dedup.results import (
    FastComponentsResult,
    ModeComponents,
    StarFinishResult,
    StarMapResult,
    StarReduceResult,
)
from slimpipe.dedup.steps.common import CC_DTYPE, MODES, partition_of
from slimpipe.runtime import TaskContext, Workspace, read_partition, write_partitioned


def read_edges(ws: Workspace, rel: str, mode: str) -> np.ndarray:
    """One edge file of the job (exact, near or verified edges) as EDGE_DTYPE rows for ``mode``."""
    e = ws.load_array(rel)
    e = np.array(e[list(EDGE_DTYPE.names)]) if e.dtype != EDGE_DTYPE else e
    return local_only(e) if mode == "local" else e


def fast_task(ctx: TaskContext, edge_files: list[str]) -> dict:
    """All edges in one process: union-find for both modes."""
    ws = ctx.ws
    result: dict[str, ModeComponents] = {}
    for mode in MODES:
        parts = [read_edges(ws, f, mode) for f in edge_files]
        edges = np.concatenate(parts) if parts else np.empty(0, EDGE_DTYPE)
        nodes = np.unique(np.concatenate([edges["u"], edges["v"]]))
        labels = union_find(edges["u"], edges["v"], nodes)
        cc = np.empty(len(nodes), CC_DTYPE)
        cc["node"], cc["label"] = nodes, labels
        piece = write_partitioned(ws, f"cc/{mode}/fast.shuf", cc, np.zeros(len(cc), np.int64), 1)
        result[mode] = ModeComponents(edges=len(edges), nodes=len(cc), piece=piece)
    return FastComponentsResult(result).to_dict()


def map_task(ctx: TaskContext, mode: str, inputs: list[str], nparts: int, phase: str) -> dict:
    """Route edges to the partitions of the nodes whose neighbourhood the next star step needs."""
    ws = ctx.ws
    us, vs = [], []
    for rel in inputs:
        e = ws.load_array(rel)
        if e.dtype.names:  # round 0: the job's edge tables
            e = local_only(e) if mode == "local" else e
            us.append(e["u"])
            vs.append(e["v"])
        else:
            us.append(e[:, 0])
            vs.append(e[:, 1])
    u = np.concatenate(us) if us else np.empty(0, np.int64)
    v = np.concatenate(vs) if vs else np.empty(0, np.int64)
    # large-star needs each node's whole neighbourhood, small-star each edge at its larger end
    a, b = (large_star_map if phase == "L" else small_star_map)(u, v)
    pairs = np.stack([a, b], axis=1)
    piece = write_partitioned(ws, f"{ctx.step}/map{ctx.index:05d}.shuf", pairs, partition_of(a, nparts), nparts)
    return StarMapResult(rows=len(a), piece=piece).to_dict()


def reduce_task(ctx: TaskContext, inputs: str, d: int, phase: str) -> dict:
    ws = ctx.ws
    map_pieces = ws.inputs(inputs)
    rows = read_partition(ws, map_pieces, d, np.dtype("<i8"), width=2)
    a, b, changed = (large_star if phase == "L" else small_star)(rows[:, 0], rows[:, 1])
    rel = None
    if len(a):
        rel = ws.save_array(f"{ctx.step}/out{d:05d}.npy", np.stack([a, b], axis=1))["path"]
    return StarReduceResult(changed=int(changed), edges=len(a), out=rel).to_dict()


def finish_task(ctx: TaskContext, rel: str, nparts: int) -> dict:
    """Converged stars (node, root) → (node, label) rows partitioned by label."""
    ws = ctx.ws
    e = ws.load_array(rel)
    nodes, labels = star_labels(e[:, 0], e[:, 1])
    cc = np.empty(len(nodes), CC_DTYPE)
    cc["node"], cc["label"] = nodes, labels
    piece = write_partitioned(ws, f"{ctx.step}/labels{ctx.index:05d}.shuf", cc, partition_of(labels, nparts), nparts)
    return StarFinishResult(nodes=len(nodes), piece=piece).to_dict()
