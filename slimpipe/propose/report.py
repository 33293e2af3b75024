"""``OUT/report.md`` and its plots for a proposal: what was trained, how well the fit ranks held-out
proxies, and the proposed weights next to DC-6's and the natural shares."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _fmt_ci(ci: list[float]) -> str:
    return f"[{ci[0]:.4f}, {ci[1]:.4f}]"


def _cmp(label: str, c: dict, seeds: int) -> str:
    if c.get("diff") is None:
        return f"- proposed − {label}: not measured ({c.get('note', 'no runs')})"
    ci = c.get("ci95")
    if not ci:
        return f"- proposed − {label}: {c['diff']:+.4f} bpb ({c.get('note') or 'no interval'})"
    lo, hi = ci
    verdict = ("proposed is better" if hi < 0 else "proposed is worse" if lo > 0 else "no detectable difference")
    if c.get("same_runs"):
        verdict = "the same runs (the proposal is this mix)"
    elif seeds < 3:
        verdict += f", conditional on these trained models ({seeds} seed{'s' if seeds != 1 else ''})"
    return f"- proposed − {label}: {c['diff']:+.4f} bpb, 95% CI [{lo:+.4f}, {hi:+.4f}] → {verdict}"


def headline_lines(p: dict) -> list[str]:
    """The first lines of the report, the terminal and ``report.json["headline"]``: the refusal when the
    fit does not predict, the declared objective, then the proposal against DC-6 and natural (and the best
    proxy), measured on the confirmation half."""
    conf = p.get("confirmation") or {}
    seeds = len(conf.get("seeds") or [])
    lines = []
    if p["status"] != "proposed":
        lines.append("NOT A PROPOSAL: the fit does not predict (" + "; ".join(p["why_not_predicting"])
                     + f"); proposed.yaml is the best proxy actually trained, {p['best_proxy']}, never an "
                     "extrapolation")
    lines.append(f"Objective: {p['objective']['description']}")
    lines.append(f"Measured on the confirmation half ({seeds} seed{'s' if seeds != 1 else ''} per mix; the "
                 "selection half chose the mix):")
    comps = conf.get("comparisons") or {}
    for ref in ("dc6", "natural", "best_proxy"):
        if ref in comps:
            lines.append(_cmp(_LABEL.get(ref, ref), comps[ref], seeds))
    return lines


def write_report(out: Path, p: dict) -> Path:
    plots = _plots(out, p)
    targets, sources = p["targets"], p["sources"]
    pred = p["predicted"]
    lines = ["# Mix proposal", ""] + [ln + "  " for ln in headline_lines(p)] + [""]
    lines += [f"**{'Proposed mix' if p['status'] == 'proposed' else 'Best proxy (no proposal)'}** (`proposed.yaml`, "
              f"use with `slimpipe mix --config {out / 'proposed.yaml'}`): "
              + ", ".join(f"{s} {v:.2f}%" for s, v in p["weights_pct"].items() if v > 0) + ".", ""]
    sp = p["split"]
    counts = sp["documents"]
    lines += [f"Choose on one half, confirm on the other: the evaluation documents are split {sp['method']}. "
              f"Selection set `{sp['selection_set'][:16]}` ("
              + ", ".join(f"{s} {c['selection']}" for s, c in counts.items()) + " documents) scored the proxies, "
              f"the fit and the search; confirmation set `{sp['confirmation_set'][:16]}` ("
              + ", ".join(f"{s} {c['confirmation']}" for s, c in counts.items()) + ") scored everything above.", ""]
    if p.get("left_out"):
        lines += ["Left out of the objective: " + "; ".join(f"{s} ({why})" for s, why in p["left_out"].items()), ""]
    conf = p.get("confirmation") or {}
    if conf.get("realised"):
        lines += ["| mix | realised objective, confirmation half (mean over seeds) | predicted (selection half) |",
                  "|---|---:|---:|"]
        for name, v in conf["realised"].items():
            pr = pred.get(name, {}).get("objective")
            lines.append(f"| {_LABEL.get(name, name)} | {v:.4f} | {'–' if pr is None else f'{pr:.4f}'} |")
        lines += ["", f"Intervals: {conf.get('interval_method')}.", ""]
    if pred:
        lines += [f"Predicted {pred['proposed']['objective']:.4f} on the selection half (95% bootstrap interval "
                  f"over proxies {_fmt_ci(pred['proposed']['objective_ci95'])})."]
    refs = [r for r in pred if r != "proposed"]
    for ref in refs:
        ci = pred[ref]["proposed_minus_this_ci95"]
        label = _LABEL.get(ref, ref)
        lines.append(f"- predicted vs {label}: {pred[ref]['objective']:.4f}; proposed − {label} 95% interval "
                     f"{_fmt_ci(ci)}.")
    nested = p["nested_cv"]
    nlo, nhi = nested["spearman_ci95"]
    chosen = f"**{p['chosen']}** chosen by cross-validation" if p["chosen"] else "no family predicts"
    lines += ["", f"Fit: {chosen}. Nested cross-validation (the family chosen inside each fold, so held-out "
              f"proxies take no part in the choice): Spearman {nested['spearman']:.3f}, 95% interval "
              f"[{nlo:.2f}, {nhi:.2f}], objective error {nested['rmse_objective']:.4f} bpb against a spread of "
              f"the proxies' own results of {p['spread']:.4f}.", ""]
    lines += ["| model | held-out Spearman | 95% interval | held-out RMSE (bpb) | objective RMSE |",
              "|---|---:|---|---:|---:|"]
    for r in p["cv"]:
        lo, hi = r["spearman_ci95"]
        lines.append(f"| {r['family']}{' (chosen)' if r['family'] == p['chosen'] else ''} | {r['spearman']:.3f} | "
                     f"[{lo:.2f}, {hi:.2f}] | {r['rmse']:.4g} | {r['rmse_objective']:.4g} |")
    if p["why_not_predicting"]:
        lines += [""] + [f"- rejected: {w}" for w in p["why_not_predicting"]]
    lines += ["", "A prediction is only as good as the proxies: they are small models trained on "
              f"{p['options']['tokens']:,} tokens each ({p['options']['model']}); the interval covers the fit's "
              "uncertainty over proxies, not the gap between proxy and target scale (`benchmarks/bench_propose.py` "
              "measures that transfer). Predictions are bootstrap medians, the search stays inside the proxies' "
              "trust region (no share above the largest any proxy trained on) and averages the top "
              f"{p['options'].get('average_top', 1)} candidates.", ""]
    if p.get("reuse"):
        lines += _reuse_section(p["reuse"])
    cols = _columns(p)
    lines += ["## Weights", "", f"Bound: at most {p['max_epochs']:g} epochs of a source in "
              f"{p.get('target_tokens', p['options']['tokens']):,} tokens (the target run's budget).", "",
              "| source | available tokens | bound (share) | " + " | ".join(cols)
              + " | proposed | epochs |", "|---|---:|---:|" + "---:|" * (len(cols) + 2)]
    for s in sources:
        lines.append(f"| {s} | {p['available_tokens'][s]:,} | {p['bounds'][s]:.1%} | "
                     + " | ".join(f"{sh.get(s, 0.0):.1%}" for sh in cols.values())
                     + f" | {p['shares'][s]:.1%} | {p['epochs'][s]:.2f} |")
    if pred:
        lines += ["", "## Predicted bits per byte (selection half)", "",
                  "| source | proposed | 95% interval | " + " | ".join(_LABEL.get(r, r) for r in refs) + " |",
                  "|---|---:|---|" + "---:|" * len(refs)]
        for s in targets:
            lines.append(f"| {s} | {pred['proposed']['bpb'][s]:.4f} | {_fmt_ci(pred['proposed']['bpb_ci95'][s])} | "
                         + " | ".join(f"{pred[r]['bpb'][s]:.4f}" for r in refs) + " |")
    missing = [s for s in sources if s not in targets]
    if missing:
        lines += ["", "Not in the objective: " + ", ".join(missing) + " (see above)"]
    n_reused = sum(1 for px in p["proxies"] if px.get("reused"))
    lines += ["", f"## Proxies ({len(p['proxies'])}, {len(p['failed'])} failed"
              + (f", {n_reused} reused from PREV_OUT" if n_reused else "") + ")", "",
              "| proxy | " + " | ".join(sources) + " | " + " | ".join(f"bpb {s} (selection)" for s in targets) + " |",
              "|---|" + "---:|" * (len(sources) + len(targets))]
    for px in p["proxies"]:
        bpb = px["bpb"] or {}
        lines.append(f"| {px['name']}{' (reused)' if px.get('reused') else ''} | " + " | ".join(f"{px['shares'][s]:.3f}" for s in sources) + " | "
                     + " | ".join(f"{bpb[s]:.4f}" if s in bpb else "failed" for s in targets) + " |")
    for f in p["failed"]:
        lines.append(f"\n- {f['proxy']} failed twice and is excluded from the fit: `{f['error']}`")
    lines += ["", "## Plots", ""] + [f"![{name}]({name})" for name in plots]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


_LABEL = {"natural": "natural", "dc6": "DC-6", "previous": "PREV_OUT's mix", "best_proxy": "best proxy"}


def _columns(p: dict) -> dict[str, dict[str, float]]:
    """Reference weights shown beside the proposal: natural and DC-6, and PREV_OUT's mix with reuse."""
    cols = {"natural": p["natural_shares"]}
    if p.get("dc6_shares"):
        cols["DC-6"] = p["dc6_shares"]
    if "previous" in p.get("reference_shares", {}):
        cols[_LABEL["previous"]] = p["reference_shares"]["previous"]
    return cols


def _reuse_section(r: dict) -> list[str]:
    def names(xs: list[str]) -> str:
        return ", ".join(xs) or "none"

    lines = ["## Reuse of " + r["previous"], "",
             f"Olmix's mixture reuse: the {len(r['unchanged'])} unchanged sources ({names(r['unchanged'])}) form one "
             "composite domain in the ratios PREV_OUT proposed ("
             + ", ".join(f"{s} {v:.1%}" for s, v in r["composite_ratio"].items()) + "); the proxies were drawn "
             f"over {len(r['dims'])} dimensions (the composite, " + names(r["dims"][1:]) + ") instead of "
             f"{len(r['unchanged']) + len(r['dims']) - 1}.", "",
             f"- added: {names(r['added'])}; changed: "
             + (", ".join(f"{s} ({why})" for s, why in r["changed"].items()) or "none")
             + f"; removed: {names(r['removed'])}.",
             f"- criterion: {r['criterion']}.",
             f"- proxies: {r['proxies_trained']} trained, {len(r['proxies_reused'])} reused from PREV_OUT; a full "
             f"recompute would train {r['proxies_full_recompute']}: compute {r['compute_ratio']:.0%} of a full "
             f"recompute ({r['compute_saved']:.0%} saved, proxies trained / proxies of a full recompute).", ""]
    if r["proxies_not_reused"]:
        by_reason: dict[str, list[str]] = {}
        for w in r["proxies_not_reused"]:
            by_reason.setdefault(w["reason"], []).append(w["proxy"])
        lines += ["PREV_OUT proxies not reused:", ""]
        lines += [f"- {', '.join(ns[:6])}{f' and {len(ns) - 6} more' if len(ns) > 6 else ''}: {why}"
                  for why, ns in by_reason.items()] + [""]
    return lines


def _plots(out: Path, p: dict) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = []
    po, oo = np.array(p["cv_heldout"]["predicted"]), np.array(p["cv_heldout"]["observed"])
    fin = np.isfinite(po) & np.isfinite(oo)
    po, oo = (po[fin], oo[fin]) if fin.any() else (oo, oo)
    fig, ax = plt.subplots(figsize=(5.2, 4.6))
    ax.scatter(oo, po, s=22, color="tab:blue", label="held-out proxy")
    lo, hi = float(min(oo.min(), po.min())), float(max(oo.max(), po.max()))
    pad = 0.05 * max(hi - lo, 1e-6)
    ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="grey", lw=1, ls="--", label="y = x")
    ax.set_xlim(lo - pad, hi + pad)
    ax.set_ylim(lo - pad, hi + pad)
    ax.set_xlabel("observed objective (bits per byte)")
    ax.set_ylabel("predicted when held out")
    fam = p["cv_heldout"].get("family", p["chosen"])
    rho = next((r["spearman"] for r in p["cv"] if r["family"] == fam), float("nan"))
    ax.set_title(f"{fam}{'' if p['chosen'] else ' (rejected)'}: held-out Spearman ρ = {rho:.3f}\n"
                 "(proxies scored on the selection half)", fontsize=10)
    ax.legend(loc="upper left", frameon=False)
    fig.tight_layout()
    fig.savefig(out / "predicted_vs_observed.png", dpi=110)
    plt.close(fig)
    names.append("predicted_vs_observed.png")

    sources = p["sources"]
    series = [*_columns(p).items(), ("proposed", p["shares"])]
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(sources) + 2), 4))
    width = 0.8 / len(series)
    xs = np.arange(len(sources))
    for j, (label, sh) in enumerate(series):
        vals = [100 * sh.get(s, 0.0) for s in sources]
        bars = ax.bar(xs + (j - (len(series) - 1) / 2) * width, vals, width, label=label)
        for b, v in zip(bars, vals, strict=True):
            if v >= 0.5:
                ax.annotate(f"{v:.0f}", (b.get_x() + b.get_width() / 2, v), ha="center", va="bottom", fontsize=7)
    ax.set_xticks(xs, sources, rotation=20)
    ax.set_ylabel("share of training tokens (%)")
    ax.set_ylim(0, max(100 * max(sh.get(s, 0) for _, sh in series for s in sources) * 1.18, 1))
    ax.legend(loc="upper right", frameon=False, ncols=len(series))
    ax.set_title("Proposed weights beside " + ", ".join(label for label, _ in series[:-1]))
    fig.tight_layout()
    fig.savefig(out / "weights.png", dpi=110)
    plt.close(fig)
    names.append("weights.png")
    return names
