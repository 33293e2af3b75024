"""Dedup quality of ``slimpipe dedup`` against the corpus's brute-force exact-Jaccard ground truth.

    .venv/bin/python benchmarks/bench_dedup_quality.py [--corpus ../shared/corpus/redpajama-mini]
                                                       [--pairs ../shared/corpus/provenance/dup_pairs.tsv]

Ground truth: every pair of ``dup_pairs.tsv`` (exact char-13-gram Jaccard >= 0.8 over all docs, measured
with the corpus's own normalisation: lowercase, ``[^\\w\\s]`` removed, whitespace collapsed), mapped to
slimpipe ids ``<source>/<file>:<line>``. For each preset (``slimpajama``, ``slimpajama --verify``,
``recall``, which verifies) the script runs ``slimpipe dedup`` (global mode) on the corpus and reads
``removed/*.parquet``; a removal cluster is the set of docs removed with one ``cluster`` plus the doc
they are ``duplicate_of``. Measured:

* pair recall: share of ground-truth pairs whose two docs are in one removal cluster, over all pairs and
  over "eligible" pairs (both docs >= 200 cleaned chars; shorter docs are dropped by the short filter
  before dedup, so no preset can pair them), also by exact-J band;
* removal recall: the ground-truth graph restricted to eligible docs must lose all but one doc of each
  connected component; the share of those removals done (per component, at most size - 1 count);
* removal precision of the docs removed as exact/near duplicates: *raw* = in a ground-truth pair at
  all; *strict* = in the same ground-truth component as its ``duplicate_of``; *own J* = strict, or (for
  the rest, because the ground truth used a slightly different normalisation and lists only J >= 0.8)
  exact Jaccard >= the preset threshold, computed with ``slimpipe.dedup.minhash.jaccard_exact`` on
  slimpipe's own cleaning, with its ``duplicate_of`` or another member of its cluster (up to
  ``--check-max`` docs checked per preset, a seeded sample beyond that).

Targets: precision >= 0.995 with --verify; removal recall >= 0.99 with the recall preset. Results are
printed and appended to ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import random
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    DEFAULT_CORPUS,
    DEFAULT_PAIRS,
    WORK,
    Measured,
    corpus_files,
    iter_texts,
    loadavg,
    machine_line,
    publish,  # noqa: E402
    slimpipe_dedup,
    slimpipe_report,
    table,
)

PRESETS = [  # (label, output folder under benchmarks/_work/quality, options)
    ("slimpajama", "slimpajama", ["--preset", "slimpajama", "--no-verify"]),
    ("slimpajama --verify", "slimpajama_verify", ["--preset", "slimpajama", "--verify"]),
    ("recall (verify on)", "recall", ["--preset", "recall"]),
]
J_BANDS = [(0.8, 0.85), (0.85, 0.9), (0.9, 0.95), (0.95, 1.0), (1.0, 1.01)]
DUP_REASONS = ("exact_duplicate", "near_duplicate")


def doc_id(file: str, line: int | str) -> str:
    from slimpipe.sources import source_from_filename

    return f"{source_from_filename(file)}/{file}:{int(line)}"


def load_pairs(path: Path) -> list[tuple[str, str, float]]:
    pairs = []
    with path.open(encoding="utf-8") as fh:
        header = fh.readline().rstrip("\n").split("\t")
        col = {k: i for i, k in enumerate(header)}
        for line in fh:
            f = line.rstrip("\n").split("\t")
            pairs.append((doc_id(f[col["file_a"]], f[col["line_a"]]), doc_id(f[col["file_b"]], f[col["line_b"]]),
                          float(f[col["jaccard13"]])))
    return pairs


def components(edges: list[tuple[str, str]]) -> dict[str, str]:
    """Union-find: node -> component representative."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in edges:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return {x: find(x) for x in list(parent)}


def read_removed(out: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    t = pa.concat_tables([pq.read_table(f) for f in sorted((out / "removed").glob("*.parquet"))])
    rows = t.select(["id", "reason", "cluster", "duplicate_of"]).to_pylist()
    return [r for r in rows if r["reason"] in DUP_REASONS]


def clean_pass(corpus: Path, want: set[str]) -> tuple[dict[str, int], dict[str, str]]:
    """Cleaned length of every doc and cleaned text of the ``want`` docs (slimpipe's normalise + clean)."""
    from slimpipe.text import clean_for_hash, normalize

    lengths: dict[str, int] = {}
    texts: dict[str, str] = {}
    for f in corpus_files(corpus):
        for line, text in iter_texts(f):
            i = doc_id(f.name, line)
            c = clean_for_hash(normalize(text))
            lengths[i] = len(c)
            if i in want:
                texts[i] = c
    return lengths, texts


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    ap.add_argument("--pairs", type=Path, default=DEFAULT_PAIRS)
    ap.add_argument("--check-max", type=int, default=400, help="most 'false' removals to check with exact J per preset")
    ap.add_argument("--min-chars", type=int, default=200)
    ap.add_argument("--no-append", action="store_true", help="do not append to benchmarks/RESULTS.md")
    args = ap.parse_args(argv)
    corpus = args.corpus.resolve()
    load_start = loadavg()
    pairs = load_pairs(args.pairs)
    gt_comp = components([(a, b) for a, b, _ in pairs])
    print(f"ground truth: {len(pairs):,} pairs over {len(gt_comp):,} docs ({args.pairs})", flush=True)

    runs: list[tuple[str, Measured, dict | None, list[dict]]] = []
    for name, folder, opts in PRESETS:
        print(f"running slimpipe dedup {' '.join(opts)} ...", flush=True)
        out = WORK / "quality" / folder
        m = slimpipe_dedup([corpus], out, *opts)
        if not m.ok:
            print(f"  failed: {m.error()}", flush=True)
            runs.append((name, m, None, []))
            continue
        runs.append((name, m, slimpipe_report(out), read_removed(out)))

    # Which removals need an exact-J check: those not confirmed by the ground truth (strict).
    rng = random.Random(0)
    to_check: dict[str, list[dict]] = {}
    clusters: dict[str, dict[int, list[str]]] = {}
    for name, _m, _rep, removed in runs:
        members: dict[int, list[str]] = defaultdict(list)
        for r in removed:
            members[r["cluster"]].append(r["id"])
        for r in removed:
            if r["duplicate_of"] not in members[r["cluster"]]:
                members[r["cluster"]].append(r["duplicate_of"])
        clusters[name] = members
        unconfirmed = [r for r in removed if not _strict_ok(r, gt_comp)]
        to_check[name] = unconfirmed if len(unconfirmed) <= args.check_max else rng.sample(unconfirmed, args.check_max)
    want = {x for name, rs in to_check.items() for r in rs for x in clusters[name][r["cluster"]]}
    want |= set(gt_comp)
    print(f"cleaning the corpus (lengths; {len(want):,} texts kept for exact-J checks) ...", flush=True)
    lengths, texts = clean_pass(corpus, want)
    missing = [x for x in gt_comp if x not in lengths]
    if missing:
        raise SystemExit(f"ground-truth ids not found in the corpus (id mapping broken?): {missing[:3]}")
    threshold = 0.8

    eligible = [(a, b, j) for a, b, j in pairs if lengths[a] >= args.min_chars and lengths[b] >= args.min_chars]
    long_comp = components([(a, b) for a, b, _ in eligible])
    comp_members: dict[str, list[str]] = defaultdict(list)
    for x, c in long_comp.items():
        comp_members[c].append(x)
    must_remove = sum(len(v) - 1 for v in comp_members.values())

    rows, band_rows, notes = [], [], []
    summary: dict[str, dict[str, float]] = {}
    for name, m, rep, removed in runs:
        if rep is None:
            rows.append([name, f"failed: {m.error()}", *["-"] * 8])
            continue
        from slimpipe.dedup.minhash import jaccard_exact

        cluster_of: dict[str, int] = {}
        for c, ids in clusters[name].items():
            for x in ids:
                cluster_of[x] = c

        def together(a: str, b: str, cluster_of=cluster_of) -> bool:
            ca = cluster_of.get(a)
            return ca is not None and ca == cluster_of.get(b)

        pr_all = sum(together(a, b) for a, b, _ in pairs) / len(pairs)
        pr_el = sum(together(a, b) for a, b, _ in eligible) / len(eligible) if eligible else float("nan")
        band = []
        for lo, hi in J_BANDS:
            sel = [(a, b) for a, b, j in eligible if lo <= j < hi]
            band.append(f"{sum(together(a, b) for a, b in sel) / len(sel):.3f} ({len(sel)})" if sel else "- (0)")
        band_rows.append([name, *band])
        removed_ids = {r["id"] for r in removed}
        done = sum(min(sum(x in removed_ids for x in v), len(v) - 1) for v in comp_members.values())
        rem_recall = done / must_remove if must_remove else float("nan")

        n = len(removed)
        raw_ok = sum(r["id"] in gt_comp for r in removed)
        strict_ok = sum(_strict_ok(r, gt_comp) for r in removed)
        checked = to_check[name]
        justified = 0
        false_examples = []
        for r in checked:
            x = texts[r["id"]]
            others = [r["duplicate_of"]] + [y for y in clusters[name][r["cluster"]] if y not in (r["id"], r["duplicate_of"])]
            best = 0.0
            for y in others:
                best = max(best, jaccard_exact(x, texts[y]))
                if best >= threshold:
                    break
            if best >= threshold:
                justified += 1
            elif len(false_examples) < 5:
                false_examples.append(f"{r['id']} -> {r['duplicate_of']} (max J in cluster {best:.3f})")
        unconfirmed = n - strict_ok
        share = justified / len(checked) if checked else 1.0
        own_ok = strict_ok + share * unconfirmed
        prec = {"raw": raw_ok / n if n else float("nan"), "strict": strict_ok / n if n else float("nan"),
                "own": own_ok / n if n else float("nan")}
        summary[name] = {"removal_recall": rem_recall, **prec}
        ver = rep.get("verify") or {}
        vtxt = (f"{ver['candidates']:,} candidates, {ver['false_positives_dropped']:,} dropped" if ver else "off")
        rows.append([name, f"{m.seconds:.1f}", f"{n:,}", f"{pr_all:.3f}", f"{pr_el:.3f}",
                     f"{rem_recall:.4f} ({done}/{must_remove})", f"{prec['raw']:.4f}", f"{prec['strict']:.4f}",
                     f"{prec['own']:.4f} ({len(checked)}/{unconfirmed} checked, {len(checked) - justified} < {threshold})",
                     vtxt])
        if false_examples:
            notes.append(f"{name}: removals below J {threshold} with every member of their cluster (exact J, our cleaning): "
                         + "; ".join(false_examples))

    header = ["preset", "wall s", "removed as dups", "pair recall (all)", "pair recall (eligible)",
              "removal recall", "precision raw", "precision strict", "precision own J", "verify"]
    lines = table(header, rows)
    band_lines = table(["preset", *[f"J {lo:.2f}–{hi:.2f}" if hi <= 1 else "J = 1.0" for lo, hi in J_BANDS]],
                       band_rows)
    notes = [
        f"Ground truth {len(pairs):,} pairs (J >= 0.8, {args.pairs.name}); {len(eligible):,} eligible (both docs >= "
        f"{args.min_chars} cleaned chars); eligible graph: {len(comp_members):,} components, {must_remove:,} "
        "docs must be removed.",
        "precision raw = removed doc is in some ground-truth pair; strict = in the same ground-truth component as the "
        "doc it duplicates; own J = strict, or exact J >= 0.8 (slimpipe's cleaning) with a member of its cluster, "
        "checked for the removals strict does not confirm (sampled when more than --check-max).",
        *notes,
    ]
    sv = summary.get("slimpajama --verify", {})
    rc = summary.get("recall (verify on)", {})
    headline = ("HEADLINE: slimpajama --verify precision raw "
                f"{sv.get('raw', float('nan')):.4f} / own J {sv.get('own', float('nan')):.4f} (target >= 0.995); "
                f"recall preset removal recall {rc.get('removal_recall', float('nan')):.4f} (target >= 0.99), precision "
                f"raw {rc.get('raw', float('nan')):.4f} / own J {rc.get('own', float('nan')):.4f}; slimpajama (no verify) "
                f"removal recall {summary.get('slimpajama', {}).get('removal_recall', float('nan')):.4f}")
    head = [f"Machine: {machine_line()} | load average at start {load_start}, at end {loadavg()}  ",
            f"Corpus: {corpus}; ground truth {args.pairs}\n"]
    bands = ["Pair recall by exact-J band (eligible pairs; count in brackets):", "", *band_lines]
    publish("bench_dedup_quality", head, [lines, bands], notes, headline, append=not args.no_append)
    return 0


def _strict_ok(r: dict, gt_comp: dict[str, str]) -> bool:
    c = gt_comp.get(r["id"])
    return c is not None and c == gt_comp.get(r["duplicate_of"])


if __name__ == "__main__":
    raise SystemExit(main())
