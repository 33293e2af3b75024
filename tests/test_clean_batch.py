"""#21.1: the read step's batched path over Arrow buffers gives what the per-document functions give.

``clean_batch`` (NFC where needed, SlimPajama's cleaning, in compiled passes over a batch's UTF-8 buffer and
offsets), ``exact_hashes_utf8`` and ``band_keys_of`` (MinHash band keys of selected documents of a code-point
buffer) are compared with ``clean_for_hash(normalize(t))``, ``exact_hash`` and ``band_keys(signatures(...))``.
"""

from __future__ import annotations

import importlib
import json
import random
import string
import unicodedata

import numpy as np
import pyarrow as pa
import pytest

from slimpipe.dedup.minhash import band_keys, band_keys_of, exact_hash, exact_hashes_utf8, signatures
from slimpipe.dedup.params import DedupParams, load_preset
from slimpipe.text.normalize import bmp_tables, clean_batch, clean_for_hash, normalize

N = importlib.import_module("slimpipe.text.normalize")  # the package re-exports a function of the same name

# Every Unicode whitespace, near misses, case oddities (U+0130 lowercases to two characters, capital sigma by
# context, U+212A KELVIN SIGN to ASCII k, U+023A to a longer UTF-8 character), NFC changes (e + combining acute,
# U+212B ANGSTROM SIGN, Hangul jamo that compose) and a supplementary-plane character.
ODD = ("\t\n\r\x0b\x0c\x1c\x1d\x1e\x1f\x85\xa0\u1680\u2000\u200a\u2028\u2029\u202f\u205f\u3000"
       "\u200b\u2027\u2060\u180e\ufeff\x80\xa1éÉßİıΣσςЖж東京“”—…ȺK\u212b\u1100\u1161\u11a8가e\u0301\U0001f600\U00010400")


def _expected(texts: list[str]) -> list[str]:
    return [clean_for_hash(normalize(t)) for t in texts]


def _random_texts(seed: int, n: int) -> list[str]:
    rng = random.Random(seed)
    ascii_ = string.ascii_letters + string.digits + string.punctuation + " " * 8
    out = []
    for i in range(n):
        alphabet = ascii_ if i % 3 == 0 else ascii_ + ODD
        out.append("".join(rng.choice(alphabet) for _ in range(rng.choice((rng.randint(0, 40), rng.randint(200, 700))))))
    for _ in range(n // 2):  # any BMP character but surrogates, mixed with ASCII
        out.append("".join(chr(rng.choice((rng.randint(0, 0xD7FF), rng.randint(0xE000, 0xFFFF), rng.randint(32, 126))))
                           for _ in range(rng.randint(1, 60))))
    return out


@pytest.mark.parametrize("kind", ["large", "small", "sliced"])
def test_clean_batch_equals_the_per_document_cleaning(kind):
    texts = _random_texts(1, 1500)
    arr = pa.array(texts, pa.string() if kind == "small" else pa.large_string())
    if kind == "sliced":  # an Arrow slice: offsets that do not start at 0
        arr, texts = arr.slice(17, 900), texts[17:917]
    cb = clean_batch(arr)
    want = _expected(texts)
    assert cb.strings().to_pylist() == want
    assert cb.lengths().tolist() == [len(w) for w in want]
    got_cp = [cb.cp[cb.cp_offsets[i]:cb.cp_offsets[i + 1]].tobytes().decode("utf-32-le") for i in range(len(want))]
    assert got_cp == want
    assert cb.nbytes.tolist() == [len(normalize(t).encode("utf-8")) for t in texts]
    assert 0 < cb.python_docs < len(texts)  # both the tables and the Python way were taken


def test_clean_batch_handles_empty_inputs_and_whitespace_only_texts():
    assert len(clean_batch(pa.array([], pa.large_string()))) == 0
    cb = clean_batch(pa.array(["", " \t\u3000 ", "!!!", "  A  b  ", "x"], pa.large_string()))
    assert cb.strings().to_pylist() == ["", "", "", "a b", "x"]


def test_every_bmp_character_the_tables_take_behaves_alone_and_in_context():
    """The tables' promise, checked over the whole BMP: a safe character is NFC and lowercases alone."""
    lower, safe = bmp_tables()
    ok = np.flatnonzero(safe).tolist()
    assert len(ok) > 50_000
    chars = "".join(chr(c) for c in ok)
    assert unicodedata.is_normalized("NFC", chars)
    assert "".join(chr(lower[c]) for c in ok) == chars.lower()
    # every safe character after every kind of starter keeps the text NFC (no composition with what precedes)
    for lead in "aAeE가ᄀ\u0627":
        assert unicodedata.is_normalized("NFC", lead + chars.replace(lead, "")) or not safe[ord(lead)]
    # and the batch cleaner takes each of them through the tables, not Python, with Python's result
    step = 97
    texts = [chars[i:i + step] + " X, y" for i in range(0, len(chars), step)]
    cb = clean_batch(pa.array(texts, pa.large_string()))
    assert cb.python_docs == 0
    assert cb.strings().to_pylist() == _expected(texts)


def test_batch_hashes_and_band_keys_equal_the_per_document_ones():
    p = load_preset("slimpajama")
    texts = _random_texts(2, 300)
    cb = clean_batch(pa.array(texts, pa.large_string()))
    clean = cb.strings().to_pylist()
    sel = np.array([i for i, c in enumerate(clean) if len(c) >= 20], np.int64)
    assert exact_hashes_utf8(cb.utf8, cb.offsets, sel).tolist() == [exact_hash(clean[i]) for i in sel]
    want = band_keys(signatures([clean[i] for i in sel], p), p.bands, p.rows)
    assert np.array_equal(band_keys_of(cb.cp, cb.cp_offsets, sel, p), want)
    word = DedupParams(unit="word", ngram=3, bands=4, rows=5, num_perm=32)
    want = band_keys(signatures([clean[i] for i in sel], word), word.bands, word.rows)
    assert np.array_equal(band_keys_of(cb.cp, cb.cp_offsets, sel, word), want)
    assert band_keys_of(cb.cp, cb.cp_offsets, np.empty(0, np.int64), p).shape == (0, p.bands)


def test_clean_batch_on_real_text(redpajama_mini):
    import zstandard

    for path in sorted(redpajama_mini.glob("*.jsonl.zst")):
        with path.open("rb") as fh:
            lines = zstandard.ZstdDecompressor().stream_reader(fh).read(4 << 20).split(b"\n")[:-1][:300]
        texts = [json.loads(line)["text"] for line in lines]
        cb = clean_batch(pa.array(texts, pa.large_string()))
        assert cb.strings().to_pylist() == _expected(texts), path.name
        assert cb.nbytes.tolist() == [len(normalize(t).encode("utf-8")) for t in texts]


def test_scan_kind_sorts_documents():
    _, safe = bmp_tables()
    arr = pa.array(["plain ascii", "café", "e\u0301", "\U0001f600", "İ", "Σ"], pa.large_string())
    data, offs = N._utf8_buffers(arr)
    assert N._scan_kind(data, offs, safe).tolist() == [0, 1, 2, 2, 2, 2]
