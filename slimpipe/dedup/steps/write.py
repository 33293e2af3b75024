"""The second read: kept documents go to a sink, short and duplicate documents to the removed table.

One task per input range streams the input again (the only other read besides the read step). The
kept documents go to a **sink**: :class:`KeptShards` writes ``kept/<source>/part-*.jsonl.zst`` (the
``dedup`` command); the SlimPajama pipeline passes its own sink, which scatters them straight into its
shuffle chunks, so the pipeline's output holds one copy of the corpus and no ``kept`` copy.
"""

from __future__ import annotations

import json
from collections import defaultdict

import numpy as np
import pyarrow as pa
from numba import njit

from slimpipe import storage
from slimpipe.dedup.results import WriteResult
from slimpipe.dedup.steps.common import NODE_SHIFT, REASON_NAMES, REMOVED_DTYPE, Catalog, read_rows
from slimpipe.io.readers import InputFile, read_batches
from slimpipe.io.writers import JsonlZstWriter
from slimpipe.runtime import TaskContext, Workspace, read_partition
from slimpipe.sources import set_name
from slimpipe.text.normalize import _utf8_buffers, nfc_changes

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

    def _writer(self, src: str) -> JsonlZstWriter:
        """The writer for the next document of ``src``: a new shard once the current one holds shard_bytes."""
        w = self.writers.get(src)
        if w is None or w.uncompressed >= self.sink.shard_bytes:
            if w is not None:
                self.shards.append(w.close().to_dict())
            rel = f"kept/{src}/part-{self.t:05d}-{self.counters[src]:03d}.jsonl.zst"
            self.counters[src] += 1
            w = self.writers[src] = JsonlZstWriter(self.sink.out, rel)
        return w

    def add(self, doc_id: str, src: str, text: str, meta: dict) -> None:
        self._writer(src).write({"text": text, "meta": meta})

    def add_lines(self, src: str, lines: np.ndarray, ends: np.ndarray, text_bytes: np.ndarray) -> None:
        """Ready-made JSON lines of ``src`` documents (uint8 ``lines``; line i ends at ``ends[i]``; its text has
        ``text_bytes[i]`` bytes), cut into shards exactly where :meth:`add` one by one would cut them: a new
        shard before the first line that finds the current one holding ``shard_bytes`` or more."""
        n = int(ends.shape[0])
        s = 0
        while s < n:
            w = self._writer(src)
            b0 = int(ends[s - 1]) if s else 0
            # the first line after which the shard holds shard_bytes: the next line opens a new one
            j = int(np.searchsorted(ends, self.sink.shard_bytes - w.uncompressed + b0, side="left"))
            k = min(max(j + 1, s + 1), n)
            w.write_lines(memoryview(lines[b0:int(ends[k - 1])]), k - s, int(text_bytes[s:k].sum()))
            s = k

    def close(self) -> dict:
        for w in self.writers.values():
            self.shards.append(w.close().to_dict())
        return {"shards": self.shards}

    def abort(self) -> None:
        for w in self.writers.values():
            w.abort()


# Each document's output line is ``{"text":TEXT,"meta":META}`` as ``json.dumps(record, ensure_ascii=False,
# separators=(",", ":"))`` writes it: TEXT is escaped by the kernel below, META is dumped in Python (small).
_HEAD = b'{"text":"'
_MID = b'","meta":'
_TAIL = b"}\n"
_HEX = np.frombuffer(b"0123456789abcdef", np.uint8)
# Extra bytes a UTF-8 byte takes once escaped: 1 for " \\ \\b \\t \\n \\f \\r, 5 for another byte below 0x20 (\\u00xx).
_EXTRA = np.zeros(256, np.uint8)
_EXTRA[:32] = 5
_EXTRA[[34, 92, 8, 9, 10, 12, 13]] = 1


@njit(inline="always")
def _span(d, data, offs, alt, alt_offs, alt_index):
    """(buffer, start, end) of document d's text: its NFC form in ``alt`` where it has one, else ``data``."""
    if alt_index[d] >= 0:
        return alt, alt_offs[alt_index[d]], alt_offs[alt_index[d] + 1]
    return data, offs[d], offs[d + 1]


@njit(cache=True, nogil=True)
def _escaped_lengths(data, offs, rows, alt, alt_offs, alt_index, extra):
    """Bytes of each selected text once JSON-escaped (without its quotes)."""
    out = np.empty(rows.shape[0], np.int64)
    for k in range(rows.shape[0]):
        src, i, e = _span(rows[k], data, offs, alt, alt_offs, alt_index)
        n = e - i
        for j in range(i, e):
            n += extra[src[j]]
        out[k] = n
    return out


@njit(cache=True, nogil=True)
def _json_lines(data, offs, rows, alt, alt_offs, alt_index, meta, meta_offs, whole, out, ends, head, mid, tail, hexd,
                extra):
    """Line k of ``out`` (ending at ``ends[k]``): head + the escaped text of document rows[k] + mid + its meta
    JSON (meta[meta_offs[k]:meta_offs[k+1]]) + tail; where ``whole[k]``, the meta slot holds the whole line.

    The text is escaped as CPython's ``json.dumps(..., ensure_ascii=False)`` does: ``"`` and ``\\`` get a
    backslash, \\b \\t \\n \\f \\r their short forms, every other byte below 0x20 ``\\u00xx`` (lower-case hex);
    every other byte (U+007F, U+2028, any UTF-8) is copied as it is.
    """
    n = 0
    for k in range(rows.shape[0]):
        m0 = meta_offs[k]
        m1 = meta_offs[k + 1]
        if whole[k]:
            out[n:n + m1 - m0] = meta[m0:m1]
            n += m1 - m0
            ends[k] = n
            continue
        out[n:n + head.shape[0]] = head
        n += head.shape[0]
        src, i, e = _span(rows[k], data, offs, alt, alt_offs, alt_index)
        for q in range(i, e):
            c = src[q]
            if extra[c] == 0:
                out[n] = c
                n += 1
                continue
            out[n] = 92
            if c == 34 or c == 92:
                out[n + 1] = c
            elif c == 10:
                out[n + 1] = 110
            elif c == 13:
                out[n + 1] = 114
            elif c == 9:
                out[n + 1] = 116
            elif c == 8:
                out[n + 1] = 98
            elif c == 12:
                out[n + 1] = 102
            else:
                out[n + 1] = 117
                out[n + 2] = 48
                out[n + 3] = 48
                out[n + 4] = hexd[c >> 4]
                out[n + 5] = hexd[c & 15]
                n += 4
            n += 2
        out[n:n + mid.shape[0]] = mid
        n += mid.shape[0]
        out[n:n + m1 - m0] = meta[m0:m1]
        n += m1 - m0
        out[n:n + tail.shape[0]] = tail
        n += tail.shape[0]
        ends[k] = n
    return n


def kept_meta(meta: str | None, src: str, doc_id: str) -> dict:
    """The meta of a kept document: the input's meta object (any other JSON value as ``{"meta": value}``)
    with ``redpajama_set_name`` and ``slimpipe_id`` set (a key it already has keeps its place)."""
    m = json.loads(meta) if meta else {}
    m = m if isinstance(m, dict) else {"meta": m}
    m["redpajama_set_name"] = set_name(src)
    m["slimpipe_id"] = doc_id
    return m


def json_lines(texts: pa.Array, rows: np.ndarray, metas: list[str], nfc: dict[int, bytes] | None = None,
               whole: np.ndarray | None = None, scratch: LineScratch | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(UTF-8 buffer, end of each line) of the output lines ``{"text":T,"meta":M}\\n`` of documents ``rows`` of
    ``texts`` (a string array without nulls), T escaped as ``json.dumps(ensure_ascii=False)`` does, M the
    ready JSON in ``metas`` (one per row). ``nfc`` replaces the UTF-8 of some documents (by index in
    ``texts``); where ``whole[k]``, ``metas[k]`` is the whole line already. The buffer comes from ``scratch``
    when given (valid until its next use)."""
    data, offs = _utf8_buffers(texts)
    rows = np.ascontiguousarray(rows, np.int64)
    alt_index = np.full(len(texts), -1, np.int64)
    pieces = []
    if nfc:
        for j, (d, b) in enumerate(nfc.items()):
            alt_index[d] = j
            pieces.append(b)
    alt_offs = np.zeros(len(pieces) + 1, np.int64)
    np.cumsum([len(b) for b in pieces], out=alt_offs[1:])
    alt = np.frombuffer(b"".join(pieces), np.uint8)
    mb = [m.encode("utf-8") for m in metas]
    meta_offs = np.zeros(len(mb) + 1, np.int64)
    np.cumsum([len(b) for b in mb], out=meta_offs[1:])
    meta = np.frombuffer(b"".join(mb), np.uint8)
    whole = np.zeros(rows.shape[0], np.bool_) if whole is None else whole
    esc = _escaped_lengths(data, offs, rows, alt, alt_offs, alt_index, _EXTRA) if rows.size else np.zeros(0, np.int64)
    fixed = len(_HEAD) + len(_MID) + len(_TAIL)
    total = int(np.where(whole, 0, esc + fixed).sum() + meta_offs[-1])
    out = scratch.get(total) if scratch is not None else np.empty(total, np.uint8)
    ends = np.empty(rows.shape[0], np.int64)
    if rows.size:
        n = _json_lines(data, offs, rows, alt, alt_offs, alt_index, meta, meta_offs, whole, out, ends,
                        np.frombuffer(_HEAD, np.uint8), np.frombuffer(_MID, np.uint8), np.frombuffer(_TAIL, np.uint8),
                        _HEX, _EXTRA)
        assert n == total
    return out, ends


def spliced_meta(meta: str | None, src: str, doc_id: str) -> str | None:
    """The compact JSON of :func:`kept_meta` made without parsing: ``meta`` (the reader's meta column, compact
    ``json.dumps`` of a value parsed from JSON, which dumps again to the same text) is an object holding neither
    key (nor, as far as a substring can tell, an escaped surrogate), so the two keys go before its closing brace;
    None when that cannot be told (then :func:`kept_meta` and ``json.dumps``)."""
    if (not meta or meta[0] != "{" or meta[-1] != "}" or '"redpajama_set_name"' in meta or '"slimpipe_id"' in meta
            or "\\ud" in meta):
        return None
    return (f'{meta[:-1]}{"," if len(meta) > 2 else ""}"redpajama_set_name":{json.dumps(set_name(src), ensure_ascii=False)}'
            f',"slimpipe_id":{json.dumps(doc_id, ensure_ascii=False)}}}')


def kept_lines(texts: pa.Array, rows: np.ndarray, metas: list[str | None], srcs: list[str], ids: list[str],
               nfc: dict[int, bytes] | None = None, scratch: LineScratch | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The output lines of documents ``rows`` of ``texts`` with the reader's ``metas`` (see :func:`json_lines`),
    byte for byte what :meth:`slimpipe.io.writers.JsonlZstWriter.write` makes of ``{"text": text, "meta":
    kept_meta(...)}``: a meta holding a lone surrogate (valid JSON, not UTF-8) makes the whole line
    ``ensure_ascii=True``, text included."""
    dumped = []
    whole = np.zeros(len(metas), np.bool_)
    for k, (meta, src, doc_id) in enumerate(zip(metas, srcs, ids, strict=True)):
        js = spliced_meta(meta, src, doc_id)
        if js is None:
            js = json.dumps(kept_meta(meta, src, doc_id), ensure_ascii=False, separators=(",", ":"))
        try:
            js.encode("utf-8")
        except UnicodeEncodeError:
            d = int(rows[k])
            text = nfc[d].decode("utf-8") if nfc and d in nfc else texts[d].as_py()
            js = json.dumps({"text": text, "meta": kept_meta(meta, src, doc_id)}, ensure_ascii=True,
                            separators=(",", ":")) + "\n"
            whole[k] = True
        dumped.append(js)
    return json_lines(texts, rows, dumped, nfc, whole, scratch)


class LineScratch:
    """The output buffer of :func:`json_lines`, reused from one batch to the next (fresh pages cost)."""

    def __init__(self) -> None:
        self.buf = np.empty(0, np.uint8)

    def get(self, n: int) -> np.ndarray:
        if self.buf.shape[0] < n:
            self.buf = np.empty(n + (n >> 3), np.uint8)
        return self.buf[:n]


def _member(sorted_keys: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(found, index of the last equal key) of each ``x`` in ascending ``sorted_keys``."""
    idx = np.searchsorted(sorted_keys, x, side="right") - 1
    found = idx >= 0
    found[found] = sorted_keys[idx[found]] == x[found]
    return found, idx


def write_task(ctx: TaskContext, f: InputFile, inputs: str, sink, out: str) -> dict:
    """One input range read again a batch at a time: each document's fate (short, removed, kept) is looked up
    with numpy, NFC is applied only to documents whose characters may need it (the read step's scan), and the
    kept documents' JSON lines are built in one compiled pass per batch and handed to the sink per run of one
    source (:meth:`_KeptWriter.add_lines`); a sink without ``add_lines`` gets :meth:`add` per document. Python
    works per removed document (its row in the removed table) and per kept document only for its meta."""
    ws = ctx.ws
    removed_pieces = ws.inputs(inputs)
    t = ctx.index
    cat = Catalog.load(ws)
    pre = read_rows(ws, t)
    short = np.sort(pre["node"][pre["short"]].astype(np.int64))
    rem = read_partition(ws, removed_pieces, t, REMOVED_DTYPE)
    rem = rem[np.argsort(rem["node"], kind="stable")]  # a node listed twice: the last one counts, as in a dict
    rem_nodes = np.ascontiguousarray(rem["node"], np.int64)
    cols: dict[str, list] = {k: [] for k in REMOVED_COLUMNS}
    kept: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    writer = sink.open(ws, t)
    bulk = hasattr(writer, "add_lines")
    scratch = LineScratch()
    base = t << NODE_SHIFT
    try:
        for docs, _, _ in read_batches(f):
            if docs is None or not docs.num_rows:
                continue
            _write_batch(docs, f, base, short, rem, rem_nodes, cat, cols, kept, writer, bulk, scratch)
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


def _write_batch(docs: pa.RecordBatch, f: InputFile, base: int, short: np.ndarray, rem: np.ndarray,
                 rem_nodes: np.ndarray, cat: Catalog, cols: dict, kept: dict, writer,
                 bulk: bool, scratch: LineScratch) -> None:
    node = base | (docs.column("line").to_numpy() - f.first_line)
    is_short, _ = _member(short, node)
    is_rem, ridx = _member(rem_nodes, node)
    is_rem &= ~is_short
    texts = docs.column("text")
    nbytes = docs.column("nbytes").to_numpy().copy()
    nfc = nfc_changes(texts)
    for d, b in nfc.items():  # NFC changed it: the reader's byte count is of the raw text
        nbytes[d] = len(b)
    gone = np.flatnonzero(is_short | is_rem)
    if gone.size:
        ids = docs.column("id").take(pa.array(gone)).to_pylist()
        srcs = docs.column("source").take(pa.array(gone)).to_pylist()
        for d, doc_id, src in zip(gone.tolist(), ids, srcs, strict=True):
            if is_short[d]:
                _add_removed(cols, doc_id, src, "short", None, None, int(nbytes[d]))
            else:
                r = rem[ridx[d]]
                _add_removed(cols, doc_id, src, REASON_NAMES[int(r["reason"])], cat.stable_node(int(r["label"])),
                             cat.doc_id(int(r["keeper"]), int(r["ksrc"])), int(nbytes[d]))
    keep = np.flatnonzero(~(is_short | is_rem))
    if not keep.size:
        return
    sel = pa.array(keep)
    ids = docs.column("id").take(sel).to_pylist()
    srcs = docs.column("source").take(sel).to_pylist()
    metas = docs.column("meta").take(sel).to_pylist()
    # runs of one source, in document order (the shards roll in the same order as document by document)
    cut = [0] + [k for k in range(1, len(srcs)) if srcs[k] != srcs[k - 1]] + [len(srcs)]
    kb = nbytes[keep]
    if not bulk:
        for k, d in enumerate(keep.tolist()):
            text = nfc[d].decode("utf-8") if d in nfc else texts[d].as_py()
            writer.add(ids[k], srcs[k], text, kept_meta(metas[k], srcs[k], ids[k]))
    else:
        lines, ends = kept_lines(texts, keep, metas, srcs, ids, nfc, scratch)
        for a, b in zip(cut[:-1], cut[1:], strict=True):
            start = int(ends[a - 1]) if a else 0
            writer.add_lines(srcs[a], lines[start:int(ends[b - 1])], ends[a:b] - start, kb[a:b])
    for a, b in zip(cut[:-1], cut[1:], strict=True):
        k = kept[srcs[a]]
        k[0] += b - a
        k[1] += int(kb[a:b].sum())


def _add_removed(cols: dict, doc_id: str, src: str, reason: str, cluster: int | None, dup_of: str | None,
                 nbytes: int) -> None:
    cols["id"].append(doc_id)
    cols["source"].append(src)
    cols["reason"].append(reason)
    cols["cluster"].append(cluster)
    cols["duplicate_of"].append(dup_of)
    cols["nbytes"].append(nbytes)
