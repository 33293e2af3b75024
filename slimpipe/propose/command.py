"""``slimpipe propose SLIMPAJAMA_DIR -o OUT``: learn the next mix from proxy runs (RegMix / Data Mixing
Laws), score it against DC-6 and the natural mix, and write it as a mix file."""

from __future__ import annotations

from pathlib import Path

import click

from slimpipe.mix.command import TokenCount


@click.command("propose")
@click.argument("slimpajama_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("-o", "--output", "out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output folder: proposed.yaml, report.md, plots, the proxies' mixes and runs.")
@click.option("--proxies", default=16, show_default=True, type=click.IntRange(min=4),
              help="Proxy mixtures to train (the natural mix and DC-6 are among them).")
@click.option("--tokens", default="131072", show_default=True, type=TokenCount(),
              help="Training tokens of each proxy (also each proxy mix's budget).")
@click.option("--model", default="tiny", show_default=True, help="Proxy model preset or YAML.")
@click.option("--objective", default="natural", show_default=True,
              help="Declared before the search: natural (bits per byte weighted by the corpus's own token shares), "
                   "uniform (mean over sources), total (pooled), a weights file (.yaml/.json: source: weight) or "
                   "'wikipedia=2,c4=1'.")
@click.option("--target-tokens", default=None, type=TokenCount(),
              help="Training tokens of the run the proposal is for: --max-epochs bounds repetition at this budget "
                   "(default: the proxies' --tokens).")
@click.option("--confirm-seeds", default=3, show_default=True, type=click.IntRange(min=1),
              help="Seeds of each confirmation run (the proposal, natural, DC-6, the best proxy), scored on the "
                   "confirmation half; fewer than 3 makes every verdict conditional on the trained models.")
@click.option("--average-top", default=16, show_default=True, type=click.IntRange(min=1),
              help="The proposal is the mean of the fit's top-k candidates (RegMix); 1 = the single optimum.")
@click.option("--max-epochs", default=4.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="No source may repeat more than this many epochs of what it has, in any proxy or the proposal.")
@click.option("--concentration", default=1.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Dirichlet concentration per source around the natural shares (1 = RegMix's spread).")
@click.option("--tokenizer", default="train", show_default=True,
              help="train (byte-level BPE on the data, shared by every proxy), gpt2, or a tokenizer/mix folder.")
@click.option("--vocab-size", default=4096, show_default=True, type=click.IntRange(min=257),
              help="Vocabulary of --tokenizer train.")
@click.option("--seq-len", default=128, show_default=True, type=click.IntRange(min=8),
              help="Packed sequence length of the proxy mixes (the proxy model's context).")
@click.option("--eval-tokens", default="32k", show_default=True, type=TokenCount(allow_zero=True),
              help="Evaluation tokens per source (the same sequences score every proxy).")
@click.option("--bootstrap", default=100, show_default=True, type=click.IntRange(min=10),
              help="Bootstrap refits for the proposal's interval.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seeds the draws, the proxies and the fit.")
@click.option("--reuse", "reuse", default=None, type=click.Path(file_okay=False, path_type=Path),
              help="A previous propose output: keep its mix for the unchanged sources as one composite domain and "
                   "train proxies only over it and the added or changed sources (Olmix's mixture reuse).")
@click.option("--reuse-tolerance", default=0.01, show_default=True, type=click.FloatRange(min=0),
              help="With --reuse: a source whose train documents or bytes (index.json) moved by more than this "
                   "fraction counts as changed (0: any difference).")
@click.option("--ray-address", default=None, help="Attach to a Ray cluster (default: a private local one).")
@click.option("-q", "--quiet", is_flag=True, help="No progress output.")
def propose_command(slimpajama_dir: Path, out: Path, proxies: int, tokens: int, model: str, objective: str,
                    target_tokens: int | None, confirm_seeds: int, average_top: int, max_epochs: float, concentration: float, tokenizer: str, vocab_size: int, seq_len: int,
                    eval_tokens: int, bootstrap: int, seed: int, reuse: Path | None, reuse_tolerance: float,
                    ray_address: str | None, quiet: bool) -> None:
    """Train PROXIES small models on Dirichlet mixtures of SLIMPAJAMA_DIR, fit per-source bits per byte
    against the weights, and propose the mix that minimises --objective within --max-epochs."""
    from slimpipe.propose.job import ProposeOptions, run_propose
    from slimpipe.propose.optimize import check_objective_spec
    from slimpipe.propose.sample import ProposalError

    try:  # spelling and the weights file before any work; source names are checked against the data later
        check_objective_spec(objective)
    except ProposalError as exc:
        raise click.BadParameter(str(exc), param_hint="--objective") from None

    def warn(msg: str) -> None:
        click.echo(f"warning: {msg}", err=True)

    opt = ProposeOptions(proxies=proxies, tokens=tokens, model=model, objective=objective, seed=seed,
                         target_tokens=target_tokens, confirm_seeds=confirm_seeds, average_top=average_top,
                         max_epochs=max_epochs, concentration=concentration, tokenizer=tokenizer,
                         vocab_size=vocab_size, seq_len=seq_len, eval_tokens=eval_tokens, bootstrap=bootstrap,
                         ray_address=ray_address, reuse=str(reuse) if reuse else None,
                         reuse_tolerance=reuse_tolerance, quiet=quiet, warn=warn)
    try:
        p = run_propose(slimpajama_dir, out, opt)
    except ProposalError as exc:
        raise click.ClickException(str(exc)) from None
    from slimpipe.propose.report import headline_lines

    for line in headline_lines(p):  # the report's first lines, the same numbers
        click.echo(line)
    label = "proposed" if p["status"] == "proposed" else f"best proxy {p['best_proxy']}"
    click.echo(f"{label}: " + ", ".join(f"{s} {v:.2f}%" for s, v in p["weights_pct"].items() if v > 0))
    if pred := p["predicted"].get("proposed"):
        click.echo(f"predicted on the selection half: {pred['objective']:.4f} "
                   f"[{pred['objective_ci95'][0]:.4f}, {pred['objective_ci95'][1]:.4f}]; fit {p['chosen']}, "
                   f"held-out Spearman {next(r['spearman'] for r in p['cv'] if r['family'] == p['chosen']):.3f}")
    if r := p.get("reuse"):
        click.echo(f"reused {reuse}'s mix for {len(r['unchanged'])} unchanged sources; trained {r['proxies_trained']} "
                   f"proxies, reused {len(r['proxies_reused'])}; a full recompute trains {r['proxies_full_recompute']} "
                   f"({r['compute_saved']:.0%} saved)")
    click.echo(f"wrote {out / 'proposed.yaml'}, {out / 'report.md'} and {out / 'report.json'}")
