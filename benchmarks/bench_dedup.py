"""End-to-end dedup, side by side in one run: ``slimpipe dedup`` (SlimPajama preset) against
data-juicer's Ray MinHash deduplicator and datatrove's four MinHash stages, on the same corpus and CPUs.

    .venv/bin/python benchmarks/bench_dedup.py [--corpus ../shared/corpus/redpajama-mini] [--dt-tasks 2]

What is measured: wall time from process start to exit and memory of the whole process tree (summed
RSS, summed PSS and the largest single process; sampled every 0.2 s with psutil, Ray's GCS/raylet/
workers and datatrove's worker pool included), for

* ``slimpipe dedup CORPUS -o OUT --preset slimpajama`` in a fresh process, so it starts its own local
  Ray with ``num_cpus = os.cpu_count()`` (2 here): one read (parse, NFC, clean, short filter, exact hash,
  signatures), buckets, components for global *and* local scope, keep, kept shards (``jsonl.zst``),
  removed table, report with plots. Its progress lines time each stage, and the driver's memory is
  taken per stage; a second run (``--keep-intermediates --max-edges-in-memory 0``) counts the files and
  bytes each stage writes on the distributed path 1 TB would take (see ``_dedup_stages.py``), projected
  to 1 TB of input;
* data-juicer's ``ray_bts_minhash_deduplicator`` (py-data-juicer 1.6.1, ``dj-process`` with
  ``executor_type: ray`` on a local Ray with every CPU) set to the same definition: character
  13-grams, lowercase, ASCII punctuation removed through ``ignore_pattern``, 128 permutations, 9 bands
  x 13 rows. Its own virtualenv (``benchmarks/_venvs/data-juicer``), see ``_datajuicer.py``;
* datatrove's ``MinhashDedupSignature → MinhashDedupBuckets → MinhashDedupCluster → MinhashDedupFilter``
  (JsonlReader on the same ``*.jsonl.zst`` files, JsonlWriter to ``jsonl.zst``), each stage a
  ``LocalPipelineExecutor`` with ``workers=2``: ``tasks=2`` for signature and filter (``--dt-tasks``),
  ``tasks = num_buckets`` for buckets (datatrove requires a multiple), 1 for cluster. It runs in its own
  virtualenv (``benchmarks/_venvs/datatrove``; datatrove pins ``xxhash<4``) as a subprocess script.

datatrove shingles *words* (its ``MinhashDedupSignature.get_shingles`` joins n-grams of a word
tokenizer's tokens). Two configurations are run:

* ``char13``, closest to SlimPajama: a tokenizer that returns the characters of the text, so its
  5-gram machinery makes character 13-grams; 9 buckets x 13 hashes (SlimPajama's LSH), seed 1, 32-bit
  xxhash, text normalisation = lowercase + punctuation to space + whitespace collapsed (numbers and
  diacritics kept, as SlimPajama's cleaning does).
* ``word5``, datatrove's own default shingling: spaCy English word 5-grams, default TextNormConfig,
  default 64-bit xxhash, with 9 buckets x 13 hashes. (Whitespace words if spaCy cannot be installed.)

Neither peer has SlimPajama's short-document filter or NFC step, nor slimpipe's exact pre-pass, local
scope or report, so their "docs removed" counts differ; they are printed for orientation only.

Targets (issue #10): >= 25x data-juicer's wall time and >= 20x datatrove's; end-to-end >= 15 MB/s per
core of raw text; fixed cost (wall time outside the job's stages: process and Ray start, planning,
report, plots) <= 8 s; peak tree memory <= 0.5x data-juicer's and <= datatrove word5's (judged on PSS,
which counts shared pages once; RSS is printed too). Results are printed and appended to
``benchmarks/RESULTS.md``. Run time on the 2-core VM: about 20 minutes, nearly all of it the peers
(``--skip-word`` and ``--skip-datajuicer`` drop the slowest).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    CODE,
    DEFAULT_CORPUS,
    DT_TOKENIZERS,
    MB,
    PYTHON,
    WORK,
    Measured,
    corpus_files,
    corpus_text_mb,
    ensure_datatrove_venv,
    fmt,
    has_module,
    loadavg,
    machine_line,
    publish,
    run_measured,
    slimpipe_report,
    table,
    try_install,
)
from _datajuicer import DJ_VERSION, ensure_datajuicer_venv, prepare_input, run_datajuicer  # noqa: E402
from _dedup_stages import (  # noqa: E402
    PARTITION_BYTES,
    PROJECTION_HEADER,
    PY_OBJECTS_PER_JSON_BYTE,
    RANGE_BYTES,
    listed_intermediates,
    manifest_bytes,
    measure_fixed_cost,
    projection_rows,
    run_staged,
    supports,
)

DT_SCRIPT = r'''
"""datatrove's four MinHash stages on a folder of *.jsonl.zst files; prints stage timings as JSON."""
import argparse, json, time
from pathlib import Path



def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("corpus")
    ap.add_argument("work")
    ap.add_argument("--variant", choices=["char13", "word5"], required=True)
    ap.add_argument("--tasks", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--space-words", action="store_true")
    a = ap.parse_args()

    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup.minhash import (
        MinhashConfig, MinhashDedupBuckets, MinhashDedupCluster, MinhashDedupFilter, MinhashDedupSignature)
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter
    from datatrove.utils.hashing import HashConfig
    from datatrove.utils.text import TextNormConfig

    if a.variant == "char13":
        config = MinhashConfig(
            n_grams=13, num_buckets=9, hashes_per_bucket=13, seed=1,
            norm_config=TextNormConfig(lowercase=True, norm_whitespace=True, remove_punctuation=True,
                                       norm_unicode_diacritics=False, norm_numbers=False),
            hash_config=HashConfig(precision=32, hash_fc="xxhash"))
        language = CharTokenizer()
    else:
        config = MinhashConfig(n_grams=5, num_buckets=9, hashes_per_bucket=13, seed=1)
        language = SpaceTokenizer() if a.space_words else "en"

    work = Path(a.work)
    sigs, buckets, remove, kept, logs = (str(work / x) for x in ("sigs", "buckets", "remove", "kept", "logs"))

    def reader():
        return JsonlReader(a.corpus, glob_pattern="*.jsonl.zst", compression="zstd")

    stages = [
        ("signature", LocalPipelineExecutor(
            pipeline=[reader(), MinhashDedupSignature(output_folder=sigs, config=config, language=language)],
            tasks=a.tasks, workers=a.workers, logging_dir=f"{logs}/signature")),
        ("buckets", LocalPipelineExecutor(
            pipeline=[MinhashDedupBuckets(input_folder=sigs, output_folder=buckets, config=config)],
            tasks=config.num_buckets, workers=a.workers, logging_dir=f"{logs}/buckets")),
        ("cluster", LocalPipelineExecutor(
            pipeline=[MinhashDedupCluster(input_folder=buckets, output_folder=remove, config=config)],
            tasks=1, workers=1, logging_dir=f"{logs}/cluster")),
        ("filter", LocalPipelineExecutor(
            pipeline=[reader(), MinhashDedupFilter(input_folder=remove),
                      JsonlWriter(kept, output_filename="${rank}.jsonl.zst", compression="zstd")],
            tasks=a.tasks, workers=a.workers, logging_dir=f"{logs}/filter")),
    ]
    times = {}
    for name, ex in stages:
        t0 = time.perf_counter()
        ex.run()
        times[name] = round(time.perf_counter() - t0, 3)
    removed = sum(p.stat().st_size for p in Path(remove).glob("*.remove")) // 4
    per_rank = []  # signature seconds per task: files go to tasks whole, so tasks can be unbalanced
    for f in sorted(Path(logs, "signature", "stats").glob("*.json")):
        for step in json.loads(f.read_text()):
            if "MinHash stage 1" in step["name"]:
                per_rank.append(round(step["time_stats"]["total"], 1))
    import importlib.metadata as md
    print(json.dumps({"times": times, "removed": removed, "version": md.version("datatrove"), "per_rank": per_rank,
                      "tokenizer": type(language).__name__ if not isinstance(language, str) else "spaCy en"}))


if __name__ == "__main__":
    main()
'''


def run_datatrove(py: Path, corpus: Path, variant: str, tasks: int, space_words: bool) -> Measured:
    work = WORK / "dedup" / f"datatrove_{variant}"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    script = WORK / "dedup" / "datatrove_dedup.py"
    script.write_text(DT_TOKENIZERS + DT_SCRIPT, encoding="utf-8")
    cmd = [str(py), str(script), str(corpus), str(work), "--variant", variant, "--tasks", str(tasks)]
    if space_words:
        cmd.append("--space-words")
    return run_measured(cmd, timeout=3600)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    ap.add_argument("--dt-tasks", type=int, default=2, help="datatrove tasks for signature/filter (default 2)")
    ap.add_argument("--skip-datatrove", action="store_true", help="do not run datatrove")
    ap.add_argument("--skip-word", action="store_true", help="skip datatrove's word 5-gram configuration")
    ap.add_argument("--skip-datajuicer", action="store_true", help="do not run data-juicer")
    ap.add_argument("--no-append", action="store_true", help="do not append to benchmarks/RESULTS.md")
    ap.add_argument("--fixed-cost", action="store_true",
                    help="only the fixed-cost table (#21.2): this checkout against --baseline, no peers")
    ap.add_argument("--baseline", type=Path, help="the checkout to compare with for --fixed-cost (e.g. a worktree of "
                                                  "an older commit)")
    ap.add_argument("--reps", type=int, default=3, help="repetitions for --fixed-cost (default 3)")
    args = ap.parse_args(argv)
    if args.fixed_cost:
        return fixed_cost_main(args)
    corpus = args.corpus.resolve()
    files = corpus_files(corpus)
    cpus = os.cpu_count() or 1
    input_bytes = sum(f.stat().st_size for f in files)
    load_start = loadavg()
    text_mb = corpus_text_mb(corpus)
    print(f"corpus {corpus}: {len(files)} files, {input_bytes / MB:.1f} MB compressed, {text_mb:.1f} MB of text; "
          f"{cpus} CPUs; load average {load_start}", flush=True)

    rows: list[list[str]] = []
    notes: list[str] = []
    runs: dict[str, Measured] = {}

    print("running slimpipe dedup (slimpajama preset) ...", flush=True)
    staged = run_staged([corpus], WORK / "dedup" / "slimpipe", "--preset", "slimpajama")
    sp = staged.measured
    fixed = None
    inter: dict = {}
    if sp.ok:
        runs["slimpipe"] = sp
        rep = slimpipe_report(WORK / "dedup" / "slimpipe")
        t, g = rep["total"], rep["total"]["global"]
        fixed = sp.seconds - sum(rep["timings"].values())
        inter = rep.get("intermediates") or {}
        rows.append(_row("slimpipe dedup --preset slimpajama", "char 13-gram, 9x13, Ray", sp, text_mb, cpus,
                         f"{g['exact_docs'] + g['near_docs']:,} (+{t['short_docs']:,} short)"))
        notes.append("slimpipe stage seconds (inside the wall time): "
                     + ", ".join(f"{k} {v:.1f}" for k, v in rep["timings"].items())
                     + f"; fixed cost (wall minus stages) {fixed:.1f} s" + _fixed_split(staged, rep["timings"]))
    else:
        rows.append(["slimpipe dedup --preset slimpajama", "", f"failed: {sp.error()}", *["-"] * 6])

    print("running slimpipe dedup again for its intermediates (distributed components, kept) ...", flush=True)
    keep = ["--keep-intermediates"] if supports("--keep-intermediates") else []
    out2 = WORK / "dedup" / "slimpipe_intermediates"
    sp2 = run_staged([corpus], out2, "--preset", "slimpajama", "--max-edges-in-memory", "0", "--quiet", *keep)
    inter_dist = (slimpipe_report(out2).get("intermediates") or listed_intermediates(out2)) if sp2.measured.ok else {}

    if not args.skip_datajuicer:
        py, reason = ensure_datajuicer_venv()
        label = f"data-juicer {DJ_VERSION} ray_bts_minhash_deduplicator"
        shingle = "char 13-gram, 9x13 (128 perm), Ray"
        if py is None:
            rows.append([label, shingle, f"unavailable: {reason}", *["-"] * 6])
        else:
            dj_input, dj_docs = prepare_input(files, WORK / "dedup" / "datajuicer_input")
            print("running data-juicer (ray_bts_minhash_deduplicator) ...", flush=True)
            m, info = run_datajuicer(py, dj_input, WORK / "dedup" / "datajuicer", cpus)
            if m.ok:
                runs["data-juicer"] = m
                rows.append(_row(label, shingle, m, text_mb, cpus, f"{dj_docs - info['kept']:,}"))
                notes.append("data-juicer seconds inside its op (from its log): "
                             + ", ".join(f"{k} {v:.1f}" for k, v in info["phases"].items()))
            else:
                rows.append([label, shingle, f"failed: {m.error()}", *["-"] * 6])

    if not args.skip_datatrove:
        py, reason = ensure_datatrove_venv()
        if py is None:
            rows.append(["datatrove (4 MinHash stages)", "", f"unavailable: {reason}", *["-"] * 6])
        else:
            variants = [("char13", "char 13-gram (char tokenizer), 9x13, 32-bit xxhash")]
            if not args.skip_word:
                space = not (has_module(py, "spacy") or try_install(py, ("spacy",)))
                shingle = "word 5-gram (whitespace words: spaCy unavailable)" if space else "word 5-gram (spaCy en)"
                variants.append(("word5", f"{shingle}, 9x13, 64-bit xxhash"))
            for variant, shingle in variants:
                print(f"running datatrove ({variant}) ...", flush=True)
                m = run_datatrove(py, corpus, variant, args.dt_tasks, variant == "word5" and space)
                label = f"datatrove 4 stages ({variant})"
                if not m.ok:
                    rows.append([label, shingle, f"failed: {m.error()}", *["-"] * 6])
                    continue
                res = json.loads(m.stdout.strip().splitlines()[-1])
                runs[f"datatrove {variant}"] = m
                rows.append(_row(label, shingle, m, text_mb, cpus, f"{res['removed']:,}"))
                notes.append(f"datatrove {res['version']} {variant} stage seconds: "
                             + ", ".join(f"{k} {v:.1f}" for k, v in res["times"].items())
                             + f" (signature seconds per task: {res['per_rank']})")

    header = ["system", "shingles / LSH", "wall s", "MB/s/core", "peak tree RSS MB", "peak tree PSS MB",
              "peak single-process MB", "largest process", "docs removed (dups)"]
    main_table = table(header, rows, "llrrrrrlr")
    target_rows, met, total = _targets(runs, text_mb, cpus, fixed)
    target_table = table(["target", "measured", "goal", "met"], target_rows, "lrrl")
    basis = inter_dist or inter
    proj = table(PROJECTION_HEADER, projection_rows(basis, staged.driver_peak, manifest_bytes(out2), input_bytes),
                 "lrrrrrrrr") if basis else ["(no intermediates stats: the slimpipe runs failed)"]
    notes += [
        f"datatrove tasks: signature/filter {args.dt_tasks} (files are split between tasks whole, "
        f"{len(files)} files), buckets 9, cluster 1; workers 2. data-juicer: its Ray executor on a local Ray "
        f"with {cpus} CPUs; slimpipe: its local Ray with {cpus} CPUs.",
        "data-juicer reads a copy of the corpus with each record's meta as one JSON string (same text, "
        "jsonl.zst): its Ray reader fails on RedPajama's per-source meta schemas otherwise.",
        "MB/s/core = raw text (UTF-8 bytes of every record's text) / wall seconds / CPUs.",
        "Docs removed are not comparable: slimpipe drops short docs (< 200 cleaned chars) before MinHash and "
        "counts exact copies by hash; the peers have no short filter, so they also sign and cluster tiny docs.",
        "RSS sums count memory shared between processes (libraries, Ray's object store) once per process; "
        "PSS splits shared pages among the processes sharing them.",
        f"Intermediates: files and bytes per step from the job's own stats, on the run with "
        f"--max-edges-in-memory 0 {' '.join(keep)} (the distributed path); driver peak from the timed run. "
        f"1 TB = 1e12 bytes of input files; map steps {RANGE_BYTES >> 20} MB ranges, partition steps "
        f"{PARTITION_BYTES >> 20} MB each; bytes scale with input; driver at 1 TB = measured peak + "
        f"{PY_OBJECTS_PER_JSON_BYTE} x the step manifest per task x tasks.",
    ]
    head = [f"Machine: {machine_line()} | load average at start {load_start}, at end {loadavg()}  ",
            f"Corpus: {corpus} ({len(files)} files, {input_bytes / MB:.1f} MB compressed, {text_mb:.1f} MB text)\n"]
    headline = _headline(target_rows, met, total)
    publish("bench_dedup", head, [main_table, target_table, proj], notes, headline, append=not args.no_append)
    return 0


def fixed_cost_main(args: argparse.Namespace) -> int:
    """``--fixed-cost``: what a small ``slimpipe dedup`` costs beyond its work, before and after (#21.2).

    Jobs: the embedded sample (``slimpipe sample --size 0.1``: 154 documents, so nearly all fixed cost) and
    the corpus (redpajama-mini: the 70 MB job). Each from the baseline checkout and from this one, in fresh
    processes with their own local Ray, interleaved, ``--reps`` times after one untimed run each; and a
    bare Ray start and stop (``ray.init`` as slimpipe calls it, in a fresh process) in every repetition.
    Fixed cost beyond Ray's start = the sample job's wall time minus the bare Ray's (median of each): an
    upper bound, since the sample's own work (under 1 MB of text) is inside it.
    """
    import statistics
    import subprocess

    if args.baseline is None:
        raise SystemExit("--fixed-cost needs --baseline CHECKOUT (the code to compare with)")
    corpus = args.corpus.resolve()
    work = WORK / "dedup" / "fixed_cost"
    work.mkdir(parents=True, exist_ok=True)
    sample = work / "sample"
    if not (sample / "_slimpipe.json").exists():
        subprocess.run([str(PYTHON), "-m", "slimpipe.cli", "sample", "-o", str(sample), "--size", "0.1", "-q"],
                       check=True, cwd=CODE)
    text_mb = corpus_text_mb(corpus)
    jobs = {"embedded sample": sample, f"{corpus.name} ({text_mb:.0f} MB text)": corpus}
    checkouts = {"before": args.baseline.resolve(), "after": CODE}
    load_start = loadavg()
    print(f"fixed cost: {checkouts}; {len(jobs)} jobs x {args.reps} reps; load average {load_start}", flush=True)
    runs = measure_fixed_cost(checkouts, jobs, work, reps=args.reps)
    med = statistics.median
    ray = med(runs.ray) if runs.ray else float("nan")
    ray_cpu = med(runs.ray_cpu) if runs.ray_cpu else float("nan")
    rows = [["bare Ray start + stop (fresh process)", "-", f"{ray:.2f}",
             f"{min(runs.ray):.2f}-{max(runs.ray):.2f}" if runs.ray else "-", "-", "-", f"{ray_cpu:.2f}", "-"]]
    got: dict[tuple[str, str], float] = {}
    for job in jobs:
        for label in checkouts:
            walls = runs.wall.get((label, job), [])
            if not walls:
                rows.append([job, label, "failed", "-", "-", "-", "-", "-"])
                continue
            got[label, job] = med(walls)
            cpu = med(runs.cpu[label, job])
            rows.append([job, label, f"{med(walls):.2f}", f"{min(walls):.2f}-{max(walls):.2f}",
                         f"{med(runs.stages[label, job]):.2f}", f"{med(walls) - ray:.2f}", f"{cpu:.2f}",
                         f"{cpu - ray_cpu:.2f}"])
    small, big = list(jobs)
    fixed = {k: got.get((k, small), float("nan")) - ray for k in checkouts}
    wall = {k: got.get((k, big), float("nan")) for k in checkouts}
    rows.append([f"**{big}: after / before**", "", f"{wall['after'] / wall['before']:.2f}x", "", "", "", "", ""])
    rows.append(["**fixed cost beyond Ray's start (sample job - bare Ray)**", "before -> after",
                 f"{fixed['before']:.2f} -> {fixed['after']:.2f}", "", "", "", "", ""])
    section = table(["job", "checkout", "wall s (median)", "min-max", "steps s (median)", "wall - bare Ray s",
                     "driver+Ray CPU s", "minus bare Ray's"], rows, "llrrrrrr")
    notes = [f"{args.reps} interleaved repetitions after one untimed run of the sample job from each checkout "
             "(numba caches written); before = {}, after = {}.".format(checkouts["before"], checkouts["after"]),
             "steps s = the sum of the job's step seconds in its report (the sample step excluded, as the report "
             "does); wall - bare Ray = everything the command adds to Ray's own start and stop.",
             "CPU s = user + system seconds of the processes the command reaps: the driver and Ray's GCS and raylet, "
             "not Ray's workers (the raylet does not reap them); less sensitive to other load than wall time on a "
             "shared machine. Overlapping work (plots drawn while the write step runs) saves wall time, not CPU.",
             *runs.errors]
    head = [f"Machine: {machine_line()} | load average at start {load_start}, at end {loadavg()}  ",
            f"Jobs: {', '.join(f'{k}: {v}' for k, v in jobs.items())}\n"]
    headline = (f"HEADLINE: fixed cost: {big} job wall {wall['before']:.1f} -> {wall['after']:.1f} s "
                f"(goal <= 4 s on 2 cores); fixed cost beyond Ray's start (sample job - bare Ray {ray:.1f} s) "
                f"{fixed['before']:.1f} -> {fixed['after']:.1f} s (goal <= 3 s)")
    publish("bench_dedup --fixed-cost", head, [section], notes, headline, append=not args.no_append)
    return 0


def _fixed_split(staged, timings: dict[str, float]) -> str:
    """Where the fixed cost goes: before the first stage starts, and after the last one ends."""
    starts = staged.stage_start
    if not starts:
        return ""
    last = max(starts, key=starts.get)
    before = min(starts.values())
    after = staged.measured.seconds - starts[last] - timings.get(last, 0.0)
    return (f" = {before:.1f} s before the first stage (process start, imports, Ray start, planning) + "
            f"{after:.1f} s after the last (report, plots, Ray shutdown, exit)")


def _row(label: str, shingle: str, m: Measured, text_mb: float, cpus: int, removed: str) -> list[str]:
    p = m.peaks
    return [label, shingle, f"{m.seconds:.1f}", f"{text_mb / m.seconds / cpus:.2f}", f"{p.tree_rss / MB:,.0f}",
            f"{p.tree_pss / MB:,.0f}", f"{p.single_rss / MB:,.0f}", p.single_name, removed]


def _targets(runs: dict[str, Measured], text_mb: float, cpus: int,
             fixed: float | None) -> tuple[list[list[str]], int, int]:
    """Issue #10's targets: (rows, met, judged)."""
    sp = runs.get("slimpipe")
    rows: list[list[str]] = []
    met = total = 0

    def judge(name: str, value: float | None, goal: str, ok: bool | None, fmt_: str = ".2f") -> None:
        nonlocal met, total
        if value is None:
            rows.append([name, "-", goal, "not measured"])
            return
        total += 1
        met += bool(ok)
        rows.append([name, format(value, fmt_), goal, "yes" if ok else "**no**"])

    for peer, goal in (("data-juicer", 25.0), ("datatrove char13", 20.0), ("datatrove word5", 20.0)):
        r = runs[peer].seconds / sp.seconds if sp and peer in runs else None
        judge(f"wall time: {peer} / slimpipe", r, f">= {goal:g}x", r is not None and r >= goal)
    mbs = text_mb / sp.seconds / cpus if sp else None
    judge("end-to-end MB/s per core of raw text", mbs, ">= 15", mbs is not None and mbs >= 15)
    judge("fixed cost s (wall minus stages)", fixed, "<= 8", fixed is not None and fixed <= 8, ".1f")
    for peer, goal in (("data-juicer", 0.5), ("datatrove word5", 1.0)):
        for kind in ("tree_pss", "tree_rss"):
            r = (getattr(sp.peaks, kind) / getattr(runs[peer].peaks, kind)) if sp and peer in runs else None
            name = f"peak tree {kind[5:].upper()}: slimpipe / {peer}"
            if kind == "tree_pss":
                judge(name, r, f"<= {goal:g}x", r is not None and r <= goal)
            else:
                rows.append([name, fmt(r, ".2f"), f"(<= {goal:g}x)", "info"])
    return rows, met, total


def _headline(rows: list[list[str]], met: int, total: int) -> str:
    got = {r[0]: r[1] for r in rows}
    return ("HEADLINE: slimpipe vs data-juicer "
            f"{got['wall time: data-juicer / slimpipe']}x faster (target >= 25), vs datatrove char13 "
            f"{got['wall time: datatrove char13 / slimpipe']}x / word5 {got['wall time: datatrove word5 / slimpipe']}x "
            f"(>= 20), {got['end-to-end MB/s per core of raw text']} MB/s/core (>= 15), fixed cost "
            f"{got['fixed cost s (wall minus stages)']} s (<= 8), peak tree PSS "
            f"{got['peak tree PSS: slimpipe / data-juicer']}x data-juicer's (<= 0.5); {met} of {total} targets met")


if __name__ == "__main__":
    raise SystemExit(main())
