"""The whole SlimPajama pipeline (`slimpipe slimpajama`) on a corpus: wall time, peak memory, and MB/s
per core per stage, next to the floor of merely reading the corpus once (decompress + JSON parse in one
process), measured in the same run.

    .venv/bin/python benchmarks/bench_pipeline.py [--corpus DIR] [--preset slimpajama] [--cpus 2]

Memory is the peak over the whole process tree (driver, Ray's GCS/raylet and workers) sampled every
0.2 s. Per-stage MB/s per core = input text MB / (stage wall seconds × cores), so a stage that reads only
part of the data still shows what it costs per input byte.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
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


def read_floor(corpus: Path) -> tuple[float, float]:
    """Seconds and text MB to read every document once with slimpipe's reader, in this process."""
    from slimpipe.io.readers import discover_files, read_batches

    t0 = time.perf_counter()
    nbytes = 0
    for f in discover_files([corpus]):
        for docs, _, _ in read_batches(f):
            if docs is not None:
                nbytes += sum(docs.column("nbytes").to_pylist())
    return time.perf_counter() - t0, nbytes / MB


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    ap.add_argument("--preset", default="slimpajama")
    ap.add_argument("--cpus", type=int, default=os.cpu_count() or 2)
    args = ap.parse_args()
    if not args.corpus.is_dir():
        raise SystemExit(f"corpus not found: {args.corpus}")
    out = WORK / "pipeline"
    shutil.rmtree(out, ignore_errors=True)
    floor_s, text_mb = read_floor(args.corpus)
    cmd = [str(PYTHON), "-m", "slimpipe.cli", "slimpajama", str(args.corpus), "-o", str(out),
           "--preset", args.preset, "--quiet"]
    m = run_measured(cmd, env={"SLIMPIPE_RAY_ADDRESS": "", "RAY_ADDRESS": ""}, cwd=ROOT)
    if not m.ok:
        raise SystemExit(f"slimpipe slimpajama failed: {m.error()}")
    report = json.loads((out / "report.json").read_text())
    timings = report["timings"]
    stage_total = sum(timings.values())
    cores = args.cpus
    rows = []
    for stage, sec in timings.items():
        rows.append([stage, fmt(sec, ".2f"), fmt(100 * sec / stage_total, ".0f") + "%",
                     fmt(text_mb / (sec * cores), ".1f") if sec > 0 else "-"])
    overhead = m.seconds - stage_total
    rows.append(["(Ray start, planning, report, shutdown)", fmt(overhead, ".2f"), fmt(100 * overhead / m.seconds, ".0f") + "%", "-"])
    t = report["total"]
    lines = [f"Machine: {machine_line()}  ", f"Corpus: {args.corpus} ({text_mb:.2f} MB text), preset {args.preset}, "
             f"{cores} cores", ""]
    lines += table(["stage", "seconds", "share of stage time", "MB/s/core"], rows)
    summary = [
        ["slimpipe slimpajama (whole pipeline)", fmt(m.seconds, ".1f"), fmt(m.peaks.tree_rss / MB, ".0f"),
         fmt(m.peaks.single_rss / MB, ".0f"), fmt(text_mb / (m.seconds * cores), ".2f")],
        ["read floor: decompress + parse once, 1 process", fmt(floor_s, ".1f"), "-", "-", fmt(text_mb / floor_s, ".2f")],
    ]
    lines += [""] + table(["run", "wall s", "peak tree RSS MB", "peak process MB", "MB/s/core"], summary)
    lines += ["", f"Output: train {t['train']['docs']:,} docs ({t['train']['bytes'] / MB:.1f} MB), validation "
              f"{t['validation']['docs']:,}, test {t['test']['docs']:,}; short {t['short_docs']:,}, duplicates "
              f"{t['exact_duplicates'] + t['near_duplicates']:,}, decontaminated {t['decontaminated_docs']:,}."]
    headline = (f"**HEADLINE: whole pipeline {m.seconds:.1f} s = {text_mb / (m.seconds * cores):.2f} MB/s/core on {cores} "
                f"cores, {m.seconds / floor_s:.1f}× the time to merely read the corpus once in one process; "
                f"peak tree RSS {m.peaks.tree_rss / MB:.0f} MB**")
    lines += ["", headline]
    print("\n".join(lines))
    append_results("bench_pipeline", lines)


if __name__ == "__main__":
    main()
