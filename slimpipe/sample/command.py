"""``slimpipe sample``: the click command (kept apart so the builder imports without click)."""

from __future__ import annotations

import click

from .build import FILES, write_sample


@click.command(name="sample")
@click.option("-o", "--output", "output", required=True, type=click.Path(file_okay=False),
              help="Folder to write the sample into (created if missing).")
@click.option("--seed", default=0, show_default=True, type=int, help="Same seed, same bytes.")
@click.option("--size", default=1.0, show_default=True, type=click.FloatRange(min=0.01, max=20.0),
              help="Scale factor: 1.0 is about 4 MB of text; duplicates scale with it.")
@click.option("-q", "--quiet", is_flag=True, help="No progress lines.")
@click.option("--force", is_flag=True, help="Write into a non-empty folder that is not a slimpipe output "
                                            "(refused if a file there would be overwritten).")
def sample_command(output: str, seed: int, size: float, quiet: bool, force: bool) -> None:
    """Write the embedded RedPajama-style sample corpus (all seven sources, planted duplicates).

    The text is real (Python's standard library, its help topics and bundled docs); the ground truth
    of every planted duplicate goes to OUTPUT/_meta/ground_truth.jsonl, counts to OUTPUT/_meta/sample_manifest.json (folder readers skip _meta/).
    """
    from slimpipe.outdir import claim, identity

    # the same seed and size again rewrites the same bytes; anything else needs a new folder
    claim(output, "sample", identity(seed=seed, size=size), force=force, outputs=(*FILES, "_meta"))
    progress = None if quiet else (lambda msg: click.echo(msg, err=True))
    manifest = write_sample(output, seed=seed, size=size, progress=progress)
    t = manifest["totals"]
    click.echo(f"{output}: {t['docs']} docs, {t['text_bytes'] / 1e6:.2f} MB text, "
               f"{manifest['planted']['total']} planted duplicates")
