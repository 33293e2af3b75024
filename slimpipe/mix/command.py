"""``slimpipe mix SLIMPAJAMA_DIR --config dc1..dc6|FILE.yaml --tokens N -o OUT``: a training-ready mix."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import click

from slimpipe import storage
from slimpipe.options import SEED, argument, command_options, option, values_of
from slimpipe.units import parse_count

if TYPE_CHECKING:  # imported for real when the command runs (--help stays light)
    from slimpipe.mix.common import MixOptions


class TokenCount(click.ParamType):
    """``330B``, ``5M``, ``2.5k``, ``1e6``, ``1_000_000``."""

    name = "N"

    def __init__(self, allow_zero: bool = False) -> None:
        self.allow_zero = allow_zero

    def convert(self, value, param, ctx) -> int:
        if isinstance(value, int):
            return value
        if self.allow_zero and str(value).strip() == "all":
            return 0
        try:
            return parse_count(value, allow_zero=self.allow_zero, what="token count")
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


def _input_location(value: str) -> str:
    """SLIMPAJAMA_DIR: a local folder that exists, or a URI (checked when the build reads it)."""
    if storage.missing_local_dir(value):
        raise click.BadParameter(f"{value!r}: no such folder", param_hint="SLIMPAJAMA_DIR")
    return value


@dataclass(frozen=True, kw_only=True)
class MixCommand:
    """``slimpipe mix``'s arguments and options."""

    slimpajama_dir: str = argument(callback=lambda ctx, param, v: _input_location(v))
    config: str = option("--config", required=True,
                         help="dc1..dc6, redpajama, a mix FILE.yaml, or inline weights like 'common_crawl=3,github=1'.")
    tokens: int = option("--tokens", required=True, type=TokenCount(),
                         help="Training tokens (document tokens + one EOS each), e.g. 330B (the paper) or 5M (the demo).")
    out: str = option("-o", "--output", required=True, metavar="PATH|URI",
                      help="Output folder: a path, or a URI (s3://, gs://, hdfs://; credentials from the environment).")
    tokenizer: str = option("--tokenizer", default="gpt2", show_default=True,
                            help="gpt2 (offline), a tokenizer.json / tokenizer folder / previous mix folder (to share one "
                                 "tokenizer across an experiment's mixes), or 'train' (byte-level BPE on the train split).")
    vocab_size: int = option("--vocab-size", default=32768, show_default=True, type=click.IntRange(min=257),
                             help="Vocabulary of --tokenizer train.")
    bpe_sample: int = option("--bpe-sample", default="256M", show_default=True, type=TokenCount(),
                             help="Bytes of train text for --tokenizer train.")
    seq_len: int = option("--seq-len", default=2048, show_default=True, type=click.IntRange(min=1),
                          help="Packed sequence length (the paper's context is 2048).")
    seed: int = option("--seed", default=42, show_default=True, type=SEED, help="Same seed and input, same bytes out.")
    output_format: str = option("--format", type=click.Choice(["packed", "text"]), default="packed", show_default=True,
                                help="packed: token sets for `slimpipe train`; text: jsonl.zst in SlimPajama's layout.")
    eval_tokens: int = option("--eval-tokens", default="1M", show_default=True, type=TokenCount(allow_zero=True),
                              help="Evaluation documents per source: whole documents until 30 of them and this many "
                                   "tokens (0 = all). From SLIMPAJAMA_DIR/eval, in the evaluation set's own order with "
                                   "tokens counted as UTF-8 bytes / 4, so every mix and tokenizer scores the same "
                                   "documents; else a seeded sample of each held-out split.")
    token_cache: str | None = option("--token-cache", default=None, metavar="DIR",
                                     help="Per-source token cache shared by every mix of SLIMPAJAMA_DIR with the same "
                                          "tokenizer [default: SLIMPAJAMA_DIR/_cache/tokens].")
    force: bool = option("--force", is_flag=True,
                         help="Write into a non-empty OUT that is not a slimpipe output (refused if a file there would "
                              "be overwritten; nothing there is ever deleted).")
    keep_work: bool = option("--keep-work", is_flag=True,
                             help="Keep OUT/.work (the pieces selected per shard) for inspection.")
    ray_address: str | None = option("--ray-address", default=None,
                                     help="Attach to a Ray cluster (default: start a local one).")
    quiet: bool = option("-q", "--quiet", is_flag=True, help="No progress output.")

    def mix_options(self, warn: Callable[[str], None] | None = None) -> MixOptions:
        """The library's :class:`~slimpipe.mix.common.MixOptions`: every option named like one of its fields,
        and --bpe-sample as ``bpe_sample_bytes`` (SLIMPAJAMA_DIR, --config and OUT are build_mix's arguments)."""
        from slimpipe.mix.common import MixOptions

        names = {f.name for f in dataclasses.fields(MixOptions)}
        same = {k: v for k, v in values_of(self).items() if k in names}
        return MixOptions(**same, bpe_sample_bytes=self.bpe_sample, warn=warn)


@click.command("mix")
@command_options(MixCommand)
def mix_command(opts: MixCommand) -> None:
    """Build a SlimPajama-DC (or custom) mix of SLIMPAJAMA_DIR into OUT.

    Each source gets its share of --tokens; a source with too little data is repeated (whole and partial
    epochs, with a warning). Packed output: OUT/train/ and OUT/eval/<source>/ (from the validation
    split; OUT/test/<source>/ from test), OUT/tokenizer/, OUT/manifest.json. Re-running after an
    interruption reuses the shards already tokenized.
    """
    from slimpipe.mix.build import MixBuildError, build_mix
    from slimpipe.mix.config import MixConfigError, load_mix

    try:
        mix = load_mix(opts.config)
    except MixConfigError as exc:
        raise click.BadParameter(str(exc), param_hint="--config") from exc

    def warn(msg: str) -> None:
        click.echo(f"warning: {msg}", err=True)

    out, slimpajama_dir, tokens = opts.out, opts.slimpajama_dir, opts.tokens
    from slimpipe.outdir import check_not_in_sources

    check_not_in_sources(out, [slimpajama_dir])  # now; build_mix claims OUT by the same rules (slimpipe.outdir)
    try:
        manifest = build_mix(slimpajama_dir, mix, out, opts.mix_options(warn))
    except MixBuildError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"mix {mix.name}: {manifest['tokens_realised']:,} of {tokens:,} tokens "
               f"(max share error {manifest['max_share_error_pp']:.3f} pp), tokenizer {manifest['tokenizer']['name']}")
    for s, e in manifest["sources"].items():
        if e.get("tokens_target"):
            click.echo(f"  {s:<14} target {100 * e['share_target']:5.1f}%  realised {100 * e['share_realised']:6.2f}%"
                       f"  {e['tokens_realised']:>14,} tokens  {e['epochs']:.2f} epochs")
    click.echo(f"manifest: {storage.join(out, 'manifest.json')}")
