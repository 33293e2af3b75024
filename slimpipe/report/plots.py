"""The comparison's PNGs, each showing the numbers the report states (per-document bits per byte, the
same intervals), labelled where the reader looks rather than in a far legend.

* ``curves.png``: training loss (smoothed, mean over seeds, one line per configuration) and the packed-
  window evaluation during training, ending in a star at the final *per-document* figure of the report.
* ``per_source_bpb.png``: per source (and total, mean), each configuration's difference from the best
  configuration in total with its 95% interval, on one shared axis so a 0.01 gap looks like 0.01 everywhere.
* ``differences.png``: global − local apart from the "vs best" rows; blue: the interval excludes 0 and
  carries a verdict, grey: it covers 0, orange: conditional (fewer than 3 seeds).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from slimpipe import storage

VERDICT, NO_DIFFERENCE, CONDITIONAL = "tab:blue", "tab:gray", "tab:orange"
NO_INTERVAL = "no interval"  # a hollow grey point: too few documents, or no per-document losses


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(fig, path: Path) -> None:
    """Write a figure atomically (no timestamp metadata, so reruns give identical bytes)."""
    plt = _plt()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None}, bbox_inches="tight")
    plt.close(fig)
    storage.write_bytes_atomic(path, buf.getvalue())


def _colors(labels: list[str]) -> dict[str, tuple]:
    plt = _plt()
    cmap = plt.get_cmap("tab10" if len(labels) <= 10 else "tab20")
    return {lb: cmap(i % cmap.N) for i, lb in enumerate(sorted(labels))}


def _smooth(y: np.ndarray, k: int) -> np.ndarray:
    """Centred running mean over ``k`` points (shrinking at the ends), so noisy steps read as a trend."""
    if k <= 1 or y.size < 3:
        return y
    c = np.cumsum(np.insert(y, 0, 0.0))
    out = np.empty_like(y, dtype=np.float64)
    h = k // 2
    for i in range(y.size):
        a, b = max(0, i - h), min(y.size, i + h + 1)
        out[i] = (c[b] - c[a]) / (b - a)
    return out


def _mean_curve(logs: list[list[dict]], key) -> tuple[np.ndarray, np.ndarray]:
    """Mean over seeds at the x values every seed logged (seeds of one configuration log the same steps)."""
    curves = [{x["tokens"]: key(x) for x in log if key(x) is not None} for log in logs]
    curves = [c for c in curves if c]
    if not curves:
        return np.zeros(0), np.zeros(0)
    xs = sorted(set.intersection(*(set(c) for c in curves)))
    return np.array(xs, dtype=np.float64), np.array([np.mean([c[x] for c in curves]) for x in xs])


def _label_right(ax, ends: list[tuple[float, str, tuple]], x: float) -> None:
    """Name each line at its right end, nudging labels apart so they do not overlap."""
    if not ends:
        return
    ends = sorted(ends)
    lo, hi = ax.get_ylim()
    gap = (hi - lo) / 24
    placed: list[float] = []
    for y, text, c in ends:
        yy = max(y, placed[-1] + gap) if placed else y
        placed.append(yy)
        ax.annotate(text, xy=(x, y), xytext=(1.02, yy), textcoords=("axes fraction", "data"), fontsize=8,
                    color=c, va="center", annotation_clip=False,
                    arrowprops={"arrowstyle": "-", "color": c, "lw": 0.5})
    ax.set_ylim(lo, max(hi, placed[-1] + gap))


def comparison_plots(out: Path, runs: list, r: dict) -> list[str]:
    made = [_curves(out, runs, r)]
    for f in (_per_source, _differences):
        p = f(out, r)
        if p:
            made.append(p)
    with_lengths = [run for run in runs if run.metrics.get("context_length")]
    if with_lengths:  # runs trained with --eval-seq-lens (slimpipe.train.interp)
        from slimpipe.train.interp import plot_context_length_runs

        colors = _colors(list(r["rows"]))
        plot_context_length_runs([(run.label + (f" s{run.seed}" if run.seed is not None else ""),
                                   colors.get(run.label), run.metrics["context_length"]) for run in with_lengths],
                                 out / "plots" / "context_length.png")
        made.append("plots/context_length.png")
    return made


def _curves(out: Path, runs: list, r: dict) -> str:
    plt = _plt()
    colors = _colors(list(r["rows"]))
    by_row: dict[str, list] = {}
    for run in runs:
        by_row.setdefault(run.label, []).append(run)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(14, 5))
    fig.subplots_adjust(wspace=0.55)
    ends1, ends2, late = [], [], []
    for label in sorted(by_row):
        rs, c = by_row[label], colors.get(label)
        n = len(rs)
        tag = label + (f" ({n} seeds)" if n > 1 else "")
        xs, ys = _mean_curve([x.train_log for x in rs], lambda e: e.get("loss"))
        if xs.size:
            ys = _smooth(ys, max(1, xs.size // 8))
            a1.plot(xs, ys, color=c, lw=1.4)
            ends1.append((ys[-1], f"{label} {ys[-1]:.3f}", c))
            late.append(ys[xs.size // 5:])
        xs, ys = _mean_curve([x.eval_log for x in rs], lambda e: None if e.get("final") else (e.get("total") or {}).get("bpb"))
        if xs.size:  # interval evaluations (the first sequences of each set) joined by a line
            a2.plot(xs, ys, color=c, lw=1, marker="o", ms=2.5, alpha=0.8)
        fx, fy = _mean_curve([x.eval_log for x in rs], lambda e: (e.get("total") or {}).get("bpb") if e.get("final") else None)
        if fx.size:  # the final packed evaluation on every window: not joined (a different subset)
            a2.plot(fx, fy, color=c, marker="o", ms=5, mfc="none", ls="none")
            xs = np.append(xs, fx) if xs.size else fx
        final = r["rows"][label]["bpb"].get("total")
        if final and xs.size:  # the report's figure: per document, mean over seeds
            a2.plot([xs[-1]], [final["mean"]], color=c, marker="*", ms=12, ls="none")
            ends2.append((final["mean"], f"{tag} {final['mean']:.4f}", c))
        for run in rs:
            if len(run.metrics.get("phases") or []) > 1:  # multi-phase runs: dashed line where each phase starts
                from slimpipe.train.phases import draw_phase_boundaries

                for ax in (a1, a2):
                    draw_phase_boundaries(ax, run.metrics, color=c)
                break
    if late:  # the first fifth of training (the initial drop) would flatten every difference that matters
        lo = min(float(np.min(y)) for y in late if y.size)
        hi = max(float(np.max(y)) for y in late if y.size)
        pad = 0.08 * (hi - lo or 1.0)
        a1.set_ylim(lo - pad, hi + pad)
    a1.set_xlabel("training tokens")
    a1.set_ylabel("training loss (nats/token)")
    a1.set_title("Training loss on each mix's own data (not comparable across mixes),\nmean over seeds, smoothed; "
                 "y axis from the first fifth of training on", fontsize=10)
    _label_right(a1, ends1, a1.get_xlim()[1])
    a2.set_xlabel("training tokens")
    a2.set_ylabel("bits per byte")
    a2.set_title("Evaluation, mean over seeds: packed windows (• a subset during training, ○ every window at the "
                 "end);\n★ final per-document bits per byte, the report's figure", fontsize=10)
    _label_right(a2, ends2, a2.get_xlim()[1])
    save_png(fig, out / "plots" / "curves.png")
    return "plots/curves.png"


def _color(c: dict | None, claim_ok: bool) -> str:
    if not c or not c.get("ci95") or not c.get("detectable"):
        return NO_DIFFERENCE
    return VERDICT if claim_ok else CONDITIONAL


def _legend(fig, used: set[str]) -> None:
    """The colours actually used, below the figure (outside every axis, so it covers nothing)."""
    plt = _plt()
    names = {VERDICT: "interval excludes 0 (a verdict)", NO_DIFFERENCE: "interval covers 0: no detectable difference",
             CONDITIONAL: "excludes 0 but conditional on these trained models (fewer than 3 seeds): no verdict"}
    handles = [plt.Line2D([], [], color=k, marker="o", lw=2, label=v) for k, v in names.items() if k in used]
    if NO_INTERVAL in used:
        handles.append(plt.Line2D([], [], color=NO_DIFFERENCE, marker="o", mfc="none", ls="none",
                                  label="no interval (too few evaluation documents or no per-document losses)"))
    if handles:
        fig.legend(handles=handles, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, 0.0),
                   ncol=min(2, len(handles)), frameon=False)


def _per_source(out: Path, r: dict) -> str | None:
    """Per column, each configuration minus the best configuration in total, with its 95% interval, on one
    x axis shared by every panel (so equal gaps look equal), configurations named on the y axis."""
    plt = _plt()
    from matplotlib.ticker import MaxNLocator

    labels = sorted(r["rows"], key=lambda lb: r["rows"][lb]["bpb"].get("total", {}).get("mean", 9e9))
    best = next((lb for lb in labels if not r["rows"][lb].get("vs_best")), None)
    cols = [c for c in r["columns"] if any(c in r["rows"][lb]["bpb"] for lb in labels)] + ["total", "mean"]
    if not labels or not r["columns"] or best is None or len(labels) < 2:
        return None
    ncol = min(5, len(cols))
    nrow = -(-len(cols) // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(2.7 * ncol + 2.2, 0.3 * len(labels) * nrow + 1.3 * nrow + 0.6),
                             squeeze=False, sharey=True)
    size = r["rows"][best]["eval_size"]
    excluded = r.get("excluded_from_intervals") or {}
    used: set[str] = set()
    points: dict[str, list[tuple[int, float, list | None, str]]] = {}  # col -> (row, diff, ci, colour)
    for col in cols:
        ref = r["rows"][best]["bpb"].get(col)
        pts = points[col] = []
        for i, lb in enumerate(labels):
            cell = r["rows"][lb]["bpb"].get(col)
            vb = r["rows"][lb].get("vs_best") or {}
            c = (vb.get("columns") or {}).get(col)
            if lb == best or (c is None and not (cell and ref)):
                continue
            if c is None:  # no per-document losses: the point without an interval
                pts.append((i, cell["mean"] - ref["mean"], None, NO_DIFFERENCE))
            else:
                pts.append((i, c["diff"], c.get("ci95"), _color(c, bool(vb.get("claim_ok")))))
    # one x range for every panel, fitted to the intervals (a point without one, beyond it, sits at the edge)
    with_ci = [v for pts in points.values() for _, d, ci, _ in pts if ci for v in (d, *ci)]
    every = with_ci or [d for pts in points.values() for _, d, _, _ in pts]
    lo, hi = min([0.0, *every]), max([0.0, *every])
    pad = 0.08 * (hi - lo or 0.01)
    lo, hi = lo - pad, hi + pad
    for ax, col in zip(axes.flat, cols, strict=False):
        ref = r["rows"][best]["bpb"].get(col)
        if ref:
            ax.plot([0.0], [labels.index(best)], marker="D", color="black", ms=5)
        for i, d, ci, color in points[col]:
            if ci:
                used.add(color)
                ax.plot(ci, [i, i], color=color, lw=2)
                ax.plot([d], [i], "o", color=color)
                continue
            used.add(NO_INTERVAL)
            if lo <= d <= hi:
                ax.plot([d], [i], "o", color=NO_DIFFERENCE, mfc="none")
            else:  # off the shared range: an arrow at the edge, with its value
                x = hi if d > hi else lo
                ax.plot([x], [i], ">" if d > hi else "<", color=NO_DIFFERENCE, mfc="none", clip_on=False)
                ax.annotate(f"{d:+.3f}", xy=(x, i), xytext=(-4 if d > hi else 4, 6), textcoords="offset points",
                            fontsize=7, color=NO_DIFFERENCE, ha="right" if d > hi else "left")
        ax.set_xlim(lo, hi)
        ax.xaxis.set_major_locator(MaxNLocator(nbins=4))
        ax.axvline(0.0, color="black", lw=0.7)
        if col in size:
            title = f"{col} ({size[col].get('docs')} docs)" + (" — no interval" if col in excluded else "")
            head = f"\nbest-total run: {ref['mean']:.4f} bpb" if ref else ""
        else:  # total / mean: the intervals pool the sources that carry one
            pooled = [s for s in size if s not in excluded]
            n = sum((size[s].get("docs") or 0) for s in pooled)
            title = f"{col} ({n} docs)" if not excluded else f"{col} over {', '.join(pooled) or 'no source'} ({n} docs)"
            head = f"\nbest-total run: {ref['mean']:.4f} bpb" if ref and not excluded else ""
        ax.set_title(title + head, fontsize=8)
        ax.tick_params(labelsize=7, labelbottom=True)  # every panel keeps its numbers, shared axis or not
        ax.grid(axis="x", lw=0.3, alpha=0.6)
    for ax in list(axes.flat)[len(cols):]:
        ax.axis("off")
    axes[0][0].set_yticks(range(len(labels)), labels, fontsize=8)
    axes[0][0].invert_yaxis()
    for ax in axes[-1]:
        ax.set_xlabel("Δ bpb vs best", fontsize=8)
    fig.suptitle(f"Per-source bits per byte: each configuration minus {best} (◆), 95% interval; one x axis "
                 "for every panel (lower is better)", fontsize=10)
    fig.tight_layout()
    _legend(fig, used)
    save_png(fig, out / "plots" / "per_source_bpb.png")
    return "plots/per_source_bpb.png"


def _differences(out: Path, r: dict) -> str | None:
    plt = _plt()
    rows = r["rows"]
    labels = sorted(rows, key=lambda lb: rows[lb]["bpb"].get("total", {}).get("mean", 9e9))

    def total(lb: str) -> float | None:
        return (rows[lb]["bpb"].get("total") or {}).get("mean")

    groups = []
    dedup = [(f"{e['global']} − {e['local']}", e["columns"].get("total") or (
        {"diff": e["delta_bpb"]["total"], "ci95": None} if "total" in e["delta_bpb"] else None),
        bool(e.get("claim_ok"))) for e in r["dedup_effect"]]
    dedup = [x for x in dedup if x[1]]
    if dedup:
        groups.append(("global − local dedup (same mix)", dedup))
    vs = []
    for lb in labels:
        vb = rows[lb].get("vs_best")
        if not vb:
            continue
        c = vb["columns"].get("total")
        if c is None and total(lb) is not None and total(vb["against"]) is not None:
            c = {"diff": total(lb) - total(vb["against"]), "ci95": None}  # no interval: the point alone
        if c:
            vs.append((f"{lb} − {vb['against']}", c, bool(vb.get("claim_ok"))))
    if vs:
        groups.append(("each configuration − the best in total", vs))
    if not groups:
        return None
    n = sum(len(g) for _, g in groups) + len(groups)
    fig, ax = plt.subplots(figsize=(9, 0.42 * n + 1.4))
    y, ticks, names, used = 0, [], [], set()
    for gi, (title, items) in enumerate(groups):
        if gi:
            ax.axhline(y - 0.5, color="black", lw=0.6)
        ax.text(0.01, y, title, transform=ax.get_yaxis_transform(), fontsize=9, fontweight="bold", va="center")
        y += 1
        for name, c, claim_ok in items:
            if c.get("ci95"):
                color = _color(c, claim_ok)
                used.add(color)
                lo, hi = c["ci95"]
                ax.plot([lo, hi], [y, y], color=color, lw=2.5)
                ax.plot([c["diff"]], [y], "o", color=color)
                text = f"{c['diff']:+.4f} [{lo:+.4f}, {hi:+.4f}]"
            else:
                color, hi = NO_DIFFERENCE, c["diff"]
                used.add(NO_INTERVAL)
                ax.plot([c["diff"]], [y], "o", color=color, mfc="none")
                text = f"{c['diff']:+.4f} (no interval)"
            ax.annotate(text, xy=(hi, y), xytext=(7, 0), textcoords="offset points", fontsize=7, va="center",
                        color=color)
            ticks.append(y)
            names.append(name)
            y += 1
    ax.axvline(0.0, color="black", lw=0.8)
    ax.set_yticks(ticks, names, fontsize=8)
    ax.set_ylim(y - 0.5, -0.7)
    xlo, xhi = ax.get_xlim()
    ax.set_xlim(xlo, xhi + 0.3 * (xhi - xlo))  # room for the numbers
    method = "over seeds and documents" if "seeds and documents" in (r.get("interval_method") or "") else \
        "over documents" if r.get("interval_method") else ""
    ex = r.get("excluded_from_intervals") or {}
    pooled = [c for c in r["columns"] if c not in ex]
    scope = f" over {', '.join(pooled)} (the sources with intervals)" if ex and pooled else ""
    ax.set_xlabel(f"A − B in total bits per byte{scope} (negative: A is better),\n95% interval {method}".strip())
    ax.set_title("Differences in total bits per byte", fontsize=10)
    fig.tight_layout()
    _legend(fig, used)
    save_png(fig, out / "plots" / "differences.png")
    return "plots/differences.png"
