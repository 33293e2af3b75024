"""What the stages of ``slimpipe mix`` share: options, errors, the input's shards, seed streams, Arrow
scratch files, and the build's executor (:class:`slimpipe.runtime.Executor`, which runs every Ray task
of the mix)."""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import logging
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from slimpipe import storage
from slimpipe.mix.config import MixConfig
from slimpipe.mix.packed import TOKENIZER_DIR, token_dtype  # noqa: F401  (TOKENIZER_DIR re-exported)
from slimpipe.mix.tokenizer import Tokenizer
from slimpipe.runtime.executor import Executor
from slimpipe.sources import SOURCES

log = logging.getLogger(__name__)

FORMAT = "slimpipe-mix"
VERSION = 1
MANIFEST = "manifest.json"
INPUT_INDEX = "index.json"
WORK = ".work"
HOLDOUT_SPLITS = ("validation", "test")
EVAL_SET_DIR = "eval"  # SLIMPAJAMA_DIR/eval: the one evaluation set of `slimpipe evalset`, when present
EVAL_SET_SPLIT = "evalset"
OUTPUT_FORMATS = ("packed", "text")
# Seed streams: every random choice draws from np.random.default_rng([seed, STREAM, key...]).
SHARD_ORDER, SELECT, BUCKET, SHUFFLE, EVAL, BPE_SAMPLE = 1, 2, 3, 4, 5, 6
SEED_STREAMS = {"shard_order": SHARD_ORDER, "select": SELECT, "bucket": BUCKET, "shuffle": SHUFFLE,
                 "eval": EVAL, "bpe_sample": BPE_SAMPLE}


def source_key(source: str) -> int:
    """A stable integer per source name for seeding: RedPajama's seven keep their index in
    :data:`~slimpipe.sources.SOURCES` (so their draws never change); any other name gets a hash."""
    if source in SOURCES:
        return SOURCES.index(source)
    return (1 << 32) + int.from_bytes(hashlib.sha1(source.encode()).digest()[:6], "little")


def order_sources(names: Iterable[str]) -> list[str]:
    """RedPajama's seven first in SlimPajama's order, then any other source alphabetically."""
    return sorted(set(names), key=lambda s: (SOURCES.index(s) if s in SOURCES else len(SOURCES), s))


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
    eval_tokens: int = 1_000_000  # evaluation tokens per source (whole documents, >= 30 of them); 0 = all
    bucket_tokens: int = 64 << 20  # shuffle-bucket size: bounds the memory of the second shuffle pass
    text_shard_bytes: int = 256 << 20  # uncompressed bytes per output jsonl.zst shard (text format)
    token_cache: str | None = None  # default: SLIMPAJAMA_DIR/_cache/tokens
    force: bool = False  # write into a non-empty OUT of the user's files (never over one: slimpipe.outdir)
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


def natural_key(path: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path)]


def read_input(root: str | Path) -> tuple[dict[str, list[InputShard]], dict[str, Any]]:
    """Shards per split from ``index.json`` (or by listing SlimPajama's layout when it is missing),
    and what identifies the input: the SHA-256 of its ``manifest.json`` and ``index.json``.
    ``root`` is a path or a URI."""
    root = loc(root)
    try:
        has_manifest = storage.exists(storage.join(root, MANIFEST))
        index_file = storage.join(root, INPUT_INDEX)
        has_index = storage.exists(index_file)
        if not (has_manifest or has_index) and storage.missing_local_dir(root):  # a URI: checked by reading
            raise MixBuildError(f"input folder not found: {root}")
        info: dict[str, Any] = {"path": root, "manifest_sha256": None, "index_sha256": None}
        if has_manifest:
            info["manifest_sha256"] = hashlib.sha256(storage.read_bytes(storage.join(root, MANIFEST))).hexdigest()
        splits: dict[str, list[InputShard]] = {}
        if has_index:
            raw = storage.read_bytes(index_file)
            info["index_sha256"] = hashlib.sha256(raw).hexdigest()
            try:
                index = json.loads(raw)
                for split, items in index["splits"].items():
                    splits[split] = [InputShard(split, it["path"],
                                                {k: dict(v) for k, v in it.get("sources", {}).items()})
                                     for it in items]
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                raise MixBuildError(f"{index_file}: not a SlimPajama index ({type(exc).__name__}: {exc})") from None
            for shards in splits.values():
                for s in shards:
                    if not storage.exists(storage.join(root, s.path)):
                        raise MixBuildError(f"{index_file} lists {s.path}, which is missing")
        else:
            rels = [f[len(root.rstrip("/")) + 1 :].replace(os.sep, "/") for f in storage.list_files(root)]
            for split in ("train", *HOLDOUT_SPLITS):
                found = sorted((r for r in rels if re.fullmatch(rf"{split}/chunk[^/]*/[^/]*\.jsonl\.zst", r)),
                               key=natural_key)
                if found:
                    splits[split] = [InputShard(split, p) for p in found]
    except (OSError, storage.StorageError) as exc:
        raise MixBuildError(f"{root}: cannot read the input ({type(exc).__name__}: {' '.join(str(exc).split())})"
                            ) from None
    if not splits.get("train"):
        raise MixBuildError(f"{root}: no train shards (expected train/chunk*/example_train_*.jsonl.zst "
                            f"listed in {INPUT_INDEX})")
    evalset = read_eval_set(root)
    if evalset is not None:
        info["eval_set"] = evalset["info"]
        splits[EVAL_SET_SPLIT] = evalset["shards"]
    return splits, info


def read_eval_set(root: str) -> dict[str, Any] | None:
    """``SLIMPAJAMA_DIR/eval/`` (``slimpipe evalset``'s format) when present: its files as shards, and
    what identifies it (``eval_set``, the content hash) with each source's size and too-small flag."""
    manifest = storage.join(root, EVAL_SET_DIR, MANIFEST)
    if not storage.exists(manifest):
        return None
    raw = storage.read_bytes(manifest)
    try:
        m = json.loads(raw)
        if m.get("format") != "slimpipe-evalset":
            raise ValueError(f"format {m.get('format')!r}, expected 'slimpipe-evalset'")
        sources = {str(s): dict(v) for s, v in m["sources"].items()}
        shards = [InputShard(EVAL_SET_SPLIT, f"{EVAL_SET_DIR}/{rel}") for v in sources.values() for rel in v["files"]]
        info = {"eval_set": str(m["eval_set"]), "manifest_sha256": hashlib.sha256(raw).hexdigest(),
                "seed": m.get("seed"), "pieces": m.get("pieces"), "min_docs": m.get("min_docs"),
                "sources": {s: {k: v.get(k) for k in ("docs", "pieces", "tokens", "bytes", "too_small",
                                                      "excluded_from_intervals", "reason")}
                            for s, v in sources.items()}}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise MixBuildError(f"{manifest}: not an evaluation set ({type(exc).__name__}: {exc})") from None
    for sh in shards:
        if not storage.exists(storage.join(root, sh.path)):
            raise MixBuildError(f"{manifest} lists {sh.path}, which is missing")
    return {"info": info, "shards": shards}


def arrow_token_type(vocab_size: int) -> pa.DataType:
    return pa.uint16() if token_dtype(vocab_size).itemsize == 2 else pa.uint32()


def tokens_array(ids: list[list[int]], dtype: np.dtype) -> pa.Array:
    lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
    offsets = np.zeros(len(ids) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    # chain.from_iterable keeps the per-token loop in C (2-3x faster than a generator expression)
    values = np.fromiter(itertools.chain.from_iterable(ids), dtype=dtype, count=int(offsets[-1]))
    return pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(values))


def list_parts(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Offsets and flat values of a (large) list array, as numpy, without copying the values."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks() if arr.num_chunks != 1 else arr.chunk(0)
    if len(arr) == 0:
        return np.zeros(1, np.int64), np.zeros(0, np.uint32)
    offsets = np.asarray(arr.offsets, dtype=np.int64)
    return offsets - offsets[0], arr.values.to_numpy(zero_copy_only=False)[offsets[0] : offsets[-1]]


def loc(p: str | os.PathLike) -> str:
    """A location as the mix passes it around: an absolute local path, or a URI as given."""
    return storage.join(p)


def sibling(path: str, suffix: str) -> str:
    """``x/y.arrow`` -> ``x/y<suffix>`` (``.json``, ``.hashes.npy``), for paths and URIs alike."""
    return path[: -len(".arrow")] + suffix if path.endswith(".arrow") else path + suffix


# Arrow IPC scratch files are read through storage: memory-mapped locally, ranged reads on object stores
read_arrow = storage.read_arrow
read_arrow_batch = storage.read_arrow_batch


# ----------------------------------------------------------------------------------- the job


@dataclass
class MixContext:
    root: str  # a path or a URI
    out: str
    mix: MixConfig
    opt: MixOptions
    tok: Tokenizer
    work: str
    input_id: str = ""  # hash of the input's manifest/index/path: scratch from another input is never reused
    cache: Any = None  # the per-source token cache (:class:`slimpipe.mix.cache.TokenCache`)
    tok_spec: str = ""  # how Ray tasks load the tokenizer on any node (a URI when it lives in object storage)
    warnings: list[str] = field(default_factory=list)

    @functools.cached_property
    def ex(self) -> Executor:
        """The runtime's executor for this build's Ray tasks (no workspace: the token cache is the mix's resume)."""
        return Executor(label="mix", progress=not self.opt.quiet, max_retries=2)

    def warn(self, msg: str) -> None:
        self.warnings.append(msg)
        (self.opt.warn or log.warning)(msg)


def flat_name(path: str) -> str:
    return path.replace("/", "__").removesuffix(".jsonl.zst")


def work_key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]
