"""The comparison's PNGs: curves (final points joined and labelled), per-source panels with axes fitted to
the data, and the differences with their intervals. Legends sit outside the axes, so they cover nothing."""

from __future__ import annotations

import io
from pathlib import Path

from slimpipe.io.writers import atomic_write_bytes


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
    atomic_write_bytes(path, buf.getvalue())


def _colors(labels: list[str]) -> dict[str, tuple]:
    plt = _plt()
    cmap = plt.get_cmap("tab10" if len(labels) <= 10 else "tab20")
    return {lb: cmap(i % cmap.N) for i, lb in enumerate(sorted(labels))}


def comparison_plots(out: Path, runs: list, r: dict) -> list[str]:
    plt = _plt()
    made: list[str] = []
    colors = _colors(list(r["rows"]))

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(13, 4.5))
    for run in sorted(runs, key=lambda x: (x.label, str(x.seed))):
        tag = run.label + (f" s{run.seed}" if run.seed is not None else "")
        c = colors.get(run.label)
        if run.train_log:
            a1.plot([x["tokens"] for x in run.train_log], [x["loss"] for x in run.train_log], color=c, lw=1, label=tag)
        ev = sorted((x for x in run.eval_log if x.get("total", {}).get("bpb") is not None), key=lambda x: x["tokens"])
        if ev:  # interval and final evaluations on one line; the final point is a star and carries the label
            xs, ys = [x["tokens"] for x in ev], [x["total"]["bpb"] for x in ev]
            a2.plot(xs, ys, color=c, lw=1, marker="o", ms=3)
            if ev[-1].get("final"):
                a2.plot(xs[-1:], ys[-1:], color=c, marker="*", ms=11, ls="none")
        if len(run.metrics.get("phases") or []) > 1:  # multi-phase runs: dashed line where each phase starts
            from slimpipe.train.phases import draw_phase_boundaries

            for ax in (a1, a2):
                draw_phase_boundaries(ax, run.metrics, color=c)
    _label_ends(a2, runs, colors)
    a1.set_xlabel("training tokens")
    a1.set_ylabel("training loss (nats/token)")
    a1.set_title("Training loss")
    if a1.lines:
        a1.legend(fontsize=7, loc="upper left", bbox_to_anchor=(0.0, -0.15), ncol=3, frameon=False)
    a2.set_xlabel("training tokens")
    a2.set_ylabel("bits per byte (packed evaluation windows)")
    a2.set_title("Evaluation bits per byte during training (★ final)")
    fig.tight_layout()
    save_png(fig, out / "plots" / "curves.png")
    made.append("plots/curves.png")

    cols = r["columns"] + ["total"]
    labels = sorted(r["rows"], key=lambda lb: r["rows"][lb]["bpb"].get("total", {}).get("mean", 9e9))
    if labels and r["columns"]:
        n = len(cols)
        ncol = min(4, n)
        nrow = -(-n // ncol)
        fig, axes = plt.subplots(nrow, ncol, figsize=(3.4 * ncol, 2.8 * nrow), squeeze=False)
        for ax, col in zip(axes.flat, cols, strict=False):
            for i, lb in enumerate(labels):
                cell = r["rows"][lb]["bpb"].get(col)
                if cell:
                    ax.errorbar([i], [cell["mean"]], yerr=[cell["std"]] if cell["n"] > 1 else None, fmt="o",
                                color=colors[lb], capsize=3, label=lb)
            size = r["rows"][labels[0]]["eval_size"]
            if col in size:
                sub = f"{size[col].get('docs')} docs, {size[col].get('tokens')} tok"
            else:
                sub = (f"{sum((v.get('docs') or 0) for v in size.values())} docs, "
                       f"{sum((v.get('tokens') or 0) for v in size.values())} tok")
            ax.set_title(f"{col}\n({sub})", fontsize=9)
            ax.set_xticks([])
            ax.margins(x=0.15, y=0.15)  # the axis is fitted to the points, never forced to 0
            ax.tick_params(labelsize=7)
        for ax in list(axes.flat)[n:]:
            ax.axis("off")
        axes[0][0].set_ylabel("bits per byte")
        handles = [plt.Line2D([], [], color=colors[lb], marker="o", ls="none") for lb in labels]
        fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False,
                   title="best total first")
        fig.suptitle("Per-source evaluation bits per byte (lower is better; each panel's axis fitted to its data)",
                     fontsize=10)
        fig.tight_layout()
        save_png(fig, out / "plots" / "per_source_bpb.png")
        made.append("plots/per_source_bpb.png")

    diffs = [(f"{lb} − {r['rows'][lb]['vs_best']['against']}", r["rows"][lb]["vs_best"]["columns"].get("total"))
             for lb in labels if r["rows"][lb].get("vs_best")]
    diffs += [(f"{e['global']} − {e['local']}", e["columns"].get("total")) for e in r["dedup_effect"]]
    diffs = [(name, c) for name, c in diffs if c]
    if diffs:
        fig, ax = plt.subplots(figsize=(8, 0.45 * len(diffs) + 1.2))
        for i, (_name, c) in enumerate(diffs):
            lo, hi = c["ci95"]
            color = "tab:blue" if c["detectable"] else "tab:gray"
            ax.plot([lo, hi], [i, i], color=color, lw=2)
            ax.plot([c["diff"]], [i], "o", color=color)
        ax.axvline(0.0, color="black", lw=0.8)
        ax.set_yticks(range(len(diffs)), [n for n, _ in diffs], fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel("difference in total bits per byte, 95% paired bootstrap interval (grey: covers 0)")
        ax.set_title("Differences against the best configuration, and global − local dedup")
        fig.tight_layout()
        save_png(fig, out / "plots" / "differences.png")
        made.append("plots/differences.png")
    with_lengths = [run for run in runs if run.metrics.get("context_length")]
    if with_lengths:  # runs trained with --eval-seq-lens (slimpipe.train.interp)
        from slimpipe.train.interp import plot_context_length_runs

        plot_context_length_runs([(run.label + (f" s{run.seed}" if run.seed is not None else ""),
                                   colors.get(run.label), run.metrics["context_length"]) for run in with_lengths],
                                 out / "plots" / "context_length.png")
        made.append("plots/context_length.png")
    return made


def _label_ends(ax, runs: list, colors: dict) -> None:
    """Name each evaluation curve at its last point, nudging labels apart so they do not overlap."""
    ends = []
    for run in runs:
        ev = [x for x in run.eval_log if x.get("total", {}).get("bpb") is not None]
        if ev:
            last = max(ev, key=lambda x: x["tokens"])
            tag = run.label + (f" s{run.seed}" if run.seed is not None else "")
            ends.append((last["total"]["bpb"], last["tokens"], tag, colors.get(run.label)))
    if not ends:
        return
    ends.sort()
    lo, hi = ax.get_ylim()
    x_lo, x_hi = ax.get_xlim()
    gap = (hi - lo) / 22
    placed: list[float] = []
    for y, x, tag, c in ends:
        yy = max(y, placed[-1] + gap) if placed else y
        placed.append(yy)
        ax.annotate(tag, xy=(x, y), xytext=(x + 0.04 * (x_hi - x_lo), yy), textcoords="data", fontsize=7, color=c,
                    va="center", arrowprops={"arrowstyle": "-", "color": c, "lw": 0.5})
    ax.set_ylim(lo, max(hi, placed[-1] + gap))
    ax.set_xlim(x_lo, x_hi + 0.45 * (x_hi - x_lo))  # room for the labels inside the axes
