"""Source-aware star edges: k−1 edges per bucket, global connectivity, local connectivity per source."""

from __future__ import annotations

import numpy as np

from slimpipe.dedup.components import union_find
from slimpipe.dedup.graph import EDGE_DTYPE, local_only, star_edges, unique_edges


def _components(edges: np.ndarray, nodes: np.ndarray) -> dict[int, int]:
    return dict(zip(nodes.tolist(), union_find(edges["u"], edges["v"], nodes).tolist(), strict=True))


def test_one_bucket_gives_k_minus_one_edges_to_the_smallest():
    keys = np.full(5, 7, np.uint64)
    nodes = np.array([40, 10, 30, 20, 50], np.int64)
    e = star_edges(keys, nodes, np.zeros(5, np.int8))
    assert len(e) == 4 and set(e["u"].tolist()) == {10} and sorted(e["v"].tolist()) == [20, 30, 40, 50]


def test_cross_source_bucket_links_per_source_heads():
    keys = np.array([5, 5, 5, 5, 7, 7], np.uint64)
    nodes = np.array([10, 3, 8, 4, 1, 2], np.int64)
    src = np.array([1, 0, 1, 1, 2, 2], np.int8)
    e = star_edges(keys, nodes, src)
    assert e.tolist() == [(1, 2, 2, 2), (3, 4, 0, 1), (4, 8, 1, 1), (4, 10, 1, 1)]
    # local dedup drops the cross edge but source 1's docs stay linked to their own head (4)
    assert local_only(e).tolist() == [(1, 2, 2, 2), (4, 8, 1, 1), (4, 10, 1, 1)]


def test_random_buckets_match_cliques_globally_and_locally():
    rng = np.random.default_rng(0)
    n = 400
    keys = rng.integers(0, 60, n * 3).astype(np.uint64)
    nodes = rng.integers(0, n, n * 3).astype(np.int64)
    src = (nodes % 3).astype(np.int8)  # a node's source is fixed
    e = star_edges(keys, nodes, src)
    assert len(e) == len(unique_edges(e)) and (e["u"] < e["v"]).all()
    # reference: every pair in a bucket linked (k² edges), globally and within each source
    ref_u, ref_v = [], []
    for k in np.unique(keys):
        members = np.unique(nodes[keys == k])
        ref_u += [members[0]] * (len(members) - 1)
        ref_v += members[1:].tolist()
    ref = np.empty(len(ref_u), EDGE_DTYPE)
    ref["u"], ref["v"] = ref_u, ref_v
    all_nodes = np.unique(nodes)
    assert _components(e, all_nodes) == _components(ref, all_nodes)
    loc_u, loc_v = [], []
    for k in np.unique(keys):
        for s in range(3):
            members = np.unique(nodes[(keys == k) & (src == s)])
            loc_u += [members[0]] * max(0, len(members) - 1)
            loc_v += members[1:].tolist()
    loc = np.empty(len(loc_u), EDGE_DTYPE)
    loc["u"], loc["v"] = loc_u, loc_v
    assert _components(local_only(e), all_nodes) == _components(loc, all_nodes)


def test_chain_edges_link_consecutive_members():
    from slimpipe.dedup.graph import chain_edges

    keys = np.array([5, 5, 5, 7, 7], np.uint64)
    nodes = np.array([30, 10, 20, 2, 1], np.int64)
    e = chain_edges(keys, nodes, np.array([0, 1, 1, 2, 2], np.int8))
    assert e.tolist() == [(1, 2, 2, 2), (10, 20, 1, 1), (20, 30, 1, 0)]
