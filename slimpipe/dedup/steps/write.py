"""The second read: kept documents go to a sink, short and duplicate documents to the removed table.

One task per input range streams the input again (the only other read besides the read step). The
kept documents go to a **sink**: :class:`KeptShards` writes ``kept/<source>/part-*.jsonl.zst`` (the
``dedup`` command); the SlimPajama pipeline passes its own sink, which scatters them straight into its
shuffle chunks, so the pipeline's output holds one copy of the corpus and no ``kept`` copy.
"""

from __future__ import annotations

import json
from collections import defaultdict

import pyarrow as pa

from slimpipe import storage
from slimpipe.dedup.results import WriteResult
from slimpipe.dedup.steps.common import NODE_SHIFT, REASON_NAMES, REMOVED_DTYPE, Catalog, read_rows
from slimpipe.io.readers import InputFile, iter_columns
from slimpipe.io.writers import JsonlZstWriter
from slimpipe.runtime import TaskContext, Workspace, read_partition
from slimpipe.sources import set_name
from slimpipe.text.normalize import normalize

REMOVED_COLUMNS = ("id", "source", "reason", "cluster", "duplicate_of", "nbytes")


class KeptShards:
    """The dedup command's sink: ``OUT/kept/<source>/part-TTTTT-NNN.jsonl.zst``, records ``{text, meta}``."""

    def __init__(self, out: str, shard_bytes: int = 256 << 20):
        self.out, self.shard_bytes = out, shard_bytes

    def prepare(self, ws: Workspace, kept_text_bytes: int) -> None:
        """Called by the job before the write step, with the kept documents' text bytes."""

    def open(self, ws: Workspace, t: int) -> _KeptWriter:
        return _KeptWriter(self, t)

    def commit(self, written: list[dict]) -> None:
        """Called by the job after the write step with what each task's writer returned on close
        (:attr:`slimpipe.dedup.results.WriteResult.sink`, in task order); the job writes the manifest."""


class _KeptWriter:
    def __init__(self, sink: KeptShards, t: int):
        self.sink, self.t = sink, t
        self.writers: dict[str, JsonlZstWriter] = {}
        self.counters: dict[str, int] = defaultdict(int)
        self.shards: list[dict] = []

    def add(self, doc_id: str, src: str, text: str, meta: dict) -> None:
        w = self.writers.get(src)
        if w is None or w.uncompressed >= self.sink.shard_bytes:
            if w is not None:
                self.shards.append(w.close().to_dict())
            rel = f"kept/{src}/part-{self.t:05d}-{self.counters[src]:03d}.jsonl.zst"
            self.counters[src] += 1
            w = self.writers[src] = JsonlZstWriter(self.sink.out, rel)
        w.write({"text": text, "meta": meta})

    def close(self) -> dict:
        for w in self.writers.values():
            self.shards.append(w.close().to_dict())
        return {"shards": self.shards}

    def abort(self) -> None:
        for w in self.writers.values():
            w.abort()


def write_task(ctx: TaskContext, f: InputFile, inputs: str, sink, out: str) -> dict:
    ws = ctx.ws
    removed_pieces = ws.inputs(inputs)
    t = ctx.index
    cat = Catalog.load(ws)
    pre = read_rows(ws, t)
    short = set(pre["node"][pre["short"]].tolist())
    rem = read_partition(ws, removed_pieces, t, REMOVED_DTYPE)
    removed = {int(r["node"]): r for r in rem}
    cols: dict[str, list] = {k: [] for k in REMOVED_COLUMNS}
    kept: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    writer = sink.open(ws, t)
    base = t << NODE_SHIFT
    try:
        for line, src, raw, meta, nbytes in iter_columns(f, ("line", "source", "text", "meta", "nbytes")):
            node = base | (line - f.first_line)
            doc_id = f"{src}/{f.rel}:{line}"
            text = normalize(raw)
            if text is not raw:  # NFC changed it: the reader's byte count is of the raw text
                nbytes = len(text.encode("utf-8"))
            if node in short:
                _add_removed(cols, doc_id, src, "short", None, None, nbytes)
            elif node in removed:
                r = removed[node]
                _add_removed(cols, doc_id, src, REASON_NAMES[int(r["reason"])], cat.stable_node(int(r["label"])),
                             cat.doc_id(int(r["keeper"]), int(r["ksrc"])), nbytes)
            else:
                m = json.loads(meta) if meta else {}
                m = m if isinstance(m, dict) else {"meta": m}
                m["redpajama_set_name"] = set_name(src)
                m["slimpipe_id"] = doc_id
                writer.add(doc_id, src, text, m)
                kept[src][0] += 1
                kept[src][1] += nbytes
        sunk = writer.close()
    except BaseException:
        writer.abort()
        raise
    removed_rel = None
    if cols["id"]:
        # cluster: the component's id (its smallest document as file index << 40 | line); duplicate_of: the
        # document kept for it
        table = pa.table({k: pa.array(v, pa.int64() if k in ("nbytes", "cluster") else pa.string())
                          for k, v in cols.items()})
        removed_rel = f"removed/part-{t:05d}.parquet"
        with storage.open_output(storage.join(out, removed_rel)) as fh:
            import pyarrow.parquet as pq

            pq.write_table(table, fh, compression="zstd")
    return WriteResult(kept=dict(kept), removed_file=removed_rel, sink=sunk).to_dict()


def _add_removed(cols: dict, doc_id: str, src: str, reason: str, cluster: int | None, dup_of: str | None,
                 nbytes: int) -> None:
    cols["id"].append(doc_id)
    cols["source"].append(src)
    cols["reason"].append(reason)
    cols["cluster"].append(cluster)
    cols["duplicate_of"].append(dup_of)
    cols["nbytes"].append(nbytes)
