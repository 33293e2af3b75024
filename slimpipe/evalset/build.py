"""``slimpipe evalset SOURCES -o EVAL``: one evaluation set, drawn once from the raw sources before any dedup.

Two steps on the runtime executor (:mod:`slimpipe.runtime`), one Ray task per input file or byte range;
the driver only plans. ``EVAL`` and the inputs may be paths or URIs (``s3://``, ``gs://``...); the
intermediates live in ``EVAL/_work`` (or under ``--scratch``), each step resumes from its committed
manifest, and they are deleted once the set is complete:

1. **scan**: every document gets a key ``xxh64(seed, id)`` (a seeded uniform order that depends on
   nothing but the document's stable id); each task returns per source its document and byte counts
   and the smallest keys that could be chosen (nothing else crosses to the driver).
2. **write**: per source, the driver merges those candidates into a key threshold: the first documents
   in key order until the source has ``min_docs`` documents (30) *and* its token target, never more than
   ``max_fraction`` (10%) of the source's documents nor of its bytes. Tasks re-read their input and write
   the chosen documents to ``EVAL/sources/<source>/part-<task>.jsonl.zst`` (records ``{"text", "meta":
   {"redpajama_set_name", "slimpipe_id"}}``), counting GPT-2 tokens with the project's offline tokenizer.

An evaluation set is **sized in documents**: the unit an interval resamples is a document (seeds, then
documents within a source). A source whose ``min_docs`` documents would take more than ``max_fraction``
of it gets what fits under the cap and is **excluded from intervals** (``excluded_from_intervals: true``
with the reason, in the manifest, the report and on stderr): its own figure is shown, but it is left out
of the ``total``/``mean`` intervals. ``too_small`` is the same flag (older readers).

A document is scored as **pieces** (:func:`cut_pieces`): consecutive character ranges of about
``piece_chars`` (``seq_len x 4``) characters, cut after a space or newline when there is one in the last
tenth; a document longer than ``max_pieces`` pieces is scored on a seeded choice of ``max_pieces`` of them.
The pieces of one document are one cluster when intervals resample. Pieces are character ranges, so
what is scored does not depend on any mix's tokenizer or seed.

The token target (``--min-tokens`` or ``--min-seqs x --seq-len`` GPT-2 tokens of the scored pieces,
default 64 x 2048) adds documents beyond ``min_docs`` where the cap allows; a source under it is noted
(``tokens_below_target``), not excluded. Selection estimates tokens as UTF-8 bytes / 4
(``BYTES_PER_TOKEN``) with 20% more (``MARGIN``); the manifest records the exact GPT-2 count.
``EVAL/manifest.json`` holds ``eval_set``: the SHA-256 of the sorted ``source, id, SHA-256(text)`` lines,
so two sets with the same documents have the same identity whatever the file layout.
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
VERSION = 2  # 2: sized in documents (min_docs, excluded_from_intervals), scored as pieces
MANIFEST = "manifest.json"
SOURCES = "sources"  # EVAL/sources/<source>/: a source never collides with the set's own files
BYTES_PER_TOKEN = 4.0  # GPT-2 BPE on English prose averages ~4 UTF-8 bytes per token
MARGIN = 1.2  # select 20% more bytes than the estimate needs: code, LaTeX and non-English text run 4-5 bytes per token
MIN_DOCS = 30  # evaluation documents per source that an interval needs (fewer: excluded from intervals)
MAX_PIECES = 8  # pieces scored per document (a seeded choice beyond that): bounds what one long document costs


class EvalSetError(ValueError):
    pass


@dataclass(frozen=True)
class EvalSetOptions:
    seed: int = 1234
    min_tokens: int | None = None  # per source; default min_seqs * seq_len
    min_seqs: int = 64
    seq_len: int = 2048
    max_fraction: float = 0.1  # never take more than this share of a source's documents, nor of its bytes
    min_docs: int = MIN_DOCS  # documents per source for intervals; fewer: excluded_from_intervals
    max_pieces: int = MAX_PIECES  # pieces scored per document

    def __post_init__(self) -> None:
        if not 0.0 < self.max_fraction < 1.0:
            raise EvalSetError(f"--max-fraction must be in (0, 1), got {self.max_fraction}")
        if self.min_seqs < 1 or self.seq_len < 1 or (self.min_tokens is not None and self.min_tokens < 1):
            raise EvalSetError("--min-seqs, --seq-len and --min-tokens must be >= 1")
        if self.min_docs < 1 or self.max_pieces < 1:
            raise EvalSetError("min_docs and max_pieces must be >= 1")

    @property
    def target_tokens(self) -> int:
        return int(self.min_tokens if self.min_tokens is not None else self.min_seqs * self.seq_len)

    @property
    def piece_chars(self) -> int:
        return piece_chars(self.seq_len)


def piece_chars(seq_len: int) -> int:
    """Characters per scored piece for a model of ``seq_len`` tokens (about one context of text)."""
    return max(16, int(seq_len * BYTES_PER_TOKEN))


def cut_pieces(text: str, chars: int, max_pieces: int | None = None, *, seed: int = 0, doc_id: str = ""
               ) -> list[tuple[int, int]]:
    """The ``[start, end)`` character ranges of ``text`` that are scored, in text order.

    Consecutive pieces of ``chars`` characters cover the text; each cut moves back to just after the last
    space or newline in the piece's final tenth, when there is one (no word is split where avoidable).
    With more than ``max_pieces`` pieces, a seeded choice of ``max_pieces`` of them (by ``xxh64`` of seed,
    id and piece number: stable across reruns, tokenizers and layouts). Depends on nothing but its
    arguments, so every mix scores the same ranges."""
    n, out, a = len(text), [], 0
    while a < n:
        b = min(a + chars, n)
        if b < n:
            cut = max(text.rfind(" ", b - chars // 10, b), text.rfind("\n", b - chars // 10, b))
            if cut >= a:
                b = cut + 1
        out.append((a, b))
        a = b
    if max_pieces and len(out) > max_pieces:
        keys = [xxhash.xxh64_intdigest(f"piece\0{doc_id}\0{i}".encode(), seed=seed) for i in range(len(out))]
        keep = sorted(sorted(range(len(out)), key=keys.__getitem__)[:max_pieces])
        out = [out[i] for i in keep]
    return out


def _scored_bytes_estimate(nbytes: np.ndarray, n_chars: int, max_pieces: int) -> np.ndarray:
    return np.minimum(nbytes, n_chars * max_pieces)


def doc_key(seed: int, doc_id: str) -> int:
    """The document's place in the seeded evaluation order (uniform, stable across reruns and layouts)."""
    return xxhash.xxh64_intdigest(f"eval\0{doc_id}".encode(), seed=seed)


def _scan(ctx: TaskContext, task: dict, seed: int, target_bytes: int, min_docs: int = MIN_DOCS,
          scored_cap: int | None = None) -> dict:
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
        scored = np.minimum(b_arr, scored_cap) if scored_cap else b_arr
        before = np.cumsum(scored[order]) - scored[order]  # scored bytes of the documents ahead in key order
        # a document the driver may choose is among the first min_docs here or under the byte target
        take = order[(before < target_bytes) | (np.arange(order.size) < min_docs)]
        by_source[src] = {"docs": int(k_arr.size), "bytes": int(b_arr.sum())}
        cands[src] = [[int(k_arr[i]), int(b_arr[i]), int(scored[i])] for i in take]
    return {"by_source": by_source, "candidates": cands, "stats": stats}


def plan_selection(scanned: list[dict], opts: EvalSetOptions) -> dict[str, dict]:
    """Per source: the key threshold, the documents and bytes it selects, and whether the source is
    excluded from intervals (fewer than ``min_docs`` documents fit under the ``max_fraction`` caps)."""
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
        c = np.array(sorted(cands.get(src, [])), dtype=np.uint64).reshape(-1, 3)
        cum_bytes = np.cumsum(c[:, 1].astype(np.int64))
        cum_scored = np.cumsum(c[:, 2].astype(np.int64))
        doc_cap = int(opts.max_fraction * tot["docs"] + 1e-9)
        byte_cap = int(opts.max_fraction * tot["bytes"])
        allowed = min(doc_cap, int(np.searchsorted(cum_bytes, byte_cap, side="right")))
        by_tokens = int(np.searchsorted(cum_scored, target_bytes, side="left")) + 1
        n = min(len(c), max(opts.min_docs, by_tokens), allowed)
        excluded = n < opts.min_docs
        reason = None
        if excluded:
            fraction = f"{opts.max_fraction:.0%}"
            if doc_cap < opts.min_docs:
                why = (f"{src} has {tot['docs']:,} document(s): {opts.min_docs} evaluation documents would be more "
                       f"than {fraction} of them")
            else:
                why = (f"{src} holds {tot['bytes']:,} bytes: {opts.min_docs} evaluation documents would take more "
                       f"than {fraction} of them")
            reason = (f"{why}, so the set has {n} document(s) and {src} is left out of the total and mean "
                      "intervals")
        plan[src] = {"threshold": int(c[n - 1, 0]) if n else -1, "planned_docs": n,
                     "planned_bytes": int(cum_bytes[n - 1]) if n else 0, "excluded_from_intervals": excluded,
                     "reason": reason, "source_docs": tot["docs"], "source_bytes": tot["bytes"]}
    return plan


def _write(ctx: TaskContext, task: dict, seed: int, thresholds: dict[str, int], eval_dir: str,
           chars: int = 0, max_pieces: int = MAX_PIECES) -> dict:
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
                writers[src] = JsonlZstWriter(eval_dir, f"{SOURCES}/{src}/part-{t:05d}.jsonl.zst")
                out[src] = {"docs": 0, "bytes": 0, "tokens": 0, "pieces": 0, "scored_bytes": 0, "lines": []}
            writers[src].write({"text": text, "meta": {"redpajama_set_name": SET_NAMES.get(src, src),
                                                      "slimpipe_id": doc_id}})
            o = out[src]
            o["docs"] += 1
            o["bytes"] += len(text.encode("utf-8"))
            pieces = [text[a:b] for a, b in cut_pieces(text, chars or len(text) or 1, max_pieces, seed=seed,
                                                        doc_id=doc_id)]
            o["pieces"] += len(pieces)
            o["scored_bytes"] += sum(len(p.encode("utf-8")) for p in pieces)
            o["tokens"] += sum(len(tok.encode(p)) for p in pieces)
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
    scored_cap = opts.piece_chars * opts.max_pieces
    scanned = ex.run(Step("scan", _scan, [(asdict(f), opts.seed, target_bytes, opts.min_docs, scored_cap)
                                          for f in files], "files"))
    plan = plan_selection(scanned, opts)
    thresholds = {s: p["threshold"] for s, p in plan.items()}
    written = ex.run(Step("write", _write, [(asdict(f), opts.seed, thresholds, out, opts.piece_chars,
                                             opts.max_pieces) for f in files], "files"))
    sources: dict[str, dict] = {}
    lines: list[str] = []
    for src, p in plan.items():
        parts = [w["sources"][src] for w in written if src in w["sources"]]
        lines += [ln for part in parts for ln in part["lines"]]
        tokens = sum(x["tokens"] for x in parts)
        excluded = p["excluded_from_intervals"]
        sources[src] = {"docs": sum(x["docs"] for x in parts), "pieces": sum(x["pieces"] for x in parts),
                        "bytes": sum(x["bytes"] for x in parts), "scored_bytes": sum(x["scored_bytes"] for x in parts),
                        "tokens": tokens, "excluded_from_intervals": excluded, "too_small": excluded,
                        "reason": p["reason"], "tokens_below_target": tokens < opts.target_tokens,
                        "files": sorted(x["file"] for x in parts),
                        "source_docs": p["source_docs"], "source_bytes": p["source_bytes"]}
    stats = [s["stats"] for s in scanned if s.get("stats")]
    unread = [s for s in stats if s.get("status") not in ("ok", "empty")]
    manifest = {"format": FORMAT, "version": VERSION, "eval_set": content_hash(lines), "seed": opts.seed,
                "min_docs": opts.min_docs, "target_tokens_per_source": opts.target_tokens,
                "max_fraction": opts.max_fraction,
                "pieces": {"chars": opts.piece_chars, "max_per_doc": opts.max_pieces, "seed": opts.seed,
                           "rule": "slimpipe.evalset.build.cut_pieces: consecutive character ranges, cut after the "
                                   "last space or newline in each piece's final tenth; a seeded choice of "
                                   "max_per_doc pieces of a longer document; a document's pieces are one cluster"},
                "excluded_from_intervals": {s: v["reason"] for s, v in sources.items() if v["excluded_from_intervals"]},
                "token_count": "GPT-2 BPE tokens (offline tokenizer) of the scored pieces of each selected document; "
                               f"selection estimated tokens as UTF-8 bytes / {BYTES_PER_TOKEN:g} with a {MARGIN:g}x "
                               "margin",
                "sources": sources, "inputs": {"files": len(stats), "unread": unread,
                                               "rejected_lines": sum(s.get("rejected", 0) for s in stats)},
                "plan": plan_key}
    storage.write_bytes_atomic(storage.join(out, "report.md"), render_report(manifest).encode())
    storage.write_json_atomic(storage.join(out, MANIFEST), manifest)  # last: its presence marks a complete set
    remove_temporaries(out, "evalset")
    ex.cleanup(keep_intermediates)
    for src, s in sources.items():
        if s["excluded_from_intervals"]:
            print(f"WARNING: evaluation set for {src} is too small: {s['reason']}", file=sys.stderr)
    return manifest


def render_report(m: dict) -> str:
    pc = m["pieces"]
    lines = ["# Evaluation set", "", f"Identity (`eval_set`): `{m['eval_set']}` · seed {m['seed']} · at least "
             f"{m['min_docs']} documents per source (and {m['target_tokens_per_source']:,} GPT-2 tokens where the "
             f"cap allows), at most {m['max_fraction']:.0%} of a source's documents and bytes · scored as pieces of "
             f"~{pc['chars']:,} characters, at most {pc['max_per_doc']} per document (one cluster per document).", ""]
    small = {s: v for s, v in m["sources"].items() if v["excluded_from_intervals"]}
    if small:
        lines += [f"**Too small: excluded from the total and mean intervals (fewer than {m['min_docs']} "
                  "evaluation documents):**", ""]
        lines += [f"- **{s}**: {v['reason']}" for s, v in small.items()] + [""]
    lines += ["| source | docs | pieces | GPT-2 tokens scored | bytes scored | source docs | in intervals |",
              "|---|---:|---:|---:|---:|---:|---|"]
    for s, v in m["sources"].items():
        lines.append(f"| {s} | {v['docs']:,} | {v['pieces']:,} | {v['tokens']:,}"
                     f"{'*' if v['tokens_below_target'] else ''} | {v['scored_bytes']:,} | {v['source_docs']:,} | "
                     f"{'**no (excluded)**' if v['excluded_from_intervals'] else 'yes'} |")
    if any(v["tokens_below_target"] for v in m["sources"].values()):
        lines += ["", f"\\* under the token target of {m['target_tokens_per_source']:,} (the cap or the source "
                  "allows no more documents)."]
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
