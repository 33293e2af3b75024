"""Validate `slimpipe propose` on a real corpus, judged on documents it never saw, and check transfer.

    .venv/bin/python benchmarks/bench_propose.py [--corpus DIR] [--proxies 12] [--tokens 65536] [--seeds 3]
                                                 [--transfer 8] [--scale 4]

Steps: SlimPajama (global dedup) on the corpus → `propose` (K proxies, the declared objective; proxies, fit
and search see the selection half of the evaluation documents; the proposal, natural, DC-6 and the best
proxy are trained with --seeds seeds and compared on the confirmation half, with seed-aware intervals from
`slimpipe.report.stats.difference`) → **transfer**: --transfer unseen mixtures (fresh Dirichlet draws, none
a proxy) trained at proxy size and at --scale x the parameters and --scale x the tokens; the rank
correlation (with its Fisher-z interval) of their confirmation-half objective between the two scales, and
of the fit's predictions against the larger runs when the fit predicts.

The last line is the headline: proposed − natural and proposed − DC-6 on the confirmation half with their
intervals, and the transfer rank correlation with its interval, whatever they are.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from _common import DEFAULT_CORPUS, ROOT, WORK, fmt, loadavg, machine_line, publish, table

sys.path.insert(0, str(ROOT))


def _invoke(cmd, args: list) -> None:
    try:
        cmd.main(args=[str(a) for a in args], standalone_mode=False)
    except SystemExit as exc:
        if exc.code not in (0, None):
            raise


def _larger_preset(base: str, scale: float, work: Path, vocab: int) -> tuple[Path, int, int]:
    """A YAML preset with about ``scale`` x the base preset's parameters (at the mix's vocabulary): the
    base widened by sqrt(scale) (rounded to a multiple of 64), layers added until the count is reached."""
    import dataclasses

    from slimpipe.train.model import count_params_meta, swiglu_width
    from slimpipe.train.presets import load_preset

    p = load_preset(base)
    cfg = dataclasses.replace(p.model, vocab_size=vocab)
    n0 = count_params_meta(cfg)
    d = max(64, int(round(cfg.d_model * scale ** 0.5 / 64)) * 64)
    best = None
    for layers in range(1, 4 * cfg.n_layer + 1):
        c = dataclasses.replace(cfg, d_model=d, d_ff=swiglu_width(d), n_layer=layers)
        n = count_params_meta(c)
        if best is None or abs(n / n0 - scale) < abs(best[1] / n0 - scale):
            best = (c, n)
    c, n = best
    text = p.path.read_text()
    for key, val in (("n_layer", c.n_layer), ("d_model", c.d_model), ("d_ff", c.d_ff)):
        lines = [ln if not ln.strip().startswith(f"{key}:") else f"  {key}: {val}" for ln in text.splitlines()]
        text = "\n".join(lines) + "\n"
    text = text.replace(f"name: {p.name}", f"name: {p.name}-x{scale:g}")
    out = work / f"{p.name}-x{scale:g}.yaml"
    out.write_text(text)
    return out, n0, n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    ap.add_argument("--proxies", type=int, default=12)
    ap.add_argument("--tokens", type=int, default=65_536, help="training tokens of every proxy and every run")
    ap.add_argument("--seeds", type=int, default=3, help="seeds of each confirmation run")
    ap.add_argument("--objective", default="natural")
    ap.add_argument("--max-epochs", type=float, default=4.0)
    ap.add_argument("--transfer", type=int, default=8, help="unseen mixtures of the transfer check (>= 8)")
    ap.add_argument("--scale", type=float, default=4.0, help="parameters and tokens of the larger runs, x proxy")
    ap.add_argument("--work", type=Path, default=WORK / "propose")
    ap.add_argument("--no-append", action="store_true")
    args = ap.parse_args()
    if not args.corpus.is_dir():
        raise SystemExit(f"corpus not found: {args.corpus}")

    import numpy as np

    from slimpipe.engine import ensure_ray
    from slimpipe.pipeline.command import slimpajama_command
    from slimpipe.propose import halves as H
    from slimpipe.propose.fit import bootstrap_predictions, spearman, spearman_ci
    from slimpipe.propose.job import ProposeOptions, _build, _train_all, run_propose
    from slimpipe.propose.sample import draw_mixtures
    from slimpipe.train.evaluate import load_document_losses

    ensure_ray()
    load_start = loadavg()
    t0 = time.perf_counter()
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    sp = work / "slimpajama"
    if not (sp / "manifest.json").exists():
        _invoke(slimpajama_command, [args.corpus, "-o", sp, "--mode", "global", "--holdout-fraction", "0.05",
                                     "--chunks", "2", "--shard-mb", "4", "--quiet"])
    t_data = time.perf_counter() - t0
    opt = ProposeOptions(proxies=args.proxies, tokens=args.tokens, max_epochs=args.max_epochs, quiet=True,
                         objective=args.objective, confirm_seeds=args.seeds,
                         warn=lambda m: print(f"warning: {m}", file=sys.stderr))
    prop = run_propose(sp, work / "propose", opt)
    t_prop = time.perf_counter() - t0 - t_data
    conf = prop["confirmation"]
    comps = conf["comparisons"]

    # transfer: unseen mixtures at proxy size and at scale x parameters and tokens
    present, targets = prop["sources"], prop["targets"]
    weights = prop["objective"]["weights"]
    seen = [px["shares"] for px in prop["proxies"]]
    unseen = [m for m in draw_mixtures(prop["available_tokens"], prop["target_tokens"], 4 * args.transfer,
                                       max_epochs=args.max_epochs, seed=10_000 + opt.seed)
              if not any(all(abs(m[s] - x.get(s, 0)) < 1e-9 for s in present) for x in seen)][: args.transfer]
    probe = Path(prop["tokenizer"])
    vocab = json.loads((probe / "manifest.json").read_text()).get("tokenizer", {}).get("vocab_size") or opt.vocab_size
    big, n_small, n_big = _larger_preset(opt.model, args.scale, work, int(vocab))
    big_tokens = int(args.scale * args.tokens)
    jobs, dirs = [], []
    for k, shares in enumerate(unseen):
        d = work / "transfer" / "mixes" / f"u{k:02d}"
        _build(sp, shares, f"unseen-{k:02d}", d, opt, prop["tokenizer"])
        dirs.append(d)
        for tag, model, tokens in (("small", opt.model, args.tokens), ("large", str(big), big_tokens)):
            run = work / "transfer" / "runs" / f"u{k:02d}-{tag}"
            if not (run / "metrics.json").exists():
                # the larger mix is the same mixture at scale x the tokens: its training set is built bigger
                jobs.append((str(d if tag == "small" else _scaled_mix(sp, shares, k, opt, prop, big_tokens, work)),
                             str(run), model, tokens, opt.seed, "cpu"))
    t1 = time.perf_counter()
    results = _train_all(jobs, use_gpu=False, quiet=True) if jobs else []
    bad = [j[1] for j, r in zip(jobs, results, strict=True) if not r["ok"]]
    t_transfer = time.perf_counter() - t1
    split = H.Split(H.eval_document_ids(probe, sp / "eval"))

    def objective(run: Path) -> float | None:
        f = run / "eval_losses.npz"
        if not f.is_file():
            return None
        c = H.half_losses(load_document_losses(f)[0], split, H.CONFIRMATION, targets)
        return sum(weights[s] * v for s, v in H.bpb(c).items())

    small = [objective(work / "transfer" / "runs" / f"u{k:02d}-small") for k in range(len(unseen))]
    large = [objective(work / "transfer" / "runs" / f"u{k:02d}-large") for k in range(len(unseen))]
    okk = [k for k in range(len(unseen)) if small[k] is not None and large[k] is not None]
    rho = spearman(np.array([small[k] for k in okk]), np.array([large[k] for k in okk]))
    rlo, rhi = spearman_ci(rho, len(okk))
    rho_fit = None
    if prop["status"] == "proposed":  # the fit's own ranking of the unseen mixtures, refit here as propose did
        sel = [px for px in prop["proxies"] if px["ok"]]
        X = np.array([[px["point"][d] for d in prop["dims"]] for px in sel])
        Y = np.array([[px["bpb"][s] for s in targets] for px in sel])
        at = np.array([[unseen[k][d] for d in prop["dims"]] for k in okk])
        boot = bootstrap_predictions(prop["chosen"], X, Y, at, n_boot=20, seed=opt.seed)
        pred = np.median(boot, axis=0) @ np.array([weights[s] for s in targets])
        rho_fit = spearman(pred, np.array([large[k] for k in okk]))
    fl, fh = spearman_ci(rho_fit, len(okk)) if rho_fit is not None else (float("nan"), float("nan"))

    def cmp_txt(c: dict) -> str:
        if c.get("diff") is None:
            return f"not measured ({c.get('note')})"
        if not c.get("ci95"):
            return f"{c['diff']:+.4f} ({c.get('note', 'no interval')})"
        lo, hi = c["ci95"]
        return f"{c['diff']:+.4f} [{lo:+.4f}, {hi:+.4f}]"

    head = [f"Machine: {machine_line()}  ", f"Load average at start: {load_start}; at end: {loadavg()}  ",
            f"Corpus: {args.corpus}; proxies {args.proxies} x {args.tokens:,} tokens ({opt.model}, {n_small:,} "
            f"parameters); confirmation: 4 mixes x {args.seeds} seeds; transfer: {len(unseen)} unseen mixtures at "
            f"{args.tokens:,} tokens / {n_small:,} parameters and {big_tokens:,} tokens / {n_big:,} parameters "
            f"({n_big / n_small:.2f}x)", f"Objective: {prop['objective']['description']}  ",
            f"Status: {prop['status']}" + (" — " + "; ".join(prop["why_not_predicting"])
                                           if prop["why_not_predicting"] else ""), ""]
    sec1 = table(["mix", "realised objective, confirmation half", "predicted (selection half)"],
                 [[n, fmt(v, ".4f"), fmt((prop["predicted"].get(n) or {}).get("objective"), ".4f")]
                  for n, v in conf["realised"].items()])
    sec2 = table(["comparison (confirmation half)", "diff [95% CI]", "seeds", "interval"],
                 [[f"proposed − {r}", cmp_txt(comps[r]), str(comps[r].get("seeds")),
                   "seed-aware" if comps[r].get("claim_ok") else "conditional / none"] for r in comps])
    sec3 = table(["fit", "held-out Spearman", "95% interval", "objective RMSE"],
                 [[r["family"] + (" (chosen)" if r["family"] == prop["chosen"] else ""), fmt(r["spearman"], ".3f"),
                   f"[{r['spearman_ci95'][0]:.2f}, {r['spearman_ci95'][1]:.2f}]", fmt(r["rmse_objective"], ".4f")]
                  for r in [*prop["cv"], prop["nested_cv"]]])
    sec4 = table(["unseen", "objective small", "objective large"],
                 [[f"u{k:02d}", fmt(small[k], ".4f"), fmt(large[k], ".4f")] for k in range(len(unseen))])
    sec5 = table(["stage", "seconds"], [["SlimPajama pipeline", fmt(t_data, ".0f")],
                                        ["propose (proxies, fit, confirmation runs)", fmt(t_prop, ".0f")],
                                        ["transfer runs", fmt(t_transfer, ".0f")]])
    notes = [f"split: {prop['split']['method']}; selection set {prop['split']['selection_set'][:12]}, confirmation "
             f"set {prop['split']['confirmation_set'][:12]}; documents per half: "
             + ", ".join(f"{s} {c['selection']}/{c['confirmation']}" for s, c in prop["split"]["documents"].items()),
             f"interval method: {conf['interval_method']}",
             f"transfer, proxy-size ranking vs {args.scale:g}x runs: Spearman {rho:.3f} [{rlo:.2f}, {rhi:.2f}] over "
             f"{len(okk)} unseen mixtures" + (f" ({len(bad)} runs failed: {bad})" if bad else ""),
             "transfer, the fit's predicted ranking vs the larger runs: "
             + (f"Spearman {rho_fit:.3f} [{fl:.2f}, {fh:.2f}]" if rho_fit is not None else "no fit (not predicting)")]
    headline = (f"HEADLINE: {prop['status']}; confirmation half, {args.seeds} seeds: proposed − natural "
                f"{cmp_txt(comps['natural'])}, proposed − DC-6 {cmp_txt(comps['dc6'])}; transfer to {args.scale:g}x "
                f"params+tokens: Spearman {rho:.3f} [{rlo:.2f}, {rhi:.2f}] over {len(okk)} unseen mixtures")
    publish("bench_propose", head, [sec1, sec2, sec3, sec4, sec5], notes, headline, append=not args.no_append)


def _scaled_mix(sp: Path, shares: dict, k: int, opt, prop: dict, tokens: int, work: Path) -> Path:
    """The same mixture built at the larger run's token budget (same tokenizer and evaluation sets)."""
    import dataclasses

    from slimpipe.propose.job import _build

    d = work / "transfer" / "mixes" / f"u{k:02d}-large"
    _build(sp, shares, f"unseen-{k:02d}-large", d, dataclasses.replace(opt, tokens=tokens), prop["tokenizer"])
    return d


if __name__ == "__main__":
    main()
