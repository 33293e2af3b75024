"""Keep one document per component, one task per label partition, for global and local mode.

Each task looks up its nodes' source, bytes and exact hash in the read step's per-task rows, applies
the keep policy (:func:`slimpipe.dedup.keep.choose_keep`) and routes the removed rows (with their
reason, component and keeper) by the task that read them, one shuffle file per keep task; the write
step reads its partition. Summaries for the report (per source and reason, cross-source pairs,
cluster sizes, the largest clusters) travel in the task's result.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from slimpipe.dedup.steps.common import (
    CC_DTYPE,
    EXACT,
    NEAR,
    PREPASS_DTYPE,
    REASON_NAMES,
    REMOVED_DTYPE,
    load_remap,
    read_rows,
    task_of,
    to_global,
)
from slimpipe.runtime import TaskContext, Workspace, read_partition, write_partitioned


def lookup_attrs(ws: Workspace, nodes: np.ndarray, remap: np.ndarray) -> np.ndarray:
    """Read-step rows (job source codes) of the given nodes, via each task's table sorted by node."""
    out = np.empty(len(nodes), PREPASS_DTYPE)
    tasks = task_of(nodes)
    for t in np.unique(tasks).tolist():
        sel = tasks == t
        pre = read_rows(ws, t, mmap=True)
        idx = np.searchsorted(pre["node"], nodes[sel])
        out[sel] = pre[np.minimum(idx, len(pre) - 1)] if len(pre) else out[sel]
    if len(nodes) and not np.array_equal(out["node"], nodes):
        raise RuntimeError("internal error: component node missing from the read step's rows")
    out["src"] = to_global(out["src"], out["node"], remap)
    return out


def keep_task(ctx: TaskContext, mode: str, r: int, inputs: str, policy: str, priority: list[int],
              sources: list[str], ntasks: int) -> dict:
    from slimpipe.dedup.keep import choose_keep

    ws = ctx.ws
    cc_pieces = ws.inputs(inputs)
    remap = load_remap(ws)
    cc = np.unique(read_partition(ws, cc_pieces, r, CC_DTYPE))  # roots can arrive from several partitions
    attrs = lookup_attrs(ws, cc["node"], remap)
    keeper = choose_keep(cc["label"], cc["node"], policy, source=attrs["src"].astype(np.int64),
                         length=attrs["nbytes"], source_priority=priority)
    removed_mask = cc["node"] != keeper
    kattrs = lookup_attrs(ws, keeper, remap)
    rem = np.empty(int(removed_mask.sum()), REMOVED_DTYPE)
    rem["node"], rem["label"], rem["keeper"] = cc["node"][removed_mask], cc["label"][removed_mask], keeper[removed_mask]
    rem["src"], rem["ksrc"] = attrs["src"][removed_mask], kattrs["src"][removed_mask]
    rem["reason"] = np.where(attrs["xhash"][removed_mask] == kattrs["xhash"][removed_mask], EXACT, NEAR)
    piece = write_partitioned(ws, f"{ctx.step}/removed{r:05d}.shuf", rem, task_of(rem["node"]), ntasks)
    # summaries for the report
    _, sizes = np.unique(cc["label"], return_counts=True)  # sorted by label, like labels_u below
    by = defaultdict(lambda: [0, 0])
    rbytes = attrs["nbytes"][removed_mask]
    for s, reason, nb in zip(rem["src"].tolist(), rem["reason"].tolist(), rbytes.tolist(), strict=True):
        k = f"{sources[s]}|{REASON_NAMES[reason]}"
        by[k][0] += 1
        by[k][1] += nb
    cross = defaultdict(int)
    for s, ks in zip(rem["src"].tolist(), rem["ksrc"].tolist(), strict=True):
        cross[f"{sources[s]}|{sources[ks]}"] += 1
    labels_u, first = np.unique(cc["label"], return_index=True)
    top = []
    for i in np.lexsort((labels_u, -sizes))[:8].tolist():
        members = cc["node"][cc["label"] == labels_u[i]]
        top.append({"label": int(labels_u[i]), "size": int(sizes[i]), "keeper": int(keeper[first[i]]),
                    "members": [int(x) for x in members[:6]]})
    return {
        "removed": {k: v for k, v in sorted(by.items())},
        "cross": dict(sorted(cross.items())),
        "cluster_sizes": {str(k): int(v) for k, v in zip(*np.unique(sizes, return_counts=True), strict=True)},
        "components": len(sizes),
        "removed_bytes": int(rbytes.sum()),
        "top": top,
        "piece": piece,
    }
