"""The packed token format: stream layout, exact byte counts, atomic writes, views and shuffling."""

from __future__ import annotations

import json
from pydoc_data.topics import topics

import numpy as np
import pytest

from slimpipe.mix.packed import (
    PackedDataset,
    PackedWriter,
    ShuffledSampler,
    apportion_bytes,
    eval_path,
    open_mix,
    scored_subset,
    token_dtype,
    write_mix,
)
from slimpipe.mix.tokenizer import load_tokenizer, train_bpe

EOS = 7


def _docs(rng: np.random.Generator, n: int, vocab: int = 1000) -> list[tuple[np.ndarray, np.ndarray]]:
    """Random documents (ids avoiding EOS) with random per-token byte lengths."""
    out = []
    for _ in range(n):
        ids = rng.integers(EOS + 1, vocab, size=int(rng.integers(1, 90)))
        out.append((ids, rng.integers(1, 5, size=ids.size)))
    return out


def _write(path, docs, seq_len, **kw) -> dict:
    with PackedWriter(path, seq_len, vocab_size=kw.pop("vocab_size", 1000), eos_id=EOS, **kw) as w:
        for ids, blen in docs:
            w.add(ids, int(blen.sum()), blen)
    return json.loads((path / "index.json").read_text())


def test_stream_layout_and_exact_sequence_bytes(tmp_path):
    docs = _docs(np.random.default_rng(0), 60)
    L = 32
    index = _write(tmp_path / "s", docs, L, flush_tokens=50)
    stream = [EOS]
    stream_bytes = [0]
    for ids, blen in docs:
        stream += ids.tolist() + [EOS]
        stream_bytes += blen.tolist() + [0]
    n = (len(stream) - 1) // L
    ds = PackedDataset(tmp_path / "s")
    assert len(ds) == n == index["n_sequences"]
    assert isinstance(ds.tokens, np.memmap)
    for i in range(n):
        row = ds[i]
        assert row.dtype == np.int64 and row.shape == (L + 1,)
        assert row.tolist() == stream[i * L : i * L + L + 1]
        assert int(ds.seq_bytes[i]) == sum(stream_bytes[i * L + 1 : i * L + L + 1])
    assert index["dropped_tokens"] == len(stream) - 1 - n * L
    assert index["total_bytes"] + index["dropped_bytes"] == sum(int(b.sum()) for _, b in docs)
    assert ds.total_bytes == index["total_bytes"]
    assert index["n_tokens"] == n * L + 1
    assert (tmp_path / "s" / "tokens.bin").stat().st_size == (n * L + 1) * 2
    np.testing.assert_array_equal(ds.get_batch([3, 0, 5]), np.stack([ds[3], ds[0], ds[5]]))


@pytest.mark.parametrize("n_docs", [60, 2])  # many full sequences and a tail; no full sequence at all
def test_an_evaluation_set_keeps_its_tail_and_names_its_pieces(tmp_path, n_docs):
    docs = _docs(np.random.default_rng(5), n_docs)
    L = 32
    with PackedWriter(tmp_path / "e", L, vocab_size=1000, eos_id=EOS, keep_tail=True, flush_tokens=50,
                      warn_empty=False) as w:
        for i, (ids, blen) in enumerate(docs):
            w.add(ids, int(blen.sum()), blen, piece=(f"doc{i // 2}", 100 * (i % 2), 100 * (i % 2) + 50))
    index = json.loads((tmp_path / "e" / "index.json").read_text())
    stream = [EOS]
    for ids, _ in docs:
        stream += ids.tolist() + [EOS]
    ds = PackedDataset(tmp_path / "e")
    n = (len(stream) - 1) // L
    assert len(ds) == n and index["dropped_tokens"] == 0 and index["dropped_bytes"] == 0
    assert np.asarray(ds.tokens).tolist() == stream  # the whole stream: nothing dropped
    assert index["tail_tokens"] == len(stream) - 1 - n * L and index["n_tokens"] == len(stream)
    assert ds.total_bytes == index["total_bytes"]  # what the sequences cover
    assert index["total_bytes"] + index["tail_bytes"] == sum(int(b.sum()) for _, b in docs)
    for i in range(n):
        assert ds[i].tolist() == stream[i * L : i * L + L + 1]
    # pieces.json: every document of the stream, whole, and the source document it belongs to
    p = ds.pieces
    assert p["docs"] == [f"doc{i}" for i in range((n_docs + 1) // 2)] and p["doc"].tolist() == [i // 2 for i in range(n_docs)]
    assert p["bytes"].tolist() == [int(b.sum()) for _, b in docs] and p["start"].tolist()[:2] == [0, 100]
    spans = ds.piece_spans()
    assert [np.asarray(ds.tokens)[a:b].tolist() for a, b in spans] == [ids.tolist() for ids, _ in docs]
    with PackedWriter(tmp_path / "x", L, vocab_size=1000, eos_id=EOS) as w2, pytest.raises(ValueError, match="all its"):
        w2.add(docs[0][0], int(docs[0][1].sum()), docs[0][1], piece=("a", 0, 1))
        w2.add(docs[1][0], int(docs[1][1].sum()), docs[1][1])


def test_scored_subset_is_the_set_of_pieces_not_their_order():
    a = [("c4", "x", 0, 10), ("c4", "y", 0, 5), ("book", "x", 10, 20)]
    assert scored_subset(a) == scored_subset(list(reversed(a))) and len(scored_subset(a)) == 64
    assert scored_subset(a) != scored_subset(a[:2])  # a piece fewer
    assert scored_subset(a) != scored_subset([*a[:2], ("book", "x", 10, 21)])  # another range
    assert scored_subset(a) != scored_subset([*a[:2], ("wikipedia", "x", 10, 20)])  # another source


def test_flush_size_does_not_change_the_files(tmp_path):
    docs = _docs(np.random.default_rng(1), 80)
    _write(tmp_path / "a", docs, 16, flush_tokens=7)
    _write(tmp_path / "b", docs, 16, flush_tokens=1 << 20)
    for name in ("tokens.bin", "seq_bytes.bin"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_dtype_follows_vocab_size(tmp_path):
    assert token_dtype(50257) == np.dtype("<u2")
    assert token_dtype(65536) == np.dtype("<u2")
    assert token_dtype(100_000) == np.dtype("<u4")
    docs = [(np.array([99_999, 70_000, 12]), np.array([1, 1, 1]))] * 5
    index = _write(tmp_path / "big", docs, 4, vocab_size=100_000)
    assert index["dtype"] == "<u4"
    ds = PackedDataset(tmp_path / "big")
    assert ds[0].tolist() == [EOS, 99_999, 70_000, 12, EOS]


def test_nothing_visible_until_finalize_and_abort_cleans_up(tmp_path):
    target = tmp_path / "set"
    w = PackedWriter(target, 8, vocab_size=100, eos_id=EOS)
    w.add(list(range(10, 40)), 30)
    assert not target.exists()
    w.finalize()
    assert (target / "index.json").is_file()
    with pytest.raises(FileExistsError):
        PackedWriter(target, 8, vocab_size=100, eos_id=EOS)
    with pytest.raises(RuntimeError), PackedWriter(tmp_path / "other", 8, vocab_size=100, eos_id=EOS) as w2:
        w2.add([11, 12, 13], 3)
        raise RuntimeError("killed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set"]
    with PackedWriter(target, 4, vocab_size=100, eos_id=EOS, overwrite=True) as w3:
        w3.add(list(range(10, 30)), 20)
    assert PackedDataset(target).stored_seq_len == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set"]


def test_bad_input_is_rejected(tmp_path):
    w = PackedWriter(tmp_path / "x", 8, vocab_size=100, eos_id=EOS)
    with pytest.raises(ValueError):
        w.add([1, 200], 2)  # id outside the vocabulary
    with pytest.raises(ValueError):
        w.add([1, 2], 5, token_bytes=[1, 1])  # byte lengths that do not sum
    with pytest.raises(ValueError):
        w.add([], 3)
    w.abort()
    with pytest.raises(ValueError):
        PackedWriter(tmp_path / "y", 8, vocab_size=100, eos_id=100)


def test_apportioned_bytes_keep_totals_exact():
    for n_bytes, n_tok in [(10, 3), (7, 7), (1, 5), (1000, 1), (0, 4)]:
        parts = apportion_bytes(n_bytes, n_tok)
        assert parts.sum() == n_bytes and len(parts) == n_tok and parts.min() >= 0
        assert parts.max() - parts.min() <= 1


def test_shorter_view_reads_the_same_stream(tmp_path):
    _write(tmp_path / "s", _docs(np.random.default_rng(2), 100), 32)
    full, quarter = PackedDataset(tmp_path / "s"), PackedDataset(tmp_path / "s", 8)
    assert len(quarter) == 4 * len(full)
    for i in range(len(full)):
        for k in range(4):
            assert quarter[4 * i + k].tolist() == full[i][8 * k : 8 * k + 9].tolist()
    assert quarter.prefix_bytes(8) == full.prefix_bytes(2) == int(full.seq_bytes[:2].sum())
    with pytest.raises(ValueError):
        quarter.prefix_bytes(3)
    with pytest.raises(ValueError):
        PackedDataset(tmp_path / "s", 12)
    with pytest.raises(IndexError):
        full[len(full)]


def test_shuffled_order_is_deterministic_and_covers_each_epoch(tmp_path):
    _write(tmp_path / "s", _docs(np.random.default_rng(3), 80), 8)
    ds = PackedDataset(tmp_path / "s")
    n = len(ds)
    a, b = ds.epoch_order(5, 0), ds.epoch_order(5, 0)
    np.testing.assert_array_equal(a, b)
    assert sorted(a.tolist()) == list(range(n))
    assert not np.array_equal(a, ds.epoch_order(5, 1))
    assert not np.array_equal(a, ds.epoch_order(6, 0))
    sampler = ShuffledSampler(ds, seed=5)
    two_epochs = sampler.indices(0, 2 * n)
    np.testing.assert_array_equal(two_epochs[:n], a)
    np.testing.assert_array_equal(two_epochs[n:], ds.epoch_order(5, 1))
    # any window equals the same window taken from the start: the position is the whole data state
    np.testing.assert_array_equal(ShuffledSampler(ds, seed=5).indices(n - 3, 7), two_epochs[n - 3 : n + 4])


def test_eval_paths_use_canonical_source_names(tmp_path):
    assert eval_path(tmp_path, "cc").name == "common_crawl"
    assert eval_path(tmp_path, "RedPajamaGithub").name == "github"
    assert eval_path(tmp_path, "arabic_web").name == "arabic_web"  # any source name is a source
    with pytest.raises(ValueError):
        eval_path(tmp_path, "../etc")


def test_write_mix_with_real_text(tmp_path):
    texts = [topics[k] for k in sorted(topics)]
    tok = load_tokenizer("gpt2")
    indices = write_mix(tmp_path / "mix", texts[:-6], {"wikipedia": texts[-6:-3], "book": texts[-3:]}, tok, 64)
    train, evals = open_mix(tmp_path / "mix")
    assert list(evals) == ["book", "wikipedia"]  # the canonical order of slimpipe.sources
    assert train.tokenizer["identity"] == tok.identity and train.vocab_size == 50257
    assert indices["train"]["bytes_exact"] is True
    total = sum(len(t.encode("utf-8")) for t in texts[:-6])
    assert indices["train"]["total_bytes"] + indices["train"]["dropped_bytes"] == total
    # decoding the targets of a sequence gives exactly as many UTF-8 bytes as recorded
    row = train[3]
    assert len(b"".join(tok.enc.decode_single_token_bytes(t) for t in row[1:] if t != tok.eos_id)) == \
        int(train.seq_bytes[3])
    assert load_tokenizer(tmp_path / "mix" / "tokenizer").identity == tok.identity


def test_open_mix_refuses_mixed_tokenizers(tmp_path):
    texts = [topics[k] for k in sorted(topics)][:30]
    gpt2 = load_tokenizer("gpt2")
    write_mix(tmp_path / "mix", texts[:20], {}, gpt2, 32)
    other = train_bpe(texts, 300, tmp_path / "bpe")
    with PackedWriter(eval_path(tmp_path / "mix", "arxiv"), 32, vocab_size=gpt2.vocab_size, eos_id=gpt2.eos_id,
                      tokenizer=other) as w:
        w.add_texts(texts[20:], gpt2)
    with pytest.raises(ValueError, match="tokenized differently"):
        open_mix(tmp_path / "mix")


def test_inexact_tokenizer_falls_back_to_apportioned_bytes(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    tk = Tokenizer(models.WordLevel({"<|endoftext|>": 0, "[UNK]": 1, "a": 2, "b": 3}, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.save(str(tmp_path / "tokenizer.json"))
    tok = load_tokenizer(tmp_path / "tokenizer.json")
    docs = ["a b a  b", "b b b", "a"] * 10
    with PackedWriter(tmp_path / "s", 4, vocab_size=tok.vocab_size, eos_id=tok.eos_id, tokenizer=tok) as w:
        w.add_texts(docs, tok)
    index = json.loads((tmp_path / "s" / "index.json").read_text())
    assert index["bytes_exact"] is False
    assert index["total_bytes"] + index["dropped_bytes"] == sum(len(d) for d in docs)


def test_a_set_of_parts_reads_as_one_and_tails_carry_over(tmp_path):
    """Parallel packing: each part is its own stream, the tails it could not fill go to a last part, and
    the set reads part after part with exact bytes; no token is lost but the last part's < L."""
    from slimpipe.mix.packed import write_parts_index

    rng = np.random.default_rng(3)
    L = 16
    groups = [_docs(rng, 9), _docs(rng, 14), _docs(rng, 5)]
    tails_ids, tails_bytes, parts = [], [], []
    for k, docs in enumerate(groups):
        with PackedWriter(tmp_path / "set" / f"p{k}", L, vocab_size=1000, eos_id=EOS, warn_empty=False) as w:
            for ids, blen in docs:
                w.add(ids, int(blen.sum()), blen)
        tails_ids.append(w.dropped[0])
        tails_bytes.append(w.dropped[1])
        parts.append(f"p{k}")
    with PackedWriter(tmp_path / "set" / "tails", L, vocab_size=1000, eos_id=EOS, warn_empty=False) as w:
        for ids, blen in zip(tails_ids, tails_bytes, strict=True):
            w.add_raw(ids, blen)
    index = write_parts_index(tmp_path / "set", [*parts, "tails"])
    ds = PackedDataset(tmp_path / "set")
    singles = [PackedDataset(tmp_path / "set" / p) for p in [*parts, "tails"]]
    assert ds.n_parts == 4 and len(ds) == sum(len(x) for x in singles) == index["n_sequences"]
    rows = np.concatenate([x.get_batch(np.arange(len(x))) for x in singles])
    np.testing.assert_array_equal(ds.get_batch(np.arange(len(ds))), rows)
    np.testing.assert_array_equal(ds.get_batch([5, 0, len(ds) - 1]), rows[[5, 0, len(ds) - 1]])
    assert ds[len(ds) - 1].tolist() == rows[-1].tolist()
    # every document token is a target exactly once, except the last part's dropped tail
    doc_tokens = sum(ids.size + 1 for docs in groups for ids, _ in docs)
    assert len(ds) * L + index["dropped_tokens"] == doc_tokens
    all_bytes = sum(int(b.sum()) for docs in groups for _, b in docs)
    assert ds.total_bytes + index["dropped_bytes"] == all_bytes
    # a half view keeps working across parts
    half = PackedDataset(tmp_path / "set", L // 2)
    np.testing.assert_array_equal(half.get_batch([2 * len(singles[0]) + 1])[0],
                                  singles[1][0][L // 2 :])


def test_a_mix_on_s3_is_read_through_a_local_cache(s3_server, tmp_path):
    """The trainer's opener takes a URI: the mix is copied once to local disk (memory-mappable), only
    missing files are fetched again, and a URI without a finished mix is one clear error."""
    from slimpipe import storage
    from slimpipe.mix.packed import local_mix

    texts = [topics[k] for k in sorted(topics)]
    tok = load_tokenizer("gpt2")
    write_mix(tmp_path / "mix", texts[:-4], {"book": texts[-4:]}, tok, 64)
    (tmp_path / "mix" / "manifest.json").write_text("{}\n")
    uri = f"{s3_server['url']}/mixes/m1"
    storage.upload_tree(tmp_path / "mix", uri)
    cache = tmp_path / "cache"
    train, evals = open_mix(uri, cache_dir=cache)
    local, _ = open_mix(tmp_path / "mix")
    assert isinstance(train.tokens, np.memmap) and train.path.is_relative_to(cache)
    np.testing.assert_array_equal(train.get_batch(np.arange(len(train))), local.get_batch(np.arange(len(local))))
    assert list(evals) == ["book"] and evals["book"].total_bytes > 0
    copy = local_mix(uri, cache)
    stamp = (copy / "train" / "tokens.bin").stat().st_mtime_ns
    (copy / "eval" / "book" / "tokens.bin").unlink()
    assert local_mix(uri, cache) == copy  # the missing file is fetched, the others are kept
    assert (copy / "eval" / "book" / "tokens.bin").is_file()
    assert (copy / "train" / "tokens.bin").stat().st_mtime_ns == stamp
    with pytest.raises(FileNotFoundError, match=r"mixes/none: no manifest.json"):
        open_mix(f"{s3_server['url']}/mixes/none", cache_dir=cache)
