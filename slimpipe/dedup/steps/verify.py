"""``--verify``: the exact Jaccard of every candidate pair, as a two-hop join over tasks.

1. **send** (per read task ``t``): the candidate edges whose first document ``u`` was read by ``t``
   get ``u``'s cleaned text and are routed to the task that read ``v`` (one table shuffle file per task).
2. **check** (per read task ``t``): each pair gets ``v``'s cleaned text; pairs below the threshold by
   exact Jaccard are dropped (and counted).

Cleaned texts come from the read step's ``texts/tNNNNN.parquet``, reading only the row groups (1024
documents each, sorted by node) that hold a wanted document: the input is never read again.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from slimpipe.dedup.graph import EDGE_DTYPE, unique_edges
from slimpipe.dedup.params import DedupParams
from slimpipe.dedup.results import SendResult, VerifyResult
from slimpipe.dedup.steps.common import VERIFIED_DTYPE, task_of
from slimpipe.runtime import TaskContext, Workspace, read_partition, read_table_partition
from slimpipe.runtime.shuffle import write_table_partitioned

ROW_SCHEMA = pa.schema([("u", pa.int64()), ("v", pa.int64()), ("su", pa.int16()), ("sv", pa.int16()),
                        ("text_u", pa.large_string())])


def cleaned_texts(ws: Workspace, rel: str | None, nodes: np.ndarray) -> dict[int, str]:
    """Cleaned texts of ``nodes`` from one read task's texts file, reading only the row groups needed."""
    want = np.unique(np.asarray(nodes, np.int64))
    out: dict[int, str] = {}
    if rel is None or not len(want):
        return out
    pf = ws.open_parquet(rel)
    try:
        meta = pf.metadata
        col = pf.schema_arrow.get_field_index("node")
        for g in range(meta.num_row_groups):
            st = meta.row_group(g).column(col).statistics
            lo, hi = (st.min, st.max) if st is not None and st.has_min_max else (None, None)
            if lo is not None:
                i, j = np.searchsorted(want, [lo, hi + 1])
                if i == j:
                    continue
            table = pf.read_row_group(g)
            table = table.filter(pc.is_in(table.column("node"), value_set=pa.array(want)))  # no str for the rest
            out.update(zip(table.column("node").to_pylist(), table.column("clean").to_pylist(), strict=True))
    finally:
        pf.close()
    return out


def send_task(ctx: TaskContext, t: int, inputs: str, texts_rel: str | None) -> dict:
    ws = ctx.ws
    by_task_pieces = ws.inputs(inputs)
    edges = unique_edges(read_partition(ws, by_task_pieces, t, EDGE_DTYPE))
    texts = cleaned_texts(ws, texts_rel, edges["u"])
    missing = set(np.unique(edges["u"]).tolist()) - set(texts)
    if missing:
        raise RuntimeError(f"verify: task {t} has no cleaned text for {len(missing)} candidate document(s)")
    table = pa.table({"u": edges["u"], "v": edges["v"], "su": edges["su"], "sv": edges["sv"],
                      "text_u": pa.array([texts[int(u)] for u in edges["u"]], pa.large_string())}, schema=ROW_SCHEMA)
    piece = write_table_partitioned(ws, f"verify_send/rows{t:05d}.parquet", table, task_of(edges["v"]))
    return SendResult(edges=len(edges), piece=piece).to_dict()


def check_task(ctx: TaskContext, t: int, inputs: str, texts_rel: str | None, params: dict) -> dict:
    from slimpipe.dedup.jaccard import jaccard_pairs

    ws = ctx.ws
    row_pieces = ws.inputs(inputs)
    p = DedupParams.from_dict(params)
    table = read_table_partition(ws, row_pieces, t, ROW_SCHEMA)
    n = table.num_rows
    out = np.empty(n, VERIFIED_DTYPE)
    j = np.empty(0, np.float64)
    if n:
        u, v = table.column("u").to_numpy(), table.column("v").to_numpy()
        out["u"], out["v"] = u, v
        out["su"], out["sv"] = table.column("su").to_numpy(), table.column("sv").to_numpy()
        # One text per document, however many pairs it is in (a node id names one cleaned text).
        u_nodes, u_first = np.unique(u, return_index=True)
        texts = cleaned_texts(ws, texts_rel, v)
        missing = set(np.unique(v).tolist()) - set(texts)
        if missing:
            raise RuntimeError(f"verify: task {t} has no cleaned text for {len(missing)} candidate document(s)")
        texts.update(zip(u_nodes.tolist(), table.column("text_u").take(pa.array(u_first)).to_pylist(), strict=True))
        nodes = np.fromiter(texts, np.int64, count=len(texts))
        order = np.argsort(nodes)
        nodes = nodes[order]
        docs = list(texts.values())
        docs = [docs[i] for i in order.tolist()]
        j = jaccard_pairs(docs, np.searchsorted(nodes, u), np.searchsorted(nodes, v), p.ngram, p.unit, p.seed)
        out["j"] = j
    kept = out[j >= p.threshold]  # in float64, as the cluster check: float32 could round a J just below T up
    hist = np.histogram(out["j"], bins=20, range=(0.0, 1.0))[0].tolist() if n else [0] * 20
    rel = ws.save_array(f"verify/edges{t:05d}.npy", kept)["path"] if len(kept) else None
    return VerifyResult(candidates=n, confirmed=len(kept), dropped=n - len(kept), j_hist=hist,
                        edges_file=rel).to_dict()
