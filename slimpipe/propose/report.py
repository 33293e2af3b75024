"""``OUT/report.md`` and its plots for a proposal: what was trained, how well the fit ranks held-out
proxies, and the proposed weights next to DC-6's and the natural shares."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np


def _fmt_ci(ci: list[float]) -> str:
    return f"[{ci[0]:.4f}, {ci[1]:.4f}]"


def write_report(out: Path, p: dict) -> Path:
    plots = _plots(out, p)
    targets, sources = p["targets"], p["sources"]
    pred = p["predicted"]
    chosen = next(r for r in p["cv"] if r["family"] == p["chosen"])
    rho = chosen["spearman"]
    lines = ["# Mix proposal", ""]
    lines += [f"**Proposed mix** (`proposed.yaml`, use with `slimpipe mix --config {out / 'proposed.yaml'}`): "
              + ", ".join(f"{s} {v:.2f}%" for s, v in p["weights_pct"].items() if v > 0) + ".", ""]
    lines += [f"Objective: {p['objective']['description']}. Predicted {pred['proposed']['objective']:.4f} "
              f"(95% bootstrap interval over proxies {_fmt_ci(pred['proposed']['objective_ci95'])})."]
    refs = [r for r in pred if r != "proposed"]
    for ref in refs:
        if ref in pred:
            ci = pred[ref]["proposed_minus_this_ci95"]
            verdict = ("predicted better" if ci[1] < 0 else "predicted worse" if ci[0] > 0
                       else "no detectable difference predicted")
            label = _LABEL.get(ref, ref)
            lines.append(f"- vs {label}: predicted {pred[ref]['objective']:.4f}; proposed − {label} 95% interval "
                         f"{_fmt_ci(ci)} → {verdict}.")
    lines += ["", f"Fit: **{p['chosen']}** chosen by cross-validation; held-out rank correlation (Spearman, "
              f"predicted vs observed objective) **{rho:.3f}**" if math.isfinite(rho) else
              f"Fit: **{p['chosen']}**; held-out rank correlation undefined (constant predictions)", ""]
    lines += ["| model | held-out Spearman | held-out RMSE (bpb) |", "|---|---:|---:|"]
    for r in p["cv"]:
        lines.append(f"| {r['family']}{' (chosen)' if r['family'] == p['chosen'] else ''} | {r['spearman']:.3f} | "
                     f"{r['rmse']:.4f} |")
    lines += ["", "A prediction is only as good as the proxies: they are small models trained on "
              f"{p['options']['tokens']:,} tokens each ({p['options']['model']}); the interval covers the fit's "
              "uncertainty over proxies, not the gap between proxy and target scale. Validate the proposal by "
              "training it beside DC-6 with several seeds (`benchmarks/bench_propose.py`). Predictions are "
              "bootstrap medians (the single fit is optimistic at its own optimum), and the search stays inside "
              "the proxies' trust region: no share above the largest any proxy trained on.", ""]
    if p.get("reuse"):
        lines += _reuse_section(p["reuse"])
    cols = _columns(p)
    lines += ["## Weights", "", "| source | available tokens | bound (share) | " + " | ".join(cols)
              + " | proposed | epochs |", "|---|---:|---:|" + "---:|" * (len(cols) + 2)]
    for s in sources:
        lines.append(f"| {s} | {p['available_tokens'][s]:,} | {p['bounds'][s]:.1%} | "
                     + " | ".join(f"{sh.get(s, 0.0):.1%}" for sh in cols.values())
                     + f" | {p['shares'][s]:.1%} | {p['epochs'][s]:.2f} |")
    lines += ["", "## Predicted bits per byte", "",
              "| source | proposed | 95% interval | " + " | ".join(_LABEL.get(r, r) for r in refs) + " |",
              "|---|---:|---|" + "---:|" * len(refs)]
    for s in targets:
        lines.append(f"| {s} | {pred['proposed']['bpb'][s]:.4f} | {_fmt_ci(pred['proposed']['bpb_ci95'][s])} | "
                     + " | ".join(f"{pred[r]['bpb'][s]:.4f}" for r in refs) + " |")
    missing = [s for s in sources if s not in targets]
    if missing:
        lines += ["", "Not scored (no evaluation set in every proxy): " + ", ".join(missing)]
    n_reused = sum(1 for px in p["proxies"] if px.get("reused"))
    lines += ["", f"## Proxies ({len(p['proxies'])}, {len(p['failed'])} failed"
              + (f", {n_reused} reused from PREV_OUT" if n_reused else "") + ")", "",
              "| proxy | " + " | ".join(sources) + " | " + " | ".join(f"bpb {s}" for s in targets) + " |",
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


_LABEL = {"natural": "natural", "dc6": "DC-6", "previous": "PREV_OUT's mix"}


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
    fig, ax = plt.subplots(figsize=(5.2, 4.6))
    ax.scatter(oo, po, s=22, color="tab:blue", label="held-out proxy")
    lo, hi = float(min(oo.min(), po.min())), float(max(oo.max(), po.max()))
    pad = 0.05 * max(hi - lo, 1e-6)
    ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="grey", lw=1, ls="--", label="y = x")
    ax.set_xlim(lo - pad, hi + pad)
    ax.set_ylim(lo - pad, hi + pad)
    ax.set_xlabel("observed objective (bits per byte)")
    ax.set_ylabel("predicted when held out")
    rho = next(r["spearman"] for r in p["cv"] if r["family"] == p["chosen"])
    ax.set_title(f"{p['chosen']}: held-out Spearman ρ = {rho:.3f}")
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
