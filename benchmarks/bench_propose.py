"""Validate `slimpipe propose` on a real corpus: train the proposed mix beside DC-1..DC-6 and the natural
mix, with equal tokens and several seeds, and compare them with slimpipe's own compare.

    .venv/bin/python benchmarks/bench_propose.py [--corpus DIR] [--proxies 12] [--tokens 65536] [--seeds 3]

Steps: SlimPajama (global dedup) on the corpus → `propose` (K proxies) → the proposed mix, DC-1..DC-6 and
the natural mix built with the proxies' tokenizer and evaluation sets → every mix trained with each seed
(Ray tasks, one CPU each) → `slimpipe compare` on all runs. Target: the proposed mix has the lowest mean
per-source bits per byte, and the 95% interval of its difference to DC-6 excludes 0. The last line is the
headline: proposed − DC-6 with its interval, and the proposal's rank.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from _common import DEFAULT_CORPUS, ROOT, WORK, fmt, machine_line, publish, table

sys.path.insert(0, str(ROOT))

DC = ("dc1", "dc2", "dc3", "dc4", "dc5", "dc6")


def _invoke(cmd, args: list) -> None:
    try:
        cmd.main(args=[str(a) for a in args], standalone_mode=False)
    except SystemExit as exc:
        if exc.code not in (0, None):
            raise


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    ap.add_argument("--proxies", type=int, default=12)
    ap.add_argument("--tokens", type=int, default=65_536, help="training tokens of every proxy and every run")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--max-epochs", type=float, default=4.0)
    ap.add_argument("--work", type=Path, default=WORK / "propose")
    ap.add_argument("--no-append", action="store_true")
    args = ap.parse_args()
    if not args.corpus.is_dir():
        raise SystemExit(f"corpus not found: {args.corpus}")

    from slimpipe.engine import ensure_ray
    from slimpipe.mix.config import load_mix
    from slimpipe.pipeline.command import slimpajama_command
    from slimpipe.propose.job import ProposeOptions, _build, _train_all, run_propose
    from slimpipe.report.command import compare_command
    from slimpipe.report.compare import _row_losses, load_run
    from slimpipe.report.stats import difference

    ensure_ray()
    t0 = time.perf_counter()
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    sp = work / "slimpajama"
    if not (sp / "manifest.json").exists():
        _invoke(slimpajama_command, [args.corpus, "-o", sp, "--mode", "global", "--holdout-fraction", "0.05",
                                     "--chunks", "2", "--shard-mb", "4", "--quiet"])
    t_data = time.perf_counter() - t0
    opt = ProposeOptions(proxies=args.proxies, tokens=args.tokens, max_epochs=args.max_epochs, quiet=True,
                         warn=lambda m: print(f"warning: {m}", file=sys.stderr))
    prop = run_propose(sp, work / "propose", opt)
    t_prop = time.perf_counter() - t0 - t_data

    present = prop["sources"]
    mixes: dict[str, dict[str, float]] = {"proposed": prop["shares"], "natural": prop["proxies"][0]["shares"]}
    for name in DC:
        mixes[name] = {s: v for s, v in load_mix(name).shares.items() if s in present and v > 0}
    dirs = {}
    for name, shares in mixes.items():
        dirs[name] = work / "mixes" / name
        _build(sp, shares, name, dirs[name], opt, prop["tokenizer"])
    jobs = [(str(dirs[n]), str(work / "runs" / f"{n}-s{s}"), opt.model, opt.tokens, s, "cpu")
            for n in mixes for s in range(1, args.seeds + 1)]
    todo = [j for j in jobs if not (Path(j[1]) / "metrics.json").exists()]
    results = _train_all(todo, use_gpu=False, quiet=True) if todo else []
    failed = [j[1] for j, r in zip(todo, results, strict=True) if not r["ok"]]
    if failed:
        raise SystemExit(f"runs failed: {failed}")
    t_train = time.perf_counter() - t0 - t_data - t_prop
    report_dir = work / "report"
    _invoke(compare_command, [*[j[1] for j in jobs], "-o", report_dir])
    report = json.loads((report_dir / "report.json").read_text())

    # realised mean per-source bits per byte per mix (compare's figures: mean over seeds), and the paired
    # interval of proposed − DC-6 from compare's own statistics (per document and per seed)
    row_of = {row["mix"]: row for row in report["rows"].values()}
    realised = {n: row_of[n]["bpb"]["mean"]["mean"] for n in mixes}
    ranking = sorted(realised, key=realised.get)
    runs = {n: [load_run(work / "runs" / f"{n}-s{s}") for s in range(1, args.seeds + 1)] for n in ("proposed", "dc6")}
    d = difference(_row_losses(runs["proposed"]), _row_losses(runs["dc6"]))
    c = d["columns"]["mean"]
    lo, hi = c["ci95"]
    excl = lo > 0 or hi < 0
    ci_txt = (f"[{lo:+.4f}, {hi:+.4f}] (paired over documents{' and seeds' if d['paired_seeds'] else ''}, "
              f"compare's bootstrap)")
    pred = prop["predicted"]
    rows = []
    for n in ranking:
        p = pred.get(n)
        rows.append([n, fmt(realised[n], ".4f"), fmt(p["objective"], ".4f") if p else "–",
                     ", ".join(f"{s} {100 * v:.0f}%" for s, v in mixes[n].items() if v >= 0.005)])
    chosen = next(r for r in prop["cv"] if r["family"] == prop["chosen"])
    head = [f"Machine: {machine_line()}  ", f"Corpus: {args.corpus}; proxies {args.proxies} × {args.tokens:,} tokens "
            f"({opt.model}); validation: {len(mixes)} mixes × {args.seeds} seeds × {args.tokens:,} tokens", ""]
    sec1 = table(["mix (best first)", "realised mean bpb", "predicted", "weights"], rows)
    sec2 = table(["fit", "held-out Spearman", "held-out RMSE"],
                 [[r["family"] + (" (chosen)" if r["family"] == prop["chosen"] else ""), fmt(r["spearman"], ".3f"),
                   fmt(r["rmse"], ".4f")] for r in prop["cv"]])
    sec3 = table(["stage", "seconds"], [["SlimPajama pipeline", fmt(t_data, ".0f")], ["propose", fmt(t_prop, ".0f")],
                                        ["validation training", fmt(t_train, ".0f")]])
    won = ranking[0] == "proposed"
    notes = [f"proposed − DC-6, mean per-source bits per byte: {c['diff']:+.4f} {ci_txt}",
             f"target: proposed lowest mean per-source bpb — {'met' if won else 'NOT met'}; interval to DC-6 "
             f"excludes 0 — {'met' if excl else 'NOT met'}",
             f"held-out rank correlation of the chosen fit ({prop['chosen']}): {chosen['spearman']:.3f}"]
    headline = (f"HEADLINE: proposed mix ranks {ranking.index('proposed') + 1}/{len(ranking)}; realised mean bpb "
                f"{realised['proposed']:.4f} vs DC-6 {realised['dc6']:.4f} (diff {c['diff']:+.4f}, 95% CI "
                f"[{lo:+.4f}, {hi:+.4f}], {'excludes' if excl else 'covers'} 0); proxies' held-out Spearman {chosen['spearman']:.3f}")
    publish("bench_propose", head, [sec1, sec2, sec3], notes, headline, append=not args.no_append)


if __name__ == "__main__":
    main()
