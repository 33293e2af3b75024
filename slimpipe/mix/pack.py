"""Stage *pack*: each shuffle bucket shuffled in memory (seeded) and written: packed token sets or
``jsonl.zst`` text shards."""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc

from slimpipe.io.writers import ShardInfo, ShardWriter, slimpajama_record
from slimpipe.mix import budget as B
from slimpipe.mix.common import SHUFFLE, MixContext, list_parts, run_ordered
from slimpipe.mix.packed import INDEX, PackedWriter, apportion_bytes, train_path
from slimpipe.progress import Progress

# ------------------------------------------------------------------------------- stage 5: shuffle


def bucket_table(files: Sequence[str], b: int) -> pa.Table | None:
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
    table = bucket_table(job["files"], b)
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
            source = job["sources"][src[i]]
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


def pack_train(ctx: MixContext, files: list[str], n_buckets: int) -> tuple[dict, dict[str, int], dict[str, int]]:
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
            table = bucket_table(files, b)
            bar.update(1)
            if table is None:
                continue
            perm = np.random.default_rng([ctx.opt.seed, SHUFFLE, b]).permutation(table.num_rows)
            offsets, values = list_parts(table.column("tokens"))
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
                source = ctx.mix.active_sources[src[i]]
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


def write_text_train(ctx: MixContext, files: list[str], n_buckets: int
                     ) -> tuple[dict[str, int], dict[str, int], list[ShardInfo], list[dict]]:
    """Stage *pack*, text format: one Ray task per bucket writes its ``train/chunk{b+1}/`` shards."""
    active = ctx.mix.active_sources
    bjobs = [{"bucket": b, "files": files, "seed": ctx.opt.seed, "root": str(ctx.out),
              "shard_bytes": ctx.opt.text_shard_bytes, "sources": active} for b in range(n_buckets)]
    written = run_ordered(write_text_bucket, bjobs, label="mix: write", quiet=ctx.opt.quiet, unit="buckets")
    realised = dict.fromkeys(active, 0)
    docs_packed = dict.fromkeys(active, 0)
    shards: list[ShardInfo] = []
    index: list[dict] = []
    for wr in written:
        shards += [ShardInfo(**d) for d in wr["shards"]]
        index += wr["index"]
        for item in wr["index"]:
            for s, st in item["sources"].items():
                realised[s] += st.pop("tokens")
                docs_packed[s] += st["docs"]
    return realised, docs_packed, shards, index
