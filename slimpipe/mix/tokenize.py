"""Stage *tokenize*: the tokenizer (resolved once in the driver, loaded once per Ray worker) and one Ray
task per shard that tokenizes its documents into a scratch Arrow file; the holdout and train passes."""

from __future__ import annotations

import hashlib
import io
import logging
import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from slimpipe import storage
from slimpipe.io.readers import InputFile, file_format, read_batches
from slimpipe.mix.cache import TokenCache
from slimpipe.mix.common import (
    BPE_SAMPLE,
    EVAL_SET_SPLIT,
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
    order_sources,
    sibling,
    tokens_array,
)
from slimpipe.mix.jobs import HoldoutTokens, SourceTokens, TokenizeJob, TrainTokens
from slimpipe.mix.packed import token_dtype
from slimpipe.mix.tokenizer import Tokenizer, load_tokenizer, train_bpe

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
        tok = load_tokenizer(local_tokenizer(spec))
        if hasattr(tok, "num_threads"):
            tok.num_threads = 1
        if identity and tok.identity != identity:
            raise RuntimeError(f"tokenizer {spec} changed during the job (identity {tok.identity[:12]}, "
                               f"expected {identity[:12]})")
        _WORKER_TOKENIZERS[key] = tok
    return tok


def local_tokenizer(spec: str) -> str:
    """``spec`` itself, or for a URI (a ``tokenizer.json``, a tokenizer folder, a mix) a node-local copy
    of its tokenizer files (downloaded once per node)."""
    if storage.local_path(spec) is not None:
        return spec
    spec = spec.rstrip("/")
    if storage.exists(storage.join(spec, TOKENIZER_DIR, "tokenizer.json")) or storage.exists(
            storage.join(spec, TOKENIZER_DIR, "encoder.json")):
        spec = storage.join(spec, TOKENIZER_DIR)
    cache = Path(tempfile.gettempdir()) / "slimpipe-tokenizers" / hashlib.sha256(spec.encode()).hexdigest()[:16]
    if spec.endswith(".json"):
        return str(storage.local_copy(spec, cache))
    files = [f for f in storage.list_files(spec, recursive=False)]
    if not files:
        raise FileNotFoundError(f"{spec}: no tokenizer files")
    for f in files:
        name = f.rsplit("/", 1)[-1]
        copy = storage.local_copy(f, cache / "files")
        target = cache / "dir" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.is_file() or target.stat().st_size != copy.stat().st_size:
            storage.write_bytes_atomic(target, copy.read_bytes())
    return str(cache / "dir")


def resolve_tokenizer(spec: str) -> Tokenizer:
    """``gpt2``, a ``tokenizer.json``, a tokenizer folder, or a previous mix folder (its ``tokenizer/``),
    so every mix of an experiment can share one tokenizer; each may be a URI."""
    try:
        spec = local_tokenizer(spec)
    except (OSError, storage.StorageError) as exc:
        raise MixBuildError(f"tokenizer {spec!r}: {exc}") from None
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
    # a local file itself, or a node-local copy of a URI's (downloaded once per node, then reused)
    p = storage.local_copy(path, Path(tempfile.gettempdir()) / "slimpipe-input-cache")
    return InputFile(path=str(p.resolve()), rel=p.name, source=None, fmt=file_format(p) or "jsonl.zst")


def _doc_hashes(texts: Sequence[str]) -> np.ndarray:
    """64-bit prefixes of SHA-256 of each text (SlimPajama decontaminates on full-text SHA-256)."""
    return np.array([int.from_bytes(hashlib.sha256(t.encode("utf-8")).digest()[:8], "little") for t in texts],
                    dtype=np.uint64)


# --------------------------------------------------------------------------------- tokenize a shard


def _schema(vocab_size: int, with_source: bool) -> pa.Schema:
    fields = [("line", pa.int64()), ("ntok", pa.int64()), ("nbytes", pa.int64())]
    if with_source:
        fields.insert(1, ("source", pa.string()))
    fields.append(("tokens", pa.large_list(arrow_token_type(vocab_size))))
    return pa.schema(fields)


def tokenize_shard(job: TokenizeJob, holdout: np.ndarray | None = None) -> HoldoutTokens | TrainTokens:
    """Ray task: tokenize one shard's documents into the token cache.

    ``job.sources`` None (the holdout pass): every document, into one file ``job.out`` with a
    ``source`` column, plus every text hash. A list (the train pass): only those sources, one file per
    source under ``job.out_dir/<source>/`` (written even when empty, so the cache knows it is done),
    dropping documents whose text hash is in ``holdout`` (counted). Each file's stats (``docs``,
    ``tokens`` = cost: tokens + 1 EOS, ``bytes``, ``empty``, ``holdout_dropped``, and the shard's
    ``rejected``/``status``/``error``) are saved next to it, which is what a later build finds.
    """
    tok = worker_tokenizer(job.tokenizer, job.identity)
    dtype = token_dtype(tok.vocab_size)
    wanted = None if job.sources is None else set(job.sources)
    cols: dict[str, dict[str, list]] = {}  # source -> column -> values (lists of arrays)
    stats: dict[str, dict[str, int]] = {s: _zero_stats() for s in (job.sources or ())}
    hashes: list[np.ndarray] = []
    rejected, status, error = 0, "ok", None
    for docs, _rejects, fstats in read_batches(shard_input(job.file)):
        if fstats is not None:  # every rejected line, also past the listed rows' cap (MAX_REJECT_ROWS)
            rejected, status, error = fstats.rejected, fstats.status, fstats.error
        if docs is None or docs.num_rows == 0:
            continue
        srcs = docs.column("source").to_pylist()
        rows = [i for i, s in enumerate(srcs) if s is not None and (wanted is None or s in wanted)]
        texts_all = docs.column("text").to_pylist()
        if wanted is None:
            hashes.append(_doc_hashes([texts_all[i] for i in rows]) if rows else np.zeros(0, np.uint64))
        elif holdout is not None and holdout.size and rows:
            clean = ~np.isin(_doc_hashes([texts_all[i] for i in rows]), holdout)
            for i, ok in zip(rows, clean, strict=True):
                if not ok:
                    stats[srcs[i]]["holdout_dropped"] += 1
            rows = [i for i, ok in zip(rows, clean, strict=True) if ok]
        if not rows:
            continue
        ids = tok.encode_batch([texts_all[i] for i in rows])
        lines = docs.column("line").to_numpy()
        nbytes = docs.column("nbytes").to_numpy()
        for k, i in enumerate(rows):
            st = stats.setdefault(srcs[i], _zero_stats())
            if not ids[k]:  # a document without tokens contributes nothing
                st["empty"] += 1
                continue
            c = cols.setdefault(srcs[i], {"line": [], "ntok": [], "nbytes": [], "tokens": []})
            c["line"].append(int(lines[i]))
            c["ntok"].append(len(ids[k]))
            c["nbytes"].append(int(nbytes[i]))
            c["tokens"].append(ids[k])
            st["docs"] += 1
            st["tokens"] += len(ids[k]) + 1
            st["bytes"] += int(nbytes[i])

    def table(sources: list[str], with_source: bool) -> tuple[pa.Schema, list[pa.RecordBatch]]:
        schema = _schema(tok.vocab_size, with_source)
        batches = []
        for s in sources:
            c = cols.get(s)
            if not c:
                continue
            arrays: dict[str, Any] = {"line": pa.array(c["line"], pa.int64()), "ntok": pa.array(c["ntok"], pa.int64()),
                                      "nbytes": pa.array(c["nbytes"], pa.int64()),
                                      "tokens": tokens_array(c["tokens"], dtype).cast(schema.field("tokens").type)}
            if with_source:
                arrays["source"] = pa.array([s] * len(c["line"]), pa.string())
            batches.append(pa.RecordBatch.from_pydict(arrays, schema=schema))
        return schema, batches

    if wanted is None:  # holdout: one file, rows grouped by source
        out = job.out
        assert out is not None
        storage.write_arrow_atomic(out, *table(order_sources(cols), True))
        buf = io.BytesIO()
        np.save(buf, np.concatenate(hashes) if hashes else np.zeros(0, np.uint64))
        storage.write_bytes_atomic(sibling(out, ".hashes.npy"), buf.getvalue())
        result = HoldoutTokens(path=job.path, stats=stats, rejected=rejected, status=status, error=error)
        storage.write_json_atomic(sibling(out, ".json"), result.to_dict())
        return result
    assert job.sources is not None and job.out_dir is not None
    done: dict[str, SourceTokens] = {}
    for s in job.sources:
        out = storage.join(job.out_dir, s, f"{job.flat}.arrow")
        storage.write_arrow_atomic(out, *table([s], False))
        done[s] = SourceTokens(**stats[s], rejected=rejected, status=status, error=error)
        storage.write_json_atomic(sibling(out, ".json"), done[s].to_dict())
    return TrainTokens(path=job.path, sources=done)


def _zero_stats() -> dict[str, int]:
    return {"docs": 0, "tokens": 0, "bytes": 0, "empty": 0, "holdout_dropped": 0}


def _bpe_texts(root: str, shards: Sequence[InputShard], seed: int, limit: int) -> Iterator[str]:
    """Training text for a shared BPE: whole train documents of *all* sources, shards in a seeded order,
    until ``limit`` bytes. Independent of the mix, so any mix of an experiment trains the same tokenizer."""
    order = np.random.default_rng([seed, BPE_SAMPLE]).permutation(len(shards))
    seen = 0
    for i in order.tolist():
        for docs, _r, _s in read_batches(shard_input(storage.join(root, shards[i].path))):
            if docs is None:
                continue
            for text in docs.column("text").to_pylist():
                yield text
                seen += len(text.encode("utf-8"))
                if seen >= limit:
                    return


def setup_tokenizer(root: str, out: str, splits: dict[str, list[InputShard]], opt: MixOptions
                    ) -> tuple[Tokenizer, str]:
    """The mix's tokenizer, and the spec Ray tasks load it by on any node: resolved from ``--tokenizer``
    (a URI stays a URI), or trained (``train``) into ``OUT/tokenizer`` (for an ``OUT`` in object storage,
    trained locally and uploaded there at once)."""
    if opt.tokenizer == "train":
        if opt.vocab_size < 257:
            raise MixBuildError("--vocab-size must be at least 257 (256 bytes + EOS)")
        t0 = time.monotonic()
        tok_dir = storage.join(out, TOKENIZER_DIR)
        local = storage.local_path(tok_dir)  # trained in place, or (OUT in a store) locally and uploaded
        dest = Path(local) if local is not None else Path(tempfile.mkdtemp(prefix="slimpipe-bpe-"))
        tok = train_bpe(_bpe_texts(root, splits["train"], opt.seed, opt.bpe_sample_bytes), opt.vocab_size, dest)
        log.info("trained a %d-token byte-level BPE in %.1fs", tok.vocab_size, time.monotonic() - t0)
        if local is None:
            storage.upload_tree(dest, tok_dir)
            return tok, tok_dir
        return tok, tok.spec
    tok = resolve_tokenizer(opt.tokenizer)
    return tok, (opt.tokenizer if storage.is_shared(opt.tokenizer) else tok.spec)  # every node loads a URI



def _job(ctx: MixContext, shard: InputShard, **kw: Any) -> TokenizeJob:
    return TokenizeJob(file=storage.join(ctx.root, shard.path), path=shard.path, flat=flat_name(shard.path),
                       tokenizer=ctx.tok_spec or ctx.tok.spec, identity=ctx.tok.identity, **kw)


def holdout_stage(ctx: MixContext, splits: dict[str, list[InputShard]]) -> tuple[dict[str, list[InputShard]],
                                                                             dict[str, list[dict]], np.ndarray]:
    """Tokenize every held-out shard (all sources; cached) and collect the hashes of its texts; the
    evaluation set's files (``SLIMPAJAMA_DIR/eval``) count as held out too."""
    present = {sp: splits[sp] for sp in (*HOLDOUT_SPLITS, EVAL_SET_SPLIT) if splits.get(sp)}
    if not present:
        ctx.warn("the input has no validation or test split: the mix gets no evaluation sets")
        return {}, {}, np.zeros(0, np.uint64)
    folder = ctx.cache.holdout_dir()
    flat = [s for sp in present for s in present[sp]]
    jobs: list[TokenizeJob] = []
    cached: list[HoldoutTokens | None] = []
    for s in flat:
        out = storage.join(folder, f"{flat_name(s.path)}.arrow")
        jobs.append(_job(ctx, s, sources=None, out=out))
        entry = TokenCache.load(sibling(out, ".json"), out, sibling(out, ".hashes.npy"))
        cached.append(None if entry is None else HoldoutTokens.from_dict(entry))
    ctx.cache.holdout_hits += sum(c is not None for c in cached)
    ctx.cache.holdout_tokenized += sum(c is None for c in cached)
    results: list[HoldoutTokens] = ctx.ex.map(tokenize_shard, jobs, cached=cached, label="mix: holdout", unit="shards")
    hashes = [np.load(io.BytesIO(storage.read_bytes(sibling(str(j.out), ".hashes.npy")))) for j in jobs]
    by_split: dict[str, list[dict]] = {}
    k = 0
    for sp, shards in present.items():
        by_split[sp] = [dict(results[k + i].to_dict(), out=jobs[k + i].out) for i in range(len(shards))]
        k += len(shards)
    all_h = np.unique(np.concatenate(hashes)) if hashes else np.zeros(0, np.uint64)
    return present, by_split, all_h


def _merge(path: str, per_source: dict[str, SourceTokens], folder: str, flat: str) -> dict[str, Any]:
    """One shard's result in the form the later stages read: per-source stats and files, shard counts."""
    any_entry = next(iter(per_source.values()))
    return {"path": path, "stats": {s: {"docs": e.docs, "tokens": e.tokens, "bytes": e.bytes}
                                    for s, e in per_source.items()},
            "holdout_dropped": {s: e.holdout_dropped for s, e in per_source.items()},
            "empty": sum(e.empty for e in per_source.values()), "rejected": any_entry.rejected,
            "status": any_entry.status, "error": any_entry.error,
            "out": {s: storage.join(folder, s, f"{flat}.arrow") for s in per_source}}


def train_stage(ctx: MixContext, shards: list[InputShard], holdout: np.ndarray,
                targets: dict[str, int]) -> tuple[list[InputShard], list[dict], int]:
    """Tokenize train shards in a seeded order until a prefix covers every target (or all are done).

    Only the (shard, source) entries the token cache lacks are tokenized; a shard whose sources are all
    cached costs nothing.
    """
    active = ctx.mix.active_sources
    eligible = [s for s in shards if s.counts is None or any(s.source_units(a, "docs") > 0 for a in active)]
    if not eligible:
        raise MixBuildError(f"no train shard holds documents of {', '.join(active)} (per {INPUT_INDEX})")
    order = np.random.default_rng([ctx.opt.seed, SHARD_ORDER]).permutation(len(eligible))
    ordered = [eligible[i] for i in order.tolist()]
    folder = ctx.cache.train_dir(hashlib.sha256(holdout.tobytes()).hexdigest())
    jobs: list[TokenizeJob] = []
    cached: list[TrainTokens | None] = []
    found: list[dict[str, SourceTokens]] = []
    for shard in ordered:
        flat = flat_name(shard.path)
        have = {}
        for s in active:
            out = storage.join(folder, s, f"{flat}.arrow")
            entry = TokenCache.load(sibling(out, ".json"), out)
            if entry is not None:
                have[s] = SourceTokens.from_dict(entry)
        missing = [s for s in active if s not in have]
        jobs.append(_job(ctx, shard, sources=missing, out_dir=folder))
        cached.append(None if missing else TrainTokens(path=shard.path))
        found.append(have)
    need = {s: t for s, t in targets.items() if t > 0}
    state: dict[str, Any] = {"done": 0, "have": dict.fromkeys(need, 0), "k": None}

    def merged(i: int, result: TrainTokens) -> dict:
        return _merge(ordered[i].path, {s: {**found[i], **result.sources}[s] for s in active}, folder,
                      jobs[i].flat)

    def covered(results: list) -> bool:
        """Extend the finished prefix shard by shard; the first length that covers every target is the
        minimal prefix (same answer as :func:`budget.minimal_prefix`, in linear time)."""
        while state["k"] is None and state["done"] < len(results) and results[state["done"]] is not None:
            stats = merged(state["done"], results[state["done"]])["stats"]
            for s in need:
                state["have"][s] += stats[s]["tokens"]
            state["done"] += 1
            if all(state["have"][s] >= need[s] for s in need):
                state["k"] = state["done"]
        return state["k"] is not None

    results = ctx.ex.map(tokenize_shard, jobs, (ctx.ex.share(holdout),), cached=cached, stop=covered,
                         label="mix: tokenize", unit="shards")
    k = state["k"] if state["k"] is not None else len(ordered)
    ctx.cache.hits += sum(len(found[i]) for i in range(k))
    ctx.cache.tokenized += sum(len(jobs[i].sources or ()) for i, r in enumerate(results) if r is not None and cached[i] is None)
    return ordered[:k], [merged(i, results[i]) for i in range(k)], len(eligible)
