"""``slimpipe mix SLIMPAJAMA_DIR --config dc1..dc6|FILE.yaml --tokens N -o OUT``: a training-ready mix."""

from __future__ import annotations

import click

from slimpipe import storage
from slimpipe.options import SEED
from slimpipe.units import parse_count


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


@click.command("mix")
@click.argument("slimpajama_dir", callback=lambda ctx, param, v: _input_location(v))
@click.option("--config", "config", required=True,
              help="dc1..dc6, redpajama, a mix FILE.yaml, or inline weights like 'common_crawl=3,github=1'.")
@click.option("--tokens", required=True, type=TokenCount(),
              help="Training tokens (document tokens + one EOS each), e.g. 330B (the paper) or 5M (the demo).")
@click.option("-o", "--output", "out", required=True, metavar="PATH|URI",
              help="Output folder: a path, or a URI (s3://, gs://, hdfs://; credentials from the environment).")
@click.option("--tokenizer", default="gpt2", show_default=True,
              help="gpt2 (offline), a tokenizer.json / tokenizer folder / previous mix folder (to share one "
                   "tokenizer across an experiment's mixes), or 'train' (byte-level BPE on the train split).")
@click.option("--vocab-size", default=32768, show_default=True, type=click.IntRange(min=257),
              help="Vocabulary of --tokenizer train.")
@click.option("--bpe-sample", "bpe_sample", default="256M", show_default=True, type=TokenCount(),
              help="Bytes of train text for --tokenizer train.")
@click.option("--seq-len", default=2048, show_default=True, type=click.IntRange(min=1),
              help="Packed sequence length (the paper's context is 2048).")
@click.option("--seed", default=42, show_default=True, type=SEED, help="Same seed and input, same bytes out.")
@click.option("--format", "output_format", type=click.Choice(["packed", "text"]), default="packed",
              show_default=True, help="packed: token sets for `slimpipe train`; text: jsonl.zst in SlimPajama's layout.")
@click.option("--eval-tokens", default="1M", show_default=True, type=TokenCount(allow_zero=True),
              help="Evaluation documents per source: whole documents until 30 of them and this many tokens "
                   "(0 = all). From SLIMPAJAMA_DIR/eval, in the evaluation set's own order with tokens counted as "
                   "UTF-8 bytes / 4, so every mix and tokenizer scores the same documents; else a seeded sample "
                   "of each held-out split.")
@click.option("--token-cache", "token_cache", default=None, metavar="DIR",
              help="Per-source token cache shared by every mix of SLIMPAJAMA_DIR with the same tokenizer "
                   "[default: SLIMPAJAMA_DIR/_cache/tokens].")
@click.option("--force", is_flag=True,
              help="Write into a non-empty OUT that is not a slimpipe output (refused if a file there would "
                   "be overwritten; nothing there is ever deleted).")
@click.option("--keep-work", is_flag=True, help="Keep OUT/.work (the pieces selected per shard) for inspection.")
@click.option("--ray-address", default=None, help="Attach to a Ray cluster (default: start a local one).")
@click.option("-q", "--quiet", is_flag=True, help="No progress output.")
def mix_command(slimpajama_dir: str, config: str, tokens: int, out: str, tokenizer: str, vocab_size: int,
                bpe_sample: int, seq_len: int, seed: int, output_format: str, eval_tokens: int,
                token_cache: str | None, force: bool,
                keep_work: bool, ray_address: str | None, quiet: bool) -> None:
    """Build a SlimPajama-DC (or custom) mix of SLIMPAJAMA_DIR into OUT.

    Each source gets its share of --tokens; a source with too little data is repeated (whole and partial
    epochs, with a warning). Packed output: OUT/train/ and OUT/eval/<source>/ (from the validation
    split; OUT/test/<source>/ from test), OUT/tokenizer/, OUT/manifest.json. Re-running after an
    interruption reuses the shards already tokenized.
    """
    from slimpipe.mix.build import MixBuildError, MixOptions, build_mix
    from slimpipe.mix.config import MixConfigError, load_mix

    try:
        mix = load_mix(config)
    except MixConfigError as exc:
        raise click.BadParameter(str(exc), param_hint="--config") from exc

    def warn(msg: str) -> None:
        click.echo(f"warning: {msg}", err=True)

    opt = MixOptions(tokens=tokens, seq_len=seq_len, seed=seed, output_format=output_format, tokenizer=tokenizer,
                     vocab_size=vocab_size, bpe_sample_bytes=bpe_sample, eval_tokens=eval_tokens,
                     token_cache=token_cache, force=force, keep_work=keep_work, ray_address=ray_address, quiet=quiet, warn=warn)
    from slimpipe.outdir import check_not_in_sources

    check_not_in_sources(out, [slimpajama_dir])  # now; build_mix claims OUT by the same rules (slimpipe.outdir)
    try:
        manifest = build_mix(slimpajama_dir, mix, out, opt)
    except MixBuildError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"mix {mix.name}: {manifest['tokens_realised']:,} of {tokens:,} tokens "
               f"(max share error {manifest['max_share_error_pp']:.3f} pp), tokenizer {manifest['tokenizer']['name']}")
    for s, e in manifest["sources"].items():
        if e.get("tokens_target"):
            click.echo(f"  {s:<14} target {100 * e['share_target']:5.1f}%  realised {100 * e['share_realised']:6.2f}%"
                       f"  {e['tokens_realised']:>14,} tokens  {e['epochs']:.2f} epochs")
    click.echo(f"manifest: {storage.join(out, 'manifest.json')}")
