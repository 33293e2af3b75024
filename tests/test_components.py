"""Connected components: union-find, and the distributed building blocks converging to the same labels."""

from __future__ import annotations

import numpy as np
import pytest

from slimpipe.dedup.components import (
    apply_mapping,
    contract_components,
    hash_partition,
    large_star,
    large_star_map,
    small_star,
    small_star_map,
    star_labels,
    union_find,
)


def bfs_labels(u: np.ndarray, v: np.ndarray, n: int) -> np.ndarray:
    """Obviously-correct reference: BFS from each unvisited node in increasing order."""
    adj: list[list[int]] = [[] for _ in range(n)]
    for a, b in zip(u.tolist(), v.tolist(), strict=True):
        adj[a].append(b)
        adj[b].append(a)
    labels = np.full(n, -1, dtype=np.int64)
    for s in range(n):
        if labels[s] >= 0:
            continue
        labels[s] = s
        stack = [s]
        while stack:
            x = stack.pop()
            for y in adj[x]:
                if labels[y] < 0:
                    labels[y] = s
                    stack.append(y)
    return labels


def random_graph(rng: np.random.Generator, n: int, m: int) -> tuple[np.ndarray, np.ndarray]:
    return rng.integers(0, n, m), rng.integers(0, n, m)


def chain(order: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return order[:-1].copy(), order[1:].copy()


def test_union_find_small():
    u = np.array([1, 2, 5, 7, 7])
    v = np.array([2, 3, 6, 7, 5])
    assert union_find(u, v, 8).tolist() == [0, 1, 1, 1, 4, 5, 5, 5]
    assert union_find(np.array([], np.int64), np.array([], np.int64), 3).tolist() == [0, 1, 2]


@pytest.mark.parametrize("seed", range(5))
def test_union_find_matches_bfs(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 3000))
    u, v = random_graph(rng, n, int(rng.integers(0, 2 * n)))
    assert np.array_equal(union_find(u, v, n), bfs_labels(u, v, n))


def test_union_find_with_arbitrary_ids():
    rng = np.random.default_rng(7)
    ids = rng.choice(10**15, size=500, replace=False).astype(np.int64)  # unsorted, sparse, large
    iu, iv = random_graph(rng, 500, 400)
    labels = union_find(ids[iu], ids[iv], ids)
    ref = bfs_labels(iu, iv, 500)
    # Same partition, and each label is the smallest id of its component.
    for comp in np.unique(ref):
        members = ids[ref == comp]
        assert (labels[ref == comp] == members.min()).all()
    with pytest.raises(ValueError):
        union_find(np.array([ids[0]]), np.array([12345]), ids)
    with pytest.raises(ValueError):
        union_find(np.array([0]), np.array([5]), 5)
    with pytest.raises(ValueError):
        union_find(np.array([], np.int64), np.array([], np.int64), np.array([3, 3]))


def test_union_find_long_chain():
    n = 200_000
    order = np.random.default_rng(0).permutation(n)
    assert (union_find(*chain(order), n) == 0).all()
    assert (union_find(*chain(np.arange(n)[::-1].copy()), n) == 0).all()


def _graphs() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(11)
    n = 20_000
    star_center_high = (np.full(500, 10_000), np.arange(500))
    cycle = (np.arange(1000), (np.arange(1000) + 1) % 1000)
    dup_and_loops = (np.array([3, 3, 4, 4, 9, 9, 8]), np.array([4, 4, 3, 4, 9, 8, 9]))
    zigzag = np.empty(2000, dtype=np.int64)  # low/high alternating ids: many local minima
    zigzag[0::2] = np.arange(1000)
    zigzag[1::2] = np.arange(1000) + 5000
    return {
        "sparse": random_graph(rng, 5000, 2500),
        "near-threshold": random_graph(rng, 5000, 5000),
        "dense": random_graph(rng, 2000, 8000),
        "chain-random-ids": chain(rng.permutation(n)),
        "chain-sorted": chain(np.arange(n)),
        "chain-reversed": chain(np.arange(n)[::-1].copy()),
        "zigzag": chain(zigzag),
        "star-center-high": star_center_high,
        "cycle": cycle,
        "dups-and-self-loops": dup_and_loops,
    }


@pytest.mark.parametrize("method", ["star"])
@pytest.mark.parametrize("name", list(_graphs()))
def test_distributed_contraction_equals_union_find(method, name):
    u, v = _graphs()[name]
    n = int(max(u.max(), v.max())) + 1
    expected = union_find(u, v, n)
    for parts in (1, 3, 8):
        nodes, labels, rounds = contract_components(u, v, num_partitions=parts, method=method)
        loop = u == v
        assert np.array_equal(nodes, np.unique(np.concatenate([u[~loop], v[~loop]])))
        assert np.array_equal(labels, expected[nodes]), (name, parts)
        assert rounds <= 40  # logarithmic, not linear in the 20,000-node chains


def test_contract_components_empty_and_bad_method():
    e = np.array([], np.int64)
    nodes, labels, _ = contract_components(e, e)
    assert nodes.size == 0 and labels.size == 0
    with pytest.raises(ValueError):
        contract_components(np.array([0]), np.array([1]), method="magic")


def test_apply_mapping():
    mapping = (np.array([2, 5, 9]), np.array([1, 2, 5]))
    assert apply_mapping(np.array([9, 5, 2, 4, 100]), mapping).tolist() == [5, 2, 1, 4, 100]
    assert apply_mapping(np.array([3]), (np.array([], np.int64), np.array([], np.int64))).tolist() == [3]


def test_star_steps_report_no_change_on_converged_stars():
    u = np.array([0, 0, 0, 10, 10])
    v = np.array([1, 2, 3, 11, 12])
    _, _, changed_large = large_star(*large_star_map(u, v))
    _, _, changed_small = small_star(*small_star_map(u, v))
    assert changed_large == 0 and changed_small == 0
    nodes, labels = star_labels(u, v)
    assert dict(zip(nodes.tolist(), labels.tolist(), strict=True)) == {0: 0, 1: 0, 2: 0, 3: 0, 10: 10, 11: 10, 12: 10}
    # A path 0-2-1 is not yet a star: small-star must notice.
    _, _, changed = small_star(*small_star_map(np.array([0, 1]), np.array([2, 2])))
    assert changed == 1


def test_hash_partition_is_deterministic_and_balanced():
    keys = np.arange(100_000)
    p = hash_partition(keys, 8)
    assert np.array_equal(p, hash_partition(keys, 8))
    counts = np.bincount(p, minlength=8)
    assert counts.min() > 0.9 * counts.mean()
