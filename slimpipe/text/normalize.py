"""Text normalisation and the cleaning that feeds hashing (SlimPajama steps 1 and 2).

SlimPajama normalised every document with ``ftfy.fix_text(doc, normalization="NFC")``. ftfy does much
more than NFC: it repairs mojibake, HTML entities, curly quotes, and so on, with heuristics that change
between ftfy releases. We deliberately apply **only** Unicode NFC: it is deterministic across versions,
fast (C code in :mod:`unicodedata`), and needs no extra dependency. Texts that ftfy would have repaired
therefore hash slightly differently than in SlimPajama; for deduplication this only matters when two
copies of a document differ by mojibake alone.

:func:`clean_for_hash` is exactly SlimPajama's cleaning: lowercase, delete every character of
:data:`string.punctuation`, collapse whitespace runs to one space, strip.
"""

from __future__ import annotations

import string
import unicodedata

import numpy as np
from numba import njit

__all__ = ["normalize", "clean_for_hash", "clean_for_hash_py", "is_short", "MIN_CHARS"]

#: SlimPajama drops documents whose cleaned text is shorter than this many characters.
MIN_CHARS = 200

# string.punctuation is pure ASCII, and in UTF-8 an ASCII byte never occurs inside a multi-byte
# sequence, so deleting those bytes from the UTF-8 encoding deletes exactly those characters.
_PUNCT_BYTES = string.punctuation.encode("ascii")
# Byte classes for the compiled cleaner: 1 = punctuation (delete), 2 = ASCII whitespace (str.isspace).
_ASCII_CLASS = np.zeros(128, dtype=np.uint8)
_ASCII_CLASS[list(_PUNCT_BYTES)] = 1
_ASCII_CLASS[[c for c in range(128) if chr(c).isspace()]] = 2
# Texts shorter than this go through the pure-Python path: below it the compiled call costs more than
# it saves.
_SHORT = 256


def normalize(text: str) -> str:
    """Unicode NFC only (SlimPajama used ftfy.fix_text(NFC), which also fixes mojibake; see module doc).

    ``is_normalized`` is a fast check, so already-NFC text (nearly all of it) is returned as is.
    """
    if unicodedata.is_normalized("NFC", text):
        return text
    return unicodedata.normalize("NFC", text)


@njit(cache=True, nogil=True)
def _clean_utf8(b, ascii_class, lower_ascii):
    """Delete ASCII punctuation, collapse whitespace runs to one space, strip; UTF-8 bytes in and out.

    With ``lower_ascii`` it also lowercases A-Z (callers set it only for pure-ASCII text, where that is
    exactly ``str.lower``).

    The non-ASCII whitespace of ``str.isspace`` (and of ``re``'s ``\\s``) is exactly U+0085, U+00A0,
    U+1680, U+2000-U+200A, U+2028, U+2029, U+202F, U+205F and U+3000; they are matched by their UTF-8
    bytes (a test checks the list against Python over all code points).
    """
    L = b.shape[0]
    out = np.empty(L, np.uint8)
    n = 0
    pending = False
    i = 0
    while i < L:
        c = b[i]
        k = 1
        ws = False
        if c < 0x80:
            cls = ascii_class[c]
            if cls == 1:
                i += 1
                continue
            ws = cls == 2
        else:
            k = 4 if c >= 0xF0 else (3 if c >= 0xE0 else 2)
            if k == 2:
                ws = c == 0xC2 and (b[i + 1] == 0x85 or b[i + 1] == 0xA0)
            elif k == 3:
                c1 = b[i + 1]
                c2 = b[i + 2]
                if c == 0xE2:
                    if c1 == 0x80:
                        ws = c2 <= 0x8A or c2 == 0xA8 or c2 == 0xA9 or c2 == 0xAF
                    elif c1 == 0x81:
                        ws = c2 == 0x9F
                elif c == 0xE1:
                    ws = c1 == 0x9A and c2 == 0x80
                elif c == 0xE3:
                    ws = c1 == 0x80 and c2 == 0x80
        if ws:
            pending = True
        else:
            if pending and n > 0:
                out[n] = 32
                n += 1
            pending = False
            if k == 1:
                out[n] = c + 32 if lower_ascii and 65 <= c <= 90 else c
            else:
                for j in range(k):
                    out[n + j] = b[i + j]
            n += k
        i += k
    return out[:n]


def clean_for_hash_py(text: str) -> str:
    """The pure-Python version of :func:`clean_for_hash` (same result; used for short texts)."""
    low = text.lower().encode("utf-8", "surrogatepass").translate(None, _PUNCT_BYTES)
    return " ".join(low.decode("utf-8", "surrogatepass").split())


def clean_for_hash(text: str) -> str:
    """Lowercase, remove ``string.punctuation``, collapse whitespace runs to one space, strip.

    Same result as SlimPajama's ``s.translate(punctuation)`` then ``re.sub(r"\\\\s+", " ", s.strip())``.
    Lowercasing stays with ``str.lower`` (full Unicode rules); deleting punctuation and collapsing
    whitespace is one compiled pass over the UTF-8 bytes (which also lowercases pure-ASCII texts). Per core on redpajama-mini: ~12 MB/s for
    SlimPajama's code, ~22 MB/s for ``bytes.translate`` + ``split``/``join`` (the object per word is the
    cost), ~60 MB/s here. ``surrogatepass`` keeps lone surrogates (valid in JSON) intact.
    """
    if len(text) < _SHORT:
        return clean_for_hash_py(text)
    if text.isascii():  # O(1) in CPython; ASCII lowercasing then happens inside the compiled pass
        out = _clean_utf8(np.frombuffer(text.encode("ascii"), dtype=np.uint8), _ASCII_CLASS, True)
        return out.tobytes().decode("ascii")
    low = text.lower().encode("utf-8", "surrogatepass")
    out = _clean_utf8(np.frombuffer(low, dtype=np.uint8), _ASCII_CLASS, False)
    return out.tobytes().decode("utf-8", "surrogatepass")


def is_short(clean: str, min_chars: int = MIN_CHARS) -> bool:
    """True when the *cleaned* text has fewer than ``min_chars`` characters (SlimPajama's filter)."""
    return len(clean) < min_chars
