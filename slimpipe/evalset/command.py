"""``slimpipe evalset SOURCES... -o EVAL``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import click

from slimpipe import storage
from slimpipe.dedup.command import PATH_OR_URI, check_inputs
from slimpipe.io.readers import InputError
from slimpipe.options import OPEN_FRACTION, POSITIVE_INT, SEED, argument, command_options, group, option

if TYPE_CHECKING:  # imported for real only when the command runs (--help stays light)
    from slimpipe.evalset.build import EvalSetOptions


@dataclass(frozen=True, kw_only=True)
class EvalDrawOptions:
    """The options that size an evaluation set (shared with ``slimpipe slimpajama``)."""

    eval_seed: int = option("--eval-seed", type=SEED, default=1234, show_default=True,
                            help="Seed of the evaluation draw (documents are ordered by a hash of seed and id).")
    eval_min_tokens: int | None = option("--eval-min-tokens", type=POSITIVE_INT, default=None,
                                         help="GPT-2 tokens per source (default: --eval-min-seqs x --eval-seq-len).")
    eval_min_seqs: int = option("--eval-min-seqs", type=POSITIVE_INT, default=64, show_default=True,
                                help="Sequences of --eval-seq-len tokens per source, where the source has that much.")
    eval_seq_len: int = option("--eval-seq-len", type=POSITIVE_INT, default=2048, show_default=True,
                               help="The model's sequence length (sizes the default target).")
    eval_max_fraction: float = option("--eval-max-fraction", type=OPEN_FRACTION, default=0.1, show_default=True,
                                      help="Never hold out more than this share of a source's text (smaller sources are flagged).")

    def build(self) -> EvalSetOptions:
        """The library's :class:`~slimpipe.evalset.build.EvalSetOptions` (a bad combination: a usage error)."""
        from slimpipe.evalset.build import EvalSetError, EvalSetOptions

        try:
            return EvalSetOptions(seed=self.eval_seed, min_tokens=self.eval_min_tokens, min_seqs=self.eval_min_seqs,
                                  seq_len=self.eval_seq_len, max_fraction=self.eval_max_fraction)
        except EvalSetError as exc:
            raise click.BadParameter(str(exc)) from exc


@dataclass(frozen=True, kw_only=True)
class EvalSetCommand:
    """``slimpipe evalset``'s arguments and options."""

    sources: tuple[str | Path, ...] = argument(nargs=-1, required=True, type=PATH_OR_URI)
    out: str | Path = option("-o", "--output", required=True, type=PATH_OR_URI,
                             help="Folder of the evaluation set, a path or a URI (s3://, gs://, hdfs://, file://): "
                                  "EVAL/manifest.json, EVAL/sources/<source>/*.jsonl.zst.")
    draw: EvalDrawOptions = group(EvalDrawOptions)
    force_source: str | None = option("--source", default=None, help="Treat every input as this source.")
    ray_address: str | None = option("--ray-address", default=None,
                                     help="Attach to this Ray cluster instead of starting a private one.")
    scratch: str | None = option("--scratch", default=None,
                                 help="Where intermediates live while the job runs (a path or URI; default EVAL/_work).")
    keep_intermediates: bool = option("--keep-intermediates", is_flag=True,
                                      help="Keep the intermediates after success (default: deleted once the set is complete).")
    force: bool = option("--force", is_flag=True, help="Write into a non-empty folder that is not a slimpipe output "
                                                       "(refused if a file there would be overwritten).")
    quiet: bool = option("-q", "--quiet", is_flag=True, help="No progress output.")


@click.command("evalset")
@command_options(EvalSetCommand)
def evalset_command(opts: EvalSetCommand) -> None:
    """Draw one evaluation set from the raw SOURCES (before any dedup), stratified per source, with a
    minimum size per source; every run and mix built from these sources should be scored on it
    (`slimpipe slimpajama --eval-set EVAL`). Too-small sources are flagged in the manifest and report."""
    from slimpipe.engine import ensure_ray
    from slimpipe.evalset.build import EvalSetError, build_eval_set

    sources, out, force_source, scratch = opts.sources, opts.out, opts.force_source, opts.scratch
    draw = opts.draw.build()
    try:
        check_inputs(sources, force_source)  # a missing or unreachable input fails before Ray starts
        from slimpipe.outdir import claim, identity, input_identity

        claim(out, "evalset", identity(inputs=input_identity(sources), source=force_source, options=repr(draw)),
              sources=sources, force=opts.force, scratch=scratch)
        ensure_ray(opts.ray_address)
        m = build_eval_set(list(sources), out, draw, source=force_source, progress=not opts.quiet, scratch=scratch,
                           keep_intermediates=opts.keep_intermediates)
    except (InputError, EvalSetError) as exc:
        raise click.ClickException(str(exc)) from exc
    for src, v in m["sources"].items():
        flag = "  TOO SMALL" if v["too_small"] else ""
        click.echo(f"{src}: {v['docs']:,} docs, {v['tokens']:,} GPT-2 tokens{flag}")
    click.echo(f"eval_set {m['eval_set']}: {storage.join(out, 'manifest.json')}")
