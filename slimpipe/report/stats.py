"""Intervals for differences in bits per byte between two rows of a comparison, with training noise in them.

A *row* is one training configuration scored with one or more seeds; each seed's run saved the loss of
every evaluation document (``eval_losses.npz``: per source, per document, NLL in nats, tokens, UTF-8
bytes). The difference between two rows in some column (a source, ``total``, ``mean``) is

    mean over seeds s of  [ bpb_A,s(column) - bpb_B,s(column) ]

with ``bpb = sum(NLL) / (ln 2 * sum(bytes))`` over the column's documents. Two things vary in it:

* **documents** — the evaluation set is a sample of each source. Its variance ``v_doc`` is the variance of
  the statistic over bootstrap replicates that resample documents with replacement within each source
  (stratified, so each replicate keeps every source's size), using the *same* draw for both rows when they
  were scored on the same documents (the pairing that removes the documents' own difficulty);
* **trained models** — each seed is one draw of initialisation and data order. Its variance ``v_seed`` is the
  between-seed variance of the paired per-seed differences over the number of seeds (rows with the same
  seed values), or the pooled between-seed variance of the two rows times ``1/n_A + 1/n_B`` otherwise.

The interval is ``diff ± t(df) * sqrt(v_doc + v_seed)`` with the seed part's degrees of freedom (``n - 1``
paired, ``n_A + n_B - 2`` pooled): conservative when documents dominate, exact when seeds do. (Welch–
Satterthwaite degrees of freedom were tried: they grow exactly when the seed variance is underestimated by
chance, and 3 seeds then covered 91%.) Why not a bootstrap over seeds as well: with
``n`` seeds a bootstrap sees ``(n - 1)/n`` of the seed variance and uses normal quantiles, so with 5 seeds
and seed noise dominating it covers ~85% where 95% is claimed; the t quantile (2.78 at 4 degrees of
freedom instead of 1.96) is what makes a handful of seeds honest. ``tests/test_coverage.py`` simulates
runs with known seed and document noise through :func:`difference` and checks the coverage.

With one seed per row (and no second seed in either row to estimate the seed variance from) the interval
covers the documents only: it is *conditional on these trained models* (``seed_aware`` False), and the
report says so instead of naming a winner. A source with fewer than :data:`MIN_DOCS` evaluation documents
gets no interval of its own and is left out of ``total`` and ``mean`` (named in ``excluded``), as is any
source the caller excludes (an evaluation manifest's ``excluded_from_intervals``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

LN2 = math.log(2.0)
DEFAULT_REPLICATES = 2000
MIN_DOCS = 30  # fewer evaluation documents: no interval of the source's own, and left out of total/mean
# (the evaluation set is sized to slimpipe.evalset.build.MIN_DOCS; tests/test_coverage.py checks they agree)
MIN_SEEDS_FOR_CLAIM = 3  # fewer seeds in either row: the difference is stated as conditional, never "is better"
SEED_AWARE_METHOD = ("seeds and documents: diff ± t(seeds − 1)·√(document-bootstrap variance + between-seed "
                     "variance of the paired per-seed differences / seeds)")
CONDITIONAL_METHOD = ("documents only (one seed: the interval is conditional on these trained models and "
                      "does not include training noise)")


@dataclass
class RowLosses:
    """Per-document losses of one row: ``nll[source]`` is ``(n_seeds, n_docs)``, ``bytes[source]`` ``(n_docs,)``."""

    seeds: list
    nll: dict[str, np.ndarray]
    bytes: dict[str, np.ndarray]

    @property
    def sources(self) -> list[str]:
        return list(self.nll)


def same_documents(a: RowLosses, b: RowLosses, sources: list[str]) -> bool:
    """True when both rows were scored on the same documents of every source (paired by document)."""
    return all(s in a.bytes and s in b.bytes and a.bytes[s].shape == b.bytes[s].shape
               and np.array_equal(a.bytes[s], b.bytes[s]) for s in sources)


def _doc_weights(rng: np.random.Generator, n: int, reps: int) -> np.ndarray:
    """``(reps, n)`` bootstrap multiplicities: each row draws ``n`` of ``n`` items with replacement."""
    if n == 0:
        return np.zeros((reps, 0))
    return rng.multinomial(n, np.full(n, 1.0 / n), size=reps).astype(np.float64)


def _replicate_sums(row: RowLosses, sources: list[str], weights: dict[str, np.ndarray] | None
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Per replicate, per seed, per source: (NLL sum, byte sum); shapes ``(R, S, K)`` and ``(R, 1, K)``.

    ``weights`` None means the observed data (one replicate of weight 1 everywhere)."""
    nll_cols, byte_cols = [], []
    for s in sources:
        x, by = row.nll[s], row.bytes[s].astype(np.float64)
        w = weights[s] if weights is not None else np.ones((1, by.size))
        nll_cols.append(w @ x.T)  # (R, S)
        byte_cols.append((w @ by)[:, None])  # (R, 1)
    return np.stack(nll_cols, axis=-1), np.stack(byte_cols, axis=-1)


def _columns(nll: np.ndarray, nbytes: np.ndarray, sources: list[str], pooled: list[str]) -> dict[str, np.ndarray]:
    """bpb per column from ``(R, S, K)`` sums: each source, ``total`` (pooled) and ``mean`` (over sources),
    the last two over the ``pooled`` sources only."""
    keep = np.array([s in pooled for s in sources])
    with np.errstate(divide="ignore", invalid="ignore"):
        per = nll / (LN2 * nbytes)  # (R, S, K)
        out = {s: per[..., k] for k, s in enumerate(sources)}
        if keep.any():
            out["total"] = nll[..., keep].sum(-1) / (LN2 * nbytes[..., keep].sum(-1))
            out["mean"] = per[..., keep].mean(-1)
    return out


def _t_quantile(p: float, df: float) -> float:
    from scipy.stats import norm, t

    return float(norm.ppf(p)) if not math.isfinite(df) else float(t.ppf(p, df))


def difference(a: RowLosses, b: RowLosses, *, replicates: int = DEFAULT_REPLICATES, seed: int = 0,
               confidence: float = 0.95, exclude: dict[str, str] | None = None) -> dict:
    """``A - B`` in bits per byte per column with an interval that includes documents and seeds.

    Returns ``{"columns": {col: {"diff", "ci95": [lo, hi] | None, "detectable", "se", "df"}},
    "interval_method", "seed_aware", "n_seeds": [n_A, n_B], "claim_ok", "paired_docs", "paired_seeds",
    "seeds", "sources", "excluded": {source: reason}, "replicates"}``. Only sources both rows scored count;
    ``exclude`` names sources (with the reason) to leave out of ``total`` and ``mean``. ``claim_ok``: the
    interval is seed-aware and both rows have at least :data:`MIN_SEEDS_FOR_CLAIM` seeds.
    """
    sources = [s for s in a.sources if s in b.nll and a.bytes[s].size and b.bytes[s].size]
    if not sources:
        raise ValueError("the two rows share no scored source")
    excluded = {s: why for s, why in (exclude or {}).items() if s in sources}
    for s in sources:
        n = min(a.bytes[s].size, b.bytes[s].size)
        if s not in excluded and n < MIN_DOCS:
            excluded[s] = f"{n} evaluation document(s), fewer than {MIN_DOCS}"
    pooled = [s for s in sources if s not in excluded]
    paired_docs = same_documents(a, b, sources)
    common = [x for x in a.seeds if x in b.seeds]
    paired_seeds = len(common) == len(a.seeds) == len(b.seeds)
    if paired_seeds:  # align B's seeds to A's order
        order = [b.seeds.index(x) for x in a.seeds]
        b = RowLosses(seeds=list(a.seeds), nll={s: v[order] for s, v in b.nll.items()}, bytes=b.bytes)
    n_a, n_b = len(a.seeds), len(b.seeds)
    rng = np.random.default_rng([seed, 0xB007])

    def per_seed(wa: dict | None, wb: dict | None) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        return (_columns(*_replicate_sums(a, sources, wa), sources, pooled),
                _columns(*_replicate_sums(b, sources, wb), sources, pooled))

    def stat(ca: np.ndarray, cb: np.ndarray) -> np.ndarray:
        return (ca - cb).mean(-1) if paired_seeds else ca.mean(-1) - cb.mean(-1)

    obs_a, obs_b = per_seed(None, None)  # (1, S) per column
    wa = {s: _doc_weights(rng, a.bytes[s].size, replicates) for s in sources}
    wb = wa if paired_docs else {s: _doc_weights(rng, b.bytes[s].size, replicates) for s in sources}
    rep_a, rep_b = per_seed(wa, wb)
    seed_aware = n_a >= 2 if paired_seeds else n_a + n_b >= 3  # a between-seed variance can be estimated
    alpha = (1.0 - confidence) / 2.0
    cols = {}
    for col in obs_a:
        xa, xb = obs_a[col][0], obs_b[col][0]  # per seed
        d = float(stat(xa[None], xb[None])[0])
        if col in sources and col in excluded:
            cols[col] = {"diff": d, "ci95": None, "detectable": False, "note": excluded[col]}
            continue
        r = stat(rep_a[col], rep_b[col])
        r = r[np.isfinite(r)]
        v_doc = float(np.var(r, ddof=1)) if r.size > 1 else 0.0
        if seed_aware and paired_seeds:
            v_seed, df_seed = float(np.var(xa - xb, ddof=1)) / n_a, n_a - 1
        elif seed_aware:
            ss = float(((xa - xa.mean()) ** 2).sum() + ((xb - xb.mean()) ** 2).sum())
            df_seed = (n_a - 1) + (n_b - 1)
            v_seed = ss / df_seed * (1.0 / n_a + 1.0 / n_b)
        else:
            v_seed, df_seed = None, 0
        if v_seed is None:
            var, df = v_doc, math.inf
        else:
            var = v_doc + v_seed
            df = df_seed  # not Welch–Satterthwaite: it inflates df exactly when the seed variance is underestimated
        se = math.sqrt(var)
        q = _t_quantile(1.0 - alpha, df)
        lo, hi = d - q * se, d + q * se
        cols[col] = {"diff": d, "ci95": [lo, hi], "detectable": bool(lo > 0 or hi < 0), "se": se,
                     "df": df if math.isfinite(df) else None}
    return {"columns": cols, "interval_method": SEED_AWARE_METHOD if seed_aware else CONDITIONAL_METHOD,
            "seed_aware": seed_aware, "n_seeds": [n_a, n_b],
            "claim_ok": seed_aware and min(n_a, n_b) >= MIN_SEEDS_FOR_CLAIM,
            "paired_docs": paired_docs, "paired_seeds": paired_seeds,
            "seeds": common if paired_seeds else [list(a.seeds), list(b.seeds)], "sources": sources,
            "excluded": excluded, "replicates": replicates}


def describe(diff: float, ci: list[float] | None, note: str | None = None) -> str:
    """One phrase for a difference: "−0.0123 bpb [−0.0150, −0.0090]" or "no detectable difference (…)"."""
    if ci is None:
        return f"no detectable difference ({diff:+.4f} bpb; {note or 'no interval'})"
    lo, hi = ci
    text = f"{diff:+.4f} bpb, 95% CI [{lo:+.4f}, {hi:+.4f}]"
    if not (lo > 0 or hi < 0):
        return f"no detectable difference ({text})"
    return text
