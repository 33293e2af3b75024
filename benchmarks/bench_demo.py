"""The demo pipeline (`slimpipe demo --corpus`) on a real corpus: wall time per step, peak memory, and
the comparison report it produces, recorded in RESULTS.md.

    .venv/bin/python benchmarks/bench_demo.py [--corpus DIR] [--seeds 1]

The ratio printed last is the wall time against the demo's budget on the embedded sample (15 minutes
on 2 cores), as a yardstick: this corpus is ~35x the sample's text.
"""

from __future__ import annotations

import argparse
import re
import shutil
from pathlib import Path

from _common import (
    DEFAULT_CORPUS,
    MB,
    PYTHON,
    ROOT,
    WORK,
    append_results,
    fmt,
    machine_line,
    run_measured,
    table,
)

BUDGET_S = 15 * 60


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    ap.add_argument("--seeds", type=int, default=1)
    args = ap.parse_args()
    if not args.corpus.is_dir():
        raise SystemExit(f"corpus not found: {args.corpus}")
    out = WORK / "demo"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [str(PYTHON), "-m", "slimpipe.cli", "demo", "--corpus", str(args.corpus), "-o", str(out),
           "--seeds", str(args.seeds), "--quiet"]
    m = run_measured(cmd, env={"SLIMPIPE_RAY_ADDRESS": "", "RAY_ADDRESS": ""}, cwd=ROOT)
    if not m.ok:
        raise SystemExit(f"slimpipe demo failed: {m.error()}")
    # "== demo [   12s] 3/5 mix dc1 ..." marks each step's start
    marks = [(float(t), what) for t, what in re.findall(r"== demo \[\s*(\d+)s\] (.+)", m.stderr)]
    steps: dict[str, float] = {}
    for (t0, what), (t1, _) in zip(marks, marks[1:] + [(m.seconds, "end")], strict=True):
        key = what.split(" ", 1)[0] + " " + what.split(" ")[1]  # e.g. "3/5 mix"
        steps[key] = steps.get(key, 0.0) + (t1 - t0)
    rows = [[k, fmt(v, ".0f"), fmt(100 * v / m.seconds, ".0f") + "%"] for k, v in steps.items()]
    report_md = (out / "report" / "report.md").read_text()
    headline_lines = report_md.split("\n## ")[0].splitlines()[2:]
    lines = [f"Machine: {machine_line()}  ", f"Corpus: {args.corpus}, seeds per mix: {args.seeds}", ""]
    lines += table(["demo step", "seconds", "share"], rows)
    lines += ["", f"wall {m.seconds:.0f} s, peak tree RSS {m.peaks.tree_rss / MB:.0f} MB, "
              f"peak process {m.peaks.single_rss / MB:.0f} MB", "", "Report headline:", ""]
    lines += [f"> {x}" for x in headline_lines if x.strip()]
    table_start = report_md.index("| run |")
    lines += ["", report_md[table_start: report_md.index("\n\n", table_start)]]
    lines += ["", f"**HEADLINE: demo on {args.corpus.name} in {m.seconds:.0f} s = "
              f"{m.seconds / BUDGET_S:.2f}x the sample demo's 15-minute budget**"]
    print("\n".join(lines))
    append_results("bench_demo", lines)


if __name__ == "__main__":
    main()
