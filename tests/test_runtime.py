"""The runtime: bounded shuffle files, manifests as the only source of inputs, the executor's resume,
stats and cleanup, on local paths and on a real S3-compatible server."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from slimpipe import storage
from slimpipe.runtime import (
    Executor,
    ShuffleInputMissing,
    Step,
    Workspace,
    read_partition,
    read_table_partition,
    write_partitioned,
)
from slimpipe.runtime.shuffle import write_table_partitioned

ROW = np.dtype([("key", "<u8"), ("node", "<i8")])


def _shuffle_roundtrip(ws: Workspace) -> None:
    rng = np.random.default_rng(0)
    nparts, maps = 7, 4
    pieces, want = [], {p: [] for p in range(nparts)}
    for m in range(maps):
        n = 0 if m == 2 else 50  # an empty map task writes nothing
        rows = np.empty(n, ROW)
        rows["key"] = rng.integers(0, 1 << 60, n, dtype=np.uint64)
        rows["node"] = np.arange(n) + 1000 * m
        part = (rows["node"] % 5).astype(np.int64)  # partitions 5 and 6 stay empty everywhere
        pieces.append(write_partitioned(ws, f"map/m{m}.shuf", rows, part, nparts))
        for p in range(nparts):
            want[p].append(rows[part == p])
    assert pieces[2] is None
    assert len([p for p in pieces if p]) == 3  # O(map tasks) files, not maps x partitions
    for p in range(nparts):
        got = read_partition(ws, pieces, p, ROW)
        assert np.array_equal(got, np.concatenate(want[p])), p
    pairs = np.stack([np.arange(10), np.arange(10) * 2], axis=1).astype(np.int64)
    piece = write_partitioned(ws, "map/pairs.shuf", pairs, np.arange(10) % 3, 3)
    assert np.array_equal(read_partition(ws, [piece], 1, np.dtype("<i8"), width=2), pairs[1::3])
    assert read_partition(ws, [None], 0, np.dtype("<i8"), width=2).shape == (0, 2)
    table = pa.table({"k": np.arange(9), "text": [f"t{i}" for i in range(9)]})
    tp = write_table_partitioned(ws, "map/t.parquet", table, np.arange(9) % 4)
    assert read_table_partition(ws, [tp], 2, table.schema).column("k").to_pylist() == [2, 6]
    assert read_table_partition(ws, [tp, None], 3, table.schema).num_rows == 2
    # a listed input that is gone is an error naming it, never a silently smaller partition
    storage.delete_file(ws.path("map/m1.shuf"))
    with pytest.raises(ShuffleInputMissing, match="m1.shuf"):
        read_partition(ws, pieces, 0, ROW)
    storage.delete_file(ws.path("map/t.parquet"))
    with pytest.raises(ShuffleInputMissing, match="t.parquet"):
        read_table_partition(ws, [tp], 0, table.schema)


def test_shuffle_local(tmp_path: Path) -> None:
    _shuffle_roundtrip(Workspace(tmp_path / "out"))


def test_shuffle_large_files_and_many_partitions(tmp_path: Path) -> None:
    """Offsets and rows beyond the first block read: the seek paths give the same rows."""
    ws = Workspace(tmp_path / "out")
    n, nparts = 40_000, 10_000  # 80 KB of offsets, 640 KB of rows
    rows = np.empty(n, ROW)
    rows["key"] = np.arange(n, dtype=np.uint64) * np.uint64(7919)
    rows["node"] = np.arange(n)
    part = np.where(np.arange(n) < 30_000, 0, np.arange(n) % nparts)  # one big partition, many small ones
    piece = write_partitioned(ws, "big.shuf", rows, part, nparts)
    for p in (0, 1, 4999, nparts - 1):
        assert np.array_equal(read_partition(ws, [piece], p, ROW), rows[part == p]), p


def test_shuffle_on_s3(s3_server: dict) -> None:
    ws = Workspace(f"{s3_server['url']}/rt-{uuid.uuid4().hex[:8]}")
    _shuffle_roundtrip(ws)
    ws.delete()


def test_scratch_workspace_is_separate(tmp_path: Path) -> None:
    a = Workspace(tmp_path / "a", scratch=tmp_path / "scratch")
    b = Workspace(tmp_path / "b", scratch=tmp_path / "scratch")
    assert a.root != b.root and a.root.startswith(str(tmp_path / "scratch"))
    assert Workspace(tmp_path / "a").root == str(tmp_path / "a" / "_work")


def _square(ctx, x: int, log: str) -> dict:
    with open(log, "a") as fh:
        fh.write(f"{x}\n")
    ctx.ws.save_array(f"sq/{ctx.index}.npy", np.array([x * x]))
    return {"x": x * x}


def test_executor_resumes_records_and_cleans_up(tmp_path: Path, ray_session) -> None:
    import sys

    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import tests/
    ws = Workspace(tmp_path / "out")
    log = tmp_path / "calls.log"
    ex = Executor(ws, "t", progress=False)
    step = Step("square", _square, [(i, str(log)) for i in range(5)], memory=64 << 20)
    assert [r["x"] for r in ex.run(step)] == [0, 1, 4, 9, 16]
    assert ex.intermediates["square"]["files"] == 5 and ex.intermediates["square"]["bytes"] > 0
    assert sorted(log.read_text().split()) == ["0", "1", "2", "3", "4"]
    # a committed step is not run again, a half-done one only runs its unfinished tasks
    assert [r["x"] for r in Executor(ws, "t", progress=False).run(step)] == [0, 1, 4, 9, 16]
    storage.delete_file(ws.manifest_path("square"))
    storage.delete_file(ws.path("square", "task00003.json"))
    assert [r["x"] for r in Executor(ws, "t", progress=False).run(step)] == [0, 1, 4, 9, 16]
    assert sorted(log.read_text().split()) == ["0", "1", "2", "3", "3", "4"]
    assert np.array_equal(ws.load_array("sq/4.npy"), [16])
    ex.cleanup(keep_intermediates=True)
    assert storage.exists(ws.root)
    ex.cleanup()
    assert not storage.exists(ws.root)
