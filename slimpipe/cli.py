"""The ``slimpipe`` command line: one subcommand per user job (DESIGN.md).

Subcommands live next to the code they drive (``slimpipe/<stage>/command.py``) and are imported only
when invoked, so ``slimpipe --help`` stays fast and a missing optional stage never breaks the others.
"""

from __future__ import annotations

import importlib
import importlib.util

import click

# name -> (module:attribute of a click command, one-line help, issue that builds it)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "sample": ("slimpipe.sample:sample_command", "Write the embedded RedPajama-style sample corpus.", "#2"),
    "inspect": ("slimpipe.io.command:inspect_command", "Read sources and count documents/rejects per source.", "#2"),
    "dedup": ("slimpipe.dedup.command:dedup_command", "MinHash-LSH near-duplicate removal, global or local.", "#3"),
    "slimpajama": ("slimpipe.pipeline.command:slimpajama_command", "RedPajama sources in, SlimPajama shards out.", "#4"),
    "evalset": ("slimpipe.evalset.command:evalset_command", "Draw one evaluation set from raw sources, per source.", "#11"),
    "mix": ("slimpipe.mix.command:mix_command", "Build a SlimPajama-DC (or custom) mix, tokenized and packed.", "#5"),
    "train": ("slimpipe.train.command:train_command", "Train one model on one mix and evaluate it per source.", "#6"),
    "tune": ("slimpipe.train.tune:tune_command", "Sweep LR/init std on muP proxies; write the best as a preset.", "#14"),
    "extend-tokenizer": ("slimpipe.train.continual:extend_tokenizer_command", "Add BPE tokens from new data to a tokenizer.", "#14"),
    "compare": ("slimpipe.report.command:compare_command", "Compare trained runs in one report.", "#7"),
    "propose": ("slimpipe.propose.command:propose_command", "Propose the next mix from proxy runs (RegMix / mixing laws).", "#13"),
    "demo": ("slimpipe.demo:demo_command", "The whole mission end to end on the embedded sample.", "#7"),
    "export": ("slimpipe.evaluation.command:export_command", "Export a run as a Hugging Face transformers folder.", "#11"),
    "eval": ("slimpipe.evaluation.command:eval_command", "Score a run on lm-evaluation-harness tasks.", "#11"),
}


def _not_built(name: str, help_text: str, issue: str) -> click.Command:
    @click.command(name=name, help=f"{help_text} [not built yet: {issue}]",
                   context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
    def _cmd() -> None:
        raise click.ClickException(f"`slimpipe {name}` is not built yet (tracked in issue {issue}).")

    return _cmd


def _load(name: str) -> click.Command:
    target, help_text, issue = COMMANDS[name]
    module_name, attr = target.split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            return _not_built(name, help_text, issue)
        raise
    cmd = getattr(module, attr, None)
    return cmd if isinstance(cmd, click.Command) else _not_built(name, help_text, issue)


def _is_built(name: str) -> bool:
    module_name = COMMANDS[name][0].split(":")[0]
    return importlib.util.find_spec(module_name) is not None


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return _load(cmd_name) if cmd_name in COMMANDS else None

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:  # one line, not click's usage block: "Error: ... (see `slimpipe x -h`)"
            where = exc.ctx.command_path if exc.ctx is not None else "slimpipe"
            raise UsageProblem(f"{' '.join(exc.format_message().split())} (see `{where} -h`)") from exc
        except click.ClickException:
            raise
        except Exception as exc:
            err = _user_error(exc)
            if err is None:
                raise  # a bug: the traceback helps
            if _verbose():
                import traceback

                traceback.print_exc()  # -v: where it came from, then the same one-line error and exit code
            raise err from exc

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = []
        for name, (_, help_text, issue) in COMMANDS.items():
            rows.append((name, help_text if _is_built(name) else f"{help_text} [not built yet: {issue}]"))
        with formatter.section("Commands"):
            formatter.write_dl(rows)


class UsageProblem(click.ClickException):
    """A user error about the command's arguments: one line on stderr, exit code 2."""

    exit_code = 2


def _verbose() -> bool:
    from slimpipe.engine import verbose

    return verbose()


def _user_error(exc: Exception) -> click.ClickException | None:
    """The one-line message for an error the user caused (bad input, output folder, cluster, storage)."""
    from slimpipe.engine import RayConnectError
    from slimpipe.io.readers import InputError

    usage: list[type] = [InputError]
    runtime: list[type] = [RayConnectError, OSError]
    for module, name, kinds in (("slimpipe.outdir", "OutputError", usage),
                                ("slimpipe.storage", "StorageError", runtime)):
        try:
            kinds.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            pass
    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, tuple(usage)):
        return UsageProblem(text)
    if isinstance(exc, tuple(runtime)):
        return click.ClickException(text)
    return None


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="slimpipe")
@click.option("-v", "--verbose", is_flag=True,
              help="Show Ray's start-up lines, worker logs and warnings, and tracebacks of errors.")
def main(verbose: bool) -> None:
    """slimpipe: RedPajama-style sources -> SlimPajama-like shards -> data mixes -> small models -> comparison.

    Without --ray-address or RAY_ADDRESS every command starts its own private Ray on 127.0.0.1; with
    either (or under `ray job submit`) it attaches to that cluster.
    """
    if verbose:
        import logging
        import os

        from slimpipe.engine import VERBOSE_ENV

        os.environ[VERBOSE_ENV] = "1"
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


if __name__ == "__main__":
    main()
