"""``slimpipe train MIX_DIR --model PRESET -o RUN``: train one model on one mix and measure it."""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path

import click

from slimpipe.units import parse_count


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


@click.command(name="train")
@click.argument("mix_dir", required=False, callback=lambda ctx, param, v: _mix_location(v))
@click.option("--model", "model", default="tiny", show_default=True,
              help="Preset (tiny, 111m, 256m, 590m, 1.3b) or a YAML file shaped like conf/models/*.yaml.")
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False), help="Run directory.")
@click.option("--max-steps", type=int, help="Optimizer steps (overrides --tokens and the preset budget).")
@click.option("--tokens", help="Training tokens, e.g. 2e6 or 500M (default: the preset's budget).")
@click.option("--eval-interval", type=int, default=50, show_default=True, help="Steps between evaluations.")
@click.option("--eval-sequences", type=int, default=64, show_default=True,
              help="Sequences per source at interval evaluations (the final one uses all).")
@click.option("--seed", type=int, default=1337, show_default=True, help="Seed of initialisation and data order.")
@click.option("--lr", type=float, help="Peak learning rate (default: the preset's).")
@click.option("--schedule", type=click.Choice(["linear", "cosine"]),
              help="linear: decay to zero (default); cosine: to 10%.")
@click.option("--warmup-steps", type=int, help="Default: the preset's warmup fraction of all steps.")
@click.option("--batch-size", type=int, help="Global batch in sequences (default: the preset's).")
@click.option("--micro-batch", type=int, help="Sequences per forward pass; accumulation makes up the batch.")
@click.option("--seq-len", type=int, help="Context length; must divide the mix's packed sequence length.")
@click.option("--attention", type=click.Choice(["auto", "sdpa", "flex", "flash"]),
              help="ALiBi attention kernel. auto (default): flash-attn if installed, else FlexAttention on CUDA; "
                   "SDPA on CPU.")
@click.option("--mup/--no-mup", default=None,
              help="Cerebras-GPT-muP parametrisation (default: the preset's); the peak LR is then muP's base LR "
                   "(6e-3, the model config's mup_base_lr) unless --lr is given.")
@click.option("--checkpoint-interval", type=int,
              help="Also checkpoint every N steps (default: only by --checkpoint-minutes and at the end).")
@click.option("--checkpoint-minutes", type=float, default=30.0, show_default=True,
              help="Wall-clock minutes between (sharded, asynchronous) checkpoints; 0 turns the timer off.")
@click.option("--parallel", type=click.Choice(["ddp", "fsdp"]), default="ddp", show_default=True,
              help="With several workers: DDP, or FSDP2 (sharded bf16 parameters, fp32 gradient reduction).")
@click.option("--activation-checkpointing", is_flag=True,
              help="Recompute each block's activations in the backward pass (less memory, ~30% more compute).")
@click.option("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available).")
@click.option("--ray-address", help="Run on this Ray cluster through Ray Train (DDP).")
@click.option("--num-workers", type=int, default=1, show_default=True,
              help="Ray Train workers (more than one starts a local Ray if no --ray-address).")
@click.option("--cpus-per-worker", type=int, help="CPUs (and torch threads) per Ray worker.")
@click.option("--use-gpu", is_flag=True, help="One GPU per Ray worker (or CUDA locally).")
@click.option("--resume", is_flag=True, help="Continue from the latest checkpoint in the run directory.")
@click.option("--compile/--no-compile", "compile_", default=None, help="torch.compile (default: on CUDA only).")
@click.option("--threads", type=int, help="torch CPU threads for a local run (default: torch's choice).")
@click.option("--phases", "phases_file", type=click.Path(exists=True, dir_okay=False),
              help="YAML list of phases {mix, tokens or steps, seq_len, train: all|embeddings} trained in order "
                   "under one LR schedule (instead of MIX_DIR).")
@click.option("--init-from", type=click.Path(exists=True, file_okay=False),
              help="Continual pretraining: start from this run's final checkpoint (fresh optimizer and schedule).")
@click.option("--eval-seq-lens", help="Also report final per-source bits per byte at these context lengths, "
                                      "with and without ALiBi slope interpolation, e.g. 128,256,512.")
@click.option("--force", is_flag=True, help="Write into a non-empty RUN folder that is not a slimpipe output "
                                            "(refused if a file there would be overwritten).")
def train_command(mix_dir: str | None, model: str, output: str, max_steps: int | None, tokens: str | None,
                  eval_interval: int, eval_sequences: int, seed: int, lr: float | None, schedule: str | None,
                  warmup_steps: int | None, batch_size: int | None, micro_batch: int | None,
                  seq_len: int | None, attention: str | None, mup: bool | None,
                  checkpoint_interval: int | None, checkpoint_minutes: float, parallel: str,
                  activation_checkpointing: bool, device: str | None, ray_address: str | None,
                  num_workers: int, cpus_per_worker: int | None, use_gpu: bool, resume: bool,
                  compile_: bool | None, threads: int | None, phases_file: str | None = None,
                  init_from: str | None = None, eval_seq_lens: str | None = None, force: bool = False) -> None:
    """Train the --model preset (tiny by default) on MIX_DIR, evaluating loss and bits per byte on each
    source's held-out set.

    Writes RUN/train_log.jsonl, RUN/eval_log.jsonl, RUN/metrics.json, RUN/checkpoints/ and RUN/model/.
    """
    from slimpipe.train.launch import launch
    from slimpipe.train.plan import TrainConfig  # torch is imported here, not at import: --help stays fast

    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from slimpipe.train.phases import recipe_inputs

    try:
        mix_dir, phases, seq_lens = recipe_inputs(mix_dir, phases_file, eval_seq_lens)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    cfg = TrainConfig(mix_dir=mix_dir, out_dir=output, model=model, max_steps=max_steps, tokens=_count(tokens),
                      eval_interval=eval_interval, eval_sequences=eval_sequences, seed=seed, lr=lr,
                      schedule=schedule, warmup_steps=warmup_steps, batch_size=batch_size, micro_batch=micro_batch,
                      seq_len=seq_len, attention=attention, mup=mup, checkpoint_interval=checkpoint_interval,
                      checkpoint_minutes=checkpoint_minutes, parallel=parallel,
                      activation_checkpointing=activation_checkpointing,
                      device=device, resume=resume, compile=compile_, threads=threads,
                      phases=phases, init_from=init_from, eval_seq_lens=seq_lens)
    from slimpipe.outdir import claim

    claim(output, "train", "run", sources=[mix_dir] if mix_dir else [], force=force)  # never into the mix or a user's folder
    with _staged_run(output, resume) as local_run:  # a URI RUN trains in a local folder, uploaded at the end
        cfg.out_dir = local_run
        try:
            metrics = launch(cfg, ray_address=ray_address, num_workers=num_workers, use_gpu=use_gpu,
                             cpus_per_worker=cpus_per_worker)
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
