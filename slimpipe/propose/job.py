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
5. *fit* on the selection half: the evaluation documents are split by a hash of their id
   (:mod:`slimpipe.propose.halves`); each proxy's per-source bits per byte over the selection half are
   fitted by every model family, chosen by cross-validated rank correlation, the choice measured by nested
   cross-validation, and judged (:func:`slimpipe.propose.fit.judge`): a fit that does not predict is no
   basis for a proposal.
6. *propose*: the mean of the fit's top-k feasible mixes (RegMix), bounded by ``--max-epochs`` at the
   target run's budget, with a bootstrap interval; when the fit does not predict, the best proxy actually
   trained, and the first line says so.
7. *confirm* on the other half: the proposal, natural, DC-6 and the best proxy trained with
   ``confirm_seeds`` seeds, their differences measured on the confirmation half with seed-aware intervals
   (:func:`slimpipe.report.stats.difference`); ``OUT/proposed.yaml``, ``OUT/report.md`` and
   ``OUT/report.json`` (written even when the run fails).

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

from slimpipe.outdir import MARKER, canonical, claim, identity, input_identity
from slimpipe.propose import halves as H
from slimpipe.propose import reuse as R
from slimpipe.propose.fit import (
    FAMILIES,
    bootstrap_predictions,
    choose,
    cross_validate,
    judge,
    make_model,
    nested_cross_validate,
    spread,
)
from slimpipe.propose.halves import Split, eval_document_ids
from slimpipe.propose.optimize import objective_fn, parse_objective, round_shares, search
from slimpipe.propose.sample import ProposalError, draw_mixtures, natural_shares, upper_bounds, within_bounds

log = logging.getLogger(__name__)

REPORT_FORMAT = "slimpipe-propose-report"
UNBOUNDED_FACTOR = 10  # a prediction interval wider than this many times the proxies' spread says nothing
INTERVAL_METHOD = ("paired bootstrap of slimpipe.report.stats.difference over the confirmation half's documents "
                   "(within source) and the seeds")


@dataclass
class ProposeOptions:
    proxies: int = 16
    tokens: int = 131_072  # training tokens of each proxy (and the mix budget)
    model: str = "tiny"
    objective: str = "natural"  # natural | uniform | total | weights file | SOURCE=WEIGHT pairs
    target_tokens: int | None = None  # the target run's budget: the repetition bound of the proposal
    confirm_seeds: int = 3  # seeds of each confirmation run (the proposal, natural, DC-6, the best proxy)
    average_top: int = 16  # RegMix: the proposal is the mean of the top-k candidates
    replicates: int = 2000  # bootstrap replicates of the confirmation intervals
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
    force: bool = False  # write into a non-empty folder that is not a slimpipe output (slimpipe.outdir rule 5)
    warn: Callable[[str], None] = field(default=lambda m: log.warning(m), repr=False)


_NOT_RESULT = ("warn", "ray_address", "quiet", "force")  # options that do not change what a run writes


def recorded_options(opt: ProposeOptions) -> dict[str, Any]:
    """The options that change a run's result: ``proposal.json["options"]`` and the claim's identity."""
    return {k: v for k, v in asdict(opt).items() if k not in _NOT_RESULT}


def propose_identity(src: Path, opt: ProposeOptions) -> str:
    """What makes a re-run "the same propose job" (:func:`slimpipe.outdir.claim`): the data, PREV_OUT and
    every option that changes the result; such a re-run resumes its mixes and proxies."""
    return identity(inputs=input_identity([src]), reuse=canonical(opt.reuse) if opt.reuse else None,
                    options={k: v for k, v in recorded_options(opt).items() if k != "reuse"})


def _claimed(out: Path, src: Path, opt: ProposeOptions) -> bool:
    """True when OUT is claimed by this very job (so a failure may write its report.json there)."""
    try:
        held = json.loads((out / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(held, dict) and held.get("job") == "propose" and held.get("identity") == propose_identity(src, opt)


def _dc6() -> dict[str, float]:
    from slimpipe.mix.config import load_mix

    return dict(load_mix("dc6").shares)


def _build(src: Path, weights: dict[str, float], name: str, out: Path, opt: ProposeOptions,
           tokenizer: str | None) -> dict:
    from slimpipe.mix.build import MixOptions, build_mix
    from slimpipe.mix.config import MixConfig

    # a share worth less than one token of the budget is no share (the builder would ask for 0 documents)
    total = math.fsum(weights.values())
    weights = {s: v for s, v in weights.items() if v > 0 and v / total * opt.tokens >= 1.0}
    if (out / "manifest.json").exists():  # resume, but only the same mix of the same data
        m = json.loads((out / "manifest.json").read_text())
        total = math.fsum(weights.values())
        had = (m.get("mix") or {}).get("shares") or {}
        same = (Path(m.get("input", {}).get("path") or "").resolve() == src.resolve()  # recorded as given
                and m.get("tokens_requested") == opt.tokens
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


def _train_proxy_job(job: tuple) -> dict:
    return _train_proxy(*job)


def _train_all(jobs: list[tuple], use_gpu: bool, quiet: bool) -> list[dict]:
    from slimpipe.runtime import Executor

    ex = Executor(label="propose", progress=not quiet)
    results: list[dict | None] = [None] * len(jobs)
    todo = list(range(len(jobs)))
    for attempt in (1, 2):  # an application failure is retried once, then reported
        # every proxy at once: its CPU or GPU request bounds how many run; a worker that died twice
        # (Ray's own retry exhausted) is a failed proxy, not a failed job
        trained = ex.map(_train_proxy_job, [jobs[i] for i in todo], window=len(todo),
                         label=f"propose: train proxies (try {attempt})", unit="proxies",
                         num_cpus=0 if use_gpu else 1, num_gpus=1 if use_gpu else 0, max_retries=1,
                         on_error=lambda _i, exc: {"ok": False, "error": f"{type(exc).__name__}: {exc}"})
        for i, r in zip(todo, trained, strict=True):
            results[i] = r
        todo = [i for i in todo if not results[i]["ok"]]
        if not todo:
            break
    return [r or {"ok": False, "error": "no result"} for r in results]


def run_propose(slimpajama_dir: str | Path, out: str | Path, opt: ProposeOptions) -> dict:
    """The whole proposal; returns ``OUT/proposal.json``'s content. ``OUT/report.json`` is written in
    every case once the output folder exists, a failure included (``status: "error"``)."""
    src, out = Path(slimpajama_dir), Path(out)
    if opt.proxies < 4:
        raise ProposalError(f"--proxies {opt.proxies}: a fit needs at least 4 proxies (RegMix used 512)")
    if opt.confirm_seeds < 1:
        raise ProposalError(f"--confirm-seeds {opt.confirm_seeds}: confirmation needs at least one seed")
    try:
        return _run(src, out, opt)
    except BaseException as exc:
        report = out / "report.json"
        ours = True
        if report.exists():
            try:
                ours = json.loads(report.read_text()).get("format") == REPORT_FORMAT
            except (OSError, ValueError, AttributeError):
                ours = False
        if out.is_dir() and ours and _claimed(out, src, opt):  # never into a folder this job did not claim
            msg = f"{type(exc).__name__}: {exc}" if not isinstance(exc, ProposalError) else str(exc)
            _write_report_json(out, None, [f"no proposal: {msg}"], error=msg)
        raise


def _run(src: Path, out: Path, opt: ProposeOptions) -> dict:
    from slimpipe.engine import available_gpus, ensure_ray
    from slimpipe.mix.build import read_input
    from slimpipe.train.evaluate import load_document_losses
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
    # OUT: new, empty or this same job's (resumed); a user's folder or another run's is refused in one line
    claim(out, "propose", propose_identity(src, opt), sources=[src], force=opt.force)
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
    # The repetition bound is the target run's: a source may not repeat more than --max-epochs at the budget
    # the proposal is for (--target-tokens), nor in a proxy at its own budget; the larger budget binds.
    bound_tokens = max(opt.tokens, opt.target_tokens or 0)
    bounds = upper_bounds(available, bound_tokens, opt.max_epochs)
    tight = [s for s in present if bounds[s] < natural[s]]
    if tight:
        opt.warn("these sources have too few tokens to reach even their natural share within "
                 f"{opt.max_epochs:g} epochs of {bound_tokens:,} tokens: "
                 + ", ".join(f"{s} ({available[s]:,} tokens)" for s in tight))

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
        if within_bounds(anchor, upper_bounds(dim_avail, bound_tokens, opt.max_epochs)):
            refs["previous"] = anchor
        include = [anchor] if "previous" in refs and not reused else []  # a reused proxy IS the anchor
        n_draw = max(swarm - len(reused), len(include))
        expand = plan.expand
    else:
        dims, dim_avail, n_draw = present, available, opt.proxies
        include = [natural] if within_bounds(natural, bounds) else []  # trained in confirmation in any case
        refs["natural"] = natural
        if dc6_shares:  # predicted in any case; a proxy only when the bound allows it
            refs["dc6"] = {s: dc6_shares.get(s, 0.0) for s in present}
            if all(dc6_shares.get(s, 0) <= bounds[s] + 1e-9 for s in present):  # DC-6 as a proxy too
                include.append(refs["dc6"])
        expand = dict  # the draw space is the sources
    drawn = draw_mixtures(dim_avail, bound_tokens, n_draw, max_epochs=opt.max_epochs,
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
    use_gpu = available_gpus() >= 1
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

    # 5. choose on the selection half: every proxy's per-source bpb over the selection documents only
    split = Split(eval_document_ids(probe_dir, src / "eval"))
    losses: dict[int, dict] = {}
    for i, r in enumerate(results):
        if not r["ok"]:
            continue
        f = Path(jobs[i][1]) / "eval_losses.npz"
        if not f.is_file():
            results[i] = {"ok": False, "error": f"no per-document losses ({f} missing)"}
            continue
        losses[i] = load_document_losses(f)[0]
    ok = sorted(losses)
    failed = [{"proxy": mix_dirs[i].name, "error": results[i]["error"]} for i in range(len(results))
              if not results[i]["ok"]]
    for f in failed:
        opt.warn(f"proxy {f['proxy']} failed and is excluded from the fit: {f['error']}")
    if len(ok) < 4:
        raise ProposalError(f"only {len(ok)} proxies trained; a fit needs at least 4 ({len(failed)} failed)")
    usable, left_out = split.usable()
    targets = [s for s in present if s in usable and all(s in losses[i] for i in ok)]
    left_out.update({s: "no evaluation set in every proxy" for s in present if s not in targets and s not in left_out})
    for s, why in left_out.items():
        opt.warn(f"{s} is left out of the objective: {why}")
    if not targets:
        raise ProposalError("no source has evaluation documents in both halves in every proxy; see the mixes' "
                            "manifests")
    sel = {i: H.half_losses(losses[i], split, H.SELECTION, targets) for i in ok}
    X = np.array([[mixtures[i][d] for d in dims] for i in ok])
    Y = np.array([[H.bpb(sel[i])[s] for s in targets] for i in ok])
    eval_bytes = {s: int(np.sum(sel[ok[0]][s]["bytes"])) for s in targets}
    desc, w = parse_objective(opt.objective, targets, eval_bytes, natural)
    weights = dict(zip(targets, w.tolist(), strict=True))
    obj = objective_fn(w)
    cv = [cross_validate(f, X, Y, obj, seed=opt.seed) for f in opt.families]
    nested = nested_cross_validate(opt.families, X, Y, obj, seed=opt.seed)
    passing, why_not_predicting = judge(cv, nested)
    observed = obj(Y)
    best_i = ok[int(np.argmin(observed))]  # the best proxy actually trained, on the selection half

    # 6. propose: the fit's optimum when it predicts, else the best proxy (never an extrapolation)
    dim_bounds, dim_natural = upper_bounds(dim_avail, bound_tokens, opt.max_epochs), natural_shares(dim_avail)
    names = ["proposed", *refs]
    predicted: dict[str, dict] = {}
    best = choose(passing) if passing else None
    if best is not None:
        model = make_model(best.family, opt.seed).fit(X, Y)
        # Trust region: no share beyond the largest any proxy trained on, so the fit never extrapolates a
        # source past what was observed (an unbounded search on a few proxies runs to a corner of the simplex).
        bound_arr = np.minimum(np.array([dim_bounds[d] for d in dims]), X.max(axis=0))
        nat_arr = np.array([dim_natural[d] for d in dims])
        x = search(model, obj, bound_arr, nat_arr, seed=opt.seed, average_top=opt.average_top)
        at = np.vstack([x] + [np.array([ref[d] for d in dims]) for ref in refs.values()])
        point = model.predict(at)
        boot = bootstrap_predictions(best.family, X, Y, at, n_boot=opt.bootstrap, seed=opt.seed)
        with np.errstate(invalid="ignore", over="ignore"):
            obj_boot = np.stack([obj(b) for b in boot])  # (n_boot, len(at))
            lo, hi = np.percentile(boot, [2.5, 97.5], axis=0)
            olo, ohi = np.percentile(obj_boot, [2.5, 97.5], axis=0)
            diff = obj_boot[:, 0][:, None] - obj_boot[:, 1:]
            dlo, dhi = np.percentile(diff, [2.5, 97.5], axis=0)
        limit = UNBOUNDED_FACTOR * max(spread(observed), 1e-6)
        if not (np.isfinite(olo[0]) and np.isfinite(ohi[0]) and ohi[0] - olo[0] <= limit):
            why_not_predicting.append(f"{best.family}: the proposal's prediction interval [{olo[0]:.4g}, {ohi[0]:.4g}] "
                                      f"is unbounded (wider than {UNBOUNDED_FACTOR}x the proxies' spread)")
            best = None
        else:
            # The stated prediction is the bootstrap median (bagged): the single fit's value at its own optimum
            # is biased low (the search picks the fit's most optimistic point), and is kept as "fit_objective".
            med = np.median(boot, axis=0)
            predicted = {n: {"objective": float(np.median(obj_boot[:, j])),
                             "objective_ci95": [float(olo[j]), float(ohi[j])],
                             "fit_objective": float(obj(point[j:j + 1])[0]),
                             "bpb": {s: float(med[j, t]) for t, s in enumerate(targets)},
                             "bpb_ci95": {s: [float(lo[j, t]), float(hi[j, t])] for t, s in enumerate(targets)},
                             "half": H.SELECTION}
                         for j, n in enumerate(names)}
            for j, n in enumerate(names[1:]):
                predicted[n]["proposed_minus_this_ci95"] = [float(dlo[j]), float(dhi[j])]
            shares = expand({d: float(v) for d, v in zip(dims, x, strict=True)})
    if best is None:
        shares = expand(dict(mixtures[best_i]))
    status = "proposed" if best is not None else "not_predicting"
    pct = round_shares(shares)
    epochs = {s: shares[s] * bound_tokens / available[s] for s in present}
    proposal = {
        "status": status, "why_not_predicting": why_not_predicting,
        "best_proxy": mix_dirs[best_i].name,
        "sources": present, "targets": targets, "left_out": left_out,
        "objective": {"spec": opt.objective, "description": desc, "weights": weights},
        "split": {"method": H.METHOD, "selection_set": split.selection_set,
                  "confirmation_set": split.confirmation_set, "documents": split.counts()},
        "available_tokens": available, "bounds": bounds, "max_epochs": opt.max_epochs,
        "target_tokens": bound_tokens,
        "trust_region": {d: float(v) for d, v in zip(dims, X.max(axis=0), strict=True)},
        "dims": dims, "natural_shares": natural, "dc6_shares": dc6_shares,
        "reference_shares": {n: expand(ref) for n, ref in refs.items()}, "source_stats": stats,
        "proxies": [{"name": mix_dirs[i].name, "shares": expand(mixtures[i]), "point": mixtures[i],
                     "ok": i in losses, "reused": i < len(reused), "mix": str(mix_dirs[i]), "run": jobs[i][1],
                     "bpb": ({s: H.bpb(sel[i])[s] for s in targets} if i in losses else None),
                     "objective": float(obj(np.array([[H.bpb(sel[i])[s] for s in targets]]))[0])
                     if i in losses else None,
                     "error": results[i].get("error")} for i in range(len(results))],
        "proxies_trained": len(drawn), "reuse": (R.reuse_record(plan, opt.proxies, len(mixtures), len(drawn), why_not)
                                                if plan else None),
        "failed": failed,
        "cv": [r.to_dict() for r in cv], "nested_cv": nested.to_dict(), "spread": spread(observed),
        "chosen": best.family if best is not None else None,
        "cv_heldout": {"predicted": (best or choose(cv)).predicted.tolist(),
                       "observed": (best or choose(cv)).observed.tolist(),
                       "family": (best or choose(cv)).family},
        "shares": shares, "weights_pct": pct, "epochs": epochs, "predicted": predicted,
        "options": recorded_options(opt),
        "tokenizer": tokenizer,
    }

    # 7. confirm on the other half: the proposal, the natural mix, DC-6 and the best proxy, with seeds
    configs = {"proposed": shares, "natural": natural, "best_proxy": proposal["proxies"][best_i]["shares"]}
    if dc6_shares:
        configs["dc6"] = {s: dc6_shares.get(s, 0.0) for s in present}
    proposal["confirmation"] = _confirm(src, out, opt, configs, proposal, split, targets, weights, tokenizer,
                                        use_gpu)
    (out / "proposal.json").write_text(json.dumps(proposal, indent=1, default=_json_default))
    _write_yaml(out / "proposed.yaml", proposal)
    from slimpipe.propose.report import headline_lines, write_report

    write_report(out, proposal)
    _write_report_json(out, proposal, headline_lines(proposal))
    return proposal


def _same(a: dict[str, float], b: dict[str, float]) -> bool:
    return all(abs(a.get(s, 0.0) - b.get(s, 0.0)) <= 1e-9 for s in {*a, *b})


def _confirm(src: Path, out: Path, opt: ProposeOptions, configs: dict[str, dict[str, float]], proposal: dict,
             split: Split, targets: list[str], weights: dict[str, float], tokenizer: str, use_gpu: bool) -> dict:
    """Train each configuration with ``confirm_seeds`` seeds (a proxy with the same mixture is its first
    seed's run), and measure the proposal against the others on the confirmation half only."""
    from slimpipe.report import stats
    from slimpipe.train.evaluate import load_document_losses

    seeds = [opt.seed + k for k in range(opt.confirm_seeds)]
    device = "cuda" if use_gpu else "cpu"
    runs: dict[str, dict[int, str]] = {}
    mixes: dict[str, str] = {}
    jobs = []
    for name, shares in configs.items():
        same = [p for p in proposal["proxies"] if p["ok"] and _same(p["shares"], shares)]
        other = next((n for n in mixes if _same(configs[n], shares)), None)
        if other is not None:  # the proposal is the best proxy (or natural): the very same runs
            runs[name] = runs[other]
            mixes[name] = mixes[other]
            continue
        if same:
            mixes[name] = same[0]["mix"]
        else:
            d = out / "mixes" / f"confirm-{name}"
            _build(src, shares, f"confirm-{name}", d, opt, tokenizer)
            mixes[name] = str(d)
        runs[name] = {}
        for sd in seeds:
            if same and sd == opt.seed:
                runs[name][sd] = same[0]["run"]
                continue
            run = str(out / "confirm" / f"{name}-s{sd}")
            runs[name][sd] = run
            if not (Path(run) / "metrics.json").exists():
                jobs.append((mixes[name], run, opt.model, opt.tokens, sd, device))
    results = _train_all(jobs, use_gpu, opt.quiet) if jobs else []
    errors = {j[1]: r["error"] for j, r in zip(jobs, results, strict=True) if not r["ok"]}
    rows, realised, failed, confs = {}, {}, {}, {}
    for name, by_seed in runs.items():
        bad = [f"{run}: {errors[run]}" for run in by_seed.values() if run in errors]
        bad += [f"{run}: no eval_losses.npz" for run in by_seed.values()
                if run not in errors and not (Path(run) / "eval_losses.npz").is_file()]
        if bad:
            failed[name] = bad
            continue
        conf = [H.half_losses(load_document_losses(Path(run) / "eval_losses.npz")[0], split, H.CONFIRMATION, targets)
                for run in by_seed.values()]
        rows[name] = H.weighted_row(list(by_seed), conf, weights)
        confs[name] = conf
        realised[name] = float(np.mean([sum(weights[s] * v for s, v in H.bpb(c).items()) for c in conf]))
    # The interval pools the sources with enough confirmation documents to carry one (the rest are named);
    # the objective's weights are renormalised over them, and the point difference is over every target.
    min_docs = int(getattr(stats, "MIN_DOCS", 5))
    counts = split.counts()
    pooled = [s for s in targets if counts[s][H.CONFIRMATION] >= min_docs]
    too_few = {s: f"{counts[s][H.CONFIRMATION]} confirmation documents, fewer than {min_docs}"
               for s in targets if s not in pooled}
    pw = {s: weights[s] for s in pooled}
    if sum(pw.values()) > 0:
        pw = {s: v / sum(pw.values()) for s, v in pw.items()}
    comparisons: dict[str, dict] = {}
    method = None
    for ref in ("natural", "dc6", "best_proxy"):
        if ref not in configs:
            comparisons[ref] = {"diff": None, "ci95": None, "seeds": 0, "note": "not among the sources"}
            continue
        if "proposed" not in rows or ref not in rows:
            comparisons[ref] = {"diff": None, "ci95": None, "seeds": 0,
                                "note": "runs failed: " + "; ".join(failed.get("proposed", []) + failed.get(ref, []))}
            continue
        c = {"diff": realised["proposed"] - realised[ref], "ci95": None, "seeds": len(seeds),
             "same_runs": runs[ref] == runs["proposed"], "pooled_sources": pooled, "left_out": too_few}
        if pooled and sum(pw.values()) > 0:
            d = stats.difference(H.weighted_row(rows["proposed"].seeds, confs["proposed"], pw),
                                 H.weighted_row(rows[ref].seeds, confs[ref], pw),
                                 replicates=opt.replicates, seed=opt.seed)
            col = d["columns"].get("mean")
            if col is not None and col.get("ci95"):
                c.update(diff=col["diff"], ci95=col["ci95"], detectable=col.get("detectable"),
                         claim_ok=d.get("claim_ok"))
            method = method or d.get("interval_method")
        if c["ci95"] is None:
            c["note"] = ("no interval: no source has " + str(min_docs) + " or more confirmation documents ("
                         + "; ".join(f"{s} {v}" for s, v in too_few.items()) + ")")
        comparisons[ref] = c
    return {"half": H.CONFIRMATION, "seeds": seeds, "runs": runs, "mixes": mixes, "realised": realised,
            "comparisons": comparisons, "failed": failed,
            "interval_method": method or ("none: no source has enough confirmation documents for an interval"
                                          if not pooled else INTERVAL_METHOD),
            "conditional": len(seeds) < 3, "pooled_sources": pooled, "left_out_of_intervals": too_few}


def _write_report_json(out: Path, p: dict | None, headline: list[str], error: str | None = None) -> None:
    """``OUT/report.json``: written by every run that got as far as its output folder, failed or not."""
    doc: dict[str, Any] = {"format": REPORT_FORMAT, "status": "error" if error else p["status"],
                           "headline": headline, "error": error}
    if p is not None:
        conf = p.get("confirmation") or {}
        doc.update({
            "objective": p["objective"], "selection_set": p["split"]["selection_set"],
            "confirmation_set": p["split"]["confirmation_set"], "split": p["split"],
            "comparisons": conf.get("comparisons"), "realised_confirmation": conf.get("realised"),
            "interval_method": conf.get("interval_method"), "seeds": conf.get("seeds"),
            "conditional": conf.get("conditional"),
            "proposed": {"weights_pct": p["weights_pct"],
                         "from": "fit" if p["status"] == "proposed" else f"best proxy {p['best_proxy']}"},
            "fit": {"chosen": p["chosen"], "why_not_predicting": p["why_not_predicting"], "cv": p["cv"],
                    "nested_cv": p["nested_cv"], "spread": p["spread"]},
            "predicted": p["predicted"], "left_out": p["left_out"],
        })
    (out / "report.json").write_text(json.dumps(doc, indent=1, default=_json_default))


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, tuple):
        return list(o)
    raise TypeError(type(o))


def _write_yaml(path: Path, p: dict) -> None:
    """The proposal as a mix file: the fit's optimum, or (when the fit does not predict) the best proxy
    actually trained, never an extrapolation. ``prediction`` is the fit's (selection half); ``confirmed``
    (``prediction.confirmed``) what the trained proposal realised on the confirmation half against natural,
    DC-6 and the best proxy."""
    pred = p["predicted"].get("proposed")
    conf = p.get("confirmation") or {}
    n_ok = len(p["proxies"]) - len(p["failed"])
    if p["status"] == "proposed":
        what = (f"proposed by slimpipe propose from {n_ok} proxies ({p['options']['model']}, "
                f"{p['options']['tokens']:,} tokens each), model {p['chosen']}")
    else:
        what = (f"NOT A FIT'S PROPOSAL: the fit does not predict, so this is the best of the {n_ok} proxies "
                f"actually trained ({p['best_proxy']}) on the selection half")
    doc = {
        "name": "proposed",
        "description": (what + f", objective: {p['objective']['description']}"
                        + (f"; reusing {p['reuse']['previous']}'s mix for {len(p['reuse']['unchanged'])} unchanged "
                           "sources" if p.get("reuse") else "")),
        "weights": p["weights_pct"],
    }
    doc["prediction"] = {"fit": None, "note": "the fit does not predict: no prediction is made"}
    if pred is not None:
        doc["prediction"] = {"half": "selection", "objective": round(pred["objective"], 5),
                             "objective_ci95": [round(v, 5) for v in pred["objective_ci95"]],
                             "bpb": {s: round(v, 5) for s, v in pred["bpb"].items()},
                             "bpb_ci95": {s: [round(a, 5), round(b, 5)] for s, (a, b) in pred["bpb_ci95"].items()},
                             "cv_spearman": None if not math.isfinite(_cv(p)) else round(_cv(p), 4),
                             "valid_for": {"tokens": p["options"]["tokens"], "model": p["options"]["model"]}}
    if conf:  # (mix files accept `prediction` as an informative record; the confirmation lives inside it)
        doc["prediction"]["confirmed"] = {"half": "confirmation", "set": p["split"]["confirmation_set"], "seeds": len(conf["seeds"]),
                            "objective": _round(conf["realised"].get("proposed")),
                            "proposed_minus": {k: {"diff": _round(v["diff"]),
                                                   "ci95": [_round(x) for x in v["ci95"]] if v["ci95"] else None}
                                               for k, v in conf["comparisons"].items()}}
    path.write_text("# slimpipe mix --config " + path.name + " uses `weights`; `prediction` (the fit's, on the "
                    "selection half, and what was confirmed on the other half) is a record\n"
                    + yaml.safe_dump(doc, sort_keys=False))


def _round(v: float | None) -> float | None:
    return None if v is None else round(float(v), 5)


def _cv(p: dict) -> float:
    return next((r["spearman"] for r in p["cv"] if r["family"] == p["chosen"]), float("nan"))
