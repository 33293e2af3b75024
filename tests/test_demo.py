"""The demo end to end at a reduced size: sample → one evaluation set → SlimPajama (global, local) → 8 mixes
→ 8 × 3 tiny models (three seeds, trained two at a time) → comparison. Every figure in the report must come
from a run's own metrics, every run is scored on the one evaluation set, and every stated difference carries
an interval over seeds and documents (or names why it has none)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from slimpipe.demo import DC_MIXES, _Warnings, demo_command

# The whole mission on two cores shared with other jobs: ~6 minutes idle, more under load.
pytestmark = pytest.mark.timeout(1800)


@pytest.fixture(scope="module")
def demo(tmp_path_factory, ray_session, live_output) -> Path:
    out = tmp_path_factory.mktemp("demo")
    with live_output("demo fixture: sample -> eval set -> slimpajama x2 -> 8 mixes -> 8 x 3 seeds of tiny models -> compare"):
        demo_command.main(["-o", str(out), "--size", "0.4", "--tokens", "100k", "--train-tokens", "8192",
                           "--vocab-size", "1024", "--quiet"], standalone_mode=False)
    return out


def test_report_holds_all_six_mixes_and_the_baseline(demo: Path) -> None:
    report = json.loads((demo / "report" / "report.json").read_text())
    labels = set(report["rows"])
    assert {f"{m} (global)" for m in DC_MIXES} <= labels
    assert "redpajama (local)" in labels and "redpajama (global)" in labels
    assert report["same_tokenizer"]  # one BPE shared by every mix
    md = (demo / "report" / "report.md").read_text()
    # the first line states global vs local with its interval
    first = next(ln for ln in md.splitlines()[2:] if not ln.startswith("**Warning"))
    assert md.startswith("# Mix comparison\n\n") and "Global vs local dedup (redpajama mix)" in first
    (effect,) = report["dedup_effect"]
    assert effect["n_seeds"] == [3, 3] and effect["seed_aware"] and effect["claim_ok"]
    assert report["interval_method"].startswith("seeds and documents")
    tot = effect["columns"].get("total")
    if tot:  # total pools the sources with at least 30 evaluation documents
        lo, hi = tot["ci95"]
        assert lo <= tot["diff"] <= hi and "95% CI [" in first
    else:  # this reduced sample has no such source: each is named with its reason, and no verdict is stated
        assert set(report["excluded_from_intervals"]) >= set(report["columns"]) and "is better" not in first
    for row in report["rows"].values():
        if "vs_best" in row:
            for col, c in row["vs_best"]["columns"].items():  # an interval, or the reason there is none
                assert (len(c["ci95"]) == 2) if c["ci95"] else (c["note"] and not c["detectable"]), col
    for png in ("curves.png", "per_source_bpb.png", "differences.png"):
        assert (demo / "report" / "plots" / png).stat().st_size > 1000


def test_every_run_is_scored_on_the_one_evaluation_set(demo: Path) -> None:
    eval_set = json.loads((demo / "eval" / "manifest.json").read_text())
    mix = json.loads((demo / "mixes" / "dc1-global" / "manifest.json").read_text())
    if "eval_set" not in mix:
        pytest.skip("this `slimpipe mix` does not pack SLIMPAJAMA_DIR/eval yet (no eval_set in its manifest)")
    report = json.loads((demo / "report" / "report.json").read_text())
    assert not report["warnings"]
    assert {row["eval_set"] for row in report["rows"].values()} == {eval_set["eval_set"]}
    for mode in ("global", "local"):
        assert json.loads((demo / f"slimpajama-{mode}" / "eval" / "manifest.json").read_text())["eval_set"] == \
            eval_set["eval_set"]
    # every source with evaluation documents has a figure; a source with none (under 10 documents: 10% of it is
    # nothing) is named as missing, with the reason, never silently dropped
    with_docs = {s for s, v in eval_set["sources"].items() if v["docs"]}
    assert set(report["columns"]) == with_docs
    assert set(report["missing_eval"]) <= set(eval_set["sources"]) - with_docs
    for row in report["rows"].values():
        assert row["seeds"] == [1, 2, 3]
        assert all((Path(run) / "eval_losses.npz").is_file() for run in row["runs"])


def test_every_figure_comes_from_a_run(demo: Path) -> None:
    report = json.loads((demo / "report" / "report.json").read_text())
    md = (demo / "report" / "report.md").read_text()
    for label, row in report["rows"].items():
        per_run = [json.loads((Path(run) / "metrics.json").read_text())["eval_docs"] for run in row["runs"]]
        for col, cell in row["bpb"].items():
            want = [{"total": m["total"]["bpb"], "mean": m["mean_bpb"]}.get(col) or m["sources"][col]["bpb"]
                    for m in per_run]
            assert cell["values"] == want, (label, col)
        # the Markdown row shows exactly those numbers, rounded
        line = next(x for x in md.splitlines() if x.startswith(f"| {label} |"))
        shown = [float(x) for x in re.findall(r"(\d+\.\d{4})(?: ± \d+\.\d{4})?", line)]  # the means, not the sd
        expected = [round(row["bpb"][c]["mean"], 4) for c in report["columns"] + ["total", "mean"] if c in row["bpb"]]
        assert shown == pytest.approx(expected, abs=1e-4)
    w = report["winners"]["total"]
    best = min(report["rows"].items(), key=lambda kv: kv[1]["bpb"]["total"]["mean"])
    assert w["winner"] == best[0]


def test_warnings_the_mixes_repeat_are_said_once(capsys) -> None:
    w = _Warnings()
    for mix in ("dc1-global", "dc2-global"):
        w.add(mix, "evaluation set for book is too small: 1 document")
        w.add(mix, "github: the mix asks for 9,000 tokens but the input has 3,000; repeating it 3.00 epochs (3 whole "
                   "+ 0 tokens of one more)")
    w.summary(2)
    err = capsys.readouterr().err.splitlines()
    assert err == ["warning: evaluation set for book is too small: 1 document (all 2 mixes)",
                   "warning: 2 source(s) repeated across the mixes (more than one epoch of the available text): "
                   "dc1-global github ×3.00, dc2-global github ×3.00; see each mix's manifest"]


def test_demo_never_writes_into_a_users_folder(tmp_path: Path) -> None:
    """OUT is claimed through slimpipe.outdir before Ray starts: a folder of the user's is refused in one line
    naming what is there, and nothing is written into it."""
    from click.testing import CliRunner

    from slimpipe.cli import main

    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("keep me")
    r = CliRunner().invoke(main, ["demo", "-o", str(user), "--size", "0.1", "--quiet"])
    assert r.exit_code == 2 and "not a slimpipe output (it holds notes.txt)" in r.output, r.output
    assert [p.name for p in user.iterdir()] == ["notes.txt"] and (user / "notes.txt").read_text() == "keep me"
