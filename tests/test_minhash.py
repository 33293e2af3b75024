"""MinHash signatures: exactness against a numpy reference, unbiasedness, variance, LSH behaviour."""

from __future__ import annotations

import string

import numpy as np
import pytest

from slimpipe.dedup import minhash as mh
from slimpipe.dedup.minhash import (
    band_keys,
    estimate_jaccard,
    exact_hash,
    exact_hashes,
    jaccard_exact,
    jaccard_sets,
    permutation_params,
    shingle_set,
    signatures,
)
from slimpipe.dedup.params import DedupParams, detection_probability, load_preset

SP = load_preset("slimpajama")


def reference_signature(clean: str, params: DedupParams) -> np.ndarray:
    """Classic MinHash written the slow obvious way over the unique shingle set."""
    _, _, _, a, b = permutation_params(params.seed, params.num_perm)
    s = shingle_set(clean, params.ngram, params.unit, params.seed)
    if s.size == 0:
        return np.full(params.num_perm, 0xFFFFFFFF, dtype=np.uint32)
    x = (s >> np.uint64(32)).astype(np.uint64)
    v = (a.astype(np.uint64)[:, None] * x[None, :] + b.astype(np.uint64)[:, None]) & np.uint64(0xFFFFFFFF)
    return v.min(axis=1).astype(np.uint32)


_ALPHABET = np.frombuffer((string.ascii_lowercase + "   ").encode(), dtype=np.uint8)


def random_text(rng: np.random.Generator, n: int) -> str:
    """Random lowercase words; numpy does the per-character work so thousands of texts take milliseconds."""
    return _ALPHABET[rng.integers(0, _ALPHABET.size, n)].tobytes().decode("ascii")


def python_jaccard(a: str, b: str, n: int) -> float:
    sa = {a[i : i + n] for i in range(len(a) - n + 1)}
    sb = {b[i : i + n] for i in range(len(b) - n + 1)}
    return len(sa & sb) / len(sa | sb)


def test_shape_dtype_determinism():
    texts = ["the quick brown fox jumps over the lazy dog " * 5, "another text entirely " * 10]
    s1 = signatures(texts, SP)
    assert s1.shape == (2, 128) and s1.dtype == np.uint32
    assert np.array_equal(s1, signatures(texts, SP))
    assert np.array_equal(signatures(texts[::-1], SP), s1[::-1])
    assert not np.array_equal(signatures(texts, SP.with_overrides(seed=2)), s1)
    assert signatures([], SP).shape == (0, 128)


def test_matches_reference_char_and_word():
    rng = np.random.default_rng(1)
    texts = [random_text(rng, rng.integers(0, 600)) for _ in range(40)] + ["", "a", "short text", "x" * 13]
    for params in (SP, SP.with_overrides(unit="word", ngram=5), SP.with_overrides(num_perm=7, bands=1, rows=7)):
        sigs = signatures(texts, params)
        for t, s in zip(texts, sigs, strict=True):
            assert np.array_equal(s, reference_signature(t, params)), (params.unit, t[:30])


def test_chunking_does_not_change_results(monkeypatch):
    rng = np.random.default_rng(2)
    texts = [random_text(rng, rng.integers(0, 300)) for _ in range(50)]
    whole = signatures(texts, SP)
    monkeypatch.setattr(mh, "_CHUNK_CHARS", 100)
    assert np.array_equal(signatures(texts, SP), whole)


def test_empty_text_is_empty_set_and_short_texts_get_one_shingle():
    sigs = signatures(["", "abc", "abcd"], SP)
    assert (sigs[0] == 0xFFFFFFFF).all()
    assert shingle_set("abc", 13).size == 1
    assert not np.array_equal(sigs[1], sigs[2])


def test_larger_num_perm_extends_smaller():
    texts = ["some text to sign " * 20]
    assert np.array_equal(signatures(texts, load_preset("recall"))[:, :128], signatures(texts, SP))


def test_shingle_set_has_no_collisions_on_distinct_shingles():
    rng = np.random.default_rng(3)
    for _ in range(20):
        t = random_text(rng, 2000) + "ab" * 50  # repeats: fewer unique shingles than windows
        assert shingle_set(t, 13).size == len({t[i : i + 13] for i in range(len(t) - 12)})
        words = t.split()
        grams = {tuple(words[i : i + 3]) for i in range(len(words) - 2)}
        assert shingle_set(" ".join(words), 3, unit="word").size == len(grams)


def test_jaccard_exact_matches_python_sets():
    rng = np.random.default_rng(4)
    for _ in range(30):
        base = random_text(rng, 500)
        other = base[: rng.integers(100, 500)] + random_text(rng, rng.integers(0, 300))
        assert jaccard_exact(base, other, 13) == pytest.approx(python_jaccard(base, other, 13), abs=1e-12)
    assert jaccard_exact("", "") == 1.0
    assert jaccard_exact("", "a" * 30) == 0.0
    assert jaccard_sets(np.array([1, 2], np.uint64), np.array([2, 3], np.uint64)) == pytest.approx(1 / 3)


def _pairs_at(rng: np.random.Generator, target: float, n_pairs: int) -> tuple[list[str], list[str]]:
    """Pairs sharing a common block: J = common / union is close to ``target``."""
    a_list, b_list = [], []
    for _ in range(n_pairs):
        common = rng.integers(300, 1500)
        tail = max(1, round(common * (1 - target) / (2 * target)))
        c = random_text(rng, common)
        a_list.append(c + random_text(rng, tail))
        b_list.append(c + random_text(rng, tail))
    return a_list, b_list


def test_estimator_is_unbiased_with_minhash_variance():
    """Mean error ~ 0 and var(error) ~ J(1-J)/K over random pairs with J across [0.1, 0.99]."""
    rng = np.random.default_rng(5)
    a_list, b_list = [], []
    for _ in range(3000):
        a, b = _pairs_at(rng, rng.uniform(0.1, 0.99), 1)
        a_list += a
        b_list += b
    sa, sb = signatures(a_list, SP), signatures(b_list, SP)
    est = (sa == sb).mean(axis=1)
    exact = np.array([jaccard_exact(a, b) for a, b in zip(a_list, b_list, strict=True)])
    assert exact.min() < 0.15 and exact.max() > 0.95
    err = est - exact
    var = exact * (1 - exact) / SP.num_perm
    # Mean error within 4 standard errors of zero; normalised squared error close to 1.
    assert abs(err.mean()) < 4 * np.sqrt(var.mean() / err.size)
    ratio = float(np.mean(err**2 / var))
    assert 0.88 < ratio < 1.12, ratio
    for lo, hi in ((0.1, 0.4), (0.4, 0.7), (0.7, 1.0)):  # no bias hiding in any range of J
        sel = (exact >= lo) & (exact < hi)
        assert abs(err[sel].mean()) < 4 * np.sqrt(var[sel].mean() / sel.sum())


@pytest.mark.parametrize("target", [0.8, 0.9])
def test_band_collision_rate_matches_s_curve(target):
    """P(some band key equal) = 1 - (1 - J^r)^b, as for classic MinHash."""
    rng = np.random.default_rng(int(target * 100))
    a_list, b_list = _pairs_at(rng, target, 3000)
    ka = band_keys(signatures(a_list, SP), SP.bands, SP.rows)
    kb = band_keys(signatures(b_list, SP), SP.bands, SP.rows)
    hit = (ka == kb).any(axis=1)
    exact = np.array([jaccard_exact(a, b) for a, b in zip(a_list, b_list, strict=True)])
    p = detection_probability(exact, SP.bands, SP.rows)
    assert abs(exact.mean() - target) < 0.02
    sigma = np.sqrt((p * (1 - p)).sum()) / hit.size
    assert abs(hit.mean() - p.mean()) < 4 * sigma, (hit.mean(), p.mean())


def test_band_keys():
    sigs = np.arange(2 * 128, dtype=np.uint32).reshape(2, 128)
    keys = band_keys(sigs, 9, 13)
    assert keys.shape == (2, 9) and keys.dtype == np.uint64
    same = np.zeros((2, 128), dtype=np.uint32)
    same[1, 13:26] = 1  # only band 1 differs
    k = band_keys(same, 9, 13)
    assert (k[0] == k[1]).sum() == 8 and k[0, 1] != k[1, 1]
    assert len(set(k[0].tolist())) == 9  # equal values in different bands still give different keys
    swapped = sigs.copy()
    swapped[0, [0, 1]] = swapped[0, [1, 0]]  # same values, different order within band 0
    assert band_keys(swapped, 9, 13)[0, 0] != keys[0, 0]
    with pytest.raises(ValueError):
        band_keys(sigs, 10, 13)


def test_exact_hash():
    assert exact_hash("abc") == exact_hash("abc")
    assert exact_hash("abc") != exact_hash("abd")
    assert 0 <= exact_hash("x\ud800") < 2**64
    assert exact_hashes(["abc", "abd"]).tolist() == [exact_hash("abc"), exact_hash("abd")]


def test_estimate_jaccard_of_identical_texts_is_one():
    t = "identical documents have identical signatures " * 10
    s = signatures([t, t], SP)
    assert estimate_jaccard(s[0], s[1]) == 1.0
