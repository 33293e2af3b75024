"""Stage *pack*: each shuffle bucket shuffled in memory (seeded) and written: packed token sets or
``jsonl.zst`` text shards."""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from slimpipe import storage
from slimpipe.io.writers import ShardInfo, ShardWriter, slimpajama_record
from slimpipe.mix import budget as B
from slimpipe.mix.common import SHUFFLE, MixContext, list_parts, read_arrow_batch
from slimpipe.mix.jobs import PackJob, PackResult, TextBucketJob, TextBucketResult, TokenizerInfo
from slimpipe.mix.packed import PackedWriter, apportion_bytes, write_parts_index

# ------------------------------------------------------------------------------- stage 5: shuffle


def bucket_table(files: Sequence[str], b: int) -> pa.Table | None:
    batches = []
    for path in files:
        batch = read_arrow_batch(path, b)
        if batch.num_rows:
            batches.append(batch)
    if not batches:
        return None
    return pa.Table.from_batches(batches).combine_chunks()


def write_text_bucket(job: TextBucketJob) -> TextBucketResult:
    """Ray task: shuffle one bucket and write it as ``train/chunk{b+1}/example_train_{j}.jsonl.zst``."""
    b = int(job.bucket)
    table = bucket_table(job.files, b)
    if table is None:
        return TextBucketResult(shards=[], index=[])
    perm = np.random.default_rng([job.seed, SHUFFLE, b]).permutation(table.num_rows)
    src = table.column("source").to_numpy()
    ntok = table.column("ntok").to_numpy()
    texts = table.column("text").to_pylist()
    ids = table.column("slimpipe_id").to_pylist()
    per_shard: dict[str, dict[str, dict[str, int]]] = {}
    with ShardWriter(job.root, "train", chunk=b + 1, max_bytes=job.shard_bytes) as w:
        for i in perm.tolist():
            source = job.sources[src[i]]
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
    return TextBucketResult(shards=list(shards),
                            index=[{"path": s.path, "sources": per_shard.get(s.path, {})} for s in shards])


def _tail_runs(tail: deque[tuple[int, int]], n: int) -> list[tuple[int, int]]:
    """``(source code, tokens)`` runs of the last ``n`` tokens of a stream, oldest first."""
    runs: list[tuple[int, int]] = []
    left = n
    for code, cost in reversed(tail):
        if left <= 0:
            break
        take = min(left, cost)
        runs.append((code, take))
        left -= take
    if left > 0:
        raise ValueError(f"a tail of {n} tokens exceeds the documents kept for it")
    return runs[::-1]


def pack_bucket(job: PackJob, byte_lengths: np.ndarray | None = None) -> PackResult:
    """Ray task: shuffle one bucket (seeded) and pack it into its own part ``train/part-<b>``.

    Returns the part's sequence count, tokens and documents per source (code), and the *tail* the part
    could not fill into a whole sequence: its ids, per-token bytes and source runs, which the driver
    packs into the set's last part so no token is dropped but the very last < seq_len.
    """
    b = int(job.bucket)
    table = bucket_table(job.files, b)
    n_sources = len(job.sources)
    counts, docs = [0] * n_sources, [0] * n_sources
    if table is None:
        return PackResult(bucket=b, part=None, counts=counts, docs=docs,
                          tail=(np.zeros(0, np.int64), np.zeros(0, np.int64), []))
    table_bl = byte_lengths  # per-id UTF-8 bytes when exact (byte-level BPE); the tokenizer is not loaded
    L = int(job.seq_len)
    perm = np.random.default_rng([job.seed, SHUFFLE, b]).permutation(table.num_rows)
    offsets, values = list_parts(table.column("tokens"))
    src = table.column("source").to_numpy()
    doc_ntok = table.column("doc_ntok").to_numpy()
    doc_nbytes = table.column("doc_nbytes").to_numpy()
    truncated = np.asarray(table.column("truncated").to_pylist(), dtype=bool)
    tail: deque[tuple[int, int]] = deque()
    tail_sum = 0
    name = f"part-{b:05d}"
    tok = job.tokenizer
    with PackedWriter(storage.join(job.train, name), L, vocab_size=tok.vocab_size, eos_id=tok.eos_id,
                      tokenizer=tok.describe, meta={**job.meta, "part": name}, overwrite=True,
                      warn_empty=False) as w:
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
            code = int(src[i])
            cost = ids.size + 1
            counts[code] += cost
            docs[code] += 1
            tail.append((code, cost))
            tail_sum += cost
            while len(tail) > 1 and tail_sum - tail[0][1] >= L + 1:
                tail_sum -= tail.popleft()[1]
    tail_ids, tail_bytes = w.dropped
    runs = _tail_runs(tail, tail_ids.size)
    for code, n in runs:
        counts[code] -= n
    return PackResult(bucket=b, part=name, index=w.index, counts=counts, docs=docs, tail=(tail_ids, tail_bytes, runs))


def pack_train(ctx: MixContext, files: list[str], n_buckets: int) -> tuple[dict, dict[str, int], dict[str, int]]:
    """Stage *pack*: one Ray task per bucket writes its own part of ``train/``; the driver packs the
    parts' tails (each shorter than a sequence) into one last part and writes the set's index."""
    tok = ctx.tok
    active = ctx.mix.active_sources
    L = ctx.opt.seq_len

    train = storage.join(ctx.out, "train")
    storage.makedirs(train)
    meta = {"set": "train", "mix": ctx.mix.name, "seed": ctx.opt.seed}

    info = TokenizerInfo(vocab_size=tok.vocab_size, eos_id=tok.eos_id, describe=tok.describe())
    jobs = [PackJob(bucket=b, files=files, seed=ctx.opt.seed, seq_len=L, train=train, tokenizer=info, sources=active,
                    meta=meta) for b in range(n_buckets)]
    results: list[PackResult] = ctx.ex.map(pack_bucket, jobs, (ctx.ex.share(tok.byte_lengths),), label="mix: pack", unit="buckets")
    counts = dict.fromkeys(active, 0)
    docs = dict.fromkeys(active, 0)
    for r in results:
        for code, s in enumerate(active):
            counts[s] += r.counts[code]
            docs[s] += r.docs[code]
    runs: list[tuple[int, int]] = []
    with PackedWriter(storage.join(train, "part-tails"), L, vocab_size=tok.vocab_size, eos_id=tok.eos_id, tokenizer=tok,
                      meta={**meta, "part": "tails"}, overwrite=True, warn_empty=False) as w:
        for r in results:
            ids, blen, r_runs = r.tail
            w.add_raw(ids, blen)
            runs += r_runs
    for code, n in runs:
        counts[active[code]] += n
    back = B.attribute_dropped([active[c] for c, _ in runs], [n for _, n in runs], w.dropped[0].size)
    for s, n in back.items():
        counts[s] -= n
    done = [r for r in results if r.part is not None]
    index = write_parts_index(train, [str(r.part) for r in done] + ["part-tails"], meta=meta,
                              indices=[r.index for r in done] + [w.index])
    return index, counts, docs


def write_text_train(ctx: MixContext, files: list[str], n_buckets: int
                     ) -> tuple[dict[str, int], dict[str, int], list[ShardInfo], list[dict]]:
    """Stage *pack*, text format: one Ray task per bucket writes its ``train/chunk{b+1}/`` shards."""
    active = ctx.mix.active_sources
    bjobs = [TextBucketJob(bucket=b, files=files, seed=ctx.opt.seed, root=ctx.out, shard_bytes=ctx.opt.text_shard_bytes,
                           sources=active) for b in range(n_buckets)]
    written: list[TextBucketResult] = ctx.ex.map(write_text_bucket, bjobs, label="mix: write", unit="buckets")
    realised = dict.fromkeys(active, 0)
    docs_packed = dict.fromkeys(active, 0)
    shards: list[ShardInfo] = []
    index: list[dict] = []
    for wr in written:
        shards += wr.shards
        index += wr.index
        for item in wr.index:
            for s, st in item["sources"].items():
                realised[s] += st.pop("tokens")
                docs_packed[s] += st["docs"]
    return realised, docs_packed, shards, index
