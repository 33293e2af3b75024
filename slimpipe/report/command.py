"""``slimpipe compare RUN... -o REPORT_DIR``."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import click

from slimpipe.options import argument, command_options, option


def _run_location(ctx, param, values: tuple[str, ...]) -> tuple[str | Path, ...]:
    """RUN: a local folder that exists, or a URI (s3://, gs://, ...) whose top-level files are read."""
    from slimpipe import storage

    out = []
    for v in values:
        if storage.missing_local_dir(v):
            raise click.BadParameter(f"{v!r}: no such folder", param_hint="RUN")
        out.append(v)
    return tuple(out)


@contextlib.contextmanager
def _local(runs: tuple[str | Path, ...], out: str | Path) -> Iterator[tuple[list[Path], Path]]:
    """Local views of URI runs (their top-level files: metrics, config, logs, per-document losses) and a
    local report folder uploaded to a URI OUT when the report is written."""
    from slimpipe import storage

    with tempfile.TemporaryDirectory(prefix="slimpipe-compare-") as tmp:
        local_runs = [storage.local_view(run, Path(tmp) / "runs" / f"{i:03d}" / str(run).rstrip("/").rsplit("/", 1)[-1],
                                         recursive=False) for i, run in enumerate(runs)]
        with storage.staged_folder(out) as local_out:
            yield local_runs, local_out


@dataclass(frozen=True, kw_only=True)
class CompareCommand:
    """``slimpipe compare``'s arguments and options."""

    runs: tuple[str | Path, ...] = argument(nargs=-1, required=True, callback=_run_location)
    out: str = option("-o", "--output", required=True, help="Report folder: a path, or a URI (s3://, gs://, ...).")
    force: bool = option("--force", is_flag=True, help="Write into a non-empty folder that is not a slimpipe output "
                                                       "(refused if a file there would be overwritten).")


@click.command("compare")
@command_options(CompareCommand)
def compare_command(opts: CompareCommand) -> None:
    """Compare trained runs (``slimpipe train`` outputs): per-source bits per byte, rows keyed by the full
    training configuration (seeds inside a row), a paired bootstrap 95% interval on every difference,
    curves, provenance. Runs on different evaluation sets are never ranked together."""
    from slimpipe.outdir import claim, release
    from slimpipe.report.compare import CompareError, write_compare_report

    runs, out = opts.runs, opts.out
    held = claim(out, "compare", "report", sources=runs, force=opts.force)  # each compare rewrites its report folder
    try:
        with _local(runs, out) as (local_runs, local_out):
            report = write_compare_report(local_runs, local_out)
    except CompareError as exc:
        if not held:
            release(out)  # refused runs leave no folder behind
        raise click.ClickException(str(exc)) from exc
    for warning in report["warnings"]:
        click.echo(f"warning: {warning}", err=True)
    from slimpipe.report.render import headline

    for line in headline(report):
        click.echo(line.replace("**", ""))
    click.echo(f"report: {str(out).rstrip('/')}/report.md")
