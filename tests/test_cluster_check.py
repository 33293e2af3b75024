"""Cluster verification (#21.4): connected components chain A ~ B ~ C, so without a check C is removed
as a copy of A although they share little. With ``--verify`` every removed document must reach the
threshold against the very document kept in its stead; the rest are kept."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import zstandard

from slimpipe.dedup.job import DedupJob
from slimpipe.dedup.keep import check_clusters, policy_order
from slimpipe.dedup.minhash import jaccard_exact
from slimpipe.dedup.params import VERIFY_RECALL, load_preset, optimal_bands_rows
from slimpipe.text.normalize import clean_for_hash

LINKS = 8


def test_check_clusters_breaks_a_chain_and_keeps_the_far_end() -> None:
    # one component 0-1-2-3 in a line: neighbours similar, nothing else
    labels = np.zeros(4, np.int64)
    order = policy_order(labels, np.arange(4))
    head, rounds = check_clusters(labels, order, lambda i, j: abs(i - j) == 1)
    # 0 is kept, 1 is its copy; 2 and 3 are not similar to 0: 2 heads the next round and 3 is its copy
    assert head.tolist() == [0, 0, 2, 2] and rounds == 2
    # a complete cluster collapses to one kept document in one round
    head, rounds = check_clusters(labels, order, lambda i, j: True)
    assert head.tolist() == [0, 0, 0, 0] and rounds == 1


def _chain(seed: int = 3) -> list[str]:
    """LINKS + 1 texts, each link ~J 0.85 (char 13-grams), edits at disjoint places so the ends drift apart."""
    rng = random.Random(seed)
    words = [f"{rng.choice('bcdfgklmnprstvz')}{rng.choice('aeiou')}{rng.randrange(10_000)}" for _ in range(700)]
    slots = rng.sample(range(len(words)), len(words))
    texts = [" ".join(words)]
    per_link = 30
    for k in range(LINKS):
        for i in slots[k * per_link:(k + 1) * per_link]:
            words[i] = f"{rng.choice('bcdfgklmnprstvz')}{rng.choice('aeiou')}{rng.randrange(10_000)}"
        texts.append(" ".join(words))
    return texts


@pytest.fixture(scope="module")
def chain_corpus(tmp_path_factory) -> tuple[Path, list[str]]:
    texts = _chain()
    cleaned = [clean_for_hash(t) for t in texts]
    links = [jaccard_exact(cleaned[i], cleaned[i + 1]) for i in range(LINKS)]
    ends = jaccard_exact(cleaned[0], cleaned[-1])
    assert min(links) >= 0.8 and max(links) <= 0.9, links  # the planted structure, checked exactly
    assert ends < 0.3, ends
    rng = random.Random(1)
    others = [" ".join(f"w{rng.randrange(10**6)}" for _ in range(300)) for _ in range(20)]
    others += [others[0].upper(), others[1]]  # exact copies (after cleaning): lines 29 and 30 go, always
    d = tmp_path_factory.mktemp("chain")
    data = "".join(json.dumps({"text": t, "meta": {"source": "chain"}}) + "\n" for t in texts + others).encode()
    (d / "chain.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(data))
    return d, cleaned


def _removed(out: Path) -> list[dict]:
    return [r for f in sorted((out / "removed").glob("*.parquet")) for r in pq.read_table(f).to_pylist()]


@pytest.mark.parametrize("cluster_check", [True, False])
def test_planted_chain(chain_corpus, tmp_path: Path, ray_session, cluster_check: bool) -> None:
    src, cleaned = chain_corpus
    params = load_preset("slimpajama").with_overrides(verify=True, cluster_check=cluster_check)
    out = tmp_path / "out"
    report = DedupJob([src], out, params, progress=False).run()
    removed = {int(r["id"].rsplit(":", 1)[1]): r for r in _removed(out) if r["reason"] != "short"}
    dup_of = {k: int(r["duplicate_of"].rsplit(":", 1)[1]) for k, r in removed.items()}
    exact = {k for k, r in removed.items() if r["reason"] == "exact_duplicate"}
    assert exact == {LINKS + 21, LINKS + 22} and {dup_of[k] for k in exact} == {LINKS + 1, LINKS + 2}
    removed = {k: r for k, r in removed.items() if k not in exact}
    dup_of = {k: v for k, v in dup_of.items() if k not in exact}
    assert set(removed) <= set(range(1, LINKS + 1))  # otherwise only chain members are ever removed
    if not cluster_check:  # the unchecked components put the whole chain in one cluster kept as doc 0
        assert set(removed) == set(range(1, LINKS + 1)) and set(dup_of.values()) == {0}
        assert min(jaccard_exact(cleaned[k], cleaned[0]) for k in removed) < 0.3  # the wipe-out
        return
    for k, kept in dup_of.items():  # every removal is similar to the document actually kept for it
        assert jaccard_exact(cleaned[k], cleaned[kept]) >= params.threshold, (k, kept)
        assert kept not in removed
    assert len(removed) >= LINKS // 2  # the close links are still removed: the check splits, it does not give up
    saved = report["cluster_check"]["global"]["saved_total"]
    assert saved == LINKS - len(removed) > 0  # exact copies are never 'saved'
    assert "Cluster check" in (out / "report.md").read_text()


@pytest.mark.parametrize("threshold", [0.5, 0.7, 0.8, 0.9])
def test_verify_bands_for_recall_at_any_threshold(threshold: float) -> None:
    base = load_preset("slimpajama")
    p = base.with_overrides(threshold=threshold, verify=True)
    assert p.recall_at_threshold >= VERIFY_RECALL and p.bands * p.rows <= p.num_perm
    # without --verify the balanced S-curve choice stays (SlimPajama's own definition at 0.8)
    assert base.with_overrides(threshold=0.8) == base
    assert (base.bands, base.rows) == optimal_bands_rows(0.8, 128) == (9, 13)
    # turning --verify on alone re-bands the preset for recall at its own threshold
    assert base.with_overrides(verify=True).recall_at_threshold >= VERIFY_RECALL
    # explicit bands x rows are taken as given
    assert (base.with_overrides(verify=True, bands=9, rows=13).bands) == 9
