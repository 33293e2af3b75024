"""The comparison report's logic on hand-made run folders (the end-to-end demo test uses real runs)."""

from __future__ import annotations

import json
import math
import zlib
from pathlib import Path

import numpy as np
import pytest

from slimpipe.report.compare import CompareError, write_compare_report
from slimpipe.report.stats import RowLosses, difference
from slimpipe.train.evaluate import save_document_losses

N_DOCS = 40
BYTES = np.random.default_rng(7).integers(200, 4000, N_DOCS)  # the same documents in every run


def _dataset(root: Path, mode: str) -> Path:
    d = root / f"sp-{mode}"
    d.mkdir(parents=True, exist_ok=True)
    (d / "manifest.json").write_text(json.dumps({"files": [], "dedup": {"mode": mode}}))
    cc_docs = 900 if mode == "global" else 1000  # global dedup removed 100 cross-source duplicates here
    (d / "index.json").write_text(json.dumps({"format": "slimpipe-index", "splits": {"train": [
        {"path": "train/chunk1/a.jsonl.zst", "sources": {"common_crawl": {"docs": cc_docs, "bytes": cc_docs * 1000},
                                                         "github": {"docs": 300, "bytes": 600_000}}}]}}))
    return d


def _mix(root: Path, name: str, dataset: Path, tokenizer: str = "tok-a", eval_set: str = "e" * 64,
         weights: dict | None = None) -> Path:
    d = root / f"mix-{name}-{dataset.name}-{eval_set[:4]}"
    d.mkdir(parents=True, exist_ok=True)
    weights = weights or {"common_crawl": 0.75, "github": 0.25}
    (d / "manifest.json").write_text(json.dumps({
        "mix": {"name": name, "weights": weights},
        "tokenizer": {"identity": tokenizer},
        "input": {"path": str(dataset), "manifest_sha256": "ab" * 32},
        "eval_set": eval_set,
        "sources": {s: {"epochs": 2.5 if s == "github" else 0.4, "tokens_realised": int(4096 * w),
                        "tokens_available": 10_000, "docs_written": 20} for s, w in weights.items()},
    }))
    return d


def _run(root: Path, mix: Path, seed: int, bpb: dict[str, float], lr: float = 1e-3, noise: float = 0.01,
         tag: str = "", scored_subset: str | None = "5" * 64, excluded: dict | None = None) -> Path:
    """A finished run: metrics.json with per-document bpb, eval_losses.npz whose documents give exactly it."""
    d = root / f"run-{mix.name}-s{seed}{tag}"
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, zlib.crc32(str(mix).encode())])
    difficulty = np.random.default_rng(3).normal(0, 0.3, N_DOCS)  # shared by every run: the same documents
    per_doc, sources = {}, {}
    for s, v in bpb.items():
        per = v + difficulty + rng.normal(0, noise, N_DOCS)
        nll = per * math.log(2) * BYTES
        per_doc[s] = {"nll": nll, "tokens": BYTES // 4, "bytes": BYTES.copy()}
        sources[s] = {"bpb": float(nll.sum() / (math.log(2) * BYTES.sum())), "docs": N_DOCS,
                      "tokens": int((BYTES // 4).sum()), "bytes": int(BYTES.sum())}
    nll_all = sum(p["nll"].sum() for p in per_doc.values())
    total = float(nll_all / (math.log(2) * BYTES.sum() * len(bpb)))
    mean = float(np.mean([x["bpb"] for x in sources.values()]))
    eval_docs = {"sources": sources, "total": {"bpb": total}, "mean_bpb": mean, "definition": "per document"}
    (d / "config.json").write_text(json.dumps({"train": {"mix_dir": str(mix), "seed": seed},
                                               "plan": {"lr": lr, "seq_len": 128, "preset": "tiny"}}))
    extra = {"scored_subset": scored_subset} if scored_subset else {}
    if excluded:
        extra["excluded_from_intervals"] = excluded
    (d / "metrics.json").write_text(json.dumps({"tokens": 4096, "eval_set": json.loads(
        (mix / "manifest.json").read_text())["eval_set"], "eval_docs": eval_docs, **extra,
        "eval": {"sources": sources, "total": {"bpb": total}, "mean_bpb": mean}}))
    save_document_losses(d / "eval_losses.npz", per_doc)
    (d / "train_log.jsonl").write_text("".join(json.dumps({"step": i, "tokens": 100 * i, "loss": 5 - i / 10}) + "\n"
                                               for i in range(1, 5)))
    (d / "eval_log.jsonl").write_text(json.dumps({"step": 2, "tokens": 200, "total": {"bpb": total + 0.1}}) + "\n"
                                      + json.dumps({"step": 4, "tokens": 400, "final": True,
                                                    "total": {"bpb": total}}) + "\n")
    return d


def test_intervals_decide_what_is_stated_and_bolded(tmp_path: Path) -> None:
    g, lo = _dataset(tmp_path, "global"), _dataset(tmp_path, "local")
    dc2, dc3 = _mix(tmp_path, "dc2", g), _mix(tmp_path, "dc3", g)
    base_g, base_l = _mix(tmp_path, "redpajama", g), _mix(tmp_path, "redpajama", lo)
    runs = []
    for seed in (1, 2, 3):
        runs.append(_run(tmp_path, dc2, seed, {"common_crawl": 1.500, "github": 1.20}))
        runs.append(_run(tmp_path, dc3, seed, {"common_crawl": 1.5002, "github": 1.00}))
    for seed in (1, 2, 3):
        runs += [_run(tmp_path, base_g, seed, {"common_crawl": 1.60, "github": 1.30}),
                 _run(tmp_path, base_l, seed, {"common_crawl": 1.70, "github": 1.40})]
    r = write_compare_report(runs, tmp_path / "report", replicates=500)
    row = r["rows"]["dc2 (global)"]["bpb"]["common_crawl"]
    assert row["n"] == 3 and row["std"] > 0
    cc = r["winners"]["common_crawl"]
    assert not cc["detectable"] and cc["ci95"][0] < 0 < cc["ci95"][1]  # 0.0002 apart: not a winner
    gh = r["winners"]["github"]
    assert gh["winner"] == "dc3 (global)" and gh["detectable"] and gh["ci95"][0] > 0.15
    assert r["pairing"]["same_seeds_in_every_row"] is True
    assert r["interval_method"].startswith("seeds and documents") and gh["claim"] and gh["seed_aware"]
    (effect,) = r["dedup_effect"]
    tot = effect["columns"]["total"]
    assert effect["mix"] == "redpajama" and tot["diff"] == pytest.approx(-0.10, abs=0.01)
    assert tot["ci95"][1] < 0 and effect["paired_docs"] and effect["claim_ok"] and effect["n_seeds"] == [3, 3]
    # every stated difference is in report.json as a two-number list under a "ci95" key
    found = []

    def walk(x):
        if isinstance(x, dict):
            for k, v in x.items():
                if "ci95" in k and v is not None:
                    found.append(v)
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)

    walk(json.loads((tmp_path / "report" / "report.json").read_text()))
    assert found and all(len(v) == 2 and v[0] <= v[1] for v in found)
    assert all("ci95" in c for row in r["rows"].values() if "vs_best" in row for c in row["vs_best"]["columns"].values())
    md = (tmp_path / "report" / "report.md").read_text()
    first = md.splitlines()[2]
    assert first.startswith("**Global vs local dedup (redpajama mix, 3 seeds each): global dedup is better** — "
                            "global − local = ")
    assert "95% CI [" in first
    assert "no detectable difference" in md
    cells = {ln.split("|")[1].strip(): [c.strip() for c in ln.split("|")[3:-1]] for ln in md.splitlines()
             if ln.startswith("| dc") and "±" in ln}
    assert cells["dc3 (global)"][1].startswith("**")  # the github winner is bold …
    assert not any(c[0].startswith("**") for c in cells.values())  # … the common_crawl "winner" is not
    assert "docs / " in md and "×2.50" in md  # evaluation sizes and repetition epochs shown
    # what each dedup mode's training data held, per source (composition), next to the effect
    comp = md.split("## What global vs local dedup changed in the training data (redpajama mix)")[1]
    assert "| common_crawl | 900 / 1.0k (-10.0%) |" in comp and "| github | 300 / 300 (=) |" in comp
    assert effect["composition"]["local"]["common_crawl"]["docs"] == 1000
    for png in ("curves.png", "per_source_bpb.png", "differences.png"):
        assert (tmp_path / "report" / "plots" / png).stat().st_size > 1000


def test_rows_are_keyed_by_the_full_configuration(tmp_path: Path) -> None:
    g = _dataset(tmp_path, "global")
    dc1 = _mix(tmp_path, "dc1", g)
    runs = [_run(tmp_path, dc1, 1, {"common_crawl": 1.5}, lr=1e-3),
            _run(tmp_path, dc1, 2, {"common_crawl": 1.5}, lr=3e-3, tag="-lr3")]
    r = write_compare_report(runs, tmp_path / "report", replicates=200)
    assert len(r["rows"]) == 2  # different learning rates are never averaged as seeds
    assert all("lr=" in label for label in r["rows"])


def test_a_repeated_seed_is_refused_naming_the_runs(tmp_path: Path) -> None:
    g = _dataset(tmp_path, "global")
    dc1 = _mix(tmp_path, "dc1", g)
    a = _run(tmp_path, dc1, 1, {"common_crawl": 1.5})
    b = _run(tmp_path, dc1, 1, {"common_crawl": 1.5}, tag="-again")
    with pytest.raises(CompareError, match=r"seed 1 repeated") as exc:
        write_compare_report([a, b], tmp_path / "report")
    assert str(a) in str(exc.value) and str(b) in str(exc.value) and "\n" not in str(exc.value)


def test_runs_on_different_eval_sets_are_never_ranked_together(tmp_path: Path) -> None:
    g = _dataset(tmp_path, "global")
    runs = [_run(tmp_path, _mix(tmp_path, "dc1", g, eval_set="a" * 64), 1, {"common_crawl": 1.5}),
            _run(tmp_path, _mix(tmp_path, "dc6", g, eval_set="b" * 64), 1, {"common_crawl": 1.2})]
    r = write_compare_report(runs, tmp_path / "report", replicates=200)
    assert len(r["tables"]) == 2 and "2 different evaluation sets" in r["warnings"][0]
    assert all("runner_up" not in w for t in r["tables"] for w in t["winners"].values())
    md = (tmp_path / "report" / "report.md").read_text()
    assert md.splitlines()[2].startswith("**Warning: runs were scored on 2 different evaluation sets")


def test_sources_without_evaluation_are_named_and_tokenizers_flagged(tmp_path: Path) -> None:
    g = _dataset(tmp_path, "global")
    (g / "eval").mkdir()
    (g / "eval" / "manifest.json").write_text(json.dumps({"sources": {
        "common_crawl": {"too_small": True, "reason": "common_crawl holds 9 bytes"}, "c4": {"too_small": False}}}))
    w = {"common_crawl": 0.5, "arxiv": 0.5}
    runs = [_run(tmp_path, _mix(tmp_path, "dc1", g, "tok-a", weights=w), 1, {"common_crawl": 1.5}),
            _run(tmp_path, _mix(tmp_path, "dc6", g, "tok-b", weights=w), 1, {"common_crawl": 1.4})]
    (runs[0] / "lm_eval.json").write_text(json.dumps({"results": {"arc_easy": {"acc,none": 0.41, "acc_norm,none": 0.4,
                                                                              "acc_stderr,none": 0.01}}}))
    r = write_compare_report(runs, tmp_path / "report", replicates=200)
    assert not r["same_tokenizer"] and "arxiv" in r["missing_eval"]
    md = (tmp_path / "report" / "report.md").read_text()
    assert "compared in **bits per byte only**" in md and "- arxiv: no evaluation documents" in md
    assert r["small_eval"] == {"common_crawl": "common_crawl holds 9 bytes"}
    assert "smaller than they should be" in md and "- common_crawl: common_crawl holds 9 bytes" in md
    assert r["rows"]["dc1 (global)"]["tasks"]["arc_easy"] == {"metric": "acc_norm", "mean": 0.4, "n": 1}
    assert "| dc1 (global) | 1.4" in md.split("## Downstream tasks")[1] and "0.400 (acc_norm)" in md


def test_a_folder_that_is_not_a_run_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(CompareError, match="missing metrics.json"):
        write_compare_report([tmp_path / "empty"], tmp_path / "report")


def test_pairing_by_document_sees_what_an_unpaired_comparison_cannot() -> None:
    rng = np.random.default_rng(0)
    nbytes = rng.integers(500, 5000, 200)
    hard = rng.normal(1.5, 0.4, 200)  # document difficulty dominates the spread
    a = RowLosses([1], {"x": (hard * np.log(2) * nbytes)[None]}, {"x": nbytes})
    b = RowLosses([1], {"x": ((hard + 0.01) * np.log(2) * nbytes)[None]}, {"x": nbytes})
    paired = difference(a, b, replicates=500)
    assert paired["paired_docs"] and paired["columns"]["x"]["detectable"]
    assert paired["columns"]["x"]["diff"] == pytest.approx(-0.01, abs=1e-9)
    shuffled = RowLosses([1], {"x": b.nll["x"][:, ::-1]}, {"x": nbytes[::-1]})  # other documents: cannot pair
    unpaired = difference(a, shuffled, replicates=500)
    assert not unpaired["paired_docs"] and not unpaired["columns"]["x"]["detectable"]


def test_seed_pairing_uses_matching_seeds() -> None:
    nbytes = np.full(50, 1000)
    base = np.random.default_rng(1).normal(1.5, 0.05, (3, 50))
    seed_effect = np.array([[0.1], [-0.1], [0.0]])  # each seed shifts both rows alike
    a = RowLosses([1, 2, 3], {"x": (base + seed_effect) * np.log(2) * 1000}, {"x": nbytes})
    b = RowLosses([3, 1, 2], {"x": (base[[2, 0, 1]] + seed_effect[[2, 0, 1]] + 0.02) * np.log(2) * 1000},
                  {"x": nbytes})
    d = difference(a, b, replicates=500)
    assert d["paired_seeds"] and d["columns"]["x"]["diff"] == pytest.approx(-0.02, abs=1e-9)
    assert d["columns"]["x"]["detectable"]


def test_a_source_with_too_few_documents_gets_no_interval_and_no_claim() -> None:
    nbytes = np.array([1000, 2000, 1500])
    a = RowLosses([1], {"book": (np.array([1.0, 1.1, 1.2]) * np.log(2) * nbytes)[None]}, {"book": nbytes})
    b = RowLosses([1], {"book": (np.array([1.5, 1.6, 1.7]) * np.log(2) * nbytes)[None]}, {"book": nbytes})
    c = difference(a, b, replicates=200)["columns"]["book"]
    d = difference(a, b, replicates=200)
    c = d["columns"]["book"]
    assert c["ci95"] is None and not c["detectable"] and "fewer than 30" in c["note"]
    assert c["diff"] == pytest.approx(-0.5)
    assert "total" not in d["columns"] and "book" in d["excluded"]  # and not pooled into total/mean either


def test_excluded_sources_are_left_out_of_total_and_named(tmp_path: Path) -> None:
    g = _dataset(tmp_path, "global")
    why = {"github": "8 source documents: fewer than 30"}
    runs = [_run(tmp_path, _mix(tmp_path, m, g), seed, {"common_crawl": v, "github": 1.0 + 0.3 * (m == "dc1")},
                 excluded=why) for m, v in (("dc1", 1.5), ("dc6", 1.5)) for seed in (1, 2, 3)]
    r = write_compare_report(runs, tmp_path / "report", replicates=300)
    vb = next(row["vs_best"] for row in r["rows"].values() if "vs_best" in row)
    assert vb["excluded_from_total"] == why and r["excluded_from_intervals"] == why
    assert vb["columns"]["github"]["ci95"] is None
    assert abs(vb["columns"]["total"]["diff"]) < 0.01  # github's 0.3 gap is not in the pooled total
    md = (tmp_path / "report" / "report.md").read_text()
    assert "Left out of the total and mean intervals: github (8 source documents: fewer than 30)" in md
    assert "excluded from the total and mean intervals" in r["small_eval"]["github"]  # named in the list too


def test_runs_are_ranked_together_only_on_the_same_scored_subset(tmp_path: Path) -> None:
    g = _dataset(tmp_path, "global")
    dc1, dc6, dc2 = _mix(tmp_path, "dc1", g), _mix(tmp_path, "dc6", g), _mix(tmp_path, "dc2", g)
    runs = [_run(tmp_path, dc1, 1, {"common_crawl": 1.5}, scored_subset="a" * 64),
            _run(tmp_path, dc6, 1, {"common_crawl": 1.2}, scored_subset="b" * 64),
            _run(tmp_path, dc2, 1, {"common_crawl": 1.3}, scored_subset=None)]
    r = write_compare_report(runs, tmp_path / "report", replicates=200)
    assert len(r["tables"]) == 3 and all(len(t["rows"]) == 1 for t in r["tables"])
    assert any("scored 2 different subsets" in w for w in r["warnings"])
    assert any("1 run(s) record no scored_subset" in w and str(runs[2]) in w for w in r["warnings"])
    assert all("runner_up" not in w for t in r["tables"] for w in t["winners"].values())
