"""End-to-end dedup: ``slimpipe dedup`` (SlimPajama preset) against datatrove's four MinHash stages.

    .venv/bin/python benchmarks/bench_dedup.py [--corpus ../shared/corpus/redpajama-mini] [--dt-tasks 2]

What is measured: wall time from process start to exit and memory of the whole process tree (summed
RSS, summed PSS and the largest single process; sampled every 0.2 s with psutil, Ray's GCS/raylet/
workers and datatrove's worker pool included), for

* ``slimpipe dedup CORPUS -o OUT --preset slimpajama`` in a fresh process, so it starts its own local
  Ray with ``num_cpus = os.cpu_count()`` (2 here): read, NFC, clean, short filter, exact pre-pass,
  signatures, buckets, components for global *and* local scope, keep, kept shards (``jsonl.zst``),
  removed table, report with plots;
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
  diacritics kept, as SlimPajama's cleaning does). This is the headline peer.
* ``word5``, datatrove's own default shingling: spaCy English word 5-grams, default TextNormConfig,
  default 64-bit xxhash, with 9 buckets x 13 hashes. (Whitespace words if spaCy cannot be installed.)

Neither datatrove run has SlimPajama's short-document filter, NFC step, exact pre-pass, or a report,
so its "docs removed" counts differ; they are printed for orientation only. Results are printed and
appended to ``benchmarks/RESULTS.md``. Run time on the 2-core VM when otherwise idle: about 8 minutes,
nearly all of it datatrove (about 3 min char13, 4.5 min word5; ``--skip-word`` drops the latter).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    DEFAULT_CORPUS,
    DT_TOKENIZERS,  # noqa: E402
    MB,
    WORK,
    Measured,
    corpus_files,
    ensure_datatrove_venv,
    has_module,
    loadavg,
    machine_line,
    publish,
    run_measured,
    slimpipe_dedup,
    slimpipe_report,
    table,
    try_install,
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
    ap.add_argument("--skip-datatrove", action="store_true", help="only run slimpipe")
    ap.add_argument("--skip-word", action="store_true", help="skip datatrove's word 5-gram configuration")
    ap.add_argument("--no-append", action="store_true", help="do not append to benchmarks/RESULTS.md")
    args = ap.parse_args(argv)
    corpus = args.corpus.resolve()
    files = corpus_files(corpus)
    load_start = loadavg()
    print(f"corpus {corpus}: {len(files)} files, {sum(f.stat().st_size for f in files) / MB:.1f} MB compressed; "
          f"load average {load_start}", flush=True)

    rows: list[list[str]] = []
    notes: list[str] = []
    print("running slimpipe dedup (slimpajama preset) ...", flush=True)
    sp = slimpipe_dedup([corpus], WORK / "dedup" / "slimpipe", "--preset", "slimpajama")
    sp_removed = None
    if sp.ok:
        rep = slimpipe_report(WORK / "dedup" / "slimpipe")
        t = rep["total"]
        g = t["global"]
        sp_removed = g["exact_docs"] + g["near_docs"]
        stages = ", ".join(f"{k} {v:.1f}" for k, v in rep["timings"].items())
        rows.append(_row("slimpipe dedup --preset slimpajama", "char 13-gram, 9x13, Ray num_cpus=2", sp,
                         f"{sp_removed:,} (+{t['short_docs']:,} short)"))
        notes.append(f"slimpipe stage seconds (inside the wall time): {stages}")
    else:
        rows.append(["slimpipe dedup --preset slimpajama", "", f"failed: {sp.error()}", "-", "-", "-", "-", "-"])

    dt_runs: dict[str, Measured] = {}
    if args.skip_datatrove:
        rows.append(["datatrove", "", "unavailable: skipped (--skip-datatrove)", "-", "-", "-", "-", "-"])
    else:
        py, reason = ensure_datatrove_venv()
        if py is None:
            rows.append(["datatrove (4 MinHash stages)", "", f"unavailable: {reason}", "-", "-", "-", "-", "-"])
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
                    rows.append([label, shingle, f"unavailable: {m.error()}", "-", "-", "-", "-", "-"])
                    continue
                res = json.loads(m.stdout.strip().splitlines()[-1])
                dt_runs[variant] = m
                rows.append(_row(label, shingle, m, f"{res['removed']:,}"))
                notes.append(f"datatrove {res['version']} {variant} stage seconds: "
                             + ", ".join(f"{k} {v:.1f}" for k, v in res["times"].items())
                             + f" (signature seconds per task: {res['per_rank']})")

    header = ["system", "shingles / LSH", "wall s", "peak tree RSS MB", "peak tree PSS MB",
              "peak single-process MB", "largest process", "docs removed (dups)"]
    lines = table(header, rows, "llrrrrlr")
    headline = _headline(sp, dt_runs)
    notes += [
        f"datatrove tasks: signature/filter {args.dt_tasks} (files are split between tasks whole, "
        f"{len(files)} files), buckets 9, cluster 1; workers 2. slimpipe: one Ray task per input file, 2 CPUs.",
        "Docs removed are not comparable: slimpipe drops short docs (< 200 cleaned chars) before MinHash and "
        "counts exact copies by hash; datatrove has no short filter, so it also signs and clusters tiny docs.",
        "RSS sums count memory shared between processes (libraries, Ray's object store) once per process; "
        "PSS splits shared pages among the processes sharing them.",
    ]
    head = [f"Machine: {machine_line()} | load average at start {load_start}, at end {loadavg()}  ",
            f"Corpus: {corpus} ({len(files)} files)\n"]
    publish("bench_dedup", head, [lines], notes, headline, append=not args.no_append)
    return 0


def _row(label: str, shingle: str, m: Measured, removed: str) -> list[str]:
    p = m.peaks
    return [label, shingle, f"{m.seconds:.1f}", f"{p.tree_rss / MB:,.0f}", f"{p.tree_pss / MB:,.0f}",
            f"{p.single_rss / MB:,.0f}", p.single_name, removed]


def _headline(sp: Measured, dt: dict[str, Measured]) -> str:
    if not sp.ok or not dt:
        return "HEADLINE: no ratio (a run failed or was skipped); targets: >= 3x faster, <= 1.0x peak memory"
    parts = []
    for variant, m in dt.items():
        parts.append(f"vs datatrove {variant}: datatrove time / slimpipe time = {m.seconds / sp.seconds:.2f}x "
                     f"(target >= 3), slimpipe peak / datatrove peak = tree RSS "
                     f"{sp.peaks.tree_rss / m.peaks.tree_rss:.2f}x, tree PSS {sp.peaks.tree_pss / m.peaks.tree_pss:.2f}x, "
                     f"single process {sp.peaks.single_rss / m.peaks.single_rss:.2f}x (target <= 1)")
    return "HEADLINE: " + "; ".join(parts)


if __name__ == "__main__":
    raise SystemExit(main())
