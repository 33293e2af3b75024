"""Stage *tokenize*: the tokenizer (resolved once in the driver, loaded once per Ray worker) and one Ray
task per shard that tokenizes its documents into a scratch Arrow file; the holdout and train passes."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from slimpipe.io.readers import InputFile, file_format, read_batches
from slimpipe.io.writers import atomic_write_json
from slimpipe.mix.common import (
    BPE_SAMPLE,
    CODE,
    HOLDOUT_SPLITS,
    INPUT_INDEX,
    SHARD_ORDER,
    TOKENIZER_DIR,
    InputShard,
    MixBuildError,
    MixContext,
    MixOptions,
    arrow_token_type,
    flat_name,
    run_ordered,
    tokens_array,
    work_key,
    write_arrow_atomic,
)
from slimpipe.mix.packed import token_dtype
from slimpipe.mix.tokenizer import Tokenizer, load_tokenizer, train_bpe
from slimpipe.sources import SOURCES

log = logging.getLogger(__name__)


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


# --------------------------------------------------------------------- stage 1 + 2: tokenize a shard


def _pass1_schema(keep_tokens: bool, vocab_size: int) -> pa.Schema:
    fields = [("line", pa.int64()), ("source", pa.int8()), ("ntok", pa.int64()), ("nbytes", pa.int64())]
    if keep_tokens:
        fields.append(("tokens", pa.large_list(arrow_token_type(vocab_size))))
    return pa.schema(fields)


def tokenize_shard(job: dict[str, Any], holdout: np.ndarray | None = None) -> dict[str, Any]:
    """Ray task: tokenize one shard's documents of ``job["sources"]`` into a scratch Arrow file.

    Documents whose text hash is in ``holdout`` are dropped (counted per source). Returns per-source
    ``docs``/``tokens`` (cost: tokens + 1 EOS)/``bytes``, rejects, and with ``want_hashes`` every text hash.
    The result is also saved next to the scratch file, which lets a rerun skip this shard.
    """
    tok = worker_tokenizer(job["tokenizer"], job["identity"])
    dtype = token_dtype(tok.vocab_size)
    keep = {CODE[s] for s in job["sources"]}
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
        rows = [i for i, s in enumerate(srcs) if s in CODE and CODE[s] in keep]
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
            "source": pa.array([CODE[srcs[rows[k]]] for k in sel], pa.int8()),
            "ntok": pa.array([len(ids[k]) for k in sel], pa.int64()),
            "nbytes": pa.array(nbytes[[rows[k] for k in sel]] if sel else [], pa.int64()),
        }
        if job["keep_tokens"]:
            cols["tokens"] = tokens_array([ids[k] for k in sel], dtype).cast(schema.field("tokens").type)
        for k in sel:
            st = stats[srcs[rows[k]]]
            st["docs"] += 1
            st["tokens"] += len(ids[k]) + 1
            st["bytes"] += int(nbytes[rows[k]])
        batches.append(pa.RecordBatch.from_pydict(cols, schema=schema))
    out = Path(job["out"])
    write_arrow_atomic(out, schema, batches)
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


def setup_tokenizer(root: Path, out: Path, splits: dict[str, list[InputShard]], opt: MixOptions) -> Tokenizer:
    if opt.tokenizer == "train":
        if opt.vocab_size < 257:
            raise MixBuildError("--vocab-size must be at least 257 (256 bytes + EOS)")
        t0 = time.monotonic()
        tok = train_bpe(_bpe_texts(root, splits["train"], opt.seed, opt.bpe_sample_bytes), opt.vocab_size,
                        out / TOKENIZER_DIR)
        log.info("trained a %d-token byte-level BPE in %.1fs", tok.vocab_size, time.monotonic() - t0)
        return tok
    return resolve_tokenizer(opt.tokenizer)


def _pass1_jobs(ctx: MixContext, shards: Sequence[InputShard], sources: Sequence[str], keep_tokens: bool,
                want_hashes: bool, folder: Path) -> tuple[list[dict], list]:
    jobs, cached = [], []
    for s in shards:
        out = folder / f"{flat_name(s.path)}.arrow"
        jobs.append({"file": str(ctx.root / s.path), "path": s.path, "out": str(out), "sources": list(sources),
                     "tokenizer": ctx.tok.spec, "identity": ctx.tok.identity, "keep_tokens": keep_tokens,
                     "want_hashes": want_hashes})
        cached.append(_load_pass1_result(out, want_hashes))
    return jobs, cached


def holdout_stage(ctx: MixContext, splits: dict[str, list[InputShard]]) -> tuple[dict[str, list[InputShard]],
                                                                             dict[str, list[dict]], np.ndarray]:
    """Tokenize every held-out shard (all sources) and collect the hashes of its texts."""
    keep_tokens = ctx.opt.output_format == "packed"
    folder = ctx.work / f"holdout-{work_key(ctx.input_id, ctx.tok.identity, keep_tokens)}"
    present = {sp: splits[sp] for sp in HOLDOUT_SPLITS if splits.get(sp)}
    if not present:
        ctx.warn("the input has no validation or test split: the mix gets no evaluation sets")
        return {}, {}, np.zeros(0, np.uint64)
    flat = [s for sp in present for s in present[sp]]
    jobs, cached = _pass1_jobs(ctx, flat, SOURCES, keep_tokens, True, folder)
    results = run_ordered(tokenize_shard, jobs, cached=cached, label="mix: holdout", quiet=ctx.opt.quiet)
    hashes = [np.load(Path(j["out"]).with_suffix(".hashes.npy")) for j in jobs]
    by_split: dict[str, list[dict]] = {}
    k = 0
    for sp, shards in present.items():
        by_split[sp] = [dict(results[k + i], out=jobs[k + i]["out"]) for i in range(len(shards))]
        k += len(shards)
    all_h = np.unique(np.concatenate(hashes)) if hashes else np.zeros(0, np.uint64)
    return present, by_split, all_h


def train_stage(ctx: MixContext, shards: list[InputShard], holdout: np.ndarray,
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
    folder = ctx.work / f"train-{work_key(ctx.input_id, ctx.tok.identity, keep_tokens, active, digest)}"
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

    results = run_ordered(tokenize_shard, jobs, (ray.put(holdout),), cached=cached, stop=covered,
                           label="mix: tokenize", quiet=ctx.opt.quiet)
    k = state["k"] if state["k"] is not None else len(ordered)
    used = [dict(results[i], out=jobs[i]["out"]) for i in range(k)]
    return ordered[:k], used, len(eligible)
