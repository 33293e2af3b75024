"""``slimpipe propose`` end to end on the embedded sample at proxy size: real mixes, real proxy
trainings as Ray tasks, a real fit, and a mix file ``slimpipe mix`` accepts."""

from __future__ import annotations

import json

import pytest
import yaml
from click.testing import CliRunner
from mix_fixtures import build_slimpajama_dir, sample_documents

from slimpipe.mix.config import load_mix
from slimpipe.propose.command import propose_command
from slimpipe.propose.job import ProposeOptions, run_propose
from slimpipe.propose.sample import ProposalError


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    docs = sample_documents(tmp_path_factory.mktemp("sample"), size=0.25)
    return build_slimpajama_dir(tmp_path_factory.mktemp("slimpajama"), docs, holdout_per_source=3).root


def test_propose_on_the_sample(corpus, ray_session, tmp_path):
    out = tmp_path / "propose"
    opt = ProposeOptions(proxies=6, tokens=4096, seq_len=64, eval_tokens=2048, vocab_size=512, bootstrap=20,
                         quiet=True, families=("linear", "dml"))
    p = run_propose(corpus, out, opt)
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
    lo, hi = doc["prediction"]["objective_ci95"]
    assert lo <= hi
    assert {r["family"] for r in p["cv"]} == {"linear", "dml"}
    report = (out / "report.md").read_text()
    assert "held-out rank correlation" in report and "| proxy |" in report
    assert (out / "predicted_vs_observed.png").stat().st_size > 0 and (out / "weights.png").stat().st_size > 0
    # resume: nothing is retrained, the same proposal comes out
    before = {r: r.stat().st_mtime_ns for r in runs}
    again = run_propose(corpus, out, opt)
    assert {r: r.stat().st_mtime_ns for r in runs} == before
    assert again["shares"] == pytest.approx(p["shares"])


def test_refuses_a_budget_the_data_cannot_hold_before_training(corpus, ray_session, tmp_path):
    opt = ProposeOptions(proxies=4, tokens=10**9, seq_len=64, eval_tokens=2048, vocab_size=512, max_epochs=1.0,
                         quiet=True)
    with pytest.raises(ProposalError, match="cannot be drawn with at most 1 epochs"):
        run_propose(corpus, tmp_path / "p", opt)
    assert not (tmp_path / "p" / "proxies").exists()


def test_cli_rejects_a_bad_objective_in_one_line(corpus, tmp_path):
    r = CliRunner().invoke(propose_command, [str(corpus), "-o", str(tmp_path / "p"), "--objective", "wiki=x"])
    assert r.exit_code == 2 and "--objective" in r.output and "Traceback" not in r.output
