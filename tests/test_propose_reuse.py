"""``slimpipe propose --reuse PREV_OUT`` (Olmix's mixture reuse): the change criterion, the composite
domain and its expansion, which PREV_OUT proxies may be taken over, and end to end on the embedded sample
(a first proposal without wikipedia, a second one with it reusing the first)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from mix_fixtures import build_slimpajama_dir, sample_documents

from slimpipe.mix.config import load_mix
from slimpipe.outdir import OutputError
from slimpipe.propose.command import propose_command
from slimpipe.propose.job import ProposeOptions, run_propose
from slimpipe.propose.reuse import (
    COMPOSITE,
    NOTHING_TO_DO,
    eval_fingerprints,
    load_previous,
    plan_reuse,
    reusable_proxies,
    reuse_swarm_size,
)
from slimpipe.propose.sample import ProposalError

SOURCES = ["c4", "github", "wikipedia"]
AVAIL = {"c4": 1000, "github": 400}
PREV = {"sources": ["c4", "github"], "shares": {"c4": 0.75, "github": 0.25}, "available_tokens": AVAIL,
        "source_stats": {"c4": {"docs": 10, "bytes": 5000}, "github": {"docs": 4, "bytes": 2000}},
        "options": {"model": "tiny", "tokens": 4096, "tokenizer": "train", "vocab_size": 512, "seq_len": 64},
        "proxies": []}
STATS = {"c4": {"docs": 10, "bytes": 5000}, "github": {"docs": 4, "bytes": 2000}, "wikipedia": {"docs": 3, "bytes": 900}}


def _plan(tmp_path: Path, available: dict, stats: dict = STATS, prev: dict = PREV, tol: float = 0.01):
    return plan_reuse(tmp_path, prev, sorted(available), available, stats, tol)


def test_added_source_makes_a_composite_of_the_rest(tmp_path):
    plan = _plan(tmp_path, {**AVAIL, "wikipedia": 300})
    assert plan.added == ["wikipedia"] and not plan.changed and not plan.removed
    assert plan.dims == [COMPOSITE, "wikipedia"]
    assert plan.ratio == pytest.approx({"c4": 0.75, "github": 0.25})
    shares = plan.expand({COMPOSITE: 0.8, "wikipedia": 0.2})
    assert shares == pytest.approx({"c4": 0.6, "github": 0.2, "wikipedia": 0.2})
    # the composite's capacity is its scarcest source relative to its ratio: github 400 / 0.25 = 1600
    assert plan.dims_available({**AVAIL, "wikipedia": 300}) == {COMPOSITE: 1333, "wikipedia": 300}
    # a per-source mix is a point of the space only in the composite's ratios
    assert plan.project({"c4": 3, "github": 1}) == pytest.approx({COMPOSITE: 1.0, "wikipedia": 0.0})
    assert plan.project({"c4": 0.5, "github": 0.5}) is None


def test_change_criterion_docs_and_bytes_with_tolerance(tmp_path):
    # the probe's token count is an estimate: it moving alone is no change when index counts exist
    assert _plan(tmp_path, {"c4": 1100, "github": 400, "wikipedia": 1}).changed == {}
    stats = {**STATS, "github": {"docs": 5, "bytes": 2300}}
    plan = _plan(tmp_path, dict(AVAIL), stats)
    assert plan.changed == {"github": "train docs 4 → 5"}
    assert plan.dims == [COMPOSITE, "github"] and plan.unchanged == ["c4"]
    stats = {**STATS, "c4": {"docs": 10, "bytes": 5040}}  # 0.8 % more bytes: within 1 %, not within 0
    assert _plan(tmp_path, {**AVAIL, "wikipedia": 1}, stats).changed == {}
    assert _plan(tmp_path, {**AVAIL, "wikipedia": 1}, stats, tol=0).changed == {"c4": "train bytes 5,000 → 5,040"}
    # a PREV_OUT without recorded counts: the tokens decide, so before the probe nothing is decided
    old = {k: v for k, v in PREV.items() if k != "source_stats"}
    assert "400 → 460" in _plan(tmp_path, {"c4": 1000, "github": 460}, prev=old).changed["github"]
    assert plan_reuse(tmp_path, old, ["c4", "github"], None, STATS, 0.01) is None
    # with counts, the same answer before the probe as after it
    moved = {**STATS, "github": {"docs": 5, "bytes": 2300}}
    assert plan_reuse(tmp_path, PREV, ["c4", "github"], None, moved, 0.01).changed == {"github": "train docs 4 → 5"}
    with pytest.raises(ProposalError, match="^" + NOTHING_TO_DO):
        plan_reuse(tmp_path, PREV, ["c4", "github"], None, STATS, 0.01)


def test_refusals(tmp_path):
    with pytest.raises(ProposalError, match="^" + NOTHING_TO_DO):
        _plan(tmp_path, dict(AVAIL))
    doubled = {s: {"docs": 2 * v["docs"], "bytes": 2 * v["bytes"]} for s, v in STATS.items()}
    with pytest.raises(ProposalError, match="every source was added or changed"):
        _plan(tmp_path, dict(AVAIL), doubled)
    with pytest.raises(ProposalError, match="only removed sources"):
        _plan(tmp_path, {"c4": 1000})
    with pytest.raises(ProposalError, match="no weight"):
        _plan(tmp_path, dict(AVAIL), {**STATS, "github": doubled["github"]},
              prev={**PREV, "shares": {"c4": 0.0, "github": 1.0}})
    with pytest.raises(ProposalError, match="not a slimpipe propose output"):
        load_previous(tmp_path, tmp_path / "out", PREV["options"])
    (tmp_path / "proposal.json").write_text(json.dumps(PREV))
    with pytest.raises(ProposalError, match="tokens 4096 there, 8192 here"):
        load_previous(tmp_path, tmp_path / "out", {**PREV["options"], "tokens": 8192})
    with pytest.raises(ProposalError, match="must differ"):
        load_previous(tmp_path, tmp_path, PREV["options"])
    with pytest.raises(ProposalError, match="tokenizer .* is missing"):
        load_previous(tmp_path, tmp_path / "out", PREV["options"])


def test_swarm_size_scales_with_dimensions(tmp_path):
    plan = _plan(tmp_path, {**AVAIL, "wikipedia": 300})
    assert reuse_swarm_size(4, plan) == 4  # never below what a fit needs
    assert reuse_swarm_size(30, plan) == 20  # 30 * 2 / 3
    wide = plan_reuse(tmp_path, {**PREV, "sources": list("abcdef"), "shares": dict.fromkeys("abcdef", 1 / 6),
                                 "available_tokens": dict.fromkeys("abcdef", 100)},
                      list("abcdefg"), dict.fromkeys("abcdefg", 100), {}, 0.01)
    assert reuse_swarm_size(16, wide) == 5  # 16 * 2 / 7


def _fake_proxy(root: Path, name: str, shares: dict, eval_bytes: dict[str, bytes], eval_set: str | None) -> dict:
    for s, b in eval_bytes.items():
        (root / "mixes" / name / "eval" / s).mkdir(parents=True, exist_ok=True)
        (root / "mixes" / name / "eval" / s / "tokens.bin").write_bytes(b)
    (root / "proxies" / name).mkdir(parents=True, exist_ok=True)
    (root / "proxies" / name / "metrics.json").write_text(json.dumps({"eval_set": eval_set}))
    return {"name": name, "shares": shares, "ok": True}


def test_only_proxies_in_the_new_space_on_the_same_eval_set_are_reused(tmp_path):
    prev_dir = tmp_path / "prev"
    same = {"c4": b"c4-eval", "github": b"gh-eval"}
    proxies = [
        _fake_proxy(prev_dir, "p000", {"c4": 0.5, "github": 0.5}, same, "H"),  # other ratio: not in the space
        _fake_proxy(prev_dir, "p001", {"c4": 0.75, "github": 0.25}, {**same, "github": b"other"}, "H"),
        _fake_proxy(prev_dir, "p002", {"c4": 0.75, "github": 0.25}, same, "G"),  # another evaluation set
        _fake_proxy(prev_dir, "p003", {"c4": 0.75, "github": 0.25}, same, "H"),  # reusable
        _fake_proxy(prev_dir, "p004", {"c4": 0.75, "github": 0.25}, same, "H"),  # the same point again
        {"name": "p005", "shares": {"c4": 0.75, "github": 0.25}, "ok": False},
    ]
    prev = {**PREV, "sources": ["c4", "github", "book"], "shares": {"c4": 0.6, "github": 0.2, "book": 0.2},
            "available_tokens": {**AVAIL, "book": 500}, "proxies": proxies}
    # book changed: the composite is c4 + github in the proposal's 3:1; book is a free dimension
    plan = plan_reuse(prev_dir, prev, ["book", "c4", "github"], {**AVAIL, "book": 900}, {}, 0.01)
    assert plan.dims == [COMPOSITE, "book"] and plan.ratio == pytest.approx({"c4": 0.75, "github": 0.25})
    taken, why_not = reusable_proxies(plan, eval_fingerprints(prev_dir / "mixes" / "p003"), "H")
    assert [t["name"] for t in taken] == ["p003"]
    assert taken[0]["point"] == pytest.approx({COMPOSITE: 1.0, "book": 0.0})
    reasons = dict(why_not)
    for name, why in [("p000", "not in the new space"), ("p001", "different evaluation sequences for github"),
                      ("p002", "evaluation set G"), ("p004", "already reused"), ("p005", "failed")]:
        assert why in reasons[name]
    # a proxy that trained on the changed source is not in the space either
    plan.prev["proxies"] = [_fake_proxy(prev_dir, "p006", {"c4": 0.6, "github": 0.2, "book": 0.2}, same, "H")]
    assert reusable_proxies(plan, eval_fingerprints(prev_dir / "mixes" / "p003"), "H")[0] == []


# --- end to end ------------------------------------------------------------------------------------------

OPT = {"tokens": 4096, "seq_len": 64, "eval_tokens": 2048, "vocab_size": 512, "bootstrap": 20, "quiet": True,
       "families": ("linear",),  # the fits are tested in test_propose_math; dml on 4 proxies is slow
       "confirm_seeds": 1, "replicates": 200}  # confirmation is tested in test_propose


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    """The sample without wikipedia, and with it (wikipedia sorts last, so every other source's split and
    holdout are identical in both)."""
    docs = sample_documents(tmp_path_factory.mktemp("sample"), size=0.25)
    without = build_slimpajama_dir(tmp_path_factory.mktemp("without"), [d for d in docs if d[1] != "wikipedia"],
                                   holdout_per_source=3).root
    fx = build_slimpajama_dir(tmp_path_factory.mktemp("with"), docs, holdout_per_source=3)
    # wikipedia's train documents cut to half their length: the split (it shuffles ids, not texts) and so
    # the evaluation sequences stay the same, the train data changes
    train = set(fx.train["wikipedia"])
    edited = [(i, s, t[: len(t) // 2] if s == "wikipedia" and t in train else t) for i, s, t in docs]
    changed = build_slimpajama_dir(tmp_path_factory.mktemp("changed"), edited, holdout_per_source=3).root
    return without, fx.root, changed


def test_reuse_end_to_end_on_the_sample(corpora, ray_session, tmp_path):
    without, with_, changed = corpora
    first = run_propose(without, tmp_path / "first", ProposeOptions(proxies=6, **OPT))
    assert "wikipedia" not in first["sources"] and first["reuse"] is None

    out = tmp_path / "second"
    p = run_propose(with_, out, ProposeOptions(proxies=6, reuse=str(tmp_path / "first"), **OPT))
    r = p["reuse"]
    assert r["added"] == ["wikipedia"] and not r["changed"] and not r["removed"]
    assert r["dims"] == [COMPOSITE, "wikipedia"] and sorted(r["unchanged"]) == sorted(first["sources"])
    # a two-dimensional swarm: 4 proxies trained instead of 6; none of the first run's could be reused
    # (none gives the unchanged sources the proposal's ratios), and the report says why
    assert r["proxies_trained"] == 4 == len(p["proxies"]) and r["proxies_reused"] == []
    assert r["compute_ratio"] == pytest.approx(4 / 6) and r["compute_saved"] == pytest.approx(1 / 3)
    assert len(r["proxies_not_reused"]) == 6
    assert len(list((out / "proxies").glob("p*/metrics.json"))) == 4
    # every proxy and the proposal keep the first proposal's ratios among the unchanged sources
    prev_ratio = {s: first["shares"][s] / sum(first["shares"].values()) for s in first["sources"]}
    for shares in [px["shares"] for px in p["proxies"]] + [p["shares"]]:
        kept = sum(shares[s] for s in prev_ratio)
        assert {s: shares[s] / kept for s in prev_ratio} == pytest.approx(prev_ratio, abs=1e-9)
    # the first drawn proxy is PREV_OUT's proposal itself (nothing of wikipedia), and it is predicted beside
    # (4 proxies cannot give a rank correlation an interval above 0: the best proxy stands in, unpredicted)
    assert p["proxies"][0]["shares"]["wikipedia"] == 0
    assert "previous" in p["predicted"] if p["status"] == "proposed" else p["predicted"] == {}
    assert sum(p["shares"].values()) == pytest.approx(1.0) and set(p["shares"]) == set(first["sources"]) | {"wikipedia"}
    for s, v in p["shares"].items():
        assert v <= p["bounds"][s] + 1e-9
    # same tokenizer as the first run: its proxies' evaluation sequences are byte-identical for old sources
    fp1, fp2 = eval_fingerprints(tmp_path / "first" / "mixes" / "p000"), eval_fingerprints(out / "mixes" / "p000")
    assert "wikipedia" in fp2 and all(fp2[s] == fp1[s] for s in fp1)
    assert sum(load_mix(out / "proposed.yaml").shares.values()) == pytest.approx(1.0)
    report = (out / "report.md").read_text()
    assert "## Reuse of" in report and "4 trained, 0 reused" in report and "33% saved" in report
    assert "PREV_OUT's mix" in report

    # the same folder asked for other draws (another seed): refused, never silently resumed from other mixes
    with pytest.raises(OutputError, match="holds a `slimpipe propose` run with other inputs or options"):
        run_propose(with_, out, ProposeOptions(proxies=6, seed=1, reuse=str(tmp_path / "first"), **OPT))
    assert len(list((out / "proxies").glob("p*/metrics.json"))) == 4

    # nothing changed since the second run: refused in one line, nothing trained
    res = CliRunner().invoke(propose_command, [str(with_), "-o", str(tmp_path / "noop"), "--reuse", str(out),
                                               "--proxies", "6", "--tokens", "4096", "--seq-len", "64",
                                               "--vocab-size", "512", "--eval-tokens", "2048", "--quiet"])
    assert res.exit_code == 1 and "nothing to do; PREV_OUT's proposal stands" in res.output
    assert "Traceback" not in res.output and not (tmp_path / "noop").exists()
    # another budget, or a folder that is no proposal: refused before any work
    res = CliRunner().invoke(propose_command, [str(with_), "-o", str(tmp_path / "fourth"), "--reuse", str(out),
                                               "--tokens", "8192", "--quiet"])
    assert res.exit_code == 1 and "tokens 4096 there, 8192 here" in res.output
    assert not (tmp_path / "fourth").exists()
    res = CliRunner().invoke(propose_command, [str(with_), "-o", str(tmp_path / "fifth"), "--reuse", str(with_)])
    assert res.exit_code == 1 and "not a slimpipe propose output" in res.output

    # wikipedia's train data changed, its evaluation set did not: the second run's proxy of the previous
    # mix (nothing of wikipedia) lies in the new space and was scored on the same sequences, so it is reused
    q = run_propose(changed, tmp_path / "third", ProposeOptions(proxies=6, reuse=str(out), **OPT))
    r = q["reuse"]
    assert not r["added"] and list(r["changed"]) == ["wikipedia"] and "train bytes" in r["changed"]["wikipedia"]
    assert r["dims"] == [COMPOSITE, "wikipedia"]
    assert r["proxies_reused"] == [{"name": "p000", "run": str(out / "proxies" / "p000")}]
    assert r["proxies_trained"] == 3 and r["compute_saved"] == pytest.approx(1 / 2)
    assert len(list((tmp_path / "third" / "proxies").glob("p*/metrics.json"))) == 3
    assert q["proxies"][0]["reused"] and q["proxies"][0]["bpb"] == p["proxies"][0]["bpb"]
    # (a Dirichlet draw with a tiny share of the new source can land on the previous proposal exactly)
    not_in_space = ("its mixture is not in the new space (only a mixture giving the unchanged sources the previous "
                    "proposal's ratios, and nothing to the others, is)")
    reasons = {x["reason"] for x in r["proxies_not_reused"]}
    assert not_in_space in reasons and reasons <= {not_in_space, "the same mixture as p000, already reused"}
    assert "(reused)" in (tmp_path / "third" / "report.md").read_text()
