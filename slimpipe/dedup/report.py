"""The dedup report: ``report.json`` (numbers), ``report.md`` (for people) and PNG plots.

Per source: documents and bytes in, short, exact and near duplicates, kept, and the byte duplication
rate as in SlimPajama's table; the global-vs-local comparison from the same pass; a source × source
matrix of cross-source duplicates; the cluster-size histogram; sample clusters with estimated and
exact similarity; stage timings. The accounting ``in = kept + short + exact + near`` (plus rejected
lines, counted per file) is checked here and a mismatch is an error, not a footnote.
"""

from __future__ import annotations

import json
import threading
from collections import defaultdict
from pathlib import Path

import numpy as np

from slimpipe import storage
from slimpipe.dedup.params import DedupParams
from slimpipe.dedup.results import (
    DedupResults,
    KeepResult,
    ReadResult,
    SourceCounts,
    VerifyResult,
    WriteResult,
)
from slimpipe.sources import sort_sources


class AccountingError(RuntimeError):
    """Documents in != kept + short + duplicates: a bug, never to be papered over."""


def build_report(params: DedupParams, results: DedupResults) -> dict:
    """The report's numbers (``report.json``) from the job's parameters and its steps' typed results."""
    mode = params.mode
    inputs, rejected, files = _inputs(results.read)
    removed = {m: _sum_removed(results.keep[m]) for m in results.keep}
    kept = _sum_kept(results.written)
    problems = []
    sources: dict[str, dict] = {}
    for src in _source_names(inputs, rejected):
        row = _source_row(inputs.get(src, SourceCounts(0, 0, 0, 0)), rejected.get(src, 0), removed, src)
        row["kept_docs"], row["kept_bytes"] = kept.get(src, [0, 0])
        expect = row[mode]
        if (row["kept_docs"], row["kept_bytes"]) != (expect["kept_docs"], expect["kept_bytes"]):
            problems.append(f"{src}: wrote {row['kept_docs']} docs / {row['kept_bytes']} bytes, "
                            f"expected {expect['kept_docs']} / {expect['kept_bytes']}")
        row["global_removes_on_top_docs"] = (row["global"]["exact_docs"] + row["global"]["near_docs"]) - (
            row["local"]["exact_docs"] + row["local"]["near_docs"])
        sources[src] = row
    if problems:
        raise AccountingError("accounting does not add up: " + "; ".join(problems))
    total = _totals(sources, mode)
    # lines rejected before any source could be told (e.g. a file with no source in name or records)
    total["rejected_without_source"] = rejected.get("unknown", 0)
    total["rejected"] += total["rejected_without_source"]
    return {
        "kind": "slimpipe-dedup-report",
        "mode": mode,
        "params": params.to_dict(),
        "recall_at_threshold": params.recall_at_threshold,
        "inputs": {"files": results.files, "tasks": results.tasks, "partitions": results.partitions},
        "files": files,
        "sources": sources,
        "total": total,
        "cross_source_duplicates": _cross(results.keep.get("global", [])),
        "cluster_sizes": {m: _cluster_sizes(results.keep[m]) for m in results.keep},
        "candidates": {"band_rows": sum(b.band_rows for b in results.buckets),
                       "edges": sum(b.edges for b in results.buckets)},
        "verify": _verify(results.verify),
        "components": results.components.to_dict(),
        "sample_clusters": [c.to_dict() for c in results.samples],
        "cluster_check": _cluster_check(results.keep) if params.verify and params.cluster_check else None,
        "sources_losing_over_half": _losing_over_half(sources, mode),
        "timings": dict(results.timings),
    }


def _source_names(inputs: dict[str, SourceCounts], rejected: dict[str, int]) -> list[str]:
    return [s for s in sort_sources(set(inputs) | set(rejected)) if s != "unknown"]  # any source name


def plot_data(report: dict) -> dict:
    """Exactly what the plots show, taken from a report: per source the job's mode's kept, exact and near
    bytes and the short bytes, the cross-source matrix and the mode's cluster sizes."""
    mode = report["mode"]
    keys = ("kept_bytes", "exact_bytes", "near_bytes")
    return {"mode": mode,
            "sources": {s: {mode: {k: row[mode][k] for k in keys}, "short_bytes": row["short_bytes"]}
                        for s, row in report["sources"].items()},
            "cross_source_duplicates": report["cross_source_duplicates"],
            "cluster_sizes": {mode: report["cluster_sizes"].get(mode, {})}}


def early_plot_data(params: DedupParams, read: list[ReadResult], keep: dict[str, list[KeepResult]]) -> dict:
    """:func:`plot_data` from the read and keep steps alone, before the write step has run: the same numbers
    :func:`build_report` gives (the plots never show what the write step adds). :class:`BackgroundPlots`
    checks that against the final report."""
    inputs, rejected, _ = _inputs(read)
    removed = {m: _sum_removed(keep[m]) for m in keep}
    sources = {src: _source_row(inputs.get(src, SourceCounts(0, 0, 0, 0)), rejected.get(src, 0), removed, src)
               for src in _source_names(inputs, rejected)}
    return plot_data({"mode": params.mode, "sources": sources, "cross_source_duplicates": _cross(keep.get("global", [])),
                      "cluster_sizes": {m: _cluster_sizes(keep[m]) for m in keep}})


def _inputs(read: list[ReadResult]) -> tuple[dict[str, SourceCounts], dict[str, int], list[dict]]:
    """Per source: documents and bytes in (and short); rejected lines per source; each file's read stats."""
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    rejected: dict[str, int] = defaultdict(int)
    files = []
    for r in read:
        for src, c in r.by_source.items():
            for i, v in enumerate(c.to_list()):
                counts[src][i] += v
        rejected[r.stats.source or "unknown"] += r.stats.rejected
        files.append(r.stats.to_dict())
    return {src: SourceCounts(*v) for src, v in counts.items()}, rejected, files


def _sum_removed(keep: list[KeepResult]) -> dict[str, dict[str, list[int]]]:
    """Per source and reason: documents and bytes removed."""
    out: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(lambda: [0, 0]))
    for r in keep:
        for (src, reason), (n, nb) in r.removed.items():
            out[src][reason][0] += n
            out[src][reason][1] += nb
    return out


def _sum_kept(written: list[WriteResult]) -> dict[str, list[int]]:
    kept: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for w in written:
        for src, (n, nb) in w.kept.items():
            kept[src][0] += n
            kept[src][1] += nb
    return kept


def _source_row(c: SourceCounts, rejected: int, removed: dict[str, dict[str, dict[str, list[int]]]],
                src: str) -> dict:
    """One source's row: what came in, and per mode what each kind of duplicate removed."""
    row: dict = {"docs_in": c.docs, "bytes_in": c.nbytes, "short_docs": c.short_docs, "short_bytes": c.short_bytes,
                 "rejected": rejected}
    for m in removed:
        ex = removed[m].get(src, {}).get("exact_duplicate", [0, 0])
        nr = removed[m].get(src, {}).get("near_duplicate", [0, 0])
        row[m] = {"exact_docs": ex[0], "exact_bytes": ex[1], "near_docs": nr[0], "near_bytes": nr[1],
                  "kept_docs": c.docs - c.short_docs - ex[0] - nr[0],
                  "kept_bytes": c.nbytes - c.short_bytes - ex[1] - nr[1]}
        row[m]["byte_duplication_rate"] = (ex[1] + nr[1]) / c.nbytes if c.nbytes else 0.0
    row["short_rate"] = c.short_docs / c.docs if c.docs else 0.0
    return row


def _cross(keep: list[KeepResult]) -> dict[str, dict[str, int]]:
    """Removed document's source → kept document's source → documents (global components)."""
    cross: dict[str, dict[str, int]] = {}
    for r in keep:
        for (a, b), n in r.cross.items():
            if a != b:
                cross.setdefault(a, {})[b] = cross.get(a, {}).get(b, 0) + n
    return cross


def _cluster_sizes(keep: list[KeepResult]) -> dict[str, int]:
    hist: dict[int, int] = defaultdict(int)
    for r in keep:
        for size, count in r.cluster_sizes.items():
            hist[size] += count
    return {str(k): hist[k] for k in sorted(hist)}


def _verify(verify: list[VerifyResult] | None) -> dict | None:
    if verify is None:
        return None
    hist = np.sum([v.j_hist for v in verify], axis=0).tolist() if verify else [0] * 20
    return {"candidates": sum(v.candidates for v in verify), "confirmed": sum(v.confirmed for v in verify),
            "false_positives_dropped": sum(v.dropped for v in verify), "jaccard_histogram_20_bins": hist}


def _cluster_check(keep: dict[str, list[KeepResult]]) -> dict:
    """Per mode: documents the cluster check kept (per source, and in all) and its most rounds in one component."""
    check = {}
    for m, results in keep.items():
        saved: dict[str, int] = defaultdict(int)
        for r in results:
            for src, n in r.saved.items():
                saved[src] += int(n)
        check[m] = {"saved": dict(sorted(saved.items())),
                    "rounds": max((r.check_rounds for r in results), default=0)}
        check[m]["saved_total"] = sum(check[m]["saved"].values())
    return check


def _losing_over_half(sources: dict[str, dict], mode: str) -> dict[str, float]:
    """A source that loses more than half its documents to duplicates deserves a look (a chained cluster
    can wipe out a source): named in the report's first lines."""
    return {src: round(1 - row[mode]["kept_docs"] / max(1, row["docs_in"] - row["short_docs"]), 4)
            for src, row in sources.items()
            if row["docs_in"] - row["short_docs"] > 0
            and row[mode]["exact_docs"] + row[mode]["near_docs"] > (row["docs_in"] - row["short_docs"]) / 2}


def _totals(sources: dict[str, dict], mode: str) -> dict:
    t: dict = {k: sum(s[k] for s in sources.values())
               for k in ("docs_in", "bytes_in", "short_docs", "short_bytes", "rejected", "kept_docs", "kept_bytes")}
    for m in ("global", "local"):
        t[m] = {k: sum(s[m][k] for s in sources.values())
                for k in ("exact_docs", "exact_bytes", "near_docs", "near_bytes", "kept_docs", "kept_bytes")}
        t[m]["byte_duplication_rate"] = (t[m]["exact_bytes"] + t[m]["near_bytes"]) / t["bytes_in"] if t["bytes_in"] else 0.0
    t["short_rate"] = t["short_docs"] / t["docs_in"] if t["docs_in"] else 0.0
    assert t["docs_in"] == t["kept_docs"] + t["short_docs"] + t[mode]["exact_docs"] + t[mode]["near_docs"]
    return t


# ---------------------------------------------------------------------------------------------------- output


class BackgroundPlots:
    """The report's plots rendered in a thread of the driver while the job's last steps run (the driver only
    waits on Ray then): ``BackgroundPlots(early_plot_data(...))``, then ``write_report(out, report, plots)``.

    The PNGs are used only when the final report shows exactly the numbers they were drawn from
    (:func:`plot_data`); otherwise they are drawn again from the report, so a plot never shows another
    number than the report.
    """

    def __init__(self, data: dict):
        self.data = data
        self._pngs: dict[str, bytes] | None = None
        self._thread = threading.Thread(target=self._render, name="slimpipe-report-plots", daemon=True)
        self._thread.start()

    def _render(self) -> None:
        try:
            self._pngs = render_plots(self.data)
        except Exception:  # noqa: BLE001 - drawn again (and any error raised) on the main thread
            self._pngs = None

    def pngs_for(self, report: dict) -> dict[str, bytes] | None:
        """The rendered PNGs (name -> bytes) if they show this report's numbers, else None."""
        self._thread.join()
        return self._pngs if plot_data(report) == self.data else None


def preload_plotting() -> None:
    """Import the plotting library (a second of CPU) ahead of the report, e.g. while Ray starts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot  # noqa: F401


def write_report(out: str | Path, report: dict, plots: BackgroundPlots | None = None) -> None:
    """report.json, the plots (``plots``' PNGs when they show this report's numbers) and report.md under ``out``."""
    out = Path(out)
    storage.write_json_atomic(out / "report.json", report)
    pngs = plots.pngs_for(report) if plots is not None else None
    if pngs is None:
        pngs = render_plots(plot_data(report))
    made = []
    for name, png in pngs.items():
        storage.write_bytes_atomic(out / "plots" / name, png)
        made.append(f"plots/{name}")
    storage.write_bytes_atomic(out / "report.md", render_markdown(report, made).encode())


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def render_markdown(r: dict, plots: list[str]) -> str:
    mode = r["mode"]
    p = r["params"]
    lines = [
        f"# Dedup report ({mode})",
        "",
        f"Preset `{p['name']}`: {p['unit']} {p['ngram']}-grams, {p['num_perm']} permutations, threshold {p['threshold']}, "
        f"{p['bands']} bands × {p['rows']} rows (P(candidate | J = {p['threshold']}) = {r['recall_at_threshold']:.3f}), "
        f"short < {p['min_chars']} cleaned chars, keep `{p['keep']}`, verify {'on' if p['verify'] else 'off'}.",
        "",
    ]
    for src, frac in (r.get("sources_losing_over_half") or {}).items():
        lines += [f"**{src} loses {_pct(frac)} of its documents (after the short filter) as duplicates**: "
                  "check its largest clusters below before using the output.", ""]
    lines += [
        "## Per source",
        "",
        "| source | docs in | MB in | short | exact dup | near dup | kept | kept MB | byte duplication rate | rejected |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    rows = list(r["sources"].items()) + [("**total**", r["total"])]
    for src, s in rows:
        m = s[mode]
        lines.append(
            f"| {src} | {s['docs_in']:,} | {s['bytes_in'] / 1e6:.2f} | {s['short_docs']:,} | {m['exact_docs']:,} | "
            f"{m['near_docs']:,} | {m['kept_docs']:,} | {m['kept_bytes'] / 1e6:.2f} | {_pct(m['byte_duplication_rate'])} | "
            f"{s['rejected']:,} |"
        )
    lines += [
        "",
        "## Global vs local (one pass)",
        "",
        "Local dedup finds duplicates within each source only; global also removes cross-source copies.",
        "",
        "| source | local removes | local keeps | global removes | global keeps | global removes on top |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for src, s in rows:
        lo, gl = s["local"], s["global"]
        on_top = (gl["exact_docs"] + gl["near_docs"]) - (lo["exact_docs"] + lo["near_docs"])
        lines.append(f"| {src} | {lo['exact_docs'] + lo['near_docs']:,} | {lo['kept_docs']:,} | "
                     f"{gl['exact_docs'] + gl['near_docs']:,} | {gl['kept_docs']:,} | {on_top:,} |")
    lines += ["", "## Cross-source duplicates (global)", "",
              "Rows: source of the removed document; columns: source of the document kept for it."
              + ("" if mode == "global" else f" This run is **{mode}**: it kept both copies of each pair below; the "
                 "matrix shows what global dedup removes from the same pass."), ""]
    cross = r["cross_source_duplicates"]
    if cross:
        cols = sorted({b for a in cross.values() for b in a})
        lines.append("| removed \\ kept | " + " | ".join(cols) + " |")
        lines.append("|---|" + "---:|" * len(cols))
        for a in sorted(cross):
            lines.append(f"| {a} | " + " | ".join(str(cross[a].get(b, 0)) for b in cols) + " |")
    else:
        lines.append("None found.")
    lines += ["", "## Clusters", "", "| cluster size | global | local |", "|---:|---:|---:|"]
    sizes = sorted({int(k) for m in r["cluster_sizes"].values() for k in m})
    for k in sizes:
        lines.append(f"| {k} | {r['cluster_sizes'].get('global', {}).get(str(k), 0)} | "
                     f"{r['cluster_sizes'].get('local', {}).get(str(k), 0)} |")
    c = r["components"]
    lines += ["", f"Connected components: {c['path']} path over {c['edges']:,} edges "
              f"(candidate band rows {r['candidates']['band_rows']:,}, near edges {r['candidates']['edges']:,})."]
    if r["verify"]:
        v = r["verify"]
        lines += ["", "## Verification", "",
                  f"{v['candidates']:,} candidate pairs checked with the exact Jaccard; {v['confirmed']:,} confirmed, "
                  f"**{v['false_positives_dropped']:,} false positives dropped**."]
    if r.get("cluster_check"):
        cc_ = r["cluster_check"][mode]
        saved = ", ".join(f"{src} {n:,}" for src, n in cc_["saved"].items()) or "none"
        lines += ["", f"Cluster check: every removed document has exact Jaccard >= {p['threshold']} with the "
                  f"document kept in its stead. Connected components alone would also have removed "
                  f"**{cc_['saved_total']:,} documents** that are not that similar to their cluster's kept "
                  f"document; they were kept ({saved}). Largest number of rounds in one component: {cc_['rounds']}."]
    if r["sample_clusters"]:
        lines += ["", "## Sample clusters", ""]
        for s in r["sample_clusters"]:
            lines.append(f"- cluster {s['cluster']} ({s['size']} docs), kept `{s['keeper']}`: {s['keeper_excerpt']!r}")
            for m in s["members"]:
                lines.append(f"  - `{m['id']}` estimated J {m['estimated_jaccard']}, exact J {m['exact_jaccard']}: {m['excerpt']!r}")
    lines += ["", "## Stage timings (seconds)", "", "| stage | seconds |", "|---|---:|"]
    for k, v in r["timings"].items():
        lines.append(f"| {k} | {v:.2f} |")
    if r["total"].get("rejected_without_source"):
        lines.append(f"\n{r['total']['rejected_without_source']:,} rejected lines had no recognisable source "
                     "(counted in the total only); see rejects.parquet.")
    for f in r["files"]:
        if f["status"] != "ok" or f["rejected"]:
            lines.append(f"\n**{f['file']}**: {f['status']}, {f['rejected']} rejected lines {f['reasons']}"
                         + (f" — {f['error']}" if f["error"] else ""))
    if plots:
        lines += ["", "## Plots", ""] + [f"![{Path(x).stem}]({x})" for x in plots]
    return "\n".join(lines) + "\n"


def render_plots(r: dict) -> dict[str, bytes]:
    """The report's PNGs (file name -> bytes, in the report's order) from :func:`plot_data`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made: dict[str, bytes] = {}
    mode = r["mode"]
    srcs = list(r["sources"])
    if srcs:
        fig, ax = plt.subplots(figsize=(8, 4))
        bottoms = np.zeros(len(srcs))
        for label, key in (("kept", "kept_bytes"), ("exact dup", "exact_bytes"), ("near dup", "near_bytes")):
            vals = np.array([r["sources"][s][mode][key] / 1e6 for s in srcs])
            ax.bar(srcs, vals, bottom=bottoms, label=label)
            bottoms += vals
        vals = np.array([r["sources"][s]["short_bytes"] / 1e6 for s in srcs])
        ax.bar(srcs, vals, bottom=bottoms, label="short")
        ax.set_ylabel("MB")
        ax.set_title(f"What {mode} dedup did per source")
        ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)  # outside: covers no bar
        plt.setp(ax.get_xticklabels(), rotation=30, ha="right")
        fig.tight_layout()
        made["per_source.png"] = _png(fig)
    cross = r["cross_source_duplicates"]
    if cross:
        names = sorted(set(cross) | {b for a in cross.values() for b in a})
        mat = np.array([[cross.get(a, {}).get(b, 0) for b in names] for a in names])
        fig, ax = plt.subplots(figsize=(5, 4))
        im = ax.imshow(mat, cmap="viridis")
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
        ax.set_yticks(range(len(names)), names)
        ax.set_xlabel("kept in")
        ax.set_ylabel("removed from")
        for i in range(len(names)):
            for j in range(len(names)):
                ax.text(j, i, str(mat[i, j]), ha="center", va="center",
                        color="black" if mat[i, j] > 0.6 * max(1, mat.max()) else "white")
        fig.colorbar(im, label="documents")
        # the matrix always comes from the global components: say which dedup it shows
        ax.set_title("Cross-source duplicates removed by global dedup" if mode == "global" else
                     f"Cross-source duplicates (global view)\n{mode} dedup kept both copies of each", fontsize=10)
        fig.tight_layout()
        made["cross_source.png"] = _png(fig)
    hist = r["cluster_sizes"].get(mode, {})
    if hist:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ks = sorted(int(k) for k in hist)
        counts = [hist[str(k)] for k in ks]
        # points on log-log axes: a size seen once is as visible as one seen a thousand times
        ax.plot(ks, counts, "o-", lw=1)
        for k, c in zip(ks, counts, strict=True):
            ax.annotate(f"{c:,}", (k, c), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=7)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(ks, [str(k) for k in ks], fontsize=8)
        ax.minorticks_off()
        ax.set_ylim(0.5, max(counts) * 3)
        ax.set_xlabel("cluster size (documents, log scale)")
        ax.set_ylabel("clusters (log scale)")
        ax.set_title(f"Cluster sizes ({mode} dedup)")
        fig.tight_layout()
        made["cluster_sizes.png"] = _png(fig)
    return made


def _png(fig) -> bytes:
    import io

    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def load_report(out: str | Path) -> dict:
    return json.loads((Path(out) / "report.json").read_text())
