"""``slimpipe inspect SOURCES...``: what is in the inputs, per source and per file, and what was rejected."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import click

from slimpipe.io.readers import InputError
from slimpipe.options import argument, command_options, option


@dataclass(frozen=True, kw_only=True)
class InspectCommand:
    """``slimpipe inspect``'s arguments and options."""

    sources: tuple[Path, ...] = argument(nargs=-1, required=True, type=click.Path(path_type=Path))
    force_source: str | None = option("--source", default=None, help="Treat every input as this source.")
    rejects_out: Path | None = option("--rejects", type=click.Path(path_type=Path), default=None,
                                      help="Write the rejects table here (Parquet).")
    as_json: bool = option("--json", is_flag=True, help="Print JSON instead of a table.")
    ray_address: str | None = option("--ray-address", default=None,
                                     help="Attach to a Ray cluster instead of starting a local one.")


@click.command("inspect")
@command_options(InspectCommand)
def inspect_command(opts: InspectCommand) -> None:
    """Read SOURCES (files or folders) and count documents, bytes and rejects per source."""
    from slimpipe.io.scan import scan

    try:
        result = scan(list(opts.sources), source=opts.force_source, ray_address=opts.ray_address)
    except InputError as exc:
        raise click.BadParameter(str(exc), param_hint="SOURCES") from exc
    rejects = result.pop("rejects")
    rejects_out = opts.rejects_out
    if rejects_out:
        import pyarrow.parquet as pq

        rejects_out.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(rejects, rejects_out)
    if opts.as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        click.echo(f"{'source':<16}{'docs':>10}{'MB':>10}")
        for src, row in result["sources"].items():
            click.echo(f"{src:<16}{row['docs']:>10}{row['bytes'] / 1e6:>10.2f}")
        click.echo(f"read {result['read']} = accepted {result['accepted']} + rejected {result['rejected']}")
        for f in result["files"]:
            if f["status"] != "ok" or f["rejected"]:
                click.echo(f"  {f['file']}: {f['status']}, {f['rejected']} rejected {f['reasons']}"
                           + (f" ({f['error']})" if f["error"] else ""), err=True)
    bad = [f for f in result["files"] if f["status"] == "unreadable"]
    for f in bad:
        click.echo(f"error: cannot read {f['file']}: {f['error']}", err=True)
    if bad:
        sys.exit(1)
