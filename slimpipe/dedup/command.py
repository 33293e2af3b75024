"""``slimpipe dedup SOURCES... -o OUT``: MinHash-LSH near-duplicate removal on Ray."""

from __future__ import annotations

from pathlib import Path

import click

from slimpipe.io.readers import InputError


def dedup_options(fn):
    """Options shared by ``dedup`` and ``slimpajama`` (which runs dedup as one of its stages)."""
    opts = [
        click.option("--preset", default="slimpajama", show_default=True,
                     help="Dedup preset name in conf/dedup/ or a YAML path (slimpajama, recall)."),
        click.option("--mode", type=click.Choice(["global", "local"]), default=None,
                     help="global: within and across sources; local: within each source. Default: the preset's."),
        click.option("--threshold", type=float, default=None, help="Jaccard threshold; alone, it re-derives bands/rows."),
        click.option("--num-perm", type=int, default=None),
        click.option("--ngram", type=int, default=None),
        click.option("--unit", type=click.Choice(["char", "word"]), default=None),
        click.option("--bands", type=int, default=None),
        click.option("--rows", type=int, default=None),
        click.option("--min-chars", type=int, default=None, help="Short filter: cleaned chars below this are dropped."),
        click.option("--verify/--no-verify", default=None, help="Check candidate pairs with the exact Jaccard."),
        click.option("--keep", type=click.Choice(["smallest-id", "source-priority", "longest"]), default=None),
        click.option("--source-priority", default=None, help="Comma-separated sources for --keep source-priority."),
        click.option("--source", "force_source", default=None, help="Treat every input as this source."),
        click.option("--partitions", type=int, default=None, help="Hash partitions for shuffles (default: by size)."),
        click.option("--max-edges-in-memory", type=int, default=50_000_000, show_default=True,
                     help="Above this many edges, connected components run distributed on Ray."),
        click.option("--ray-address", default=None, help="Attach to a Ray cluster (default: start a local one)."),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def params_from_options(preset: str, **kw):
    from slimpipe.dedup.params import load_preset

    if kw.get("source_priority"):
        kw["source_priority"] = tuple(s.strip() for s in kw["source_priority"].split(",") if s.strip())
    try:
        return load_preset(preset).with_overrides(**kw)
    except (ValueError, TypeError, FileNotFoundError) as exc:
        raise click.BadParameter(str(exc)) from exc


@click.command("dedup")
@click.argument("sources", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--output", "out", required=True, type=click.Path(path_type=Path), help="Output folder.")
@dedup_options
@click.option("--quiet", is_flag=True, help="No progress output.")
def dedup_command(sources, out, preset, mode, threshold, num_perm, ngram, unit, bands, rows, min_chars, verify,
                  keep, source_priority, force_source, partitions, max_edges_in_memory, ray_address, quiet) -> None:
    """Deduplicate SOURCES (RedPajama-style files or folders) into OUT.

    OUT gets kept/<source>/*.jsonl.zst, removed/*.parquet (id, source, reason, cluster, duplicate_of),
    rejects.parquet, manifest.json, report.json, report.md and plots/. Re-running the same command
    after an interruption resumes where it stopped.
    """
    from slimpipe.dedup.job import run_dedup

    params = params_from_options(preset, mode=mode, threshold=threshold, num_perm=num_perm, ngram=ngram, unit=unit,
                                 bands=bands, rows=rows, min_chars=min_chars, verify=verify, keep=keep,
                                 source_priority=source_priority)
    try:
        report = run_dedup(list(sources), out, params, source=force_source, partitions=partitions,
                           max_edges_in_memory=max_edges_in_memory, progress=not quiet, ray_address=ray_address)
    except InputError as exc:
        raise click.ClickException(str(exc)) from exc
    t = report["total"]
    m = t[params.mode]
    click.echo(f"{t['docs_in']:,} docs in: kept {t['kept_docs']:,}, short {t['short_docs']:,}, "
               f"exact duplicates {m['exact_docs']:,}, near duplicates {m['near_docs']:,}, rejected lines {t['rejected']:,}")
    click.echo(f"byte duplication rate {100 * m['byte_duplication_rate']:.2f}% ({params.mode}); "
               f"report: {out / 'report.md'}")
    for f in report["files"]:
        if f["status"] == "unreadable":
            click.echo(f"error: cannot read {f['file']}: {f['error']}", err=True)
