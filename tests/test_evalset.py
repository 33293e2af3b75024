"""One evaluation set drawn from the raw sources, and every training split decontaminated against it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from slimpipe.dedup.params import load_preset
from slimpipe.evalset.build import (
    MIN_DOCS,
    EvalSetError,
    EvalSetOptions,
    build_eval_set,
    cut_pieces,
    load_manifest,
    read_eval_documents,
)
from slimpipe.evalset.decontaminate import CONTAINED, EVAL_DOC, EXACT, KEEP, NEAR, Decontaminator
from slimpipe.io.readers import read_all
from slimpipe.pipeline.job import PipelineOptions, SlimPajamaJob
from slimpipe.sample import write_sample

OPTS = EvalSetOptions(seed=7, min_seqs=8, seq_len=128, min_docs=5)  # the 0.3 sample: some sources reach 5, some not


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
    for s, v in m["sources"].items():
        # never more than 10% of a source, in documents and in bytes
        assert v["docs"] <= 0.1 * v["source_docs"] and v["bytes"] <= 0.1 * v["source_bytes"]
        assert v["excluded_from_intervals"] == v["too_small"] == (v["docs"] < 5) == (v["reason"] is not None)
        assert (s in m["excluded_from_intervals"]) == v["excluded_from_intervals"]
        if v["docs"]:
            assert v["pieces"] >= v["docs"] and 0 < v["scored_bytes"] <= v["bytes"] and v["tokens"] > 0 and v["files"]
    assert {v["excluded_from_intervals"] for v in m["sources"].values()} == {True, False}  # both kinds drawn
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


def _write_source(path: Path, n_docs: int, words: int) -> None:
    import zstandard

    lines = [json.dumps({"text": " ".join(f"w{(i * 7919 + j) % 1000}" for j in range(words)) + f" doc {i}",
                         "meta": {"n": i}}) for i in range(n_docs)]
    path.write_bytes(zstandard.ZstdCompressor().compress(("\n".join(lines) + "\n").encode()))


def test_at_least_30_documents_per_source_or_excluded_by_name(tmp_path, ray_session, capsys) -> None:
    """The default rule: 30 documents per source within 10% of it; a source that cannot is excluded
    from intervals, named with its reason in the manifest, the report and on stderr."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    _write_source(corpus / "c4_sample.jsonl.zst", 400, 40)  # 10% = 40 documents
    _write_source(corpus / "book_sample.jsonl.zst", 120, 40)  # 10% = 12 documents: too few
    m = build_eval_set([corpus], tmp_path / "EVAL", EvalSetOptions(seq_len=64, min_seqs=1), progress=False)
    c4, book = m["sources"]["c4"], m["sources"]["book"]
    assert MIN_DOCS == m["min_docs"] == 30
    assert 30 <= c4["docs"] <= 40 and not c4["excluded_from_intervals"] and c4["reason"] is None
    assert book["docs"] == 12 and book["excluded_from_intervals"] and book["too_small"]
    assert "book has 120 document(s)" in book["reason"] and "left out of the total and mean intervals" in book["reason"]
    assert m["excluded_from_intervals"] == {"book": book["reason"]}
    assert "WARNING: evaluation set for book is too small" in capsys.readouterr().err
    report = (tmp_path / "EVAL" / "report.md").read_text()
    assert "**Too small: excluded from the total and mean intervals" in report and f"**book**: {book['reason']}" in report
    # the documents' pieces: every piece of a short document, the whole text
    docs = read_eval_documents(tmp_path / "EVAL")
    assert c4["pieces"] == sum(len(cut_pieces(t, m["pieces"]["chars"], 8)) for s, _, t in docs if s == "c4")
    assert c4["scored_bytes"] == c4["bytes"] == sum(len(t.encode()) for s, _, t in docs if s == "c4")


def test_pieces_cover_a_document_and_a_long_one_is_a_stable_seeded_choice() -> None:
    text = " ".join(f"word{i}" for i in range(3000))  # ~26k characters
    pieces = cut_pieces(text, 1000)
    assert "".join(text[a:b] for a, b in pieces) == text  # consecutive, the whole text
    assert all(b - a <= 1000 for a, b in pieces) and all(text[b - 1] == " " for a, b in pieces[:-1])
    few = cut_pieces(text, 1000, 4, seed=1, doc_id="x")
    assert len(few) == 4 and set(few) <= set(pieces) and few == sorted(few)
    assert few == cut_pieces(text, 1000, 4, seed=1, doc_id="x")  # stable
    assert few != cut_pieces(text, 1000, 4, seed=1, doc_id="y")  # another document, another choice
    assert cut_pieces("", 1000) == [] and cut_pieces("abc", 1000) == [(0, 3)]


def test_decontaminator_finds_the_document_its_copies_and_near_copies() -> None:
    from pydoc_data.topics import topics

    base, other = topics["while"] + topics["for"], topics["try"]
    d = Decontaminator([("c4", "c4_sample.jsonl:1", base)], load_preset("slimpajama"))
    near = base.replace("loop", "cycle", 1)  # one edit in a long text: J well above 0.8
    codes = d.check(["c4_sample.jsonl:1", "x:1", "x:2", "x:3", "x:4"],
                    [base, base.upper() + "!!", near, other, base[: len(base) // 3]])
    # the last: a third of the evaluation document, J ~ 0.33 but every one of its windows in it (#18.6)
    assert codes.tolist() == [EVAL_DOC, EXACT, NEAR, KEEP, CONTAINED]
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
