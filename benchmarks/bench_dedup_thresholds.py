"""``--verify`` at any threshold (#21.3, #21.4): recall, precision and time against the plain preset.

    .venv/bin/python benchmarks/bench_dedup_thresholds.py [--corpus ../shared/corpus/redpajama-mini]
                                                          [--pairs ../shared/corpus/provenance/dup_pairs.tsv]

Truth: every pair of ``dup_pairs.tsv`` (exact char-13-gram Jaccard >= 0.8 in the corpus's normalisation),
its Jaccard re-measured with slimpipe's own normalisation and cleaning. At threshold T a pair of eligible
documents (>= 200 cleaned characters) with Jaccard >= T is *due*; pair recall is the share of due pairs not
left with both documents kept. Removal precision is the share of removed documents (exact or near) whose
Jaccard with the document kept in their stead (``duplicate_of``) is >= T. The corpus lists pairs >= 0.8 only,
so at T < 0.8 recall between T and 0.8 is not measured.

Runs, each a ``DedupJob`` in this process on one local Ray: the plain ``slimpajama`` preset (0.8, 9 x 13, no
verify), ``--threshold T --verify`` (bands x rows derived for recall, cluster check on) at 0.5/0.7/0.8/0.9,
and the previous behaviour at 0.5 and 0.9 (the balanced S-curve banding, no cluster check). The headline
gives the worst recall and precision of the new runs and their time against the plain preset's. One untimed
run of the plain preset goes first (worker start-up and compiled-kernel loading would otherwise count
against the plain preset only), and the table splits each run's wall time into its steps: read, the pair
check (``verify_send`` + ``verify``), the cluster check's keep steps (``keep_global`` + ``keep_local``),
write, and the rest (buckets, components, sample, report, Ray scheduling).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    DEFAULT_CORPUS,
    DEFAULT_PAIRS,
    WORK,
    corpus_files,
    iter_texts,
    loadavg,
    machine_line,
    publish,
    table,
)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    ap.add_argument("--pairs", type=Path, default=DEFAULT_PAIRS)
    ap.add_argument("--no-append", action="store_true", help="do not append to benchmarks/RESULTS.md")
    ap.add_argument("--label", default="", help="a note for the RESULTS.md title (e.g. which code ran)")
    ap.add_argument("--thresholds", type=float, nargs="+", default=[0.5, 0.7, 0.8, 0.9],
                    help="the --verify thresholds to run (a short run on a busy machine: 0.5 0.9)")
    ap.add_argument("--no-previous", action="store_true", help="skip the previous behaviour's two runs")
    args = ap.parse_args(argv)

    import pyarrow as pa
    import pyarrow.parquet as pq

    from slimpipe.dedup.job import DedupJob
    from slimpipe.dedup.minhash import jaccard_exact
    from slimpipe.dedup.params import load_preset, optimal_bands_rows
    from slimpipe.engine import ensure_ray
    from slimpipe.sources import source_from_filename
    from slimpipe.text.normalize import clean_for_hash, normalize

    def doc_id(file: str, line: int | str) -> str:
        return f"{source_from_filename(file)}/{file}:{int(line)}"

    load_start = loadavg()
    pairs = []
    with args.pairs.open(encoding="utf-8") as fh:
        col = {k: i for i, k in enumerate(fh.readline().rstrip("\n").split("\t"))}
        for line in fh:
            f = line.rstrip("\n").split("\t")
            pairs.append((doc_id(f[col["file_a"]], f[col["line_a"]]), doc_id(f[col["file_b"]], f[col["line_b"]])))
    cleaned = {doc_id(p.name, n): clean_for_hash(normalize(t)) for p in corpus_files(args.corpus) for n, t in iter_texts(p)}
    pair_j = {(a, b): jaccard_exact(cleaned[a], cleaned[b]) for a, b in pairs}

    ensure_ray(num_cpus=None)
    base = load_preset("slimpajama")
    runs = [("plain slimpajama (0.8)", base, False)]
    runs += [(f"--threshold {t} --verify", base.with_overrides(threshold=t, verify=True), True) for t in args.thresholds]
    for t in () if args.no_previous else (0.5, 0.9):
        b, r = optimal_bands_rows(t, 128)
        runs.append((f"previous: {t} verify, balanced banding, no cluster check",
                     base.with_overrides(threshold=t, verify=True, bands=b, rows=r, cluster_check=False), False))
    rows, new = [], []
    plain_wall = None
    warm = WORK / "thresholds" / "warmup"
    shutil.rmtree(warm, ignore_errors=True)
    DedupJob([args.corpus], warm, base, progress=False).run()  # untimed: workers and kernels warm for every run
    shutil.rmtree(warm, ignore_errors=True)
    for k, (name, p, is_new) in enumerate(runs):
        out = WORK / "thresholds" / str(k)
        shutil.rmtree(out, ignore_errors=True)
        t0 = time.perf_counter()
        report = DedupJob([args.corpus], out, p, progress=False).run()
        wall = time.perf_counter() - t0
        plain_wall = plain_wall or wall
        t = pa.concat_tables([pq.read_table(f) for f in sorted((out / "removed").glob("*.parquet"))])
        removed = {r["id"]: r["duplicate_of"] for r in t.select(["id", "reason", "duplicate_of"]).to_pylist()
                   if r["reason"] != "short"}
        due = [(a, b) for (a, b), j in pair_j.items()
               if j >= p.threshold and len(cleaned[a]) >= p.min_chars and len(cleaned[b]) >= p.min_chars]
        recall = 1 - sum(1 for a, b in due if a not in removed and b not in removed) / max(1, len(due))
        precision = sum(1 for d, kept in removed.items()
                        if jaccard_exact(cleaned[d], cleaned[kept]) >= p.threshold) / max(1, len(removed))
        saved = ((report.get("cluster_check") or {}).get("global") or {}).get("saved_total", "–")
        tm = report.get("timings", {})
        steps = [tm.get("read", 0.0), tm.get("verify_send", 0.0) + tm.get("verify", 0.0),
                 tm.get("keep_global", 0.0) + tm.get("keep_local", 0.0), tm.get("write", 0.0)]
        cands = (report.get("verify") or {}).get("candidates", "–")
        rows.append([name, f"{p.bands} x {p.rows}", f"{wall:.1f}", f"{wall / plain_wall:.2f}",
                     *(f"{x:.1f}" for x in steps), f"{wall - sum(steps):.1f}", str(cands), str(len(due)),
                     f"{recall:.4f}", str(len(removed)), f"{precision:.4f}", str(saved)])
        print(" | ".join(rows[-1]), flush=True)
        if is_new:
            new.append((recall, precision, wall / plain_wall))
    head = [f"machine: {machine_line()}", f"load average before/after: {load_start} / {loadavg()}",
            f"corpus: {args.corpus} ({len(cleaned):,} docs); truth: {len(pairs):,} pairs of {args.pairs.name}"]
    tab = table(["run", "bands x rows", "wall s", "x plain", "read s", "pair check s", "keep s", "write s",
                 "other s", "candidates", "due pairs", "pair recall", "removed", "precision",
                 "saved by cluster check"], rows)
    headline = (f"headline: --verify at T = {'/'.join(f'{t:g}' for t in args.thresholds)}: worst pair recall {min(r for r, _, _ in new):.4f}, "
                f"worst removal precision {min(p for _, p, _ in new):.4f}, time {min(x for *_, x in new):.2f}-"
                f"{max(x for *_, x in new):.2f}x the plain preset (goals: >= 0.99, 1.000, <= 2x)")
    publish("bench_dedup_thresholds (#21.3/#21.4)" + (f" — {args.label}" if args.label else ""), head, [tab],
            ["Truth lists pairs >= 0.8 only: recall between T and 0.8 is not measured for T < 0.8."], headline,
            append=not args.no_append)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
