"""Stage *evalsets*: per-source evaluation sets, the same for every mix built from one input.

With the one evaluation set (``SLIMPAJAMA_DIR/eval``, ``slimpipe evalset``), ``eval/<source>`` holds its
documents, whatever the mix, its seed or tokenizer: all of them, or with ``eval_tokens`` a prefix of the
set's own draw order (:func:`~slimpipe.evalset.build.doc_key`) of whole documents until ``min_docs`` of
them and ``eval_tokens x 4`` scored UTF-8 bytes, a cap counted in bytes so that it means the same
documents under any tokenizer. Without one, a seeded sample of the holdout per source: whole documents
in the seed's order until the source has :data:`~slimpipe.evalset.build.MIN_DOCS` documents and
``eval_tokens`` tokens (the last document whole, never cut).

Every document is scored as pieces (:func:`slimpipe.evalset.build.cut_pieces`: character ranges, the
same for any tokenizer); each piece is one document of the packed stream, named in the set's
``pieces.json``, and the stream's tail is kept (``keep_tail``), so every piece is scored whole. A source
with fewer than ``min_docs`` documents is marked ``excluded_from_intervals`` (with the reason) in the
set's ``index.json`` meta and in the mix manifest's ``eval`` entry.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from slimpipe import storage
from slimpipe.evalset.build import BYTES_PER_TOKEN, MAX_PIECES, MIN_DOCS, cut_pieces, doc_key, piece_chars
from slimpipe.io.writers import ShardInfo, ShardWriter, slimpajama_record
from slimpipe.mix.common import (
    EVAL,
    EVAL_SET_SPLIT,
    HOLDOUT_SPLITS,
    InputShard,
    MixContext,
    order_sources,
    read_arrow,
    source_key,
)
from slimpipe.mix.packed import PackedWriter, eval_path, scored_subset
from slimpipe.mix.select import read_texts


def piece_rule(ctx: MixContext, eval_set: dict[str, Any] | None) -> dict[str, int]:
    """How documents are cut: the evaluation set's own rule (so every mix scores the same ranges), or,
    for a holdout sample, pieces of about one context (``seq_len``) seeded by the mix's seed."""
    pieces = (eval_set or {}).get("pieces") or {}
    seed = pieces.get("seed", (eval_set or {}).get("seed", ctx.opt.seed))
    return {"chars": int(pieces.get("chars") or piece_chars(ctx.opt.seq_len)),
            "max_per_doc": int(pieces.get("max_per_doc") or MAX_PIECES), "seed": int(seed),
            "min_docs": int((eval_set or {}).get("min_docs") or MIN_DOCS)}


def eval_selection(ctx: MixContext, tables: list[pa.Table], split_idx: int, everything: bool = False,
                   rule: dict[str, int] | None = None) -> dict[str, list[tuple[int, int]]]:
    """Per source: ``(shard, row)`` of whole documents. ``everything``: all of them (the evaluation set);
    else a seeded sample in the order of ``[seed, EVAL, split, source]``: documents until the source has
    ``min_docs`` of them and ``eval_tokens`` scored tokens (estimated from the cached token counts, capped
    at what ``max_per_doc`` pieces hold); ``eval_tokens`` 0 takes the whole holdout. Never depends on the mix."""
    rule = rule or piece_rule(ctx, None)
    cap = max(1, int(rule["chars"] / 4)) * rule["max_per_doc"]  # tokens that max_per_doc pieces hold, roughly
    picks: dict[str, list[tuple[int, int]]] = {}
    names = [t.column("source").to_numpy(zero_copy_only=False) for t in tables]
    for s in order_sources(x for n in names for x in set(n.tolist())):
        parts = [(k, np.flatnonzero(n == s)) for k, n in enumerate(names)]
        shard_of = np.concatenate([np.full(r.size, k) for k, r in parts]) if parts else np.zeros(0, np.int64)
        row_of = np.concatenate([r for _, r in parts]) if parts else np.zeros(0, np.int64)
        if row_of.size == 0:
            continue
        order = np.random.default_rng([ctx.opt.seed, EVAL, split_idx, source_key(s)]).permutation(row_of.size)
        if everything or not ctx.opt.eval_tokens:
            taken = order
        else:
            costs = np.concatenate([t.column("ntok").to_numpy()[r] + 1 for t, (_, r) in zip(tables, parts, strict=True)])
            ordered = np.minimum(costs[order], cap)
            before = np.cumsum(ordered) - ordered
            taken = order[(before < ctx.opt.eval_tokens) | (np.arange(order.size) < rule["min_docs"])]
        picks[s] = [(int(shard_of[j]), int(row_of[j])) for j in taken.tolist()]
    return picks


def selected_documents(ctx: MixContext, shards: list[InputShard], tables: list[pa.Table],
                       sel: dict[str, list[tuple[int, int]]]) -> dict[str, list[tuple[str, str]]]:
    """Per source: ``(document id, text)`` of the selected documents in id order (the order every mix
    writes and scores them in). A document without a ``slimpipe_id`` is named ``<shard path>:<line>``."""
    lines_of = [t.column("line").to_numpy() for t in tables]
    wanted: dict[int, dict[int, str]] = {}
    for s, items in sel.items():
        for k, r in items:
            wanted.setdefault(k, {})[int(lines_of[k][r])] = s
    out: dict[str, list[tuple[str, str]]] = {s: [] for s in sel}
    for k in sorted(wanted):
        texts = read_texts(storage.join(ctx.root, shards[k].path), set(wanted[k]))
        for line, s in wanted[k].items():
            text, sid = texts[line]
            out[s].append((sid or f"{shards[k].path}:{line}", text))
    for docs in out.values():
        docs.sort(key=lambda d: d[0])
    return out


def cap_documents(items: list[tuple[str, str]], rule: dict[str, int], eval_tokens: int) -> list[tuple[str, str]]:
    """An evaluation set's documents under a cap: in the set's own draw order (``doc_key(seed, id)``), whole
    documents until ``min_docs`` of them and ``eval_tokens x BYTES_PER_TOKEN`` scored bytes; all of them
    when ``eval_tokens`` is 0. Depends on the set and the cap only (never on the mix, its seed or tokenizer);
    returned in id order."""
    if not eval_tokens:
        return items
    budget = eval_tokens * BYTES_PER_TOKEN
    taken, used = [], 0
    for doc_id, text in sorted(items, key=lambda d: doc_key(rule["seed"], d[0])):
        if len(taken) >= rule["min_docs"] and used >= budget:
            break
        taken.append((doc_id, text))
        used += sum(len(text[a:b].encode("utf-8"))
                    for a, b in cut_pieces(text, rule["chars"], rule["max_per_doc"], seed=rule["seed"], doc_id=doc_id))
    return sorted(taken)


def _exclusion(s: str, n_docs: int, rule: dict[str, int], eval_set: dict[str, Any] | None) -> tuple[bool, str | None]:
    """Whether source ``s`` is left out of pooled intervals, and why: the evaluation set's verdict when
    there is one, else fewer than ``min_docs`` documents in the holdout sample."""
    if eval_set is not None:
        v = (eval_set.get("sources") or {}).get(s) or {}
        flag = v.get("excluded_from_intervals", v.get("too_small"))
        if flag is not None:
            return bool(flag), v.get("reason") if flag else None
    if n_docs < rule["min_docs"]:
        return True, (f"{s}: {n_docs} evaluation document(s), fewer than the {rule['min_docs']} an interval needs; "
                      "left out of the total and mean intervals")
    return False, None


def write_eval_packed(ctx: MixContext, split: str, split_idx: int, shards: list[InputShard], results: list[dict],
                      eval_set: dict[str, Any] | None = None) -> dict[str, dict]:
    """``eval/<source>/`` (validation) or ``test/<source>/`` (test): every selected document, cut into
    pieces, each piece scored whole (the stream's tail kept)."""
    tok = ctx.tok
    table_bl = tok.byte_lengths
    tables = [read_arrow(r["out"]) for r in results]
    rule = piece_rule(ctx, eval_set)
    sel = eval_selection(ctx, tables, split_idx, everything=eval_set is not None, rule=rule)
    docs = selected_documents(ctx, shards, tables, sel)
    if eval_set is not None:
        docs = {s: cap_documents(items, rule, ctx.opt.eval_tokens) for s, items in docs.items()}
    out: dict[str, dict] = {}
    L = ctx.opt.seq_len
    kind = "eval" if split == "validation" else "test"
    for s, items in docs.items():
        excluded, reason = _exclusion(s, len(items), rule, eval_set)
        pieces = [(doc_id, a, b, text[a:b]) for doc_id, text in items
                  for a, b in cut_pieces(text, rule["chars"], rule["max_per_doc"], seed=rule["seed"], doc_id=doc_id)]
        encoded = tok.encode_batch([p[3] for p in pieces]) if pieces else []
        rel = f"{kind}/{eval_path('.', s).name}"
        meta = {"set": f"{kind}/{s}", "split": split, "source": s, "seed": ctx.opt.seed,
                "excluded_from_intervals": excluded, "reason": reason, "pieces": rule}
        scored: list[tuple[str, str, int, int]] = []
        unscored = 0
        with PackedWriter(storage.join(ctx.out, rel), L, vocab_size=tok.vocab_size, eos_id=tok.eos_id, tokenizer=tok,
                          meta=meta, overwrite=True, keep_tail=True, warn_empty=False) as w:
            for (doc_id, a, b, text), ids in zip(pieces, encoded, strict=True):
                ids = np.asarray(ids, dtype=np.int64)
                nbytes = len(text.encode("utf-8"))
                if ids.size == 0:  # a piece no token encodes (a normaliser removed it): counted, not scored
                    unscored += 1
                    continue
                tb = table_bl[ids] if table_bl is not None else None
                if tb is not None and int(tb.sum()) != nbytes:
                    tb = None
                w.add(ids, nbytes, tb, piece=(doc_id, a, b))
                scored.append((s, doc_id, a, b))
        index = w.index
        if unscored:
            ctx.warn(f"{split} set for {s}: {unscored} piece(s) encode to no token and are not scored")
        if excluded and eval_set is None:  # an evaluation set's exclusions are said once, by eval_stage
            ctx.warn(f"{split} set for {s} is excluded from the total and mean intervals: {reason}")
        out[s] = {"docs": len(items), "pieces": len(scored), "unscored_pieces": unscored,
                  "tokens": index["n_sequences"] * L + index.get("tail_tokens", 0),
                  "bytes": index["total_bytes"] + index.get("tail_bytes", 0), "n_sequences": index["n_sequences"],
                  "dropped_tokens": index["dropped_tokens"], "excluded_from_intervals": excluded, "reason": reason,
                  "scored_subset": scored_subset(scored), "written": True, "path": rel}
    return out


def write_eval_text(ctx: MixContext, split: str, split_idx: int, shards: list[InputShard], results: list[dict],
                    eval_set: dict[str, Any] | None = None) -> tuple[dict[str, dict], list[ShardInfo], list[dict]]:
    """Text format: the selected documents per source, whole, as ``{split}/chunk1/example_{split}_{j}.jsonl.zst``;
    each record's ``meta.pieces`` lists the character ranges a scorer should score as pieces."""
    tables = [read_arrow(r["out"]) for r in results]
    rule = piece_rule(ctx, eval_set)
    sel = eval_selection(ctx, tables, split_idx, everything=eval_set is not None, rule=rule)
    docs = selected_documents(ctx, shards, tables, sel)
    if eval_set is not None:
        docs = {s: cap_documents(items, rule, ctx.opt.eval_tokens) for s, items in docs.items()}
    stats: dict[str, dict] = {}
    index_items: list[dict] = []
    per_shard: dict[str, dict[str, dict[str, int]]] = {}
    with ShardWriter(ctx.out, split, chunk=1, max_bytes=ctx.opt.text_shard_bytes) as w:
        for s, items in docs.items():
            excluded, reason = _exclusion(s, len(items), rule, eval_set)
            st_s = stats[s] = {"docs": 0, "tokens": 0, "bytes": 0, "pieces": 0, "excluded_from_intervals": excluded,
                               "reason": reason}
            entries = []
            for doc_id, text in items:
                pieces = cut_pieces(text, rule["chars"], rule["max_per_doc"], seed=rule["seed"], doc_id=doc_id)
                record = slimpajama_record(text, s)
                record["meta"]["slimpipe_id"] = doc_id
                record["meta"]["pieces"] = [list(p) for p in pieces]
                rel = f"{split}/chunk1/example_{split}_{w.index}.jsonl.zst"
                w.write(record)
                n_bytes = len(text.encode("utf-8"))
                st_s["docs"] += 1
                st_s["pieces"] += len(pieces)
                st_s["bytes"] += n_bytes
                st_s["tokens"] += len(ctx.tok.encode(text)) + 1
                entries += [(s, doc_id, a, b) for a, b in pieces]
                st = per_shard.setdefault(rel, {}).setdefault(s, {"docs": 0, "bytes": 0, "words": 0})
                st["docs"] += 1
                st["bytes"] += n_bytes
                st["words"] += len(text.split())
            st_s["scored_subset"] = scored_subset(entries)
    for info in w.shards:
        index_items.append({"path": info.path, "sources": per_shard.get(info.path, {})})
    return stats, w.shards, index_items


def eval_stage(ctx: MixContext, holdout_shards: dict[str, list[InputShard]], holdout_res: dict[str, list[dict]],
               eval_set: dict[str, Any] | None = None) -> tuple[dict[str, dict], list[ShardInfo], dict[str, list[dict]]]:
    """Every held-out split's per-source sets: packed ``eval/``+``test/``, or text shards plus their index.

    With an evaluation set (``SLIMPAJAMA_DIR/eval``), ``eval/<source>`` (text: ``validation/``) is every
    document of it instead of a sample of the validation split, so every mix and dataset built from it is
    scored on the same pieces of the same documents; ``test/`` stays the holdout's.
    """
    info: dict[str, dict] = {}
    shards: list[ShardInfo] = []
    index: dict[str, list[dict]] = {}
    for i, sp in enumerate(HOLDOUT_SPLITS):
        from_set = sp == "validation" and eval_set is not None
        src = EVAL_SET_SPLIT if from_set else sp
        if src not in holdout_res:
            continue
        es = eval_set if from_set else None
        if ctx.opt.output_format == "packed":
            info[sp] = write_eval_packed(ctx, sp, i, holdout_shards[src], holdout_res[src], es)
        else:
            info[sp], infos, index[sp] = write_eval_text(ctx, sp, i, holdout_shards[src], holdout_res[src], es)
            shards += infos
    if eval_set is not None and "validation" in info:
        for s, v in eval_set["sources"].items():
            entry = info["validation"].setdefault(s, {"docs": 0, "tokens": 0, "written": False})
            excluded = bool(v.get("excluded_from_intervals", v.get("too_small")))
            entry.update(from_eval_set=True, too_small=excluded, excluded_from_intervals=excluded,
                         reason=v.get("reason"))
            if excluded:
                ctx.warn(f"evaluation set for {s} is too small: {v.get('reason')}")
    written = {s for s, v in info.get("validation", {}).items() if v.get("written", v.get("docs", 0) > 0)}
    missing = [s for s in ctx.mix.active_sources if s not in written]
    if info and missing:
        ctx.warn("no evaluation set for " + ", ".join(missing) + " (a source of the mix): its bits per byte "
                 "cannot be scored")
    return info, shards, index
