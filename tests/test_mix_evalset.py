"""A mix of a SlimPajama folder that holds the one evaluation set (``SLIMPAJAMA_DIR/eval``, drawn by the
real ``slimpipe evalset``): every mix is scored on it, records its identity, and trains on none of it."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from mix_fixtures import build_slimpajama_dir, sample_documents

from slimpipe.evalset.build import EvalSetOptions, build_eval_set, read_eval_documents
from slimpipe.mix.build import MixBuildError, MixOptions, build_mix, resolve_tokenizer
from slimpipe.mix.config import load_mix
from slimpipe.mix.packed import PackedDataset, open_mix
from slimpipe.sample import FILES

SEQ = 64


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, ray_session):
    sample = tmp_path_factory.mktemp("sample")
    docs = sample_documents(sample, size=0.25)
    fx = build_slimpajama_dir(tmp_path_factory.mktemp("slimpajama"), docs)
    build_eval_set([sample / f for f in FILES], fx.root / "eval",
                   EvalSetOptions(seed=3, min_tokens=6000, max_fraction=0.3, min_docs=10), progress=False)
    return fx


def _opt(tokens: int, **kw) -> MixOptions:
    return MixOptions(tokens=tokens, seq_len=SEQ, **{"eval_tokens": 0, **kw})


def test_every_mix_is_scored_on_the_eval_set_and_trains_on_none_of_it(corpus, tmp_path):
    manifest = json.loads((corpus.root / "eval" / "manifest.json").read_text())
    warnings: list[str] = []
    a = build_mix(corpus.root, load_mix("dc1"), tmp_path / "a", _opt(20_000, warn=warnings.append))
    b = build_mix(corpus.root, load_mix("dc6"), tmp_path / "b", _opt(20_000))
    assert a["eval_set"] == b["eval_set"] == manifest["eval_set"]
    assert a["input"]["eval_set"]["eval_set"] == manifest["eval_set"]
    assert "evaluation set" in a["eval_source"]
    assert set(b["epochs"]) == set(load_mix("dc6").active_sources)

    # eval/<source> holds the evaluation set's documents, the same bytes for every mix
    with_docs = {s for s, v in manifest["sources"].items() if v["docs"] and v["tokens"] + v["docs"] >= SEQ}
    _, evals_a = open_mix(tmp_path / "a")
    _, evals_b = open_mix(tmp_path / "b")
    assert set(evals_a) == set(evals_b) == with_docs
    for s in with_docs:
        assert (hashlib.sha256((tmp_path / "a" / "eval" / s / "tokens.bin").read_bytes()).digest()
                == hashlib.sha256((tmp_path / "b" / "eval" / s / "tokens.bin").read_bytes()).digest())
        assert a["eval"]["validation"][s]["from_eval_set"]
    tok = resolve_tokenizer("gpt2")
    eval_docs = read_eval_documents(corpus.root / "eval")
    cc = [t for s, _, t in eval_docs if s == "common_crawl"]
    stream = np.asarray(evals_a["common_crawl"].tokens)
    first = tok.encode(cc[0])[:32]
    assert any(np.array_equal(stream[i : i + len(first)], first) for i in np.flatnonzero(stream == first[0]))

    # the evaluation documents were drawn from the raw sources, so train holds copies: all dropped
    in_train = {t for texts in corpus.train.values() for t in texts}
    planted = sum(1 for s, _, t in eval_docs if t in in_train and s in load_mix("dc6").active_sources)
    assert planted > 0 and sum(e.get("holdout_overlap_dropped", 0) for e in b["sources"].values()) > 0
    train = np.asarray(PackedDataset(tmp_path / "b" / "train").tokens)
    for _, _, text in eval_docs:
        ids = np.array([tok.eos_id, *tok.encode(text)[:48]])
        hits = np.flatnonzero(train == tok.eos_id)
        assert not any(np.array_equal(train[i : i + ids.size], ids) for i in hits), text[:60]


def test_a_broken_eval_set_is_one_clear_error(corpus, tmp_path):
    broken = build_slimpajama_dir(tmp_path / "sp", sample_documents(tmp_path / "s", size=0.1))
    (broken.root / "eval").mkdir()
    (broken.root / "eval" / "manifest.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(MixBuildError, match=r"eval/manifest.json: not an evaluation set"):
        build_mix(broken.root, load_mix("dc1"), tmp_path / "x", _opt(5_000))
    assert not (tmp_path / "x").exists()


def test_every_piece_is_scored_whole_and_the_scored_subset_names_it(corpus, tmp_path):
    """#18.2/#18.3: every evaluation document, cut into the evaluation set's pieces, scored whole (no cap,
    no truncated last document, no dropped tail), one loss per document; what was scored has one identity
    whatever the mix or its seed."""
    import torch

    from slimpipe.evalset.build import cut_pieces
    from slimpipe.mix.packed import scored_subset
    from slimpipe.train.evaluate import final_document_eval, load_document_losses, scored_subset_of
    from slimpipe.train.model import GPT, ModelConfig

    manifest = json.loads((corpus.root / "eval" / "manifest.json").read_text())
    a = build_mix(corpus.root, load_mix("dc1"), tmp_path / "a", _opt(20_000))  # eval_tokens 0: the whole set
    b = build_mix(corpus.root, load_mix("dc6"), tmp_path / "b", _opt(20_000, seed=7))  # another mix and seed
    _, sets = open_mix(tmp_path / "a")
    _, sets_b = open_mix(tmp_path / "b")
    rule = manifest["pieces"]
    expected: dict[str, tuple[list[str], int]] = {}
    entries = []
    for s, ds in sets.items():
        docs = sorted((i, t) for src, i, t in read_eval_documents(corpus.root / "eval") if src == s)
        cuts = {i: cut_pieces(t, rule["chars"], rule["max_per_doc"], seed=rule["seed"], doc_id=i) for i, t in docs}
        entries += [(s, i, x, y) for i, _ in docs for x, y in cuts[i]]
        expected[s] = ([i for i, _ in docs], sum(len(t[x:y].encode()) for i, t in docs for x, y in cuts[i]))
        assert ds.pieces["docs"] == expected[s][0]  # every document of the evaluation set, in id order
        assert ds.index["dropped_tokens"] == 0 and ds.tokens.size == ds.pieces["tokens"].sum() + ds.pieces["tokens"].size + 1
        v = a["eval"]["validation"][s]
        assert v["excluded_from_intervals"] == manifest["sources"][s]["excluded_from_intervals"]
        assert v["docs"] == manifest["sources"][s]["docs"] and v["bytes"] == expected[s][1]
    whole = [s for s in sets if all(len(cut_pieces(t, rule["chars"])) <= rule["max_per_doc"]
                                    for src, _, t in read_eval_documents(corpus.root / "eval") if src == s)]
    assert whole  # sources whose documents are all scored in full: their bytes are the documents' bytes
    for s in whole:
        assert expected[s][1] == manifest["sources"][s]["bytes"]

    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=sets["c4"].vocab_size, n_layer=1, n_head=2, d_model=32, d_ff=85,
                            max_seq_len=SEQ)).eval()
    res = final_document_eval(model, sets, tmp_path / "a", tmp_path / "run", seq_len=SEQ, batch_size=16)
    per_doc, meta = load_document_losses(tmp_path / "run" / "eval_losses.npz")
    for s in sets:
        assert len(per_doc[s]["nll"]) == len(expected[s][0])  # one entry per document, its pieces summed
        assert int(per_doc[s]["bytes"].sum()) == expected[s][1]  # every piece scored whole
        assert int(per_doc[s]["tokens"].sum()) == int(sets[s].pieces["tokens"].sum())
        assert np.all(per_doc[s]["nll"] > 0)
    assert res["scored_subset"] == meta["scored_subset"] == scored_subset(entries) == scored_subset_of(sets_b)
    assert scored_subset_of({s: ds for s, ds in sets.items() if s != "c4"}) != res["scored_subset"]
    excluded = {s: v["reason"] for s, v in manifest["sources"].items() if v["excluded_from_intervals"]}
    assert excluded and set(excluded) != set(manifest["sources"])  # some sources in the intervals, some not
    assert res["excluded_from_intervals"] == excluded
    assert all(res["eval_docs"]["sources"][s]["excluded_from_intervals"] == (s in excluded) for s in sets)
    # a cap (in bytes of the set's own draw order, whole documents, never under min_docs) is another scored
    # subset, the same for any mix and seed
    build_mix(corpus.root, load_mix("dc1"), tmp_path / "c", _opt(20_000, eval_tokens=300))
    build_mix(corpus.root, load_mix("dc6"), tmp_path / "d", _opt(20_000, seed=7, eval_tokens=300))
    _, sets_c = open_mix(tmp_path / "c")
    _, sets_d = open_mix(tmp_path / "d")
    assert scored_subset_of(sets_c) == scored_subset_of(sets_d) != res["scored_subset"]
    for s, ds in sets_c.items():
        n = len(ds.pieces["docs"])
        assert n <= len(expected[s][0]) and n >= min(manifest["min_docs"], len(expected[s][0]))
        assert set(ds.pieces["docs"]) <= set(expected[s][0]) and ds.index["dropped_tokens"] == 0
    assert any(len(ds.pieces["docs"]) < len(expected[s][0]) for s, ds in sets_c.items())  # the cap took fewer
    # the test split is a holdout sample: whole documents, and too few of them to carry an interval
    for v in b["eval"]["test"].values():
        assert v["excluded_from_intervals"] and v["docs"] < 30 and v["dropped_tokens"] == 0
