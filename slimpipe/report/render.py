"""``report.md`` of ``slimpipe compare``: every stated difference with its interval, sizes next to figures."""

from __future__ import annotations

from pathlib import Path

from slimpipe.report.stats import MIN_DOCS, MIN_SEEDS_FOR_CLAIM, describe
from slimpipe.sources import SOURCES, sort_sources


def _fmt(cell: dict | None) -> str:
    if not cell:
        return "–"
    if cell["n"] > 1:
        return f"{cell['mean']:.4f} ± {cell['std']:.4f}"
    return f"{cell['mean']:.4f}"


def _k(n: float | None) -> str:
    if n is None:
        return "?"
    if n >= 1_000_000:
        return f"{n / 1e6:.2f}M"
    return f"{n / 1000:.1f}k" if n >= 1000 else str(int(n))


def _ci_text(col: dict | None) -> str:
    if not col:
        return "no interval (no per-document losses)"
    return describe(col["diff"], col["ci95"], col.get("note"))


def _seeds(n: list[int] | None) -> str:
    if not n:
        return "?"
    return f"{n[0]} seed{'s' if n[0] != 1 else ''} each" if n[0] == n[1] else f"{n[0]} and {n[1]} seeds"


def _total_scope(x: dict) -> str:
    """"total bits per byte", naming the sources its interval leaves out."""
    ex = x.get("excluded_from_total") or {}
    return "total bits per byte" + (f" over the sources with intervals; left out: {', '.join(ex)}" if ex else "")


def _conditional(x: dict) -> str:
    """Why a difference is not a verdict: one seed (no training noise in the interval) or fewer than 3."""
    if not x.get("seed_aware"):
        return ("conditional on these trained models: the interval covers the evaluation documents only, not "
                f"training noise ({_seeds(x.get('n_seeds'))}); train at least {MIN_SEEDS_FOR_CLAIM} seeds per "
                "configuration for a verdict")
    return (f"conditional on these trained models: {_seeds(x.get('n_seeds'))}, fewer than the "
            f"{MIN_SEEDS_FOR_CLAIM} a verdict needs")


def headline(r: dict) -> list[str]:
    """The report's first lines: warnings, global vs local with its interval, then the best mix. "is better"
    only from an interval over seeds and documents with at least three seeds per configuration."""
    out = [f"**Warning: {w}.**" for w in r["warnings"]]
    for e in r["dedup_effect"]:
        c = e["columns"].get("total")
        d = e["delta_bpb"].get("total")
        if c and c["ci95"] and e.get("claim_ok"):
            if c["detectable"]:
                better = "global" if c["diff"] < 0 else "local"
                out.append(f"**Global vs local dedup ({e['mix']} mix, {_seeds(e['n_seeds'])}): {better} dedup is "
                           f"better** — global − local = {describe(c['diff'], c['ci95'])} ({_total_scope(e)}; "
                           "interval over seeds and documents).")
            else:
                out.append(f"Global vs local dedup ({e['mix']} mix, {_seeds(e['n_seeds'])}): "
                           f"{describe(c['diff'], c['ci95'])}, global − local ({_total_scope(e)}; interval over "
                           "seeds and documents).")
        elif c and c["ci95"]:
            lo, hi = c["ci95"]
            out.append(f"Global vs local dedup ({e['mix']} mix), {_conditional(e)}: global − local = "
                       f"{c['diff']:+.4f} bpb, 95% CI [{lo:+.4f}, {hi:+.4f}] ({_total_scope(e)}); no verdict.")
        elif c:
            out.append(f"Global vs local dedup ({e['mix']} mix): global − local = {c['diff']:+.4f} bpb; "
                       f"no interval ({c.get('note')}), so no difference is claimed.")
        elif d is not None and e.get("interval_method"):
            out.append(f"Global vs local dedup ({e['mix']} mix): global − local = {d:+.4f} bpb (total over every "
                       f"source); no interval: every source has fewer than {MIN_DOCS} evaluation documents, so no "
                       "source carries a pooled interval and no difference is claimed.")
        elif d is not None:
            out.append(f"Global vs local dedup ({e['mix']} mix): global − local = {d:+.4f} bpb; no interval "
                       "(the runs saved no per-document losses), so no difference is claimed.")
    w = r["winners"].get("total")
    if w:
        ci = w.get("ci95")
        gap = f"{w.get('diff', w.get('margin', 0.0)):+.4f} bpb"
        if w.get("claim"):
            out.append(f"**Best mix overall: {w['winner']}** — {w['bpb']:.4f} bits per byte; {w['runner_up']} − "
                       f"{w['winner']} = {gap}, 95% CI [{ci[0]:+.4f}, {ci[1]:+.4f}] ({_total_scope(w)}; interval "
                       f"over seeds and documents, {_seeds(w.get('n_seeds'))}).")
        elif "runner_up" in w and ci and not w.get("claim_ok"):
            out.append(f"Best mix overall, {_conditional(w)}: {w['winner']} ({w['bpb']:.4f}) leads {w['runner_up']} "
                       f"by {gap}, 95% CI [{ci[0]:+.4f}, {ci[1]:+.4f}] ({_total_scope(w)}); no verdict.")
        elif "runner_up" in w and ci and w.get("excluded_from_total"):  # the interval's total is over fewer sources
            out.append(f"Best mix overall: no detectable difference — {w['winner']} has the lowest total over every "
                       f"source ({w['bpb']:.4f}, {w['margin']:.4f} below {w['runner_up']}); over the sources with "
                       f"intervals {w['runner_up']} − {w['winner']} = {gap}, 95% CI [{ci[0]:+.4f}, {ci[1]:+.4f}], "
                       "which covers 0.")
        elif "runner_up" in w:
            why = (f"95% CI of the gap [{ci[0]:+.4f}, {ci[1]:+.4f}] covers 0" if ci
                   else f"no interval: every source has fewer than {MIN_DOCS} evaluation documents"
                   if w.get("interval_method") else "no interval: the runs saved no per-document losses")
            out.append(f"Best mix overall: no detectable difference — {w['winner']} ({w['bpb']:.4f}) leads "
                       f"{w['runner_up']} by {gap} ({why}).")
        else:
            out.append(f"Only one configuration: {w['winner']} ({w['bpb']:.4f} bits per byte).")
    p = r["pairing"]
    if p["same_seeds_in_every_row"]:
        what = ["the same seeds"]
        what += ["the same initial weights"] if p["same_init"] else []
        what += ["the same data order"] if p["same_data_order"] else []
        tail = "" if p["same_data_order"] else "; their data orders differ (different mix sizes)"
        out.append(f"Intervals are paired by evaluation document and by seed: every configuration ran with "
                   f"{', '.join(what[:-1]) + ' and ' + what[-1] if len(what) > 1 else what[0]}{tail}.")
    else:
        out.append("Not every configuration ran with the same seeds: intervals pair runs by seed where two "
                   "configurations share their seeds, and always by evaluation document.")
    if all(len(row["seeds"]) < 2 for row in r["rows"].values()):
        out.append("One seed per configuration: every interval is conditional on these trained models — it covers "
                   "the sampling of evaluation documents, not training noise (initialisation, data order); train "
                   f"at least {MIN_SEEDS_FOR_CLAIM} seeds per configuration for a verdict.")
    ex = r.get("excluded_from_intervals") or {}
    if ex:
        rows = list(r["rows"].values())
        size = rows[0]["eval_size"] if rows else {}
        named = sorted(ex, key=lambda s: ((size.get(s) or {}).get("docs") or 0, s))
        out.append("Left out of the total and mean intervals (too few evaluation documents; reasons below): "
                   + ", ".join(f"{s} ({(size.get(s) or {}).get('docs', 0)} docs)" for s in named) + ".")
    if r.get("interval_method"):
        out.append(f"Interval method: {r['interval_method']}.")
    return out


def render_markdown(r: dict, plots: list[str]) -> str:
    lines = ["# Mix comparison", ""] + headline(r)
    if r["same_tokenizer"]:
        lines += ["", "All runs share one tokenizer."]
    else:
        lines += ["", f"Runs use {len(r['tokenizers'])} different tokenizers, so they are compared in **bits per "
                  "byte only** (token-level loss is not comparable across tokenizers)."]
    for t in r["tables"]:
        lines += _table(r, t)
    if r.get("small_eval"):
        lines += ["", "**Evaluation sets smaller than they should be** (weakest first; their figures are less "
                  "certain):", ""]
        lines += [f"- {s}: {why}" for s, why in r["small_eval"].items()]
    if r["missing_eval"]:
        lines += ["", "**Sources without an evaluation figure:**", ""]
        lines += [f"- {s}: {why}" for s, why in r["missing_eval"].items()]
    lines += _tasks(r)
    lines += _differences(r)
    lines += _composition(r)
    lines += _mixes(r)
    if r.get("bpb_definition"):
        lines += ["", "## What bits per byte counts", "", r["bpb_definition"]]
    lines += ["", "## Provenance", "", "| run | seed(s) | dataset manifest | eval set | dedup | tokenizer | model | "
              "tokens | lr | run folders |", "|---|---|---|---|---|---|---|---|---|---|"]
    for label, row in sorted(r["rows"].items()):
        lines.append(f"| {label} | {', '.join(str(s) for s in row['seeds'])} | `{str(row['dataset'])[:12]}` | "
                     f"`{str(row['eval_set'])[:12]}` | {row['dedup']} | `{str(row['tokenizer'])[:12]}` | "
                     f"{row['model']} | {row['tokens']} | {row['lr']} | {', '.join(row['runs'])} |")
    if plots:
        lines += ["", "## Plots", ""] + [f"![{Path(p).stem}]({p})" for p in plots]
    return "\n".join(lines) + "\n"


def _table(r: dict, t: dict) -> list[str]:
    rows = r["rows"]
    cols = [c for c in [*SOURCES, *sorted(set(r["columns"]) - set(SOURCES))]
            if any(c in rows[lb]["bpb"] for lb in t["rows"])] + ["total", "mean"]
    es = t["eval_set"]
    lines = ["", f"## Bits per byte on evaluation set `{str(es)[:16]}` (lower is better)" if es
             else "## Bits per byte on runs without a recorded evaluation set (lower is better)", ""]
    lines += ["`total` pools every evaluation document (sources weighted by size); `mean` is the unweighted mean "
              "over sources. Several seeds: mean ± sample standard deviation. **Bold**: best in the column *and* "
              "its lead over the runner-up has a 95% interval (over seeds and documents, at least "
              f"{MIN_SEEDS_FOR_CLAIM} seeds) that excludes 0; otherwise nothing is bold.", ""]
    lines.append("| run | seeds | " + " | ".join(cols) + " |")
    lines.append("|---|---:|" + "---:|" * len(cols))
    ordered = sorted(t["rows"], key=lambda lb: rows[lb]["bpb"].get("total", {}).get("mean", 9e9))
    for label in ordered:
        row = rows[label]
        cells = []
        for c in cols:
            s = _fmt(row["bpb"].get(c))
            w = t["winners"].get(c, {})
            if w.get("winner") == label and w.get("claim"):
                s = f"**{s}**"
            cells.append(s)
        lines.append(f"| {label} | {len(row['seeds'])} | " + " | ".join(cells) + " |")
    size = rows[ordered[0]]["eval_size"] if ordered else {}
    sizes = [f"{_k(size[c].get('docs'))} docs / {_k(size[c].get('tokens'))} tok" if c in size else "–"
             for c in cols[:-2]]
    tot_docs = sum((v.get("docs") or 0) for v in size.values())
    tot_tok = sum((v.get("tokens") or 0) for v in size.values())
    lines.append("| *evaluation size* | | " + " | ".join(sizes) + f" | {_k(tot_docs)} docs / {_k(tot_tok)} tok | |")
    return lines


def _about(x: dict) -> str:
    """How one difference's interval was made, in a few words."""
    seeds = "seeds and documents" if x.get("seed_aware") else "documents only, conditional on these trained models"
    verdict = "" if x.get("claim_ok") else f"; no verdict: {_seeds(x.get('n_seeds'))}"
    ex = x.get("excluded_from_total") or {}
    left = f"; total and mean leave out {', '.join(ex)}" if ex else ""
    return (f"interval over {seeds}{verdict}; paired by document: {'yes' if x.get('paired_docs') else 'no'}, "
            f"by seed: {'yes' if x.get('paired_seeds') else 'no'}{left}")


def _differences(r: dict) -> list[str]:
    lines = ["", "## Differences, each with a 95% interval", "",
             "A − B in bits per byte (negative: A is better). \"no detectable difference\" = the interval covers 0.",
             "", f"Interval method: {r.get('interval_method') or 'none (no per-document losses)'}."]
    ex = r.get("excluded_from_intervals") or {}
    if ex:
        lines += ["", "Left out of the total and mean intervals: "
                  + "; ".join(f"{s} ({why})" for s, why in ex.items()) + "."]
    for e in r["dedup_effect"]:
        lines += ["", f"**{e['global']} − {e['local']}** (global − local dedup; {_about(e)}):", ""]
        lines += [f"- {c}: {_ci_text(e['columns'].get(c))}" for c in ("total", "mean", *r["columns"])
                  if c in e["delta_bpb"]]
    for label, row in sorted(r["rows"].items()):
        vb = row.get("vs_best")
        if not vb:
            continue
        lines += ["", f"**{label} − {vb['against']}** (against the best in total; {_about(vb)}):", ""]
        if not vb["columns"]:
            lines.append(f"- {vb.get('note', 'no interval')}")
            continue
        lines += [f"- {c}: {_ci_text(vb['columns'].get(c))}" for c in ("total", "mean", *r["columns"])
                  if c in vb["columns"]]
    return lines


def _pair(g: dict, lo: dict, s: str, k: str, fmt) -> str:
    """"global / local (change)" for one source and one figure."""
    a, b = g.get(s, {}).get(k), lo.get(s, {}).get(k)
    if a is None and b is None:
        return "–"
    cell = f"{fmt(a) if a is not None else '?'} / {fmt(b) if b is not None else '?'}"
    if a is not None and b:
        cell += f" ({100 * (a - b) / b:+.1f}%)" if a != b else " (=)"
    return cell


def _tot(d: dict, k: str) -> int | None:
    vals = [v.get(k) for v in d.values() if v.get(k) is not None]
    return sum(vals) if vals else None


def _composition(r: dict) -> list[str]:
    """Per source, what each dedup mode's training data held: global dedup moves cross-source duplicates to
    whichever source keeps them, so part of a "global" effect is composition."""
    lines: list[str] = []
    for e in r["dedup_effect"]:
        comp = e.get("composition") or {}
        g, lo = comp.get("global") or {}, comp.get("local") or {}
        srcs = [s for s in sort_sources(set(g) | set(lo))]
        if not srcs:
            continue

        lines += ["", f"## What global vs local dedup changed in the training data ({e['mix']} mix)", "",
                  "Global dedup removes a document duplicated across sources from all but one source, so the two "
                  "modes train on different text per source before any model sees it; with the same shares and "
                  "token budget, the global − local difference above is partly this composition and its "
                  "repetition (epochs), not only the removed duplicates. Each cell: global / local (change).", "",
                  "| source | train documents | train bytes | tokens available | tokens trained | epochs |",
                  "|---|---:|---:|---:|---:|---:|"]
        for s in srcs:
            lines.append(f"| {s} | {_pair(g, lo, s, 'docs', _k)} | {_pair(g, lo, s, 'bytes', _k)} | {_pair(g, lo, s, 'tokens_available', _k)} "
                         f"| {_pair(g, lo, s, 'tokens_trained', _k)} | {_pair(g, lo, s, 'epochs', lambda x: f'{x:.2f}')} |")
        td = {k: (_tot(g, k), _tot(lo, k)) for k in ("docs", "bytes", "tokens_available", "tokens_trained")}
        cells = [f"{_k(a)} / {_k(b)}" + (f" ({100 * (a - b) / b:+.1f}%)" if a is not None and b else "")
                 for a, b in td.values()]
        lines.append("| **all** | " + " | ".join(cells) + " | |")
    return lines


def _mixes(r: dict) -> list[str]:
    srcs = [s for s in sort_sources({k for row in r["rows"].values() for k in row["weights"]})
            if any(row["weights"].get(s) for row in r["rows"].values())]  # any source name, the seven first
    lines = ["", "## Mixes", "", "Share of training tokens per source; ×N = epochs over that source's available "
             "data (repetition when above 1).", "", "| run | " + " | ".join(srcs) + " |", "|---|" + "---:|" * len(srcs)]
    for label, row in sorted(r["rows"].items()):
        w, ep = row["weights"], row.get("epochs", {})
        cells = []
        for s in srcs:
            cell = f"{100 * w.get(s, 0):.1f}%"
            if ep.get(s):
                cell += f" ×{ep[s]:.2f}" if ep[s] < 1 else f" **×{ep[s]:.2f}**" if ep[s] > 1.0001 else " ×1.00"
            cells.append(cell)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def _tasks(r: dict) -> list[str]:
    """Downstream accuracy (``slimpipe eval``, lm-evaluation-harness) next to bits per byte, when present."""
    tasks = sorted({t for row in r["rows"].values() for t in row.get("tasks", {})})
    if not tasks:
        return []
    lines = ["", "## Downstream tasks (lm-evaluation-harness, `slimpipe eval`)", "",
             "Accuracy (higher is better), mean over the seeds that have it; no interval is claimed here.", "",
             "| run | total bpb | " + " | ".join(tasks) + " |", "|---|---:|" + "---:|" * len(tasks)]
    for label, row in sorted(r["rows"].items()):
        cells = [f"{row['tasks'][t]['mean']:.3f} ({row['tasks'][t]['metric']})" if t in row.get("tasks", {}) else "–"
                 for t in tasks]
        lines.append(f"| {label} | {_fmt(row['bpb'].get('total'))} | " + " | ".join(cells) + " |")
    return lines
