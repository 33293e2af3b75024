"""``slimpipe compare RUN... -o REPORT_DIR``."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("compare")
@click.argument("runs", nargs=-1, required=True, type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("-o", "--output", "out", required=True, type=click.Path(path_type=Path), help="Report folder.")
def compare_command(runs: tuple[Path, ...], out: Path) -> None:
    """Compare trained runs (``slimpipe train`` outputs): per-source bits per byte, winners, curves,
    provenance; several seeds of one mix are summarised as mean ± spread."""
    from slimpipe.report.compare import CompareError, write_compare_report

    try:
        report = write_compare_report(list(runs), out)
    except CompareError as exc:
        raise click.ClickException(str(exc)) from exc
    w = report["winners"].get("total")
    if w:
        click.echo(f"best overall: {w['winner']} ({w['bpb']:.4f} bits per byte)")
    click.echo(f"report: {out / 'report.md'}")
