"""RedPajama sources in, SlimPajama shards out: dedup → interleave/shuffle → split → decontaminate → write.

Dedup is the dedup engine's job (:class:`slimpipe.dedup.job.DedupJob`, reporting in ``OUT/dedup``).
Its write step (the second read of the inputs) hands each kept document to this module's
:class:`ScatterSink` instead of writing a ``kept`` copy, so OUT ends with one copy of the corpus plus
tables. SlimPajama's remaining steps are:

1. **scatter** (inside dedup's write tasks): every document gets three hashes of its stable id — its
   chunk (``--seed``), its position key inside the chunk (``--seed``) and its split (``--split-seed``:
   train, or holdout → validation/test) — plus the SHA-256 of its full text. Each task writes one
   shuffle file holding every chunk (one row group per chunk) and, if it has any, the sorted SHA-256s
   of its holdout documents.
2. **gather** (one task per chunk): read the chunk's row groups of every scatter file (listed in the
   committed scatter manifest), order them by position key (a uniformly random permutation: the Pile's
   two-pass shuffle), drop train documents whose full-text SHA-256 equals a holdout document's
   (SlimPajama's decontamination, over *all* chunks' holdouts, which each task reads itself: no
   document passes through the driver), and write ``train/chunk{i}/example_train_{j}.jsonl.zst``,
   ``validation/...``, ``test/...``.

Because the split depends only on ``--split-seed`` and the document id, changing ``--seed`` changes the
order and chunking of the output and nothing else; the train/holdout membership stays the same.
``index.json`` lists per shard and per source the documents, bytes and whitespace words, so mixes can
draw each source separately without a per-source copy of the data.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import xxhash

from slimpipe import storage
from slimpipe.dedup.job import DedupJob
from slimpipe.dedup.params import DedupParams
from slimpipe.io.writers import ShardInfo, ShardWriter, shard_relpath, write_manifest
from slimpipe.outdir import OutputError
from slimpipe.runtime import Executor, Step, TaskContext, Workspace, read_table_partition
from slimpipe.runtime.shuffle import write_table_partitioned
from slimpipe.runtime.workspace import remove_temporaries
from slimpipe.sources import set_name, sort_sources

SPLITS = ("train", "validation", "test")
TRAIN, VALIDATION, TEST = 0, 1, 2
_TWO64 = float(1 << 64)


@dataclass(frozen=True)
class PipelineOptions:
    holdout_fraction: float = 0.0017  # SlimPajama's 0.17%
    seed: int = 42  # chunking and order
    split_seed: int = 42  # train/holdout membership (and validation/test halves)
    chunk_bytes: int = 256 << 20  # text per chunk: each gather task holds one chunk in memory
    chunks: int | None = None  # fixed chunk count (overrides chunk_bytes)
    shard_bytes: int = 256 << 20  # uncompressed JSON lines per output shard
    shard_records: int | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.holdout_fraction < 1.0:
            raise ValueError(f"holdout fraction must be in [0, 1), got {self.holdout_fraction}")
        if self.chunks is not None and self.chunks < 1:
            raise ValueError("chunks must be >= 1")


def _h(seed: int, tag: str, doc_id: str) -> int:
    return xxhash.xxh64_intdigest(f"{tag}\0{doc_id}".encode(), seed=seed)


def assign(doc_id: str, opts: PipelineOptions, chunks: int) -> tuple[int, int, int]:
    """(chunk, position key, split) of one document: pure functions of its id and the seeds."""
    chunk = _h(opts.seed, "chunk", doc_id) % chunks
    key = _h(opts.seed, "order", doc_id)
    u = _h(opts.split_seed, "split", doc_id) / _TWO64
    if u < opts.holdout_fraction:
        split = VALIDATION if _h(opts.split_seed, "half", doc_id) & 1 == 0 else TEST
    else:
        split = TRAIN
    return chunk, key, split


PIECE_SCHEMA = pa.schema([("key", pa.uint64()), ("id", pa.string()), ("source", pa.string()),
                          ("split", pa.int8()), ("sha256", pa.binary(32)), ("text", pa.large_string())])
SHA_DTYPE = np.dtype(("u1", 32))


class ScatterSink:
    """Receives dedup's kept documents and scatters them into chunks in the pipeline's workspace."""

    def __init__(self, ws: Workspace, opts: PipelineOptions):
        self.ws, self.opts = ws, opts
        self.chunks = opts.chunks or 1

    def prepare(self, dedup_ws: Workspace, kept_text_bytes: int) -> None:
        self.chunks = self.opts.chunks or max(1, math.ceil(kept_text_bytes / self.opts.chunk_bytes))

    def open(self, dedup_ws: Workspace, t: int) -> _Scatter:
        return _Scatter(self, t)

    def commit(self, written: list[dict]) -> None:
        """The scatter manifest: every chunk file and holdout list, for the gather step."""
        self.ws.commit("scatter", {"chunks": self.chunks,
                                   "pieces": [w["piece"] for w in written],
                                   "holdout": [w["holdout"] for w in written if w["holdout"]],
                                   "intermediates": {"files": sum(w["scatter_files"] for w in written),
                                                     "bytes": sum(w["scatter_bytes"] for w in written)}})


class _Scatter:
    def __init__(self, sink: ScatterSink, t: int):
        self.sink, self.t = sink, t
        self.cols: dict[str, list] = {k: [] for k in PIECE_SCHEMA.names}
        self.chunk: list[int] = []

    def add(self, doc_id: str, src: str, text: str, meta: dict) -> None:
        chunk, key, split = assign(doc_id, self.sink.opts, self.sink.chunks)
        c = self.cols
        c["key"].append(key)
        c["id"].append(doc_id)
        c["source"].append(src)
        c["split"].append(split)
        c["sha256"].append(hashlib.sha256(text.encode("utf-8")).digest())
        c["text"].append(text)
        self.chunk.append(chunk)

    def close(self) -> dict:
        ws = self.sink.ws
        before = (ws.files_written, ws.bytes_written)
        table = pa.table(self.cols, schema=PIECE_SCHEMA)
        piece = write_table_partitioned(ws, f"scatter/t{self.t:05d}.parquet", table, np.array(self.chunk, np.int64))
        split = np.array(self.cols["split"], np.int8)
        holdout = None
        if (split != TRAIN).any():
            sha = np.frombuffer(b"".join(s for s, sp in zip(self.cols["sha256"], split.tolist(), strict=True)
                                         if sp != TRAIN), np.uint8).reshape(-1, 32)
            holdout = ws.save_array(f"scatter/t{self.t:05d}.holdout.npy", np.unique(sha, axis=0))["path"]
        return {"piece": piece, "holdout": holdout, "docs": len(self.chunk),
                "scatter_files": ws.files_written - before[0], "scatter_bytes": ws.bytes_written - before[1]}

    def abort(self) -> None:
        pass


def _holdout_set(ws: Workspace, rels: list[str]) -> set[bytes]:
    out: set[bytes] = set()
    for rel in rels:
        a = ws.load_array(rel)
        out.update(bytes(row) for row in a)
    return out


def gather_task(ctx: TaskContext, inputs: str, opts: dict, out: str, decon=None) -> dict:
    from slimpipe.evalset.decontaminate import REASONS, train_codes

    ws = ctx.ws
    chunk = ctx.index
    spec = ws.inputs(inputs)
    o = PipelineOptions(**opts)
    table = read_table_partition(ws, spec["pieces"], chunk, PIECE_SCHEMA)
    # Arrow's sort: ~16x numpy's lexsort over Python strings (0.23 s vs 3.8 s for 500k rows), same order
    order = pc.sort_indices(table, sort_keys=[("key", "ascending"), ("id", "ascending")]).to_numpy()
    ids = table.column("id").to_pylist()
    holdout_set = _holdout_set(ws, spec["holdout"])
    writers = {s: ShardWriter(out, split=name, chunk=chunk + 1, max_bytes=o.shard_bytes,
                              max_records=o.shard_records) for s, name in enumerate(SPLITS)}
    index: dict[str, dict[str, dict[str, int]]] = defaultdict(lambda: defaultdict(lambda: {"docs": 0, "bytes": 0, "words": 0}))
    decontaminated: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    srcs, splits, shas, texts = (table.column(k).to_pylist() for k in ("source", "split", "sha256", "text"))
    eval_codes, eval_removed = train_codes(decon, order.tolist(), splits, ids, texts, TRAIN), {}
    try:
        for i in order.tolist():
            src, split, text = srcs[i], splits[i], texts[i]
            nbytes = len(text.encode("utf-8"))
            if (split == TRAIN and shas[i] in holdout_set) or i in eval_codes:
                decontaminated[src][0] += 1
                decontaminated[src][1] += nbytes
                if i in eval_codes:  # against the evaluation set (exact, near or the document itself)
                    e = eval_removed.setdefault(src, {}).setdefault(REASONS[eval_codes[i]], [0, 0])
                    e[0], e[1] = e[0] + 1, e[1] + nbytes
                continue
            w = writers[split]
            path = shard_relpath(SPLITS[split], chunk + 1, w.index)
            w.write({"text": text, "meta": {"redpajama_set_name": set_name(src), "slimpipe_id": ids[i]}})
            entry = index[path][src]
            entry["docs"] += 1
            entry["bytes"] += nbytes
            entry["words"] += len(text.split())
        shards = [s.to_dict() for w in writers.values() for s in w.close()]
    except BaseException:
        for w in writers.values():
            w.abort()
        raise
    return {"shards": shards, "index": {p: dict(v) for p, v in index.items()},
            "decontaminated": dict(decontaminated), "eval_decontaminated": eval_removed}


class SlimPajamaJob:
    """``SlimPajamaJob(paths, out, dedup_params, options).run()`` → the pipeline report (dict)."""

    def __init__(self, paths: list, out: str | Path, dedup_params: DedupParams, options: PipelineOptions,
                 source: str | None = None, progress: bool = True, scratch: str | None = None,
                 keep_intermediates: bool = False, eval_set: dict | None = None, **dedup_kwargs):
        self.paths, self.out = paths, os.fspath(out)
        self.eval_set = eval_set  # {"reuse": EVAL} or {"options": EvalSetOptions}: OUT/eval + decontamination
        self.params, self.opts = dedup_params, options
        self.source, self.progress, self.dedup_kwargs = source, progress, dedup_kwargs
        self.scratch, self.keep_intermediates = scratch, keep_intermediates
        storage.check_access(self.out, write=True)
        self.ws = Workspace(self.out, scratch)
        self.ex = Executor(self.ws, "slimpajama", progress)
        self.plan = {"options": asdict(options), "dedup": dedup_params.to_dict(),
                     "inputs": [os.fspath(p) for p in paths], "source": source, "eval_set": repr(eval_set)}
        self.plan_sha256 = hashlib.sha256(json.dumps(self.plan, sort_keys=True).encode()).hexdigest()
        self.finished: dict | None = None
        plan_path = self.ws.path("pipeline_plan.json")
        if storage.exists(plan_path):
            if storage.read_json(plan_path) != self.plan:
                raise OutputError(f"{self.out} holds a pipeline run with other options; use a new output folder")
        elif storage.exists(storage.join(self.out, "report.json")):
            done = storage.read_json(storage.join(self.out, "report.json"))
            if done.get("plan_sha256") != self.plan_sha256:
                raise OutputError(f"{self.out} holds a pipeline run with other options; use a new output folder")
            self.finished = done
        else:
            storage.write_json_atomic(plan_path, self.plan)

    def run(self) -> dict:
        if self.finished is not None:
            return self.finished
        decon = None
        if self.eval_set is not None:  # drawn from the raw sources before any dedup
            from slimpipe.evalset.decontaminate import prepare_eval_set

            decon = prepare_eval_set(self.paths, self.out, self.params, source=self.source, progress=self.progress,
                                     scratch=storage.join(self.ws.root, "evalset") if self.scratch else None,
                                     keep_intermediates=self.keep_intermediates, **self.eval_set)
        sink = ScatterSink(self.ws, self.opts)
        dedup_scratch = storage.join(self.ws.root, "dedup") if self.scratch else None  # within this claim's
        dedup = DedupJob(self.paths, storage.join(self.out, "dedup"), self.params, source=self.source,
                         progress=self.progress, scratch=dedup_scratch, keep_intermediates=self.keep_intermediates,
                         sink=sink, **self.dedup_kwargs)
        dedup_report = dedup.run()
        scatter = self.ws.done("scatter")
        if scatter is None:
            raise RuntimeError(f"{self.ws.manifest_path('scatter')} is missing although the dedup step finished; "
                               "delete the output folder and run again")
        chunks = scatter["chunks"]
        opts = asdict(self.opts)
        inputs = self.ws.put_inputs("gather", {"pieces": scatter["pieces"], "holdout": scatter["holdout"]})
        piece_bytes = sum(p["bytes"] for p in scatter["pieces"] if p)
        # the evaluation set's decontamination index: shared once, every task receives the index itself
        decon_ref = self.ex.share(decon) if decon is not None else None
        gathered = self.ex.run(Step("gather", gather_task, [(inputs, opts, self.out, decon_ref) for _ in range(chunks)],
                                    "chunks",
                                    memory=(256 << 20) + 4 * piece_bytes // max(1, chunks)))
        from slimpipe.pipeline.report import build_report

        shards = [s for g in gathered for s in g["shards"]]
        manifest = write_manifest(self.out, [ShardInfo(**s) for s in shards],
                                  extra={"kind": "slimpipe-slimpajama", "options": opts, "chunks": chunks,
                                         "dedup": self.params.to_dict(),
                                         "eval_set": decon.eval_set if decon else None})
        index = _index(gathered)
        storage.write_json_atomic(storage.join(self.out, "index.json"), index)
        report = build_report(dedup_report, gathered, index, self.opts, chunks, self.ex.timings, manifest)
        if decon is not None:
            from slimpipe.evalset.decontaminate import merge_counts

            report["eval_decontamination"] = {**decon.describe(), "removed": merge_counts(
                [g.get("eval_decontaminated") for g in gathered])}
        report["intermediates"] = {**{f"dedup.{k}": v for k, v in dedup_report.get("intermediates", {}).items()},
                                   "scatter": scatter["intermediates"], **self.ex.intermediates}
        report["plan_sha256"] = self.plan_sha256
        _publish(self.out, report)
        remove_temporaries(self.out, "slimpajama")
        self.ex.cleanup(self.keep_intermediates)
        return report


def _publish(out: str, report: dict) -> None:
    from slimpipe.pipeline.report import write_report

    storage.write_tree(out, lambda folder: write_report(folder, report))


def _index(gathered: list[dict]) -> dict:
    """``{"splits": {split: [{"path", "sources": {src: {docs, bytes, words}}}]}}``, shards in natural order."""
    import re

    def natural(p: str) -> list:
        return [int(x) if x.isdigit() else x for x in re.split(r"(\d+)", p)]

    splits: dict[str, list] = {s: [] for s in SPLITS}
    for g in gathered:
        for path, sources in g["index"].items():
            split = path.split("/", 1)[0]
            splits[split].append({"path": path, "sources": {k: sources[k] for k in sort_sources(sources)}})
    for s in splits:
        splits[s].sort(key=lambda e: natural(e["path"]))
    return {"format": "slimpipe-index", "splits": splits}


def run_slimpajama(paths: list, out: str | Path, params: DedupParams, options: PipelineOptions, **kwargs) -> dict:
    from slimpipe.engine import ensure_ray

    ensure_ray(kwargs.pop("ray_address", None))
    return SlimPajamaJob(paths, out, params, options, **kwargs).run()
