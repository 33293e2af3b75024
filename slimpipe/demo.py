"""``slimpipe demo -o OUT``: the whole mission end to end on the embedded sample, no download.

sample → one evaluation set drawn from the raw sample → SlimPajama with global dedup, and with local
dedup, both decontaminated against that evaluation set → the six DC mixes (from global) and the
RedPajama baseline (from local) → three tiny models per mix (seeds 1-3, paired across mixes), every run
scored on the same evaluation set → compare, with an interval over seeds and documents on every
difference. Each step is the same command a user would run (in-process; the trainings as ``slimpipe
train`` processes, one CPU thread each, as many at once as there are cores), and each is resumable, so
an interrupted demo picks up where it stopped. Warnings the mixes repeat are said once, at the end.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import click

DC_MIXES = ("dc1", "dc2", "dc3", "dc4", "dc5", "dc6")


def _invoke(cmd: click.Command, args: list[str]) -> None:
    """Run a click command in this process (shares the Ray session), raising on failure."""
    try:
        cmd.main(args=[str(a) for a in args], standalone_mode=False)
    except SystemExit as exc:  # click commands may sys.exit(0)
        if exc.code not in (0, None):
            raise


@click.command("demo")
@click.option("-o", "--output", "out", type=click.Path(path_type=Path), default=Path("demo-out"), show_default=True,
              help="Output folder; re-running resumes the stages already done.")
@click.option("--size", type=float, default=1.0, show_default=True, help="Sample size multiplier (1 ≈ 4 MB of text).")
@click.option("--tokens", default="1M", show_default=True, help="Token budget of each mix.")
@click.option("--train-tokens", default=None, help="Tokens each model trains on (default: the tiny preset's budget).")
@click.option("--vocab-size", type=int, default=4096, show_default=True,
              help="Byte-level BPE trained once on the global train split and shared by every mix.")
@click.option("--seeds", type=int, default=3, show_default=True,
              help="Training seeds per mix; fewer than 3 gives no verdict (intervals conditional on the trained models).")
@click.option("--parallel", type=int, default=None,
              help="Trainings at once, one CPU thread each (default: the CPUs this process may use, at most 4).")
@click.option("--eval-tokens", default="32k", show_default=True,
              help="Evaluation tokens per source a mix packs, evaluated at every interval and at the end.")
@click.option("--eval-min-seqs", type=int, default=64, show_default=True,
              help="Evaluation set: at least this many 128-token sequences per source, where the source has them.")
@click.option("--model", default="tiny", show_default=True, help="Model preset trained on every mix.")
@click.option("--corpus", type=click.Path(path_type=Path, exists=True), default=None,
              help="Use this RedPajama-style corpus instead of writing the embedded sample.")
@click.option("-q", "--quiet", is_flag=True, help="No progress output.")
@click.option("--ray-address", default=None,
              help="Attach to this Ray cluster (host:port or auto; RAY_ADDRESS works too). Default: a private "
                   "local Ray on 127.0.0.1.")
def demo_command(out: Path, size: float, tokens: str, train_tokens: str | None, vocab_size: int, seeds: int,
                 parallel: int | None, eval_tokens: str, eval_min_seqs: int, model: str, corpus: Path | None,
                 quiet: bool, ray_address: str | None) -> None:
    """sample → one evaluation set → SlimPajama (global and local dedup, both decontaminated against it) →
    DC-1..DC-6 + RedPajama mixes → a model per mix and seed → comparison report with intervals
    (OUT/report/report.md). Re-running resumes."""
    from slimpipe.engine import ensure_ray
    from slimpipe.evalset.command import evalset_command
    from slimpipe.mix.command import mix_command
    from slimpipe.outdir import claim
    from slimpipe.pipeline.command import slimpajama_command
    from slimpipe.report.command import compare_command
    from slimpipe.sample import sample_command

    # OUT: new, empty or a demo's (re-running resumes; each stage claims its own folder with its own options);
    # a folder of anything else is refused in one line naming what is there, before Ray starts
    claim(out, "demo", "demo", sources=[corpus] if corpus else [])
    ensure_ray(ray_address)
    start = time.perf_counter()
    q = ["--quiet"] if quiet else []
    out.mkdir(parents=True, exist_ok=True)
    sample = corpus or out / "sample"
    _step(f"1/6 corpus: {sample}", start)
    if corpus is None and not (sample / "_meta" / "sample_manifest.json").exists():
        _invoke(sample_command, ["-o", sample, "--size", size] + (["-q"] if quiet else []))
    # one evaluation set for every run, drawn from the raw sample before any dedup
    _step("2/6 evaluation set from the raw sources", start)
    eval_dir = out / "eval"
    if not (eval_dir / "manifest.json").exists():
        _invoke(evalset_command, [sample, "-o", eval_dir, "--eval-seq-len", 128, "--eval-min-seqs", eval_min_seqs] + q)
    data = {}
    for mode in ("global", "local"):
        _step(f"3/6 SlimPajama pipeline, {mode} dedup", start)
        data[mode] = out / f"slimpajama-{mode}"
        # small shards: a mix tokenizes whole shards, so its budget is met without tokenizing the corpus
        _invoke(slimpajama_command, [sample, "-o", data[mode], "--mode", mode, "--holdout-fraction", "0.1",
                                     "--chunks", "2", "--shard-mb", "4", "--eval-set", eval_dir] + q)
    # The six DC mixes on globally deduplicated data; RedPajama's shares on locally deduplicated data
    # (the paper's baseline) and on global data (same mix, so the pair isolates the dedup effect).
    mixes = [(m, "global") for m in DC_MIXES] + [("redpajama", "local"), ("redpajama", "global")]
    mix_dirs = []
    tokenizer = None
    warned = _Warnings()
    for i, (mix, mode) in enumerate(mixes):
        _step(f"4/6 mix {mix} on {mode} dedup ({i + 1}/{len(mixes)})", start)
        mix_dir = out / "mixes" / f"{mix}-{mode}"
        if not (mix_dir / "manifest.json").exists():
            tok_args = (["--tokenizer", tokenizer] if tokenizer
                        else ["--tokenizer", "train", "--vocab-size", vocab_size])
            with warned.collect(mix_dir.name):
                _invoke(mix_command, [data[mode], "--config", mix, "--tokens", tokens, "-o", mix_dir,
                                      "--seq-len", 128, "--eval-tokens", eval_tokens] + tok_args + q)
        tokenizer = tokenizer or mix_dir  # the first mix trains the BPE; every other mix reuses it
        mix_dirs.append(mix_dir)
    warned.summary(len(mixes))
    jobs = []
    # the global/local pair first: the report's first line needs its three seeds, whatever happens later
    for mix_dir in sorted(mix_dirs, key=lambda d: not d.name.startswith("redpajama")):
        for seed in range(1, seeds + 1):
            run = out / "runs" / f"{mix_dir.name}-s{seed}"
            # interval evaluations on the first 32 sequences of each held-out set (the curve's dots); the
            # final evaluation scores every document
            args = [mix_dir, "--model", model, "-o", run, "--seed", seed, "--eval-interval", 16,
                    "--eval-sequences", 32, "--threads", 1]
            if train_tokens:
                args += ["--tokens", train_tokens]
            jobs.append((run, args))
    n_par = parallel or min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    _step(f"5/6 train {model}: {len(mix_dirs)} mixes × {seeds} seed(s), {n_par} at a time", start)
    _train_all(jobs, out / "logs", max(1, n_par), start)
    _step("6/6 compare", start)
    _invoke(compare_command, [*(run for run, _ in jobs), "-o", out / "report"])
    click.echo(f"\ndemo finished in {time.perf_counter() - start:.0f}s: {out / 'report' / 'report.md'}")


def _train_all(jobs: list[tuple[Path, list]], logs: Path, parallel: int, start: float) -> None:
    """``slimpipe train`` for every (run, arguments), ``parallel`` processes at a time, each logging to
    ``logs/<run>.log``; a finished run is skipped, an interrupted one resumed. One line per finished run
    with its per-document total bits per byte (the figure the report uses)."""
    logs.mkdir(parents=True, exist_ok=True)
    todo = [(run, args + (["--resume"] if run.exists() else [])) for run, args in jobs
            if not (run / "metrics.json").exists()]
    running: list[tuple[Path, subprocess.Popen, float, object]] = []
    done = len(jobs) - len(todo)
    try:
        _train_loop(todo, running, done, len(jobs), logs, parallel, start)
    finally:  # interrupted or failed: no training is left running behind the demo (re-running resumes it)
        for _, proc, _, log in running:
            if proc.poll() is None:
                proc.terminate()
                proc.wait()
            log.close()


def _train_loop(todo: list, running: list, done: int, n_jobs: int, logs: Path, parallel: int, start: float) -> None:
    while todo or running:
        while todo and len(running) < parallel:
            run, args = todo.pop(0)
            log = open(logs / f"{run.name}.log", "w")  # noqa: SIM115 - closed when the process ends
            cmd = [sys.executable, "-c", "from slimpipe.cli import main; main()", "train", *map(str, args)]
            running.append((run, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), time.perf_counter(), log))
        time.sleep(0.5)
        for item in list(running):
            run, proc, t0, log = item
            if proc.poll() is None:
                continue
            running.remove(item)
            log.close()
            if proc.returncode != 0:
                tail = (logs / f"{run.name}.log").read_text(errors="replace").strip().splitlines()[-5:]
                raise click.ClickException(f"training {run.name} failed (exit {proc.returncode}; log "
                                           f"{logs / (run.name + '.log')}): " + " | ".join(tail))
            done += 1
            total = (json.loads((run / "metrics.json").read_text()).get("eval_docs") or {}).get("total") or {}
            bpb = f"total {total['bpb']:.4f} bits per byte (per document)" if "bpb" in total else "no per-document total"
            _step(f"5/6 trained {run.name} ({done}/{n_jobs}) in {time.perf_counter() - t0:.0f}s: {bpb}", start)


class _Warnings:
    """Collects the ``warning:`` lines the mixes print, passing everything else through, and says each
    once for the whole job: identical warnings with the mixes that gave them, and one line for the sources
    the mixes repeat (more than one epoch)."""

    REPEAT = re.compile(r"^(?P<source>[\w.-]+): the mix asks for .*repeating it (?P<n>[\d.]+) ?(?:epochs|times|x)?")

    def __init__(self) -> None:
        self.seen: dict[str, list[str]] = defaultdict(list)
        self.repeats: list[str] = []

    @contextlib.contextmanager
    def collect(self, name: str):
        real = sys.stderr
        outer = self

        class Tee(io.TextIOBase):
            buf = ""

            def write(self, text: str) -> int:
                self.buf += text
                while "\n" in self.buf:
                    line, self.buf = self.buf.split("\n", 1)
                    if line.startswith("warning: "):
                        outer.add(name, line[len("warning: "):])
                    else:
                        real.write(line + "\n")
                return len(text)

            def flush(self) -> None:
                real.flush()

        tee = Tee()
        with contextlib.redirect_stderr(tee):
            yield
        if tee.buf:
            real.write(tee.buf)

    def add(self, name: str, msg: str) -> None:
        m = self.REPEAT.match(msg)
        if m:
            self.repeats.append(f"{name} {m.group('source')} ×{m.group('n')}")
        else:
            self.seen[msg].append(name)

    def summary(self, n_mixes: int) -> None:
        for msg, names in self.seen.items():
            who = f"all {n_mixes} mixes" if len(set(names)) == n_mixes else ", ".join(dict.fromkeys(names))
            click.echo(f"warning: {msg} ({who})", err=True)
        if self.repeats:
            click.echo(f"warning: {len(self.repeats)} source(s) repeated across the mixes (more than one epoch of "
                       f"the available text): {', '.join(self.repeats)}; see each mix's manifest", err=True)


def _step(text: str, start: float) -> None:
    click.echo(f"\n== demo [{time.perf_counter() - start:6.0f}s] {text}", err=True)
