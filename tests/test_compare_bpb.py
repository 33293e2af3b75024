"""Per-document bits per byte (the figure compare ranks on) and the per-document losses file."""

from __future__ import annotations

import math
from pathlib import Path
from pydoc_data.topics import topics

import numpy as np
import pytest
import torch

from slimpipe.mix.packed import open_mix, write_mix
from slimpipe.mix.tokenizer import load_tokenizer, train_bpe
from slimpipe.train.evaluate import (
    documents,
    evaluate_documents,
    final_document_eval,
    load_document_losses,
    save_document_losses,
)
from slimpipe.train.model import GPT, ModelConfig

L = 32


@pytest.fixture(scope="module")
def mix(tmp_path_factory) -> tuple[Path, dict[str, list[str]]]:
    root = tmp_path_factory.mktemp("docbpb")
    docs = [topics[k] for k in sorted(topics)]
    tok = train_bpe(docs, vocab_size=400, out=root / "bpe")
    # short documents (one window), and long ones (several windows each, > L tokens)
    evals = {"wikipedia": [d[:60] for d in docs[:5]], "github": [d[:900] for d in docs[5:8]]}
    write_mix(root / "mix", docs[10:40], evals, tok, L)
    return root / "mix", evals


@pytest.fixture(scope="module")
def model(mix) -> GPT:
    torch.manual_seed(0)
    train_set, _ = open_mix(mix[0])
    return GPT(ModelConfig(vocab_size=train_set.vocab_size, n_layer=1, n_head=2, d_model=32, d_ff=85,
                           max_seq_len=L)).eval()


def _alone(model: GPT, eos: int, ids: list[int]) -> float:
    """NLL of one document scored by itself with rolling windows of L targets, full context."""
    stream = torch.tensor([eos] + ids)
    total, a = 0.0, 1
    while a < len(stream):
        b = min(a + L, len(stream))
        lo = max(1, b - L)
        with torch.no_grad():
            _, loss = model(stream[lo - 1 : b - 1][None], stream[lo:b][None], reduction="none")
        total += float(loss[a - lo :].double().sum())
        a = b
    return total


def test_each_document_is_scored_alone_with_exact_bytes(mix, model) -> None:
    mix_dir, evals = mix
    tok = load_tokenizer(mix_dir / "tokenizer")
    _, sets = open_mix(mix_dir)
    summary, per_doc = evaluate_documents(model, sets, seq_len=L, batch_size=3, byte_lengths=tok.byte_lengths,
                                          decode=tok.decode)
    for source, texts in evals.items():
        d = per_doc[source]
        spans = documents(sets[source])
        # packing may cut the last document; every other one is whole, in order
        whole = len(texts) - (1 if spans.shape[0] and d["tokens"][-1] < len(tok.encode(texts[-1])) else 0)
        assert len(d["nll"]) in (len(texts), whole)
        for i in range(whole):
            ids = tok.encode(texts[i])
            assert d["tokens"][i] == len(ids)  # no EOS prediction counted
            assert d["bytes"][i] == len(texts[i].encode("utf-8"))
            assert d["nll"][i] == pytest.approx(_alone(model, tok.eos_id, ids), rel=1e-5)
        got = summary["sources"][source]
        assert got["bpb"] == pytest.approx(d["nll"].sum() / (math.log(2) * d["bytes"].sum()), rel=1e-9)
    assert max(per_doc["github"]["tokens"]) > 2 * L  # the long documents really took several windows
    tot = summary["total"]
    assert tot["docs"] == sum(len(v["nll"]) for v in per_doc.values())
    assert "never predicted" in summary["definition"]


def test_losses_file_round_trips_and_final_eval_records_eval_set(mix, model, tmp_path) -> None:
    mix_dir, _ = mix
    _, sets = open_mix(mix_dir)
    res = final_document_eval(model, sets, mix_dir, tmp_path, seq_len=L, batch_size=4)
    per_doc, meta = load_document_losses(tmp_path / "eval_losses.npz")
    assert set(per_doc) == set(sets) and meta["seq_len"] == L
    assert res["eval_docs"]["total"]["bytes"] == sum(int(v["bytes"].sum()) for v in per_doc.values())
    assert "eval_set" in res  # None: this hand-made mix has no manifest
    save_document_losses(tmp_path / "x.npz", {"a": {k: np.arange(3) for k in ("nll", "tokens", "bytes")}})
    back, _ = load_document_losses(tmp_path / "x.npz")
    assert back["a"]["bytes"].tolist() == [0, 1, 2]


def test_a_mix_without_tokenizer_is_named_not_crashed(mix, model, tmp_path) -> None:
    import shutil

    copy = tmp_path / "mix"
    shutil.copytree(mix[0], copy)
    shutil.rmtree(copy / "tokenizer")
    _, sets = open_mix(copy)
    res = final_document_eval(model, sets, copy, tmp_path, seq_len=L, batch_size=4)
    assert "no tokenizer" in res["eval_docs"]["error"]
