"""Coverage of the comparison's intervals is a tested property: runs simulated with known seed and document
noise under the null (no true difference) go through the real :func:`slimpipe.report.stats.difference`."""

from __future__ import annotations

import math

import numpy as np
import pytest

from slimpipe.report.stats import RowLosses, difference

SOURCES = ("common_crawl", "c4", "github", "wikipedia")
N_DOCS = 40  # per source: at least stats.MIN_DOCS, like every evaluation set
SEED_SD = 0.01  # run-level seed effect in bpb, what the demo's tiny runs show seed to seed
SHARED_SEED_SD = 0.01  # the part of a seed's effect both rows share (same init and data order): pairing removes it
# a document favours one mix over another (population mean 0 under the null): small when seed noise
# dominates the difference (where a bootstrap over a handful of seeds under-covers), larger when both matter
DOC_MIX_SD = {"seed noise dominates": 0.01, "seeds and documents": 0.05}
DOC_SEED_SD = 0.02  # per document, per run noise


def _null_rows(rng: np.random.Generator, n_seeds: int, doc_mix_sd: float) -> tuple[RowLosses, RowLosses]:
    """Two configurations with the same expected bits per byte on the population of documents."""
    seeds = list(range(1, n_seeds + 1))
    shared = rng.normal(0, SHARED_SEED_SD, n_seeds)[:, None]
    rows = []
    nbytes = {s: rng.integers(300, 6000, N_DOCS) for s in SOURCES}
    hard = {s: rng.normal(1.6, 0.3, N_DOCS) for s in SOURCES}
    for _ in range(2):
        nll = {}
        run = rng.normal(0, SEED_SD, (n_seeds, 1))  # each trained model is a little better or worse everywhere
        for s in SOURCES:
            bpb = (hard[s] + rng.normal(0, doc_mix_sd, N_DOCS) + shared + run
                   + rng.normal(0, DOC_SEED_SD, (n_seeds, N_DOCS)))
            nll[s] = bpb * math.log(2) * nbytes[s]
        rows.append(RowLosses(seeds=seeds, nll=nll, bytes=nbytes))
    return rows[0], rows[1]


def null_coverage(n_seeds: int, doc_mix_sd: float, sims: int = 300, difference=difference) -> dict[str, float]:
    """Share of simulated null comparisons whose 95% interval covers 0, per column."""
    rng = np.random.default_rng([20261206, n_seeds, int(doc_mix_sd * 1000)])
    hits = {"total": 0, "mean": 0, "github": 0}
    for i in range(sims):
        cols = difference(*_null_rows(rng, n_seeds, doc_mix_sd), replicates=300, seed=i)["columns"]
        for col in hits:
            lo, hi = cols[col]["ci95"]
            hits[col] += lo <= 0.0 <= hi
    return {c: h / sims for c, h in hits.items()}


@pytest.mark.parametrize("regime", sorted(DOC_MIX_SD))
def test_null_coverage_with_five_seeds_holds(regime: str) -> None:
    cov = null_coverage(5, DOC_MIX_SD[regime])
    assert all(v >= 0.92 for v in cov.values()), cov


def test_one_seed_is_stated_as_conditional() -> None:
    a, b = _null_rows(np.random.default_rng(1), 1, 0.05)
    d = difference(a, b, replicates=200)
    assert not d["seed_aware"] and not d["claim_ok"] and "conditional on these trained models" in d["interval_method"]
    a, b = _null_rows(np.random.default_rng(1), 3, 0.05)
    d = difference(a, b, replicates=200)
    assert d["seed_aware"] and d["claim_ok"] and d["columns"]["total"]["df"] is not None


def test_one_seed_gets_no_verdict_in_the_report(tmp_path) -> None:
    from slimpipe.report.compare import write_compare_report
    from tests.test_compare import _dataset, _mix, _run

    g, lo = _dataset(tmp_path, "global"), _dataset(tmp_path, "local")
    runs = [_run(tmp_path, _mix(tmp_path, "redpajama", g), 1, {"common_crawl": 1.60, "github": 1.30}),
            _run(tmp_path, _mix(tmp_path, "redpajama", lo), 1, {"common_crawl": 1.70, "github": 1.40})]
    r = write_compare_report(runs, tmp_path / "report", replicates=200)
    (effect,) = r["dedup_effect"]
    assert effect["columns"]["total"]["detectable"] and not effect["claim_ok"]  # 0.1 apart, but one seed
    first = (tmp_path / "report" / "report.md").read_text().splitlines()[2]
    assert first.startswith("Global vs local dedup (redpajama mix), conditional on these trained models: the "
                            "interval covers the evaluation documents only, not training noise (1 seed each)")
    assert "is better" not in first and "no verdict" in first
    assert r["interval_method"].startswith("documents only")


def test_intervals_need_the_documents_the_evaluation_set_is_sized_to() -> None:
    from slimpipe.evalset.build import MIN_DOCS as SIZED_TO
    from slimpipe.report.stats import MIN_DOCS

    assert MIN_DOCS == SIZED_TO and N_DOCS >= MIN_DOCS
