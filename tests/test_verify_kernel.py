"""``--verify``'s exact Jaccard (:mod:`slimpipe.dedup.jaccard`): the same value as ``jaccard_exact`` on every
path of the kernel (short, long and split into parts, repeated shingles, word units, small chunks), and a
pair at exactly J = threshold is confirmed and removed (the pair check and the cluster check both test
``J >= threshold`` on the same float64 value)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import zstandard

from slimpipe.dedup.jaccard import jaccard_pairs, jaccard_texts
from slimpipe.dedup.job import DedupJob
from slimpipe.dedup.minhash import jaccard_exact
from slimpipe.dedup.params import load_preset


def _doc(rng: random.Random, n: int) -> str:
    return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz     ") for _ in range(n))


def _edit(rng: random.Random, text: str, k: int) -> str:
    chars = list(text)
    for i in rng.sample(range(len(chars)), k):
        chars[i] = rng.choice("xyz")
    return "".join(chars)


@pytest.mark.parametrize(("unit", "ngram", "seed"), [("char", 13, 1), ("char", 5, 7), ("word", 3, 1), ("word", 1, 2)])
def test_jaccard_pairs_equals_jaccard_exact(unit: str, ngram: int, seed: int) -> None:
    rng = random.Random(seed)
    big = _doc(rng, 60_000)  # > 4096 shingles: split into parts by the top bits
    docs = ["", "", "xyz", "a" * 30_000, "ab" * 20_000, "a" * 10_000 + big[:20_000],  # empty, < n, repeats
            big, _edit(rng, big, 300), big[:30_000] + "b" * 30_000, big[7:],
            _doc(rng, 900), "\ud800 lone surrogate " * 20, "ünïcödé ±✓ " * 50]
    docs += [_edit(rng, d, max(1, len(d) // 50)) for d in docs[10:]]
    n = len(docs)
    left, right = (a.ravel() for a in np.meshgrid(np.arange(n), np.arange(n)))
    ref = np.array([jaccard_exact(docs[a], docs[b], ngram, unit, seed) for a, b in zip(left, right, strict=True)])
    assert 0 < np.count_nonzero((ref > 0) & (ref < 1))  # some partial overlaps, not only 0 and 1
    for chunk in (1 << 24, 50_000, 1):  # one call; a few documents per call; one pair per call
        got = jaccard_pairs(docs, left, right, ngram, unit, seed, chunk_chars=chunk)
        assert np.array_equal(got, ref), chunk  # bit for bit: the same sets, the same float64 division
    assert jaccard_texts(docs[6], docs[7], ngram, unit, seed) == ref[6 * n + 7]
    assert jaccard_pairs(docs, [], []).shape == (0,)


def test_pair_at_exactly_the_threshold_is_confirmed(tmp_path: Path, ray_session) -> None:
    """J = 7/10 = 0.7 exactly (word 1-grams): the pair is a candidate, confirmed, and removed."""
    words = [f"{w}{'q' * 30}{i}" for i, w in enumerate("abcdefghij")]
    a, b = " ".join(words), " ".join(words[:7])
    assert jaccard_exact(a, b, 1, "word", 1) == 0.7
    src = tmp_path / "in"
    src.mkdir()
    data = "".join(json.dumps({"text": t, "meta": {}}) + "\n" for t in (a, b)).encode()
    (src / "github_sample.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(data))
    p = load_preset("slimpajama").with_overrides(unit="word", ngram=1, num_perm=16, bands=16, rows=1,
                                                 threshold=0.7, verify=True)
    report = DedupJob([src], tmp_path / "out", p, progress=False).run()
    assert report["verify"]["candidates"] == 1  # the pair met in a band
    removed = [r for f in sorted((tmp_path / "out" / "removed").glob("*.parquet")) for r in pq.read_table(f).to_pylist()]
    assert [(r["id"], r["duplicate_of"]) for r in removed] == [("github/github_sample.jsonl.zst:1",
                                                                 "github/github_sample.jsonl.zst:0")]


def test_check_clusters_prefetches_each_rounds_pairs() -> None:
    """Round-major cluster check: ``prefetch`` gets every pair ``similar`` will be asked in that round, and
    the outcome is the same as without it (random components and a random similarity)."""
    from slimpipe.dedup.keep import check_clusters, policy_order

    rng = np.random.default_rng(5)
    labels = rng.integers(0, 40, 400)
    order = policy_order(labels, np.arange(400))
    sim = rng.random((400, 400)) < 0.4
    asked: list[tuple[int, int]] = []
    batches: list[list[tuple[int, int]]] = []

    def similar(i: int, j: int) -> bool:
        asked.append((i, j))
        return bool(sim[i, j])

    head, rounds = check_clusters(labels, order, similar, prefetch=batches.append)
    assert [p for b in batches for p in b] == asked and len(batches) == rounds > 2
    plain_head, plain_rounds = check_clusters(labels, order, lambda i, j: bool(sim[i, j]))
    assert np.array_equal(head, plain_head) and rounds == plain_rounds
    kept = head == np.arange(400)
    assert all(sim[i, head[i]] for i in np.flatnonzero(~kept))  # each removal is similar to its keeper
