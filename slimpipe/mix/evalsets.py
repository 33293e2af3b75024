"""Stage *evalsets*: per-source evaluation sets, a seeded capped sample of the holdout that is the same
for every mix sharing seed, tokenizer and input."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from slimpipe import storage
from slimpipe.io.writers import ShardInfo, ShardWriter, slimpajama_record
from slimpipe.mix import budget as B
from slimpipe.mix.common import (
    EVAL,
    EVAL_SET_SPLIT,
    HOLDOUT_SPLITS,
    InputShard,
    MixContext,
    list_parts,
    order_sources,
    read_arrow,
    source_key,
)
from slimpipe.mix.packed import PackedWriter, apportion_bytes, eval_path
from slimpipe.mix.select import cut_text, read_texts


def eval_selection(ctx: MixContext, tables: list[pa.Table], split_idx: int) -> dict[str, list[tuple[int, int, int]]]:
    """Per source: ``(shard, row, piece)`` for a seeded sample capped at ``eval_tokens``; ``piece`` is the
    cost of a truncated last document, 0 for whole ones. Depends on the holdout only, never on the mix."""
    picks: dict[str, list[tuple[int, int, int]]] = {}
    names = [t.column("source").to_numpy(zero_copy_only=False) for t in tables]
    for s in order_sources(x for n in names for x in set(n.tolist())):
        parts = [(k, np.flatnonzero(n == s)) for k, n in enumerate(names)]
        shard_of = np.concatenate([np.full(r.size, k) for k, r in parts]) if parts else np.zeros(0, np.int64)
        row_of = np.concatenate([r for _, r in parts]) if parts else np.zeros(0, np.int64)
        if row_of.size == 0:
            continue
        costs = np.concatenate([t.column("ntok").to_numpy()[r] + 1 for t, (_, r) in zip(tables, parts, strict=True)])
        order = np.random.default_rng([ctx.opt.seed, EVAL, split_idx, source_key(s)]).permutation(row_of.size)
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


def write_eval_packed(ctx: MixContext, split: str, split_idx: int, results: list[dict]) -> dict[str, dict]:
    """``eval/<source>/`` (validation) or ``test/<source>/`` (test): the same sample for every mix."""
    tok = ctx.tok
    table_bl = tok.byte_lengths
    tables = [read_arrow(r["out"]) for r in results]
    parts = [list_parts(t.column("tokens")) for t in tables]
    ntoks = [t.column("ntok").to_numpy() for t in tables]
    nbytes_of = [t.column("nbytes").to_numpy() for t in tables]
    out: dict[str, dict] = {}
    L = ctx.opt.seq_len
    for s, sel in eval_selection(ctx, tables, split_idx).items():
        cost = sum(piece or int(ntoks[k][r]) + 1 for k, r, piece in sel)
        if cost < L:
            ctx.warn(f"{split} set for {s}: only {cost} tokens in the holdout sample, less than one sequence of "
                     f"{L}; not written")
            out[s] = {"docs": len(sel), "tokens": cost, "n_sequences": 0, "written": False}
            continue
        rel = f"{'eval' if split == 'validation' else 'test'}/{eval_path('.', s).name}"
        path = storage.join(ctx.out, rel)
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
        index = w.index
        out[s] = {"docs": len(sel), "tokens": index["n_sequences"] * L, "n_sequences": index["n_sequences"],
                  "truncated_docs": sum(1 for *_, p in sel if p), "dropped_tokens": index["dropped_tokens"],
                  "written": True, "path": rel}
    return out


def write_eval_text(ctx: MixContext, split: str, split_idx: int, shards: list[InputShard], results: list[dict]
                     ) -> tuple[dict[str, dict], list[ShardInfo], list[dict]]:
    """Text format: the capped holdout sample per source as ``{split}/chunk1/example_{split}_{j}.jsonl.zst``."""
    tables = [read_arrow(r["out"]) for r in results]
    lines_of = [t.column("line").to_numpy() for t in tables]
    ntoks = [t.column("ntok").to_numpy() for t in tables]
    sel = eval_selection(ctx, tables, split_idx)
    wanted: dict[int, dict[int, tuple[str, int, int]]] = {}
    for s, items in sel.items():
        for k, r, piece in items:
            wanted.setdefault(k, {})[int(lines_of[k][r])] = (s, piece, int(ntoks[k][r]))
    stats: dict[str, dict] = {s: {"docs": 0, "tokens": 0, "bytes": 0} for s in sel}
    index_items: list[dict] = []
    per_shard: dict[str, dict[str, dict[str, int]]] = {}
    with ShardWriter(ctx.out, split, chunk=1, max_bytes=ctx.opt.text_shard_bytes) as w:
        for k in sorted(wanted):
            texts = read_texts(storage.join(ctx.root, shards[k].path), set(wanted[k]))
            for line in sorted(wanted[k]):
                s, piece, doc_ntok = wanted[k][line]
                text, sid = texts[line]
                if piece:
                    text = cut_text(text, ctx.tok, piece - 1)
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


def eval_stage(ctx: MixContext, holdout_shards: dict[str, list[InputShard]], holdout_res: dict[str, list[dict]],
               eval_set: dict[str, Any] | None = None) -> tuple[dict[str, dict], list[ShardInfo], dict[str, list[dict]]]:
    """Every held-out split's per-source sets: packed ``eval/``+``test/``, or text shards plus their index.

    With an evaluation set (``SLIMPAJAMA_DIR/eval``), ``eval/<source>`` (text: ``validation/``) is drawn
    from it instead of the validation split, so every mix and dataset built from it is scored on the
    same documents; ``test/`` stays the holdout's.
    """
    info: dict[str, dict] = {}
    shards: list[ShardInfo] = []
    index: dict[str, list[dict]] = {}
    for i, sp in enumerate(HOLDOUT_SPLITS):
        src = EVAL_SET_SPLIT if (sp == "validation" and eval_set is not None) else sp
        if src not in holdout_res:
            continue
        if ctx.opt.output_format == "packed":
            info[sp] = write_eval_packed(ctx, sp, i, holdout_res[src])
        else:
            info[sp], infos, index[sp] = write_eval_text(ctx, sp, i, holdout_shards[src], holdout_res[src])
            shards += infos
    if eval_set is not None and "validation" in info:
        for s, v in eval_set["sources"].items():
            entry = info["validation"].setdefault(s, {"docs": 0, "tokens": 0, "written": False})
            entry.update(from_eval_set=True, too_small=bool(v.get("too_small")), reason=v.get("reason"))
            if v.get("too_small"):
                ctx.warn(f"evaluation set for {s} is too small: {v.get('reason')}")
    written = {s for s, v in info.get("validation", {}).items() if v.get("written", v.get("docs", 0) > 0)}
    missing = [s for s in ctx.mix.active_sources if s not in written]
    if info and missing:
        ctx.warn("no evaluation set for " + ", ".join(missing) + " (a source of the mix): its bits per byte "
                 "cannot be scored")
    return info, shards, index
