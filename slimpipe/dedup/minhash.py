"""MinHash signatures, LSH band keys, exact hashes and exact Jaccard, vectorised with numba.

Scheme ("poly64", the ``hash`` field of :class:`~slimpipe.dedup.params.DedupParams`)
-------------------------------------------------------------------------------
1. **Shingle hash.** The cleaned text is viewed as an array of Unicode code points (UTF-32). Each
   n-gram window gets a 64-bit Rabin-Karp polynomial hash mod 2^64 (rolling, O(1) per character),
   finished with the splitmix64 mixer, so the 64-bit shingle hashes are well spread. Word n-grams hash
   each space-separated word first and roll the same polynomial over the word hashes.
2. **Permutations.** Classic k-permutation MinHash: for each of the K permutations,
   ``pi_k(x) = (a_k * x + b_k) mod 2^32`` (a_k odd, so a bijection of 32-bit space) applied to
   ``x`` = the top 32 bits of the shingle hash, and the signature is the minimum over all shingles.
   Because ``x`` is already a pseudo-random hash, ``argmin pi_k`` is uniform over the shingle set for
   every fixed bijection, so ``P(sig_a[k] == sig_b[k]) = J`` and the estimator ``mean(sig_a == sig_b)``
   is unbiased; the tests check the mean error, the variance against J(1-J)/K, and the LSH band collision
   rate against 1-(1-J^r)^b over thousands of random pairs.
3. **Signature values** are uint32 (like rensa and datatrove's 32-bit mode). Two shingles of one pair
   share a 32-bit ``x`` with probability ~|A u B|^2 / 2^33 and a minimum ties by chance with probability
   ~|B| / 2^32; both are below 1e-3 even for 1M-shingle books and negligible for web pages.

Why this design (one core of the 2-core AMD EPYC Zen 3 / AVX2 development VM, 2M random shingles)
---------------------------------------------------------------------------------------------------
* scalar loop with a branch per (shingle, permutation): 14 M shingles/s - the branch blocks SIMD;
* 64-bit multiply-shift ``(a*x+b) >> 32`` (rensa's R-MinHash family): 23 M/s - AVX2 has no 64-bit
  vector multiply;
* 32-bit affine, branch-free ``min``: 74-110 M/s - LLVM turns the permutation loop into 8-lane AVX2;
* the same, 8 shingles per pass over the K minima (chosen): ~190 M/s - each minimum is loaded and
  stored once per 8 shingles instead of once per shingle;
* the rolling shingle hash alone runs at ~370 M windows/s, so the whole kernel signs ~120 M shingles/s,
  about one shingle per character of cleaned text.
End to end (``signatures`` on cleaned redpajama-mini text, UTF-32 conversion included) that is
~60-110 MB/s of raw text per core depending on machine load, against ~0.04-0.06 MB/s for SlimPajama's
per-shingle ``datasketch`` loop and ~0.3-0.5 MB/s for datatrove on the same shingles;
``benchmarks/bench_signatures.py`` measures it and ``benchmarks/RESULTS.md`` keeps the figures.

Not chosen: one-permutation hashing with densification, O(n + K). rensa's batch ``rho`` sketch is of
this kind; fed our shingle hashes (our hashing inside its time) it measured 61 MB/s against this
kernel's 95 MB/s, interleaved best-of-15 on the same 7.4 MB, because shingle hashing and the UTF-32
copy already dominate. It would add a second estimator to validate for little gain. Deduplicating
shingle hashes first (a sort) costs more than it saves on prose.

All compiled functions are ``cache=True, nogil=True``: compiled once per machine, and callable from
threads without the GIL. Inputs must already be cleaned (:func:`slimpipe.text.clean_for_hash`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np
import xxhash
from numba import njit

if TYPE_CHECKING:
    from slimpipe.dedup.params import DedupParams

__all__ = [
    "signatures",
    "signatures_from_codepoints",
    "band_keys",
    "band_keys_of",
    "exact_hash",
    "exact_hashes",
    "exact_hashes_utf8",
    "shingle_set",
    "jaccard_sets",
    "jaccard_exact",
    "estimate_jaccard",
    "permutation_params",
]

_U64 = (1 << 64) - 1
_MAX32 = np.uint32(0xFFFFFFFF)
# Texts are signed in chunks of about this many code points: the 4 MB UTF-32 copy stays in cache and
# its allocation is reused (8M-character chunks measured ~30% slower end to end).
_CHUNK_CHARS = 1_000_000


# --------------------------------------------------------------------------- seeds and parameters
def _splitmix64(state: int) -> tuple[int, int]:
    """One splitmix64 step in Python ints: derived constants never depend on numpy's RNG streams."""
    state = (state + 0x9E3779B97F4A7C15) & _U64
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _U64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _U64
    return state, z ^ (z >> 31)


@lru_cache(maxsize=32)
def permutation_params(seed: int, num_perm: int) -> tuple[np.uint64, np.uint64, np.uint64, np.ndarray, np.ndarray]:
    """(char/gram base, word base, shingle seed, a[K] odd uint32, b[K] uint32), all derived from ``seed``.

    The same seed always gives the same shingle hashes (independent of ``num_perm``) and the first K
    permutations of a larger K are the permutations of a smaller one.
    """
    state = seed & _U64
    state, base = _splitmix64(state)
    state, wbase = _splitmix64(state)
    state, hseed = _splitmix64(state)
    a = np.empty(num_perm, np.uint32)
    b = np.empty(num_perm, np.uint32)
    for k in range(num_perm):
        state, z = _splitmix64(state)
        a[k] = (z >> 32) | 1
        b[k] = z & 0xFFFFFFFF
    a.setflags(write=False)
    b.setflags(write=False)
    return np.uint64(base | 1), np.uint64(wbase | 1), np.uint64(hseed), a, b


# --------------------------------------------------------------------------- compiled kernels
@njit(inline="always")
def _fmix64(x):
    """splitmix64 finaliser: a bijection of 64-bit space with full avalanche."""
    x ^= x >> np.uint64(30)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return x


@njit(cache=True, nogil=True)
def _word_tokens(cp, start, end, wbase, tok):
    """Hash each space-separated word of cp[start:end] into tok; return the number of words."""
    nt = 0
    h = np.uint64(0)
    ln = 0
    for i in range(start, end):
        c = cp[i]
        if c == 32:
            if ln > 0:
                tok[nt] = _fmix64(h + np.uint64(ln))
                nt += 1
                h = np.uint64(0)
                ln = 0
        else:
            h = h * wbase + np.uint64(c)
            ln += 1
    if ln > 0:
        tok[nt] = _fmix64(h + np.uint64(ln))
        nt += 1
    return nt


@njit(cache=True, nogil=True)
def _gram_hashes(tok, start, ntok, n, base, hseed, out):
    """64-bit hashes of every n-token window of tok[start:start+ntok] into out; return the count.

    Rolling polynomial mod 2^64, then the mixer. Fewer than n tokens (but some): one shingle of all of
    them, so short texts still have a non-empty set. No tokens: no shingles (the empty set).
    """
    if ntok == 0:
        return 0
    if ntok < n:
        h = np.uint64(0)
        for j in range(ntok):
            h = h * base + np.uint64(tok[start + j])
        out[0] = _fmix64(h ^ hseed ^ (np.uint64(ntok) << np.uint64(56)))
        return 1
    top = np.uint64(1)  # base^(n-1): weight of the token leaving the window
    for _ in range(n - 1):
        top *= base
    h = np.uint64(0)
    for j in range(n):
        h = h * base + np.uint64(tok[start + j])
    out[0] = _fmix64(h ^ hseed)
    m = ntok - n + 1
    for i in range(1, m):
        h = (h - np.uint64(tok[start + i - 1]) * top) * base + np.uint64(tok[start + i + n - 1])
        out[i] = _fmix64(h ^ hseed)
    return m


@njit(inline="always")
def _update_mins(h, m, a, b, mins):
    """mins[k] = min over the first m shingles of (a[k] * x + b[k]) mod 2^32, x = top 32 bits of h.

    Eight shingles per pass over k: the k loop becomes 8-lane SIMD and each minimum is loaded and
    stored once per eight shingles rather than once per shingle.
    """
    K = a.shape[0]
    s32 = np.uint64(32)
    m8 = m - m % 8
    for i in range(0, m8, 8):
        x0 = np.uint32(h[i] >> s32)
        x1 = np.uint32(h[i + 1] >> s32)
        x2 = np.uint32(h[i + 2] >> s32)
        x3 = np.uint32(h[i + 3] >> s32)
        x4 = np.uint32(h[i + 4] >> s32)
        x5 = np.uint32(h[i + 5] >> s32)
        x6 = np.uint32(h[i + 6] >> s32)
        x7 = np.uint32(h[i + 7] >> s32)
        for k in range(K):
            ak = a[k]
            bk = b[k]
            v0 = min(np.uint32(ak * x0 + bk), np.uint32(ak * x1 + bk))
            v2 = min(np.uint32(ak * x2 + bk), np.uint32(ak * x3 + bk))
            v4 = min(np.uint32(ak * x4 + bk), np.uint32(ak * x5 + bk))
            v6 = min(np.uint32(ak * x6 + bk), np.uint32(ak * x7 + bk))
            v0 = min(min(v0, v2), min(v4, v6))
            cur = mins[k]
            mins[k] = v0 if v0 < cur else cur
    for i in range(m8, m):
        x = np.uint32(h[i] >> s32)
        for k in range(K):
            v = np.uint32(a[k] * x + b[k])
            cur = mins[k]
            mins[k] = v if v < cur else cur


@njit(inline="always")
def _hashes_into(cp, s, e, n, word, base, wbase, hseed, tok, out):
    """Shingle hashes (with repeats) of cp[s:e] into out, words hashed into tok first for the word unit;
    return their count. The one definition of a document's shingles for every kernel (signatures, exact
    Jaccard, decontamination)."""
    if word:
        nt = _word_tokens(cp, s, e, wbase, tok)
        return _gram_hashes(tok, 0, nt, n, base, hseed, out)
    return _gram_hashes(cp, s, e - s, n, base, hseed, out)


@njit(cache=True, nogil=True)
def _signature_kernel(cp, offsets, sel, n, word, base, wbase, hseed, a, b, out):
    """Signatures of the documents ``sel`` of cp/offsets (document d is cp[offsets[d]:offsets[d+1]]):
    out[i] (pre-filled with 2^32-1) is document sel[i]'s signature."""
    longest = 0
    for i in range(sel.shape[0]):
        d = sel[i]
        longest = max(longest, offsets[d + 1] - offsets[d])
    hbuf = np.empty(max(longest, 1), np.uint64)
    tok = np.empty(max(longest, 1) if word else 1, np.uint64)
    for i in range(sel.shape[0]):
        d = sel[i]
        m = _hashes_into(cp, offsets[d], offsets[d + 1], n, word, base, wbase, hseed, tok, hbuf)
        _update_mins(hbuf, m, a, b, out[i])


@njit(cache=True, nogil=True)
def _shingle_set_kernel(cp, n, word, base, wbase, hseed):
    """Sorted unique 64-bit shingle hashes of one document."""
    L = cp.shape[0]
    hbuf = np.empty(max(L, 1), np.uint64)
    tok = np.empty(max(L, 1) if word else 1, np.uint64)
    m = _hashes_into(cp, 0, L, n, word, base, wbase, hseed, tok, hbuf)
    h = np.sort(hbuf[:m])
    k = 0
    for i in range(m):
        if i == 0 or h[i] != h[k - 1]:
            h[k] = h[i]
            k += 1
    return h[:k].copy()


@njit(cache=True, nogil=True)
def _band_keys_kernel(sigs, bands, rows, out):
    """out[d, j] = 64-bit hash of (j, sigs[d, j*rows:(j+1)*rows]); the band index is part of the key."""
    for d in range(sigs.shape[0]):
        for j in range(bands):
            h = _fmix64(np.uint64(j + 1) * np.uint64(0x9E3779B97F4A7C15))
            for t in range(j * rows, (j + 1) * rows):
                h = _fmix64(h ^ np.uint64(sigs[d, t]))
            out[d, j] = h


# --------------------------------------------------------------------------- public API
def _codepoints(text: str) -> np.ndarray:
    """UTF-32 code points; ``surrogatepass`` so lone surrogates from JSON do not raise (len() matches)."""
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)


def _scheme(params: DedupParams) -> tuple[int, bool, np.uint64, np.uint64, np.uint64, np.ndarray, np.ndarray]:
    if params.hash != "poly64":
        raise ValueError(f"unsupported signature scheme {params.hash!r}")
    base, wbase, hseed, a, b = permutation_params(int(params.seed), int(params.num_perm))
    return int(params.ngram), params.unit == "word", base, wbase, hseed, a, b


def signatures_from_codepoints(cp: np.ndarray, offsets: np.ndarray, params: DedupParams) -> np.ndarray:
    """Signatures of documents given as one uint32 code-point array and int64 offsets (n + 1 of them).

    The zero-copy entry point for callers that already hold concatenated text.
    """
    n, word, base, wbase, hseed, a, b = _scheme(params)
    cp = np.ascontiguousarray(cp, dtype=np.uint32)
    offsets = np.ascontiguousarray(offsets, dtype=np.int64)
    out = np.full((offsets.shape[0] - 1, a.shape[0]), _MAX32, dtype=np.uint32)
    if out.shape[0]:
        _signature_kernel(cp, offsets, np.arange(out.shape[0], dtype=np.int64), n, word, base, wbase, hseed, a, b, out)
    return out


def band_keys_of(cp: np.ndarray, offsets: np.ndarray, select: np.ndarray, params: DedupParams) -> np.ndarray:
    """``band_keys(signatures(...))`` of the documents ``select`` of a code-point buffer, shape (len(select), bands).

    Only the first ``bands * rows`` permutations (rounded up to a multiple of 8) are computed: the band keys use
    no others, and the first K permutations of a larger K are those of a smaller one. One compiled call.
    """
    n, word, base, wbase, hseed, a, b = _scheme(params)
    used = int(params.bands) * int(params.rows)
    if used > a.shape[0]:
        raise ValueError(f"bands x rows = {used} exceeds the signature length {a.shape[0]}")
    # a whole number of 8-lane vectors: 117 permutations took 1.3x the time of 120 (a scalar tail per shingle)
    used = min(a.shape[0], -(-used // 8) * 8)
    select = np.ascontiguousarray(select, dtype=np.int64)
    sigs = np.full((select.shape[0], used), _MAX32, dtype=np.uint32)
    if select.shape[0]:
        _signature_kernel(np.ascontiguousarray(cp, dtype=np.uint32), np.ascontiguousarray(offsets, dtype=np.int64),
                          select, n, word, base, wbase, hseed, a[:used], b[:used], sigs)
    return band_keys(sigs, int(params.bands), int(params.rows))


def signatures(texts_clean: Sequence[str], params: DedupParams) -> np.ndarray:
    """MinHash signatures, shape (len(texts_clean), params.num_perm), dtype uint32.

    One numba call per chunk of ~1M characters (texts joined, offsets from ``len``), so there is no
    Python work per shingle and only ``len()`` per document. An empty text gets the empty-set
    signature (all 2^32-1).
    """
    out = np.empty((len(texts_clean), int(params.num_perm)), dtype=np.uint32)
    for start, stop, cp, offsets in codepoint_chunks(texts_clean):
        out[start:stop] = signatures_from_codepoints(cp, offsets, params)
    return out


def codepoint_chunks(texts: list[str], chunk_chars: int | None = None
                     ) -> Iterator[tuple[int, int, np.ndarray, np.ndarray]]:
    """``(start, stop, code points, offsets)`` over consecutive documents ``texts[start:stop]`` joined, about
    ``chunk_chars`` code points at a time (at least one document): what the compiled kernels take."""
    chunk_chars = chunk_chars or _CHUNK_CHARS
    n_docs = len(texts)
    lengths = np.fromiter((len(t) for t in texts), dtype=np.int64, count=n_docs)
    start = 0
    while start < n_docs:
        csum = np.cumsum(lengths[start:])
        stop = start + max(1, int(np.searchsorted(csum, chunk_chars, side="right")))
        offsets = np.zeros(stop - start + 1, dtype=np.int64)
        np.cumsum(lengths[start:stop], out=offsets[1:])
        yield start, stop, _codepoints("".join(texts[start:stop])), offsets
        start = stop


def band_keys(sigs: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """One 64-bit key per band, shape (n, bands), uint64; band j covers columns j*rows .. (j+1)*rows - 1.

    The band index is mixed into the key, so keys of different bands do not collide and all
    ``(key, doc)`` pairs can be shuffled in one table partitioned by key.
    """
    sigs = np.ascontiguousarray(sigs)
    if sigs.ndim != 2:
        raise ValueError("sigs must be a 2-D array (docs x permutations)")
    if bands * rows > sigs.shape[1]:
        raise ValueError(f"bands x rows = {bands * rows} exceeds the signature length {sigs.shape[1]}")
    out = np.empty((sigs.shape[0], bands), dtype=np.uint64)
    if sigs.shape[0]:
        _band_keys_kernel(sigs, int(bands), int(rows), out)
    return out


def exact_hash(clean: str) -> int:
    """64-bit xxh3 of the cleaned text (UTF-8) for the exact-duplicate pre-pass."""
    return xxhash.xxh3_64_intdigest(clean.encode("utf-8", "surrogatepass"))


def exact_hashes(texts_clean: Sequence[str]) -> np.ndarray:
    """:func:`exact_hash` of many texts as a uint64 array."""
    return np.fromiter((exact_hash(t) for t in texts_clean), dtype=np.uint64, count=len(texts_clean))


def exact_hashes_utf8(utf8: np.ndarray, offsets: np.ndarray, select: np.ndarray) -> np.ndarray:
    """:func:`exact_hash` of the documents ``select`` of a concatenated UTF-8 buffer (one xxh3 C call each,
    on a view of the buffer: no string per document)."""
    view = memoryview(np.ascontiguousarray(utf8, dtype=np.uint8))
    starts = offsets[:-1][select].tolist()
    ends = offsets[1:][select].tolist()
    h = xxhash.xxh3_64_intdigest
    return np.fromiter((h(view[a:b]) for a, b in zip(starts, ends, strict=True)), dtype=np.uint64, count=len(starts))


def shingle_set(clean: str, ngram: int = 13, unit: str = "char", seed: int = 1) -> np.ndarray:
    """Sorted unique 64-bit shingle hashes of a cleaned text (the set MinHash estimates Jaccard over)."""
    base, wbase, hseed, _, _ = permutation_params(int(seed), 1)
    return _shingle_set_kernel(_codepoints(clean), int(ngram), unit == "word", base, wbase, hseed)


def jaccard_sets(a: np.ndarray, b: np.ndarray) -> float:
    """Jaccard of two sorted unique hash arrays; two empty sets count as identical (1.0)."""
    if a.size == 0 and b.size == 0:
        return 1.0
    inter = np.intersect1d(a, b, assume_unique=True).size
    return inter / (a.size + b.size - inter)


def jaccard_exact(a_clean: str, b_clean: str, ngram: int = 13, unit: str = "char", seed: int = 1) -> float:
    """Exact Jaccard of the shingle sets of two cleaned texts (64-bit hashes: collisions negligible)."""
    return jaccard_sets(shingle_set(a_clean, ngram, unit, seed), shingle_set(b_clean, ngram, unit, seed))


def estimate_jaccard(sig_a: np.ndarray, sig_b: np.ndarray) -> float:
    """The MinHash estimate: fraction of equal signature positions."""
    return float(np.mean(np.asarray(sig_a) == np.asarray(sig_b)))
