"""``slimpipe compare RUN... -o REPORT_DIR``."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("compare")
@click.argument("runs", nargs=-1, required=True, type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("-o", "--output", "out", required=True, type=click.Path(path_type=Path), help="Report folder.")
@click.option("--force", is_flag=True, help="Write into a non-empty folder that is not a slimpipe output "
                                            "(refused if a file there would be overwritten).")
def compare_command(runs: tuple[Path, ...], out: Path, force: bool) -> None:
    """Compare trained runs (``slimpipe train`` outputs): per-source bits per byte, rows keyed by the full
    training configuration (seeds inside a row), a paired bootstrap 95% interval on every difference,
    curves, provenance. Runs on different evaluation sets are never ranked together."""
    from slimpipe.outdir import claim, release
    from slimpipe.report.compare import CompareError, write_compare_report

    held = claim(out, "compare", "report", sources=runs, force=force)  # each compare rewrites its report folder
    try:
        report = write_compare_report(list(runs), out)
    except CompareError as exc:
        if not held:
            release(out)  # refused runs leave no folder behind
        raise click.ClickException(str(exc)) from exc
    for warning in report["warnings"]:
        click.echo(f"warning: {warning}", err=True)
    from slimpipe.report.render import headline

    for line in headline(report):
        click.echo(line.replace("**", ""))
    click.echo(f"report: {out / 'report.md'}")
