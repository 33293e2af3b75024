"""Paired bootstrap intervals for differences in bits per byte between two rows of a comparison.

A *row* is one training configuration scored with one or more seeds; each seed's run saved the loss of
every evaluation document (``eval_losses.npz``: per source, per document, NLL in nats, tokens, UTF-8
bytes). The difference between two rows in some column (a source, ``total``, ``mean``) is

    mean over seeds s of  [ bpb_A,s(column) - bpb_B,s(column) ]

with ``bpb = sum(NLL) / (ln 2 * sum(bytes))`` over the column's documents. Its 95% interval is the
2.5/97.5 percentiles of that statistic over bootstrap replicates that

* resample **documents** with replacement, within each source (the evaluation set is stratified per
  source, so each replicate keeps every source's size), using the *same* draw for both rows — the
  pairing that removes the documents' own difficulty from the difference; and
* when there are several seeds, resample **seeds** too: pairs ``(A_s, B_s)`` of runs that share a seed
  (same initialisation and data order) when both rows have the same seeds, independently otherwise.

Pairing over documents needs both rows scored on the same documents (identical per-document byte
counts in every source); pairing over seeds needs the same seed values. :func:`difference` says which
pairing it could use. An interval that covers 0 means "no detectable difference".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

LN2 = math.log(2.0)
DEFAULT_REPLICATES = 2000
MIN_DOCS = 5  # a source scored on fewer documents gets no interval of its own: resampling them says nothing


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


def _replicate_bpb(row: RowLosses, sources: list[str], weights: dict[str, np.ndarray] | None
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


def _columns(nll: np.ndarray, nbytes: np.ndarray, sources: list[str]) -> dict[str, np.ndarray]:
    """bpb per column from ``(R, S, K)`` sums: each source, ``total`` (pooled) and ``mean`` (over sources)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        per = nll / (LN2 * nbytes)  # (R, S, K)
        out = {s: per[..., k] for k, s in enumerate(sources)}
        out["total"] = nll.sum(-1) / (LN2 * nbytes.sum(-1))
        out["mean"] = per.mean(-1)
    return out


def difference(a: RowLosses, b: RowLosses, *, replicates: int = DEFAULT_REPLICATES, seed: int = 0,
               confidence: float = 0.95) -> dict:
    """``A - B`` in bits per byte per column with a bootstrap interval; see the module docstring.

    Returns ``{"columns": {col: {"diff", "ci95": [lo, hi], "detectable"}}, "paired_docs": bool,
    "paired_seeds": bool, "seeds": [...], "sources": [...]}``. Only sources both rows scored count.
    """
    sources = [s for s in a.sources if s in b.nll and a.bytes[s].size and b.bytes[s].size]
    if not sources:
        raise ValueError("the two rows share no scored source")
    paired_docs = same_documents(a, b, sources)
    common = [x for x in a.seeds if x in b.seeds]
    paired_seeds = len(common) == len(a.seeds) == len(b.seeds)
    if paired_seeds:  # align B's seeds to A's order
        order = [b.seeds.index(x) for x in a.seeds]
        b = RowLosses(seeds=list(a.seeds), nll={s: v[order] for s, v in b.nll.items()}, bytes=b.bytes)
    rng = np.random.default_rng([seed, 0xB007])

    def stat(wa: dict | None, wb: dict | None, sa: np.ndarray | None, sb: np.ndarray | None) -> dict[str, np.ndarray]:
        ca = _columns(*_replicate_bpb(a, sources, wa), sources)
        cb = _columns(*_replicate_bpb(b, sources, wb), sources)
        out = {}
        for col in ca:
            xa, xb = ca[col], cb[col]  # (R, S_a), (R, S_b)
            if paired_seeds:
                d = xa - xb
                out[col] = (d * sa).sum(-1) / sa.sum(-1) if sa is not None else d.mean(-1)
            else:
                ma = (xa * sa).sum(-1) / sa.sum(-1) if sa is not None else xa.mean(-1)
                mb = (xb * sb).sum(-1) / sb.sum(-1) if sb is not None else xb.mean(-1)
                out[col] = ma - mb
        return out

    point = {k: float(v[0]) for k, v in stat(None, None, None, None).items()}
    wa = {s: _doc_weights(rng, a.bytes[s].size, replicates) for s in sources}
    wb = wa if paired_docs else {s: _doc_weights(rng, b.bytes[s].size, replicates) for s in sources}
    sa = sb = None
    if len(a.seeds) > 1 or len(b.seeds) > 1:
        sa = _doc_weights(rng, len(a.seeds), replicates)
        sb = sa if paired_seeds else _doc_weights(rng, len(b.seeds), replicates)
    reps = stat(wa, wb, sa, sb)
    alpha = (1.0 - confidence) / 2.0
    cols = {}
    for col, d in point.items():
        n_docs = a.bytes[col].size if col in a.bytes else None
        if n_docs is not None and n_docs < MIN_DOCS:
            cols[col] = {"diff": d, "ci95": None, "detectable": False,
                         "note": f"{n_docs} evaluation document(s): too few for an interval"}
            continue
        r = reps[col][np.isfinite(reps[col])]
        lo, hi = (float(np.quantile(r, alpha)), float(np.quantile(r, 1.0 - alpha))) if r.size else (math.nan, math.nan)
        cols[col] = {"diff": d, "ci95": [lo, hi], "detectable": bool(lo > 0 or hi < 0)}
    return {"columns": cols, "paired_docs": paired_docs, "paired_seeds": paired_seeds,
            "seeds": common if paired_seeds else [list(a.seeds), list(b.seeds)], "sources": sources,
            "replicates": replicates}


def describe(diff: float, ci: list[float] | None, note: str | None = None) -> str:
    """One phrase for a difference: "−0.0123 bpb [−0.0150, −0.0090]" or "no detectable difference (…)"."""
    if ci is None:
        return f"no detectable difference ({diff:+.4f} bpb; {note or 'no interval'})"
    lo, hi = ci
    text = f"{diff:+.4f} bpb, 95% CI [{lo:+.4f}, {hi:+.4f}]"
    if not (lo > 0 or hi < 0):
        return f"no detectable difference ({text})"
    return text
