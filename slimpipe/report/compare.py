"""``slimpipe compare RUN... -o REPORT``: the effect of each mix (and of global vs local dedup), controlled.

Every figure comes from a run's own files: ``metrics.json`` (per-document bits per byte under
``eval_docs``, the evaluation set's hash under ``eval_set``), ``eval_losses.npz`` (each evaluation
document's loss), ``eval_log.jsonl`` / ``train_log.jsonl`` (curves), ``config.json`` (configuration and
seed) and the mix's ``manifest.json`` (weights, epochs, tokenizer, the dataset and its dedup mode).

* A **row** is one full training configuration (mix, dedup mode, dataset, eval set, tokenizer, model,
  tokens, learning rate, sequence length, schedule); only the seed varies inside it, and a repeated
  seed is refused with one line naming the runs.
* Rows scored on different evaluation sets, or on different scored subsets of one (``scored_subset``: the
  hash of the scored document pieces), are never ranked against each other: each gets its own table and
  the report opens with a warning; a run that records no ``scored_subset`` is "unknown" and said so.
* Every difference stated (each row against the best, global against local) carries a 95% interval that
  includes the evaluation documents and, with two or more seeds, the training seeds
  (:mod:`slimpipe.report.stats`); one that covers 0 reads "no detectable difference" and is never bolded.
  A configuration with fewer than three seeds gets no verdict: its differences are stated as conditional
  on the trained models. Sources too small for an interval are left out of the ``total``/``mean`` intervals
  and named with the reason.
* Global vs local dedup: the realised per-source content of both modes' training data (documents and
  bytes after dedup, tokens trained, epochs) next to the effect, so composition is visible.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from slimpipe import storage
from slimpipe.report.stats import (
    CONDITIONAL_METHOD,
    MIN_DOCS,
    MIN_SEEDS_FOR_CLAIM,
    SEED_AWARE_METHOD,
    RowLosses,
    difference,
)
from slimpipe.sources import SOURCES

# the configuration fields that key a row (only the seed may vary inside one)
CONFIG_KEYS = ("mix", "dedup", "dataset", "eval_set", "scored_subset", "tokenizer", "model", "tokens", "lr", "seq_len",
               "schedule")


class CompareError(ValueError):
    pass


@dataclass
class Run:
    path: Path
    label: str  # "<mix> (<dedup mode>)", made unique per configuration by :func:`compare`
    mix: str
    dedup: str
    seed: int | None
    tokenizer: str
    dataset: str
    mix_weights: dict[str, float]
    metrics: dict
    config: dict = field(default_factory=dict)  # CONFIG_KEYS -> value
    mix_manifest: dict = field(default_factory=dict)
    losses: dict | None = None  # per source {"nll", "tokens", "bytes"} arrays, when the run saved them
    eval_log: list[dict] = field(default_factory=list)
    train_log: list[dict] = field(default_factory=list)
    tasks: dict = field(default_factory=dict)  # lm-eval task -> (metric, value), from RUN/lm_eval.json
    small_eval: dict = field(default_factory=dict)  # source -> reason, from the evaluation set's manifest
    excluded: dict = field(default_factory=dict)  # source -> reason: left out of total/mean intervals
    scored_subset: str | None = None  # hash of the scored (source, document, piece) list; None: unknown
    composition: dict = field(default_factory=dict)  # source -> realised training content (see _composition)

    @property
    def eval(self) -> dict:
        """Per-document evaluation when the run has it, else the packed-window one."""
        docs = self.metrics.get("eval_docs")
        return docs if docs and "sources" in docs else self.metrics["eval"]


def _read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise CompareError(f"{path.parent}: missing {path.name} (is this a finished `slimpipe train` run?)") from exc
    except ValueError as exc:
        raise CompareError(f"{path}: not valid JSON ({exc})") from exc


def load_run(path: str | Path) -> Run:
    path = Path(path)
    metrics = _json(path / "metrics.json")
    config = _json(path / "config.json")
    train_cfg = config.get("train", config)
    plan = config.get("plan", {})
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
    eval_set = metrics.get("eval_set") or mix_manifest.get("eval_set")
    small_eval = {}
    excluded = {str(s): str(why) for s, why in (metrics.get("excluded_from_intervals") or {}).items()}
    eval_manifest = Path(inp.get("path", "")) / "eval" / "manifest.json"  # SLIMPAJAMA_DIR/eval, when local
    if eval_manifest.is_file():
        em = json.loads(eval_manifest.read_text())
        small_eval = {s: v.get("reason") or "too small" for s, v in em.get("sources", {}).items() if v.get("too_small")}
        for s, v in em.get("sources", {}).items():
            if v.get("excluded_from_intervals"):
                excluded.setdefault(s, v.get("reason") or "too few evaluation documents for an interval")
    ev_info = mix_manifest.get("eval") if isinstance(mix_manifest.get("eval"), dict) else {}
    for s, v in (ev_info.get("validation", ev_info) or {}).items():
        if isinstance(v, dict) and v.get("excluded_from_intervals"):
            excluded.setdefault(s, v.get("reason") or "too few evaluation documents for an interval")
    scored = metrics.get("scored_subset")
    scored = None if scored is None else (scored if isinstance(scored, str) else hashlib.sha256(
        json.dumps(scored, sort_keys=True).encode()).hexdigest())
    model = plan.get("preset") or train_cfg.get("model")
    if plan.get("model"):
        model = f"{model}:{hashlib.sha256(json.dumps(plan['model'], sort_keys=True).encode()).hexdigest()[:8]}"
    schedule = {k: plan.get(k) for k in ("schedule", "warmup_steps", "min_lr_ratio", "global_batch") if k in plan}
    cfg = {"mix": name, "dedup": dedup, "dataset": str(dataset), "eval_set": eval_set, "scored_subset": scored,
           "tokenizer": str(tokenizer),
           "model": model, "tokens": metrics.get("tokens"), "lr": plan.get("lr", train_cfg.get("lr")),
           "seq_len": plan.get("seq_len", train_cfg.get("seq_len")),
           "schedule": json.dumps(schedule, sort_keys=True) if schedule else train_cfg.get("schedule")}
    losses = None
    if (path / "eval_losses.npz").is_file():
        from slimpipe.train.evaluate import load_document_losses

        losses, _meta = load_document_losses(path / "eval_losses.npz")
    return Run(path=path, label=f"{name} ({dedup})", mix=name, dedup=dedup, seed=train_cfg.get("seed"),
               tokenizer=str(tokenizer), dataset=str(dataset), mix_weights=weights, metrics=metrics, config=cfg,
               mix_manifest=mix_manifest, losses=losses, eval_log=_read_jsonl(path / "eval_log.jsonl"),
               train_log=_read_jsonl(path / "train_log.jsonl"), tasks=_tasks(path / "lm_eval.json"),
               small_eval=small_eval, excluded=excluded, scored_subset=scored,
               composition=_composition(mix_manifest, Path(inp.get("path", ""))))


def _composition(mix_manifest: dict, dataset: Path) -> dict[str, dict]:
    """Per source, what the run's training data held: documents and bytes of the deduplicated train split
    (the pipeline's ``index.json``), and tokens available, tokens trained, documents packed and epochs (the
    mix's manifest). Global and local dedup differ here before any model is trained."""
    out: dict[str, dict] = defaultdict(dict)
    index = dataset / "index.json"
    if index.is_file():
        try:
            for shard in (json.loads(index.read_text()).get("splits") or {}).get("train", []):
                for s, c in (shard.get("sources") or {}).items():
                    for k in ("docs", "bytes"):
                        out[s][k] = out[s].get(k, 0) + int(c.get(k) or 0)
        except (ValueError, TypeError, AttributeError):
            pass  # an index this version cannot read: the mix's figures alone
    for s, e in (mix_manifest.get("sources") or {}).items():
        if isinstance(e, dict):
            out[s].update({k: e.get(m) for k, m in (("tokens_available", "tokens_available"),
                                                    ("tokens_trained", "tokens_realised"),
                                                    ("docs_trained", "docs_written"), ("epochs", "epochs"))
                           if e.get(m) is not None})
    return dict(out)


def _tasks(path: Path) -> dict:
    """``slimpipe eval``'s results (lm-eval's dict): each task's accuracy (normalised when lm-eval has it)."""
    if not path.is_file():
        return {}
    out = {}
    for task, res in (json.loads(path.read_text()).get("results") or {}).items():
        for metric in ("acc_norm,none", "acc,none", "exact_match,strict-match", "exact_match,none"):
            if isinstance(res.get(metric), int | float):
                out[task] = (metric.split(",")[0], float(res[metric]))
                break
    return out


def _mean_std(xs: list[float]) -> tuple[float, float]:
    m = sum(xs) / len(xs)
    if len(xs) < 2:
        return m, 0.0
    return m, math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def _rows(runs: list[Run]) -> dict[str, list[Run]]:
    """Group runs by configuration; label each group, adding the fields that tell same-named groups apart."""
    groups: dict[str, list[Run]] = defaultdict(list)
    for r in runs:
        groups[json.dumps([r.config.get(k) for k in CONFIG_KEYS], default=str)].append(r)
    by_label: dict[str, list[list[Run]]] = defaultdict(list)
    for rs in groups.values():
        by_label[rs[0].label].append(rs)
    out: dict[str, list[Run]] = {}
    for label, gs in by_label.items():
        differing = [k for k in CONFIG_KEYS if len({json.dumps(g[0].config.get(k), default=str) for g in gs}) > 1]
        for g in gs:
            name = label if len(gs) == 1 else label + " [" + ", ".join(
                f"{k}={str(g[0].config.get(k))[:12]}" for k in differing) + "]"
            for r in g:
                r.label = name
            seeds = [r.seed for r in g]
            dup = sorted({s for s in seeds if seeds.count(s) > 1}, key=str)
            if dup:
                names = ", ".join(str(r.path) for r in g if r.seed in dup)
                raise CompareError(f"seed {dup[0]} repeated in one configuration ({name}): {names}")
            out[name] = g
    return out


def _row_losses(rs: list[Run]) -> RowLosses | None:
    """The row's per-document losses, seeds stacked, when every seed saved them on the same documents."""
    if any(r.losses is None for r in rs):
        return None
    sources = [s for s in rs[0].losses if all(s in r.losses for r in rs)]
    for s in sources:
        if any(not np.array_equal(r.losses[s]["bytes"], rs[0].losses[s]["bytes"]) for r in rs):
            return None
    return RowLosses(seeds=[r.seed for r in rs], nll={s: np.stack([r.losses[s]["nll"] for r in rs]) for s in sources},
                     bytes={s: rs[0].losses[s]["bytes"] for s in sources})


def _bpb(run: Run, col: str) -> float | None:
    ev = run.eval
    if col == "total":
        return ev.get("total", {}).get("bpb")
    if col == "mean":
        return ev.get("mean_bpb")
    s = ev["sources"].get(col)
    return s.get("bpb") if s else None


def compare(runs: list[Run], replicates: int = 2000) -> dict:
    """The comparison as plain data (what ``report.json`` holds)."""
    if not runs:
        raise CompareError("no runs to compare")
    groups = _rows(runs)
    warnings: list[str] = []
    eval_sets: dict[str, list[str]] = defaultdict(list)  # (eval set, scored subset) -> row labels
    for label, rs in groups.items():
        eval_sets[json.dumps([str(rs[0].config.get("eval_set")), rs[0].scored_subset])].append(label)
    n_sets = len({json.loads(k)[0] for k in eval_sets})
    if n_sets > 1:
        by_set: dict[str, list[str]] = defaultdict(list)
        for k, v in eval_sets.items():
            by_set[json.loads(k)[0]] += v
        warnings.append(f"runs were scored on {n_sets} different evaluation sets ("
                        + "; ".join(f"{k[:12]}: {', '.join(v)}" for k, v in by_set.items())
                        + "): each set has its own table and no difference across sets is stated")
    subsets = defaultdict(list)
    for k, v in eval_sets.items():
        subsets[json.loads(k)[0]].append((json.loads(k)[1], v))
    for es, parts in subsets.items():
        known = [(h, v) for h, v in parts if h is not None]
        if len(known) > 1:
            warnings.append(f"runs on evaluation set {es[:12]} scored {len(known)} different subsets of it ("
                            + "; ".join(f"scored_subset {h[:12]}: {', '.join(v)}" for h, v in known)
                            + "): the pieces a run scores depend on the mix's options; each subset has its own "
                            "table and no difference across subsets is stated")
    unknown = [str(r.path) for rs in groups.values() for r in rs if r.scored_subset is None]
    if unknown and len(unknown) < len(runs):
        warnings.append(f"{len(unknown)} run(s) record no scored_subset, so what they scored is unknown: they are "
                        "compared only with each other (" + ", ".join(unknown) + ")")
    elif unknown:
        warnings.append("no run records which evaluation pieces it scored (scored_subset, written by newer "
                        "`slimpipe train`): the runs are compared as if they scored the same ones, paired by "
                        "document only where their per-document byte counts match")
    if "None" in {json.loads(k)[0] for k in eval_sets}:
        warnings.append("runs without a recorded evaluation set: " + ", ".join(str(r.path) for rs in groups.values()
                        for r in rs if r.config.get("eval_set") is None))
    kinds = {("document" if r.metrics.get("eval_docs", {}).get("sources") else "packed windows") for r in runs}
    if len(kinds) > 1:
        warnings.append("some runs have per-document bits per byte and some only packed-window figures: "
                        "the two are not the same quantity")
    all_cols = [s for s in [*SOURCES, *sorted({s for r in runs for s in r.eval["sources"]} - set(SOURCES))]
                if any(s in r.eval["sources"] for r in runs)]
    rows: dict[str, dict] = {}
    losses: dict[str, RowLosses | None] = {}
    for label, rs in groups.items():
        rs.sort(key=lambda r: (r.seed is None, r.seed))
        ev0 = rs[0].eval["sources"]
        row: dict = {**{k: rs[0].config.get(k) for k in CONFIG_KEYS}, "seeds": [r.seed for r in rs],
                     "runs": [str(r.path) for r in rs], "weights": rs[0].mix_weights,
                     "epochs": {s: e.get("epochs") for s, e in rs[0].mix_manifest.get("sources", {}).items()
                                if isinstance(e, dict) and e.get("epochs")},
                     "eval_size": {s: {k: ev0[s].get(k) for k in ("docs", "tokens", "bytes")} for s in ev0},
                     "bpb": {}}
        for col in all_cols + ["total", "mean"]:
            vals = [v for v in (_bpb(r, col) for r in rs) if v is not None]
            if vals:
                m, sd = _mean_std(vals)
                row["bpb"][col] = {"mean": m, "std": sd, "n": len(vals), "values": vals}
        tasks = sorted({t for r in rs for t in r.tasks})
        row["tasks"] = {t: {"metric": rs[0].tasks.get(t, ("?",))[0], "mean": float(np.mean(vals)), "n": len(vals)}
                        for t in tasks if (vals := [r.tasks[t][1] for r in rs if t in r.tasks])}
        rows[label] = row
        losses[label] = _row_losses(rs)
    cache: dict[tuple[str, str], dict | None] = {}
    excluded = {s: why for r in runs for s, why in r.excluded.items()}

    def diff(a: str, b: str) -> dict | None:
        if (a, b) not in cache:
            la, lb = losses[a], losses[b]
            try:
                cache[(a, b)] = difference(la, lb, replicates=replicates, exclude=excluded) if la and lb else None
            except ValueError:
                cache[(a, b)] = None
        return cache[(a, b)]

    tables = []
    for es, labels in eval_sets.items():
        winners = {}
        for col in all_cols + ["total", "mean"]:
            cands = sorted((rows[lb]["bpb"][col]["mean"], lb) for lb in labels if col in rows[lb]["bpb"])
            if not cands:
                continue
            best, label = cands[0]
            entry: dict = {"winner": label, "bpb": best, "detectable": False, "claim": False}
            if len(cands) > 1:
                second, label2 = cands[1]
                d = diff(label2, label)
                entry.update(runner_up=label2, margin=second - best)
                if d and col in d["columns"]:
                    c = d["columns"][col]
                    entry.update(diff=c["diff"], ci95=c["ci95"], detectable=c["detectable"] and c["diff"] > 0,
                                 paired_docs=d["paired_docs"], paired_seeds=d["paired_seeds"],
                                 **_method(d))
                    entry["claim"] = entry["detectable"] and d["claim_ok"]
                else:  # no per-document losses, or no source with enough documents: never a stated winner
                    entry.update(ci95=None, **(_method(d) if d else {}))
            winners[col] = entry
        best_total = winners.get("total", {}).get("winner")
        for lb in labels:
            if best_total and lb != best_total:
                d = diff(lb, best_total)
                rows[lb]["vs_best"] = {"against": best_total, **(
                    {"columns": d["columns"], "paired_docs": d["paired_docs"], "paired_seeds": d["paired_seeds"],
                     **_method(d)}
                    if d else {"columns": {}, "note": "no per-document losses: no interval"})}
        es_hash, subset = json.loads(es)
        tables.append({"eval_set": None if es_hash == "None" else es_hash, "scored_subset": subset,
                       "rows": labels, "winners": winners})
    main = max(tables, key=lambda t: len(t["rows"]))
    tokenizers = sorted({r.tokenizer for r in runs})
    dedup_effect = _dedup_effect(rows, diff, groups)
    methods = {x.get("interval_method") for row in rows.values() for x in [row.get("vs_best") or {}]}
    methods |= {e.get("interval_method") for e in dedup_effect}
    methods.discard(None)
    interval_method = (SEED_AWARE_METHOD if methods == {SEED_AWARE_METHOD} else CONDITIONAL_METHOD
                       if methods == {CONDITIONAL_METHOD} else
                       f"per difference: {SEED_AWARE_METHOD} where a configuration has two or more seeds; "
                       f"otherwise {CONDITIONAL_METHOD}" if methods else None)
    return {
        "kind": "slimpipe-compare",
        "runs": len(runs),
        "columns": [c for c in all_cols if any(c in rows[lb]["bpb"] for lb in main["rows"])],
        "rows": rows,
        "winners": main["winners"],
        "tables": tables,
        "warnings": warnings,
        "tokenizers": tokenizers,
        "same_tokenizer": len(tokenizers) == 1,
        "interval_method": interval_method,
        "intervals": {"min_seeds_for_a_verdict": MIN_SEEDS_FOR_CLAIM, "min_docs_per_source": MIN_DOCS,
                      "confidence": 0.95, "replicates": replicates},
        "excluded_from_intervals": _excluded(rows, main, excluded),
        "dedup_effect": dedup_effect,
        "pairing": _pairing(groups, runs),
        "missing_eval": _missing_eval(runs, all_cols),
        "small_eval": _small_eval(runs, rows, main),
        "bpb_definition": next((r.metrics["eval_docs"].get("definition") for r in runs
                                if r.metrics.get("eval_docs", {}).get("definition")), None),
        "provenance": _fingerprint(runs),
    }


def _method(d: dict) -> dict:
    """What a difference's interval includes (copied next to every stated difference in report.json)."""
    return {"interval_method": d["interval_method"], "seed_aware": d["seed_aware"], "n_seeds": d["n_seeds"],
            "claim_ok": d["claim_ok"], "excluded_from_total": d["excluded"]}


def _excluded(rows: dict, main: dict, excluded: dict[str, str]) -> dict[str, str]:
    """Sources left out of the total/mean intervals, with the reason: flagged by the evaluation set, or
    scored on fewer than MIN_DOCS documents."""
    out = dict(excluded)
    if main["rows"]:
        for s, size in rows[main["rows"][0]]["eval_size"].items():
            n = size.get("docs")
            if n is not None and n < MIN_DOCS and s not in out:
                out[s] = f"{n} evaluation document(s), fewer than {MIN_DOCS}"
    return out


def _small_eval(runs: list[Run], rows: dict, main: dict) -> dict[str, str]:
    """Every evaluation set that is smaller than it should be, weakest first: too few documents for an
    interval (left out of total/mean intervals), excluded by the evaluation set, or under its token target."""
    size = rows[main["rows"][0]]["eval_size"] if main["rows"] else {}
    out: dict[str, list[str]] = defaultdict(list)
    for s, v in size.items():
        n = v.get("docs")
        if n is not None and n < MIN_DOCS:
            out[s].append(f"{n} evaluation document(s), fewer than the {MIN_DOCS} an interval needs: no interval "
                          "of its own, left out of the total and mean intervals")
    for r in runs:
        for s, why in r.excluded.items():
            if not any(why in x for x in out[s]):
                out[s].append(f"excluded from the total and mean intervals: {why}")
        for s, why in r.small_eval.items():
            if not any(why in x for x in out[s]):
                out[s].append(why)
    order = sorted(out, key=lambda s: (size.get(s, {}).get("docs") or 0, s))
    return {s: "; ".join(out[s]) for s in order if out[s]}


def _dedup_effect(rows: dict, diff, groups: dict[str, list[Run]] | None = None) -> list[dict]:
    """Rows equal in everything but dedup mode and dataset: global minus local, with its interval, and what
    each mode's training data held per source (the composition a "global" effect partly is)."""
    by_key: dict[str, dict[str, str]] = defaultdict(dict)
    for label, row in rows.items():
        key = json.dumps([row.get(k) for k in CONFIG_KEYS if k not in ("dedup", "dataset")], default=str)
        by_key[key][row["dedup"]] = label
    out = []
    for modes in by_key.values():
        if "global" in modes and "local" in modes:
            g, lo = modes["global"], modes["local"]
            gb, lb = rows[g]["bpb"], rows[lo]["bpb"]
            cols = [c for c in gb if c in lb]
            d = diff(g, lo)
            entry = {"mix": rows[g]["mix"], "global": g, "local": lo,
                     "delta_bpb": {c: gb[c]["mean"] - lb[c]["mean"] for c in cols},
                     "columns": d["columns"] if d else {}, "paired_docs": bool(d and d["paired_docs"]),
                     "paired_seeds": bool(d and d["paired_seeds"]), **(_method(d) if d else {})}
            if groups:
                entry["composition"] = {"global": groups[g][0].composition, "local": groups[lo][0].composition}
            out.append(entry)
    return sorted(out, key=lambda e: e["mix"])


def _pairing(groups: dict[str, list[Run]], runs: list[Run]) -> dict:
    """Which pairing the intervals could use, and whether a shared seed means shared init and data order."""
    seed_sets = {tuple(sorted(str(r.seed) for r in rs)) for rs in groups.values()}
    same_seeds = len(seed_sets) == 1
    models = {(r.config.get("model"), r.metrics.get("n_params")) for r in runs}
    n_seqs = set()
    for r in runs:
        cfg = _json(r.path / "config.json") if (r.path / "config.json").is_file() else {}
        n_seqs.add(((cfg.get("mix") or {}).get("train") or {}).get("n_sequences"))
    return {"same_seeds_in_every_row": same_seeds, "seeds": sorted(seed_sets)[0] if same_seeds else None,
            "same_init": same_seeds and len(models) == 1 and len({r.tokenizer for r in runs}) == 1,
            "same_data_order": same_seeds and len(n_seqs) == 1 and None not in n_seqs}


def _missing_eval(runs: list[Run], cols: list[str]) -> dict[str, str]:
    """Sources a mix trains on that have no evaluation figure, with the reason the mix recorded."""
    out: dict[str, str] = {}
    for r in runs:
        for s, w in r.mix_weights.items():
            if w <= 0 or s in cols or s in out:
                continue
            info = r.mix_manifest.get("eval", {})
            info = info.get("validation", info) if isinstance(info, dict) else {}
            entry = info.get(s) if isinstance(info, dict) else None
            if isinstance(entry, dict) and entry.get("reason"):
                out[s] = entry["reason"]
            elif isinstance(entry, dict) and entry.get("written") is False:
                out[s] = f"only {entry.get('tokens', 0)} evaluation tokens, less than one sequence"
            else:
                out[s] = "no evaluation documents for this source in the mix's evaluation set"
    return out


def _fingerprint(runs: list[Run]) -> str:
    h = hashlib.sha256()
    for r in sorted(runs, key=lambda r: str(r.path)):
        h.update((r.path / "metrics.json").read_bytes())
    return h.hexdigest()


def write_compare_report(run_dirs: list[str | Path], out: str | Path, replicates: int = 2000) -> dict:
    from slimpipe.report.plots import comparison_plots
    from slimpipe.report.render import render_markdown

    runs = [load_run(p) for p in run_dirs]
    r = compare(runs, replicates=replicates)
    out = Path(out)
    plots = comparison_plots(out, runs, r)
    storage.write_json_atomic(out / "report.json", r)
    storage.write_bytes_atomic(out / "report.md", render_markdown(r, plots).encode())
    return r
