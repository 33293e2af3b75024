"""Bucket → edge and star-contraction maths: pure numpy, no loop per row, tested in microseconds.

Node ids are int64 ``file_index << 40 | line``, so "smallest id" means "first file, first line".

Edges from a bucket (all docs sharing one band key, or one exact hash) are *source-aware stars*: inside
each source the docs link to that source's smallest doc, and those per-source heads link to the bucket's
smallest doc. That is still k−1 edges for k docs (never k²), the global graph is connected exactly as a
plain star would make it, and dropping the cross-source edges leaves each source's own buckets
connected, so one pass yields both global and local dedup.
"""

from __future__ import annotations

import numpy as np

EDGE_DTYPE = np.dtype([("u", "<i8"), ("v", "<i8"), ("su", "i1"), ("sv", "i1")])


def star_edges(keys: np.ndarray, nodes: np.ndarray, sources: np.ndarray) -> np.ndarray:
    """Source-aware star edges (``u < v``) for rows grouped by ``keys``; duplicates removed.

    ``keys`` uint64 bucket keys, ``nodes`` int64 ids, ``sources`` int8 source indices, one row each.
    """
    n = len(keys)
    if n < 2:
        return np.empty(0, EDGE_DTYPE)
    order = np.lexsort((nodes, sources, keys))
    k, nd, s = keys[order], nodes[order], sources[order]
    new_key = np.empty(n, bool)
    new_key[0] = True
    new_key[1:] = k[1:] != k[:-1]
    new_ks = new_key.copy()
    new_ks[1:] |= s[1:] != s[:-1]
    idx = np.arange(n)
    head = np.maximum.accumulate(np.where(new_ks, idx, 0))  # first row of the (key, source) run
    same = ~new_ks
    e_same = np.empty(int(same.sum()), EDGE_DTYPE)
    e_same["u"], e_same["v"] = nd[head[same]], nd[same]
    e_same["su"] = e_same["sv"] = s[same]
    # cross-source: each (key, source) head links to the key's smallest node
    h = np.flatnonzero(new_ks)
    hk, hn, hs = k[h], nd[h], s[h]
    starts = np.flatnonzero(np.r_[True, hk[1:] != hk[:-1]])
    gmin = np.minimum.reduceat(hn, starts)
    counts = np.diff(np.r_[starts, len(h)])
    gmin_row = np.repeat(gmin, counts)
    # the source of each key's minimum node
    is_min = hn == gmin_row
    min_src_by_group = np.zeros(len(starts), dtype=hs.dtype)
    grp = np.repeat(np.arange(len(starts)), counts)
    min_src_by_group[grp[is_min]] = hs[is_min]
    cross = ~is_min
    e_cross = np.empty(int(cross.sum()), EDGE_DTYPE)
    e_cross["u"], e_cross["v"] = gmin_row[cross], hn[cross]
    e_cross["su"], e_cross["sv"] = np.repeat(min_src_by_group, counts)[cross], hs[cross]
    return unique_edges(np.concatenate([e_same, e_cross]))


def unique_edges(edges: np.ndarray) -> np.ndarray:
    """Sort edges by (u, v) and drop repeats (the same pair found in several bands)."""
    if len(edges) == 0:
        return edges
    order = np.lexsort((edges["v"], edges["u"]))
    e = edges[order]
    keep = np.r_[True, (e["u"][1:] != e["u"][:-1]) | (e["v"][1:] != e["v"][:-1])]
    return e[keep]


def local_only(edges: np.ndarray) -> np.ndarray:
    """The edges of local (within-source) dedup: same-source edges only."""
    return edges[edges["su"] == edges["sv"]]


# ---- distributed connected components: alternating large-star / small-star (Kiveris et al. 2014) ----
# Each round is a shuffle by node followed by one of these per-partition operations. Every node whose
# neighbourhood is needed must have *all* its incident rows in the same partition (the caller
# partitions by ``hash(a)``). At convergence every edge is (node, component minimum).


def _group_min(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sort rows by ``a``; return sorted a, b and, per row, min(b over the row's group ∪ {a})."""
    order = np.argsort(a, kind="stable")
    a, b = a[order], b[order]
    starts = np.flatnonzero(np.r_[True, a[1:] != a[:-1]])
    m = np.minimum.reduceat(b, starts)
    m = np.minimum(m, a[starts])
    counts = np.diff(np.r_[starts, len(a)])
    return a, b, np.repeat(m, counts)


def large_star(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows (a, b) = each undirected edge in both directions. Emits (v, m(u)) for v ∈ Γ(u), v > u."""
    if len(a) == 0:
        return a, b
    a, b, m = _group_min(a, b)
    sel = b > a
    return _canon(b[sel], m[sel])


def small_star(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows (a, b) with a > b (each edge once, keyed by its larger end). Emits (v, m) for v ∈ N(u) ∪ {u}."""
    if len(a) == 0:
        return a, b
    a, b, m = _group_min(a, b)
    heads = np.flatnonzero(np.r_[True, a[1:] != a[:-1]])
    out_a = np.concatenate([b, a[heads]])
    out_b = np.concatenate([m, m[heads]])
    return _canon(out_a, out_b)


def _canon(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Undirected edges as (larger, smaller), self-loops and repeats removed."""
    hi, lo = np.maximum(x, y), np.minimum(x, y)
    keep = hi != lo
    hi, lo = hi[keep], lo[keep]
    if len(hi) == 0:
        return hi, lo
    pair = np.unique(np.stack([hi, lo], axis=1), axis=0)
    return pair[:, 0].copy(), pair[:, 1].copy()


def edge_checksum(hi: np.ndarray, lo: np.ndarray) -> tuple[int, int]:
    """Order-independent fingerprint of an edge set, to detect convergence across partitions."""
    if len(hi) == 0:
        return 0, 0
    h = (hi.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)) ^ (lo.astype(np.uint64) + np.uint64(0x632BE59BD9B4E019))
    h ^= h >> np.uint64(31)
    h *= np.uint64(0xBF58476D1CE4E5B9)
    return int(np.bitwise_xor.reduce(h)), len(hi)


def star_components(hi: np.ndarray, lo: np.ndarray, max_rounds: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Single-partition reference of the distributed algorithm: (node, label = component minimum)."""
    hi, lo = _canon(hi, lo)
    prev = None
    for _ in range(max_rounds):
        hi, lo = large_star(np.concatenate([hi, lo]), np.concatenate([lo, hi]))
        hi, lo = small_star(hi, lo)
        cur = edge_checksum(hi, lo)
        if cur == prev:
            break
        prev = cur
    else:
        raise RuntimeError("star contraction did not converge")
    return labels_from_stars(hi, lo)


def labels_from_stars(hi: np.ndarray, lo: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """After convergence every edge is (node, root): label each node and each root with the root."""
    nodes = np.concatenate([hi, lo])
    labels = np.concatenate([lo, lo])
    order = np.lexsort((labels, nodes))
    nodes, labels = nodes[order], labels[order]
    first = np.r_[True, nodes[1:] != nodes[:-1]]
    return nodes[first], labels[first]
