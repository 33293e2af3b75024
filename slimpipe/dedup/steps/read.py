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
from slimpipe.text.normalize import Scratch, clean_batch

# The reader's batches are cut at this many text bytes: a batch's cleaned code points (4 bytes each) and
# UTF-8 stay a bounded multiple of it whatever the documents' sizes.
READ_BATCH_BYTES = 16 << 20
TEXT_ROW_GROUP = 1024
TEXT_SCHEMA = pa.schema([("node", pa.int64()), ("clean", pa.large_string())])


def read_task(ctx: TaskContext, f: InputFile, params: dict, nparts: int) -> dict:
    """One input range: every batch the reader gives is cleaned, hashed and signed in compiled passes over
    its Arrow buffers (:func:`slimpipe.text.normalize.clean_batch`, :func:`slimpipe.dedup.minhash.band_keys_of`);
    Python works per batch and per source, not per document."""
    from slimpipe.dedup.minhash import band_keys_of, exact_hashes_utf8

    p = DedupParams.from_dict(params)
    t = ctx.index
    codes: dict[str, int] = {}
    row_parts: list[np.ndarray] = []
    band_parts: list[np.ndarray] = []
    text_nodes: list[np.ndarray] = []
    text_clean: list[pa.Array] = []
    seen: dict[int, np.ndarray] = {}  # per source code: the sorted exact hashes already signed in this task
    signed = chars = 0
    stats: FileStats | None = None
    rejects = None

    scratch = Scratch()  # the cleaned buffers of one batch at a time, reused
    base = t << NODE_SHIFT
    for docs, rej, st in read_batches(f, max_bytes=READ_BATCH_BYTES, lean=True):
        if st is not None:
            stats, rejects = st, rej
        if docs is None or not docs.num_rows:
            continue
        src = _source_codes(docs.column("source"), codes)
        cb = clean_batch(docs.column("text"), scratch)
        clen = cb.lengths()
        short = clen < p.min_chars
        longi = np.flatnonzero(~short)
        xh = np.zeros(len(cb), np.uint64)
        xh[longi] = exact_hashes_utf8(cb.utf8, cb.offsets, longi)
        rows = np.empty(len(cb), PREPASS_DTYPE)
        rows["node"] = base | (docs.column("line").to_numpy() - f.first_line)
        rows["src"], rows["short"], rows["nbytes"], rows["clen"], rows["xhash"] = src, short, cb.nbytes, clen, xh
        row_parts.append(rows)
        sign = _first_of_each(longi, xh, src, seen)  # a repeat of an earlier text (and source) is not signed again
        if not sign.size:
            continue
        keys = band_keys_of(cb.cp, cb.cp_offsets, sign, p)  # the band index is mixed in
        kr = np.empty(keys.size, KEYROW_DTYPE)
        kr["key"] = keys.ravel()
        kr["node"] = np.repeat(rows["node"][sign], p.bands)
        kr["src"] = np.repeat(src[sign], p.bands)
        band_parts.append(kr)
        if p.verify:
            text_nodes.append(rows["node"][sign])
            text_clean.append(cb.strings().take(pa.array(sign)))
        signed += int(sign.size)
        chars += int(clen[sign].sum())
    ws = ctx.ws
    arr = np.concatenate(row_parts) if row_parts else np.empty(0, PREPASS_DTYPE)
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


def _source_codes(sources: pa.Array, codes: dict[str, int]) -> np.ndarray:
    """The task's code of each document's source; a new source gets the next code (first appearance order)."""
    enc = sources.dictionary_encode()
    lut = np.array([codes.setdefault(name, len(codes)) for name in enc.dictionary.to_pylist()], np.int16)
    return lut[enc.indices.to_numpy(zero_copy_only=False)]


def _first_of_each(cand: np.ndarray, xh: np.ndarray, src: np.ndarray, seen: dict[int, np.ndarray]) -> np.ndarray:
    """The documents of ``cand`` (ascending) whose (exact hash, source) neither an earlier one of ``cand`` nor
    ``seen`` holds; ``seen`` takes them in."""
    keep = np.zeros(cand.size, bool)
    csrc = src[cand]
    for code in np.unique(csrc).tolist():
        at = np.flatnonzero(csrc == code)
        hashes = xh[cand[at]]
        uniq, first = np.unique(hashes, return_index=True)
        old = seen.get(code)
        new = ~np.isin(uniq, old, assume_unique=True) if old is not None else np.ones(uniq.size, bool)
        keep[at[first[new]]] = True
        seen[code] = uniq[new] if old is None else np.union1d(old, uniq[new])
    return cand[keep]


def _save_texts(ctx: TaskContext, nodes: list[np.ndarray], clean: list[pa.Array]) -> str:
    """The signed documents' cleaned texts, sorted by node in row groups of TEXT_ROW_GROUP (for --verify)."""
    rel = f"texts/t{ctx.index:05d}.parquet"
    node = np.concatenate(nodes)
    order = np.argsort(node, kind="stable")
    table = pa.table({"node": pa.array(node, pa.int64()), "clean": pa.concat_arrays(clean)})
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
