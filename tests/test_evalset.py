"""One evaluation set drawn from the raw sources, and every training split decontaminated against it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from slimpipe.dedup.params import load_preset
from slimpipe.evalset.build import (
    EvalSetError,
    EvalSetOptions,
    build_eval_set,
    load_manifest,
    read_eval_documents,
)
from slimpipe.evalset.decontaminate import EVAL_DOC, EXACT, KEEP, NEAR, Decontaminator
from slimpipe.io.readers import read_all
from slimpipe.pipeline.job import PipelineOptions, SlimPajamaJob
from slimpipe.sample import write_sample

OPTS = EvalSetOptions(seed=7, min_seqs=8, seq_len=128)


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("evalsample")
    write_sample(d, seed=0, size=0.3)
    return d


@pytest.fixture(scope="module")
def evalset(sample, tmp_path_factory, ray_session) -> Path:
    out = tmp_path_factory.mktemp("eval") / "EVAL"
    build_eval_set([sample], out, OPTS, progress=False)
    return out


def test_every_source_gets_a_stratified_set_with_an_identity(sample, evalset, tmp_path) -> None:
    m = load_manifest(evalset)
    docs, _, _ = read_all([sample])
    sources = set(docs.column("source").to_pylist())
    assert set(m["sources"]) == sources  # every source in the data, arxiv included
    for v in m["sources"].values():
        assert v["docs"] >= 1 and v["tokens"] > 0 and v["files"]
        assert v["too_small"] == (v["reason"] is not None)
        assert v["bytes"] <= 0.1 * v["source_bytes"] + max(len(t.encode()) for t in docs.column("text").to_pylist())
    recs = read_eval_documents(evalset)
    assert len(recs) == sum(v["docs"] for v in m["sources"].values())
    ids = set(docs.column("id").to_pylist())
    assert all(doc_id in ids for _, doc_id, _ in recs)  # stable ids of the raw documents
    assert len(m["eval_set"]) == 64 and (evalset / "report.md").is_file() and not (evalset / "_work").exists()
    # drawn again elsewhere: the same documents, the same identity; another seed: another set
    again = build_eval_set([sample], tmp_path / "again", OPTS, progress=False)
    assert again["eval_set"] == m["eval_set"]
    other = build_eval_set([sample], tmp_path / "other", EvalSetOptions(seed=8, min_seqs=8, seq_len=128),
                           progress=False)
    assert other["eval_set"] != m["eval_set"]
    with pytest.raises(EvalSetError, match="other options"):
        build_eval_set([sample], tmp_path / "other", OPTS, progress=False)


def test_too_small_sources_are_said_loudly(sample, tmp_path, ray_session, capsys) -> None:
    m = build_eval_set([sample], tmp_path / "big", EvalSetOptions(min_tokens=10_000_000), progress=False)
    assert all(v["too_small"] and "10,000,000 tokens" in v["reason"] for v in m["sources"].values())
    assert "WARNING: evaluation set for" in capsys.readouterr().err
    assert "**Too small" in (tmp_path / "big" / "report.md").read_text()


def test_decontaminator_finds_the_document_its_copies_and_near_copies() -> None:
    from pydoc_data.topics import topics

    base, other = topics["while"] + topics["for"], topics["try"]
    d = Decontaminator([("c4", "c4_sample.jsonl:1", base)], load_preset("slimpajama"))
    near = base.replace("loop", "cycle", 1)  # one edit in a long text: J well above 0.8
    codes = d.check(["c4_sample.jsonl:1", "x:1", "x:2", "x:3", "x:4"],
                    [base, base.upper() + "!!", near, other, base[: len(base) // 3]])
    assert codes.tolist() == [EVAL_DOC, EXACT, NEAR, KEEP, KEEP]
    assert d.describe()["recall_at_threshold"] > 0.99


@pytest.mark.parametrize("mode", ["global", "local"])
def test_no_evaluation_document_reaches_a_train_split(sample, evalset, tmp_path, mode, ray_session) -> None:
    params = load_preset("slimpajama").with_overrides(mode=mode)
    opts = PipelineOptions(holdout_fraction=0.05, chunks=2)
    report = SlimPajamaJob([sample], tmp_path / mode, params, opts, progress=False,
                           eval_set={"reuse": evalset}).run()
    out = tmp_path / mode
    assert load_manifest(out / "eval")["eval_set"] == load_manifest(evalset)["eval_set"]
    assert json.loads((out / "manifest.json").read_text())["eval_set"] == load_manifest(evalset)["eval_set"]
    evals = read_eval_documents(evalset)
    eval_ids, eval_texts = {i for _, i, _ in evals}, {t for *_, t in evals}
    train, _, _ = read_all([out / "train"])
    train_ids = {json.loads(m)["slimpipe_id"] for m in train.column("meta").to_pylist()}
    assert not train_ids & eval_ids
    assert not set(train.column("text").to_pylist()) & eval_texts
    e = report["eval_decontamination"]
    removed = sum(n for r in e["removed"].values() for n, _ in r.values())
    assert removed >= 1 and e["eval_set"] == load_manifest(evalset)["eval_set"]
    md = (out / "report.md").read_text()
    assert "## Decontamination against the evaluation set" in md
