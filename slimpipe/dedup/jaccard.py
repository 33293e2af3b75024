"""Exact Jaccard of many document pairs in one compiled call, without sorting shingle sets.

:func:`slimpipe.dedup.minhash.jaccard_exact` builds each side's set as a sorted unique array (a sort of
every shingle hash, ~0.08-0.18 s per million characters on the 2-core VM) and intersects the two (a
second sort). Here each pair is one pass over the shingle hashes of both documents through an
open-addressing table (linear probing on the hash's low bits; the hashes are already splitmix-mixed):
the longer side's hashes are inserted (counting its distinct shingles), then the other side's are looked
up (counting the shared ones and inserting the rest). The same shingles (:mod:`slimpipe.dedup.minhash`'s
rolling hash, ``ngram`` ``unit`` windows hashed with ``seed``) and the same arithmetic
(``inter / (|A| + |B| - inter)`` in float64, two empty sets count as 1.0), so the value equals
``jaccard_exact`` bit for bit (the tests compare them); only the time changes.

Used by ``--verify``'s pair check (:mod:`slimpipe.dedup.steps.verify`) and its cluster check
(:mod:`slimpipe.dedup.steps.keep`). Memory per call: the code points of the documents of a chunk of
pairs (``chunk_chars`` at most, one document past it) plus two hash buffers and a table sized for the
longest document.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numba import njit

from slimpipe.dedup.minhash import _codepoints, _hashes_into, permutation_params

__all__ = ["jaccard_pairs", "jaccard_texts"]

#: Code points of distinct documents per compiled call of :func:`jaccard_pairs` (64 MB as UTF-32).
CHUNK_CHARS = 16 << 20
#: Shingles of the longer side per part of a long pair's count (its table, ~2x that, stays in L2).
_PART = 4096


@njit(cache=True, nogil=True)
def _scatter(h, m, shift, counts, starts, out):
    """Counting sort of h[:m] by the top bits (h >> shift) into out; counts/starts per part (len = parts)."""
    counts[:] = 0
    for i in range(m):
        counts[h[i] >> shift] += 1
    pos = 0
    for k in range(counts.shape[0]):
        starts[k] = pos
        pos += counts[k]
    fill = starts.copy()
    for i in range(m):
        k = h[i] >> shift
        out[fill[k]] = h[i]
        fill[k] += 1


@njit(inline="always")
def _slot(keys, state, h, mask):
    """The table slot of hash h: where it is, or the empty slot where it goes (linear probing)."""
    j = h & mask
    while state[j] != 0 and keys[j] != h:
        j = (j + np.uint64(1)) & mask
    return j


@njit(cache=True, nogil=True)
def _count_part(big, b0, b1, small, s0, s1, keys, state):
    """(distinct in big[b0:b1], distinct in small[s0:s1], shared) through one open-addressing table."""
    size = 16
    while size < 2 * (b1 - b0 + s1 - s0):  # load <= 1/2 whatever the sides hold (the caller sized the table)
        size *= 2
    mask = np.uint64(size - 1)
    state[:size] = 0  # 0 empty, 1 in big only, 2 in small only, 3 both
    nbig = 0
    for i in range(b0, b1):
        h = big[i]
        j = _slot(keys, state, h, mask)
        if state[j] == 0:
            state[j] = 1
            keys[j] = h
            nbig += 1
    inter = 0
    nsmall = 0
    for i in range(s0, s1):
        h = small[i]
        j = _slot(keys, state, h, mask)
        st = state[j]
        if st == 0:
            state[j] = 2
            keys[j] = h
            nsmall += 1
        elif st == 1:
            state[j] = 3
            inter += 1
            nsmall += 1
    return nbig, nsmall, inter


@njit(cache=True, nogil=True)
def _pairs_kernel(cp, offsets, left, right, n, word, base, wbase, hseed, out):
    """out[p] = exact Jaccard of the shingle sets of documents left[p] and right[p] of cp/offsets.

    Shingle hashes of a long pair are first split by their top bits into parts of ~PART hashes of the
    longer side (a counting sort), so each part's table stays in cache; parts share no hash, so the
    counts add up.
    """
    longest = 1
    for p in range(left.shape[0]):
        longest = max(longest, offsets[left[p] + 1] - offsets[left[p]], offsets[right[p] + 1] - offsets[right[p]])
    ha = np.empty(longest, np.uint64)
    hb = np.empty(longest, np.uint64)
    pa = np.empty(longest, np.uint64)
    pb = np.empty(longest, np.uint64)
    tok = np.empty(longest if word else 1, np.uint64)
    max_parts = 1
    while max_parts * _PART < longest:
        max_parts *= 2
    ca = np.empty(max_parts, np.int64)
    sa = np.empty(max_parts, np.int64)
    cb = np.empty(max_parts, np.int64)
    sb = np.empty(max_parts, np.int64)
    keys = np.empty(16, np.uint64)
    state = np.zeros(16, np.uint8)
    for p in range(left.shape[0]):
        a = left[p]
        b = right[p]
        ma = _hashes_into(cp, offsets[a], offsets[a + 1], n, word, base, wbase, hseed, tok, ha)
        mb = _hashes_into(cp, offsets[b], offsets[b + 1], n, word, base, wbase, hseed, tok, hb)
        big, small, mbig, msmall = ha, hb, ma, mb
        if mb > ma:
            big, small, mbig, msmall = hb, ha, mb, ma
        parts = 1
        bits = 0
        while parts * _PART < mbig:
            parts *= 2
            bits += 1
        if parts == 1:
            if keys.shape[0] < 4 * (mbig + msmall):
                keys = np.empty(4 * (mbig + msmall), np.uint64)
                state = np.zeros(4 * (mbig + msmall), np.uint8)
            nbig, nsmall, inter = _count_part(big, 0, mbig, small, 0, msmall, keys, state)
        else:
            shift = np.uint64(64 - bits)
            _scatter(big, mbig, shift, ca[:parts], sa[:parts], pa)
            _scatter(small, msmall, shift, cb[:parts], sb[:parts], pb)
            need = 4 * np.max(ca[:parts] + cb[:parts])  # a part of repeated shingles can hold many
            if keys.shape[0] < need:
                keys = np.empty(need, np.uint64)
                state = np.zeros(need, np.uint8)
            nbig = nsmall = inter = 0
            for k in range(parts):
                x, y, z = _count_part(pa, sa[k], sa[k] + ca[k], pb, sb[k], sb[k] + cb[k], keys, state)
                nbig += x
                nsmall += y
                inter += z
        if nbig == 0 and nsmall == 0:
            out[p] = 1.0
        else:
            out[p] = inter / (nbig + nsmall - inter)


def _chunks(lengths: np.ndarray, left: np.ndarray, right: np.ndarray, chunk_chars: int):
    """Consecutive runs of pairs whose distinct documents hold <= chunk_chars code points (>= 1 pair)."""
    start, chars, seen = 0, 0, set()
    for p in range(len(left)):
        new = {int(left[p]), int(right[p])} - seen
        extra = sum(int(lengths[d]) for d in new)
        if p > start and chars + extra > chunk_chars:
            yield start, p
            start, chars, seen = p, 0, set()
            new = {int(left[p]), int(right[p])}
            extra = sum(int(lengths[d]) for d in new)
        seen |= new
        chars += extra
    if start < len(left):
        yield start, len(left)


def jaccard_pairs(texts: Sequence[str], left: np.ndarray, right: np.ndarray, ngram: int = 13, unit: str = "char",
                  seed: int = 1, chunk_chars: int = CHUNK_CHARS) -> np.ndarray:
    """Exact Jaccard (float64) of the cleaned texts ``texts[left[p]]`` and ``texts[right[p]]`` for every p.

    Equal to ``jaccard_exact(texts[left[p]], texts[right[p]], ngram, unit, seed)``; each document's code
    points are built once per chunk of pairs (``chunk_chars``), however many pairs it is in.
    """
    left = np.asarray(left, np.int64)
    right = np.asarray(right, np.int64)
    if left.shape != right.shape:
        raise ValueError("left and right must have the same length")
    out = np.empty(len(left), np.float64)
    if not len(left):
        return out
    base, wbase, hseed, _, _ = permutation_params(int(seed), 1)
    lengths = np.zeros(len(texts), np.int64)  # of the documents in a pair only: texts may hold many more
    used = np.unique(np.concatenate([left, right]))
    lengths[used] = [len(texts[d]) for d in used.tolist()]
    for s, e in _chunks(lengths, left, right, chunk_chars):
        docs, local = np.unique(np.concatenate([left[s:e], right[s:e]]), return_inverse=True)
        offsets = np.zeros(len(docs) + 1, np.int64)
        np.cumsum(lengths[docs], out=offsets[1:])
        cp = _codepoints("".join([texts[d] for d in docs.tolist()]))
        _pairs_kernel(cp, offsets, local[: e - s].astype(np.int64), local[e - s:].astype(np.int64), int(ngram),
                      unit == "word", base, wbase, hseed, out[s:e])
    return out


def jaccard_texts(a: str, b: str, ngram: int = 13, unit: str = "char", seed: int = 1) -> float:
    """Exact Jaccard of two cleaned texts (one pair of :func:`jaccard_pairs`)."""
    return float(jaccard_pairs([a, b], np.array([0]), np.array([1]), ngram, unit, seed)[0])
