"""``slimpipe compare RUN... -o REPORT``: the effect of each mix (and of global vs local dedup) in one report.

Every figure comes from a run's own files: ``metrics.json`` (final per-source bits per byte),
``eval_log.jsonl`` and ``train_log.jsonl`` (curves), ``config.json`` (which mix, which seed) and the mix's
``manifest.json`` (mix weights, tokenizer identity, the dataset it was drawn from, whose own manifest
says how it was deduplicated). Runs of one mix and dataset with several seeds are one row, mean ± spread
(sample standard deviation), and a winner whose lead is within the seed spread is flagged as such.
Bits per byte is tokenizer-independent, so it is the only quantity compared across tokenizers.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from slimpipe.io.writers import atomic_write_bytes, atomic_write_json
from slimpipe.sources import SOURCES


class CompareError(ValueError):
    pass


@dataclass
class Run:
    path: Path
    label: str  # "<mix> (<dedup mode>)"
    mix: str
    dedup: str
    seed: int | None
    tokenizer: str
    dataset: str
    mix_weights: dict[str, float]
    metrics: dict
    eval_log: list[dict] = field(default_factory=list)
    train_log: list[dict] = field(default_factory=list)


def _read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise CompareError(f"{path.parent}: missing {path.name} (is this a finished `slimpipe train` run?)") from exc


def load_run(path: str | Path) -> Run:
    path = Path(path)
    metrics = _json(path / "metrics.json")
    config = _json(path / "config.json")
    train_cfg = config.get("train", config)
    mix_dir = Path(train_cfg["mix_dir"])
    mix_manifest = _json(mix_dir / "manifest.json")
    mix = mix_manifest.get("mix", {})
    name = mix.get("name", mix_dir.name)
    raw = mix.get("weights", {})
    total_w = sum(raw.values()) or 1.0
    weights = {k: v / total_w for k, v in raw.items()}  # presets are written in percent
    tok = mix_manifest.get("tokenizer", {})
    tokenizer = tok.get("identity") or tok.get("sha256") or json.dumps(tok, sort_keys=True)
    inp = mix_manifest.get("input", {})
    dataset = inp.get("manifest_sha256") or inp.get("path", "?")
    dedup = "?"
    dataset_manifest = Path(inp.get("path", "")) / "manifest.json"
    if dataset_manifest.is_file():
        dm = json.loads(dataset_manifest.read_text())
        dedup = (dm.get("dedup") or {}).get("mode", "?")
    return Run(path=path, label=f"{name} ({dedup})", mix=name, dedup=dedup, seed=train_cfg.get("seed"),
               tokenizer=str(tokenizer), dataset=str(dataset), mix_weights=weights, metrics=metrics,
               eval_log=_read_jsonl(path / "eval_log.jsonl"), train_log=_read_jsonl(path / "train_log.jsonl"))


def _mean_std(xs: list[float]) -> tuple[float, float]:
    m = sum(xs) / len(xs)
    if len(xs) < 2:
        return m, 0.0
    return m, math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def compare(runs: list[Run]) -> dict:
    """The comparison as plain data (what ``report.json`` holds)."""
    if not runs:
        raise CompareError("no runs to compare")
    groups: dict[str, list[Run]] = defaultdict(list)
    for r in runs:
        groups[r.label].append(r)
    columns = [s for s in SOURCES if any(s in r.metrics["eval"]["sources"] for r in runs)]
    rows = {}
    for label, rs in groups.items():
        row: dict = {"mix": rs[0].mix, "dedup": rs[0].dedup, "seeds": [r.seed for r in rs],
                     "runs": [str(r.path) for r in rs], "weights": rs[0].mix_weights,
                     "tokenizer": rs[0].tokenizer, "dataset": rs[0].dataset, "bpb": {}}
        for col in columns + ["total", "mean"]:
            vals = [_bpb(r, col) for r in rs]
            vals = [v for v in vals if v is not None]
            if vals:
                m, sd = _mean_std(vals)
                row["bpb"][col] = {"mean": m, "std": sd, "n": len(vals), "values": vals}
        rows[label] = row
    winners = {}
    for col in columns + ["total", "mean"]:
        cands = sorted((row["bpb"][col]["mean"], label) for label, row in rows.items() if col in row["bpb"])
        if not cands:
            continue
        best, label = cands[0]
        entry = {"winner": label, "bpb": best}
        if len(cands) > 1:
            second, label2 = cands[1]
            spread = max(rows[label]["bpb"][col]["std"], rows[label2]["bpb"][col]["std"])
            entry.update(runner_up=label2, margin=second - best, seed_spread=spread,
                         within_seed_spread=(second - best) <= spread if spread > 0 else None)
        winners[col] = entry
    tokenizers = sorted({r.tokenizer for r in runs})
    dedup_effect = _dedup_effect(rows)
    return {
        "kind": "slimpipe-compare",
        "runs": len(runs),
        "columns": columns,
        "rows": rows,
        "winners": winners,
        "tokenizers": tokenizers,
        "same_tokenizer": len(tokenizers) == 1,
        "dedup_effect": dedup_effect,
        "provenance": _fingerprint(runs),
    }


def _bpb(run: Run, col: str) -> float | None:
    ev = run.metrics["eval"]
    if col == "total":
        return ev.get("total", {}).get("bpb")
    if col == "mean":
        return ev.get("mean_bpb")
    s = ev["sources"].get(col)
    return s.get("bpb") if s else None


def _dedup_effect(rows: dict) -> list[dict]:
    """The same mix trained on globally and on locally deduplicated data: global minus local bpb."""
    by_mix: dict[str, dict[str, dict]] = defaultdict(dict)
    for row in rows.values():
        by_mix[row["mix"]][row["dedup"]] = row
    out = []
    for mix, modes in sorted(by_mix.items()):
        if "global" in modes and "local" in modes:
            g, lo = modes["global"]["bpb"], modes["local"]["bpb"]
            cols = [c for c in g if c in lo]
            out.append({"mix": mix, "delta_bpb": {c: g[c]["mean"] - lo[c]["mean"] for c in cols},
                        "seed_spread": {c: max(g[c]["std"], lo[c]["std"]) for c in cols}})
    return out


def _fingerprint(runs: list[Run]) -> str:
    h = hashlib.sha256()
    for r in sorted(runs, key=lambda r: str(r.path)):
        h.update((r.path / "metrics.json").read_bytes())
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------------- output


def _fmt(cell: dict | None) -> str:
    if not cell:
        return "–"
    if cell["n"] > 1:
        return f"{cell['mean']:.4f} ± {cell['std']:.4f}"
    return f"{cell['mean']:.4f}"


def render_markdown(r: dict, plots: list[str]) -> str:
    cols = r["columns"] + ["total", "mean"]
    lines = ["# Mix comparison", ""]
    lines += _headline(r)
    lines += ["", "## Bits per byte on each source's held-out set (lower is better)", ""]
    if r["same_tokenizer"]:
        lines.append("All runs share one tokenizer.")
    else:
        lines.append(f"Runs use {len(r['tokenizers'])} different tokenizers, so they are compared in **bits per byte "
                     "only** (token-level loss is not comparable across tokenizers).")
    lines += ["`total` pools every held-out token (sources weighted by size); `mean` is the unweighted mean "
              "over sources. Several seeds: mean ± sample standard deviation. **Bold**: best in the column.", ""]
    lines.append("| run | seeds | " + " | ".join(cols) + " |")
    lines.append("|---|---:|" + "---:|" * len(cols))
    for label, row in sorted(r["rows"].items(), key=lambda kv: kv[1]["bpb"].get("total", {}).get("mean", 9e9)):
        cells = []
        for c in cols:
            s = _fmt(row["bpb"].get(c))
            if r["winners"].get(c, {}).get("winner") == label:
                s = f"**{s}**"
            cells.append(s)
        lines.append(f"| {label} | {len(row['seeds'])} | " + " | ".join(cells) + " |")
    lines += ["", "## Mixes", "", "| run | " + " | ".join(SOURCES) + " |", "|---|" + "---:|" * len(SOURCES)]
    for label, row in sorted(r["rows"].items()):
        w = row["weights"]
        lines.append(f"| {label} | " + " | ".join(f"{100 * w.get(s, 0):.1f}%" for s in SOURCES) + " |")
    lines += ["", "## Winners per column", ""]
    for c, w in r["winners"].items():
        note = ""
        if w.get("within_seed_spread"):
            note = f" — **within the seed spread** ({w['seed_spread']:.4f}) of {w['runner_up']}: not a real difference"
        elif w.get("within_seed_spread") is False:
            note = f" — ahead of {w['runner_up']} by {w['margin']:.4f}, more than the seed spread ({w['seed_spread']:.4f})"
        elif "runner_up" in w:
            note = f" — ahead of {w['runner_up']} by {w['margin']:.4f} (one seed each: spread unknown)"
        lines.append(f"- `{c}`: {w['winner']} ({w['bpb']:.4f}){note}")
    if r["dedup_effect"]:
        lines += ["", "## Global vs local dedup (same mix, both datasets)", "",
                  "Negative = the globally deduplicated data gives lower (better) bits per byte.", ""]
        for e in r["dedup_effect"]:
            d = e["delta_bpb"]
            spread = e["seed_spread"].get("total", 0.0)
            lines.append(f"- {e['mix']}: total {d.get('total', float('nan')):+.4f}, mean {d.get('mean', float('nan')):+.4f} "
                         + (f"(seed spread {spread:.4f})" if spread > 0 else "(one seed each: spread unknown)"))
    lines += ["", "## Provenance", "", "| run | seed(s) | dataset manifest | dedup | tokenizer | run folders |",
              "|---|---|---|---|---|---|"]
    for label, row in sorted(r["rows"].items()):
        lines.append(f"| {label} | {', '.join(str(s) for s in row['seeds'])} | `{row['dataset'][:12]}` | {row['dedup']} | "
                     f"`{row['tokenizer'][:12]}` | {', '.join(row['runs'])} |")
    if plots:
        lines += ["", "## Plots", ""] + [f"![{Path(p).stem}]({p})" for p in plots]
    return "\n".join(lines) + "\n"


def _headline(r: dict) -> list[str]:
    w = r["winners"].get("total") or r["winners"].get("mean")
    if not w:
        return []
    out = [f"**Best mix overall: {w['winner']}** — {w['bpb']:.4f} bits per byte over all held-out text."]
    if w.get("within_seed_spread"):
        out.append(f"Its lead over {w['runner_up']} ({w['margin']:.4f}) is within the seed spread: treat them as tied.")
    for e in r["dedup_effect"]:
        d = e["delta_bpb"].get("total")
        if d is not None:
            better = "global" if d < 0 else "local"
            spread = e["seed_spread"].get("total", 0.0)
            noise = (f"seed spread {spread:.4f}" + (": within it, so no real difference" if abs(d) <= spread else "")
                     if spread > 0 else "one seed each, so the seed spread is unknown")
            out.append(f"Global vs local dedup ({e['mix']} mix): {better} dedup is better by {abs(d):.4f} bpb ({noise}).")
    if all(len(row["seeds"]) < 2 for row in r["rows"].values()):
        out.append("Every mix was trained with one seed: differences this small may be noise (train with several "
                   "seeds to see the spread).")
    return out


def _plots(out: Path, runs: list[Run], r: dict) -> list[str]:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []

    def save(fig, name: str) -> None:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
        plt.close(fig)
        atomic_write_bytes(out / "plots" / name, buf.getvalue())
        made.append(f"plots/{name}")

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    for run in sorted(runs, key=lambda x: x.label):
        tag = run.label + (f" s{run.seed}" if run.seed is not None else "")
        if run.train_log:
            a1.plot([x["tokens"] for x in run.train_log], [x["loss"] for x in run.train_log], label=tag, lw=1)
        ev = [x for x in run.eval_log if x.get("total") and not x.get("final")]
        fin = [x for x in run.eval_log if x.get("total") and x.get("final")]
        line = None
        if ev:
            (line,) = a2.plot([x["tokens"] for x in ev], [x["total"]["bpb"] for x in ev], marker="o", label=tag, lw=1)
        if fin:  # the final evaluation may cover more held-out text than the interval ones
            a2.plot([x["tokens"] for x in fin], [x["total"]["bpb"] for x in fin], marker="*", ms=10, ls="none",
                    color=line.get_color() if line else None, label=None if line else tag)
    a1.set_xlabel("training tokens")
    a1.set_ylabel("training loss (nats/token)")
    a1.set_title("Training loss")
    a2.set_xlabel("training tokens")
    a2.set_ylabel("held-out bits per byte")
    a2.set_title("Held-out bits per byte (★ final evaluation)")
    a2.legend(fontsize=7)
    fig.tight_layout()
    save(fig, "curves.png")

    labels = sorted(r["rows"])
    cols = r["columns"]
    if labels and cols:
        import numpy as np

        fig, ax = plt.subplots(figsize=(max(8, 1.2 * len(cols) * len(labels) / 3), 4))
        width = 0.8 / len(labels)
        x = np.arange(len(cols))
        for i, label in enumerate(labels):
            row = r["rows"][label]["bpb"]
            vals = [row.get(c, {}).get("mean", np.nan) for c in cols]
            errs = [row.get(c, {}).get("std", 0.0) for c in cols]
            ax.bar(x + i * width, vals, width, yerr=errs, label=label)
        ax.set_xticks(x + 0.4 - width / 2, cols, rotation=20)
        ax.set_ylabel("bits per byte")
        ax.set_title("Per-source held-out bits per byte by mix")
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        save(fig, "per_source_bpb.png")
    return made


def write_compare_report(run_dirs: list[str | Path], out: str | Path) -> dict:
    runs = [load_run(p) for p in run_dirs]
    r = compare(runs)
    out = Path(out)
    plots = _plots(out, runs, r)
    atomic_write_json(out / "report.json", r)
    atomic_write_bytes(out / "report.md", render_markdown(r, plots).encode())
    return r
