"""The dedup job on Ray: read → normalise/clean/short → exact pre-pass → signatures → buckets →
(verify) → components → keep → write → report.

Each heavy stage is a set of Ray tasks over input files (or byte ranges) or over hash partitions of
keys/edges, exchanging data through ``OUT/_work`` on disk. No task holds every document's text,
signature or edge: documents are streamed per file, band keys and exact hashes are hash-partitioned,
and the connected components run in one process only when the edge list fits ``max_edges_in_memory``;
otherwise they run as distributed star contraction over edge partitions. Every task output is atomic
and marked, so a killed job resumes and ends byte-identical to an uninterrupted one.

Node ids are ``file_index << 40 | line``; the removed table and reports turn them back into the stable
``source/file:line`` ids.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from slimpipe.dedup.components import (
    hash_partition,
    large_star,
    large_star_map,
    small_star,
    small_star_map,
    star_labels,
    union_find,
)
from slimpipe.dedup.graph import EDGE_DTYPE, chain_edges, local_only, star_edges, unique_edges
from slimpipe.dedup.params import DedupParams
from slimpipe.io.readers import (
    REJECT_SCHEMA,
    FileStats,
    InputFile,
    discover_files,
    iter_columns,
    read_batches,
    split_ranges,
)
from slimpipe.io.writers import JsonlZstWriter, ShardInfo, atomic_write_json, write_manifest
from slimpipe.sources import SET_NAMES, SOURCES
from slimpipe.stages import StageRunner
from slimpipe.text.normalize import clean_for_hash, is_short, normalize
from slimpipe.workdir import WorkDir, load_many, load_npy, remove_temporaries, save_npy, save_parquet

NODE_SHIFT = 40
LINE_MASK = (1 << NODE_SHIFT) - 1
SRC_INDEX = {s: i for i, s in enumerate(SOURCES)}

PREPASS_DTYPE = np.dtype(
    [("node", "<i8"), ("src", "i1"), ("short", "?"), ("nbytes", "<i8"), ("clen", "<i8"), ("xhash", "<u8")]
)
KEYROW_DTYPE = np.dtype([("key", "<u8"), ("node", "<i8"), ("src", "i1")])
VERIFIED_DTYPE = np.dtype(EDGE_DTYPE.descr + [("j", "<f4")])
CC_DTYPE = np.dtype([("node", "<i8"), ("label", "<i8")])
REMOVED_DTYPE = np.dtype(
    [("node", "<i8"), ("label", "<i8"), ("keeper", "<i8"), ("reason", "i1"), ("src", "i1"), ("ksrc", "i1")]
)
EXACT, NEAR = 1, 2
REASON_NAMES = {EXACT: "exact_duplicate", NEAR: "near_duplicate"}
MODES = ("global", "local")
SIGN_BATCH_CHARS = 8 << 20


def _partition_of(keys: np.ndarray, n: int) -> np.ndarray:
    """Hash partition of uint64 band/exact keys or int64 node ids (splitmix64, so sequential ids spread)."""
    return hash_partition(keys.view(np.int64) if keys.dtype == np.uint64 else keys, n)


def _doc_id(node: int, src: int, rels: list[str]) -> str:
    return f"{SOURCES[src]}/{rels[node >> NODE_SHIFT]}:{node & LINE_MASK}"


# ----------------------------------------------------------------------------------------------------
# plan


def make_plan(paths: list, params: DedupParams, out: Path, source: str | None = None,
              partitions: int | None = None, range_bytes: int = 256 << 20) -> dict:
    """Inputs, node ranges and partition counts; fixed for the life of the job (resume checks it)."""
    files = discover_files(paths, source=source)
    tasks = split_ranges(files, target_bytes=range_bytes)
    index = {f.path: i for i, f in enumerate(files)}
    total = sum(f.size for f in files)
    # about 64 MB of compressed input per partition keeps each shuffle partition small in memory
    auto = max(4, math.ceil(total / (64 << 20)))
    plan = {
        "version": 1,
        "params": params.to_dict(),
        "files": [f.rel for f in files],
        "tasks": [asdict(t) for t in tasks],
        "task_file": [index[t.path] for t in tasks],
        "task_lo": [(index[t.path] << NODE_SHIFT) | t.first_line for t in tasks],
        "partitions": int(partitions or auto),
        "input_fingerprint": _fingerprint(files),
    }
    return plan


def _fingerprint(files: list[InputFile]) -> str:
    h = hashlib.sha256()
    for f in files:
        st = Path(f.path).stat()
        h.update(f"{f.rel}\0{st.st_size}\0{int(st.st_mtime)}\n".encode())
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------------
# task bodies (plain functions: testable without Ray, wrapped with ray.remote below)


def _prepass(root: str, t: int, task: dict, fi: int, params: dict, nparts: int) -> dict:
    """Read, NFC, clean, short filter, exact hash; emit exact-hash rows partitioned by hash."""
    from slimpipe.dedup.minhash import exact_hash

    wd = WorkDir(Path(root).parent)
    marker = wd.path("prepass", f"t{t:05d}.json")
    if (done := wd.task_done(marker)) is not None:
        return done
    f = InputFile(**task)
    min_chars = params["min_chars"]
    rows: list[tuple] = []
    stats: FileStats | None = None
    rejects = None
    for docs, rej, st in read_batches(f):
        if docs is not None:
            lines = docs.column("line").to_pylist()
            srcs = docs.column("source").to_pylist()
            for line, src, text in zip(lines, srcs, docs.column("text").to_pylist(), strict=True):
                text = normalize(text)
                clean = clean_for_hash(text)
                short = is_short(clean, min_chars)
                rows.append(((fi << NODE_SHIFT) | line, SRC_INDEX[src], short, len(text.encode("utf-8")),
                             len(clean), 0 if short else exact_hash(clean)))
        if st is not None:
            stats, rejects = st, rej
    arr = np.array(rows, dtype=PREPASS_DTYPE) if rows else np.empty(0, PREPASS_DTYPE)
    save_npy(wd.path("prepass", f"t{t:05d}.npy"), arr)
    save_parquet(wd.path("prepass", f"t{t:05d}.rejects.parquet"), pa.Table.from_batches([rejects], schema=REJECT_SCHEMA))
    long_ = arr[~arr["short"]]
    keyrows = np.empty(len(long_), KEYROW_DTYPE)
    keyrows["key"], keyrows["node"], keyrows["src"] = long_["xhash"], long_["node"], long_["src"]
    part = _partition_of(keyrows["key"], nparts)
    for p in range(nparts):
        save_npy(wd.path("exact_rows", f"p{p:04d}", f"t{t:05d}.npy"), keyrows[part == p])
    by_source: dict[str, list[int]] = {}
    for i, name in enumerate(SOURCES):
        sel = arr["src"] == i
        if sel.any():
            sh = sel & arr["short"]
            by_source[name] = [int(sel.sum()), int(arr["nbytes"][sel].sum()), int(sh.sum()), int(arr["nbytes"][sh].sum())]
    result = {"stats": stats.to_dict(), "docs": len(arr), "short": int(arr["short"].sum()), "by_source": by_source}
    atomic_write_json(marker, result)
    return result


def _exact(root: str, p: int) -> dict:
    """Group exact hashes: source-aware star edges; non-heads of (hash, source) skip MinHash."""
    wd = WorkDir(Path(root).parent)
    marker = wd.path("exact", f"p{p:04d}.json")
    if (done := wd.task_done(marker)) is not None:
        return done
    rows = load_many(sorted(wd.path("exact_rows", f"p{p:04d}").glob("t*.npy")), KEYROW_DTYPE)
    edges = star_edges(rows["key"], rows["node"], rows["src"])
    skip = np.sort(edges["v"][edges["su"] == edges["sv"]])
    save_npy(wd.path("exact", f"p{p:04d}.edges.npy"), edges)
    save_npy(wd.path("exact", f"p{p:04d}.skip.npy"), skip)
    result = {"edges": len(edges), "skipped": len(skip)}
    atomic_write_json(marker, result)
    return result


def _node_range(fi: int) -> tuple[int, int]:
    return fi << NODE_SHIFT, (fi + 1) << NODE_SHIFT


def _skip_set(wd: WorkDir, fi: int, nparts: int) -> np.ndarray:
    lo, hi = _node_range(fi)
    parts = []
    for p in range(nparts):
        a = load_npy(wd.path("exact", f"p{p:04d}.skip.npy"), mmap=True)
        i, j = np.searchsorted(a, [lo, hi])
        parts.append(np.array(a[i:j]))
    return np.sort(np.concatenate(parts)) if parts else np.empty(0, np.int64)


def _prepass_rows(wd: WorkDir, t: int) -> np.ndarray:
    return load_npy(wd.path("prepass", f"t{t:05d}.npy"))


def _iter_docs(task: dict):
    """(line, source, text) of every accepted document of one input task, streamed."""
    return iter_columns(InputFile(**task), ("line", "source", "text"))


def _sign(root: str, t: int, task: dict, fi: int, params: dict, nparts: int) -> dict:
    """MinHash signatures of long, non-exact-copy docs; band keys partitioned by hash."""
    from slimpipe.dedup.minhash import band_keys, signatures

    wd = WorkDir(Path(root).parent)
    marker = wd.path("sign", f"t{t:05d}.json")
    if (done := wd.task_done(marker)) is not None:
        return done
    p = DedupParams.from_dict(params)
    pre = _prepass_rows(wd, t)
    skip = _skip_set(wd, fi, nparts)
    signable = pre["node"][~pre["short"]]
    signable = signable[~np.isin(signable, skip)]
    want = set(signable.tolist())
    out_rows: list[np.ndarray] = []
    batch_text: list[str] = []
    batch_node: list[int] = []
    batch_src: list[int] = []
    size = 0
    signed = chars = 0

    def flush() -> None:
        nonlocal size, signed, chars
        if not batch_text:
            return
        keys = band_keys(signatures(batch_text, p), p.bands, p.rows)  # the band index is mixed in
        rows = np.empty(keys.size, KEYROW_DTYPE)
        rows["key"] = keys.ravel()
        rows["node"] = np.repeat(np.array(batch_node, np.int64), p.bands)
        rows["src"] = np.repeat(np.array(batch_src, np.int8), p.bands)
        out_rows.append(rows)
        signed += len(batch_text)
        chars += size
        batch_text.clear()
        batch_node.clear()
        batch_src.clear()
        size = 0

    for line, src, text in _iter_docs(task):
        node = (fi << NODE_SHIFT) | line
        if node not in want:
            continue
        clean = clean_for_hash(normalize(text))
        batch_text.append(clean)
        batch_node.append(node)
        batch_src.append(SRC_INDEX[src])
        size += len(clean)
        if size >= SIGN_BATCH_CHARS:
            flush()
    flush()
    rows = np.concatenate(out_rows) if out_rows else np.empty(0, KEYROW_DTYPE)
    part = _partition_of(rows["key"], nparts)
    for q in range(nparts):
        save_npy(wd.path("band_rows", f"p{q:04d}", f"t{t:05d}.npy"), rows[part == q])
    result = {"signed": signed, "clean_chars": chars}
    atomic_write_json(marker, result)
    return result


def _task_of(nodes: np.ndarray, task_lo: np.ndarray) -> np.ndarray:
    return np.searchsorted(task_lo, nodes, side="right") - 1


def _buckets(root: str, q: int, task_lo: list[int], verify: bool) -> dict:
    """Band-key buckets → source-aware star edges (k−1 per bucket)."""
    wd = WorkDir(Path(root).parent)
    marker = wd.path("near", f"p{q:04d}.json")
    if (done := wd.task_done(marker)) is not None:
        return done
    rows = load_many(sorted(wd.path("band_rows", f"p{q:04d}").glob("t*.npy")), KEYROW_DTYPE)
    edges = star_edges(rows["key"], rows["node"], rows["src"])
    if verify:  # candidates get checked one by one: give true pairs a second route past false positives
        edges = unique_edges(np.concatenate([edges, chain_edges(rows["key"], rows["node"], rows["src"])]))
    save_npy(wd.path("near", f"p{q:04d}.edges.npy"), edges)
    if verify:
        lo = np.asarray(task_lo, np.int64)
        tu = _task_of(edges["u"], lo)
        for t in np.unique(tu):
            save_npy(wd.path("near_by_task", f"t{t:05d}", f"q{q:04d}.npy"), edges[tu == t])
    result = {"band_rows": len(rows), "edges": len(edges)}
    atomic_write_json(marker, result)
    return result


def _collect_texts(task: dict, fi: int, wanted: np.ndarray) -> dict[int, str]:
    want = set(wanted.tolist())
    out: dict[int, str] = {}
    if not want:
        return out
    for line, _src, text in _iter_docs(task):
        node = (fi << NODE_SHIFT) | line
        if node in want:
            out[node] = clean_for_hash(normalize(text))
    return out


def _verify_send(root: str, t: int, task: dict, fi: int, task_lo: list[int]) -> dict:
    """First hop of the verification join: attach u's cleaned text, route rows to v's task."""
    wd = WorkDir(Path(root).parent)
    marker = wd.path("verify_send", f"t{t:05d}.json")
    if (done := wd.task_done(marker)) is not None:
        return done
    edges = unique_edges(load_many(sorted(wd.path("near_by_task", f"t{t:05d}").glob("q*.npy")), EDGE_DTYPE))
    texts = _collect_texts(task, fi, np.unique(edges["u"]))
    tv = _task_of(edges["v"], np.asarray(task_lo, np.int64))
    for dest in np.unique(tv):
        e = edges[tv == dest]
        table = pa.table({
            "u": e["u"], "v": e["v"], "su": e["su"], "sv": e["sv"],
            "text_u": pa.array([texts[int(u)] for u in e["u"]], pa.large_string()),
        })
        save_parquet(wd.path("verify_rows", f"t{dest:05d}", f"from{t:05d}.parquet"), table)
    result = {"edges": len(edges)}
    atomic_write_json(marker, result)
    return result


def _verify_check(root: str, t: int, task: dict, fi: int, params: dict) -> dict:
    """Second hop: exact Jaccard of each candidate pair; false positives dropped."""
    from slimpipe.dedup.minhash import jaccard_sets, shingle_set

    wd = WorkDir(Path(root).parent)
    marker = wd.path("verify", f"t{t:05d}.json")
    if (done := wd.task_done(marker)) is not None:
        return done
    p = DedupParams.from_dict(params)
    files = sorted(wd.path("verify_rows", f"t{t:05d}").glob("from*.parquet"))
    table = pa.concat_tables([pq.read_table(x) for x in files]) if files else None
    n = 0 if table is None else table.num_rows
    out = np.empty(n, VERIFIED_DTYPE)
    if n:
        v = table.column("v").to_numpy()
        texts = _collect_texts(task, fi, np.unique(v))
        out["u"], out["v"] = table.column("u").to_numpy(), v
        out["su"], out["sv"] = table.column("su").to_numpy(), table.column("sv").to_numpy()
        shingles: dict[tuple[str, int], np.ndarray] = {}  # each document's set is built once

        def sset(side: str, node: int, text: str) -> np.ndarray:
            key = (side, node)
            if key not in shingles:
                shingles[key] = shingle_set(text, p.ngram, p.unit, p.seed)
            return shingles[key]

        out["j"] = [jaccard_sets(sset("u", u, a), sset("v", b, texts[b]))
                    for u, a, b in zip(out["u"].tolist(), table.column("text_u").to_pylist(), v.tolist(), strict=True)]
    kept = out[out["j"] >= p.threshold]
    save_npy(wd.path("verify", f"t{t:05d}.edges.npy"), kept)
    hist = np.histogram(out["j"], bins=20, range=(0.0, 1.0))[0].tolist() if n else [0] * 20
    result = {"candidates": n, "confirmed": len(kept), "dropped": n - len(kept), "j_hist": hist}
    atomic_write_json(marker, result)
    return result


def _edge_files(wd: WorkDir, nparts: int, ntasks: int, verify: bool) -> list[str]:
    files = [str(wd.path("exact", f"p{p:04d}.edges.npy")) for p in range(nparts)]
    if verify:
        files += [str(wd.path("verify", f"t{t:05d}.edges.npy")) for t in range(ntasks)]
    else:
        files += [str(wd.path("near", f"p{q:04d}.edges.npy")) for q in range(nparts)]
    return files


def _read_edges(path: str, mode: str) -> np.ndarray:
    e = load_npy(path)
    e = np.array(e[list(EDGE_DTYPE.names)]) if e.dtype != EDGE_DTYPE else e
    return local_only(e) if mode == "local" else e


def _cc_fast(root: str, files: list[str]) -> dict:
    """All edges in one process: union-find for both modes."""
    wd = WorkDir(Path(root).parent)
    marker = wd.path("cc", "fast.json")
    if (done := wd.task_done(marker)) is not None:
        return done
    result = {}
    for mode in MODES:
        edges = np.concatenate([_read_edges(f, mode) for f in files]) if files else np.empty(0, EDGE_DTYPE)
        nodes = np.unique(np.concatenate([edges["u"], edges["v"]]))
        labels = union_find(edges["u"], edges["v"], nodes)
        cc = np.empty(len(nodes), CC_DTYPE)
        cc["node"], cc["label"] = nodes, labels
        save_npy(wd.path("cc", mode, "p0000", "all.npy"), cc)
        result[mode] = {"edges": len(edges), "nodes": len(cc)}
    atomic_write_json(marker, result)
    return result


def _cc_map(root: str, mode: str, rnd: int, i: int, src_files: list[str], nparts: int, phase: str) -> dict:
    """Route edges to the partitions of the nodes whose neighbourhood the next star step needs."""
    wd = WorkDir(Path(root).parent)
    marker = wd.path("cc", mode, f"r{rnd:03d}{phase}", f"map{i:04d}.json")
    if (done := wd.task_done(marker)) is not None:
        return done
    us, vs = [], []
    for f in src_files:
        e = load_npy(f)
        if e.dtype.names:  # round 0: the job's edge tables
            e = local_only(e) if mode == "local" else e
            us.append(e["u"])
            vs.append(e["v"])
        else:
            us.append(e[:, 0])
            vs.append(e[:, 1])
    u = np.concatenate(us) if us else np.empty(0, np.int64)
    v = np.concatenate(vs) if vs else np.empty(0, np.int64)
    # large-star needs each node's whole neighbourhood, small-star each edge at its larger end
    a, b = (large_star_map if phase == "L" else small_star_map)(u, v)
    part = _partition_of(a, nparts)
    for d in range(nparts):
        sel = part == d
        save_npy(wd.path("cc", mode, f"r{rnd:03d}{phase}", f"p{d:04d}", f"from{i:04d}.npy"),
                 np.stack([a[sel], b[sel]], axis=1))
    result = {"rows": len(a)}
    atomic_write_json(marker, result)
    return result


def _cc_reduce(root: str, mode: str, rnd: int, d: int, phase: str) -> dict:
    wd = WorkDir(Path(root).parent)
    out = wd.path("cc", mode, f"r{rnd:03d}{phase}", f"out{d:04d}.npy")
    marker = out.with_suffix(".json")
    if (done := wd.task_done(marker)) is not None:
        return done
    parts = [load_npy(x) for x in sorted(wd.path("cc", mode, f"r{rnd:03d}{phase}", f"p{d:04d}").glob("*.npy"))]
    rows = np.concatenate(parts) if parts else np.empty((0, 2), np.int64)
    a, b, changed = (large_star if phase == "L" else small_star)(rows[:, 0], rows[:, 1])
    save_npy(out, np.stack([a, b], axis=1))
    result = {"changed": changed, "edges": len(a)}
    atomic_write_json(marker, result)
    return result


def _cc_finish(root: str, mode: str, src: str, d: int, nparts: int) -> dict:
    """Converged stars (node, root) → (node, label) rows partitioned by label."""
    wd = WorkDir(Path(root).parent)
    marker = wd.path("cc", mode, f"finish{d:04d}.json")
    if (done := wd.task_done(marker)) is not None:
        return done
    e = load_npy(src)
    nodes, labels = star_labels(e[:, 0], e[:, 1])
    part = _partition_of(labels, nparts)
    for r in range(nparts):
        sel = part == r
        cc = np.empty(int(sel.sum()), CC_DTYPE)
        cc["node"], cc["label"] = nodes[sel], labels[sel]
        save_npy(wd.path("cc", mode, f"p{r:04d}", f"from{d:04d}.npy"), cc)
    result = {"nodes": len(nodes)}
    atomic_write_json(marker, result)
    return result


def _lookup_attrs(wd: WorkDir, nodes: np.ndarray, task_lo: np.ndarray) -> np.ndarray:
    """Prepass rows (source, bytes, exact hash) of the given nodes, via each task's sorted table."""
    out = np.empty(len(nodes), PREPASS_DTYPE)
    tasks = _task_of(nodes, task_lo)
    for t in np.unique(tasks):
        sel = tasks == t
        pre = load_npy(wd.path("prepass", f"t{t:05d}.npy"), mmap=True)
        idx = np.searchsorted(pre["node"], nodes[sel])
        out[sel] = pre[idx]
    if len(nodes) and not np.array_equal(out["node"], nodes):
        raise RuntimeError("internal error: component node missing from the prepass tables")
    return out


def _keep(root: str, mode: str, r: int, task_lo: list[int], policy: str, priority: list[str]) -> dict:
    """Choose one document per component; everything else is removed with its reason."""
    from slimpipe.dedup.keep import choose_keep

    wd = WorkDir(Path(root).parent)
    marker = wd.path("keep", mode, f"p{r:04d}.json")
    if (done := wd.task_done(marker)) is not None:
        return done
    cc = load_many(sorted(wd.path("cc", mode, f"p{r:04d}").glob("*.npy")), CC_DTYPE)
    cc = np.unique(cc)  # roots can arrive from several partitions
    lo = np.asarray(task_lo, np.int64)
    attrs = _lookup_attrs(wd, cc["node"], lo)
    keeper = choose_keep(cc["label"], cc["node"], policy, source=attrs["src"].astype(np.int64),
                         length=attrs["nbytes"], source_priority=[SRC_INDEX[s] for s in priority])
    removed_mask = cc["node"] != keeper
    kattrs = _lookup_attrs(wd, keeper, lo)
    rem = np.empty(int(removed_mask.sum()), REMOVED_DTYPE)
    rem["node"], rem["label"], rem["keeper"] = cc["node"][removed_mask], cc["label"][removed_mask], keeper[removed_mask]
    rem["src"], rem["ksrc"] = attrs["src"][removed_mask], kattrs["src"][removed_mask]
    rem["reason"] = np.where(attrs["xhash"][removed_mask] == kattrs["xhash"][removed_mask], EXACT, NEAR)
    tr = _task_of(rem["node"], lo)
    for t in np.unique(tr):
        save_npy(wd.path("removed", mode, f"t{t:05d}", f"p{r:04d}.npy"), rem[tr == t])
    # summaries for the report
    _, sizes = np.unique(cc["label"], return_counts=True)  # sorted by label, like labels_u below
    by = defaultdict(lambda: [0, 0])
    rbytes = attrs["nbytes"][removed_mask]
    for s, reason, nb in zip(rem["src"].tolist(), rem["reason"].tolist(), rbytes.tolist(), strict=True):
        k = f"{SOURCES[s]}|{REASON_NAMES[reason]}"
        by[k][0] += 1
        by[k][1] += nb
    cross = defaultdict(int)
    for s, ks in zip(rem["src"].tolist(), rem["ksrc"].tolist(), strict=True):
        cross[f"{SOURCES[s]}|{SOURCES[ks]}"] += 1
    labels_u, first = np.unique(cc["label"], return_index=True)
    top = []
    for i in np.lexsort((labels_u, -sizes))[:8].tolist():
        members = cc["node"][cc["label"] == labels_u[i]]
        top.append({"label": int(labels_u[i]), "size": int(sizes[i]), "keeper": int(keeper[first[i]]),
                    "members": [int(x) for x in members[:6]]})
    result = {
        "removed": {k: v for k, v in sorted(by.items())},
        "cross": dict(sorted(cross.items())),
        "cluster_sizes": {str(k): int(v) for k, v in zip(*np.unique(sizes, return_counts=True), strict=True)},
        "components": len(sizes),
        "top": top,
    }
    atomic_write_json(marker, result)
    return result


def _write(root: str, t: int, task: dict, fi: int, mode: str, rels: list[str], shard_bytes: int) -> dict:
    """Stream the input again: kept docs to shards, short/duplicate docs to the removed table."""
    wd = WorkDir(Path(root).parent)
    out = wd.out
    marker = wd.path("write", f"t{t:05d}.json")
    if (done := wd.task_done(marker)) is not None:
        return done
    pre = _prepass_rows(wd, t)
    short = set(pre["node"][pre["short"]].tolist())
    rem = load_many(sorted(wd.path("removed", mode, f"t{t:05d}").glob("p*.npy")), REMOVED_DTYPE)
    removed = {int(r["node"]): r for r in rem}
    writers: dict[str, JsonlZstWriter] = {}
    counters: dict[str, int] = defaultdict(int)
    shards: list[dict] = []
    cols: dict[str, list] = {k: [] for k in ("id", "source", "reason", "cluster", "duplicate_of", "nbytes")}
    kept: dict[str, list[int]] = defaultdict(lambda: [0, 0])

    def writer_for(src: str) -> JsonlZstWriter:
        w = writers.get(src)
        if w is None or w.uncompressed >= shard_bytes:
            if w is not None:
                shards.append(w.close().to_dict())
            rel = f"kept/{src}/part-{t:05d}-{counters[src]:03d}.jsonl.zst"
            counters[src] += 1
            w = writers[src] = JsonlZstWriter(out, rel)
        return w

    try:
        for line, src, text, meta in iter_columns(InputFile(**task), ("line", "source", "text", "meta")):
            node = (fi << NODE_SHIFT) | line
            doc_id = f"{src}/{rels[fi]}:{line}"
            text = normalize(text)
            nbytes = len(text.encode("utf-8"))
            if node in short:
                _add_removed(cols, doc_id, src, "short", None, None, nbytes)
            elif node in removed:
                r = removed[node]
                _add_removed(cols, doc_id, src, REASON_NAMES[int(r["reason"])], int(r["label"]),
                             _doc_id(int(r["keeper"]), int(r["ksrc"]), rels), nbytes)
            else:
                m = json.loads(meta) if meta else {}
                m = m if isinstance(m, dict) else {"meta": m}
                m["redpajama_set_name"] = SET_NAMES[src]
                m["slimpipe_id"] = doc_id
                writer_for(src).write({"text": text, "meta": m})
                kept[src][0] += 1
                kept[src][1] += nbytes
        for w in writers.values():
            shards.append(w.close().to_dict())
    except BaseException:
        for w in writers.values():
            w.abort()
        raise
    # cluster: the component's id (its smallest node id); duplicate_of: the document kept for it
    table = pa.table({k: pa.array(v, pa.int64() if k in ("nbytes", "cluster") else pa.string())
                      for k, v in cols.items()})
    save_parquet(out / "removed" / f"part-{t:05d}.parquet", table)
    result = {"shards": shards, "kept": dict(kept)}
    atomic_write_json(marker, result)
    return result


def _add_removed(cols: dict, doc_id: str, src: str, reason: str, cluster: int | None, dup_of: str | None,
                 nbytes: int) -> None:
    cols["id"].append(doc_id)
    cols["source"].append(src)
    cols["reason"].append(reason)
    cols["cluster"].append(cluster)
    cols["duplicate_of"].append(dup_of)
    cols["nbytes"].append(nbytes)


# ----------------------------------------------------------------------------------------------------
# driver


class DedupJob:
    """One dedup run: ``DedupJob(paths, out, params).run()`` returns the report dict."""

    def __init__(self, paths: list, out: str | Path, params: DedupParams, source: str | None = None,
                 partitions: int | None = None, max_edges_in_memory: int = 50_000_000,
                 shard_bytes: int = 256 << 20, progress: bool = True, range_bytes: int = 256 << 20):
        self.out = Path(out)
        self.params = params
        self.wd = WorkDir(self.out)
        self.progress = progress
        self.max_edges_in_memory = max_edges_in_memory
        self.shard_bytes = shard_bytes
        plan = make_plan(paths, params, self.out, source, partitions, range_bytes)
        plan_path = self.wd.path("plan.json")
        if plan_path.exists():
            old = json.loads(plan_path.read_text())
            if old != plan:
                raise RuntimeError(
                    f"{self.out} holds a dedup job with other inputs or parameters; "
                    "use a new output folder (or delete it) to start over"
                )
        else:
            atomic_write_json(plan_path, plan)
        self.plan = plan
        self.root = str(self.wd.root)
        self.runner = StageRunner(self.wd, "dedup", progress)
        self.timings = self.runner.timings

    def _stage(self, name: str, fn: Callable, arglist: list[tuple], unit: str = "tasks") -> list:
        return self.runner.run(name, fn, arglist, unit)

    def run(self) -> dict:
        p = self.plan
        params = p["params"]
        tasks, task_file, nparts = p["tasks"], p["task_file"], p["partitions"]
        rels = p["files"]
        root = self.root
        pre = self._stage("prepass", _prepass, [(root, t, tasks[t], task_file[t], params, nparts) for t in range(len(tasks))])
        self._stage("exact", _exact, [(root, q) for q in range(nparts)], "partitions")
        self._stage("sign", _sign, [(root, t, tasks[t], task_file[t], params, nparts) for t in range(len(tasks))])
        near = self._stage("buckets", _buckets, [(root, q, p["task_lo"], self.params.verify) for q in range(nparts)], "partitions")
        verify = None
        if self.params.verify:
            self._stage("verify_send", _verify_send, [(root, t, tasks[t], task_file[t], p["task_lo"]) for t in range(len(tasks))])
            verify = self._stage("verify", _verify_check, [(root, t, tasks[t], task_file[t], params) for t in range(len(tasks))])
        cc_info = self._components()
        keep = {mode: self._stage(f"keep_{mode}", _keep,
                                  [(root, mode, r, p["task_lo"], self.params.keep, list(self.params.source_priority))
                                   for r in range(cc_info["partitions"])], "partitions")
                for mode in MODES}
        written = self._stage("write", _write, [(root, t, tasks[t], task_file[t], self.params.mode, rels, self.shard_bytes)
                                                for t in range(len(tasks))])
        self._finalise(written)
        from slimpipe.dedup.report import build_report, write_report

        report = build_report(self, pre, near, verify, keep, written, cc_info)
        write_report(self.out, report)
        remove_temporaries(self.out)
        return report

    def _components(self) -> dict:
        p = self.plan
        nparts = p["partitions"]
        files = _edge_files(self.wd, nparts, len(p["tasks"]), self.params.verify)
        total = sum(len(load_npy(f, mmap=True)) for f in files)
        if total <= self.max_edges_in_memory:
            res = self._stage("components", _cc_fast, [(self.root, files)])
            return {"path": "single-process", "edges": total, "partitions": 1, "rounds": 0, **res[0]}
        rounds = {}
        for mode in MODES:
            rounds[mode] = self._distributed_cc(mode, files, nparts)
        return {"path": "distributed", "edges": total, "partitions": nparts, "rounds": rounds}

    def _distributed_cc(self, mode: str, files: list[str], nparts: int) -> int:
        """Alternate large-star and small-star shuffles over edge partitions until nothing changes."""
        root = self.root
        src_groups = [[f] for f in files]
        for rnd in range(64):
            self._stage(f"cc_{mode}_r{rnd}_Lmap", _cc_map,
                        [(root, mode, rnd, i, g, nparts, "L") for i, g in enumerate(src_groups)])
            big = self._stage(f"cc_{mode}_r{rnd}_L", _cc_reduce, [(root, mode, rnd, d, "L") for d in range(nparts)])
            louts = [[str(self.wd.path("cc", mode, f"r{rnd:03d}L", f"out{d:04d}.npy"))] for d in range(nparts)]
            self._stage(f"cc_{mode}_r{rnd}_Smap", _cc_map,
                        [(root, mode, rnd, i, g, nparts, "S") for i, g in enumerate(louts)])
            small = self._stage(f"cc_{mode}_r{rnd}_S", _cc_reduce, [(root, mode, rnd, d, "S") for d in range(nparts)])
            src_groups = [[str(self.wd.path("cc", mode, f"r{rnd:03d}S", f"out{d:04d}.npy"))] for d in range(nparts)]
            if sum(r["changed"] for r in big + small) == 0:
                break
        else:
            raise RuntimeError("distributed connected components did not converge in 64 rounds")
        self._stage(f"cc_{mode}_finish", _cc_finish,
                    [(root, mode, g[0], d, nparts) for d, g in enumerate(src_groups)])
        return rnd + 1

    def _finalise(self, written: list[dict]) -> None:
        shards = [ShardInfo(**s) for w in written for s in w["shards"]]
        write_manifest(self.out, shards, extra={"kind": "slimpipe-dedup", "mode": self.params.mode,
                                                "params": self.params.to_dict()})
        rejects = [pq.read_table(self.wd.path("prepass", f"t{t:05d}.rejects.parquet"))
                   for t in range(len(self.plan["tasks"]))]
        save_parquet(self.out / "rejects.parquet", pa.concat_tables(rejects) if rejects else REJECT_SCHEMA.empty_table())


def run_dedup(paths: list, out: str | Path, params: DedupParams, **kwargs) -> dict:
    """Run (or resume) a dedup job on the current Ray (started locally if needed)."""
    from slimpipe.engine import ensure_ray

    ensure_ray(kwargs.pop("ray_address", None))
    return DedupJob(paths, out, params, **kwargs).run()


def _sample_texts(root: str, plan: dict, nodes: list[int]) -> dict[str, dict]:
    """Cleaned texts of a few documents (for the report's sample clusters), reading only their files."""
    lo = np.asarray(plan["task_lo"], np.int64)
    want = np.asarray(nodes, np.int64)
    tasks = _task_of(want, lo)
    out: dict[str, dict] = {}
    for t in np.unique(tasks).tolist():
        task, fi = plan["tasks"][t], plan["task_file"][t]
        need = set(want[tasks == t].tolist())
        for line, src, text in _iter_docs(task):
            node = (fi << NODE_SHIFT) | line
            if node in need:
                text = normalize(text)
                out[str(node)] = {"id": f"{src}/{plan['files'][fi]}:{line}", "clean": clean_for_hash(text),
                                  "excerpt": " ".join(text[:120].split())}
    return out
