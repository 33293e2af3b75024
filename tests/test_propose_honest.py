"""propose judged honestly (#18.5): the selection/confirmation split, the declared objective, the refusal of
a fit that does not predict, fits that cannot overflow, and what report.json / proposed.yaml / the report
say — on synthetic data, through the real fit, search, statistics and report code (no Ray, no training)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import yaml

from slimpipe.mix.config import load_mix
from slimpipe.propose import halves as H
from slimpipe.propose.fit import (
    CVResult,
    cross_validate,
    judge,
    make_model,
    nested_cross_validate,
    spearman_ci,
)
from slimpipe.propose.job import _write_report_json, _write_yaml
from slimpipe.propose.optimize import check_objective_spec, objective_fn, parse_objective, search
from slimpipe.propose.report import headline_lines, write_report
from slimpipe.propose.sample import ProposalError, draw_mixtures
from slimpipe.report.stats import difference

AVAIL = {"common_crawl": 600_000, "c4": 300_000, "github": 50_000, "wikipedia": 30_000, "book": 20_000}


def _law(X: np.ndarray) -> np.ndarray:
    t = np.array([[-3.0, -0.5, 0, 0, 0], [-0.5, -3.0, 0, 0, 0], [0, 0, -4.0, 0, 0], [0, 0, -1.0, -4.0, 0],
                  [0, 0, 0, 0, -2.0]])
    return np.array([2.0, 2.2, 1.2, 2.1, 2.4]) + np.exp(X @ t.T)


def _X(n: int, seed: int) -> np.ndarray:
    return np.array([[m[s] for s in AVAIL] for m in draw_mixtures(AVAIL, 100_000, n, max_epochs=50, seed=seed)])


# ------------------------------------------------------------------------------------------ the split

def test_split_is_disjoint_stable_and_by_id_hash():
    ids = {"wiki": [f"wiki/{i}" for i in range(400)], "c4": [f"c4/{i}" for i in range(300)]}
    sp = H.Split(ids)
    for s in ids:
        sel, conf = sp.mask(s, H.SELECTION), sp.mask(s, H.CONFIRMATION)
        assert not (sel & conf).any() and (sel | conf).all()  # disjoint, and every document in one half
        assert 0.4 < sel.mean() < 0.6
    # a document's half depends on its id only: not on its position, the other documents or the run
    shuffled = H.Split({"wiki": ids["wiki"][::-1][:50], "c4": ids["c4"]})
    assert [H.half_of(i) for i in shuffled.ids["wiki"]] == [H.half_of(i) for i in ids["wiki"][::-1][:50]]
    assert H.Split({"c4": ids["c4"][::-1], "wiki": ids["wiki"]}).selection_set == sp.selection_set
    assert sp.selection_set != sp.confirmation_set and len(sp.confirmation_set) == 64
    # the halves' identities are content hashes: one more document changes exactly the half it falls in
    more = H.Split({**ids, "wiki": ids["wiki"] + ["wiki/new"]})
    changed = H.SELECTION if H.half_of("wiki/new") == H.SELECTION else H.CONFIRMATION
    assert (more.selection_set != sp.selection_set) == (changed == H.SELECTION)
    assert (more.confirmation_set != sp.confirmation_set) == (changed == H.CONFIRMATION)
    # pieces of one document (the same id) are never split between the halves
    assert len({H.half_of("arxiv/7") for _ in range(3)}) == 1


def test_half_losses_refuses_documents_that_do_not_line_up_and_usable_names_one_sided_sources():
    sp = H.Split({"a": [f"a{i}" for i in range(20)], "b": ["only-one"]})
    per_doc = {"a": {"nll": np.ones(20), "tokens": np.ones(20), "bytes": np.full(20, 4)}}
    sel = H.half_losses(per_doc, sp, H.SELECTION, ["a"])
    conf = H.half_losses(per_doc, sp, H.CONFIRMATION, ["a"])
    assert sel["a"]["nll"].size + conf["a"]["nll"].size == 20
    with pytest.raises(ProposalError, match="scored 19 documents, the split has 20"):
        H.half_losses({"a": {k: v[:19] for k, v in per_doc["a"].items()}}, sp, H.SELECTION, ["a"])
    ok, why = sp.usable()
    assert ok == ["a"] and "needs both halves" in why["b"]


def test_weighted_row_makes_stats_mean_the_declared_objective():
    rng = np.random.default_rng(0)
    n = {"a": 40, "b": 60}
    by = {s: rng.integers(200, 900, k) for s, k in n.items()}
    run = lambda scale: {s: {"nll": scale[s] * by[s] * rng.uniform(0.9, 1.1, k), "bytes": by[s]}  # noqa: E731
                         for s, k in n.items()}
    A = [run({"a": 1.0, "b": 2.0}) for _ in range(3)]
    B = [run({"a": 1.2, "b": 1.8}) for _ in range(3)]
    w = {"a": 0.8, "b": 0.2}
    d = difference(H.weighted_row([0, 1, 2], A, w), H.weighted_row([0, 1, 2], B, w), replicates=300, seed=1)
    want = np.mean([sum(w[s] * (H.bpb(a)[s] - H.bpb(b)[s]) for s in w) for a, b in zip(A, B, strict=True)])
    assert d["columns"]["mean"]["diff"] == pytest.approx(want, rel=1e-9)
    lo, hi = d["columns"]["mean"]["ci95"]
    assert lo <= want <= hi


# ------------------------------------------------------------------------------------- objectives

def test_objective_variants(tmp_path):
    targets = ["a", "b", "c"]
    nat = {"a": 0.7, "b": 0.2, "c": 0.1, "other": 5.0}
    desc, w = parse_objective("natural", targets, {}, nat)
    assert w == pytest.approx([0.7, 0.2, 0.1]) and desc.startswith("natural")
    assert parse_objective("uniform", targets, {}, nat)[1] == pytest.approx([1 / 3] * 3)
    assert parse_objective("mean", targets, {}, nat)[1] == pytest.approx([1 / 3] * 3)  # the old name
    assert parse_objective("total", targets, {"a": 1, "b": 1, "c": 2})[1] == pytest.approx([0.25, 0.25, 0.5])
    (tmp_path / "w.yaml").write_text("a: 3\nc: 1\n")
    (tmp_path / "w.json").write_text(json.dumps({"weights": {"b": 2, "c": 2}}))
    assert parse_objective(str(tmp_path / "w.yaml"), targets, {})[1] == pytest.approx([0.75, 0, 0.25])
    assert parse_objective(str(tmp_path / "w.json"), targets, {})[1] == pytest.approx([0, 0.5, 0.5])
    assert parse_objective("b=1", targets, {})[1] == pytest.approx([0, 1, 0])
    for bad, msg in [(str(tmp_path / "missing.yaml"), "cannot read"), ("a=x", "not a number"),
                     ("a=-1", "non-negative")]:
        with pytest.raises(ProposalError, match=msg):
            check_objective_spec(bad)
    (tmp_path / "bad.yaml").write_text("a: [1\n")
    with pytest.raises(ProposalError, match="not valid YAML"):
        check_objective_spec(str(tmp_path / "bad.yaml"))
    with pytest.raises(ProposalError, match="zzz not among the evaluated sources"):
        parse_objective("zzz=1", targets, {})


# -------------------------------------------------------------------------------- fits that predict

def test_spearman_interval_matches_fisher_z():
    lo, hi = spearman_ci(0.636, 12)
    assert 0.0 < lo < 0.12 and 0.85 < hi < 0.92
    assert all(math.isnan(v) for v in spearman_ci(0.9, 3))


def test_dml_cannot_overflow_on_an_adversarial_fit():
    rng = np.random.default_rng(3)
    X = rng.dirichlet(np.full(5, 0.05), 12)  # corners of the simplex
    Y = np.exp(rng.uniform(0, 40, (12, 2)))  # losses spanning 17 orders of magnitude
    Y[0] = 1e-300
    with np.errstate(over="raise", invalid="raise"):
        m = make_model("dml", 0).fit(X, Y)
        far = np.vstack([X, 50 * X, -50 * X, np.eye(5) * 1e3])
        P = m.predict(far)
    assert np.isfinite(P).all()
    assert (P <= Y.max(axis=0) + 10 * (np.abs(Y).max(axis=0) + 1) + 1e-6 * np.abs(Y).max(axis=0)).all()
    r = cross_validate("dml", X, Y, objective_fn(np.array([0.5, 0.5])), seed=0)
    assert math.isfinite(r.rmse) and np.isfinite(r.predicted).all()


def test_a_fit_of_noise_is_refused_and_a_true_law_is_not():
    X = _X(16, 1)
    obj = objective_fn(np.full(5, 0.2))
    noise = np.random.default_rng(0).normal(2.0, 0.05, (16, 5))
    cv = [cross_validate("linear", X, noise, obj, seed=0)]
    passing, why = judge(cv, nested_cross_validate(("linear",), X, noise, obj, seed=0))
    assert passing == [] and why
    Y = _law(X) + np.random.default_rng(1).normal(0, 0.003, (16, 5))
    cv = [cross_validate("linear", X, Y, obj, seed=0)]
    nested = nested_cross_validate(("linear",), X, Y, obj, seed=0)
    passing, why = judge(cv, nested)
    assert passing and not why and nested.spearman_ci95[0] > 0 and len(nested.picked) == 5


def test_a_fit_whose_error_exceeds_the_proxies_spread_is_rejected():
    obs = np.array([2.00, 2.01, 2.02, 2.03, 2.04, 2.05, 2.06, 2.07])
    ranked_but_wrong = CVResult("dml", 1.0, 5e20, obs * 1e3, obs)  # perfect ranks, absurd values
    good = CVResult("linear", 1.0, 0.001, obs + 0.001, obs)
    passing, why = judge([ranked_but_wrong], good)
    assert passing == [] and "exceeds the proxies' spread" in why[0]
    passing, why = judge([ranked_but_wrong, good], good)
    assert [r.family for r in passing] == ["linear"] and not why


def test_search_averages_the_top_candidates_inside_the_bounds():
    X = _X(40, 2)
    model = make_model("dml").fit(X, _law(X))
    obj = objective_fn(np.full(5, 0.2))
    bounds = np.array([0.9, 0.9, 0.3, 0.3, 0.3])
    nat = np.array([0.6, 0.3, 0.05, 0.03, 0.02])
    one = search(model, obj, bounds, nat, candidates=2000, average_top=1)
    avg = search(model, obj, bounds, nat, candidates=2000, average_top=8)
    for x in (one, avg):
        assert x.sum() == pytest.approx(1.0) and (x <= bounds + 1e-9).all()
    assert not np.allclose(one, avg)
    assert obj(model.predict(avg[None]))[0] <= obj(model.predict(nat[None]))[0]


# ---------------------------------------------------------- what a refusal writes (report, yaml, json)

def _proposal(status: str) -> dict:
    sources = ["c4", "wikipedia"]
    obs = [2.0, 2.1, 1.9, 2.05]
    px = [{"name": f"p{i:03d}", "shares": {"c4": 1 - i / 10, "wikipedia": i / 10}, "point": {}, "ok": True,
           "reused": False, "mix": "m", "run": "r", "bpb": {"c4": o, "wikipedia": o}, "objective": o, "error": None}
          for i, o in enumerate(obs)]
    cv = CVResult("dml", 0.2, 0.3, np.array([2.0, 1.9, 2.2, 2.1]), np.array(obs))
    cmp = {"diff": -0.01, "ci95": [-0.03, 0.01], "seeds": 2, "same_runs": False}
    return {
        "status": status, "why_not_predicting": ["dml: held-out Spearman 0.200, 95% interval [-0.93, 0.97] not above 0"]
        if status != "proposed" else [], "best_proxy": "p002", "sources": sources, "targets": sources,
        "left_out": {}, "objective": {"spec": "natural", "description": "natural: weighted (c4 80%, wikipedia 20%)",
                                      "weights": {"c4": 0.8, "wikipedia": 0.2}},
        "split": {"method": H.METHOD, "selection_set": "a" * 64, "confirmation_set": "b" * 64,
                  "documents": {s: {"selection": 31, "confirmation": 33} for s in sources}},
        "available_tokens": {"c4": 800, "wikipedia": 200}, "bounds": {"c4": 1.0, "wikipedia": 1.0}, "max_epochs": 4.0,
        "target_tokens": 4096, "natural_shares": {"c4": 0.8, "wikipedia": 0.2}, "dc6_shares": None,
        "reference_shares": {}, "proxies": px, "failed": [], "reuse": None, "cv": [cv.to_dict()],
        "nested_cv": {**cv.to_dict(), "family": "nested"}, "spread": 0.08, "chosen": None,
        "cv_heldout": {"predicted": cv.predicted.tolist(), "observed": obs, "family": "dml"},
        "shares": px[2]["shares"], "weights_pct": {"c4": 80.0, "wikipedia": 20.0}, "epochs": {"c4": 1, "wikipedia": 1},
        "predicted": {}, "options": {"model": "tiny", "tokens": 4096, "average_top": 16},
        "confirmation": {"seeds": [0, 1], "realised": {"proposed": 1.9, "natural": 1.91, "best_proxy": 1.9},
                         "comparisons": {"natural": cmp, "dc6": {"diff": None, "ci95": None, "seeds": 0,
                                                                 "note": "not among the sources"},
                                         "best_proxy": {**cmp, "diff": 0.0, "ci95": [0.0, 0.0], "same_runs": True}},
                         "interval_method": "t", "conditional": True},
    }


def test_a_non_predicting_fit_writes_the_best_proxy_and_says_so_first(tmp_path):
    p = _proposal("not_predicting")
    write_report(tmp_path, p)
    _write_yaml(tmp_path / "proposed.yaml", p)
    _write_report_json(tmp_path, p, headline_lines(p))
    md = [ln for ln in (tmp_path / "report.md").read_text().splitlines() if ln.strip()]
    assert md[1].startswith("NOT A PROPOSAL: the fit does not predict") and "p002" in md[1]
    assert md[2].startswith("Objective: natural")
    assert any(ln.startswith("- proposed − natural") and "conditional on these trained models (2 seeds)" in ln
               for ln in md)
    doc = yaml.safe_load((tmp_path / "proposed.yaml").read_text())
    assert doc["weights"] == {"c4": 80.0, "wikipedia": 20.0} and doc["prediction"]["fit"] is None
    assert "NOT A FIT'S PROPOSAL" in doc["description"]
    assert doc["prediction"]["confirmed"]["half"] == "confirmation"
    shares = {s: v for s, v in load_mix(tmp_path / "proposed.yaml").shares.items() if v}
    assert shares == pytest.approx({"c4": 0.8, "wikipedia": 0.2})  # a mix file `slimpipe mix` takes
    rj = json.loads((tmp_path / "report.json").read_text())
    assert rj["status"] == "not_predicting" and rj["headline"][0].startswith("NOT A PROPOSAL")
    assert rj["selection_set"] == "a" * 64 and rj["confirmation_set"] == "b" * 64
    assert rj["objective"]["spec"] == "natural"
    assert set(rj["comparisons"]) == {"natural", "dc6", "best_proxy"}
    assert rj["comparisons"]["natural"] == {"diff": -0.01, "ci95": [-0.03, 0.01], "seeds": 2, "same_runs": False}
    assert rj["proposed"]["from"] == "best proxy p002"


def test_a_predicting_fit_opens_with_the_objective(tmp_path):
    p = _proposal("proposed")
    lines = headline_lines(p)
    assert lines[0].startswith("Objective: natural")
    assert [ln.split(":")[0] for ln in lines[2:]] == ["- proposed − DC-6", "- proposed − natural",
                                                       "- proposed − best proxy"]
