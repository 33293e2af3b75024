"""``slimpipe propose``: proxy mixtures → proxy models → a fitted law → the mix that minimises it.

Steps (each resumable: a mix with a manifest, a proxy with a ``metrics.json``, is not redone):

1. *probe*: build one mix over every source the data holds (equal shares) to learn how many tokens
   each source has; its tokenizer is shared by every proxy, so they are scored on identical sequences.
2. *draw*: K mixtures — the natural mix, DC-6 (where feasible) and Dirichlet draws around the natural
   shares, bounded by ``--max-epochs`` (:mod:`slimpipe.propose.sample`).
3. *build*: each mixture as a mix folder (the same eval sets in every one: they depend on the holdout,
   never on the mix).
4. *train*: the K proxies in parallel as Ray tasks, one CPU each (one GPU each when the cluster has
   GPUs). A failed proxy is retried once, then excluded from the fit and named in the report.
5. *fit*: every model family, chosen by cross-validated rank correlation (:mod:`slimpipe.propose.fit`).
6. *propose*: the feasible mix with the lowest predicted objective, with a bootstrap interval, written
   as ``OUT/proposed.yaml`` (a mix file ``slimpipe mix --config`` takes) and ``OUT/report.md``.

With ``reuse`` (``--reuse PREV_OUT``), steps 2-6 work in a smaller space: the unchanged sources are one
composite domain in PREV_OUT's proposed ratios, and only the added or changed sources are free
(:mod:`slimpipe.propose.reuse`); the probe tokenizes with PREV_OUT's tokenizer.
"""

from __future__ import annotations

import json
import logging
import math
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from slimpipe.propose import reuse as R
from slimpipe.propose.fit import FAMILIES, bootstrap_predictions, choose, cross_validate, make_model
from slimpipe.propose.optimize import objective_fn, parse_objective, round_shares, search
from slimpipe.propose.sample import ProposalError, draw_mixtures, natural_shares, upper_bounds, within_bounds

log = logging.getLogger(__name__)


@dataclass
class ProposeOptions:
    proxies: int = 16
    tokens: int = 131_072  # training tokens of each proxy (and the mix budget)
    model: str = "tiny"
    objective: str = "mean"
    seed: int = 0
    max_epochs: float = 4.0
    concentration: float = 1.0
    tokenizer: str = "train"  # "train": a byte-level BPE on the probe mix, shared by every proxy
    vocab_size: int = 4096
    seq_len: int = 128
    eval_tokens: int = 32_768
    families: tuple[str, ...] = FAMILIES
    bootstrap: int = 100
    ray_address: str | None = None
    reuse: str | None = None  # PREV_OUT: Olmix's mixture reuse (slimpipe.propose.reuse)
    reuse_tolerance: float = 0.01  # relative change of a source's tokens/docs/bytes that counts as changed
    quiet: bool = False
    warn: Callable[[str], None] = field(default=lambda m: log.warning(m), repr=False)


def _dc6() -> dict[str, float]:
    from slimpipe.mix.config import load_mix

    return dict(load_mix("dc6").shares)


def _build(src: Path, weights: dict[str, float], name: str, out: Path, opt: ProposeOptions,
           tokenizer: str | None) -> dict:
    from slimpipe.mix.build import MixOptions, build_mix
    from slimpipe.mix.config import MixConfig

    if (out / "manifest.json").exists():  # resume, but only the same mix of the same data
        m = json.loads((out / "manifest.json").read_text())
        total = math.fsum(weights.values())
        had = (m.get("mix") or {}).get("shares") or {}
        same = (m.get("input", {}).get("path") == str(src.resolve()) and m.get("tokens_requested") == opt.tokens
                and m.get("seq_len") == opt.seq_len
                and all(abs(had.get(s, 0.0) - weights.get(s, 0.0) / total) <= 1e-9 for s in {*had, *weights}))
        if not same:
            raise ProposalError(f"{out} holds a mix of other data, weights or sizes than this run's (an earlier "
                                "run with other options or data?); use a new output folder")
        return m
    mo = MixOptions(tokens=opt.tokens, seq_len=opt.seq_len, seed=opt.seed, tokenizer=tokenizer or opt.tokenizer,
                    vocab_size=opt.vocab_size, eval_tokens=opt.eval_tokens,
                    ray_address=opt.ray_address, quiet=True, warn=lambda m: log.info("%s: %s", name, m))
    return build_mix(src, MixConfig(name=name, weights=weights), out, mo)


def _train_proxy(mix_dir: str, run_dir: str, model: str, tokens: int, seed: int, device: str) -> dict:
    """Body of one proxy's Ray task: train, and report success or the error (never raise)."""
    from slimpipe.train.loop import TrainConfig, train

    try:
        cfg = TrainConfig(mix_dir=mix_dir, out_dir=run_dir, model=model, tokens=tokens, seed=seed, threads=1,
                          eval_interval=1_000_000, eval_sequences=1_000_000, export=False, device=device,
                          resume=Path(run_dir, "checkpoints").is_dir())
        metrics = train(cfg)
        return {"ok": True, "metrics": {k: metrics[k] for k in ("eval", "eval_docs") if k in metrics}}
    except Exception as exc:  # a proxy's failure is data for the report, not a crash of the job
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc(limit=5)}


def scores(metrics: dict) -> dict[str, dict]:
    """Per-source figures a proxy is judged on: per-document bits per byte (lm-eval's definition) when
    the run recorded them, else the packed-window figures."""
    docs = metrics.get("eval_docs") or {}
    return docs["sources"] if docs.get("sources") else metrics["eval"]["sources"]


def _train_all(jobs: list[tuple], use_gpu: bool, quiet: bool) -> list[dict]:
    import ray

    from slimpipe.progress import Progress

    remote = ray.remote(num_cpus=0 if use_gpu else 1, num_gpus=1 if use_gpu else 0, max_retries=1)(_train_proxy)
    results: list[dict | None] = [None] * len(jobs)
    todo = list(range(len(jobs)))
    for attempt in (1, 2):  # an application failure is retried once, then reported
        refs = {remote.remote(*jobs[i]): i for i in todo}
        with Progress(f"propose: train proxies (try {attempt})", total=len(refs), unit="proxies",
                      enabled=not quiet) as bar:
            pending = list(refs)
            while pending:
                ready, pending = ray.wait(pending, num_returns=1)
                try:
                    results[refs[ready[0]]] = ray.get(ready[0])
                except Exception as exc:  # the worker died twice (Ray's own retries exhausted)
                    results[refs[ready[0]]] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
                bar.update(1)
        todo = [i for i in todo if not results[i]["ok"]]
        if not todo:
            break
    return [r or {"ok": False, "error": "no result"} for r in results]


def run_propose(slimpajama_dir: str | Path, out: str | Path, opt: ProposeOptions) -> dict:
    """The whole proposal; returns ``OUT/proposal.json``'s content."""
    import ray

    from slimpipe.engine import ensure_ray
    from slimpipe.mix.build import read_input

    src, out = Path(slimpajama_dir), Path(out)
    if opt.proxies < 4:
        raise ProposalError(f"--proxies {opt.proxies}: a fit needs at least 4 proxies (RegMix used 512)")
    splits, _ = read_input(src)
    present = sorted({s for sh in splits["train"] for s in (sh.counts or {}) if sh.source_units(s, "docs")})
    if not present:
        raise ProposalError(f"{src} has no train documents with per-source counts (index.json)")
    stats = {s: {u: sum(sh.source_units(s, u) for sh in splits["train"]) for u in ("docs", "bytes")} for s in present}
    plan, prev_dir = None, None
    if opt.reuse:  # every refusal that needs no data comes before Ray starts
        prev_dir, prev = R.load_previous(opt.reuse, out, asdict(opt))
        if R.COMPOSITE in present:
            raise ProposalError(f"a source is named {R.COMPOSITE!r}, the name --reuse gives its composite domain")
        R.plan_reuse(prev_dir, prev, present, None, stats, opt.reuse_tolerance)  # "nothing to do" etc., early
    out.mkdir(parents=True, exist_ok=True)
    ensure_ray(opt.ray_address)

    # 1. probe
    probe_dir = out / "mixes" / "probe"
    probe = _build(src, dict.fromkeys(present, 1.0), "probe", probe_dir, opt,
                   str(R.tokenizer_dir(prev_dir)) if prev_dir else None)
    tokenizer = str(probe_dir)
    if prev_dir:
        R.check_same_tokenizer(prev_dir, probe, out)
    available = {s: int(probe["sources"][s].get("tokens_available", 0)) for s in present}
    empty = [s for s, n in available.items() if n <= 0]
    if empty:
        raise ProposalError("sources with no tokens to draw from: " + ", ".join(empty))
    natural = natural_shares(available)
    bounds = upper_bounds(available, opt.tokens, opt.max_epochs)
    tight = [s for s in present if bounds[s] < natural[s]]
    if tight:
        opt.warn("these sources have too few tokens to reach even their natural share within "
                 f"{opt.max_epochs:g} epochs: " + ", ".join(f"{s} ({available[s]:,} tokens)" for s in tight))

    # 2. draw (natural and DC-6 first, when the bound allows them; with reuse, the previous proposal)
    dc6 = {s: v for s, v in _dc6().items() if s in present}
    dc6_shares = {s: v / sum(dc6.values()) for s, v in dc6.items()} if dc6 else None
    refs: dict[str, dict[str, float]] = {}  # reference mixes predicted beside the proposal, in draw space
    reused: list[dict] = []
    why_not: list[tuple[str, str]] = []
    if plan := (R.plan_reuse(prev_dir, prev, present, available, stats, opt.reuse_tolerance) if prev_dir else None):
        dims, dim_avail = plan.dims, plan.dims_available(available)
        reused, why_not = R.reusable_proxies(plan, R.eval_fingerprints(probe_dir), probe.get("eval_set"))
        plan.reused = reused
        swarm = R.reuse_swarm_size(opt.proxies, plan)
        anchor = {d: float(d == R.COMPOSITE) for d in dims}  # the previous proposal, nothing of the new sources
        if within_bounds(anchor, upper_bounds(dim_avail, opt.tokens, opt.max_epochs)):
            refs["previous"] = anchor
        include = [anchor] if "previous" in refs and not reused else []  # a reused proxy IS the anchor
        n_draw = max(swarm - len(reused), len(include))
        expand = plan.expand
    else:
        dims, dim_avail, n_draw, include = present, available, opt.proxies, [natural]
        refs["natural"] = natural
        if dc6_shares:  # predicted in any case; a proxy only when the bound allows it
            refs["dc6"] = {s: dc6_shares.get(s, 0.0) for s in present}
            if all(dc6_shares.get(s, 0) <= bounds[s] + 1e-9 for s in present):
                include.append(refs["dc6"])
        expand = dict  # the draw space is the sources
    drawn = draw_mixtures(dim_avail, opt.tokens, n_draw, max_epochs=opt.max_epochs,
                          concentration=opt.concentration, seed=opt.seed, include=include)
    mixtures = [r["point"] for r in reused] + drawn  # draw-space points; reused proxies first
    (out / "mixtures.json").write_text(json.dumps({"sources": present, "available_tokens": available,
                                                   "bounds": bounds, "dims": dims, "mixtures": drawn,
                                                   "shares": [expand(m) for m in drawn]}, indent=1))

    # 3. build
    mix_dirs = [Path(r["mix"]) for r in reused]
    for i, point in enumerate(drawn):
        d = out / "mixes" / f"p{i:03d}"
        _build(src, expand(point), f"proxy-{i:03d}", d, opt, tokenizer)
        mix_dirs.append(d)

    # 4. train
    use_gpu = ray.cluster_resources().get("GPU", 0) >= 1
    device = "cuda" if use_gpu else "cpu"
    jobs = [(str(d), r["run"] if j < len(reused) else str(out / "proxies" / d.name), opt.model, opt.tokens,
             opt.seed, device) for j, (d, r) in enumerate(zip(mix_dirs, reused + [{}] * len(drawn), strict=True))]
    cached = [json.loads((Path(j[1]) / "metrics.json").read_text()) if (Path(j[1]) / "metrics.json").exists()
              else None for j in jobs]
    todo = [i for i, c in enumerate(cached) if c is None]
    trained = _train_all([jobs[i] for i in todo], use_gpu, opt.quiet) if todo else []
    results = [{"ok": True, "metrics": c} if c is not None else None for c in cached]
    for i, r in zip(todo, trained, strict=True):
        results[i] = r

    # 5. fit
    targets = [s for s in present if all(s in scores(r["metrics"]) for r in results if r["ok"])]
    ok = [i for i, r in enumerate(results) if r["ok"]]
    failed = [{"proxy": mix_dirs[i].name, "error": results[i]["error"]} for i in range(len(results))
              if not results[i]["ok"]]
    for f in failed:
        opt.warn(f"proxy {f['proxy']} failed twice and is excluded from the fit: {f['error']}")
    if len(ok) < 4:
        raise ProposalError(f"only {len(ok)} proxies trained; a fit needs at least 4 ({len(failed)} failed)")
    if not targets:
        raise ProposalError("no source has an evaluation set in every proxy; see the mixes' manifests")
    X = np.array([[mixtures[i][d] for d in dims] for i in ok])
    Y = np.array([[scores(results[i]["metrics"])[s]["bpb"] for s in targets] for i in ok])
    eval_bytes = {s: int(scores(results[ok[0]]["metrics"])[s].get("bytes", 0)) for s in targets}
    desc, w = parse_objective(opt.objective, targets, eval_bytes)
    obj = objective_fn(w)
    cv = [cross_validate(f, X, Y, obj, seed=opt.seed) for f in opt.families]
    best = choose(cv)
    model = make_model(best.family, opt.seed).fit(X, Y)

    # 6. propose
    dim_bounds, dim_natural = upper_bounds(dim_avail, opt.tokens, opt.max_epochs), natural_shares(dim_avail)
    # Trust region: no share beyond the largest any proxy trained on, so the fit never extrapolates a
    # source past what was observed (an unbounded search on a few proxies runs to a corner of the simplex).
    bound_arr = np.minimum(np.array([dim_bounds[d] for d in dims]), X.max(axis=0))
    nat_arr = np.array([dim_natural[d] for d in dims])
    x = search(model, obj, bound_arr, nat_arr, seed=opt.seed)
    at = np.vstack([x] + [np.array([ref[d] for d in dims]) for ref in refs.values()])
    point = model.predict(at)
    boot = bootstrap_predictions(best.family, X, Y, at, n_boot=opt.bootstrap, seed=opt.seed)
    lo, hi = np.percentile(boot, [2.5, 97.5], axis=0)
    obj_boot = np.stack([obj(b) for b in boot])  # (n_boot, len(at))
    olo, ohi = np.percentile(obj_boot, [2.5, 97.5], axis=0)
    diff = obj_boot[:, 0][:, None] - obj_boot[:, 1:]
    dlo, dhi = np.percentile(diff, [2.5, 97.5], axis=0)
    shares = expand({d: float(v) for d, v in zip(dims, x, strict=True)})
    names = ["proposed", *refs]
    # The stated prediction is the bootstrap median (bagged): the single fit's value at its own optimum
    # is biased low (the search picks the fit's most optimistic point), and is kept as "fit_objective".
    med = np.median(boot, axis=0)
    predicted = {n: {"objective": float(np.median(obj_boot[:, j])), "objective_ci95": [float(olo[j]), float(ohi[j])],
                     "fit_objective": float(obj(point[j:j + 1])[0]),
                     "bpb": {s: float(med[j, t]) for t, s in enumerate(targets)},
                     "bpb_ci95": {s: [float(lo[j, t]), float(hi[j, t])] for t, s in enumerate(targets)}}
                 for j, n in enumerate(names)}
    for j, n in enumerate(names[1:]):
        predicted[n]["proposed_minus_this_ci95"] = [float(dlo[j]), float(dhi[j])]
    pct = round_shares(shares)
    epochs = {s: shares[s] * opt.tokens / available[s] for s in present}
    proposal = {
        "sources": present, "targets": targets, "objective": {"spec": opt.objective, "description": desc,
                                                               "weights": dict(zip(targets, w.tolist(), strict=True))},
        "available_tokens": available, "bounds": bounds, "max_epochs": opt.max_epochs,
        "trust_region": {d: float(v) for d, v in zip(dims, X.max(axis=0), strict=True)},
        "dims": dims, "natural_shares": natural, "dc6_shares": dc6_shares,
        "reference_shares": {n: expand(ref) for n, ref in refs.items()}, "source_stats": stats,
        "proxies": [{"name": mix_dirs[i].name, "shares": expand(mixtures[i]), "point": mixtures[i],
                     "ok": results[i]["ok"], "reused": i < len(reused), "mix": str(mix_dirs[i]), "run": jobs[i][1],
                     "bpb": ({s: scores(results[i]["metrics"])[s]["bpb"] for s in targets}
                             if results[i]["ok"] else None),
                     "error": results[i].get("error")} for i in range(len(results))],
        "proxies_trained": len(drawn), "reuse": (R.reuse_record(plan, opt.proxies, len(mixtures), len(drawn), why_not)
                                                if plan else None),
        "failed": failed,
        "cv": [r.to_dict() for r in cv], "chosen": best.family,
        "cv_heldout": {"predicted": best.predicted.tolist(), "observed": best.observed.tolist()},
        "shares": shares, "weights_pct": pct, "epochs": epochs, "predicted": predicted,
        "options": {k: v for k, v in asdict(opt).items() if k not in ("warn", "ray_address", "quiet")},
        "tokenizer": tokenizer,
    }
    (out / "proposal.json").write_text(json.dumps(proposal, indent=1, default=_json_default))
    _write_yaml(out / "proposed.yaml", proposal)
    from slimpipe.propose.report import write_report

    write_report(out, proposal)
    return proposal


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, tuple):
        return list(o)
    raise TypeError(type(o))


def _write_yaml(path: Path, p: dict) -> None:
    pred = p["predicted"]["proposed"]
    doc = {
        "name": "proposed",
        "description": (f"proposed by slimpipe propose from {len(p['proxies']) - len(p['failed'])} proxies "
                        f"({p['options']['model']}, {p['options']['tokens']:,} tokens each), model "
                        f"{p['chosen']}, objective: {p['objective']['description']}"
                        + (f"; reusing {p['reuse']['previous']}'s mix for {len(p['reuse']['unchanged'])} unchanged "
                           "sources" if p.get("reuse") else "")),
        "weights": p["weights_pct"],
        "prediction": {"objective": round(pred["objective"], 5),
                       "objective_ci95": [round(v, 5) for v in pred["objective_ci95"]],
                       "bpb": {s: round(v, 5) for s, v in pred["bpb"].items()},
                       "bpb_ci95": {s: [round(a, 5), round(b, 5)] for s, (a, b) in pred["bpb_ci95"].items()},
                       "cv_spearman": None if not math.isfinite(_cv(p)) else round(_cv(p), 4),
                       "valid_for": {"tokens": p["options"]["tokens"], "model": p["options"]["model"]}},
    }
    path.write_text("# slimpipe mix --config " + path.name + " uses `weights`; `prediction` is a record\n"
                    + yaml.safe_dump(doc, sort_keys=False))


def _cv(p: dict) -> float:
    return next(r["spearman"] for r in p["cv"] if r["family"] == p["chosen"])
