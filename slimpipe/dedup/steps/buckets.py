"""Buckets, one task per hash partition: exact-hash and band-key buckets → source-aware star edges.

A bucket's k documents give k − 1 edges (see :mod:`slimpipe.dedup.graph`). The task reads its
partition of every read task's shuffle file (the list comes from the read step's manifest) and
writes its exact edges and near-duplicate candidate edges. With ``--verify`` the candidates also get
chain edges (a second route for true pairs past a false-positive bucket head) and are routed by the
task that read their first document, in one shuffle file per bucket task.
"""

from __future__ import annotations

import numpy as np

from slimpipe.dedup.graph import chain_edges, star_edges, unique_edges
from slimpipe.dedup.results import BucketsResult
from slimpipe.dedup.steps.common import KEYROW_DTYPE, load_remap, task_of, to_global
from slimpipe.runtime import TaskContext, read_partition, write_partitioned


def buckets_task(ctx: TaskContext, q: int, inputs: str, verify: bool, ntasks: int) -> dict:
    """``inputs`` names the committed list of the read step's shuffle files (``exact``, ``bands``)."""
    ws = ctx.ws
    exact_pieces, band_pieces = ws.inputs(inputs)["exact"], ws.inputs(inputs)["bands"]
    remap = load_remap(ws)
    exact = read_partition(ws, exact_pieces, q, KEYROW_DTYPE)
    exact["src"] = to_global(exact["src"], exact["node"], remap)
    xedges = star_edges(exact["key"], exact["node"], exact["src"])
    rows = read_partition(ws, band_pieces, q, KEYROW_DTYPE)
    rows["src"] = to_global(rows["src"], rows["node"], remap)
    edges = star_edges(rows["key"], rows["node"], rows["src"])
    if verify:  # candidates get checked one by one: give true pairs a second route past false positives
        edges = unique_edges(np.concatenate([edges, chain_edges(rows["key"], rows["node"], rows["src"])]))
    exact_file = ws.save_array(f"buckets/exact{q:05d}.npy", xedges)["path"] if len(xedges) else None
    near_file, by_task = None, None
    if verify:
        by_task = write_partitioned(ws, f"buckets/by_task{q:05d}.shuf", edges, task_of(edges["u"]), ntasks)
    elif len(edges):
        near_file = ws.save_array(f"buckets/near{q:05d}.npy", edges)["path"]
    return BucketsResult(exact_rows=len(exact), exact_edges=len(xedges), band_rows=len(rows), edges=len(edges),
                         exact=exact_file, near=near_file, by_task=by_task).to_dict()
