"""``slimpipe slimpajama SOURCES... -o OUT``: SlimPajama's whole recipe on Ray."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import click

from slimpipe import storage
from slimpipe.dedup.command import (
    PATH_OR_URI,
    DedupOptions,
    check_inputs,
    claim_out,
    echo_not_read,
)
from slimpipe.evalset.command import EvalDrawOptions
from slimpipe.io.readers import InputError
from slimpipe.options import (
    FRACTION_BELOW_ONE,
    POSITIVE_INT,
    SEED,
    argument,
    command_options,
    group,
    megabytes,
    option,
)

if TYPE_CHECKING:  # imported for real only when the command runs (--help stays light)
    from slimpipe.pipeline.job import PipelineOptions


@dataclass(frozen=True, kw_only=True)
class SlimpajamaCommand:
    """``slimpipe slimpajama``'s arguments and options: dedup's, the pipeline's own, the evaluation set's."""

    sources: tuple[str | Path, ...] = argument(nargs=-1, required=True, type=PATH_OR_URI)
    out: str | Path = option("-o", "--output", required=True, type=PATH_OR_URI,
                             help="Output folder: a path or a URI (s3://, gs://, hdfs://, file://).")
    dedup: DedupOptions = group(DedupOptions)
    holdout_fraction: float = option("--holdout-fraction", type=FRACTION_BELOW_ONE, default=0.0017, show_default=True,
                                     help="Share of documents held out (then split half/half into validation and test).")
    seed: int = option("--seed", type=SEED, default=42, show_default=True, help="Shuffle seed: chunking and order only.")
    split_seed: int = option("--split-seed", type=SEED, default=42, show_default=True,
                             help="Seed of the train/holdout split.")
    chunks: int | None = option("--chunks", type=POSITIVE_INT, default=None, help="Number of chunks (default: by --chunk-mb).")
    chunk_mb: float = option("--chunk-mb", type=megabytes(), default=256, show_default=True,
                             help="Text per chunk; one chunk is shuffled in memory by one task.")
    shard_mb: float = option("--shard-mb", type=megabytes(), default=256, show_default=True,
                             help="Uncompressed JSON lines per shard.")
    shard_records: int | None = option("--shard-records", type=POSITIVE_INT, default=None,
                                       help="At most this many records per shard.")
    eval_set: str | Path | None = option("--eval-set", type=PATH_OR_URI, default=None,
                                         help="Reuse this `slimpipe evalset` folder (a path or URI; copied to OUT/eval) "
                                              "instead of drawing one.")
    no_eval_set: bool = option("--no-eval-set", is_flag=True,
                               help="SlimPajama as published: no evaluation set, exact-SHA holdout decontamination only.")
    draw: EvalDrawOptions = group(EvalDrawOptions)
    quiet: bool = option("-q", "--quiet", is_flag=True, help="No progress output.")

    def pipeline_options(self) -> PipelineOptions:
        """The library's :class:`~slimpipe.pipeline.job.PipelineOptions` (sizes in bytes)."""
        from slimpipe.pipeline.job import PipelineOptions

        try:
            return PipelineOptions(holdout_fraction=self.holdout_fraction, seed=self.seed, split_seed=self.split_seed,
                                   chunks=self.chunks, chunk_bytes=int(self.chunk_mb * 2**20),
                                   shard_bytes=int(self.shard_mb * 2**20), shard_records=self.shard_records)
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from exc


@click.command("slimpajama")
@command_options(SlimpajamaCommand)
def slimpajama_command(opts: SlimpajamaCommand) -> None:
    """Run SlimPajama's recipe on SOURCES: NFC → short filter → MinHash dedup → interleave and shuffle →
    train/holdout split → decontaminate → jsonl.zst shards in SlimPajama's layout, with a report.

    Before dedup, an evaluation set is drawn from the raw SOURCES into OUT/eval (or --eval-set EVAL is
    copied there); every training document that is an evaluation document, an exact copy of one or a
    near-duplicate (J >= --threshold) is removed and counted per source. --no-eval-set skips this.

    Re-running the same command after an interruption resumes where it stopped.
    """
    from slimpipe.evalset.build import EvalSetError

    sources, out, d, eval_set, no_eval_set = opts.sources, opts.out, opts.dedup, opts.eval_set, opts.no_eval_set
    params = d.params()
    check_inputs(sources, d.force_source)
    from slimpipe.pipeline.job import run_slimpajama  # heavy imports once the inputs exist

    pipeline = opts.pipeline_options()
    if eval_set and not no_eval_set:
        from slimpipe.evalset.build import load_manifest

        try:
            load_manifest(eval_set)  # a missing or unfinished --eval-set fails before OUT is claimed
        except EvalSetError as exc:
            raise click.BadParameter(str(exc), param_hint="--eval-set") from exc
    evaluation = None if no_eval_set else {"reuse": eval_set} if eval_set else {"options": opts.draw.build()}
    claim_out("slimpajama", sources, out, d.force, d.force_source, scratch=d.scratch, params=params.to_dict(),
              options=repr(pipeline), partitions=d.partitions, eval_set=repr(evaluation))
    try:
        report = run_slimpajama(list(sources), out, params, pipeline, source=d.force_source, partitions=d.partitions,
                                max_edges_in_memory=d.max_edges_in_memory, progress=not opts.quiet,
                                ray_address=d.ray_address, scratch=d.scratch, keep_intermediates=d.keep_intermediates,
                                eval_set=evaluation)
    except (InputError, EvalSetError) as exc:
        raise click.ClickException(str(exc)) from exc
    t = report["total"]
    click.echo(f"{t['lines_read']:,} lines read → train {t['train']['docs']:,} docs ({t['train']['bytes'] / 1e6:.1f} MB), "
               f"validation {t['validation']['docs']:,}, test {t['test']['docs']:,}; short {t['short_docs']:,}, "
               f"duplicates {t['exact_duplicates'] + t['near_duplicates']:,}, decontaminated {t['decontaminated_docs']:,}, "
               f"rejected {t['rejected']:,}")
    e = report.get("eval_decontamination")
    if e:
        gone = sum(n for r in e["removed"].values() for n, _ in r.values())
        click.echo(f"evaluation set {e['eval_set'][:12]} ({e['eval_docs']:,} docs, OUT/eval): {gone:,} training "
                   "documents removed as copies or near-copies of it")
    echo_not_read(report.get("files_not_read", []))
    click.echo(f"report: {storage.join(out, 'report.md')}")
