"""Regressions from mixture weights to per-source bits per byte, and how to choose between them.

Three families, each fitted per evaluated source (one target column of ``Y``):

* ``dml`` — Data Mixing Laws (Ye et al. 2024): ``L_i(r) = c_i + k_i · exp(Σ_j t_ij r_j)``, fitted by
  non-linear least squares from several starts.
* ``linear`` — RegMix's linear regression on the weights (ridge, so the simplex's collinearity is harmless).
* ``gbm`` — RegMix's gradient-boosted trees (scikit-learn's ``GradientBoostingRegressor``).

:func:`cross_validate` scores each family by K-fold prediction of held-out proxies: the rank correlation
(Spearman) between predicted and observed objective over all held-out proxies, and the RMSE of the
per-source predictions. :func:`choose` takes the best rank correlation (RMSE breaks ties). Everything is
deterministic for a seed.
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
    """``c + exp(logk) · exp(X @ t)`` per target; the multiplicative form keeps ``k`` positive."""

    family = "dml"

    def __init__(self, starts: int = 4, seed: int = 0) -> None:
        self.starts, self.seed = starts, seed

    @staticmethod
    def _f(p: np.ndarray, X: np.ndarray) -> np.ndarray:
        return p[0] + np.exp(np.clip(p[1] + X @ p[2:], -50, 50))

    def fit(self, X: np.ndarray, Y: np.ndarray) -> MixingLawModel:
        from scipy.optimize import least_squares

        rng = np.random.default_rng(self.seed)
        self.params_ = []
        for i in range(Y.shape[1]):
            y = Y[:, i]
            best = None
            for s in range(self.starts):
                c0 = float(y.min()) - (0.1 if s == 0 else rng.uniform(0.05, 1.0)) * max(float(np.ptp(y)), 1e-3)
                p0 = np.concatenate([[c0, math.log(max(float(y.mean()) - c0, 1e-6))],
                                     rng.normal(0.0, 0.5 if s else 0.0, X.shape[1])])
                try:
                    r = least_squares(lambda p, y=y: self._f(p, X) - y, p0, method="trf",
                                      x_scale="jac", max_nfev=400 * (X.shape[1] + 2))
                except (ValueError, FloatingPointError):
                    continue
                if best is None or r.cost < best.cost:
                    best = r
            if best is None:  # every start failed: a constant, so prediction stays defined
                self.params_.append(np.concatenate([[float(y.mean()), -50.0], np.zeros(X.shape[1])]))
            else:
                self.params_.append(best.x)
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        return np.column_stack([self._f(p, X) for p in self.params_])


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


@dataclass
class CVResult:
    family: str
    spearman: float  # predicted vs observed objective, over every held-out proxy
    rmse: float  # per-source bpb, held-out
    predicted: np.ndarray  # held-out objective predictions, one per proxy
    observed: np.ndarray

    def to_dict(self) -> dict:
        return {"family": self.family, "spearman": self.spearman, "rmse": self.rmse}


def cross_validate(family: str, X: np.ndarray, Y: np.ndarray, objective: Callable[[np.ndarray], np.ndarray],
                   folds: int = 5, seed: int = 0) -> CVResult:
    """K-fold (leave-one-out when there are fewer proxies than ``2 * folds``) held-out prediction."""
    n = X.shape[0]
    k = n if n < 2 * folds else folds
    order = np.random.default_rng(seed).permutation(n)
    pred = np.empty_like(Y)
    for f in range(k):
        test = order[f::k]
        train = np.setdiff1d(order, test)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = make_model(family, seed).fit(X[train], Y[train])
        pred[test] = model.predict(X[test])
    po, oo = objective(pred), objective(Y)
    return CVResult(family, spearman(po, oo), float(np.sqrt(np.mean((pred - Y) ** 2))), po, oo)


def choose(results: list[CVResult]) -> CVResult:
    """Best held-out rank correlation; RMSE breaks ties; a NaN correlation ranks last."""
    return min(results, key=lambda r: (-(r.spearman if math.isfinite(r.spearman) else -2.0), r.rmse))


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
    return out
