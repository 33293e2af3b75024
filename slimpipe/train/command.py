"""``slimpipe train MIX_DIR --model PRESET -o RUN``: train one model on one mix and measure it."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import click

from slimpipe.options import argument, command_options, option, values_of
from slimpipe.units import parse_count

if TYPE_CHECKING:  # torch-free at import: --help stays fast
    from slimpipe.train.plan import TrainConfig


def _count(text: str | None) -> int | None:
    """``--tokens``: ``"131072"``, ``"2.2e9"``, ``"500M"``, ``"2B"`` -> int (:func:`slimpipe.units.parse_count`)."""
    if text is None:
        return None
    try:
        return parse_count(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--tokens") from exc


def _mix_location(value: str | None) -> str | None:
    """MIX_DIR: a local folder that exists, or a URI (s3://, gs://, ...) the trainer caches locally."""
    from slimpipe import storage

    if value and storage.missing_local_dir(value):
        raise click.BadParameter(f"{value!r}: no such folder", param_hint="MIX_DIR")
    return value


@contextlib.contextmanager
def _staged_run(output: str, resume: bool) -> Iterator[str]:
    """RUN itself when local. For a URI (s3://, gs://, ...): a local staging folder (with the remote run
    downloaded first under --resume), uploaded to the URI when training succeeds, metrics.json last so
    its presence means the run is complete there. A failed run uploads nothing."""
    from slimpipe import storage

    if storage.local_path(output) is not None:  # trained in place
        yield output
        return
    with tempfile.TemporaryDirectory(prefix="slimpipe-run-") as tmp:
        local = Path(tmp) / "run"
        local.mkdir()
        if resume:
            storage.download_tree(output, local)
            (local / "_slimpipe.json").unlink(missing_ok=True)  # the RUN's claim stays where it is
        yield str(local)
        metrics = local / "metrics.json"
        data = metrics.read_bytes() if metrics.exists() else None
        metrics.unlink(missing_ok=True)
        storage.upload_tree(local, output)
        if data is not None:
            storage.write_bytes_atomic(storage.join(output, "metrics.json"), data)


@dataclass(frozen=True, kw_only=True)
class TrainCommand:
    """``slimpipe train``'s arguments and options."""

    mix_dir: str | None = argument(required=False, callback=lambda ctx, param, v: _mix_location(v))
    model: str = option("--model", default="tiny", show_default=True,
                        help="Preset (tiny, 111m, 256m, 590m, 1.3b) or a YAML file shaped like conf/models/*.yaml.")
    output: str = option("-o", "--output", required=True, type=click.Path(file_okay=False), help="Run directory.")
    max_steps: int | None = option("--max-steps", type=int,
                                   help="Optimizer steps (overrides --tokens and the preset budget).")
    tokens: str | None = option("--tokens", help="Training tokens, e.g. 2e6 or 500M (default: the preset's budget).")
    eval_interval: int = option("--eval-interval", type=int, default=50, show_default=True,
                                help="Steps between evaluations.")
    eval_sequences: int = option("--eval-sequences", type=int, default=64, show_default=True,
                                 help="Sequences per source at interval evaluations (the final one uses all).")
    seed: int = option("--seed", type=int, default=1337, show_default=True, help="Seed of initialisation and data order.")
    lr: float | None = option("--lr", type=float, help="Peak learning rate (default: the preset's).")
    schedule: str | None = option("--schedule", type=click.Choice(["linear", "cosine"]),
                                  help="linear: decay to zero (default); cosine: to 10%.")
    warmup_steps: int | None = option("--warmup-steps", type=int,
                                      help="Default: the preset's warmup fraction of all steps.")
    batch_size: int | None = option("--batch-size", type=int, help="Global batch in sequences (default: the preset's).")
    micro_batch: int | None = option("--micro-batch", type=int,
                                     help="Sequences per forward pass; accumulation makes up the batch.")
    seq_len: int | None = option("--seq-len", type=int,
                                 help="Context length; must divide the mix's packed sequence length.")
    attention: str | None = option("--attention", type=click.Choice(["auto", "sdpa", "flex", "flash"]),
                                   help="ALiBi attention kernel. auto (default): flash-attn if installed, else "
                                        "FlexAttention on CUDA; SDPA on CPU.")
    mup: bool | None = option("--mup/--no-mup", default=None,
                              help="Cerebras-GPT-muP parametrisation (default: the preset's); the peak LR is then "
                                   "muP's base LR (6e-3, the model config's mup_base_lr) unless --lr is given.")
    checkpoint_interval: int | None = option("--checkpoint-interval", type=int,
                                             help="Also checkpoint every N steps (default: only by "
                                                  "--checkpoint-minutes and at the end).")
    checkpoint_minutes: float = option("--checkpoint-minutes", type=float, default=30.0, show_default=True,
                                       help="Wall-clock minutes between (sharded, asynchronous) checkpoints; 0 turns "
                                            "the timer off.")
    parallel: str = option("--parallel", type=click.Choice(["ddp", "fsdp"]), default="ddp", show_default=True,
                           help="With several workers: DDP, or FSDP2 (sharded bf16 parameters, fp32 gradient reduction).")
    activation_checkpointing: bool = option("--activation-checkpointing", is_flag=True,
                                            help="Recompute each block's activations in the backward pass (less "
                                                 "memory, ~30% more compute).")
    device: str | None = option("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available).")
    ray_address: str | None = option("--ray-address", help="Run on this Ray cluster through Ray Train (DDP).")
    num_workers: int = option("--num-workers", type=int, default=1, show_default=True,
                              help="Ray Train workers (more than one starts a local Ray if no --ray-address).")
    cpus_per_worker: int | None = option("--cpus-per-worker", type=int, help="CPUs (and torch threads) per Ray worker.")
    use_gpu: bool = option("--use-gpu", is_flag=True, help="One GPU per Ray worker (or CUDA locally).")
    resume: bool = option("--resume", is_flag=True, help="Continue from the latest checkpoint in the run directory.")
    compile_: bool | None = option("--compile/--no-compile", default=None,
                                   help="torch.compile (default: on CUDA only).")
    threads: int | None = option("--threads", type=int, help="torch CPU threads for a local run (default: torch's choice).")
    phases_file: str | None = option("--phases", type=click.Path(exists=True, dir_okay=False),
                                     help="YAML list of phases {mix, tokens or steps, seq_len, train: all|embeddings} "
                                          "trained in order under one LR schedule (instead of MIX_DIR).")
    init_from: str | None = option("--init-from", type=click.Path(exists=True, file_okay=False),
                                   help="Continual pretraining: start from this run's final checkpoint (fresh "
                                        "optimizer and schedule).")
    eval_seq_lens: str | None = option("--eval-seq-lens",
                                       help="Also report final per-source bits per byte at these context lengths, "
                                            "with and without ALiBi slope interpolation, e.g. 128,256,512.")
    force: bool = option("--force", is_flag=True, help="Write into a non-empty RUN folder that is not a slimpipe "
                                                       "output (refused if a file there would be overwritten).")

    def config(self, mix_dir: str | None, phases: list[dict] | None, eval_seq_lens: list[int] | None) -> TrainConfig:
        """The library's :class:`~slimpipe.train.plan.TrainConfig`: every option named like one of its fields,
        plus MIX_DIR, phases and context lengths as :func:`~slimpipe.train.phases.recipe_inputs` read them,
        the parsed --tokens, RUN as ``out_dir`` and --compile as ``compile``. Imports torch."""
        from slimpipe.train.plan import TrainConfig

        names = {f.name for f in dataclasses.fields(TrainConfig)}
        same = {k: v for k, v in values_of(self).items() if k in names}
        return TrainConfig(**{**same, "mix_dir": mix_dir, "phases": phases, "eval_seq_lens": eval_seq_lens,
                              "tokens": _count(self.tokens), "out_dir": self.output, "compile": self.compile_})


@click.command(name="train")
@command_options(TrainCommand)
def train_command(opts: TrainCommand) -> None:
    """Train the --model preset (tiny by default) on MIX_DIR, evaluating loss and bits per byte on each
    source's held-out set.

    Writes RUN/train_log.jsonl, RUN/eval_log.jsonl, RUN/metrics.json, RUN/checkpoints/ and RUN/model/.
    """
    from slimpipe.train.launch import launch  # torch is imported here, not at import: --help stays fast

    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from slimpipe.train.phases import recipe_inputs

    try:
        mix_dir, phases, seq_lens = recipe_inputs(opts.mix_dir, opts.phases_file, opts.eval_seq_lens)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    cfg, output, resume = opts.config(mix_dir, phases, seq_lens), opts.output, opts.resume
    from slimpipe.outdir import claim

    claim(output, "train", "run", sources=[mix_dir] if mix_dir else [], force=opts.force)  # never into the mix or a user's folder
    with _staged_run(output, resume) as local_run:  # a URI RUN trains in a local folder, uploaded at the end
        cfg.out_dir = local_run
        try:
            metrics = launch(cfg, ray_address=opts.ray_address, num_workers=opts.num_workers, use_gpu=opts.use_gpu,
                             cpus_per_worker=opts.cpus_per_worker)
        except (FileExistsError, ValueError) as exc:
            raise click.ClickException(str(exc)) from exc
    docs = metrics.get("eval_docs") or {}
    ev = docs if docs.get("sources") else metrics["eval"]  # per document: the figure compare reports
    click.echo(f"{metrics['preset']}: {metrics['n_params'] / 1e6:.2f}M params, {metrics['steps']} steps, "
               f"{metrics['tokens']:,} tokens, {metrics['throughput']['tokens_per_s'] or 0:,.0f} tokens/s")
    click.echo("evaluation, " + ("each document scored on its own (the figures compare reports)" if ev is docs
                                 else "packed windows (documents cut at window edges)") + ":")
    click.echo(f"{'source':<16}{'loss':>9}{'bpb':>9}{'tokens':>12}")
    for name, s in ev["sources"].items():
        click.echo(f"{name:<16}{s['loss']:>9.4f}{s['bpb']:>9.4f}{s['tokens']:>12,}")
    if ev["total"]:
        click.echo(f"{'total':<16}{ev['total']['loss']:>9.4f}{ev['total']['bpb']:>9.4f}{ev['total']['tokens']:>12,}")
    from slimpipe.train.phases import recipe_summary

    for line in recipe_summary(metrics):
        click.echo(line)
    click.echo(f"wrote {output}/metrics.json")
