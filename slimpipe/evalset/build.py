"""``slimpipe evalset SOURCES -o EVAL``: one evaluation set, drawn once from the raw sources before any dedup.

Two steps on the runtime executor (:mod:`slimpipe.runtime`), one Ray task per input file or byte range;
the driver only plans. ``EVAL`` and the inputs may be paths or URIs (``s3://``, ``gs://``...); the
intermediates live in ``EVAL/_work`` (or under ``--scratch``), each step resumes from its committed
manifest, and they are deleted once the set is complete:

1. **scan**: every document gets a key ``xxh64(seed, id)`` (a seeded uniform order that depends on
   nothing but the document's stable id); each task returns per source its document and byte counts
   and the smallest keys whose bytes cover the target (nothing else crosses to the driver).
2. **write**: per source, the driver merges those candidates into a key threshold: the first documents
   in key order until the source's target is met, never more than ``max_fraction`` of the source's
   bytes and at least one document when the source has two or more. Tasks re-read their input and write
   the chosen documents to ``EVAL/<source>/part-<task>.jsonl.zst`` (records ``{"text", "meta":
   {"redpajama_set_name", "slimpipe_id"}}``), counting GPT-2 tokens with the project's offline tokenizer.

The target per source is ``--min-tokens`` or ``--min-seqs x --seq-len`` GPT-2 tokens (default 64
sequences of 2048). Selection estimates tokens as UTF-8 bytes / 4 (``BYTES_PER_TOKEN``) and takes 20%
more (``MARGIN``); the manifest records the exact GPT-2 count, and a source still under the target is
flagged too small. A source whose target needs more than ``max_fraction`` of its text is
**too small**: it gets that fraction instead, flagged with the reason in the manifest, the report and on
stderr. ``EVAL/manifest.json`` holds ``eval_set``: the SHA-256 of the sorted ``source, id, SHA-256(text)``
lines, so two sets with the same documents have the same identity whatever the file layout.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import asdict, dataclass

import numpy as np
import xxhash

from slimpipe import storage
from slimpipe.io.readers import InputFile, discover_files, iter_columns, read_batches, split_ranges
from slimpipe.io.writers import JsonlZstWriter
from slimpipe.runtime import Executor, Step, TaskContext, Workspace
from slimpipe.runtime.workspace import remove_temporaries
from slimpipe.sources import SET_NAMES

FORMAT = "slimpipe-evalset"
VERSION = 1
MANIFEST = "manifest.json"
BYTES_PER_TOKEN = 4.0  # GPT-2 BPE on English prose averages ~4 UTF-8 bytes per token
MARGIN = 1.2  # select 20% more bytes than the estimate needs: code, LaTeX and non-English text run 4-5 bytes per token


class EvalSetError(ValueError):
    pass


@dataclass(frozen=True)
class EvalSetOptions:
    seed: int = 1234
    min_tokens: int | None = None  # per source; default min_seqs * seq_len
    min_seqs: int = 64
    seq_len: int = 2048
    max_fraction: float = 0.1  # never take more than this share of a source's bytes

    def __post_init__(self) -> None:
        if not 0.0 < self.max_fraction < 1.0:
            raise EvalSetError(f"--max-fraction must be in (0, 1), got {self.max_fraction}")
        if self.min_seqs < 1 or self.seq_len < 1 or (self.min_tokens is not None and self.min_tokens < 1):
            raise EvalSetError("--min-seqs, --seq-len and --min-tokens must be >= 1")

    @property
    def target_tokens(self) -> int:
        return int(self.min_tokens if self.min_tokens is not None else self.min_seqs * self.seq_len)


def doc_key(seed: int, doc_id: str) -> int:
    """The document's place in the seeded evaluation order (uniform, stable across reruns and layouts)."""
    return xxhash.xxh64_intdigest(f"eval\0{doc_id}".encode(), seed=seed)


def _scan(ctx: TaskContext, task: dict, seed: int, target_bytes: int) -> dict:
    keys: dict[str, list[int]] = {}
    sizes: dict[str, list[int]] = {}
    stats = None
    for docs, _rejects, st in read_batches(InputFile(**task)):
        if st is not None:
            stats = st.to_dict()
        if docs is None:
            continue
        for doc_id, src, text in zip(*(docs.column(n).to_pylist() for n in ("id", "source", "text")), strict=True):
            keys.setdefault(src, []).append(doc_key(seed, doc_id))
            sizes.setdefault(src, []).append(len(text.encode("utf-8")))
    by_source, cands = {}, {}
    for src, k in keys.items():
        k_arr, b_arr = np.array(k, dtype=np.uint64), np.array(sizes[src], dtype=np.int64)
        order = np.argsort(k_arr, kind="stable")
        before = np.cumsum(b_arr[order]) - b_arr[order]  # bytes of the documents ahead in key order
        take = order[before < target_bytes]
        by_source[src] = {"docs": int(k_arr.size), "bytes": int(b_arr.sum())}
        cands[src] = [[int(k_arr[i]), int(b_arr[i])] for i in take]
    return {"by_source": by_source, "candidates": cands, "stats": stats}


def plan_selection(scanned: list[dict], opts: EvalSetOptions) -> dict[str, dict]:
    """Per source: the key threshold, the bytes it selects, and whether the source is too small."""
    target_bytes = int(opts.target_tokens * BYTES_PER_TOKEN * MARGIN)
    totals: dict[str, dict[str, int]] = {}
    cands: dict[str, list[list[int]]] = {}
    for s in scanned:
        for src, v in s["by_source"].items():
            t = totals.setdefault(src, {"docs": 0, "bytes": 0})
            t["docs"] += v["docs"]
            t["bytes"] += v["bytes"]
        for src, c in s["candidates"].items():
            cands.setdefault(src, []).extend(c)
    plan = {}
    for src in sorted(totals):
        tot = totals[src]
        c = np.array(sorted(cands.get(src, [])), dtype=np.uint64).reshape(-1, 2)
        budget = min(target_bytes, int(opts.max_fraction * tot["bytes"]))
        before = np.cumsum(c[:, 1].astype(np.int64)) - c[:, 1].astype(np.int64)
        n = int((before < budget).sum()) if budget > 0 else 0
        if n == 0 and tot["docs"] >= 2:
            n = 1  # every source with two documents or more gets an evaluation set
        too_small = budget < target_bytes
        reason = None
        if too_small:
            reason = (f"{src} holds {tot['bytes']:,} bytes (~{tot['bytes'] / BYTES_PER_TOKEN:,.0f} tokens): the "
                      f"target of {opts.target_tokens:,} tokens would take more than "
                      f"{opts.max_fraction:.0%} of it, so the set has {n} document(s) instead")
            if n == 0:
                reason = f"{src} has {tot['docs']} document(s): nothing can be held out"
        plan[src] = {"threshold": int(c[n - 1, 0]) if n else -1, "planned_docs": n,
                     "planned_bytes": int(c[:n, 1].astype(np.int64).sum()), "too_small": too_small,
                     "reason": reason, "source_docs": tot["docs"], "source_bytes": tot["bytes"]}
    return plan


def _write(ctx: TaskContext, task: dict, seed: int, thresholds: dict[str, int], eval_dir: str) -> dict:
    from slimpipe.mix.tokenizer import GPT2Tokenizer

    t = ctx.index

    tok = GPT2Tokenizer()
    writers: dict[str, JsonlZstWriter] = {}
    out: dict[str, dict] = {}
    try:
        for doc_id, src, text in iter_columns(InputFile(**task), ("id", "source", "text")):
            thr = thresholds.get(src, -1)
            if thr < 0 or doc_key(seed, doc_id) > thr:
                continue
            if src not in writers:
                writers[src] = JsonlZstWriter(eval_dir, f"{src}/part-{t:05d}.jsonl.zst")
                out[src] = {"docs": 0, "bytes": 0, "tokens": 0, "lines": []}
            writers[src].write({"text": text, "meta": {"redpajama_set_name": SET_NAMES.get(src, src),
                                                      "slimpipe_id": doc_id}})
            o = out[src]
            o["docs"] += 1
            o["bytes"] += len(text.encode("utf-8"))
            o["tokens"] += len(tok.encode(text))
            o["lines"].append(f"{src}\t{doc_id}\t{hashlib.sha256(text.encode('utf-8')).hexdigest()}")
        for src, w in writers.items():
            out[src]["file"] = w.close().path
    except BaseException:
        for w in writers.values():
            w.abort()
        raise
    return {"sources": out}


def content_hash(lines: list[str]) -> str:
    """The evaluation set's identity: SHA-256 of its sorted ``source\\tid\\tsha256(text)`` lines."""
    h = hashlib.sha256()
    for line in sorted(lines):
        h.update(line.encode("utf-8") + b"\n")
    return h.hexdigest()


def load_manifest(eval_dir: str | os.PathLike) -> dict:
    """``EVAL/manifest.json`` of a finished evaluation set (a path or a URI)."""
    path = storage.join(eval_dir, MANIFEST)
    if not storage.exists(path):
        raise EvalSetError(f"{storage.display(eval_dir)}: no {MANIFEST} (not a finished `slimpipe evalset` output)")
    m = storage.read_json(path)
    if m.get("format") != FORMAT:
        raise EvalSetError(f"{path}: format {m.get('format')!r}, expected {FORMAT!r}")
    return m


def build_eval_set(paths: list, out: str | os.PathLike, opts: EvalSetOptions, *, source: str | None = None,
                   progress: bool = True, scratch: str | None = None, keep_intermediates: bool = False) -> dict:
    """Draw the evaluation set into ``out`` (a path or a URI) on the current Ray.

    Resumable: a killed run resumes from its committed steps, and a finished set drawn with the same
    options and inputs is returned as is. Intermediates live in ``out/_work`` or under ``scratch`` and are
    deleted on success unless ``keep_intermediates``.
    """
    out = os.fspath(out)
    plan_key = {"options": asdict(opts), "inputs": [os.fspath(p) for p in paths], "source": source}
    ws = Workspace(out, scratch)
    if storage.exists(storage.join(out, MANIFEST)):
        m = load_manifest(out)
        if m.get("plan") == plan_key:
            if not keep_intermediates:
                ws.delete()  # a run killed after its manifest was written
            return m
        raise EvalSetError(f"{storage.display(out)} holds an evaluation set drawn with other options or inputs; "
                           "use a new folder")
    storage.check_access(out, write=True)
    if scratch:
        storage.check_access(scratch, write=True)
    plan_path = ws.path("plan.json")
    if storage.exists(plan_path):
        if storage.read_json(plan_path) != plan_key:
            raise EvalSetError(f"{storage.display(out)} holds an unfinished evaluation set drawn with other options "
                               "or inputs; use a new folder (or delete it)")
    else:
        storage.write_json_atomic(plan_path, plan_key)
    files = split_ranges(discover_files(paths, source=source))
    ex = Executor(ws, "evalset", progress)
    target_bytes = int(opts.target_tokens * BYTES_PER_TOKEN * MARGIN)
    scanned = ex.run(Step("scan", _scan, [(asdict(f), opts.seed, target_bytes) for f in files], "files"))
    plan = plan_selection(scanned, opts)
    thresholds = {s: p["threshold"] for s, p in plan.items()}
    written = ex.run(Step("write", _write, [(asdict(f), opts.seed, thresholds, out) for f in files], "files"))
    sources: dict[str, dict] = {}
    lines: list[str] = []
    for src, p in plan.items():
        parts = [w["sources"][src] for w in written if src in w["sources"]]
        lines += [ln for part in parts for ln in part["lines"]]
        tokens = sum(x["tokens"] for x in parts)
        # the exact count decides; the reason says whether the source or the byte estimate fell short
        budget_limited = p["too_small"]
        p["too_small"] = tokens < opts.target_tokens
        if not p["too_small"]:
            p["reason"] = None
        elif not budget_limited:
            p["reason"] = (f"{src}: the documents drawn by the byte estimate hold {tokens:,} GPT-2 tokens, under "
                           f"the target of {opts.target_tokens:,}")
        sources[src] = {"docs": sum(x["docs"] for x in parts), "bytes": sum(x["bytes"] for x in parts),
                        "tokens": tokens, "too_small": p["too_small"],
                        "reason": p["reason"], "files": sorted(x["file"] for x in parts),
                        "source_docs": p["source_docs"], "source_bytes": p["source_bytes"]}
    stats = [s["stats"] for s in scanned if s.get("stats")]
    unread = [s for s in stats if s.get("status") not in ("ok", "empty")]
    manifest = {"format": FORMAT, "version": VERSION, "eval_set": content_hash(lines), "seed": opts.seed,
                "target_tokens_per_source": opts.target_tokens, "max_fraction": opts.max_fraction,
                "token_count": "GPT-2 BPE tokens (offline tokenizer) of each selected document; selection "
                               f"estimated tokens as UTF-8 bytes / {BYTES_PER_TOKEN:g} with a {MARGIN:g}x margin",
                "sources": sources, "inputs": {"files": len(stats), "unread": unread,
                                               "rejected_lines": sum(s.get("rejected", 0) for s in stats)},
                "plan": plan_key}
    storage.write_bytes_atomic(storage.join(out, "report.md"), render_report(manifest).encode())
    storage.write_json_atomic(storage.join(out, MANIFEST), manifest)  # last: its presence marks a complete set
    remove_temporaries(out, "evalset")
    ex.cleanup(keep_intermediates)
    for src, s in sources.items():
        if s["too_small"]:
            print(f"WARNING: evaluation set for {src} is too small: {s['reason']}", file=sys.stderr)
    return manifest


def render_report(m: dict) -> str:
    lines = ["# Evaluation set", "", f"Identity (`eval_set`): `{m['eval_set']}` · seed {m['seed']} · target "
             f"{m['target_tokens_per_source']:,} GPT-2 tokens per source, at most {m['max_fraction']:.0%} of a source.", ""]
    small = {s: v for s, v in m["sources"].items() if v["too_small"]}
    if small:
        lines += ["**Too small (fewer evaluation tokens than the target):**", ""]
        lines += [f"- **{s}**: {v['reason']}" for s, v in small.items()] + [""]
    lines += ["| source | docs | GPT-2 tokens | bytes | source docs | too small |", "|---|---:|---:|---:|---:|---|"]
    for s, v in m["sources"].items():
        lines.append(f"| {s} | {v['docs']:,} | {v['tokens']:,} | {v['bytes']:,} | {v['source_docs']:,} | "
                     f"{'**yes**' if v['too_small'] else 'no'} |")
    if m["inputs"]["unread"]:
        lines += ["", "**Files not read:**", ""] + [f"- {u['file']}: {u.get('error') or u.get('status')}"
                                                    for u in m["inputs"]["unread"]]
    lines += ["", m["token_count"] + "."]
    return "\n".join(lines) + "\n"


def read_eval_documents(eval_dir: str | os.PathLike) -> list[tuple[str, str, str]]:
    """``(source, id, text)`` of every evaluation document (``eval_dir`` a path or a URI), in the manifest's
    file order."""
    import zstandard

    m = load_manifest(eval_dir)
    docs = []
    for src, v in m["sources"].items():
        for rel in v["files"]:
            with storage.open_input(storage.join(eval_dir, rel)) as fh:
                data = zstandard.ZstdDecompressor().stream_reader(fh).read()
            for line in data.decode("utf-8").splitlines():
                rec = json.loads(line)
                docs.append((src, rec["meta"]["slimpipe_id"], rec["text"]))
    return docs
