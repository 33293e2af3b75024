"""Objectives over per-source bits per byte, and the search for the mix that minimises one.

The search is RegMix's: score a large number of Dirichlet candidates inside the bounds with the fitted
model, keep the best few, and refine them by small moves on the simplex. Cheap (the model is a formula
or a few hundred trees), deterministic for a seed, and it never leaves the feasible set.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from slimpipe.propose.fit import Model
from slimpipe.propose.sample import ProposalError


def parse_objective(spec: str, targets: Sequence[str], eval_bytes: Mapping[str, int]
                    ) -> tuple[str, np.ndarray]:
    """``mean`` | ``total`` | ``wikipedia=2,c4=1`` -> (description, weights over ``targets`` summing to 1).

    ``mean`` averages the sources' bits per byte; ``total`` is the pooled figure (bits over bytes of the
    whole evaluation set), i.e. a mean weighted by each source's evaluation bytes; explicit weights name
    evaluated sources (unnamed ones get 0).
    """
    spec = spec.strip()
    if spec == "mean":
        w = np.ones(len(targets))
        desc = "mean per-source bits per byte"
    elif spec == "total":
        w = np.array([float(eval_bytes.get(s, 0)) for s in targets])
        if w.sum() <= 0:
            raise ProposalError("--objective total needs evaluation bytes per source; none were recorded")
        desc = "pooled bits per byte (sources weighted by evaluation bytes)"
    else:
        w = np.zeros(len(targets))
        for part in spec.split(","):
            key, sep, val = part.partition("=")
            key = key.strip()
            if not sep or key not in targets:
                raise ProposalError(f"--objective {spec!r}: expected mean, total or SOURCE=WEIGHT pairs over the "
                                    f"evaluated sources ({', '.join(targets)})")
            try:
                w[targets.index(key)] = float(val)
            except ValueError:
                raise ProposalError(f"--objective {spec!r}: weight of {key!r} is not a number") from None
        if (w < 0).any() or w.sum() <= 0:
            raise ProposalError(f"--objective {spec!r}: weights must be non-negative and not all zero")
        desc = "weighted bits per byte (" + ", ".join(f"{s} {v:g}" for s, v in zip(targets, w, strict=True) if v) + ")"
    return desc, w / w.sum()


def objective_fn(weights: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """Per-source bpb rows -> one objective value per row."""
    return lambda Y: np.asarray(Y) @ weights


def search(model: Model, objective: Callable[[np.ndarray], np.ndarray], bounds: np.ndarray, natural: np.ndarray,
           seed: int = 0, candidates: int = 20_000, refine_rounds: int = 30, keep: int = 16) -> np.ndarray:
    """The feasible mix (shares, summing to 1, each ≤ its bound) with the lowest predicted objective."""
    rng = np.random.default_rng([seed, 11])
    S = bounds.size
    pool = [natural[None, :]] if (natural <= bounds + 1e-12).all() else []
    need = candidates
    while need > 0:
        for conc in (0.3, 1.0, 3.0):
            batch = rng.dirichlet(np.maximum(natural, 1e-3) * conc * S, size=max(need // 3, 256))
            pool.append(batch[(batch <= bounds + 1e-12).all(axis=1)])
        need = candidates - sum(p.shape[0] for p in pool)
        if not any(p.shape[0] for p in pool[-3:]):
            raise ProposalError("no candidate mixture satisfies the epoch bounds")
    X = np.vstack(pool)
    scores = objective(model.predict(X))
    top = X[np.argsort(scores)[:keep]]
    best_x, best_s = top[0], float(objective(model.predict(top[:1]))[0])
    step = 0.05
    for _ in range(refine_rounds):
        moves = np.repeat(top, 32, axis=0) * np.exp(rng.normal(0, step, (top.shape[0] * 32, S)))
        moves = _project(moves, bounds)
        s = objective(model.predict(moves))
        order = np.argsort(s)
        top = moves[order[:keep]]
        if s[order[0]] < best_s - 1e-12:
            best_x, best_s = moves[order[0]], float(s[order[0]])
        step *= 0.9
    return best_x


def _project(X: np.ndarray, bounds: np.ndarray, iters: int = 50) -> np.ndarray:
    """Rows renormalised to sum 1 with every entry ≤ its bound (water-filling the excess)."""
    X = np.maximum(X, 0)
    X = X / X.sum(axis=1, keepdims=True)
    for _ in range(iters):
        over = X > bounds
        if not over.any():
            break
        excess = np.where(over, X - bounds, 0).sum(axis=1, keepdims=True)
        X = np.where(over, bounds, X)
        room = np.where(~over & (X < bounds), X + 1e-12, 0)
        X = X + excess * room / np.maximum(room.sum(axis=1, keepdims=True), 1e-300)
    return X


def round_shares(shares: Mapping[str, float], digits: int = 4) -> dict[str, float]:
    """Shares as percentages rounded for a YAML file, still summing to 100 (largest remainder)."""
    scale = 10 ** digits
    raw = {s: v * 100 * scale / max(math.fsum(shares.values()), 1e-300) for s, v in shares.items()}
    floor = {s: math.floor(v) for s, v in raw.items()}
    rest = 100 * scale - sum(floor.values())
    for s in sorted(raw, key=lambda s: raw[s] - floor[s], reverse=True)[:rest]:
        floor[s] += 1
    return {s: v / scale for s, v in floor.items()}
