"""``slimpipe dedup SOURCES... -o OUT``: MinHash-LSH near-duplicate removal on Ray."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import click

from slimpipe import storage
from slimpipe.io.readers import InputError, discover_files
from slimpipe.options import (
    NON_NEGATIVE_INT,
    OPEN_FRACTION,
    POSITIVE_INT,
    argument,
    command_options,
    group,
    option,
)

if TYPE_CHECKING:  # imported for real only when the command runs (--help stays light)
    from slimpipe.dedup.params import DedupParams


class _PathOrUri(click.ParamType):
    """A local path (expanded as given) or a storage URI (``s3://``, ``gs://``, ``hdfs://``, ``file://``), kept as text."""

    name = "PATH|URI"

    def convert(self, value, param, ctx):
        return value if storage.scheme_of(value) else Path(value)  # file:///p stays a URI, never ./file:/p


PATH_OR_URI = _PathOrUri()


@dataclass(frozen=True, kw_only=True)
class DedupOptions:
    """The options shared by ``dedup`` and ``slimpajama`` (which runs dedup as one of its stages).

    The fields named like :class:`~slimpipe.dedup.params.DedupParams`' override the preset's (``None``: keep
    the preset's value); :meth:`params` builds the job's parameters from them.
    """

    preset: str = option("--preset", default="slimpajama", show_default=True,
                         help="Dedup preset name in conf/dedup/ or a YAML path (slimpajama, recall).")
    mode: str | None = option("--mode", type=click.Choice(["global", "local"]), default=None,
                              help="global: within and across sources; local: within each source. Default: the preset's.")
    threshold: float | None = option("--threshold", type=OPEN_FRACTION, default=None,
                                     help="Jaccard threshold; alone, it re-derives bands/rows.")
    num_perm: int | None = option("--num-perm", type=POSITIVE_INT, default=None,
                                  help="MinHash permutations per document (default: the preset's, 128 for slimpajama).")
    ngram: int | None = option("--ngram", type=POSITIVE_INT, default=None,
                               help="Shingle length in --unit units (default: the preset's, 13 for slimpajama).")
    unit: str | None = option("--unit", type=click.Choice(["char", "word"]), default=None,
                              help="Shingle unit: char n-grams of the cleaned text, or word n-grams. Default: the preset's.")
    bands: int | None = option("--bands", type=POSITIVE_INT, default=None,
                               help="LSH bands; alone, rows become num_perm // bands. Default: the preset's.")
    rows: int | None = option("--rows", type=POSITIVE_INT, default=None,
                              help="LSH rows per band; alone, bands become num_perm // rows. Default: the preset's.")
    min_chars: int | None = option("--min-chars", type=NON_NEGATIVE_INT, default=None,
                                   help="Short filter: cleaned chars below this are dropped.")
    verify: bool | None = option("--verify/--no-verify", default=None,
                                 help="Check candidate pairs with the exact Jaccard. Default: the preset's (slimpajama: no, recall: yes).")
    keep: str | None = option("--keep", type=click.Choice(["smallest-id", "source-priority", "longest"]), default=None,
                              help="Which document of a duplicate cluster is kept. Default: the preset's (smallest-id).")
    source_priority: str | None = option("--source-priority", default=None,
                                         help="Comma-separated source names for --keep source-priority, most preferred first.")
    force_source: str | None = option("--source", default=None,
                                      help="Treat every input as this source (any name; RedPajama's aliases such as cc map to theirs).")
    partitions: int | None = option("--partitions", type=POSITIVE_INT, default=None,
                                    help="Hash partitions for shuffles (default: by size).")
    max_edges_in_memory: int = option("--max-edges-in-memory", type=NON_NEGATIVE_INT, default=50_000_000, show_default=True,
                                      help="Above this many edges, connected components run distributed on Ray.")
    ray_address: str | None = option("--ray-address", default=None,
                                     help="Attach to this Ray cluster (host:port or auto; RAY_ADDRESS works too). Default: a private "
                                          "local Ray on 127.0.0.1.")
    scratch: str | None = option("--scratch", default=None,
                                 help="Where intermediates live while the job runs (a path or URI; default OUT/_work).")
    keep_intermediates: bool = option("--keep-intermediates", is_flag=True,
                                      help="Keep the intermediates after success (default: deleted once the job has finished).")
    force: bool = option("--force", is_flag=True,
                         help="Write into a non-empty OUT that is not a slimpipe output (refused if a file there would "
                              "be overwritten).")

    def params(self) -> DedupParams:
        """The job's :class:`~slimpipe.dedup.params.DedupParams`: the preset with this command's overrides."""
        from slimpipe.dedup.params import DedupParams

        names = {f.name for f in dataclasses.fields(DedupParams)}
        return params_from_options(self.preset, **{k: v for k, v in dataclasses.asdict(self).items() if k in names})


def check_inputs(sources, force_source: str | None) -> None:
    """List the inputs before anything else (and before Ray starts): a missing one fails now, leaving nothing.

    A URI is first checked for access (endpoint, credentials, bucket), so that failure is one line naming it.
    """
    from slimpipe import storage

    for s in sources:
        storage.check_store(s)
    discover_files(list(sources), source=force_source)


def claim_out(job: str, sources, out, force: bool, force_source: str | None, scratch=None, **options) -> None:
    """Check and claim OUT (:mod:`slimpipe.outdir`): never a SOURCE, never a folder of other files or another job;
    ``--scratch`` never inside a SOURCE either."""
    from slimpipe.outdir import claim, identity, input_identity

    claim(out, job, identity(inputs=input_identity(sources), source=force_source, **options), sources=sources,
          force=force, scratch=scratch)


def echo_not_read(files: list[dict]) -> None:
    """Name every file that was not read, or not completely, with its reason, on stderr."""
    for f in files:
        if f.get("status") in ("unreadable", "truncated"):
            click.echo(f"error: {f['status']}: {f['file']}: {f.get('error')}", err=True)
        elif f.get("status") == "skipped":
            click.echo(f"skipped: {f['file']}: {f.get('error')}", err=True)


def _preload() -> None:
    """The dedup driver's imports: the job's code and the report's plotting library."""
    import slimpipe.dedup.job  # noqa: F401
    from slimpipe.dedup.report import preload_plotting
    preload_plotting()


def params_from_options(preset: str, **kw):
    from slimpipe.dedup.params import load_preset

    if kw.get("source_priority"):
        from slimpipe.sources import normalise_source

        names = []
        for raw in (s.strip() for s in kw["source_priority"].split(",") if s.strip()):
            name = normalise_source(raw)
            if name is None:
                raise click.BadParameter(f"{raw!r} is not a source name (letters, digits, _ - . only)",
                                         param_hint="--source-priority")
            names.append(name)
        kw["source_priority"] = tuple(names)
    try:
        return load_preset(preset).with_overrides(**kw)
    except (ValueError, TypeError, FileNotFoundError) as exc:
        raise click.BadParameter(str(exc)) from exc


@dataclass(frozen=True, kw_only=True)
class DedupCommand:
    """``slimpipe dedup``'s arguments and options."""

    sources: tuple[str | Path, ...] = argument(nargs=-1, required=True, type=PATH_OR_URI)
    out: str | Path = option("-o", "--output", required=True, type=PATH_OR_URI,
                             help="Output folder: a path or a URI (s3://, gs://, hdfs://, file://).")
    dedup: DedupOptions = group(DedupOptions)
    quiet: bool = option("-q", "--quiet", is_flag=True, help="No progress output.")


@click.command("dedup")
@command_options(DedupCommand)
def dedup_command(opts: DedupCommand) -> None:
    """Deduplicate SOURCES (RedPajama-style files or folders) into OUT.

    OUT gets kept/<source>/*.jsonl.zst, removed/*.parquet (id, source, reason, cluster, duplicate_of),
    rejects.parquet, manifest.json, report.json, report.md and plots/. Re-running the same command
    after an interruption resumes where it stopped.
    """
    sources, out, d, quiet = opts.sources, opts.out, opts.dedup, opts.quiet
    force, force_source, scratch, partitions = d.force, d.force_source, d.scratch, d.partitions
    params = d.params()
    check_inputs(sources, force_source)
    claim_out("dedup", sources, out, force, force_source, scratch=scratch, params=params.to_dict(),
              partitions=partitions)
    from slimpipe.engine import ensure_ray

    # heavy imports only once the inputs and OUT are known good, and while Ray starts
    ensure_ray(d.ray_address, preload=_preload)
    from slimpipe.dedup.job import run_dedup

    try:
        report = run_dedup(list(sources), out, params, source=force_source, partitions=partitions,
                           max_edges_in_memory=d.max_edges_in_memory, progress=not quiet, ray_address=d.ray_address,
                           scratch=scratch, keep_intermediates=d.keep_intermediates)
    except InputError as exc:
        raise click.ClickException(str(exc)) from exc
    t = report["total"]
    m = t[params.mode]
    click.echo(f"{t['docs_in']:,} docs in: kept {t['kept_docs']:,}, short {t['short_docs']:,}, "
               f"exact duplicates {m['exact_docs']:,}, near duplicates {m['near_docs']:,}, rejected lines {t['rejected']:,}")
    click.echo(f"byte duplication rate {100 * m['byte_duplication_rate']:.2f}% ({params.mode}); "
               f"report: {storage.join(out, 'report.md')}")
    echo_not_read(report["files"])
    absent = [s for s in params.source_priority if s not in report.get("sources", {})]
    if absent:
        click.echo(f"warning: --source-priority names sources not in the input: {', '.join(absent)}", err=True)
