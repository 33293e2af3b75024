"""A bounded shuffle: one file per map task holding all its partitions.

Arrays (numpy rows: band keys, edges, component labels) go to one ``.shuf`` file per map task::

    b"SPSHUF1\\n" | npy(offsets: int64[nparts + 1]) | npy(rows sorted by partition)

Partition ``p`` is ``rows[offsets[p]:offsets[p + 1]]``; a reducer reads two small byte ranges of
each map file (its offsets, then its rows) by seeking, so a shuffle writes O(map tasks) files, never
O(map tasks × partitions), and an empty partition takes no bytes. A map task with no rows at all
writes no file. Tables (rows with text) go to one parquet file per map task with one row group per
non-empty partition, the partition of each row group in the file's metadata.

Reducers get the list of map outputs from the map step's committed manifest (the ``piece`` dicts the
map tasks returned). A listed file that is missing is an error that names it; nothing is found by
listing a folder.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from slimpipe import storage
from slimpipe.runtime.workspace import Workspace

MAGIC = b"SPSHUF1\n"
_HEAD = 64 << 10
_MAX_HEADER = 4096  # an npy header is a few hundred bytes


class ShuffleInputMissing(RuntimeError):
    """A shuffle input named by a committed manifest is not in the workspace."""


def _npy_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(a), allow_pickle=False)
    return buf.getvalue()


def write_partitioned(ws: Workspace, rel: str, rows: np.ndarray, part: np.ndarray, nparts: int) -> dict | None:
    """Write ``rows`` (partition of each in ``part``) as one map output; returns its piece (None if empty)."""
    if len(rows) == 0:
        return None
    order = np.argsort(part, kind="stable")
    counts = np.bincount(part, minlength=nparts)
    offsets = np.zeros(nparts + 1, np.int64)
    np.cumsum(counts, out=offsets[1:])
    data = MAGIC + _npy_bytes(offsets) + _npy_bytes(rows[order])
    ws.write_bytes(rel, data)
    return {"path": rel, "rows": int(len(rows)), "bytes": len(data), "kind": "array"}


def _read_header(fh) -> tuple[np.dtype, tuple, int]:
    """Parse an npy header at the current position; returns (dtype, shape, data offset)."""
    version = np.lib.format.read_magic(fh)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
    else:
        shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
    return dtype, shape, fh.tell()


def _read_slice(fh, p: int, name: str) -> tuple[int, int, np.dtype | None, tuple, bytes]:
    """Partition ``p``'s rows of one map file: (lo, hi, dtype, shape, raw bytes).

    The file's first 64 KiB come in one read (magic, offsets and usually the rows' header and small
    partitions too), so on an object store a partition costs one or two ranged GETs per map file.
    """
    head = fh.read(_HEAD)
    if not head.startswith(MAGIC):
        raise ValueError(f"{name}: not a shuffle file")
    buf = io.BytesIO(head)
    buf.seek(len(MAGIC))
    _, oshape, ostart = _read_header(buf)
    at = ostart + 8 * p
    if at + 16 <= len(head):
        lo, hi = np.frombuffer(head[at:at + 16], np.int64).tolist()
    else:
        fh.seek(at)
        lo, hi = np.frombuffer(fh.read(16), np.int64).tolist()
    if hi == lo:
        return lo, hi, None, (), b""
    rpos = ostart + 8 * oshape[0]
    if rpos + _MAX_HEADER <= len(head):
        block, base = head, 0
    else:
        fh.seek(rpos)
        block, base = fh.read(_MAX_HEADER), rpos
    hbuf = io.BytesIO(block)
    hbuf.seek(rpos - base)
    rdtype, rshape, rel = _read_header(hbuf)
    rstart = base + rel
    row_bytes = rdtype.itemsize * int(np.prod(rshape[1:], dtype=np.int64))
    first, last = rstart + lo * row_bytes, rstart + hi * row_bytes
    if last <= len(head):
        raw = head[first:last]
    else:
        fh.seek(first)
        raw = fh.read(last - first)
    if len(raw) != last - first:
        raise ValueError(f"{name}: truncated shuffle file")
    return lo, hi, rdtype, rshape, raw


def _missing(ws: Workspace, piece: dict) -> ShuffleInputMissing:
    return ShuffleInputMissing(f"shuffle input missing: {ws.path(piece['path'])} "
                               "(listed in a committed manifest; the workspace was changed or partly deleted)")


def read_partition(ws: Workspace, pieces: list[dict | None], p: int, dtype: np.dtype,
                   width: int | None = None) -> np.ndarray:
    """Partition ``p`` of every listed map output, concatenated in map-task order.

    ``width`` is the second dimension of 2-D rows (e.g. edge pairs), None for 1-D structured rows.
    """
    parts = []
    for piece in pieces:
        if piece is None:
            continue
        try:
            fh = storage.open_input(ws.path(piece["path"]))
        except (FileNotFoundError, OSError) as exc:
            if not storage.exists(ws.path(piece["path"])):
                raise _missing(ws, piece) from exc
            raise
        with fh:
            lo, hi, rdtype, rshape, raw = _read_slice(fh, p, ws.path(piece["path"]))
        if hi == lo:
            continue
        arr = np.frombuffer(raw, rdtype).copy()
        parts.append(arr.reshape((hi - lo, *rshape[1:])))
    if parts:
        return np.concatenate(parts)
    return np.empty((0, width) if width else 0, dtype)


def write_table_partitioned(ws: Workspace, rel: str, table: pa.Table, part: np.ndarray) -> dict | None:
    """One parquet file per map task, one row group per non-empty partition (rows keep their order)."""
    if table.num_rows == 0:
        return None
    order = np.argsort(part, kind="stable")
    sorted_part = part[order]
    table = table.take(pa.array(order))
    present, starts, counts = np.unique(sorted_part, return_index=True, return_counts=True)
    meta = {b"slimpipe.partitions": json.dumps(present.tolist()).encode()}
    buf = io.BytesIO()
    with pq.ParquetWriter(buf, table.schema.with_metadata(meta), compression="zstd") as w:
        for s, n in zip(starts.tolist(), counts.tolist(), strict=True):
            w.write_table(table.slice(s, n), row_group_size=n)
    ws.write_bytes(rel, buf.getvalue())
    return {"path": rel, "rows": table.num_rows, "bytes": buf.tell(), "kind": "table"}


def read_table_partition(ws: Workspace, pieces: list[dict | None], p: int, schema: pa.Schema) -> pa.Table:
    """Partition ``p`` of every listed table output, concatenated in map-task order."""
    tables = []
    for piece in pieces:
        if piece is None:
            continue
        if not storage.exists(ws.path(piece["path"])):
            raise _missing(ws, piece)
        pf = ws.open_parquet(piece["path"])
        try:
            present = json.loads(pf.schema_arrow.metadata[b"slimpipe.partitions"])
            if p in present:
                tables.append(pf.read_row_group(present.index(p)).replace_schema_metadata(None))
        finally:
            pf.close()
    return pa.concat_tables(tables) if tables else schema.empty_table()
