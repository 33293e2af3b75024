"""The demo end to end at a reduced size: sample → SlimPajama (global, local) → 8 mixes → 8 tiny models →
comparison. Every figure in the report must come from a run's own metrics."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from slimpipe.demo import DC_MIXES, demo_command


@pytest.fixture(scope="module")
def demo(tmp_path_factory, ray_session) -> Path:
    out = tmp_path_factory.mktemp("demo")
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
    assert md.startswith("# Mix comparison\n\n**Best mix overall: ")
    assert "Global vs local dedup (redpajama mix)" in md
    for png in ("curves.png", "per_source_bpb.png"):
        assert (demo / "report" / "plots" / png).stat().st_size > 1000


def test_every_figure_comes_from_a_run(demo: Path) -> None:
    report = json.loads((demo / "report" / "report.json").read_text())
    md = (demo / "report" / "report.md").read_text()
    for label, row in report["rows"].items():
        (run,) = row["runs"]
        metrics = json.loads((Path(run) / "metrics.json").read_text())["eval"]
        for col, cell in row["bpb"].items():
            want = {"total": metrics["total"]["bpb"], "mean": metrics["mean_bpb"]}.get(col)
            if want is None:
                want = metrics["sources"][col]["bpb"]
            assert cell["values"] == [want], (label, col)
        # the Markdown row shows exactly those numbers, rounded
        line = next(x for x in md.splitlines() if x.startswith(f"| {label} |"))
        shown = [float(x) for x in re.findall(r"\d+\.\d{4}", line)]
        expected = [round(row["bpb"][c]["mean"], 4) for c in report["columns"] + ["total", "mean"] if c in row["bpb"]]
        assert shown == pytest.approx(expected, abs=1e-4)
    w = report["winners"]["total"]
    best = min(report["rows"].items(), key=lambda kv: kv[1]["bpb"]["total"]["mean"])
    assert w["winner"] == best[0]
