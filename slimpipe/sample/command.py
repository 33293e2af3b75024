"""``slimpipe sample``: the click command (kept apart so the builder imports without click)."""

from __future__ import annotations

from dataclasses import dataclass

import click

from slimpipe.options import command_options, option

from .build import FILES, write_sample


@dataclass(frozen=True, kw_only=True)
class SampleCommand:
    """``slimpipe sample``'s options."""

    output: str = option("-o", "--output", required=True, type=click.Path(file_okay=False),
                         help="Folder to write the sample into (created if missing).")
    seed: int = option("--seed", default=0, show_default=True, type=int, help="Same seed, same bytes.")
    size: float = option("--size", default=1.0, show_default=True, type=click.FloatRange(min=0.01, max=20.0),
                         help="Scale factor: 1.0 is about 4 MB of text; duplicates scale with it.")
    quiet: bool = option("-q", "--quiet", is_flag=True, help="No progress lines.")
    force: bool = option("--force", is_flag=True, help="Write into a non-empty folder that is not a slimpipe output "
                                                       "(refused if a file there would be overwritten).")


@click.command(name="sample")
@command_options(SampleCommand)
def sample_command(opts: SampleCommand) -> None:
    """Write the embedded RedPajama-style sample corpus (all seven sources, planted duplicates).

    The text is real (Python's standard library, its help topics and bundled docs); the ground truth
    of every planted duplicate goes to OUTPUT/_meta/ground_truth.jsonl, counts to OUTPUT/_meta/sample_manifest.json (folder readers skip _meta/).
    """
    from slimpipe.outdir import claim, identity

    output, seed, size = opts.output, opts.seed, opts.size
    # the same seed and size again rewrites the same bytes; anything else needs a new folder
    claim(output, "sample", identity(seed=seed, size=size), force=opts.force, outputs=(*FILES, "_meta"))
    progress = None if opts.quiet else (lambda msg: click.echo(msg, err=True))
    manifest = write_sample(output, seed=seed, size=size, progress=progress)
    t = manifest["totals"]
    click.echo(f"{output}: {t['docs']} docs, {t['text_bytes'] / 1e6:.2f} MB text, "
               f"{manifest['planted']['total']} planted duplicates")
