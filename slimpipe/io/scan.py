"""Scan inputs on Ray: one task per file (or range), returning per-file stats and rejects.

The first stage of every job and the ``slimpipe inspect`` command: it tells the user what is in their
sources and what could not be read, before any heavy work starts.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import pyarrow as pa

from slimpipe.io.readers import (
    REJECT_SCHEMA,
    FileStats,
    InputFile,
    discover_files,
    read_batches,
    split_ranges,
)


def _scan_one(f: InputFile) -> tuple[dict, pa.Table, dict[str, list[int]]]:
    per_source: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    stats, rejects = None, None
    for docs, rej, st in read_batches(f):
        if docs is not None:
            for src, nb in zip(docs.column("source").to_pylist(), docs.column("nbytes").to_pylist(), strict=True):
                per_source[src][0] += 1
                per_source[src][1] += nb
        if st is not None:
            stats, rejects = st, rej
    return stats.to_dict(), pa.Table.from_batches([rejects], schema=REJECT_SCHEMA), dict(per_source)


def scan(paths: list[str | Path], source: str | None = None, progress: bool = True,
         ray_address: str | None = None) -> dict:
    """Count documents, bytes and rejects per source and per file, reading files in parallel on Ray.

    Inputs are listed before Ray starts, so a missing path fails at once.
    """
    from slimpipe.engine import ensure_ray
    from slimpipe.runtime import Executor

    files = split_ranges(discover_files(paths, source=source))
    ensure_ray(ray_address)
    # sources may live on remote storage: the runtime's tasks reach them as the driver does
    scanned = Executor(label="scan", progress=progress).map(_scan_one, files, unit="files")
    per_file: dict[str, FileStats] = {}
    per_source: dict[str, dict[str, int]] = defaultdict(lambda: {"docs": 0, "bytes": 0})
    rejects = []
    for st, rej, srcs in scanned:  # in file (and range) order, whatever order the tasks finished in
        s = FileStats(**st)
        prev = per_file.get(s.file)
        per_file[s.file] = _merge(prev, s) if prev else s
        rejects.append(rej)
        for src, (n, nb) in srcs.items():
            per_source[src]["docs"] += n
            per_source[src]["bytes"] += nb
    table = pa.concat_tables(rejects) if rejects else REJECT_SCHEMA.empty_table()
    stats = sorted(per_file.values(), key=lambda s: s.file)
    return {
        "files": [s.to_dict() for s in stats],
        "sources": {k: per_source[k] for k in sorted(per_source)},
        "read": sum(s.read for s in stats),
        "accepted": sum(s.accepted for s in stats),
        "rejected": sum(s.rejected for s in stats),
        "rejects": table,
    }


def _merge(a: FileStats, b: FileStats) -> FileStats:
    """Combine the stats of two byte ranges of one file."""
    reasons = dict(a.reasons)
    for k, v in b.reasons.items():
        reasons[k] = reasons.get(k, 0) + v
    status = a.status if a.status != "ok" else b.status
    return FileStats(a.file, a.source, status, a.read + b.read, a.accepted + b.accepted, a.rejected + b.rejected,
                     a.text_bytes + b.text_bytes, a.error or b.error, reasons)
