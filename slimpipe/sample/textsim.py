"""Exact SlimPajama-style similarity for the sample's ground truth, and a fast near-duplicate screen.

The ground truth must use the same notion of "duplicate" that SlimPajama's dedup approximates:
the Jaccard similarity of character 13-gram sets of the *cleaned* text (lowercase, ASCII punctuation
removed, whitespace runs collapsed, stripped). :func:`jaccard` computes it exactly with Python sets.

The screen (:func:`near_duplicate_pairs`) finds every pair of documents above a threshold among
thousands of documents in about a second: numpy rolling hashes of the 13-grams, a 64-value MinHash,
LSH banding tuned for low thresholds, then exact verification on the hashed shingle sets.
"""

from __future__ import annotations

import numpy as np

from slimpipe.text.normalize import clean_for_hash

NGRAM = 13


clean = clean_for_hash  # SlimPajama's cleaning, the same function dedup uses


def shingles(cleaned: str, n: int = NGRAM) -> set[str]:
    """Character n-grams of already-cleaned text; a text shorter than n is its own single shingle."""
    if len(cleaned) < n:
        return {cleaned} if cleaned else set()
    return {cleaned[i : i + n] for i in range(len(cleaned) - n + 1)}


def jaccard_sets(a: set[str], b: set[str]) -> float:
    if not a and not b:
        return 1.0
    inter = len(a & b)
    return inter / (len(a) + len(b) - inter)


def jaccard(text_a: str, text_b: str) -> float:
    """Exact Jaccard of the cleaned character 13-gram sets of two raw texts."""
    return jaccard_sets(shingles(clean(text_a)), shingles(clean(text_b)))


def lsh_probability(j: float, bands: int = 9, rows: int = 13) -> float:
    """Chance that MinHash-LSH with ``bands`` x ``rows`` pairs two docs of Jaccard ``j`` (SlimPajama: 9 x 13)."""
    return 1.0 - (1.0 - j**rows) ** bands


# --------------------------------------------------------------------------------------------------
# vectorised screen

_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)
_BASE = np.uint64(0x100000001B3)


def shingle_hashes(cleaned: str, n: int = NGRAM) -> np.ndarray:
    """64-bit hashes of every character n-gram (with repeats), by a vectorised polynomial hash."""
    codes = np.frombuffer(cleaned.encode("utf-32-le"), dtype="<u4").astype(np.uint64)
    if not len(codes):
        return np.zeros(0, np.uint64)
    if len(codes) < n:  # like shingles(): a short text is one shingle (zero-padded here)
        codes = np.concatenate([codes, np.zeros(n - len(codes), np.uint64)])
    m = len(codes) - n + 1
    h = np.zeros(m, np.uint64)
    for k in range(n):
        h *= _BASE
        h += codes[k : k + m]
    # splitmix64 finaliser: spread the polynomial's low-entropy bits before min-hashing
    h ^= h >> np.uint64(30)
    h *= np.uint64(0xBF58476D1CE4E5B9)
    h ^= h >> np.uint64(27)
    h *= np.uint64(0x94D049BB133111EB)
    h ^= h >> np.uint64(31)
    return h


def minhash(hashes: np.ndarray, a: np.ndarray, b: np.ndarray, chunk: int = 8192) -> np.ndarray:
    """MinHash signature: for each (a_i, b_i), the minimum of the top 32 bits of a_i*h + b_i."""
    sig = np.full(len(a), np.iinfo(np.uint64).max, np.uint64)
    for s in range(0, len(hashes), chunk):
        block = hashes[s : s + chunk]
        sig = np.minimum(sig, ((block[None, :] * a[:, None] + b[:, None]) >> np.uint64(32)).min(axis=1))
    return sig


def near_duplicate_pairs(texts: list[str], threshold: float = 0.5, num_perm: int = 64,
                         rows: int = 2, seed: int = 1, cleaned: bool = False) -> list[tuple[int, int, float]]:
    """Every pair (i, j, J) with i < j and exact hashed 13-gram Jaccard >= ``threshold``.

    32 bands of 2 rows catch a pair at J = 0.5 with probability 1 - 0.75^32 > 0.9999; candidates
    are kept when their MinHash estimate is within reach and then verified on the full hash sets.
    """
    rng = np.random.default_rng(seed)
    a = rng.integers(1, 2**63, num_perm, dtype=np.uint64) | np.uint64(1)
    b = rng.integers(0, 2**63, num_perm, dtype=np.uint64)
    hashes = [shingle_hashes(t if cleaned else clean(t)) for t in texts]
    empty = np.full(num_perm, 2**64 - 1, np.uint64)
    sigs = np.stack([minhash(h, a, b) if len(h) else empty for h in hashes]) if texts \
        else np.zeros((0, num_perm), np.uint64)
    unique: dict[int, np.ndarray] = {}  # exact sets, only for documents in a candidate pair
    candidates: set[tuple[int, int]] = set()
    for band in range(num_perm // rows):
        cols = sigs[:, band * rows : (band + 1) * rows]
        key = cols[:, 0].copy()
        for r in range(1, rows):
            key = key * np.uint64(0x9E3779B97F4A7C15) + cols[:, r]
        order = np.argsort(key, kind="stable")
        sorted_keys = key[order]
        starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
        ends = np.r_[starts[1:], len(order)]
        for s, e in zip(starts, ends, strict=True):
            if e - s > 1:
                group = sorted(order[s:e].tolist())
                for x in range(len(group)):
                    for y in range(x + 1, len(group)):
                        candidates.add((group[x], group[y]))
    out = []
    floor = max(0.0, threshold - 0.25)
    for i, j in sorted(candidates):
        if float(np.mean(sigs[i] == sigs[j])) < floor:
            continue
        for k in (i, j):
            if k not in unique:
                unique[k] = np.unique(hashes[k])
        hi, hj = unique[i], unique[j]
        inter = len(np.intersect1d(hi, hj, assume_unique=True))
        union = len(hi) + len(hj) - inter
        jac = inter / union if union else 1.0
        if jac >= threshold:
            out.append((i, j, jac))
    return out
