"""``slimpipe slimpajama SOURCES... -o OUT``: SlimPajama's whole recipe on Ray."""

from __future__ import annotations

import click

from slimpipe import storage
from slimpipe.dedup.command import (
    PATH_OR_URI,
    check_inputs,
    claim_out,
    dedup_options,
    echo_not_read,
    params_from_options,
)
from slimpipe.evalset.command import evalset_options, options_from
from slimpipe.io.readers import InputError
from slimpipe.options import FRACTION_BELOW_ONE, POSITIVE_INT, SEED, megabytes


@click.command("slimpajama")
@click.argument("sources", nargs=-1, required=True, type=PATH_OR_URI)
@click.option("-o", "--output", "out", required=True, type=PATH_OR_URI,
              help="Output folder: a path or a URI (s3://, gs://, hdfs://, file://).")
@dedup_options
@click.option("--holdout-fraction", type=FRACTION_BELOW_ONE, default=0.0017, show_default=True,
              help="Share of documents held out (then split half/half into validation and test).")
@click.option("--seed", type=SEED, default=42, show_default=True, help="Shuffle seed: chunking and order only.")
@click.option("--split-seed", type=SEED, default=42, show_default=True, help="Seed of the train/holdout split.")
@click.option("--chunks", type=POSITIVE_INT, default=None, help="Number of chunks (default: by --chunk-mb).")
@click.option("--chunk-mb", type=megabytes(), default=256, show_default=True,
              help="Text per chunk; one chunk is shuffled in memory by one task.")
@click.option("--shard-mb", type=megabytes(), default=256, show_default=True, help="Uncompressed JSON lines per shard.")
@click.option("--shard-records", type=POSITIVE_INT, default=None, help="At most this many records per shard.")
@click.option("--eval-set", "eval_set", type=PATH_OR_URI, default=None,
              help="Reuse this `slimpipe evalset` folder (a path or URI; copied to OUT/eval) instead of drawing one.")
@click.option("--no-eval-set", "no_eval_set", is_flag=True,
              help="SlimPajama as published: no evaluation set, exact-SHA holdout decontamination only.")
@evalset_options
@click.option("-q", "--quiet", is_flag=True, help="No progress output.")
def slimpajama_command(sources, out, preset, mode, threshold, num_perm, ngram, unit, bands, rows, min_chars, verify,
                       keep, source_priority, force_source, partitions, max_edges_in_memory, ray_address, force,
                       scratch, keep_intermediates,
                       holdout_fraction, seed, split_seed, chunks, chunk_mb, shard_mb, shard_records, eval_set, no_eval_set,
                       eval_seed, eval_min_tokens, eval_min_seqs, eval_seq_len, eval_max_fraction, quiet) -> None:
    """Run SlimPajama's recipe on SOURCES: NFC → short filter → MinHash dedup → interleave and shuffle →
    train/holdout split → decontaminate → jsonl.zst shards in SlimPajama's layout, with a report.

    Before dedup, an evaluation set is drawn from the raw SOURCES into OUT/eval (or --eval-set EVAL is
    copied there); every training document that is an evaluation document, an exact copy of one or a
    near-duplicate (J >= --threshold) is removed and counted per source. --no-eval-set skips this.

    Re-running the same command after an interruption resumes where it stopped.
    """
    from slimpipe.evalset.build import EvalSetError

    params = params_from_options(preset, mode=mode, threshold=threshold, num_perm=num_perm, ngram=ngram, unit=unit,
                                 bands=bands, rows=rows, min_chars=min_chars, verify=verify, keep=keep,
                                 source_priority=source_priority)
    check_inputs(sources, force_source)
    from slimpipe.pipeline.job import PipelineOptions, run_slimpajama  # heavy imports once the inputs exist

    try:
        opts = PipelineOptions(holdout_fraction=holdout_fraction, seed=seed, split_seed=split_seed, chunks=chunks,
                               chunk_bytes=int(chunk_mb * 2**20), shard_bytes=int(shard_mb * 2**20),
                               shard_records=shard_records)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc
    if eval_set and not no_eval_set:
        from slimpipe.evalset.build import load_manifest

        try:
            load_manifest(eval_set)  # a missing or unfinished --eval-set fails before OUT is claimed
        except EvalSetError as exc:
            raise click.BadParameter(str(exc), param_hint="--eval-set") from exc
    evaluation = None if no_eval_set else {"reuse": eval_set} if eval_set else {"options": options_from(
        eval_seed, eval_min_tokens, eval_min_seqs, eval_seq_len, eval_max_fraction)}
    claim_out("slimpajama", sources, out, force, force_source, scratch=scratch, params=params.to_dict(), options=repr(opts),
              partitions=partitions, eval_set=repr(evaluation))
    try:
        report = run_slimpajama(list(sources), out, params, opts, source=force_source, partitions=partitions,
                                max_edges_in_memory=max_edges_in_memory, progress=not quiet, ray_address=ray_address,
                                scratch=scratch, keep_intermediates=keep_intermediates,
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
