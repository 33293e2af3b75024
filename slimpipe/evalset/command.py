"""``slimpipe evalset SOURCES... -o EVAL``."""

from __future__ import annotations

import click

from slimpipe import storage
from slimpipe.dedup.command import PATH_OR_URI, check_inputs
from slimpipe.io.readers import InputError
from slimpipe.options import OPEN_FRACTION, POSITIVE_INT, SEED


def evalset_options(f):
    """The options that size an evaluation set (shared with ``slimpipe slimpajama``)."""
    for opt in reversed([
        click.option("--eval-seed", "eval_seed", type=SEED, default=1234, show_default=True,
                     help="Seed of the evaluation draw (documents are ordered by a hash of seed and id)."),
        click.option("--eval-min-tokens", "eval_min_tokens", type=POSITIVE_INT, default=None,
                     help="GPT-2 tokens per source (default: --eval-min-seqs x --eval-seq-len)."),
        click.option("--eval-min-seqs", "eval_min_seqs", type=POSITIVE_INT, default=64, show_default=True,
                     help="Sequences of --eval-seq-len tokens per source, where the source has that much."),
        click.option("--eval-seq-len", "eval_seq_len", type=POSITIVE_INT, default=2048, show_default=True,
                     help="The model's sequence length (sizes the default target)."),
        click.option("--eval-max-fraction", "eval_max_fraction", type=OPEN_FRACTION, default=0.1, show_default=True,
                     help="Never hold out more than this share of a source's text (smaller sources are flagged)."),
    ]):
        f = opt(f)
    return f


def options_from(eval_seed: int, eval_min_tokens: int | None, eval_min_seqs: int, eval_seq_len: int,
                 eval_max_fraction: float):
    from slimpipe.evalset.build import EvalSetError, EvalSetOptions

    try:
        return EvalSetOptions(seed=eval_seed, min_tokens=eval_min_tokens, min_seqs=eval_min_seqs,
                              seq_len=eval_seq_len, max_fraction=eval_max_fraction)
    except EvalSetError as exc:
        raise click.BadParameter(str(exc)) from exc


@click.command("evalset")
@click.argument("sources", nargs=-1, required=True, type=PATH_OR_URI)
@click.option("-o", "--output", "out", required=True, type=PATH_OR_URI,
              help="Folder of the evaluation set, a path or a URI (s3://, gs://, hdfs://, file://): "
                   "EVAL/manifest.json, EVAL/sources/<source>/*.jsonl.zst.")
@evalset_options
@click.option("--source", "force_source", default=None, help="Treat every input as this source.")
@click.option("--ray-address", default=None, help="Attach to this Ray cluster instead of starting a private one.")
@click.option("--scratch", default=None,
              help="Where intermediates live while the job runs (a path or URI; default EVAL/_work).")
@click.option("--keep-intermediates", is_flag=True,
              help="Keep the intermediates after success (default: deleted once the set is complete).")
@click.option("--force", is_flag=True, help="Write into a non-empty folder that is not a slimpipe output "
                                            "(refused if a file there would be overwritten).")
@click.option("-q", "--quiet", is_flag=True, help="No progress output.")
def evalset_command(sources, out, eval_seed, eval_min_tokens, eval_min_seqs, eval_seq_len, eval_max_fraction,
                    force_source, ray_address, scratch, keep_intermediates, quiet, force: bool = False) -> None:
    """Draw one evaluation set from the raw SOURCES (before any dedup), stratified per source, with a
    minimum size per source; every run and mix built from these sources should be scored on it
    (`slimpipe slimpajama --eval-set EVAL`). Too-small sources are flagged in the manifest and report."""
    from slimpipe.engine import ensure_ray
    from slimpipe.evalset.build import EvalSetError, build_eval_set

    opts = options_from(eval_seed, eval_min_tokens, eval_min_seqs, eval_seq_len, eval_max_fraction)
    try:
        check_inputs(sources, force_source)  # a missing or unreachable input fails before Ray starts
        from slimpipe.outdir import claim, identity, input_identity

        claim(out, "evalset", identity(inputs=input_identity(sources), source=force_source, options=repr(opts)),
              sources=sources, force=force, scratch=scratch)
        ensure_ray(ray_address)
        m = build_eval_set(list(sources), out, opts, source=force_source, progress=not quiet, scratch=scratch,
                           keep_intermediates=keep_intermediates)
    except (InputError, EvalSetError) as exc:
        raise click.ClickException(str(exc)) from exc
    for src, v in m["sources"].items():
        flag = "  TOO SMALL" if v["too_small"] else ""
        click.echo(f"{src}: {v['docs']:,} docs, {v['tokens']:,} GPT-2 tokens{flag}")
    click.echo(f"eval_set {m['eval_set']}: {storage.join(out, 'manifest.json')}")
