"""The one read: parse → NFC → clean → short filter → exact hash → MinHash, in one task per input range.

Each task streams its file (or byte range of a plain ``.jsonl``) once and commits:

* ``read/tNNNNN.npy`` — one row per document (node, source, short, bytes, cleaned length, exact hash),
  for the keep step's lookups and the write step's short filter;
* ``exact_rows/tNNNNN.shuf`` and ``band_rows/tNNNNN.shuf`` — exact-hash rows and MinHash band-key rows,
  each one shuffle file holding every partition (:mod:`slimpipe.runtime.shuffle`);
* with ``--verify``, ``texts/tNNNNN.parquet`` — the cleaned text of each signed document in row groups
  of 1024 documents sorted by node, so verification later reads only the row groups holding a
  candidate's text: ``--verify`` adds no re-read of the input (no parse, no NFC, no clean);
* ``read/tNNNNN.rejects.parquet`` when a line was rejected.

Within a task, a document whose cleaned text (and source) repeats an earlier one is not signed again:
it joins its twin through the exact-hash edge, and its band keys would be the twin's.

Sources are coded per task (the task cannot know the job's other sources); the driver turns the
codes into the job's codes after this step (see :mod:`slimpipe.dedup.steps.common`).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from slimpipe.dedup.params import DedupParams
from slimpipe.dedup.results import ReadResult, SourceCounts
from slimpipe.dedup.steps.common import KEYROW_DTYPE, NODE_SHIFT, PREPASS_DTYPE, partition_of
from slimpipe.io.readers import REJECT_SCHEMA, FileStats, InputFile, read_batches
from slimpipe.runtime import TaskContext, write_partitioned
from slimpipe.text.normalize import clean_for_hash, is_short, normalize

SIGN_BATCH_CHARS = 8 << 20
TEXT_ROW_GROUP = 1024
TEXT_SCHEMA = pa.schema([("node", pa.int64()), ("clean", pa.large_string())])


def read_task(ctx: TaskContext, f: InputFile, params: dict, nparts: int) -> dict:
    from slimpipe.dedup.minhash import band_keys, exact_hash, signatures

    p = DedupParams.from_dict(params)
    t = ctx.index
    codes: dict[str, int] = {}
    rows: list[tuple] = []
    band_parts: list[np.ndarray] = []
    text_nodes: list[int] = []
    text_clean: list[str] = []
    batch_text: list[str] = []
    batch_node: list[int] = []
    batch_src: list[int] = []
    seen: set[tuple[int, int]] = set()
    size = signed = chars = 0
    stats: FileStats | None = None
    rejects = None

    def flush() -> None:
        nonlocal size, signed, chars
        if not batch_text:
            return
        keys = band_keys(signatures(batch_text, p), p.bands, p.rows)  # the band index is mixed in
        kr = np.empty(keys.size, KEYROW_DTYPE)
        kr["key"] = keys.ravel()
        kr["node"] = np.repeat(np.array(batch_node, np.int64), p.bands)
        kr["src"] = np.repeat(np.array(batch_src, np.int16), p.bands)
        band_parts.append(kr)
        if p.verify:
            text_nodes.extend(batch_node)
            text_clean.extend(batch_text)
        signed += len(batch_text)
        chars += size
        batch_text.clear()
        batch_node.clear()
        batch_src.clear()
        size = 0

    base = t << NODE_SHIFT
    for docs, rej, st in read_batches(f):
        if docs is not None:
            lines = docs.column("line").to_pylist()
            srcs = docs.column("source").to_pylist()
            sizes = docs.column("nbytes").to_pylist()
            for line, src, raw, nbytes in zip(lines, srcs, docs.column("text").to_pylist(), sizes, strict=True):
                code = codes.setdefault(src, len(codes))
                text = normalize(raw)
                if text is not raw:  # NFC changed it (rare): its UTF-8 size may differ from the reader's
                    nbytes = len(text.encode("utf-8"))
                clean = clean_for_hash(text)
                node = base | (line - f.first_line)
                if is_short(clean, p.min_chars):
                    rows.append((node, code, True, nbytes, len(clean), 0))
                    continue
                xh = exact_hash(clean)
                rows.append((node, code, False, nbytes, len(clean), xh))
                if (xh, code) in seen:
                    continue
                seen.add((xh, code))
                batch_text.append(clean)
                batch_node.append(node)
                batch_src.append(code)
                size += len(clean)
                if size >= SIGN_BATCH_CHARS:
                    flush()
        if st is not None:
            stats, rejects = st, rej
    flush()
    ws = ctx.ws
    arr = np.array(rows, dtype=PREPASS_DTYPE) if rows else np.empty(0, PREPASS_DTYPE)
    ws.save_array(f"read/t{t:05d}.npy", arr)
    rejects_rel = None
    if rejects is not None and rejects.num_rows:
        rejects_rel = f"read/t{t:05d}.rejects.parquet"
        ws.save_table(rejects_rel, pa.Table.from_batches([rejects], schema=REJECT_SCHEMA))
    long_ = arr[~arr["short"]]
    exact = np.empty(len(long_), KEYROW_DTYPE)
    exact["key"], exact["node"], exact["src"] = long_["xhash"], long_["node"], long_["src"]
    bands = np.concatenate(band_parts) if band_parts else np.empty(0, KEYROW_DTYPE)
    exact_piece = write_partitioned(ws, f"exact_rows/t{t:05d}.shuf", exact, partition_of(exact["key"], nparts), nparts)
    band_piece = write_partitioned(ws, f"band_rows/t{t:05d}.shuf", bands, partition_of(bands["key"], nparts), nparts)
    texts_rel = _save_texts(ctx, text_nodes, text_clean) if p.verify and text_nodes else None
    names = list(codes)
    assert stats is not None  # read_batches always ends with the stats
    return ReadResult(stats=stats, lines=stats.read, docs=len(arr), short=int(arr["short"].sum()),
                      by_source=_by_source(arr, names), sources=names, signed=signed, clean_chars=chars,
                      band_rows=len(bands),
                      exact_piece=exact_piece, band_piece=band_piece, texts=texts_rel, rejects=rejects_rel).to_dict()


def _save_texts(ctx: TaskContext, nodes: list[int], clean: list[str]) -> str:
    """The signed documents' cleaned texts, sorted by node in row groups of TEXT_ROW_GROUP (for --verify)."""
    rel = f"texts/t{ctx.index:05d}.parquet"
    order = np.argsort(np.array(nodes, np.int64), kind="stable")
    table = pa.table({"node": pa.array(nodes, pa.int64()), "clean": pa.array(clean, pa.large_string())})
    ctx.ws.save_table(rel, table.take(pa.array(order)), row_group_size=TEXT_ROW_GROUP)
    return rel


def _by_source(arr: np.ndarray, names: list[str]) -> dict[str, SourceCounts]:
    """Documents and bytes per source (the task's own codes), and how many of them are short."""
    out = {}
    for code, name in enumerate(names):
        sel = arr["src"] == code
        sh = sel & arr["short"]
        out[name] = SourceCounts(int(sel.sum()), int(arr["nbytes"][sel].sum()), int(sh.sum()),
                                 int(arr["nbytes"][sh].sum()))
    return out
