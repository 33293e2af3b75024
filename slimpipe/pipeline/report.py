"""The SlimPajama pipeline report: every document accounted for per source, stage by stage.

Tokens are estimated as **whitespace-separated words** (exact count, no tokenizer): cheap, stable across
tokenizers, and good enough to compare shares; GPT-2 BPE gives roughly 1.3 tokens per English word and
more on code and LaTeX, so shares by bytes are shown too.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from slimpipe import storage
from slimpipe.sources import sort_sources

# SlimPajama-627B card (REFERENCE.md): final token shares, and RedPajama's for comparison.
SLIMPAJAMA_SHARE = {"common_crawl": 0.522, "c4": 0.267, "github": 0.052, "book": 0.042, "arxiv": 0.046,
                    "wikipedia": 0.038, "stackexchange": 0.033}
REDPAJAMA_SHARE = {"common_crawl": 0.726, "c4": 0.144, "github": 0.049, "book": 0.021, "arxiv": 0.023,
                   "wikipedia": 0.020, "stackexchange": 0.017}


class AccountingError(RuntimeError):
    pass


def build_report(dedup: dict, gathered: list[dict], index: dict, opts, chunks: int, timings: dict,
                 manifest: dict) -> dict:
    mode = dedup["mode"]
    out_counts: dict[str, dict[str, dict[str, int]]] = defaultdict(lambda: defaultdict(lambda: {"docs": 0, "bytes": 0, "words": 0}))
    for split, entries in index["splits"].items():
        for e in entries:
            for src, c in e["sources"].items():
                for k in ("docs", "bytes", "words"):
                    out_counts[src][split][k] += c[k]
    decon: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for g in gathered:
        for src, (n, nb) in g["decontaminated"].items():
            decon[src][0] += n
            decon[src][1] += nb
    sources = {}
    problems = []
    for src in sort_sources(dedup["sources"]):
        d = dedup["sources"][src]
        m = d[mode]
        row = {
            "lines_read": d["docs_in"] + d["rejected"],
            "rejected": d["rejected"],
            "docs_in": d["docs_in"], "bytes_in": d["bytes_in"],
            "short_docs": d["short_docs"], "short_bytes": d["short_bytes"], "short_rate": d["short_rate"],
            "exact_duplicates": m["exact_docs"], "near_duplicates": m["near_docs"],
            "duplicate_bytes": m["exact_bytes"] + m["near_bytes"],
            "byte_duplication_rate": m["byte_duplication_rate"],
            "after_dedup_docs": m["kept_docs"], "after_dedup_bytes": m["kept_bytes"],
            "decontaminated_docs": decon[src][0], "decontaminated_bytes": decon[src][1],
        }
        for split in ("train", "validation", "test"):
            row[split] = dict(out_counts[src][split])
        out_docs = sum(row[s]["docs"] for s in ("train", "validation", "test"))
        # in = out + short + duplicates + decontaminated + rejected
        lhs = row["lines_read"]
        rhs = out_docs + row["short_docs"] + row["exact_duplicates"] + row["near_duplicates"] + \
            row["decontaminated_docs"] + row["rejected"]
        row["accounting_ok"] = lhs == rhs
        if lhs != rhs:
            problems.append(f"{src}: read {lhs} != out {out_docs} + short + duplicates + decontaminated + rejected = {rhs}")
        sources[src] = row
    if problems:
        raise AccountingError("; ".join(problems))
    train_words = sum(r["train"]["words"] for r in sources.values()) or 1
    train_bytes = sum(r["train"]["bytes"] for r in sources.values()) or 1
    for src, r in sources.items():
        r["share_words"] = r["train"]["words"] / train_words
        r["share_bytes"] = r["train"]["bytes"] / train_bytes
        r["slimpajama_share"] = SLIMPAJAMA_SHARE.get(src)  # None: not one of RedPajama's seven
        r["redpajama_share"] = REDPAJAMA_SHARE.get(src)
    total = {k: sum(r[k] for r in sources.values()) for k in
             ("lines_read", "rejected", "docs_in", "bytes_in", "short_docs", "short_bytes", "exact_duplicates",
              "near_duplicates", "duplicate_bytes", "after_dedup_docs", "after_dedup_bytes", "decontaminated_docs",
              "decontaminated_bytes")}
    for split in ("train", "validation", "test"):
        total[split] = {k: sum(r[split][k] for r in sources.values()) for k in ("docs", "bytes", "words")}
    unknown = dedup["total"].get("rejected_without_source", 0)  # rejected lines with no source
    total["rejected"] += unknown
    total["lines_read"] += unknown
    total["rejected_without_source"] = unknown
    total["short_rate"] = total["short_docs"] / total["docs_in"] if total["docs_in"] else 0.0
    total["byte_duplication_rate"] = total["duplicate_bytes"] / total["bytes_in"] if total["bytes_in"] else 0.0
    return {
        "kind": "slimpipe-slimpajama-report",
        "dedup_mode": mode,
        "dedup_preset": dedup["params"]["name"],
        "token_estimate": "whitespace-separated words",
        "options": {k: getattr(opts, k) for k in opts.__dataclass_fields__},
        "chunks": chunks,
        "sources": sources,
        "total": total,
        # files (or parts of files) that were not read: the accounting above covers only what was read
        "files_not_read": [{k: f.get(k) for k in ("file", "status", "error")} for f in dedup.get("files", [])
                           if f.get("status") in ("unreadable", "truncated", "skipped")],
        "output": manifest["totals"],
        "timings": {**{f"dedup.{k}": v for k, v in dedup["timings"].items()}, **timings},
    }


def write_report(out: str | Path, r: dict) -> None:
    out = Path(out)
    storage.write_json_atomic(out / "report.json", r)
    storage.write_bytes_atomic(out / "report.md", render_markdown(r).encode())


def _p(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.2f}%"


def render_markdown(r: dict) -> str:
    t = r["total"]
    o = r["options"]
    lines = [
        "# SlimPajama pipeline report",
        "",
        f"Dedup `{r['dedup_preset']}` ({r['dedup_mode']}); holdout fraction {o['holdout_fraction']} "
        f"(split seed {o['split_seed']}), shuffle seed {o['seed']}, {r['chunks']} chunk(s); "
        f"{r['output']['files']} shards, {r['output']['records']:,} records. Tokens are estimated as "
        f"{r['token_estimate']}.",
        "",
        "## Documents through the stages",
        "",
        "| source | read | rejected | short | exact dup | near dup | decontaminated | train | validation | test |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for src, s in list(r["sources"].items()) + [("**total**", t)]:
        lines.append(f"| {src} | {s['lines_read']:,} | {s['rejected']:,} | {s['short_docs']:,} | {s['exact_duplicates']:,} | "
                     f"{s['near_duplicates']:,} | {s['decontaminated_docs']:,} | {s['train']['docs']:,} | "
                     f"{s['validation']['docs']:,} | {s['test']['docs']:,} |")
    not_read = r.get("files_not_read", [])
    partial = any(f["status"] != "skipped" for f in not_read)
    lines += ["", ("Of what could be read, every line" if partial else "Every line read") + " is accounted for: read = "
              "train + validation + test + short + duplicates + decontaminated + rejected, per source."]
    lines += _not_read_lines(not_read)
    lines += [
        "",
        "## SlimPajama's table",
        "",
        "| source | short-doc filter rate | byte duplication rate | train MB | train words | share (words) | share (bytes) | SlimPajama share | RedPajama share |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for src, s in r["sources"].items():
        lines.append(f"| {src} | {_p(s['short_rate'])} | {_p(s['byte_duplication_rate'])} | {s['train']['bytes'] / 1e6:.2f} | "
                     f"{s['train']['words']:,} | {_p(s['share_words'])} | {_p(s['share_bytes'])} | "
                     f"{_p(s['slimpajama_share'])} | {_p(s['redpajama_share'])} |")
    lines.append(f"| **total** | {_p(t['short_rate'])} | {_p(t['byte_duplication_rate'])} | {t['train']['bytes'] / 1e6:.2f} | "
                 f"{t['train']['words']:,} | 100% | 100% | 100% | 100% |")
    lines += ["", "## Stage timings (seconds)", "", "| stage | seconds |", "|---|---:|"]
    lines += [f"| {k} | {v:.2f} |" for k, v in r["timings"].items()]
    lines += _eval_lines(r.get("eval_decontamination"))
    lines += ["", "The dedup stage's own report, with plots and sample clusters: [dedup/report.md](dedup/report.md)."]
    return "\n".join(lines) + "\n"


def _not_read_lines(files: list[dict]) -> list[str]:
    """Files the counts above do not cover, named with their reason: the report never claims more than it read."""
    bad = [f for f in files if f["status"] != "skipped"]
    lines = []
    if bad:
        lines += ["", f"**Not complete: {len(bad)} input file(s) could not be read, or only in part. Their unread "
                  "lines are in no count above.**", "", "| file | status | reason |", "|---|---|---|"]
        lines += [f"| {f['file']} | {f['status']} | {f['error'] or ''} |" for f in bad]
    skipped = [f for f in files if f["status"] == "skipped"]
    if skipped:
        lines += ["", f"Skipped, not data ({len(skipped)}): "
                  + "; ".join(f"{f['file']} ({f['error']})" for f in skipped[:20])
                  + (f"; and {len(skipped) - 20} more" if len(skipped) > 20 else "") + "."]
    return lines


def _eval_lines(e: dict | None) -> list[str]:
    """The decontamination against the evaluation set (``OUT/eval``), per source and reason."""
    if not e:
        return ["", "No evaluation set (`--no-eval-set`): training splits were decontaminated against the "
                "holdout only (SlimPajama's exact SHA-256 rule)."]
    lines = ["", "## Decontamination against the evaluation set", "",
             f"Evaluation set `{e['eval_set']}` ({e['eval_docs']:,} documents, [eval/report.md](eval/report.md)). "
             f"Removed from train: the evaluation documents themselves, exact copies (full-text SHA-256 or cleaned "
             f"text), and near-duplicates ({e['shingles']}, MinHash-LSH {e['bands']}x{e['rows']}, recall "
             f"{e['recall_at_threshold']:.3%} at J = {e['threshold']}, each candidate verified by exact Jaccard "
             f">= {e['threshold']})" + (f", and containments ({e['containment_rule']})" if e.get("containment_rule")
                                        else "") + ". These are part of the decontaminated column above.", "",
             "| source | evaluation document | exact copy | near-duplicate | containment |", "|---|---:|---:|---:|---:|"]
    for src, reasons in sorted(e["removed"].items()):
        cells = [f"{reasons.get(k, [0, 0])[0]:,}" for k in ("evaluation document", "exact copy", "near-duplicate",
                                                           "containment")]
        lines.append(f"| {src} | " + " | ".join(cells) + " |")
    if not e["removed"]:
        lines.append("| (none) | 0 | 0 | 0 | 0 |")
    return lines
