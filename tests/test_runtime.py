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


def _job(job: int, folder: str, window: int, block_from: int, shared=None) -> dict:
    """Records its start; the first ``window`` jobs wait for each other (so a window too wide would let
    later jobs start meanwhile); jobs from ``block_from`` on wait for a release that never comes (30 s
    bound), so only a cancellation ends them early."""
    import os
    import time

    def count(prefix: str) -> int:
        return sum(name.startswith(prefix) for name in os.listdir(folder))

    open(os.path.join(folder, f"start-{job}"), "w").close()
    # every job at least `window` places before this one has finished: it was submitted after them
    late = [j for j in range(job - window + 1) if not os.path.exists(os.path.join(folder, f"end-{j}"))]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and ((job < window and count("start-") < window) or job >= block_from):
        time.sleep(0.005)
    open(os.path.join(folder, f"end-{job}"), "w").close()
    return {"job": job, "late": late, "shared": None if shared is None else int(shared.sum())}


def _fail_odd(job: int) -> int:
    if job % 2:
        raise ValueError(f"job {job} is odd")
    return job


def test_executor_map_window_order_cached_stop_errors_and_shared_inputs(tmp_path: Path, ray_session) -> None:
    import os
    import sys

    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import tests/
    ex = Executor(label="t", progress=False)  # no workspace: plain tasks, as mix, propose and scan use it

    def started(folder: Path) -> list[int]:
        return sorted(int(n.split("-")[1]) for n in os.listdir(folder) if n.startswith("start-"))

    # an ordered window of 2 on room for 4 (half-CPU tasks on 2 CPUs); results in job order; a shared input
    a = tmp_path / "a"
    a.mkdir()
    shared = ex.share(np.arange(10))
    res = ex.map(_job, range(6), (str(a), 2, 99, shared), window=2, num_cpus=0.5)
    assert [r["job"] for r in res] == list(range(6))
    assert [r["late"] for r in res] == [[]] * 6  # never more than 2 in flight
    assert {r["shared"] for r in res} == {45}

    # cached results skip their jobs
    b = tmp_path / "b"
    b.mkdir()
    res = ex.map(_job, range(4), (str(b), 1, 99), cached=[None, "c1", None, "c3"], window=1)
    assert [r if isinstance(r, str) else r["job"] for r in res] == [0, "c1", 2, "c3"]
    assert started(b) == [0, 2]

    # an early stop once jobs 0 and 1 are in: the blocked jobs in flight are cancelled, nothing later starts
    c = tmp_path / "c"
    c.mkdir()
    res = ex.map(_job, range(10), (str(c), 2, 2), window=2, num_cpus=0.5,
                 stop=lambda r: r[0] is not None and r[1] is not None)
    assert [r["job"] for r in res[:2]] == [0, 1] and res[2:] == [None] * 8
    assert max(started(c)) <= 3  # at most two in flight when the stop came
    # Whether the blocked jobs 2 and 3 also stop early is Ray's to decide: a non-forced ray.cancel raises
    # KeyboardInterrupt in a running task on a best-effort basis (one full test run saw job 2 run to its
    # 30 s bound). The executor's promise is the one checked: their results are dropped, nothing later starts.

    # a failure is raised, or becomes its result with on_error; call runs one task and returns its value
    with pytest.raises(Exception, match=r"job [13] is odd"):
        ex.map(_fail_odd, range(4))
    assert ex.map(_fail_odd, range(4), on_error=lambda i, e: -i) == [0, -1, 2, -3]
    assert ex.call(_fail_odd, 4) == 4
