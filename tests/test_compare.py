"""The comparison report's logic on hand-made run folders (the end-to-end demo test uses real runs)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from slimpipe.report.compare import CompareError, write_compare_report


def _dataset(root: Path, mode: str) -> Path:
    d = root / f"sp-{mode}"
    d.mkdir(parents=True, exist_ok=True)
    (d / "manifest.json").write_text(json.dumps({"files": [], "dedup": {"mode": mode}}))
    return d


def _mix(root: Path, name: str, dataset: Path, tokenizer: str = "tok-a") -> Path:
    d = root / f"mix-{name}-{dataset.name}"
    d.mkdir(parents=True, exist_ok=True)
    (d / "manifest.json").write_text(json.dumps({
        "mix": {"name": name, "weights": {"common_crawl": 0.75, "github": 0.25}},
        "tokenizer": {"identity": tokenizer},
        "input": {"path": str(dataset), "manifest_sha256": "ab" * 32},
    }))
    return d


def _run(root: Path, mix: Path, seed: int, bpb: dict[str, float]) -> Path:
    d = root / f"run-{mix.name}-s{seed}"
    d.mkdir(parents=True, exist_ok=True)
    total = sum(bpb.values()) / len(bpb)
    (d / "config.json").write_text(json.dumps({"train": {"mix_dir": str(mix), "seed": seed}}))
    (d / "metrics.json").write_text(json.dumps({"eval": {
        "sources": {s: {"bpb": v, "loss": v} for s, v in bpb.items()},
        "total": {"bpb": total, "loss": total}, "mean_bpb": total}}))
    (d / "train_log.jsonl").write_text("".join(json.dumps({"step": i, "tokens": 100 * i, "loss": 5 - i / 10}) + "\n"
                                               for i in range(1, 5)))
    (d / "eval_log.jsonl").write_text(json.dumps({"step": 4, "tokens": 400, "total": {"bpb": total}}) + "\n")
    return d


def test_seeds_are_summarised_and_close_calls_flagged(tmp_path: Path) -> None:
    g, lo = _dataset(tmp_path, "global"), _dataset(tmp_path, "local")
    dc2, dc3 = _mix(tmp_path, "dc2", g), _mix(tmp_path, "dc3", g)
    base_g, base_l = _mix(tmp_path, "redpajama", g), _mix(tmp_path, "redpajama", lo)
    runs = [
        _run(tmp_path, dc2, 1, {"common_crawl": 1.50, "github": 1.20}),
        _run(tmp_path, dc2, 2, {"common_crawl": 1.54, "github": 1.24}),
        _run(tmp_path, dc3, 1, {"common_crawl": 1.53, "github": 1.00}),
        _run(tmp_path, dc3, 2, {"common_crawl": 1.55, "github": 1.02}),
        _run(tmp_path, base_g, 1, {"common_crawl": 1.60, "github": 1.30}),
        _run(tmp_path, base_l, 1, {"common_crawl": 1.70, "github": 1.40}),
    ]
    r = write_compare_report(runs, tmp_path / "report")
    dc2row = r["rows"]["dc2 (global)"]["bpb"]["common_crawl"]
    assert dc2row["n"] == 2 and dc2row["mean"] == pytest.approx(1.52)
    assert dc2row["std"] == pytest.approx(0.0282843, rel=1e-4)
    assert r["winners"]["common_crawl"]["winner"] == "dc2 (global)"
    assert r["winners"]["common_crawl"]["within_seed_spread"] is True  # 1.52 vs 1.54, spread 0.028
    assert r["winners"]["github"]["winner"] == "dc3 (global)"
    assert r["winners"]["github"]["within_seed_spread"] is False  # 1.01 vs 1.22
    (effect,) = r["dedup_effect"]
    assert effect["mix"] == "redpajama" and effect["delta_bpb"]["total"] == pytest.approx(-0.10)
    md = (tmp_path / "report" / "report.md").read_text()
    assert md.startswith("# Mix comparison\n\n**Best mix overall: dc3 (global)**")
    assert "within the seed spread" in md and "global dedup is better by 0.1000" in md
    assert "1.5200 ± 0.0283" in md and "All runs share one tokenizer." in md
    for png in ("curves.png", "per_source_bpb.png"):
        assert (tmp_path / "report" / "plots" / png).stat().st_size > 1000


def test_different_tokenizers_are_compared_in_bits_per_byte_only(tmp_path: Path) -> None:
    g = _dataset(tmp_path, "global")
    runs = [_run(tmp_path, _mix(tmp_path, "dc1", g, "tok-a"), 1, {"common_crawl": 1.5}),
            _run(tmp_path, _mix(tmp_path, "dc6", g, "tok-b"), 1, {"common_crawl": 1.4})]
    r = write_compare_report(runs, tmp_path / "report")
    assert not r["same_tokenizer"]
    assert "compared in **bits per byte only**" in (tmp_path / "report" / "report.md").read_text()


def test_a_folder_that_is_not_a_run_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(CompareError, match="missing metrics.json"):
        write_compare_report([tmp_path / "empty"], tmp_path / "report")
