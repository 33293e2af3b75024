"""Objectives over per-source bits per byte, and the search for the mix that minimises one.

The search is RegMix's: score a large number of Dirichlet candidates inside the bounds with the fitted
model, keep the best few, refine them by small moves on the simplex, and average the top k. Cheap (the model is a formula
or a few hundred trees), deterministic for a seed, and it never leaves the feasible set.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from slimpipe.propose.fit import Model
from slimpipe.propose.sample import ProposalError

OBJECTIVES = ("natural", "uniform", "total")


def parse_objective(spec: str, targets: Sequence[str], eval_bytes: Mapping[str, int],
                    natural: Mapping[str, float] | None = None) -> tuple[str, np.ndarray]:
    """The declared objective -> (description, weights over ``targets`` summing to 1).

    * ``natural`` (the default): sources weighted by the corpus's own token shares (``natural``, the
      available tokens of each source), i.e. bits per byte where the data as it is has its mass;
    * ``uniform`` (``mean`` is its old name): the plain mean of the sources' bits per byte;
    * ``total``: the pooled figure, sources weighted by their evaluation bytes;
    * a file (``.yaml``/``.yml``/``.json``) mapping source -> weight, or inline ``wikipedia=2,c4=1``.

    Weights name evaluated sources (unnamed ones get 0) and are normalised to sum to 1.
    """
    spec = spec.strip()
    if spec == "natural":
        if natural is None:
            raise ProposalError("--objective natural needs the corpus's token shares")
        w = np.array([float(natural.get(s, 0.0)) for s in targets])
        if w.sum() <= 0:
            raise ProposalError("--objective natural: the evaluated sources hold no tokens")
        desc = "natural: bits per byte weighted by the corpus's own token shares (" + ", ".join(
            f"{s} {v / w.sum():.1%}" for s, v in zip(targets, w, strict=True)) + ")"
    elif spec in ("uniform", "mean"):
        w = np.ones(len(targets))
        desc = "uniform: mean per-source bits per byte"
    elif spec == "total":
        w = np.array([float(eval_bytes.get(s, 0)) for s in targets])
        if w.sum() <= 0:
            raise ProposalError("--objective total needs evaluation bytes per source; none were recorded")
        desc = "total: pooled bits per byte (sources weighted by evaluation bytes)"
    else:
        pairs = _weights_file(spec) if _is_file_spec(spec) else _inline_weights(spec)
        w = np.zeros(len(targets))
        unknown = [k for k in pairs if k not in targets]
        if unknown:
            raise ProposalError(f"--objective {spec!r}: {', '.join(unknown)} not among the evaluated sources "
                                f"({', '.join(targets)}); expected natural, uniform, total, a weights file or "
                                "SOURCE=WEIGHT pairs")
        for k, v in pairs.items():
            w[list(targets).index(k)] = v
        if (w < 0).any() or w.sum() <= 0 or not np.isfinite(w).all():
            raise ProposalError(f"--objective {spec!r}: weights must be finite, non-negative and not all zero")
        desc = "weights " + ("from " + spec if _is_file_spec(spec) else "") + ": " + ", ".join(
            f"{s} {v / w.sum():.1%}" for s, v in zip(targets, w, strict=True) if v)
    return desc, w / w.sum()


def _is_file_spec(spec: str) -> bool:
    return spec.lower().endswith((".yaml", ".yml", ".json"))


def _inline_weights(spec: str) -> dict[str, float]:
    out = {}
    for part in spec.split(","):
        key, sep, val = part.partition("=")
        if not sep or not key.strip():
            raise ProposalError(f"--objective {spec!r}: expected natural, uniform, total, a weights file "
                                "(.yaml/.json) or SOURCE=WEIGHT pairs")
        try:
            out[key.strip()] = float(val)
        except ValueError:
            raise ProposalError(f"--objective {spec!r}: weight of {key.strip()!r} is not a number") from None
    return out


def _weights_file(spec: str) -> dict[str, float]:
    """A YAML or JSON mapping ``source: weight`` (safe loaders only)."""
    import json
    from pathlib import Path

    import yaml

    path = Path(spec)
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except OSError as exc:
        raise ProposalError(f"--objective {spec}: cannot read the weights file ({exc.strerror or exc})") from None
    except (ValueError, yaml.YAMLError) as exc:
        raise ProposalError(f"--objective {spec}: not valid {'JSON' if path.suffix == '.json' else 'YAML'} "
                            f"({str(exc).splitlines()[0]})") from None
    if isinstance(data, dict) and isinstance(data.get("weights"), dict):
        data = data["weights"]  # a mix file's layout is accepted too
    if not isinstance(data, dict) or not data:
        raise ProposalError(f"--objective {spec}: expected a mapping of source to weight")
    out = {}
    for k, v in data.items():
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise ProposalError(f"--objective {spec}: weight of {k!r} is not a number")
        out[str(k)] = float(v)
    return out


def check_objective_spec(spec: str) -> None:
    """The checks that need no data (spelling, the file), before any work."""
    if spec.strip() in (*OBJECTIVES, "mean"):
        return
    pairs = _weights_file(spec) if _is_file_spec(spec) else _inline_weights(spec)
    if any(v < 0 or not math.isfinite(v) for v in pairs.values()) or sum(pairs.values()) <= 0:
        raise ProposalError(f"--objective {spec!r}: weights must be finite, non-negative and not all zero")


def objective_fn(weights: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """Per-source bpb rows -> one objective value per row."""
    return lambda Y: np.asarray(Y) @ weights


def search(model: Model, objective: Callable[[np.ndarray], np.ndarray], bounds: np.ndarray, natural: np.ndarray,
           seed: int = 0, candidates: int = 20_000, refine_rounds: int = 30, keep: int = 16,
           average_top: int = 16) -> np.ndarray:
    """The feasible mix (shares summing to 1, each ≤ its bound) the fitted model predicts best: RegMix's
    average of the ``average_top`` best candidates after refinement (1: the single best). The average of
    feasible points is feasible (the bounds and the simplex are convex), and it is steadier than the
    single optimum, which is the fit's most optimistic point."""
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
    if average_top <= 1:
        return best_x
    final = np.vstack([best_x[None, :], top])
    final = final[np.argsort(objective(model.predict(final)))[:average_top]]
    return _project(final.mean(axis=0, keepdims=True), bounds)[0]


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
