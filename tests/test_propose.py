"""``slimpipe propose`` end to end on the embedded sample at proxy size: real mixes, real proxy
trainings as Ray tasks, a real fit, and a mix file ``slimpipe mix`` accepts."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import yaml
from click.testing import CliRunner
from mix_fixtures import build_slimpajama_dir, sample_documents

from slimpipe.mix.config import load_mix
from slimpipe.outdir import JOB_OUTPUTS, MARKER, OutputError
from slimpipe.propose.command import propose_command
from slimpipe.propose.job import ProposeOptions, run_propose
from slimpipe.propose.sample import ProposalError


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    docs = sample_documents(tmp_path_factory.mktemp("sample"), size=0.25)
    return build_slimpajama_dir(tmp_path_factory.mktemp("slimpajama"), docs, holdout_per_source=6).root


def test_propose_on_the_sample(corpus, ray_session, tmp_path):
    out = tmp_path / "propose"
    opt = ProposeOptions(proxies=6, tokens=4096, seq_len=64, eval_tokens=0, vocab_size=512, bootstrap=20,
                         quiet=True, families=("linear", "dml"), confirm_seeds=2, replicates=200)
    p = run_propose(corpus, out, opt)
    # report.json: the declared objective, both halves' identities and the confirmation-half comparisons
    rj = json.loads((out / "report.json").read_text())
    assert rj["objective"]["spec"] == "natural" and rj["status"] in ("proposed", "not_predicting")
    assert len(rj["selection_set"]) == 64 and len(rj["confirmation_set"]) == 64
    assert rj["selection_set"] != rj["confirmation_set"]
    for ref in ("natural", "dc6", "best_proxy"):
        c = rj["comparisons"][ref]
        assert set(c) >= {"diff", "ci95", "seeds"} and c["seeds"] == 2
        if c["ci95"] is not None:
            assert c["ci95"][0] <= c["diff"] <= c["ci95"][1]
        else:  # the sample's evaluation sets are far below 30 documents a half: named, no interval
            assert "no interval" in c["note"]
    report = (out / "report.md").read_text().splitlines()
    first = [ln for ln in report if ln.strip()][1]
    if rj["status"] == "proposed":
        assert first.startswith("Objective: natural")
    else:
        assert first.startswith("NOT A PROPOSAL") and p["best_proxy"] in first
    assert any("proposed − DC-6" in ln for ln in report) and any("proposed − natural" in ln for ln in report)
    # the confirmation runs: 2 seeds of each mix, the first seed of natural/DC-6/best proxy is its proxy
    conf = p["confirmation"]
    assert conf["seeds"] == [0, 1]
    assert conf["runs"]["natural"][0] == str(out / "proxies" / "p000")
    assert all(len(r) == 2 for r in conf["runs"].values())
    # every proxy trained, on the same eval set, and the fit saw them all
    assert len(p["proxies"]) == 6 and not p["failed"]
    assert p["proxies"][0]["shares"] == pytest.approx({s: v / sum(p["available_tokens"].values())
                                                       for s, v in p["available_tokens"].items()})
    runs = sorted((out / "proxies").glob("p*/metrics.json"))
    assert len(runs) == 6
    eval_sizes = {json.dumps({s: v["bytes"] for s, v in json.loads(r.read_text())["eval"]["sources"].items()},
                             sort_keys=True) for r in runs}
    assert len(eval_sizes) == 1, "every proxy must be scored on the same evaluation sequences"
    # the proposal is feasible and usable as a mix file
    assert sum(p["shares"].values()) == pytest.approx(1.0)
    for s, v in p["shares"].items():
        assert v <= p["bounds"][s] + 1e-9
    mix = load_mix(out / "proposed.yaml")
    assert sum(mix.shares.values()) == pytest.approx(1.0)
    doc = yaml.safe_load((out / "proposed.yaml").read_text())
    if p["status"] == "proposed":
        lo, hi = doc["prediction"]["objective_ci95"]
        assert lo <= hi and doc["prediction"]["half"] == "selection"
    else:  # the best proxy actually trained, never an extrapolation
        best = next(px for px in p["proxies"] if px["name"] == p["best_proxy"])
        assert mix.shares == pytest.approx({s: v for s, v in best["shares"].items() if v > 0}, abs=1e-4)
        assert doc["prediction"]["fit"] is None
    assert doc["prediction"]["confirmed"]["half"] == "confirmation" and doc["prediction"]["confirmed"]["seeds"] == 2
    assert {r["family"] for r in p["cv"]} == {"linear", "dml"}
    report = (out / "report.md").read_text()
    assert "Nested cross-validation" in report and "| proxy |" in report
    assert (out / "predicted_vs_observed.png").stat().st_size > 0 and (out / "weights.png").stat().st_size > 0
    # every name it wrote is one --force checks before writing (slimpipe.outdir.JOB_OUTPUTS)
    assert {f.name for f in out.iterdir()} <= {*JOB_OUTPUTS["propose"], MARKER}
    # resume: nothing is retrained, the same proposal comes out
    before = {r: r.stat().st_mtime_ns for r in runs}
    again = run_propose(corpus, out, opt)
    assert {r: r.stat().st_mtime_ns for r in runs} == before
    assert again["shares"] == pytest.approx(p["shares"])


def test_refuses_a_budget_the_data_cannot_hold_before_training(corpus, ray_session, tmp_path):
    opt = ProposeOptions(proxies=4, tokens=10**9, seq_len=64, eval_tokens=2048, vocab_size=512, max_epochs=1.0,
                         quiet=True)
    (tmp_path / "p").mkdir()  # an empty folder is claimed
    with pytest.raises(ProposalError, match="cannot be drawn with at most 1 epochs"):
        run_propose(corpus, tmp_path / "p", opt)
    assert not (tmp_path / "p" / "proxies").exists()
    # a failed run still says what happened in report.json, and writes no proposed.yaml
    rj = json.loads((tmp_path / "p" / "report.json").read_text())
    assert rj["status"] == "error" and "cannot be drawn" in rj["error"] and rj["headline"][0].startswith("no proposal")
    assert not (tmp_path / "p" / "proposed.yaml").exists()
    assert json.loads((tmp_path / "p" / MARKER).read_text())["job"] == "propose"
    # the same job again is accepted (it resumes its probe and fails the same way); another run is refused
    with pytest.raises(ProposalError, match="cannot be drawn with at most 1 epochs"):
        run_propose(corpus, tmp_path / "p", opt)
    before = {f: f.read_bytes() for f in (tmp_path / "p").rglob("*") if f.is_file()}
    with pytest.raises(OutputError, match="holds a `slimpipe propose` run with other inputs or options"):
        run_propose(corpus, tmp_path / "p", replace(opt, seed=1))
    assert {f: f.read_bytes() for f in (tmp_path / "p").rglob("*") if f.is_file()} == before


def test_target_tokens_bound_repetition_at_the_target_budget(corpus, ray_session, tmp_path):
    # the proxies' budget fits in 1 epoch, the target's does not: refused before any proxy trains
    opt = ProposeOptions(proxies=4, tokens=4096, target_tokens=10**9, seq_len=64, eval_tokens=2048,
                         vocab_size=512, max_epochs=1.0, quiet=True)
    with pytest.raises(ProposalError, match="1,000,000,000 tokens cannot be drawn with at most 1 epochs"):
        run_propose(corpus, tmp_path / "p", opt)
    assert not (tmp_path / "p" / "proxies").exists()


def test_propose_never_writes_into_a_users_folder(corpus, tmp_path):
    """OUT is claimed through slimpipe.outdir before Ray starts: a user's folder is refused in one line naming
    what is there and left byte for byte as it was (--force too, when a name propose writes is there)."""
    from slimpipe.cli import main

    user = tmp_path / "mine"
    user.mkdir()
    (user / "report.json").write_text('{"mine": true}\n')
    (user / "notes.txt").write_text("keep me")
    base = ["propose", str(corpus), "-o", str(user), "--proxies", "4", "--quiet"]
    r = CliRunner().invoke(main, base)
    assert r.exit_code == 2 and "not a slimpipe output (it holds notes.txt, report.json)" in r.output, r.output
    r = CliRunner().invoke(main, [*base, "--force"])
    assert r.exit_code == 2 and "--force" in r.output and "already holds report.json" in r.output, r.output
    assert "Traceback" not in r.output
    assert sorted(p.name for p in user.iterdir()) == ["notes.txt", "report.json"]
    assert (user / "report.json").read_text() == '{"mine": true}\n' and (user / "notes.txt").read_text() == "keep me"


def test_cli_rejects_a_bad_objective_in_one_line(corpus, tmp_path):
    r = CliRunner().invoke(propose_command, [str(corpus), "-o", str(tmp_path / "p"), "--objective", "wiki=x"])
    assert r.exit_code == 2 and "--objective" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(propose_command, [str(corpus), "-o", str(tmp_path / "p"), "--objective",
                                             str(tmp_path / "weights.yaml")])
    assert r.exit_code == 2 and "cannot read the weights file" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "p").exists()
