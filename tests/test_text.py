"""Text preparation: NFC, SlimPajama's exact cleaning, the short-document filter."""

from __future__ import annotations

import random
import re
import string
import unicodedata

from slimpipe.text import MIN_CHARS, clean_for_hash, is_short, normalize
from slimpipe.text.normalize import clean_for_hash_py

# Whitespace and near-misses: every multi-byte whitespace plus code points whose UTF-8 bytes differ from
# one of them in a single byte (U+200B, U+2027, U+202A, U+2060, U+1681, U+3001, U+0080, U+00A1, ...).
WHITESPACE = " \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f\x85\xa0\u1680\u2000\u2005\u200a\u2028\u2029\u202f\u205f\u3000"
NEAR_MISSES = "\u200b\u2027\u202a\u202e\u2060\u205e\u1681\u1780\u3001\u2f00\x80\xa1\x84\u180e\ufeff"
TRICKY = WHITESPACE + NEAR_MISSES


def slimpajama_clean(s: str) -> str:
    """SlimPajama's cleaning as written in its dedup code (the reference we must match exactly)."""
    s = s.lower()
    s = s.translate(str.maketrans("", "", string.punctuation))
    return re.sub(r"\s+", " ", s.strip())


def test_normalize_composes_to_nfc():
    decomposed = "Cafe\u0301 \u212b"  # e + combining acute; ANGSTROM SIGN
    assert normalize(decomposed) == "Café \u00c5"
    assert normalize(decomposed) == unicodedata.normalize("NFC", decomposed)


def test_normalize_returns_nfc_text_unchanged():
    text = "already NFC: café, naïve, 東京"
    assert normalize(text) is text
    assert normalize(normalize("e\u0301")) == normalize("e\u0301")


def test_clean_basic():
    assert clean_for_hash("  Hello,   World!\n\tIt's  (a) TEST...  ") == "hello world its a test"
    assert clean_for_hash("") == ""
    assert clean_for_hash(" \n\t ") == ""
    assert clean_for_hash("!!!") == ""


def test_clean_keeps_non_ascii_punctuation_like_slimpajama():
    # string.punctuation is ASCII only: typographic quotes and dashes survive, as in SlimPajama.
    text = "“Quoted” — em-dash… ¿qué? «guillemets»"
    assert clean_for_hash(text) == slimpajama_clean(text) == "“quoted” — emdash… ¿qué «guillemets»"


def test_clean_unicode_whitespace_and_case():
    text = "A\u00a0B\u3000C\x1cD\x85E\u2028F\u200bG İSTANBUL ΣΑΣ"
    assert clean_for_hash(text) == slimpajama_clean(text)
    assert "\u200b" in clean_for_hash(text)  # zero-width space is not whitespace for str or re


def test_clean_lone_surrogates_and_astral():
    text = "x\ud800y, \U0001f600 z!"
    assert clean_for_hash(text) == slimpajama_clean(text) == "x\ud800y \U0001f600 z"


def test_whitespace_of_split_equals_regex_whitespace():
    # Our split()/join relies on str.isspace and re's \s being the same set of code points.
    ws_split = {c for c in range(0x3100) if chr(c).isspace()}
    ws_regex = {c for c in range(0x3100) if re.match(r"\s", chr(c))}
    assert ws_split == ws_regex


def test_clean_matches_slimpajama_on_random_strings():
    """Short strings take the pure-Python path, long ones the compiled pass: both must match."""
    rng = random.Random(0)
    ascii_alphabet = string.ascii_letters + string.digits + string.punctuation + " \t\n\r\x0b\x0c\x1c\x1f"
    alphabet = ascii_alphabet + TRICKY + "éÉßİıΣσςЖж東京“”—…\U0001f600\u0301\ud800"
    for i in range(1500):
        chars = ascii_alphabet if i % 3 == 0 else alphabet  # pure-ASCII texts have their own fast path
        s = "".join(rng.choice(chars) for _ in range(rng.choice((rng.randint(0, 80), rng.randint(256, 900)))))
        assert clean_for_hash(s) == slimpajama_clean(s) == clean_for_hash_py(s), repr(s)


def test_every_whitespace_code_point_separates_words():
    whitespace = [chr(c) for c in range(0x110000) if chr(c).isspace()]
    assert len(whitespace) == 29
    pad = "x" * 300  # long enough for the compiled path
    for ws in whitespace:
        assert clean_for_hash(f"{pad}A{ws}{ws}B{pad}") == f"{pad}a b{pad}", hex(ord(ws))
        assert clean_for_hash(f"{ws}{pad}{ws}") == pad
    for near in NEAR_MISSES:  # not whitespace: must stay inside the word
        assert not near.isspace()
        assert clean_for_hash(f"{pad}a{near}b") == f"{pad}a{near}b", hex(ord(near))


def test_clean_is_idempotent():
    s = "Some TEXT, with punctuation!! and   spaces\n"
    once = clean_for_hash(s)
    assert clean_for_hash(once) == once


def test_is_short_boundary():
    assert MIN_CHARS == 200
    assert is_short("a" * 199)
    assert not is_short("a" * 200)
    assert is_short("abc", min_chars=4) and not is_short("abcd", min_chars=4)


def test_clean_matches_slimpajama_on_corpus(redpajama_mini):
    import io
    import json

    import zstandard

    for path in sorted(redpajama_mini.glob("*.jsonl.zst")):
        with path.open("rb") as fh:
            reader = io.TextIOWrapper(zstandard.ZstdDecompressor().stream_reader(fh), encoding="utf-8")
            for i, line in enumerate(reader):
                text = normalize(json.loads(line)["text"])
                assert clean_for_hash(text) == slimpajama_clean(text), (path.name, i)
                if i >= 20:
                    break
