"""``slimpipe propose SLIMPAJAMA_DIR -o OUT``: learn the next mix from proxy runs (RegMix / Data Mixing
Laws), score it against DC-6 and the natural mix, and write it as a mix file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import click

from slimpipe.mix.command import TokenCount
from slimpipe.options import argument, command_options, option, values_of


@dataclass(frozen=True, kw_only=True)
class ProposeCommand:
    """``slimpipe propose``'s arguments and options (all but the first two are fields of
    :class:`~slimpipe.propose.job.ProposeOptions`)."""

    slimpajama_dir: Path = argument(type=click.Path(exists=True, file_okay=False, path_type=Path))
    out: Path = option("-o", "--output", required=True, type=click.Path(file_okay=False, path_type=Path),
                       help="Output folder: proposed.yaml, report.md, plots, the proxies' mixes and runs.")
    proxies: int = option("--proxies", default=16, show_default=True, type=click.IntRange(min=4),
                          help="Proxy mixtures to train (the natural mix and DC-6 are among them).")
    tokens: int = option("--tokens", default="131072", show_default=True, type=TokenCount(),
                         help="Training tokens of each proxy (also each proxy mix's budget).")
    model: str = option("--model", default="tiny", show_default=True, help="Proxy model preset or YAML.")
    objective: str = option("--objective", default="natural", show_default=True,
                            help="Declared before the search: natural (bits per byte weighted by the corpus's own token "
                                 "shares), uniform (mean over sources), total (pooled), a weights file (.yaml/.json: "
                                 "source: weight) or 'wikipedia=2,c4=1'.")
    target_tokens: int | None = option("--target-tokens", default=None, type=TokenCount(),
                                       help="Training tokens of the run the proposal is for: --max-epochs bounds "
                                            "repetition at this budget (default: the proxies' --tokens).")
    confirm_seeds: int = option("--confirm-seeds", default=3, show_default=True, type=click.IntRange(min=1),
                                help="Seeds of each confirmation run (the proposal, natural, DC-6, the best proxy), "
                                     "scored on the confirmation half; fewer than 3 makes every verdict conditional on "
                                     "the trained models.")
    average_top: int = option("--average-top", default=16, show_default=True, type=click.IntRange(min=1),
                              help="The proposal is the mean of the fit's top-k candidates (RegMix); 1 = the single "
                                   "optimum.")
    max_epochs: float = option("--max-epochs", default=4.0, show_default=True,
                               type=click.FloatRange(min=0, min_open=True),
                               help="No source may repeat more than this many epochs of what it has, in any proxy or "
                                    "the proposal.")
    concentration: float = option("--concentration", default=1.0, show_default=True,
                                  type=click.FloatRange(min=0, min_open=True),
                                  help="Dirichlet concentration per source around the natural shares (1 = RegMix's "
                                       "spread).")
    tokenizer: str = option("--tokenizer", default="train", show_default=True,
                            help="train (byte-level BPE on the data, shared by every proxy), gpt2, or a tokenizer/mix "
                                 "folder.")
    vocab_size: int = option("--vocab-size", default=4096, show_default=True, type=click.IntRange(min=257),
                             help="Vocabulary of --tokenizer train.")
    seq_len: int = option("--seq-len", default=128, show_default=True, type=click.IntRange(min=8),
                          help="Packed sequence length of the proxy mixes (the proxy model's context).")
    eval_tokens: int = option("--eval-tokens", default="32k", show_default=True, type=TokenCount(allow_zero=True),
                              help="Evaluation tokens per source (the same sequences score every proxy).")
    bootstrap: int = option("--bootstrap", default=100, show_default=True, type=click.IntRange(min=10),
                            help="Bootstrap refits for the proposal's interval.")
    seed: int = option("--seed", default=0, show_default=True, type=int,
                       help="Seeds the draws, the proxies and the fit.")
    reuse: Path | None = option("--reuse", default=None, type=click.Path(file_okay=False, path_type=Path),
                                help="A previous propose output: keep its mix for the unchanged sources as one "
                                     "composite domain and train proxies only over it and the added or changed sources "
                                     "(Olmix's mixture reuse).")
    reuse_tolerance: float = option("--reuse-tolerance", default=0.01, show_default=True, type=click.FloatRange(min=0),
                                    help="With --reuse: a source whose train documents or bytes (index.json) moved by "
                                         "more than this fraction counts as changed (0: any difference).")
    force: bool = option("--force", is_flag=True,
                         help="Write into a non-empty OUT that is not a slimpipe output (refused if a file there would "
                              "be overwritten; nothing there is ever deleted).")
    ray_address: str | None = option("--ray-address", default=None,
                                     help="Attach to a Ray cluster (default: a private local one).")
    quiet: bool = option("-q", "--quiet", is_flag=True, help="No progress output.")


@click.command("propose")
@command_options(ProposeCommand)
def propose_command(opts: ProposeCommand) -> None:
    """Train PROXIES small models on Dirichlet mixtures of SLIMPAJAMA_DIR, fit per-source bits per byte
    against the weights, and propose the mix that minimises --objective within --max-epochs."""
    from slimpipe.propose.job import ProposeOptions, run_propose
    from slimpipe.propose.optimize import check_objective_spec
    from slimpipe.propose.sample import ProposalError

    slimpajama_dir, out, objective, reuse = opts.slimpajama_dir, opts.out, opts.objective, opts.reuse

    try:  # spelling and the weights file before any work; source names are checked against the data later
        check_objective_spec(objective)
    except ProposalError as exc:
        raise click.BadParameter(str(exc), param_hint="--objective") from None

    def warn(msg: str) -> None:
        click.echo(f"warning: {msg}", err=True)

    rest = {k: v for k, v in values_of(opts).items() if k not in ("slimpajama_dir", "out", "reuse")}
    opt = ProposeOptions(**rest, reuse=str(reuse) if reuse else None, warn=warn)
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
