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
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pyarrow as pa
from numba import njit

__all__ = ["normalize", "clean_for_hash", "clean_for_hash_py", "clean_batch", "CleanBatch", "nfc_changes", "Scratch", "is_short", "MIN_CHARS"]

#: SlimPajama drops documents whose cleaned text is shorter than this many characters.
MIN_CHARS = 200

# string.punctuation is pure ASCII, and in UTF-8 an ASCII byte never occurs inside a multi-byte
# sequence, so deleting those bytes from the UTF-8 encoding deletes exactly those characters.
_PUNCT_BYTES = string.punctuation.encode("ascii")
# Byte classes for the compiled cleaner: 1 = punctuation (delete), 2 = ASCII whitespace (str.isspace).
_ASCII_CLASS = np.zeros(128, dtype=np.uint8)
_ASCII_CLASS[list(_PUNCT_BYTES)] = 1
_ASCII_CLASS[[c for c in range(128) if chr(c).isspace()]] = 2
# What the batch cleaner makes of an ASCII byte: _DELETE (punctuation), 32 (whitespace), else the byte lowercased.
_DELETE = 0x100
_ASCII_MAP = np.array([_DELETE if k == 1 else 32 if k == 2 else ord(chr(c).lower()) for c, k in enumerate(_ASCII_CLASS)],
                      dtype=np.uint16)
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


# --------------------------------------------------------------------------- batches over Arrow buffers
# The read step cleans a whole Arrow batch of texts in two compiled passes over the UTF-8 data buffer and
# its offsets (no Python per document): a scan sorts each document into ASCII, "the tables can take it"
# (every code point in the Basic Multilingual Plane, NFC-safe, with a one-character lowercase) or
# "Python" (anything else: a supplementary-plane character, one that NFC may change, U+0130 whose
# lowercase is two characters, capital sigma whose lowercase depends on its neighbours); only the last
# kind goes through :func:`normalize` and ``str.lower`` in Python, and then through the same compiled
# cleaning with lowercasing off.
_ASCII, _TABLE, _PYTHON = 0, 1, 2
_HANGUL_MAYBE = ((0x1161, 0x1175), (0x11A8, 0x11C2))  # jamo that compose with a preceding syllable


@lru_cache(maxsize=1)
def bmp_tables() -> tuple[np.ndarray, np.ndarray]:
    """``(lower, safe)`` over the 65,536 BMP code points (~20 ms, once per process).

    ``lower[c]`` is ``ord(chr(c).lower())`` where that is one character. ``safe[c]`` is 1 when a text made
    only of safe characters is already NFC and lowercases character by character: ``c`` is NFC on its own
    (Quick_Check not No), is a starter (canonical combining class 0), is not the second part of any
    canonical decomposition nor a Hangul jamo that composes (so Quick_Check is not Maybe: the Unicode
    quick check then answers a definite YES for the whole text), and its lowercase is one character that
    does not depend on context (not U+0130, not U+03A3). Surrogates are not safe.
    """
    lower = np.arange(0x10000, dtype=np.uint32)
    safe = np.zeros(0x10000, dtype=np.uint8)
    second: set[int] = set()
    for c in range(0x10000):
        d = unicodedata.decomposition(chr(c))
        if d and not d.startswith("<"):
            second.update(int(x, 16) for x in d.split()[1:])
    for lo, hi in _HANGUL_MAYBE:
        second.update(range(lo, hi + 1))
    for c in range(0x10000):
        if 0xD800 <= c < 0xE000:
            continue
        ch = chr(c)
        low = ch.lower()
        if len(low) != 1 or c == 0x3A3 or ord(low) >= 0x10000:
            continue
        lower[c] = ord(low)
        if c in second or unicodedata.combining(ch) or not unicodedata.is_normalized("NFC", ch):
            continue
        safe[c] = 1
    lower.setflags(write=False)
    safe.setflags(write=False)
    return lower, safe


@njit(cache=True, nogil=True)
def _scan_kind(data, offsets, safe):
    """Per document: 0 all ASCII, 1 every character BMP and safe, 2 anything else (valid UTF-8 in)."""
    n = offsets.shape[0] - 1
    kind = np.zeros(n, np.uint8)
    for d in range(n):
        i = offsets[d]
        e = offsets[d + 1]
        k = 0
        while i < e:
            c = data[i]
            if c < 0x80:
                i += 1
                continue
            if c >= 0xF0:
                k = 2
                break
            if c >= 0xE0:
                cp = ((np.int64(c) & 0x0F) << 12) | ((np.int64(data[i + 1]) & 0x3F) << 6) | (np.int64(data[i + 2]) & 0x3F)
                i += 3
            else:
                cp = ((np.int64(c) & 0x1F) << 6) | (np.int64(data[i + 1]) & 0x3F)
                i += 2
            if safe[cp] == 0:
                k = 2
                break
            k = 1
        kind[d] = k
    return kind


@njit(inline="always")
def _is_ws(cp):
    return (cp == 0x85 or cp == 0xA0 or cp == 0x1680 or (0x2000 <= cp <= 0x200A) or cp == 0x2028
            or cp == 0x2029 or cp == 0x202F or cp == 0x205F or cp == 0x3000)


@njit(cache=True, nogil=True)
def _clean_batch_kernel(data, offsets, kind, alt, alt_offsets, alt_index, lower, amap, out8, off8, outcp, offcp):
    """:func:`clean_for_hash` of every document data[offsets[d]:offsets[d+1]], as UTF-8 into out8/off8
    and as code points into outcp/offcp. kind 0 lowercases A-Z, 1 lowercases through ``lower``, 2 not at all
    (the text was lowercased in Python: it is alt[alt_offsets[j]:alt_offsets[j+1]], j = alt_index[d], not the
    document's bytes in data). Whitespace and punctuation are judged after lowercasing, as
    ``str.lower`` then ``translate`` then ``split`` do.

    ``amap`` maps an ASCII byte to what it becomes: 0x100 deleted (punctuation), 32 whitespace, else the byte
    (lowercased). A character is written unless it is whitespace following whitespace (or the start);
    a trailing space is taken back at the end of the document. The ASCII loop has no branch per byte
    but the one on its high bit: punctuation deleted between two whitespace runs joins them, as in
    Python, because ``last`` only changes when something is written.
    """
    n = offsets.shape[0] - 1
    n8 = 0
    ncp = 0
    off8[0] = 0
    offcp[0] = 0
    for d in range(n):
        k = kind[d]
        src = data
        i = offsets[d]
        e = offsets[d + 1]
        if k == 2:
            src = alt
            i = alt_offsets[alt_index[d]]
            e = alt_offsets[alt_index[d] + 1]
        startcp = ncp
        last = np.uint32(32)
        while i < e:
            c = src[i]
            if c < 0x80:
                v = np.uint32(amap[c])  # (a text lowercased in Python holds no A-Z for it to change)
                keep = (v != 0x100) & ((v != 32) | (last != 32))
                out8[n8] = np.uint8(v & 0xFF)  # (taken back unless kept)
                outcp[ncp] = v
                n8 += keep
                ncp += keep
                last = v if keep else last
                i += 1
                continue
            c = np.int64(c)
            if c >= 0xF0:
                cp = ((c & 0x07) << 18) | ((np.int64(src[i + 1]) & 0x3F) << 12) | \
                    ((np.int64(src[i + 2]) & 0x3F) << 6) | (np.int64(src[i + 3]) & 0x3F)
                i += 4
            elif c >= 0xE0:
                cp = ((c & 0x0F) << 12) | ((np.int64(src[i + 1]) & 0x3F) << 6) | (np.int64(src[i + 2]) & 0x3F)
                i += 3
            else:
                cp = ((c & 0x1F) << 6) | (np.int64(src[i + 1]) & 0x3F)
                i += 2
            if k == 1:
                cp = np.int64(lower[cp])
            if cp < 0x80:  # a lowercase mapping into ASCII (U+212A KELVIN SIGN -> k; never into A-Z)
                v = np.uint32(amap[cp])
            elif _is_ws(cp):
                v = np.uint32(32)
            else:
                v = np.uint32(cp)
            if v == 0x100 or (v == 32 and last == 32):
                continue
            last = v
            outcp[ncp] = v
            ncp += 1
            if v < 0x80:
                out8[n8] = v
                n8 += 1
            elif v < 0x800:
                out8[n8] = 0xC0 | (v >> 6)
                out8[n8 + 1] = 0x80 | (v & 0x3F)
                n8 += 2
            elif v < 0x10000:
                out8[n8] = 0xE0 | (v >> 12)
                out8[n8 + 1] = 0x80 | ((v >> 6) & 0x3F)
                out8[n8 + 2] = 0x80 | (v & 0x3F)
                n8 += 3
            else:
                out8[n8] = 0xF0 | (v >> 18)
                out8[n8 + 1] = 0x80 | ((v >> 12) & 0x3F)
                out8[n8 + 2] = 0x80 | ((v >> 6) & 0x3F)
                out8[n8 + 3] = 0x80 | (v & 0x3F)
                n8 += 4
        if ncp > startcp and last == 32:  # the trailing whitespace written last is taken back
            n8 -= 1
            ncp -= 1
        off8[d + 1] = n8
        offcp[d + 1] = ncp
    return n8, ncp


@dataclass
class CleanBatch:
    """:func:`clean_for_hash` (after :func:`normalize`) of a batch of texts, as concatenated buffers."""

    utf8: np.ndarray  # uint8: the cleaned texts' UTF-8, concatenated
    offsets: np.ndarray  # int64, n + 1: document d is utf8[offsets[d]:offsets[d + 1]]
    cp: np.ndarray  # uint32: the cleaned texts' code points, concatenated (what MinHash signs)
    cp_offsets: np.ndarray  # int64, n + 1; np.diff gives len(clean) of each document
    nbytes: np.ndarray  # int64: UTF-8 bytes of each NFC text (differs from the input only where NFC changed it)
    python_docs: int  # documents that went through Python (NFC or lowercase beyond the tables)

    def __len__(self) -> int:
        return self.offsets.shape[0] - 1

    def lengths(self) -> np.ndarray:
        """``len(clean)`` of each document (code points)."""
        return np.diff(self.cp_offsets)

    def strings(self) -> pa.LargeStringArray:
        """The cleaned texts as an Arrow array (no copy of the bytes)."""
        return pa.LargeStringArray.from_buffers(len(self), pa.py_buffer(self.offsets), pa.py_buffer(self.utf8))


def _utf8_buffers(texts: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(data uint8, offsets int64 rebased to 0) of a string or large_string Arrow array without nulls."""
    if texts.null_count:
        raise ValueError("clean_batch: texts must not be null")
    if pa.types.is_string(texts.type):
        texts = texts.cast(pa.large_string())
    bufs = texts.buffers()
    offs = np.frombuffer(bufs[1], dtype=np.int64)[texts.offset: texts.offset + len(texts) + 1]
    data = np.frombuffer(bufs[2] if bufs[2] is not None else b"", dtype=np.uint8)
    if offs.size and offs[0]:
        data, offs = data[offs[0]: offs[-1]], offs - offs[0]
    return data, np.ascontiguousarray(offs)


def nfc_changes(texts: pa.Array) -> dict[int, bytes]:
    """The UTF-8 of ``normalize(t)`` for each text of an Arrow string array (no nulls) that NFC changes, by
    index. Only the texts the compiled tables cannot clear (see :func:`bmp_tables`) are decoded, as in
    :func:`clean_batch`; every other text is NFC already."""
    if not len(texts):
        return {}
    data, offs = _utf8_buffers(texts)
    _, safe = bmp_tables()
    out: dict[int, bytes] = {}
    for d in np.flatnonzero(_scan_kind(data, offs, safe) == _PYTHON).tolist():
        text = data[offs[d]:offs[d + 1]].tobytes().decode("utf-8")
        nfc = normalize(text)
        if nfc is not text:
            out[d] = nfc.encode("utf-8")
    return out


class Scratch:
    """Output buffers reused from one :func:`clean_batch` call to the next (fresh pages cost ~10% of the
    cleaning); a batch's :class:`CleanBatch` is valid until the next call with the same scratch."""

    def __init__(self) -> None:
        self.out8 = np.empty(0, np.uint8)
        self.outcp = np.empty(0, np.uint32)

    def get(self, n8: int, ncp: int) -> tuple[np.ndarray, np.ndarray]:
        if self.out8.shape[0] < n8:
            self.out8 = np.empty(n8 + (n8 >> 3), np.uint8)
        if self.outcp.shape[0] < ncp:
            self.outcp = np.empty(ncp + (ncp >> 3), np.uint32)
        return self.out8, self.outcp


def clean_batch(texts: pa.Array, scratch: Scratch | None = None) -> CleanBatch:
    """``clean_for_hash(normalize(t))`` of every text of an Arrow string array, in compiled passes.

    Equal to the per-document functions for every valid Unicode text (the tests compare them on random
    and real texts); only the documents the tables cannot take (see :func:`bmp_tables`) are decoded in
    Python, for NFC and ``str.lower``, and cleaned from a side buffer (the batch's buffer is not copied).
    """
    data, offs = _utf8_buffers(texts)
    n = len(texts)
    lower, safe = bmp_tables()
    kind = _scan_kind(data, offs, safe) if n else np.zeros(0, np.uint8)
    nbytes = np.diff(offs)
    slow = np.flatnonzero(kind == _PYTHON)
    alt_index = np.zeros(n, np.int64)
    alt_offsets = np.zeros(slow.size + 1, np.int64)
    pieces: list[bytes] = []
    for j, d in enumerate(slow.tolist()):  # only documents beyond the tables (NFC check, full lowercasing)
        text = data[offs[d]:offs[d + 1]].tobytes().decode("utf-8")
        nfc = normalize(text)
        if nfc is not text:
            nbytes[d] = len(nfc.encode("utf-8"))
        pieces.append(nfc.lower().encode("utf-8"))
        alt_index[d] = j
        alt_offsets[j + 1] = alt_offsets[j] + len(pieces[-1])
    alt = np.frombuffer(b"".join(pieces), dtype=np.uint8)  # read-only, as data is: one compiled specialisation
    # lowercasing through the tables can lengthen a character's UTF-8 (U+023A, 2 bytes -> U+2C65, 3 bytes)
    total = data.shape[0] + alt.shape[0]
    out8, outcp = (scratch or Scratch()).get(total * 3 // 2 + 4, total + 1)
    off8 = np.zeros(n + 1, np.int64)
    offcp = np.zeros(n + 1, np.int64)
    n8 = ncp = 0
    if n:
        n8, ncp = _clean_batch_kernel(data, offs, kind, alt, alt_offsets, alt_index, lower, _ASCII_MAP,
                                      out8, off8, outcp, offcp)
    return CleanBatch(out8[:n8], off8, outcp[:ncp], offcp, nbytes.astype(np.int64), int(slow.size))
