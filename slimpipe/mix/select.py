"""Stage *select*: what is available, and each shard's pieces (whole repeated epochs, then a seeded
sample filling its quota) written grouped by shuffle bucket."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from slimpipe import storage
from slimpipe.io.readers import read_batches
from slimpipe.mix import budget as B
from slimpipe.mix.common import (
    BUCKET,
    SELECT,
    InputShard,
    MixBuildError,
    MixContext,
    arrow_token_type,
    flat_name,
    list_parts,
    read_arrow,
    source_key,
)
from slimpipe.mix.jobs import PieceCounts, SelectJob, SelectResult
from slimpipe.mix.tokenize import shard_input, worker_tokenizer
from slimpipe.mix.tokenizer import Tokenizer


def available_tokens(ctx: MixContext, all_train: list[InputShard], used: list[InputShard], res: list[dict],
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


# ------------------------------------------------------------------------------- stage 4: selection


def _piece_schema(text: bool, vocab_size: int) -> pa.Schema:
    fields = [("source", pa.int8()), ("line", pa.int64()), ("epoch", pa.int32()), ("ntok", pa.int64()),
              ("doc_ntok", pa.int64()), ("doc_nbytes", pa.int64()), ("truncated", pa.bool_())]
    if text:
        fields += [("text", pa.large_string()), ("slimpipe_id", pa.string())]
    else:
        fields.append(("tokens", pa.large_list(arrow_token_type(vocab_size))))
    return pa.schema(fields)


def _choose_pieces(table: pa.Table, plan: dict[str, tuple[int, int]], seed: int, key: int) -> dict[str, np.ndarray]:
    """Rows and lengths of every piece one shard contributes: whole repeated epochs, then a seeded
    sample filling each source's quota exactly (last piece truncated). Pure given the scratch table."""
    src = table.column("source").to_numpy()
    ntok = table.column("ntok").to_numpy()
    rows, epoch, length, trunc, source = [], [], [], [], []
    for code, (s, (full, quota)) in enumerate(plan.items()):
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
        order = np.random.default_rng([seed, SELECT, key, source_key(s)]).permutation(idx.size)
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


def cut_text(text: str, tok: Tokenizer, ntok: int) -> str:
    """The text of a document's first ``ntok`` tokens (the truncated piece of a text-format mix)."""
    ids = tok.encode_batch([text])[0][:ntok]
    table = tok.byte_lengths
    if table is not None:
        n = int(table[np.asarray(ids, dtype=np.int64)].sum())
        return text.encode("utf-8")[:n].decode("utf-8", errors="ignore")
    return tok.decode(ids)


def read_texts(file: str, lines: set[int]) -> dict[int, tuple[str, str | None]]:
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


def _shard_table(files: dict[str, str]) -> pa.Table:
    """One shard's cached sources as one table, in the plan's order; ``source`` is the position in it."""
    parts = []
    for code, path in enumerate(files.values()):
        t = read_arrow(path)
        parts.append(t.append_column("source", pa.array(np.full(t.num_rows, code, np.int8))))
    return pa.concat_tables(parts) if parts else pa.table({})


def select_shard(job: SelectJob) -> SelectResult:
    """Ray task: choose one shard's pieces and write them grouped by bucket (one record batch each)."""
    table = _shard_table(job.pass1)
    pieces = _choose_pieces(table, job.plan, job.seed, job.key)
    text = job.format == "text"
    n_buckets = int(job.buckets)
    rng = np.random.default_rng([job.seed, BUCKET, job.key])
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
    schema = _piece_schema(text, job.vocab_size)
    if text:
        found = read_texts(job.file, set(lines.tolist()))
        tok = worker_tokenizer(job.tokenizer, job.identity) if pieces["truncated"].any() else None
        texts, ids = [], []
        for line, n, cut in zip(lines.tolist(), pieces["ntok"].tolist(), pieces["truncated"].tolist(), strict=True):
            t, sid = found[line]
            texts.append(cut_text(t, tok, n) if cut else t)
            ids.append(sid)
        cols["text"] = pa.array(texts, pa.large_string())
        cols["slimpipe_id"] = pa.array(ids, pa.string())
    else:
        offsets, values = list_parts(table.column("tokens"))
        cols["tokens"] = _gather_tokens(offsets, values, rows, pieces["ntok"]).cast(schema.field("tokens").type)
    arrays = [cols[f.name] for f in schema]
    starts = np.searchsorted(bucket, np.arange(n_buckets + 1))
    batches = [pa.RecordBatch.from_arrays([a.slice(int(starts[b]), int(starts[b + 1] - starts[b])) for a in arrays],
                                          schema=schema) for b in range(n_buckets)]
    storage.write_arrow_atomic(job.out, schema, batches)
    per_source: dict[str, PieceCounts] = {}
    for code, s in enumerate(job.plan):
        m = pieces["source"] == code
        per_source[s] = PieceCounts(pieces=int(m.sum()), tokens=int((pieces["ntok"][m] + 1).sum()),
                                    truncated=int(pieces["truncated"][m].sum()))
    return SelectResult(path=job.path, buckets=np.bincount(bucket, minlength=n_buckets).tolist(), sources=per_source)


@dataclass
class Selection:
    """What stage *select* decided: per-source plans, availability, and the per-shard piece files."""

    plans: dict[str, B.SourcePlan]
    prefix_avail: dict[str, int]
    total_avail: dict[str, int]
    exact: bool
    n_buckets: int
    files: list[str]
    pieces: dict[str, dict[str, int]]
    folder: str


def plan_and_select(ctx: MixContext, train_shards: list[InputShard], used: list[InputShard], res: list[dict],
                    n_eligible: int) -> Selection:
    """Per-source targets and epochs, each shard's quota, then one Ray task per shard choosing its pieces."""
    opt, mix = ctx.opt, ctx.mix
    active = mix.active_sources
    exact = len(used) == n_eligible
    prefix_avail, total_avail = available_tokens(ctx, train_shards, used, res, exact or any(
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
    sel_dir = storage.join(ctx.work, "select")
    storage.delete_tree(sel_dir)
    jobs: list[SelectJob] = []
    for shard, r, q in zip(used, res, quotas, strict=True):
        plan = {s: (plans[s].full_epochs, q.get(s, 0)) for s in active}
        if not any(full or quota for full, quota in plan.values()):
            continue
        jobs.append(SelectJob(path=shard.path, file=storage.join(ctx.root, shard.path), key=shard.key,
                              pass1={s: r["out"][s] for s in active}, plan=plan, seed=opt.seed, buckets=n_buckets,
                              format=opt.output_format, vocab_size=ctx.tok.vocab_size,
                              tokenizer=ctx.tok_spec or ctx.tok.spec, identity=ctx.tok.identity,
                              out=storage.join(sel_dir, f"{flat_name(shard.path)}.arrow")))
    selected: list[SelectResult] = ctx.ex.map(select_shard, jobs, label="mix: select", unit="shards")
    pieces = {s: {"pieces": sum(x.sources[s].pieces for x in selected),
                  "truncated": sum(x.sources[s].truncated for x in selected)} for s in active}
    return Selection(plans=plans, prefix_avail=prefix_avail, total_avail=total_avail, exact=exact,
                     n_buckets=n_buckets, files=[j.out for j in jobs], pieces=pieces, folder=sel_dir)
