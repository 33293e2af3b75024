"""RedPajama sources in, SlimPajama shards out: dedup → interleave/shuffle → split → decontaminate → write.

Dedup is the dedup engine's job (:class:`slimpipe.dedup.job.DedupJob`, in ``OUT/dedup``); this module
adds SlimPajama's remaining steps as two Ray stages, so no process ever holds the corpus:

1. **scatter** (one task per kept shard): every document gets three hashes of its stable id —
   its chunk (``--seed``), its position key inside the chunk (``--seed``) and its split (``--split-seed``:
   train, or holdout → validation/test) — plus the SHA-256 of its full text. Rows go to per-chunk
   pieces on disk; holdout text hashes go to a small list.
2. **gather** (one task per chunk): read the chunk's pieces, order them by position key (a uniformly
   random permutation: the Pile's two-pass shuffle), drop train documents whose full-text SHA-256
   equals a holdout document's (SlimPajama's decontamination, over *all* chunks' holdouts), and write
   ``train/chunk{i}/example_train_{j}.jsonl.zst``, ``validation/...``, ``test/...``.

Because the split depends only on ``--split-seed`` and the document id, changing ``--seed`` changes the
order and chunking of the output and nothing else; the train/holdout membership stays the same.
``index.json`` lists per shard and per source the documents, bytes and whitespace words, so mixes can
draw each source separately without a per-source copy of the data.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import xxhash

from slimpipe.dedup.job import DedupJob
from slimpipe.dedup.params import DedupParams
from slimpipe.io.readers import InputFile, discover_files, iter_columns
from slimpipe.io.writers import ShardWriter, atomic_write_json, shard_relpath, write_manifest
from slimpipe.sources import SET_NAMES, SOURCES
from slimpipe.stages import StageRunner
from slimpipe.workdir import WorkDir, remove_temporaries, save_parquet

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


def _doc_id(meta: str, fallback: str) -> str:
    try:
        m = json.loads(meta)
    except ValueError:
        return fallback
    return m.get("slimpipe_id", fallback) if isinstance(m, dict) else fallback


PIECE_SCHEMA = pa.schema([("key", pa.uint64()), ("id", pa.string()), ("source", pa.string()),
                          ("split", pa.int8()), ("sha256", pa.binary(32)), ("text", pa.large_string())])


def _scatter(root: str, t: int, task: dict, opts: dict, chunks: int) -> dict:
    wd = WorkDir(Path(root).parent)
    marker = wd.path("scatter", f"t{t:05d}.json")
    if (done := wd.task_done(marker)) is not None:
        return done
    o = PipelineOptions(**opts)
    cols: dict[int, dict[str, list]] = defaultdict(lambda: {k: [] for k in PIECE_SCHEMA.names})
    holdout_sha: list[bytes] = []
    for doc_fallback, src, text, meta in iter_columns(InputFile(**task), ("id", "source", "text", "meta")):
        doc_id = _doc_id(meta, doc_fallback)
        chunk, key, split = assign(doc_id, o, chunks)
        sha = hashlib.sha256(text.encode("utf-8")).digest()
        c = cols[chunk]
        c["key"].append(key)
        c["id"].append(doc_id)
        c["source"].append(src)
        c["split"].append(split)
        c["sha256"].append(sha)
        c["text"].append(text)
        if split != TRAIN:
            holdout_sha.append(sha)
    for chunk, c in cols.items():
        save_parquet(wd.path("pieces", f"c{chunk:05d}", f"t{t:05d}.parquet"), pa.table(c, schema=PIECE_SCHEMA))
    result = {"docs": sum(len(c["id"]) for c in cols.values()), "holdout_sha256": sorted(h.hex() for h in holdout_sha)}
    atomic_write_json(marker, result)
    return result


def _gather(root: str, chunk: int, opts: dict, holdout: list[str], decon=None) -> dict:
    wd = WorkDir(Path(root).parent)
    out = wd.out
    marker = wd.path("gather", f"c{chunk:05d}.json")
    if (done := wd.task_done(marker)) is not None:
        return done
    o = PipelineOptions(**opts)
    files = sorted(wd.path("pieces", f"c{chunk:05d}").glob("t*.parquet"))
    table = pa.concat_tables([pq.read_table(f) for f in files]) if files else PIECE_SCHEMA.empty_table()
    keys = table.column("key").to_numpy()
    ids = np.array(table.column("id").to_pylist(), dtype=object)
    order = np.lexsort((ids, keys)) if len(keys) else np.empty(0, np.int64)
    holdout_set = {bytes.fromhex(h) for h in holdout}
    writers = {s: ShardWriter(out, split=name, chunk=chunk + 1, max_bytes=o.shard_bytes,
                              max_records=o.shard_records) for s, name in enumerate(SPLITS)}
    index: dict[str, dict[str, dict[str, int]]] = defaultdict(lambda: defaultdict(lambda: {"docs": 0, "bytes": 0, "words": 0}))
    decontaminated: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    srcs, splits, shas, texts = (table.column(k).to_pylist() for k in ("source", "split", "sha256", "text"))
    from slimpipe.evalset.decontaminate import REASONS, train_codes

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
            w.write({"text": text, "meta": {"redpajama_set_name": SET_NAMES[src], "slimpipe_id": ids[i]}})
            entry = index[path][src]
            entry["docs"] += 1
            entry["bytes"] += nbytes
            entry["words"] += len(text.split())
        shards = [s.to_dict() for w in writers.values() for s in w.close()]
    except BaseException:
        for w in writers.values():
            w.abort()
        raise
    result = {"shards": shards, "index": {p: dict(v) for p, v in index.items()},
              "decontaminated": dict(decontaminated), "eval_decontaminated": eval_removed}
    atomic_write_json(marker, result)
    return result


class SlimPajamaJob:
    """``SlimPajamaJob(paths, out, dedup_params, options).run()`` → the pipeline report (dict)."""

    def __init__(self, paths: list, out: str | Path, dedup_params: DedupParams, options: PipelineOptions,
                 source: str | None = None, progress: bool = True, eval_set: dict | None = None, **dedup_kwargs):
        self.paths, self.out = paths, Path(out)
        self.eval_set = eval_set  # {"reuse": EVAL} or {"options": EvalSetOptions}: OUT/eval + decontamination
        self.params, self.opts = dedup_params, options
        self.source, self.progress, self.dedup_kwargs = source, progress, dedup_kwargs
        self.wd = WorkDir(self.out)
        self.runner = StageRunner(self.wd, "slimpajama", progress)
        plan = {"options": asdict(options), "dedup": dedup_params.to_dict(), "eval_set": repr(eval_set)}
        plan_path = self.wd.path("pipeline_plan.json")
        if plan_path.exists() and json.loads(plan_path.read_text()) != plan:
            raise RuntimeError(f"{self.out} holds a pipeline run with other options; use a new output folder")
        atomic_write_json(plan_path, plan)

    def run(self) -> dict:
        decon = None
        if self.eval_set is not None:  # drawn from the raw sources before any dedup
            from slimpipe.evalset.decontaminate import prepare_eval_set

            decon = prepare_eval_set(self.paths, self.out, self.params, source=self.source, progress=self.progress,
                                     **self.eval_set)
        dedup = DedupJob(self.paths, self.out / "dedup", self.params, source=self.source, progress=self.progress,
                         **self.dedup_kwargs)
        dedup_report = dedup.run()
        kept = discover_files([self.out / "dedup" / "kept"]) if (self.out / "dedup" / "kept").is_dir() else []
        total = sum(f.size for f in kept)  # compressed; text is ~3-5x larger
        chunks = self.opts.chunks or max(1, math.ceil(4 * total / self.opts.chunk_bytes))
        opts = asdict(self.opts)
        root = str(self.wd.root)
        scattered = self.runner.run("scatter", _scatter, [(root, t, asdict(f), opts, chunks) for t, f in enumerate(kept)])
        import ray

        # one copy in the object store, shared by every gather task (0.17% of documents, 32 bytes each)
        holdout = ray.put(sorted({h for s in scattered for h in s["holdout_sha256"]}))
        decon_ref = ray.put(decon)
        gathered = self.runner.run("gather", _gather, [(root, c, opts, holdout, decon_ref) for c in range(chunks)],
                                   "chunks")
        from slimpipe.pipeline.report import build_report, write_report

        shards = [s for g in gathered for s in g["shards"]]
        manifest = write_manifest(self.out, [_shard(s) for s in shards],
                                  extra={"kind": "slimpipe-slimpajama", "options": opts, "chunks": chunks,
                                         "dedup": self.params.to_dict(),
                                         "eval_set": decon.eval_set if decon else None})
        index = _index(gathered)
        atomic_write_json(self.out / "index.json", index)
        report = build_report(dedup_report, gathered, index, self.opts, chunks, self.runner.timings, manifest)
        if decon is not None:
            from slimpipe.evalset.decontaminate import merge_counts

            report["eval_decontamination"] = {**decon.describe(), "removed": merge_counts(
                [g.get("eval_decontaminated") for g in gathered])}
        write_report(self.out, report)
        remove_temporaries(self.out)
        return report


def _shard(d: dict):
    from slimpipe.io.writers import ShardInfo

    return ShardInfo(**d)


def _index(gathered: list[dict]) -> dict:
    """``{"splits": {split: [{"path", "sources": {src: {docs, bytes, words}}}]}}``, shards in natural order."""
    import re

    def natural(p: str) -> list:
        return [int(x) if x.isdigit() else x for x in re.split(r"(\d+)", p)]

    splits: dict[str, list] = {s: [] for s in SPLITS}
    for g in gathered:
        for path, sources in g["index"].items():
            split = path.split("/", 1)[0]
            splits[split].append({"path": path, "sources": {k: sources[k] for k in SOURCES if k in sources}})
    for s in splits:
        splits[s].sort(key=lambda e: natural(e["path"]))
    return {"format": "slimpipe-index", "splits": splits}


def run_slimpajama(paths: list, out: str | Path, params: DedupParams, options: PipelineOptions, **kwargs) -> dict:
    from slimpipe.engine import ensure_ray

    ensure_ray(kwargs.pop("ray_address", None))
    return SlimPajamaJob(paths, out, params, options, **kwargs).run()
