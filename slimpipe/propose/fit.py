"""Regressions from mixture weights to per-source bits per byte, and how to choose between them.

Three families, each fitted per evaluated source (one target column of ``Y``):

* ``dml`` — Data Mixing Laws (Ye et al. 2024): ``L_i(r) = c_i + k_i · exp(Σ_j t_ij r_j)``, fitted by
  non-linear least squares from several starts.
* ``linear`` — RegMix's linear regression on the weights (ridge, so the simplex's collinearity is harmless).
* ``gbm`` — RegMix's gradient-boosted trees (scikit-learn's ``GradientBoostingRegressor``).

:func:`cross_validate` scores each family by K-fold prediction of held-out proxies: the rank correlation
(Spearman, with a Fisher-z interval) between predicted and observed objective over all held-out proxies,
and the RMSE of the per-source and objective predictions. :func:`choose` takes the best rank correlation
(RMSE breaks ties); :func:`nested_cross_validate` measures that whole choice on proxies it did not see;
:func:`judge` says whether the fit predicts at all (a fit that does not is no basis for a proposal).
Everything is deterministic for a seed.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

FAMILIES = ("dml", "linear", "gbm")


class Model:
    """Fitted per-target regressors; ``predict(X)`` gives one column per target."""

    family = "base"

    def fit(self, X: np.ndarray, Y: np.ndarray) -> Model:  # pragma: no cover - interface
        raise NotImplementedError

    def predict(self, X: np.ndarray) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError


class LinearModel(Model):
    family = "linear"

    def __init__(self, alpha: float = 1e-3) -> None:
        self.alpha = alpha

    def fit(self, X: np.ndarray, Y: np.ndarray) -> LinearModel:
        A = np.hstack([np.ones((X.shape[0], 1)), X])
        reg = self.alpha * np.eye(A.shape[1])
        reg[0, 0] = 0.0
        self.coef_ = np.linalg.solve(A.T @ A + reg, A.T @ Y)
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        return np.hstack([np.ones((X.shape[0], 1)), X]) @ self.coef_


class MixingLawModel(Model):
    """``c + exp(logk + X @ t)`` per target; the multiplicative form keeps ``k`` positive.

    It cannot overflow: the exponent is clipped to ``[-60, cap]`` where ``cap = log(10 * (max |y| + 1))``,
    so the exponential term never exceeds ten times the largest loss it was fitted on, and the
    least-squares search is bounded (``|t| <= 100``, ``c`` within a few spreads of the data)."""

    family = "dml"

    def __init__(self, starts: int = 4, seed: int = 0) -> None:
        self.starts, self.seed = starts, seed

    @staticmethod
    def _f(p: np.ndarray, X: np.ndarray, cap: float = 50.0) -> np.ndarray:
        with np.errstate(over="ignore", invalid="ignore"):
            return p[0] + np.exp(np.clip(p[1] + X @ p[2:], -60.0, cap))

    @staticmethod
    def _jac(p: np.ndarray, X: np.ndarray, cap: float = 50.0) -> np.ndarray:
        e = p[1] + X @ p[2:]
        with np.errstate(over="ignore", invalid="ignore"):
            g = np.where((e > -60.0) & (e < cap), np.exp(np.clip(e, -60.0, cap)), 0.0)
        return np.column_stack([np.ones(X.shape[0]), g, g[:, None] * X])

    def fit(self, X: np.ndarray, Y: np.ndarray) -> MixingLawModel:
        from scipy.optimize import least_squares

        rng = np.random.default_rng(self.seed)
        self.params_, self.caps_ = [], []
        for i in range(Y.shape[1]):
            y = Y[:, i]
            span = max(float(np.ptp(y)), 1e-3)
            cap = math.log(10.0 * (float(np.max(np.abs(y))) + 1.0))
            lo = np.concatenate([[float(y.min()) - 10.0 * span - 10.0, -60.0], np.full(X.shape[1], -100.0)])
            hi = np.concatenate([[float(y.max()), cap], np.full(X.shape[1], 100.0)])
            best = None
            for s in range(self.starts):
                c0 = float(y.min()) - (0.1 if s == 0 else rng.uniform(0.05, 1.0)) * span
                p0 = np.concatenate([[c0, math.log(max(float(y.mean()) - c0, 1e-6))],
                                     rng.normal(0.0, 0.5 if s else 0.0, X.shape[1])])
                p0 = np.clip(p0, lo + 1e-9, hi - 1e-9)
                try:
                    r = least_squares(lambda p, y=y, cap=cap: self._f(p, X, cap) - y, p0, method="trf",
                                      jac=lambda p, y=y, cap=cap: self._jac(p, X, cap),
                                      bounds=(lo, hi), x_scale="jac", ftol=1e-7, xtol=1e-7,
                                      max_nfev=40 * (X.shape[1] + 2))
                except (ValueError, FloatingPointError):
                    continue
                if np.isfinite(r.cost) and (best is None or r.cost < best.cost):
                    best = r
            if best is None:  # every start failed: a constant, so prediction stays defined
                self.params_.append(np.concatenate([[float(y.mean()), -60.0], np.zeros(X.shape[1])]))
            else:
                self.params_.append(best.x)
            self.caps_.append(cap)
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        return np.column_stack([self._f(p, X, c) for p, c in zip(self.params_, self.caps_, strict=True)])


class BoostedModel(Model):
    family = "gbm"

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def fit(self, X: np.ndarray, Y: np.ndarray) -> BoostedModel:
        from sklearn.ensemble import GradientBoostingRegressor

        n = X.shape[0]
        self.models_ = [GradientBoostingRegressor(n_estimators=200, max_depth=2, learning_rate=0.05,
                                                  subsample=0.8 if n >= 10 else 1.0,
                                                  min_samples_leaf=max(1, min(3, n // 6)),
                                                  random_state=self.seed).fit(X, Y[:, i])
                        for i in range(Y.shape[1])]
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        return np.column_stack([m.predict(X) for m in self.models_])


def make_model(family: str, seed: int = 0) -> Model:
    if family == "dml":
        return MixingLawModel(seed=seed)
    if family == "linear":
        return LinearModel()
    if family == "gbm":
        return BoostedModel(seed=seed)
    raise ValueError(f"unknown model family {family!r}; expected one of {', '.join(FAMILIES)}")


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation (average ranks for ties); NaN when either side is constant."""
    from scipy.stats import spearmanr

    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(spearmanr(a, b).statistic)


def spearman_ci(rho: float, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Interval of a Spearman correlation over ``n`` pairs: Fisher's z with the standard error
    ``sqrt(1.06 / (n - 3))`` of Fieller, Hartley & Pearson (1957); NaN below 4 pairs or for a NaN rho."""
    from scipy.stats import norm

    if not math.isfinite(rho) or n < 4:
        return float("nan"), float("nan")
    z = math.atanh(max(-0.9999, min(0.9999, rho)))
    h = float(norm.ppf(0.5 + confidence / 2)) * math.sqrt(1.06 / (n - 3))
    return math.tanh(z - h), math.tanh(z + h)


@dataclass
class CVResult:
    family: str
    spearman: float  # predicted vs observed objective, over every held-out proxy
    rmse: float  # per-source bpb, held-out
    predicted: np.ndarray  # held-out objective predictions, one per proxy
    observed: np.ndarray
    picked: list[str] | None = None  # nested CV: the family each outer fold's inner CV chose

    @property
    def spearman_ci95(self) -> tuple[float, float]:
        return spearman_ci(self.spearman, len(self.observed))

    @property
    def rmse_objective(self) -> float:
        """Held-out error of the objective itself (what the search minimises)."""
        d = np.asarray(self.predicted, dtype=np.float64) - np.asarray(self.observed, dtype=np.float64)
        return float(np.sqrt(np.mean(d ** 2))) if np.isfinite(d).all() else float("inf")

    def to_dict(self) -> dict:
        out = {"family": self.family, "spearman": self.spearman, "spearman_ci95": list(self.spearman_ci95),
               "rmse": self.rmse, "rmse_objective": self.rmse_objective}
        if self.picked is not None:
            out["picked"] = self.picked
        return out


def _folds(n: int, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    k = n if n < 2 * folds else folds
    order = np.random.default_rng(seed).permutation(n)
    return [(np.setdiff1d(order, order[f::k]), order[f::k]) for f in range(k)]


def _safe(Y: np.ndarray) -> np.ndarray:
    """Predictions with every non-finite value as NaN (then the family's correlation is undefined)."""
    return np.where(np.isfinite(Y), Y, np.nan)


def cross_validate(family: str, X: np.ndarray, Y: np.ndarray, objective: Callable[[np.ndarray], np.ndarray],
                   folds: int = 5, seed: int = 0) -> CVResult:
    """K-fold (leave-one-out when there are fewer proxies than ``2 * folds``) held-out prediction."""
    pred = np.empty_like(Y, dtype=np.float64)
    for train, test in _folds(X.shape[0], folds, seed):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = make_model(family, seed).fit(X[train], Y[train])
        pred[test] = _safe(model.predict(X[test]))
    return _result(family, pred, Y, objective)


def _result(family: str, pred: np.ndarray, Y: np.ndarray, objective: Callable[[np.ndarray], np.ndarray],
            picked: list[str] | None = None) -> CVResult:
    po, oo = objective(pred), objective(Y)
    if not np.isfinite(pred).all():
        return CVResult(family, float("nan"), float("inf"), po, oo, picked)
    return CVResult(family, spearman(po, oo), float(np.sqrt(np.mean((pred - Y) ** 2))), po, oo, picked)


def nested_cross_validate(families: tuple[str, ...] | list[str], X: np.ndarray, Y: np.ndarray,
                          objective: Callable[[np.ndarray], np.ndarray], folds: int = 5, seed: int = 0) -> CVResult:
    """Held-out performance of the whole procedure "choose a family by cross-validation, then fit it":
    each outer fold's family is chosen by an inner cross-validation on that fold's training proxies
    only, so the held-out proxies take no part in the choice (the estimate is not the best of several
    families scored on the same folds)."""
    pred = np.empty_like(Y, dtype=np.float64)
    picked = []
    for train, test in _folds(X.shape[0], folds, seed):
        inner = [cross_validate(f, X[train], Y[train], objective, folds=folds, seed=seed + 1) for f in families]
        fam = choose(inner).family
        picked.append(fam)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pred[test] = _safe(make_model(fam, seed).fit(X[train], Y[train]).predict(X[test]))
    return _result("nested", pred, Y, objective, picked)


def choose(results: list[CVResult]) -> CVResult:
    """Best held-out rank correlation; RMSE breaks ties; a NaN correlation ranks last."""
    return min(results, key=lambda r: (-(r.spearman if math.isfinite(r.spearman) else -2.0), r.rmse))


def spread(observed: np.ndarray) -> float:
    """The spread of the proxies' own results: the standard deviation of their observed objective."""
    o = np.asarray(observed, dtype=np.float64)
    return float(np.std(o, ddof=1)) if o.size > 1 else 0.0


def judge(cv: list[CVResult], nested: CVResult) -> tuple[list[CVResult], list[str]]:
    """The families that predict, and why the fit as a whole does not (empty when it does).

    A family is rejected when its held-out rank correlation's 95% interval does not lie above 0, or its
    held-out error of the objective is larger than the spread of the proxies' own results (it predicts
    no better than their mean). The fit predicts when some family passes and the nested estimate of the
    whole procedure passes too."""
    sd = spread(cv[0].observed) if cv else 0.0
    passing, why = [], []
    for r in cv:
        lo, hi = r.spearman_ci95
        if not (math.isfinite(lo) and lo > 0):
            why.append(f"{r.family}: held-out Spearman {r.spearman:.3f}, 95% interval [{lo:.2f}, {hi:.2f}] not above 0")
        elif not r.rmse_objective <= sd:
            why.append(f"{r.family}: held-out error {r.rmse_objective:.3g} bpb exceeds the proxies' spread {sd:.3g}")
        else:
            passing.append(r)
    lo, hi = nested.spearman_ci95
    nested_ok = math.isfinite(lo) and lo > 0 and nested.rmse_objective <= sd
    if passing and not nested_ok:
        why.append(f"nested cross-validation (family chosen inside each fold): Spearman {nested.spearman:.3f}, "
                   f"95% interval [{lo:.2f}, {hi:.2f}], error {nested.rmse_objective:.3g} vs spread {sd:.3g}")
        passing = []
    return passing, ([] if passing else why)


def bootstrap_predictions(family: str, X: np.ndarray, Y: np.ndarray, at: np.ndarray, n_boot: int = 100,
                          seed: int = 0) -> np.ndarray:
    """Refit on proxies resampled with replacement; returns ``(n_boot, len(at), targets)`` predictions."""
    rng = np.random.default_rng([seed, 7])
    n = X.shape[0]
    out = np.empty((n_boot, at.shape[0], Y.shape[1]))
    for b in range(n_boot):
        idx = rng.integers(0, n, n)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out[b] = make_model(family, seed + b).fit(X[idx], Y[idx]).predict(at)
    out[~np.isfinite(out)] = np.inf  # an undefined prediction makes its interval unbounded
    return out
