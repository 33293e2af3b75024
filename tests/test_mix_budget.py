"""Token budgets: exact apportionment, epochs and upsampling, per-shard quotas, exact document selection."""

from __future__ import annotations

import numpy as np
import pytest

from slimpipe.mix import budget as B
from slimpipe.mix.config import load_mix


@pytest.mark.parametrize(("text", "value"), [
    ("330B", 330_000_000_000), ("5M", 5_000_000), ("2.5k", 2_500), ("1e6", 1_000_000), ("1_000_000", 1_000_000),
    ("1,000", 1_000), ("12", 12), ("1.5T", 1_500_000_000_000), (" 7m ", 7_000_000), (4096, 4096),
])
def test_parse_token_count(text, value):
    assert B.parse_token_count(text) == value


@pytest.mark.parametrize("bad", ["", "0", "-5M", "lots", "1.5", "5X", "nan", "inf", True])
def test_parse_token_count_rejects(bad):
    with pytest.raises(ValueError):
        B.parse_token_count(bad)


def test_apportion_is_exact_proportional_and_deterministic():
    assert B.apportion(10, [1, 1, 1]) == [4, 3, 3]  # tie -> earlier index
    assert B.apportion(7, [0, 2, 5]) == [0, 2, 5]
    assert B.apportion(0, [1, 2]) == [0, 0]
    rng = np.random.default_rng(0)
    for _ in range(200):
        w = rng.integers(0, 1000, size=int(rng.integers(1, 12))).tolist()
        if sum(w) == 0:
            continue
        total = int(rng.integers(0, sum(w) + 1))
        parts = B.apportion(total, w)
        assert sum(parts) == total
        assert all(0 <= p <= x for p, x in zip(parts, w, strict=True))  # never more than a shard holds
        assert all(abs(p - total * x / sum(w)) < 1 for p, x in zip(parts, w, strict=True))
    with pytest.raises(ValueError):
        B.apportion(5, [0, 0])


def test_paper_budget_splits_exactly():
    dc6 = load_mix("dc6")
    targets = B.source_targets(330_000_000_000, dc6.shares)
    assert sum(targets.values()) == 330_000_000_000
    assert targets["common_crawl"] == 172_260_000_000
    assert targets["stackexchange"] == 10_890_000_000
    dc5 = B.source_targets(10**9, load_mix("dc5").shares)
    assert sum(dc5.values()) == 10**9 and dc5["c4"] == 0


def test_plan_without_and_with_upsampling():
    shares = {"common_crawl": 0.75, "github": 0.25}
    plans = B.plan_sources(shares, {"common_crawl": 1000, "github": 100}, 400)
    cc, gh = plans["common_crawl"], plans["github"]
    assert (cc.target, cc.full_epochs, cc.remainder, cc.upsampled) == (300, 0, 300, False)
    assert cc.epochs == pytest.approx(0.3)
    # github needs 100 of 100: exactly one pass, no repetition
    assert (gh.target, gh.full_epochs, gh.remainder, gh.upsampled) == (100, 0, 100, False)

    plans = B.plan_sources(shares, {"common_crawl": 1000, "github": 40}, 400)
    gh = plans["github"]
    assert gh.upsampled and gh.full_epochs == 2 and gh.remainder == 20
    assert gh.epochs == pytest.approx(2.5)
    assert gh.to_dict()["partial_epoch"] == pytest.approx(0.5)
    assert gh.full_epochs * gh.available + gh.remainder == gh.target


def test_plan_errors_name_the_missing_source():
    with pytest.raises(B.BudgetError, match=r"stackexchange \(3\.3%\)"):
        B.plan_sources(load_mix("dc6").shares, {"common_crawl": 10**6, "c4": 10**6, "github": 10**6, "book": 10**6,
                                                "arxiv": 10**6, "wikipedia": 10**6}, 10**5)
    with pytest.raises(B.BudgetError):
        B.plan_sources({"c4": 1.0}, {"c4": 10}, 0)


def test_minimal_prefix():
    per = [{"a": 5, "b": 0}, {"a": 5, "b": 3}, {"a": 1, "b": 9}]
    assert B.minimal_prefix(per, {"a": 5, "b": 0}) == 1
    assert B.minimal_prefix(per, {"a": 10, "b": 3}) == 2
    assert B.minimal_prefix(per, {"a": 11, "b": 12}) == 3
    assert B.minimal_prefix(per, {"a": 12}) is None
    assert B.minimal_prefix(per, {"a": 0}) == 0


def test_shard_quotas_sum_to_the_remainder_and_fit_each_shard():
    rng = np.random.default_rng(1)
    per = [{"a": int(x), "b": int(y)} for x, y in rng.integers(0, 500, size=(30, 2))]
    avail = {s: sum(p[s] for p in per) for s in "ab"}
    plans = B.plan_sources({"a": 0.6, "b": 0.4}, avail, int(0.7 * avail["a"] / 0.6))
    quotas = B.shard_quotas(plans, per)
    for s in "ab":
        assert sum(q.get(s, 0) for q in quotas) == plans[s].remainder
        assert all(q.get(s, 0) <= p[s] for q, p in zip(quotas, per, strict=True))


def test_select_documents_fills_the_quota_exactly():
    costs = np.array([10, 20, 30, 40])
    order = np.array([2, 0, 3, 1])
    taken, piece = B.select_documents(costs, order, 55)  # 30 + 10 = 40, then 15 of doc 3
    assert taken.tolist() == [2, 0] and piece == 15
    taken, piece = B.select_documents(costs, order, 40)  # exact fit, no piece
    assert taken.tolist() == [2, 0] and piece == 0
    taken, piece = B.select_documents(costs, order, 41)  # a single token left cannot hold token + EOS
    assert taken.tolist() == [2, 0] and piece == 0
    taken, piece = B.select_documents(costs, order, 1000)  # more than everything: all, no piece
    assert sorted(taken.tolist()) == [0, 1, 2, 3] and piece == 0
    assert B.select_documents(costs, order, 0)[0].size == 0


def test_realised_shares_and_tolerance():
    target = {"a": 0.5, "b": 0.5, "c": 0.0}
    realised = B.realised_shares({"a": 504, "b": 496, "c": 0})
    assert realised == {"a": 0.504, "b": 0.496, "c": 0.0}
    errors = B.share_errors_pp(target, realised)
    assert errors["a"] == pytest.approx(0.4) and errors["b"] == pytest.approx(-0.4)
    assert B.within_tolerance(target, realised)
    assert not B.within_tolerance(target, B.realised_shares({"a": 506, "b": 494, "c": 0}))


def test_attribute_dropped_takes_the_tail_back_newest_first():
    assert B.attribute_dropped(["a", "b", "c"], [5, 3, 2], 4) == {"c": 2, "b": 2}
    assert B.attribute_dropped(["a"], [5], 0) == {}
    with pytest.raises(ValueError):
        B.attribute_dropped(["a"], [5], 6)


def test_estimate_available():
    assert B.estimate_available(100, 50, 200) == 400
    assert B.estimate_available(100, 0, 200) == 100
