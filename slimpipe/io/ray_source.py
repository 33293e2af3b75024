"""Ray Data view of the readers: one read task per file (or per byte range of a plain ``.jsonl``).

``read_documents(paths)`` returns a ``ray.data.Dataset`` with :data:`DOC_SCHEMA` rows. Rejects and
per-file stats do not fit a row stream, so each read task writes them under ``side_dir`` (one Parquet
and one JSON per task, atomically); :func:`collect_side_outputs` gathers them afterwards.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from slimpipe.io.readers import (
    DOC_SCHEMA,
    REJECT_SCHEMA,
    FileStats,
    InputFile,
    discover_files,
    read_batches,
    split_ranges,
)


def _task_key(f: InputFile) -> str:
    return hashlib.sha1(f"{f.path}:{f.start}:{f.end}".encode()).hexdigest()[:16]


def _read_one(f: InputFile, side_dir: str | None):
    for docs, rejects, stats in read_batches(f):
        if docs is not None:
            yield pa.Table.from_batches([docs], schema=DOC_SCHEMA)
        if stats is not None and side_dir is not None:
            key = _task_key(f)
            base = Path(side_dir)
            base.mkdir(parents=True, exist_ok=True)
            tmp = base / f".{key}.parquet.tmp"
            pq.write_table(pa.Table.from_batches([rejects], schema=REJECT_SCHEMA), tmp)
            os.replace(tmp, base / f"{key}.rejects.parquet")
            tmp = base / f".{key}.json.tmp"
            tmp.write_text(json.dumps(stats.to_dict()))
            os.replace(tmp, base / f"{key}.stats.json")


class RedPajamaDatasource(Datasource):
    """Ray Data datasource over RedPajama-style inputs."""

    def __init__(self, paths: list[str], source: str | None = None, side_dir: str | None = None,
                 range_bytes: int = 256 << 20):
        self.files = split_ranges(discover_files(paths, source=source), range_bytes)
        self.side_dir = side_dir

    def estimate_inmemory_data_size(self) -> int | None:
        return sum(f.size for f in self.files)

    def get_read_tasks(self, parallelism: int, **_kwargs) -> list[ReadTask]:
        tasks = []
        for f in self.files:
            meta = BlockMetadata(num_rows=None, size_bytes=f.size, exec_stats=None, input_files=(f.path,))
            tasks.append(ReadTask(lambda f=f: _read_one(f, self.side_dir), meta, schema=DOC_SCHEMA))
        return tasks


def read_documents(paths: list[str], source: str | None = None, side_dir: str | None = None):
    """A ``ray.data.Dataset`` of documents from files or folders."""
    import ray

    ds = RedPajamaDatasource([str(p) for p in paths], source=source, side_dir=side_dir)
    return ray.data.read_datasource(ds, override_num_blocks=max(1, len(ds.files)))


def collect_side_outputs(side_dir: str | Path) -> tuple[pa.Table, list[FileStats]]:
    """Rejects and per-file stats written by the read tasks."""
    side = Path(side_dir)
    rejects = [pq.read_table(p) for p in sorted(side.glob("*.rejects.parquet"))]
    stats = [FileStats(**json.loads(p.read_text())) for p in sorted(side.glob("*.stats.json"))]
    table = pa.concat_tables(rejects) if rejects else REJECT_SCHEMA.empty_table()
    return table, sorted(stats, key=lambda s: s.file)
