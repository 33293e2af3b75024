"""``slimpipe mix``: a SlimPajama output in, a training-ready mix out (packed tokens or jsonl.zst text).

Stages (Ray only where work is per shard; the arithmetic lives in :mod:`slimpipe.mix.budget`):

1. **holdout** (Ray, one task per ``validation``/``test`` shard): tokenize every held-out document and
   hash its text. The hashes travel to stage 2 so no held-out text can reach training, even from an
   input that was not decontaminated.
2. **tokenize** (Ray, one task per ``train`` shard, shards in a seeded order): tokenize the documents of
   the mix's sources into a scratch Arrow file per shard. Work stops at the shortest prefix of that
   order that holds every source's target; which prefix that is depends only on token counts, never on
   task timing, so the result is the same on 2 cores or 200. Scratch files are published atomically
   and reused by a rerun, so a killed job resumes without tokenizing a shard twice.
3. **plan**: per-source targets and epochs (:func:`~slimpipe.mix.budget.plan_sources`), then each
   shard's quota of each source in proportion to what it holds.
4. **select** (Ray, per shard): whole epochs of repeated sources, then a seeded sample of documents that
   fills the quota exactly (the last one truncated), each piece thrown into one of ``B`` buckets.
5. **shuffle + write**: each bucket is shuffled in memory (seeded) and written in order: into one
   :class:`~slimpipe.mix.packed.PackedWriter` (``train/``), or as ``jsonl.zst`` shards in SlimPajama's
   layout, one chunk per bucket (Ray, per bucket). Two-pass shuffle, as the Pile and SlimPajama do it.
6. **eval sets** (packed ``eval/<source>/`` from validation, ``test/<source>/`` from test; or text
   ``validation/`` + ``test/`` shards): a seeded, capped sample per source, identical for every mix of
   an experiment that shares seed, tokenizer and holdout.
7. **manifest.json**, written last and atomically: its presence marks a complete mix.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
import os
import re
import shutil
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc

from slimpipe.io.readers import InputFile, file_format, read_batches
from slimpipe.io.writers import ShardInfo, ShardWriter, atomic_write_json, slimpajama_record, write_manifest
from slimpipe.mix import budget as B
from slimpipe.mix.config import MixConfig
from slimpipe.mix.packed import INDEX, PackedWriter, apportion_bytes, eval_path, token_dtype, train_path
from slimpipe.mix.tokenizer import Tokenizer, load_tokenizer, train_bpe
from slimpipe.progress import Progress
from slimpipe.sources import SOURCES

log = logging.getLogger(__name__)

FORMAT = "slimpipe-mix"
VERSION = 1
MANIFEST = "manifest.json"
INPUT_INDEX = "index.json"
WORK = ".work"
TOKENIZER_DIR = "tokenizer"
HOLDOUT_SPLITS = ("validation", "test")
OUTPUT_FORMATS = ("packed", "text")
# Seed streams: every random choice draws from np.random.default_rng([seed, STREAM, key...]).
SHARD_ORDER, SELECT, BUCKET, SHUFFLE, EVAL, BPE_SAMPLE = 1, 2, 3, 4, 5, 6
_SEED_STREAMS = {"shard_order": SHARD_ORDER, "select": SELECT, "bucket": BUCKET, "shuffle": SHUFFLE,
                 "eval": EVAL, "bpe_sample": BPE_SAMPLE}
_CODE = {s: i for i, s in enumerate(SOURCES)}


class MixBuildError(RuntimeError):
    """The mix cannot be built from this input with these options (a user-facing message)."""


@dataclass
class MixOptions:
    """Everything besides the input, the mix and the output folder that decides what a mix contains."""

    tokens: int
    seq_len: int = 2048
    seed: int = 42
    output_format: str = "packed"  # packed | text
    tokenizer: str = "gpt2"  # gpt2 | path to tokenizer.json / tokenizer dir / previous mix | train
    vocab_size: int = 32768  # for tokenizer="train"
    bpe_sample_bytes: int = 256 << 20  # training text for tokenizer="train"
    eval_tokens: int = 1_000_000  # per source and holdout split; 0 = the whole holdout
    bucket_tokens: int = 64 << 20  # shuffle-bucket size: bounds the memory of the second shuffle pass
    text_shard_bytes: int = 256 << 20  # uncompressed bytes per output jsonl.zst shard (text format)
    overwrite: bool = False
    keep_work: bool = False
    ray_address: str | None = None
    quiet: bool = True
    warn: Callable[[str], None] | None = None

    def check(self) -> None:
        if self.tokens <= 0:
            raise MixBuildError("--tokens must be positive")
        if self.seq_len < 1:
            raise MixBuildError("--seq-len must be >= 1")
        if self.output_format not in OUTPUT_FORMATS:
            raise MixBuildError(f"--format must be one of {OUTPUT_FORMATS}, got {self.output_format!r}")
        if self.eval_tokens < 0:
            raise MixBuildError("--eval-tokens must be >= 0")
        if self.bucket_tokens < 1 or self.text_shard_bytes < 1:
            raise MixBuildError("bucket and shard sizes must be positive")


# --------------------------------------------------------------------------------------------- input


@dataclass(frozen=True)
class InputShard:
    """One shard of the SlimPajama input; ``counts`` is its ``index.json`` entry (source -> docs/bytes/words)."""

    split: str
    path: str  # relative to the input root
    counts: dict[str, dict[str, int]] | None = None

    @property
    def key(self) -> int:
        """A stable 64-bit key of the path: seeds per-shard randomness independently of shard order."""
        return int.from_bytes(hashlib.sha1(self.path.encode()).digest()[:8], "little")

    def source_units(self, source: str, unit: str = "bytes") -> int:
        return int(((self.counts or {}).get(source) or {}).get(unit, 0))


def _natural_key(path: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path)]


def read_input(root: str | Path) -> tuple[dict[str, list[InputShard]], dict[str, Any]]:
    """Shards per split from ``index.json`` (or by globbing SlimPajama's layout when it is missing),
    and what identifies the input: the SHA-256 of its ``manifest.json`` and ``index.json``."""
    root = Path(root)
    if not root.is_dir():
        raise MixBuildError(f"input folder not found: {root}")
    info: dict[str, Any] = {"path": str(root.resolve()), "manifest_sha256": None, "index_sha256": None}
    if (root / MANIFEST).is_file():
        info["manifest_sha256"] = hashlib.sha256((root / MANIFEST).read_bytes()).hexdigest()
    splits: dict[str, list[InputShard]] = {}
    index_file = root / INPUT_INDEX
    if index_file.is_file():
        raw = index_file.read_bytes()
        info["index_sha256"] = hashlib.sha256(raw).hexdigest()
        try:
            index = json.loads(raw)
            for split, items in index["splits"].items():
                splits[split] = [InputShard(split, it["path"], {k: dict(v) for k, v in it.get("sources", {}).items()})
                                 for it in items]
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise MixBuildError(f"{index_file}: not a SlimPajama index ({type(exc).__name__}: {exc})") from None
        for shards in splits.values():
            for s in shards:
                if not (root / s.path).is_file():
                    raise MixBuildError(f"{index_file} lists {s.path}, which is missing")
    else:
        for split in ("train", *HOLDOUT_SPLITS):
            found = sorted((p.relative_to(root).as_posix() for p in root.glob(f"{split}/chunk*/*.jsonl.zst")),
                           key=_natural_key)
            if found:
                splits[split] = [InputShard(split, p) for p in found]
    if not splits.get("train"):
        raise MixBuildError(f"{root}: no train shards (expected train/chunk*/example_train_*.jsonl.zst "
                            f"listed in {INPUT_INDEX})")
    return splits, info


# ------------------------------------------------------------------------------------------ tokenizer

_WORKER_TOKENIZERS: dict[tuple[str, str], Tokenizer] = {}


def worker_tokenizer(spec: str, identity: str | None = None) -> Tokenizer:
    """The tokenizer in a Ray worker: loaded once per process, single-threaded (Ray gives each task one
    core; letting tiktoken/rayon spawn more would oversubscribe it), and checked against ``identity``."""
    key = (spec, identity or "")
    tok = _WORKER_TOKENIZERS.get(key)
    if tok is None:
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
        os.environ.setdefault("RAYON_NUM_THREADS", "1")
        tok = load_tokenizer(spec)
        if hasattr(tok, "num_threads"):
            tok.num_threads = 1
        if identity and tok.identity != identity:
            raise RuntimeError(f"tokenizer {spec} changed during the job (identity {tok.identity[:12]}, "
                               f"expected {identity[:12]})")
        _WORKER_TOKENIZERS[key] = tok
    return tok


def resolve_tokenizer(spec: str) -> Tokenizer:
    """``gpt2``, a ``tokenizer.json``, a tokenizer folder, or a previous mix folder (its ``tokenizer/``),
    so every mix of an experiment can share one tokenizer."""
    p = Path(spec).expanduser()
    if p.is_dir() and (p / TOKENIZER_DIR).is_dir() and not (p / "tokenizer.json").is_file():
        p = p / TOKENIZER_DIR
    try:
        return load_tokenizer(p if p.exists() else spec)
    except (OSError, ValueError) as exc:
        raise MixBuildError(f"tokenizer {spec!r}: {exc}") from None


def shard_input(path: str | Path) -> InputFile:
    """A SlimPajama shard to read, with the source left to each record's ``meta.redpajama_set_name``.

    Shards mix all sources, so the file-name inference of :func:`slimpipe.io.readers.discover_files`
    must not apply: it also looks at parent folders, and ``/data/c4-runs/...`` would label every
    document ``c4``.
    """
    p = Path(path)
    return InputFile(path=str(p.resolve()), rel=p.name, source=None, fmt=file_format(p) or "jsonl.zst")


def _doc_hashes(texts: Sequence[str]) -> np.ndarray:
    """64-bit prefixes of SHA-256 of each text (SlimPajama decontaminates on full-text SHA-256)."""
    return np.array([int.from_bytes(hashlib.sha256(t.encode("utf-8")).digest()[:8], "little") for t in texts],
                    dtype=np.uint64)


def _arrow_token_type(vocab_size: int) -> pa.DataType:
    return pa.uint16() if token_dtype(vocab_size).itemsize == 2 else pa.uint32()


def _tokens_array(ids: list[list[int]], dtype: np.dtype) -> pa.Array:
    lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
    offsets = np.zeros(len(ids) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    # chain.from_iterable keeps the per-token loop in C (2-3x faster than a generator expression)
    values = np.fromiter(itertools.chain.from_iterable(ids), dtype=dtype, count=int(offsets[-1]))
    return pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(values))


def _list_parts(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Offsets and flat values of a (large) list array, as numpy, without copying the values."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks() if arr.num_chunks != 1 else arr.chunk(0)
    if len(arr) == 0:
        return np.zeros(1, np.int64), np.zeros(0, np.uint32)
    offsets = np.asarray(arr.offsets, dtype=np.int64)
    return offsets - offsets[0], arr.values.to_numpy(zero_copy_only=False)[offsets[0] : offsets[-1]]


def _atomic_arrow(path: Path, schema: pa.Schema, batches: Sequence[pa.RecordBatch]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with pa.OSFile(str(tmp), "wb") as sink, ipc.new_file(sink, schema) as w:
        for b in batches:
            w.write_batch(b)
    os.replace(tmp, path)


def _read_arrow(path: str | Path) -> pa.Table:
    with pa.memory_map(str(path), "r") as source:
        return ipc.open_file(source).read_all()


# --------------------------------------------------------------------- stage 1 + 2: tokenize a shard


def _pass1_schema(keep_tokens: bool, vocab_size: int) -> pa.Schema:
    fields = [("line", pa.int64()), ("source", pa.int8()), ("ntok", pa.int64()), ("nbytes", pa.int64())]
    if keep_tokens:
        fields.append(("tokens", pa.large_list(_arrow_token_type(vocab_size))))
    return pa.schema(fields)


def tokenize_shard(job: dict[str, Any], holdout: np.ndarray | None = None) -> dict[str, Any]:
    """Ray task: tokenize one shard's documents of ``job["sources"]`` into a scratch Arrow file.

    Documents whose text hash is in ``holdout`` are dropped (counted per source). Returns per-source
    ``docs``/``tokens`` (cost: tokens + 1 EOS)/``bytes``, rejects, and with ``want_hashes`` every text hash.
    The result is also saved next to the scratch file, which lets a rerun skip this shard.
    """
    tok = worker_tokenizer(job["tokenizer"], job["identity"])
    dtype = token_dtype(tok.vocab_size)
    keep = {_CODE[s] for s in job["sources"]}
    schema = _pass1_schema(job["keep_tokens"], tok.vocab_size)
    stats = {s: {"docs": 0, "tokens": 0, "bytes": 0} for s in job["sources"]}
    dropped = dict.fromkeys(job["sources"], 0)
    batches, hashes, rejected, empty = [], [], 0, 0
    status, error = "ok", None
    for docs, rejects, fstats in read_batches(shard_input(job["file"])):
        if rejects is not None:
            rejected += rejects.num_rows
        if fstats is not None:
            status, error = fstats.status, fstats.error
        if docs is None or docs.num_rows == 0:
            continue
        srcs = docs.column("source").to_pylist()
        rows = [i for i, s in enumerate(srcs) if s in _CODE and _CODE[s] in keep]
        texts_all = docs.column("text").to_pylist()
        if job["want_hashes"]:
            hashes.append(_doc_hashes([texts_all[i] for i in rows]))
        if holdout is not None and holdout.size and rows:
            h = hashes[-1] if job["want_hashes"] else _doc_hashes([texts_all[i] for i in rows])
            clean = ~np.isin(h, holdout)
            for i, ok in zip(rows, clean, strict=True):
                if not ok:
                    dropped[srcs[i]] += 1
            rows = [i for i, ok in zip(rows, clean, strict=True) if ok]
        if not rows:
            continue
        texts = [texts_all[i] for i in rows]
        ids = tok.encode_batch(texts)
        lines = docs.column("line").to_numpy()
        nbytes = docs.column("nbytes").to_numpy()
        sel = [k for k, x in enumerate(ids) if x]  # a document without tokens contributes nothing
        empty += len(ids) - len(sel)
        cols: dict[str, Any] = {
            "line": pa.array(lines[[rows[k] for k in sel]] if sel else [], pa.int64()),
            "source": pa.array([_CODE[srcs[rows[k]]] for k in sel], pa.int8()),
            "ntok": pa.array([len(ids[k]) for k in sel], pa.int64()),
            "nbytes": pa.array(nbytes[[rows[k] for k in sel]] if sel else [], pa.int64()),
        }
        if job["keep_tokens"]:
            cols["tokens"] = _tokens_array([ids[k] for k in sel], dtype).cast(schema.field("tokens").type)
        for k in sel:
            st = stats[srcs[rows[k]]]
            st["docs"] += 1
            st["tokens"] += len(ids[k]) + 1
            st["bytes"] += int(nbytes[rows[k]])
        batches.append(pa.RecordBatch.from_pydict(cols, schema=schema))
    out = Path(job["out"])
    _atomic_arrow(out, schema, batches)
    result = {"path": job["path"], "stats": stats, "rejected": rejected, "empty": empty,
              "holdout_dropped": dropped, "status": status, "error": error}
    if job["want_hashes"]:
        h = np.concatenate(hashes) if hashes else np.zeros(0, np.uint64)
        np.save(out.with_suffix(".hashes.npy"), h)
    atomic_write_json(out.with_suffix(".json"), result)
    return result


def _load_pass1_result(out: Path, want_hashes: bool) -> dict[str, Any] | None:
    """A previous run's result for this shard, if it completed (resume)."""
    res = out.with_suffix(".json")
    if not (res.is_file() and out.is_file()) or (want_hashes and not out.with_suffix(".hashes.npy").is_file()):
        return None
    try:
        return json.loads(res.read_text())
    except ValueError:
        return None


# ------------------------------------------------------------------------------- stage 4: selection


def _piece_schema(text: bool, vocab_size: int) -> pa.Schema:
    fields = [("source", pa.int8()), ("line", pa.int64()), ("epoch", pa.int32()), ("ntok", pa.int64()),
              ("doc_ntok", pa.int64()), ("doc_nbytes", pa.int64()), ("truncated", pa.bool_())]
    if text:
        fields += [("text", pa.large_string()), ("slimpipe_id", pa.string())]
    else:
        fields.append(("tokens", pa.large_list(_arrow_token_type(vocab_size))))
    return pa.schema(fields)


def _choose_pieces(table: pa.Table, plan: dict[str, tuple[int, int]], seed: int, key: int) -> dict[str, np.ndarray]:
    """Rows and lengths of every piece one shard contributes: whole repeated epochs, then a seeded
    sample filling each source's quota exactly (last piece truncated). Pure given the scratch table."""
    src = table.column("source").to_numpy()
    ntok = table.column("ntok").to_numpy()
    rows, epoch, length, trunc, source = [], [], [], [], []
    for s, (full, quota) in plan.items():
        code = _CODE[s]
        idx = np.flatnonzero(src == code)
        if idx.size == 0:
            continue
        for e in range(full):
            rows.append(idx)
            epoch.append(np.full(idx.size, e, np.int32))
            length.append(ntok[idx])
            trunc.append(np.zeros(idx.size, bool))
            source.append(np.full(idx.size, code, np.int8))
        if quota <= 0:
            continue
        order = np.random.default_rng([seed, SELECT, key, code]).permutation(idx.size)
        taken, piece = B.select_documents(ntok[idx] + 1, order, quota)
        picked = idx[taken]
        rows.append(picked)
        length.append(ntok[picked])
        trunc.append(np.zeros(picked.size, bool))
        if piece:
            rows.append(idx[order[taken.size : taken.size + 1]])
            length.append(np.array([piece - 1], np.int64))
            trunc.append(np.ones(1, bool))
        n = picked.size + (1 if piece else 0)
        epoch.append(np.full(n, full, np.int32))
        source.append(np.full(n, code, np.int8))
    if not rows:
        z = np.zeros(0, np.int64)
        return {"row": z, "epoch": z.astype(np.int32), "ntok": z, "truncated": z.astype(bool), "source": z.astype(np.int8)}
    return {"row": np.concatenate(rows), "epoch": np.concatenate(epoch), "ntok": np.concatenate(length),
            "truncated": np.concatenate(trunc), "source": np.concatenate(source)}


def _gather_tokens(offsets: np.ndarray, values: np.ndarray, rows: np.ndarray, lengths: np.ndarray) -> pa.Array:
    """The first ``lengths[i]`` tokens of document ``rows[i]``, as one large-list array (vectorised)."""
    new_off = np.zeros(rows.size + 1, dtype=np.int64)
    np.cumsum(lengths, out=new_off[1:])
    idx = np.repeat(offsets[rows] - new_off[:-1], lengths) + np.arange(new_off[-1], dtype=np.int64)
    return pa.LargeListArray.from_arrays(pa.array(new_off), pa.array(values[idx]))


def _cut_text(text: str, tok: Tokenizer, ntok: int) -> str:
    """The text of a document's first ``ntok`` tokens (the truncated piece of a text-format mix)."""
    ids = tok.encode_batch([text])[0][:ntok]
    table = tok.byte_lengths
    if table is not None:
        n = int(table[np.asarray(ids, dtype=np.int64)].sum())
        return text.encode("utf-8")[:n].decode("utf-8", errors="ignore")
    return tok.decode(ids)


def _read_texts(file: str, lines: set[int]) -> dict[int, tuple[str, str | None]]:
    """``line -> (text, slimpipe_id)`` for the wanted lines of one input shard (streamed)."""
    out: dict[int, tuple[str, str | None]] = {}
    for docs, _rejects, _stats in read_batches(shard_input(file)):
        if docs is None:
            continue
        for line, text, meta in zip(docs.column("line").to_pylist(), docs.column("text").to_pylist(),
                                    docs.column("meta").to_pylist(), strict=True):
            if line in lines:
                try:
                    sid = (json.loads(meta) or {}).get("slimpipe_id") if meta else None
                except ValueError:
                    sid = None
                out[line] = (text, sid if isinstance(sid, str) else None)
    return out


def select_shard(job: dict[str, Any]) -> dict[str, Any]:
    """Ray task: choose one shard's pieces and write them grouped by bucket (one record batch each)."""
    table = _read_arrow(job["pass1"])
    pieces = _choose_pieces(table, job["plan"], job["seed"], job["key"])
    text = job["format"] == "text"
    n_buckets = int(job["buckets"])
    rng = np.random.default_rng([job["seed"], BUCKET, job["key"]])
    bucket = rng.integers(0, n_buckets, size=pieces["row"].size) if n_buckets > 1 else np.zeros(pieces["row"].size, np.int64)
    order = np.argsort(bucket, kind="stable")
    pieces = {k: v[order] for k, v in pieces.items()}
    bucket = bucket[order]
    rows = pieces["row"]
    lines = table.column("line").to_numpy()[rows]
    cols: dict[str, pa.Array] = {
        "source": pa.array(pieces["source"], pa.int8()),
        "line": pa.array(lines, pa.int64()),
        "epoch": pa.array(pieces["epoch"], pa.int32()),
        "ntok": pa.array(pieces["ntok"], pa.int64()),
        "doc_ntok": pa.array(table.column("ntok").to_numpy()[rows], pa.int64()),
        "doc_nbytes": pa.array(table.column("nbytes").to_numpy()[rows], pa.int64()),
        "truncated": pa.array(pieces["truncated"], pa.bool_()),
    }
    schema = _piece_schema(text, job["vocab_size"])
    if text:
        found = _read_texts(job["file"], set(lines.tolist()))
        tok = worker_tokenizer(job["tokenizer"], job["identity"]) if pieces["truncated"].any() else None
        texts, ids = [], []
        for line, n, cut in zip(lines.tolist(), pieces["ntok"].tolist(), pieces["truncated"].tolist(), strict=True):
            t, sid = found[line]
            texts.append(_cut_text(t, tok, n) if cut else t)
            ids.append(sid)
        cols["text"] = pa.array(texts, pa.large_string())
        cols["slimpipe_id"] = pa.array(ids, pa.string())
    else:
        offsets, values = _list_parts(table.column("tokens"))
        cols["tokens"] = _gather_tokens(offsets, values, rows, pieces["ntok"]).cast(schema.field("tokens").type)
    arrays = [cols[f.name] for f in schema]
    starts = np.searchsorted(bucket, np.arange(n_buckets + 1))
    batches = [pa.RecordBatch.from_arrays([a.slice(int(starts[b]), int(starts[b + 1] - starts[b])) for a in arrays],
                                          schema=schema) for b in range(n_buckets)]
    _atomic_arrow(Path(job["out"]), schema, batches)
    per_source: dict[str, dict[str, int]] = {}
    for s in job["plan"]:
        m = pieces["source"] == _CODE[s]
        per_source[s] = {"pieces": int(m.sum()), "tokens": int((pieces["ntok"][m] + 1).sum()),
                         "truncated": int(pieces["truncated"][m].sum())}
    return {"path": job["path"], "buckets": np.bincount(bucket, minlength=n_buckets).tolist(), "sources": per_source}


# ------------------------------------------------------------------------------- stage 5: shuffle


def _bucket_table(files: Sequence[str], b: int) -> pa.Table | None:
    batches = []
    for path in files:
        with pa.memory_map(path, "r") as source:
            batch = ipc.open_file(source).get_batch(b)
            if batch.num_rows:
                batches.append(batch)
    if not batches:
        return None
    return pa.Table.from_batches(batches).combine_chunks()


def write_text_bucket(job: dict[str, Any]) -> dict[str, Any]:
    """Ray task: shuffle one bucket and write it as ``train/chunk{b+1}/example_train_{j}.jsonl.zst``."""
    b = int(job["bucket"])
    table = _bucket_table(job["files"], b)
    if table is None:
        return {"shards": [], "index": []}
    perm = np.random.default_rng([job["seed"], SHUFFLE, b]).permutation(table.num_rows)
    src = table.column("source").to_numpy()
    ntok = table.column("ntok").to_numpy()
    texts = table.column("text").to_pylist()
    ids = table.column("slimpipe_id").to_pylist()
    per_shard: dict[str, dict[str, dict[str, int]]] = {}
    with ShardWriter(job["root"], "train", chunk=b + 1, max_bytes=job["shard_bytes"]) as w:
        for i in perm.tolist():
            source = SOURCES[src[i]]
            text = texts[i]
            record = slimpajama_record(text, source)
            sid = ids[i]
            if sid:
                record["meta"]["slimpipe_id"] = sid
            rel = f"train/chunk{b + 1}/example_train_{w.index}.jsonl.zst"
            w.write(record)
            st = per_shard.setdefault(rel, {}).setdefault(source, {"docs": 0, "bytes": 0, "words": 0, "tokens": 0})
            st["docs"] += 1
            st["bytes"] += len(text.encode("utf-8"))
            st["words"] += len(text.split())
            st["tokens"] += int(ntok[i]) + 1
    shards = w.shards
    return {"shards": [s.to_dict() for s in shards],
            "index": [{"path": s.path, "sources": per_shard.get(s.path, {})} for s in shards]}


# ---------------------------------------------------------------------------------- ray helpers


def _run_ordered(fn: Callable, jobs: Sequence[dict], args: Sequence[Any] = (), *, cached: Sequence[Any] | None = None,
                 stop: Callable[[list], bool] | None = None, label: str, quiet: bool, unit: str = "shards") -> list:
    """Run ``fn(job, *args)`` as Ray tasks, in job order, at most ~2 per CPU in flight.

    ``cached[i]`` (not None) skips job ``i``. After each completion ``stop(results)`` may end the run
    early; tasks still in flight are cancelled and their results ignored (``None`` in the output).
    """
    import ray

    from slimpipe.engine import available_cpus

    remote = ray.remote(num_cpus=1, max_retries=2)(fn)
    results: list = list(cached) if cached is not None else [None] * len(jobs)
    todo = [i for i in range(len(jobs)) if results[i] is None]
    limit = max(2, 2 * available_cpus())
    pending: dict[Any, int] = {}
    with Progress(label, total=len(jobs), unit=unit, enabled=not quiet) as bar:
        bar.update(len(jobs) - len(todo))
        if stop is not None and stop(results):
            return results
        nxt = 0
        while nxt < len(todo) or pending:
            while nxt < len(todo) and len(pending) < limit:
                i = todo[nxt]
                pending[remote.remote(jobs[i], *args)] = i
                nxt += 1
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                results[pending.pop(ref)] = ray.get(ref)
                bar.update(1)
            if stop is not None and stop(results):
                for ref in pending:
                    ray.cancel(ref, force=False)
                if pending:  # let cancelled tasks wind down before the caller cleans their folder
                    ray.wait(list(pending), num_returns=len(pending), timeout=60)
                return results
    return results


# ----------------------------------------------------------------------------------- the job


@dataclass
class _Ctx:
    root: Path
    out: Path
    mix: MixConfig
    opt: MixOptions
    tok: Tokenizer
    work: Path
    input_id: str = ""  # hash of the input's manifest/index/path: scratch from another input is never reused
    warnings: list[str] = field(default_factory=list)

    def warn(self, msg: str) -> None:
        self.warnings.append(msg)
        (self.opt.warn or log.warning)(msg)


def _prepare_out(out: Path, overwrite: bool) -> None:
    """Refuse to clobber a finished mix or a foreign folder; clean our own outputs on ``overwrite``."""
    ours = ("train", "eval", "test", "validation", TOKENIZER_DIR, MANIFEST, INPUT_INDEX)
    if out.exists() and not out.is_dir():
        raise MixBuildError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        finished = (out / MANIFEST).is_file()
        resumable = (out / WORK).is_dir()
        if finished and not overwrite:
            raise MixBuildError(f"{out} already holds a mix (manifest.json); pass --overwrite to replace it")
        if not (finished or resumable or overwrite):
            raise MixBuildError(f"{out} is not empty and holds no mix; choose another folder or pass --overwrite")
        for name in (*ours, WORK) if overwrite else ours:
            p = out / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    out.mkdir(parents=True, exist_ok=True)


def _bpe_texts(root: Path, shards: Sequence[InputShard], seed: int, limit: int) -> Iterator[str]:
    """Training text for a shared BPE: whole train documents of *all* sources, shards in a seeded order,
    until ``limit`` bytes. Independent of the mix, so any mix of an experiment trains the same tokenizer."""
    order = np.random.default_rng([seed, BPE_SAMPLE]).permutation(len(shards))
    seen = 0
    for i in order.tolist():
        for docs, _r, _s in read_batches(shard_input(root / shards[i].path)):
            if docs is None:
                continue
            for text in docs.column("text").to_pylist():
                yield text
                seen += len(text.encode("utf-8"))
                if seen >= limit:
                    return


def _setup_tokenizer(root: Path, out: Path, splits: dict[str, list[InputShard]], opt: MixOptions) -> Tokenizer:
    if opt.tokenizer == "train":
        if opt.vocab_size < 257:
            raise MixBuildError("--vocab-size must be at least 257 (256 bytes + EOS)")
        t0 = time.monotonic()
        tok = train_bpe(_bpe_texts(root, splits["train"], opt.seed, opt.bpe_sample_bytes), opt.vocab_size,
                        out / TOKENIZER_DIR)
        log.info("trained a %d-token byte-level BPE in %.1fs", tok.vocab_size, time.monotonic() - t0)
        return tok
    return resolve_tokenizer(opt.tokenizer)


def _flat(path: str) -> str:
    return path.replace("/", "__").removesuffix(".jsonl.zst")


def _work_key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _pass1_jobs(ctx: _Ctx, shards: Sequence[InputShard], sources: Sequence[str], keep_tokens: bool,
                want_hashes: bool, folder: Path) -> tuple[list[dict], list]:
    jobs, cached = [], []
    for s in shards:
        out = folder / f"{_flat(s.path)}.arrow"
        jobs.append({"file": str(ctx.root / s.path), "path": s.path, "out": str(out), "sources": list(sources),
                     "tokenizer": ctx.tok.spec, "identity": ctx.tok.identity, "keep_tokens": keep_tokens,
                     "want_hashes": want_hashes})
        cached.append(_load_pass1_result(out, want_hashes))
    return jobs, cached


def _holdout_stage(ctx: _Ctx, splits: dict[str, list[InputShard]]) -> tuple[dict[str, list[InputShard]],
                                                                             dict[str, list[dict]], np.ndarray]:
    """Tokenize every held-out shard (all sources) and collect the hashes of its texts."""
    keep_tokens = ctx.opt.output_format == "packed"
    folder = ctx.work / f"holdout-{_work_key(ctx.input_id, ctx.tok.identity, keep_tokens)}"
    present = {sp: splits[sp] for sp in HOLDOUT_SPLITS if splits.get(sp)}
    if not present:
        ctx.warn("the input has no validation or test split: the mix gets no evaluation sets")
        return {}, {}, np.zeros(0, np.uint64)
    flat = [s for sp in present for s in present[sp]]
    jobs, cached = _pass1_jobs(ctx, flat, SOURCES, keep_tokens, True, folder)
    results = _run_ordered(tokenize_shard, jobs, cached=cached, label="mix: holdout", quiet=ctx.opt.quiet)
    hashes = [np.load(Path(j["out"]).with_suffix(".hashes.npy")) for j in jobs]
    by_split: dict[str, list[dict]] = {}
    k = 0
    for sp, shards in present.items():
        by_split[sp] = [dict(results[k + i], out=jobs[k + i]["out"]) for i in range(len(shards))]
        k += len(shards)
    all_h = np.unique(np.concatenate(hashes)) if hashes else np.zeros(0, np.uint64)
    return present, by_split, all_h


def _train_stage(ctx: _Ctx, shards: list[InputShard], holdout: np.ndarray,
                 targets: dict[str, int]) -> tuple[list[InputShard], list[dict], int]:
    """Tokenize train shards in a seeded order until a prefix covers every target (or all are done)."""
    import ray

    active = ctx.mix.active_sources
    eligible = [s for s in shards if s.counts is None or any(s.source_units(a, "docs") > 0 for a in active)]
    if not eligible:
        raise MixBuildError(f"no train shard holds documents of {', '.join(active)} (per {INPUT_INDEX})")
    order = np.random.default_rng([ctx.opt.seed, SHARD_ORDER]).permutation(len(eligible))
    ordered = [eligible[i] for i in order.tolist()]
    keep_tokens = ctx.opt.output_format == "packed"
    digest = hashlib.sha256(holdout.tobytes()).hexdigest()
    folder = ctx.work / f"train-{_work_key(ctx.input_id, ctx.tok.identity, keep_tokens, active, digest)}"
    jobs, cached = _pass1_jobs(ctx, ordered, active, keep_tokens, False, folder)
    need = {s: t for s, t in targets.items() if t > 0}
    state: dict[str, Any] = {"done": 0, "have": dict.fromkeys(need, 0), "k": None}

    def covered(results: list) -> bool:
        """Extend the finished prefix shard by shard; the first length that covers every target is the
        minimal prefix (same answer as :func:`budget.minimal_prefix`, in linear time)."""
        while state["k"] is None and state["done"] < len(results) and results[state["done"]] is not None:
            stats = results[state["done"]]["stats"]
            for s in need:
                state["have"][s] += stats[s]["tokens"]
            state["done"] += 1
            if all(state["have"][s] >= need[s] for s in need):
                state["k"] = state["done"]
        return state["k"] is not None

    results = _run_ordered(tokenize_shard, jobs, (ray.put(holdout),), cached=cached, stop=covered,
                           label="mix: tokenize", quiet=ctx.opt.quiet)
    k = state["k"] if state["k"] is not None else len(ordered)
    used = [dict(results[i], out=jobs[i]["out"]) for i in range(k)]
    return ordered[:k], used, len(eligible)


def _available(ctx: _Ctx, all_train: list[InputShard], used: list[InputShard], res: list[dict],
               exact: bool) -> tuple[dict[str, int], dict[str, int]]:
    """Tokens available per source in the used prefix, and (estimated when not exact) in the whole input."""
    active = ctx.mix.active_sources
    prefix = {s: sum(r["stats"][s]["tokens"] for r in res) for s in active}
    if exact:
        return prefix, dict(prefix)
    total: dict[str, int] = {}
    for s in active:
        pb = sum(x.source_units(s) for x in used)
        tb = sum(x.source_units(s) for x in all_train)
        total[s] = B.estimate_available(prefix[s], pb, tb)
    return prefix, total


def _pack_train(ctx: _Ctx, files: list[str], n_buckets: int) -> tuple[dict, dict[str, int], dict[str, int]]:
    """Stage 5, packed: shuffle each bucket and stream it into one PackedWriter; count tokens per source."""
    tok = ctx.tok
    table_bl = tok.byte_lengths
    counts = dict.fromkeys(ctx.mix.active_sources, 0)
    docs = dict.fromkeys(ctx.mix.active_sources, 0)
    tail: deque[tuple[str, int]] = deque()
    tail_sum = 0
    L = ctx.opt.seq_len
    meta = {"set": "train", "mix": ctx.mix.name, "seed": ctx.opt.seed}
    with PackedWriter(train_path(ctx.out), L, vocab_size=tok.vocab_size, eos_id=tok.eos_id, tokenizer=tok,
                      meta=meta, overwrite=True) as w, \
            Progress("mix: pack", total=n_buckets, unit="buckets", enabled=not ctx.opt.quiet) as bar:
        for b in range(n_buckets):
            table = _bucket_table(files, b)
            bar.update(1)
            if table is None:
                continue
            perm = np.random.default_rng([ctx.opt.seed, SHUFFLE, b]).permutation(table.num_rows)
            offsets, values = _list_parts(table.column("tokens"))
            src = table.column("source").to_numpy()
            doc_ntok = table.column("doc_ntok").to_numpy()
            doc_nbytes = table.column("doc_nbytes").to_numpy()
            truncated = np.asarray(table.column("truncated").to_pylist(), dtype=bool)
            for i in perm.tolist():
                ids = values[offsets[i] : offsets[i + 1]].astype(np.int64)
                tb = table_bl[ids] if table_bl is not None else None
                if not truncated[i]:
                    nb = int(doc_nbytes[i])
                    if tb is not None and int(tb.sum()) != nb:
                        tb = None  # e.g. a normaliser changed the text: apportion instead
                elif tb is not None:
                    nb = int(tb.sum())
                else:
                    nb = int(apportion_bytes(int(doc_nbytes[i]), int(doc_ntok[i]))[: ids.size].sum())
                w.add(ids, nb, tb)
                source = SOURCES[src[i]]
                cost = ids.size + 1
                counts[source] += cost
                docs[source] += 1
                tail.append((source, cost))
                tail_sum += cost
                while len(tail) > 1 and tail_sum - tail[0][1] >= L + 1:
                    tail_sum -= tail.popleft()[1]
    index = json.loads((train_path(ctx.out) / INDEX).read_text())
    back = B.attribute_dropped([s for s, _ in tail], [c for _, c in tail], index["dropped_tokens"])
    for s, n in back.items():
        counts[s] -= n
    return index, counts, docs


def _eval_selection(ctx: _Ctx, tables: list[pa.Table], split_idx: int) -> dict[str, list[tuple[int, int, int]]]:
    """Per source: ``(shard, row, piece)`` for a seeded sample capped at ``eval_tokens``; ``piece`` is the
    cost of a truncated last document, 0 for whole ones. Depends on the holdout only, never on the mix."""
    picks: dict[str, list[tuple[int, int, int]]] = {}
    for s in SOURCES:
        code = _CODE[s]
        parts = [(k, np.flatnonzero(t.column("source").to_numpy() == code)) for k, t in enumerate(tables)]
        shard_of = np.concatenate([np.full(r.size, k) for k, r in parts]) if parts else np.zeros(0, np.int64)
        row_of = np.concatenate([r for _, r in parts]) if parts else np.zeros(0, np.int64)
        if row_of.size == 0:
            continue
        costs = np.concatenate([t.column("ntok").to_numpy()[r] + 1 for t, (_, r) in zip(tables, parts, strict=True)])
        order = np.random.default_rng([ctx.opt.seed, EVAL, split_idx, code]).permutation(row_of.size)
        if ctx.opt.eval_tokens:
            taken, piece = B.select_documents(costs, order, ctx.opt.eval_tokens)
        else:
            taken, piece = order, 0
        sel = [(int(shard_of[j]), int(row_of[j]), 0) for j in taken.tolist()]
        if piece:
            j = int(order[taken.size])
            sel.append((int(shard_of[j]), int(row_of[j]), piece))
        picks[s] = sel
    return picks


def _write_eval_packed(ctx: _Ctx, split: str, split_idx: int, results: list[dict]) -> dict[str, dict]:
    """``eval/<source>/`` (validation) or ``test/<source>/`` (test): the same sample for every mix."""
    tok = ctx.tok
    table_bl = tok.byte_lengths
    tables = [_read_arrow(r["out"]) for r in results]
    parts = [_list_parts(t.column("tokens")) for t in tables]
    ntoks = [t.column("ntok").to_numpy() for t in tables]
    nbytes_of = [t.column("nbytes").to_numpy() for t in tables]
    out: dict[str, dict] = {}
    L = ctx.opt.seq_len
    for s, sel in _eval_selection(ctx, tables, split_idx).items():
        cost = sum(piece or int(ntoks[k][r]) + 1 for k, r, piece in sel)
        if cost < L:
            ctx.warn(f"{split} set for {s}: only {cost} tokens in the holdout sample, less than one sequence of "
                     f"{L}; not written")
            out[s] = {"docs": len(sel), "tokens": cost, "n_sequences": 0, "written": False}
            continue
        path = eval_path(ctx.out, s) if split == "validation" else ctx.out / "test" / s
        meta = {"set": f"{'eval' if split == 'validation' else 'test'}/{s}", "split": split, "source": s,
                "seed": ctx.opt.seed}
        with PackedWriter(path, L, vocab_size=tok.vocab_size, eos_id=tok.eos_id, tokenizer=tok, meta=meta,
                          overwrite=True) as w:
            for k, r, piece in sel:
                offsets, values = parts[k]
                ids = values[offsets[r] : offsets[r + 1]].astype(np.int64)
                nbytes = int(nbytes_of[k][r])
                if piece:
                    full = ids.size
                    ids = ids[: piece - 1]
                    nbytes = (int(table_bl[ids].sum()) if table_bl is not None
                              else int(apportion_bytes(nbytes, full)[: ids.size].sum()))
                tb = table_bl[ids] if table_bl is not None else None
                if tb is not None and int(tb.sum()) != nbytes:
                    tb = None
                w.add(ids, nbytes, tb)
        index = json.loads((path / INDEX).read_text())
        out[s] = {"docs": len(sel), "tokens": index["n_sequences"] * L, "n_sequences": index["n_sequences"],
                  "truncated_docs": sum(1 for *_, p in sel if p), "dropped_tokens": index["dropped_tokens"],
                  "written": True, "path": str(path.relative_to(ctx.out))}
    return out


def _write_eval_text(ctx: _Ctx, split: str, split_idx: int, shards: list[InputShard], results: list[dict]
                     ) -> tuple[dict[str, dict], list[ShardInfo], list[dict]]:
    """Text format: the capped holdout sample per source as ``{split}/chunk1/example_{split}_{j}.jsonl.zst``."""
    tables = [_read_arrow(r["out"]) for r in results]
    lines_of = [t.column("line").to_numpy() for t in tables]
    ntoks = [t.column("ntok").to_numpy() for t in tables]
    sel = _eval_selection(ctx, tables, split_idx)
    wanted: dict[int, dict[int, tuple[str, int, int]]] = {}
    for s, items in sel.items():
        for k, r, piece in items:
            wanted.setdefault(k, {})[int(lines_of[k][r])] = (s, piece, int(ntoks[k][r]))
    stats: dict[str, dict] = {s: {"docs": 0, "tokens": 0, "bytes": 0} for s in sel}
    index_items: list[dict] = []
    per_shard: dict[str, dict[str, dict[str, int]]] = {}
    with ShardWriter(ctx.out, split, chunk=1, max_bytes=ctx.opt.text_shard_bytes) as w:
        for k in sorted(wanted):
            texts = _read_texts(str(ctx.root / shards[k].path), set(wanted[k]))
            for line in sorted(wanted[k]):
                s, piece, doc_ntok = wanted[k][line]
                text, sid = texts[line]
                if piece:
                    text = _cut_text(text, ctx.tok, piece - 1)
                record = slimpajama_record(text, s)
                if sid:
                    record["meta"]["slimpipe_id"] = sid
                rel = f"{split}/chunk1/example_{split}_{w.index}.jsonl.zst"
                w.write(record)
                n_tok = (piece - 1) if piece else doc_ntok
                stats[s]["docs"] += 1
                stats[s]["tokens"] += n_tok + 1
                stats[s]["bytes"] += len(text.encode("utf-8"))
                st = per_shard.setdefault(rel, {}).setdefault(s, {"docs": 0, "bytes": 0, "words": 0})
                st["docs"] += 1
                st["bytes"] += len(text.encode("utf-8"))
                st["words"] += len(text.split())
    for info in w.shards:
        index_items.append({"path": info.path, "sources": per_shard.get(info.path, {})})
    return stats, w.shards, index_items


def build_mix(slimpajama_dir: str | Path, mix: MixConfig, out: str | Path, opt: MixOptions) -> dict:
    """Build ``mix`` from a SlimPajama folder into ``out``; returns the manifest (also ``out/manifest.json``)."""
    from slimpipe.engine import ensure_ray

    opt.check()
    t_start = time.monotonic()
    root, out = Path(slimpajama_dir), Path(out)
    splits, input_info = read_input(root)
    if root.resolve() == out.resolve():
        raise MixBuildError("the output folder must differ from the input folder")
    active = mix.active_sources
    train_shards = splits["train"]
    if all(s.counts is not None for s in train_shards):  # fail before any work when the index says so
        missing = [s for s in active if not any(x.source_units(s, "docs") for x in train_shards)]
        if missing:
            raise MixBuildError(f"mix {mix.name!r} needs " + ", ".join(f"{s} ({mix.shares[s]:.1%})" for s in missing)
                                + f" but {root} has no train documents of "
                                + ("it" if len(missing) == 1 else "them"))
    _prepare_out(out, opt.overwrite)
    work = out / WORK
    work.mkdir(exist_ok=True)
    ensure_ray(opt.ray_address)
    tok = _setup_tokenizer(root, out, splits, opt)
    ctx = _Ctx(root=root, out=out, mix=mix, opt=opt, tok=tok, work=work, input_id=_work_key(input_info))
    if input_info["manifest_sha256"] is None:
        ctx.warn(f"{root} has no manifest.json: the mix manifest cannot pin the input by hash")

    # 1. holdout, 2. tokenize
    holdout_shards, holdout_res, holdout_hashes = _holdout_stage(ctx, splits)
    targets = B.source_targets(opt.tokens, {s: mix.shares[s] for s in active})
    used, res, n_eligible = _train_stage(ctx, train_shards, holdout_hashes, targets)
    exact = len(used) == n_eligible

    # 3. plan
    prefix_avail, total_avail = _available(ctx, train_shards, used, res, exact or any(
        s.counts is None for s in train_shards))
    try:
        plans = B.plan_sources({s: mix.shares[s] for s in active}, prefix_avail, opt.tokens)
    except B.BudgetError as exc:
        raise MixBuildError(f"mix {mix.name!r}: {exc}") from None
    for s, p in plans.items():
        if p.upsampled:
            ctx.warn(f"{s}: the mix asks for {p.target:,} tokens but the input has {p.available:,}; repeating it "
                     f"{p.epochs:.2f} epochs ({p.full_epochs} whole + {p.remainder:,} tokens of one more)")
    per_shard = [{s: r["stats"][s]["tokens"] for s in active} for r in res]
    quotas = B.shard_quotas(plans, per_shard)
    n_buckets = max(1, math.ceil(opt.tokens / opt.bucket_tokens))

    # 4. select
    sel_dir = work / "select"
    shutil.rmtree(sel_dir, ignore_errors=True)
    jobs = []
    for shard, r, q in zip(used, res, quotas, strict=True):
        plan = {s: (plans[s].full_epochs, q.get(s, 0)) for s in active}
        if not any(full or quota for full, quota in plan.values()):
            continue
        jobs.append({"pass1": r["out"], "path": shard.path, "file": str(root / shard.path), "key": shard.key,
                     "plan": plan, "seed": opt.seed, "buckets": n_buckets, "format": opt.output_format,
                     "vocab_size": tok.vocab_size, "tokenizer": tok.spec, "identity": tok.identity,
                     "out": str(sel_dir / f"{_flat(shard.path)}.arrow")})
    selected = _run_ordered(select_shard, jobs, label="mix: select", quiet=opt.quiet)
    files = [j["out"] for j in jobs]
    pieces = {s: {"pieces": sum(x["sources"][s]["pieces"] for x in selected),
                  "truncated": sum(x["sources"][s]["truncated"] for x in selected)} for s in active}

    # 5. shuffle + write, 6. eval sets
    manifest_extra: dict[str, Any] = {}
    text_shards: list[ShardInfo] = []
    text_index: dict[str, list[dict]] = {}
    eval_info: dict[str, dict] = {}
    if opt.output_format == "packed":
        train_index, realised, docs_packed = _pack_train(ctx, files, n_buckets)
        manifest_extra["train"] = {k: train_index[k] for k in ("n_sequences", "n_tokens", "seq_len", "dropped_tokens",
                                                               "n_documents", "total_bytes", "bytes_exact")}
        for i, sp in enumerate(HOLDOUT_SPLITS):
            if sp in holdout_res:
                eval_info[sp] = _write_eval_packed(ctx, sp, i, holdout_res[sp])
    else:
        bjobs = [{"bucket": b, "files": files, "seed": opt.seed, "root": str(out), "shard_bytes": opt.text_shard_bytes}
                 for b in range(n_buckets)]
        written = _run_ordered(write_text_bucket, bjobs, label="mix: write", quiet=opt.quiet, unit="buckets")
        realised = dict.fromkeys(active, 0)
        docs_packed = dict.fromkeys(active, 0)
        text_index["train"] = []
        for wr in written:
            text_shards += [ShardInfo(**d) for d in wr["shards"]]
            text_index["train"] += wr["index"]
            for item in wr["index"]:
                for s, st in item["sources"].items():
                    realised[s] += st.pop("tokens")
                    docs_packed[s] += st["docs"]
        for i, sp in enumerate(HOLDOUT_SPLITS):
            if sp in holdout_res:
                stats, infos, items = _write_eval_text(ctx, sp, i, holdout_shards[sp], holdout_res[sp])
                eval_info[sp] = stats
                text_shards += infos
                text_index[sp] = items
        atomic_write_json(out / INPUT_INDEX, {"splits": text_index})

    # 7. manifest
    if not (out / TOKENIZER_DIR).is_dir():
        tok.save(out / TOKENIZER_DIR)
    target_shares = {s: mix.shares[s] for s in SOURCES}
    shares = B.realised_shares({s: realised.get(s, 0) for s in SOURCES})
    errors = B.share_errors_pp(target_shares, shares)
    ok = B.within_tolerance(target_shares, shares)
    if not ok:
        worst = max(errors, key=lambda s: abs(errors[s]))
        ctx.warn(f"realised share of {worst} is {errors[worst]:+.2f} percentage points off its target "
                 f"(tolerance {B.TOLERANCE_PP}); the budget is probably too small for whole sequences")
    read_results = [*res, *(r for rs in holdout_res.values() for r in rs)]
    bad_shards = [{"path": r["path"], "status": r.get("status"), "error": r.get("error")} for r in read_results
                  if r.get("status", "ok") not in ("ok", "empty")]
    for bad in bad_shards:
        ctx.warn(f"input shard {bad['path']} is {bad['status']} ({bad['error']}): only its readable part was used")
    rejected = sum(r["rejected"] for r in read_results)
    if rejected:
        ctx.warn(f"{rejected} input lines could not be read as documents and were skipped")
    holdout_dropped = {s: sum(r["holdout_dropped"].get(s, 0) for r in res) for s in active}
    if any(holdout_dropped.values()):
        ctx.warn("dropped from training because identical to a held-out document: "
                 + ", ".join(f"{s} {n}" for s, n in holdout_dropped.items() if n))
    sources: dict[str, dict] = {}
    for s in SOURCES:
        entry: dict[str, Any] = {"weight": mix.weights[s], "share_target": target_shares[s],
                                 "tokens_realised": int(realised.get(s, 0)), "share_realised": shares[s],
                                 "share_error_pp": errors[s]}
        if s in plans:
            p = plans[s]
            entry.update(tokens_target=p.target, tokens_available=int(total_avail[s]), available_exact=exact,
                         tokens_available_in_used_shards=int(prefix_avail[s]),
                         epochs=(p.target / total_avail[s]) if total_avail[s] else 0.0,
                         full_epochs=p.full_epochs, partial_epoch=(p.remainder / p.available) if p.upsampled else 0.0,
                         upsampled=p.upsampled, docs_in_used_shards=sum(r["stats"][s]["docs"] for r in res),
                         docs_written=int(docs_packed.get(s, 0)), pieces=pieces[s]["pieces"],
                         truncated_docs=pieces[s]["truncated"], holdout_overlap_dropped=holdout_dropped[s])
        else:
            entry.update(tokens_target=0, epochs=0.0, upsampled=False)
        sources[s] = entry
    manifest: dict[str, Any] = {
        "format": FORMAT if opt.output_format == "packed" else "slimpajama-jsonl-zst",
        "mix_format": FORMAT,
        "version": VERSION,
        "output_format": opt.output_format,
        "mix": mix.to_dict(),
        "tokens_requested": opt.tokens,
        "tokens_realised": int(sum(realised.values())),
        "token_unit": "document tokens + 1 EOS per document (the targets the trainer sees)",
        "seq_len": opt.seq_len,
        "tokenizer": tok.describe(),
        "tokenizer_files": TOKENIZER_DIR,
        "seeds": {"seed": opt.seed, "streams": _SEED_STREAMS,
                  "rule": "np.random.default_rng([seed, stream, shard-path key or bucket, ...])"},
        "input": {**input_info, "train_shards": len(train_shards), "train_shards_eligible": n_eligible,
                  "train_shards_used": len(used), "used_all_shards": exact,
                  "holdout_docs": int(holdout_hashes.size), "rejected_lines": rejected, "bad_shards": bad_shards},
        "buckets": n_buckets,
        "sources": sources,
        "tolerance_pp": B.TOLERANCE_PP,
        "max_share_error_pp": max(abs(e) for e in errors.values()),
        "within_tolerance": ok,
        "eval": eval_info,
        "eval_tokens_per_source": opt.eval_tokens,
        "options": {k: v for k, v in asdict(opt).items() if k not in ("warn", "quiet", "ray_address", "overwrite")},
        "warnings": ctx.warnings,
        **manifest_extra,
    }
    if opt.output_format == "text":
        write_manifest(out, text_shards, extra={k: v for k, v in manifest.items() if k != "format"})
    else:
        atomic_write_json(out / MANIFEST, manifest)
    if not opt.keep_work:
        shutil.rmtree(work, ignore_errors=True)
    else:
        shutil.rmtree(sel_dir, ignore_errors=True)
    log.info("mix %s built in %.1fs", mix.name, time.monotonic() - t_start)
    return json.loads((out / MANIFEST).read_text())
