"""The proposal's maths on synthetic laws with a known optimum: sampling bounds, fits, CV, search."""

from __future__ import annotations

import numpy as np
import pytest

from slimpipe.propose.fit import FAMILIES, bootstrap_predictions, choose, cross_validate, make_model, spearman
from slimpipe.propose.optimize import _project, objective_fn, parse_objective, round_shares, search
from slimpipe.propose.sample import ProposalError, draw_mixtures, natural_shares, upper_bounds

AVAIL = {"common_crawl": 600_000, "c4": 300_000, "github": 50_000, "wikipedia": 30_000, "book": 20_000}


def _law(X: np.ndarray) -> np.ndarray:
    """A per-source law in Data Mixing Laws' form: each source's loss falls with its own share, and
    github helps wikipedia a little (transfer)."""
    t = np.array([[-3.0, -0.5, 0.0, 0.0, 0.0],
                  [-0.5, -3.0, 0.0, 0.0, 0.0],
                  [0.0, 0.0, -4.0, 0.0, 0.0],
                  [0.0, 0.0, -1.0, -4.0, 0.0],
                  [0.0, 0.0, 0.0, 0.0, -2.0]])
    c = np.array([2.0, 2.2, 1.2, 2.1, 2.4])
    return c + np.exp(X @ t.T)


def test_draws_respect_the_epoch_bound_and_include_first():
    tokens = 200_000
    mixes = draw_mixtures(AVAIL, tokens, 40, max_epochs=1.0, seed=3, include=[natural_shares(AVAIL)])
    assert len(mixes) == 40
    assert mixes[0] == pytest.approx(natural_shares(AVAIL))
    bounds = upper_bounds(AVAIL, tokens, 1.0)
    for m in mixes:
        assert sum(m.values()) == pytest.approx(1.0)
        for s, v in m.items():
            assert v * tokens <= bounds[s] * tokens + 1e-6
            assert v * tokens <= AVAIL[s] * 1.0 + 1e-6
    assert draw_mixtures(AVAIL, tokens, 10, seed=3) == draw_mixtures(AVAIL, tokens, 10, seed=3)
    assert draw_mixtures(AVAIL, tokens, 10, seed=3) != draw_mixtures(AVAIL, tokens, 10, seed=4)


def test_infeasible_budget_is_refused_naming_sources():
    with pytest.raises(ProposalError, match="cannot be drawn with at most 1 epochs"):
        draw_mixtures(AVAIL, 10_000_000, 8, max_epochs=1.0)
    with pytest.raises(ProposalError, match="required mixture repeats book"):
        draw_mixtures(AVAIL, 200_000, 8, max_epochs=1.0, include=[{"book": 1.0}])


def test_cross_validation_prefers_the_true_law_and_ranks_well():
    mixes = draw_mixtures(AVAIL, 100_000, 48, max_epochs=50, seed=1)
    X = np.array([[m[s] for s in AVAIL] for m in mixes])
    rng = np.random.default_rng(0)
    Y = _law(X) + rng.normal(0, 0.005, (X.shape[0], 5))
    obj = objective_fn(np.full(5, 0.2))
    results = [cross_validate(f, X, Y, obj, seed=0) for f in FAMILIES]
    best = choose(results)
    assert best.family == "dml", [r.to_dict() for r in results]
    assert best.spearman > 0.9
    lin = next(r for r in results if r.family == "linear")
    assert best.rmse < lin.rmse


def test_search_finds_the_optimum_of_the_fitted_law():
    mixes = draw_mixtures(AVAIL, 100_000, 48, max_epochs=50, seed=2)
    X = np.array([[m[s] for s in AVAIL] for m in mixes])
    model = make_model("dml").fit(X, _law(X))
    obj = objective_fn(np.full(5, 0.2))
    bounds = np.array(list(upper_bounds(AVAIL, 100_000, 50).values()))
    nat = np.array(list(natural_shares(AVAIL).values()))
    best = search(model, obj, bounds, nat, seed=0, candidates=4000)
    assert best.sum() == pytest.approx(1.0) and (best <= bounds + 1e-9).all()
    # brute force on a large independent sample of the true law: the search must be at least as good
    brute = np.random.default_rng(9).dirichlet(np.ones(5), 100_000)
    assert obj(_law(best[None]))[0] <= obj(_law(brute)).min() + 2e-3
    assert obj(_law(best[None]))[0] < obj(_law(nat[None]))[0]


def test_search_honours_tight_bounds():
    mixes = draw_mixtures(AVAIL, 100_000, 30, max_epochs=50, seed=2)
    X = np.array([[m[s] for s in AVAIL] for m in mixes])
    model = make_model("linear").fit(X, _law(X))
    bounds = np.array(list(upper_bounds(AVAIL, 500_000, 1.0).values()))  # book ≤ 4 %, wikipedia ≤ 6 %
    nat = np.array(list(natural_shares(AVAIL).values()))
    best = search(model, objective_fn(np.full(5, 0.2)), bounds, nat, candidates=2000)
    assert (best <= bounds + 1e-9).all() and best.sum() == pytest.approx(1.0)


def test_projection_and_rounding():
    P = _project(np.array([[0.9, 0.05, 0.05], [0.2, 0.2, 0.6]]), np.array([0.5, 0.6, 0.6]))
    assert P.sum(axis=1) == pytest.approx([1, 1])
    assert (P <= np.array([0.5, 0.6, 0.6]) + 1e-9).all()
    r = round_shares({"a": 1 / 3, "b": 1 / 3, "c": 1 / 3})
    assert sum(r.values()) == pytest.approx(100.0) and max(r.values()) - min(r.values()) <= 1e-4 + 1e-12


def test_objectives():
    targets = ["a", "b"]
    assert parse_objective("mean", targets, {})[1] == pytest.approx([0.5, 0.5])
    assert parse_objective("total", targets, {"a": 300, "b": 100})[1] == pytest.approx([0.75, 0.25])
    assert parse_objective("b=1", targets, {})[1] == pytest.approx([0, 1])
    with pytest.raises(ProposalError):
        parse_objective("zzz=1", targets, {})
    with pytest.raises(ProposalError):
        parse_objective("total", targets, {})


def test_bootstrap_interval_covers_the_truth():
    mixes = draw_mixtures(AVAIL, 100_000, 40, max_epochs=50, seed=5)
    X = np.array([[m[s] for s in AVAIL] for m in mixes])
    rng = np.random.default_rng(1)
    Y = _law(X) + rng.normal(0, 0.01, (X.shape[0], 5))
    at = np.array([list(natural_shares(AVAIL).values())])
    boot = bootstrap_predictions("linear", X, Y, at, n_boot=60)
    lo, hi = np.percentile(boot[:, 0, :], [2.5, 97.5], axis=0)
    assert (hi > lo).all()
    assert spearman(np.arange(5.0), np.arange(5.0) ** 2) == pytest.approx(1.0)
