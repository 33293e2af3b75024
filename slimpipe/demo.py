"""``slimpipe demo -o OUT``: the whole mission end to end on the embedded sample, no download.

sample → one evaluation set drawn from the raw sample → SlimPajama with global dedup, and with local
dedup, both decontaminated against that evaluation set → the six DC mixes (from global) and the
RedPajama baseline (from local) → one tiny model per mix, every run scored on the same evaluation set
and seeded alike → compare, with a paired bootstrap interval on every difference. Each step is the same
command a user would run, invoked in-process, and each is resumable, so an interrupted demo picks up
where it stopped.
"""

from __future__ import annotations

import time
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
@click.option("--seeds", type=int, default=1, show_default=True, help="Training seeds per mix (mean ± spread).")
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
                 eval_tokens: str, eval_min_seqs: int, model: str, corpus: Path | None, quiet: bool, ray_address: str | None) -> None:
    """sample → one evaluation set → SlimPajama (global and local dedup, both decontaminated against it) →
    DC-1..DC-6 + RedPajama mixes → a model per mix and seed → comparison report with intervals
    (OUT/report/report.md). Re-running resumes."""
    from slimpipe.engine import ensure_ray
    from slimpipe.evalset.command import evalset_command
    from slimpipe.mix.command import mix_command
    from slimpipe.pipeline.command import slimpajama_command
    from slimpipe.report.command import compare_command
    from slimpipe.sample import sample_command
    from slimpipe.train.command import train_command

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
    for i, (mix, mode) in enumerate(mixes):
        _step(f"4/6 mix {mix} on {mode} dedup ({i + 1}/{len(mixes)})", start)
        mix_dir = out / "mixes" / f"{mix}-{mode}"
        if not (mix_dir / "manifest.json").exists():
            tok_args = (["--tokenizer", tokenizer] if tokenizer
                        else ["--tokenizer", "train", "--vocab-size", vocab_size])
            _invoke(mix_command, [data[mode], "--config", mix, "--tokens", tokens, "-o", mix_dir,
                                  "--seq-len", 128, "--eval-tokens", eval_tokens] + tok_args + q)
        tokenizer = tokenizer or mix_dir  # the first mix trains the BPE; every other mix reuses it
        mix_dirs.append(mix_dir)
    runs = []
    for i, mix_dir in enumerate(mix_dirs):
        for seed in range(1, seeds + 1):
            _step(f"5/6 train {model} on {mix_dir.name}, seed {seed} ({i + 1}/{len(mix_dirs)})", start)
            run = out / "runs" / f"{mix_dir.name}-s{seed}"
            if not (run / "metrics.json").exists():
                # interval evaluations on the whole (small) held-out sets, so the curve ends at the final figure
                args = [mix_dir, "--model", model, "-o", run, "--seed", seed, "--eval-interval", 16,
                        "--eval-sequences", 1_000_000]
                if train_tokens:
                    args += ["--tokens", train_tokens]
                if run.exists():
                    args.append("--resume")
                _invoke(train_command, args)
            runs.append(run)
    _step("6/6 compare", start)
    _invoke(compare_command, [*runs, "-o", out / "report"])
    click.echo(f"\ndemo finished in {time.perf_counter() - start:.0f}s: {out / 'report' / 'report.md'}")


def _step(text: str, start: float) -> None:
    click.echo(f"\n== demo [{time.perf_counter() - start:6.0f}s] {text}", err=True)
