"""#18.7: slimpipe's per-document NLL (``eval_losses.npz``) equals lm-evaluation-harness's
``loglikelihood_rolling`` on the exported run (``lm_eval.models.huggingface.HFLM``) over the same texts:
every evaluation document is matched by its saved id, scored as its pieces (character ranges named in the
set's ``pieces.json``), each piece a rolling log-likelihood request, summed per document."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from export_fixtures import MICRO_YAML, OFFLINE, real_texts

lm_eval = pytest.importorskip("lm_eval")
pytest.importorskip("transformers")

from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.models.huggingface import HFLM  # noqa: E402

from slimpipe.hf.export import export_hf  # noqa: E402
from slimpipe.mix.packed import PackedDataset, PackedWriter, eval_path, write_mix  # noqa: E402
from slimpipe.mix.tokenizer import train_bpe  # noqa: E402
from slimpipe.train.evaluate import load_document_losses  # noqa: E402
from slimpipe.train.loop import train  # noqa: E402
from slimpipe.train.plan import TrainConfig  # noqa: E402

SEQ = 64
PIECE_CHARS = 900  # long documents become several pieces, each several rolling windows of SEQ tokens


def _eval_documents() -> dict[str, str]:
    """Three documents of several pieces and three of one (pydoc topics none of the training texts)."""
    texts = real_texts()
    picked = [t for t in texts if 2500 < len(t) < 4000][:3] + [t for t in texts if 200 < len(t) < 600][:3]
    return {f"wikipedia/doc{i}.jsonl:{i}": t for i, t in enumerate(picked)}


@pytest.fixture(scope="module")
def scored(tmp_path_factory) -> tuple[Path, Path, dict[str, str]]:
    """A micro run trained on pydoc's topics, its evaluation set cut into pieces, exported for HF."""
    root = tmp_path_factory.mktemp("parity")
    docs = _eval_documents()
    train_texts = [t for t in real_texts() if t not in docs.values()]
    tok = train_bpe(real_texts(), vocab_size=512, out=root / "bpe")
    write_mix(root / "mix", train_texts, {"wikipedia": ["placeholder"]}, tok, SEQ)
    texts, labels = [], []
    for doc_id, text in docs.items():
        for a in range(0, len(text), PIECE_CHARS):
            b = min(len(text), a + PIECE_CHARS)
            texts.append(text[a:b])
            labels.append((doc_id, a, b))
    with PackedWriter(eval_path(root / "mix", "wikipedia"), SEQ, vocab_size=tok.vocab_size, eos_id=tok.eos_id,
                      tokenizer=tok, meta={"set": "eval/wikipedia"}, overwrite=True, keep_tail=True) as w:
        w.add_texts(texts, tok, labels)
    (root / "micro.yaml").write_text(MICRO_YAML)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(TrainConfig(mix_dir=str(root / "mix"), out_dir=str(root / "run"), model=str(root / "micro.yaml"),
                          max_steps=12, eval_interval=0, eval_sequences=2, export=True, device="cpu"))
    finally:
        torch.set_num_threads(threads)
    return root / "run", root / "mix", docs


def test_rolling_loglikelihood_matches_slimpipe_per_document(scored, tmp_path, monkeypatch) -> None:
    run, mix, docs = scored
    for k, v in OFFLINE.items():
        monkeypatch.setenv(k, v)
    per_doc, meta = load_document_losses(run / "eval_losses.npz")
    ds = PackedDataset(eval_path(mix, "wikipedia"))
    pieces = ds.pieces
    assert pieces is not None and len(pieces["docs"]) == len(docs) and len(pieces["doc"]) > len(docs)
    ids = pieces["docs"]  # the saved identities, in the order of eval_losses.npz's entries
    nll = per_doc["wikipedia"]["nll"]
    assert nll.shape == (len(ids),) and meta["seq_len"] == SEQ

    hf = export_hf(run, tmp_path / "hf")
    lm = HFLM(pretrained=str(hf), trust_remote_code=True, dtype="float32", device="cpu", batch_size=4,
              max_length=meta["seq_len"])
    assert lm.prefix_token_id == ds.eos_id  # each piece opens on end-of-text, as slimpipe scores it
    requests = [Instance(request_type="loglikelihood_rolling", doc={}, arguments=(docs[ids[d]][a:b],), idx=i)
                for i, (d, a, b) in enumerate(zip(pieces["doc"].tolist(), pieces["start"].tolist(),
                                                  pieces["end"].tolist(), strict=True))]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ll = np.array(lm.loglikelihood_rolling(requests), dtype=np.float64)
    finally:
        torch.set_num_threads(threads)
    theirs = np.bincount(pieces["doc"], weights=-ll, minlength=len(ids))
    rel = np.abs(theirs - nll) / np.abs(nll)
    print(f"lm-eval vs slimpipe per-document NLL: max relative difference {rel.max():.2e} over {len(ids)} documents "
          f"({len(requests)} pieces)", json.dumps(dict(zip(ids, nll.round(4).tolist(), strict=True))))
    assert rel.max() <= 1e-5, list(zip(ids, nll.tolist(), theirs.tolist(), strict=True))
    # and the token counts agree: lm-eval's tokenizer makes the pieces slimpipe packed
    tokens = np.bincount(pieces["doc"], weights=[len(lm.tok_encode(r.args[0])) for r in requests], minlength=len(ids))
    assert tokens.astype(np.int64).tolist() == per_doc["wikipedia"]["tokens"].tolist()
