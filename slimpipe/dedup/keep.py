"""Which document of each duplicate cluster survives: deterministic, vectorised keep policies.

Policies (``DedupParams.keep``):

* ``smallest-id`` (default): the smallest global id, i.e. the first document in input order, which
  is what SlimPajama kept ("the first node of each component").
* ``source-priority``: the document from the most preferred source (a given ordering of sources;
  sources not listed come after all listed ones), ties by smallest id. Useful to keep e.g. the
  Wikipedia copy of a paragraph rather than the CommonCrawl one.
* ``longest``: the longest document (e.g. raw length), ties by smallest id: keeps the most complete copy.

Everything is one ``np.lexsort`` over (component, policy key, id); no Python loop per node, so the same
code serves one partition of a distributed job or the whole graph.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from slimpipe.dedup.params import KEEP_POLICIES

__all__ = ["choose_keep", "check_clusters", "policy_order", "representatives", "source_ranks"]


def source_ranks(source: np.ndarray, source_priority: Sequence) -> np.ndarray:
    """Rank of each node's source in ``source_priority`` (0 = most preferred); unlisted sources rank last.

    ``source`` may hold integers (source indices) or strings (source names); the lookup loops over the
    distinct sources only.
    """
    source = np.asarray(source)
    uniq, inverse = np.unique(source, return_inverse=True)
    position = {s: i for i, s in enumerate(source_priority)}
    last = len(position)
    uniq_rank = np.array([position.get(s.item() if hasattr(s, "item") else s, last) for s in uniq], dtype=np.int64)
    return uniq_rank[inverse.reshape(-1)]


def _policy_key(
    n: int,
    policy: str,
    source: np.ndarray | None,
    length: np.ndarray | None,
    source_priority: Sequence | None,
) -> np.ndarray:
    """Secondary sort key: smaller is preferred."""
    if policy == "smallest-id":
        return np.zeros(n, dtype=np.int64)
    if policy == "source-priority":
        if source is None or source_priority is None:
            raise ValueError("keep policy 'source-priority' needs source and source_priority")
        return source_ranks(source, source_priority)
    if policy == "longest":
        if length is None:
            raise ValueError("keep policy 'longest' needs length")
        return -np.asarray(length, dtype=np.int64)
    raise ValueError(f"unknown keep policy {policy!r}; choose one of {KEEP_POLICIES}")


def policy_order(
    labels: np.ndarray,
    ids: np.ndarray,
    policy: str = "smallest-id",
    *,
    source: np.ndarray | None = None,
    length: np.ndarray | None = None,
    source_priority: Sequence | None = None,
) -> np.ndarray:
    """Indices sorting nodes by component, then the policy's preference, then id (the first is kept)."""
    labels = np.asarray(labels, dtype=np.int64)
    key = _policy_key(labels.size, policy, source, length, source_priority)
    if key.shape != labels.shape:
        raise ValueError("per-node attributes must have one value per node")
    return np.lexsort((np.asarray(ids, np.int64), key, labels))


def check_clusters(
    labels: np.ndarray,
    order: np.ndarray,
    similar: Callable[[int, int], bool],
    max_rounds: int = 16,
    prefetch: Callable[[list[tuple[int, int]]], None] | None = None,
) -> tuple[np.ndarray, int]:
    """Cluster verification: break the chains that connected components make.

    A component links A ~ B ~ C even when A and C share little; removing C as a copy of A would then
    be wrong. Within each component, visited in ``order`` (the keep policy's preference, see
    :func:`policy_order`), the first node is kept and every node ``similar`` to it is removed as its
    duplicate; the nodes that are not start the next round, whose first node is kept in turn. So each
    removed node is similar to the very document kept in its stead, and every other node is kept. After
    ``max_rounds`` rounds the nodes still unplaced are kept (keeping is the safe error).

    Rounds run over all components at once: ``prefetch``, if given, first receives every ``(node,
    keeper)`` pair the round will ask ``similar`` about (so a caller can measure them in one batch).

    Returns ``(head, rounds)``: ``head[i]`` is the index of the node kept for node ``i`` (``i`` itself
    when it is kept), and the largest number of rounds any component needed.
    """
    labels = np.asarray(labels, np.int64)
    order = np.asarray(order, np.int64)
    head = np.arange(labels.size, dtype=np.int64)
    if labels.size == 0:
        return head, 0
    sorted_labels = labels[order]
    cuts = np.flatnonzero(np.r_[True, sorted_labels[1:] != sorted_labels[:-1], True])
    remaining = [order[a:b].tolist() for a, b in zip(cuts[:-1].tolist(), cuts[1:].tolist(), strict=True)]
    rounds = 0
    while rounds < max_rounds:
        remaining = [r for r in remaining if len(r) > 1]
        if not remaining:
            break
        rounds += 1
        if prefetch is not None:
            prefetch([(i, r[0]) for r in remaining for i in r[1:]])
        nxt = []
        for r in remaining:
            keeper, rest = r[0], []
            for i in r[1:]:
                if similar(i, keeper):
                    head[i] = keeper
                else:
                    rest.append(i)
            nxt.append(rest)
        remaining = nxt
    return head, rounds


def representatives(
    labels: np.ndarray,
    ids: np.ndarray,
    policy: str = "smallest-id",
    *,
    source: np.ndarray | None = None,
    length: np.ndarray | None = None,
    source_priority: Sequence | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(component labels sorted, the id kept in each component)."""
    labels = np.asarray(labels, dtype=np.int64)
    ids = np.asarray(ids, dtype=np.int64)
    if labels.shape != ids.shape:
        raise ValueError("labels and ids must have the same length")
    if labels.size == 0:
        return labels.copy(), ids.copy()
    order = policy_order(labels, ids, policy, source=source, length=length, source_priority=source_priority)
    sorted_labels = labels[order]
    first = np.flatnonzero(np.r_[True, sorted_labels[1:] != sorted_labels[:-1]])
    return sorted_labels[first], ids[order[first]]


def choose_keep(
    labels: np.ndarray,
    ids: np.ndarray,
    policy: str = "smallest-id",
    *,
    source: np.ndarray | None = None,
    length: np.ndarray | None = None,
    source_priority: Sequence | None = None,
) -> np.ndarray:
    """For every node, the id kept in its component (equal to its own id when the node is kept).

    This is also the "duplicate of" column of the removals table.
    """
    comp, kept = representatives(
        labels, ids, policy, source=source, length=length, source_priority=source_priority
    )
    if comp.size == 0:
        return kept
    return kept[np.searchsorted(comp, np.asarray(labels, dtype=np.int64))]
