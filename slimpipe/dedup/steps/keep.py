"""Keep one document per component, one task per label partition, for global and local mode.

Each task looks up its nodes' source, bytes and exact hash in the read step's per-task rows, applies
the keep policy (:func:`slimpipe.dedup.keep.choose_keep`) and routes the removed rows (with their
reason, component and keeper) by the task that read them, one shuffle file per keep task; the write
step reads its partition. Summaries for the report (per source and reason, cross-source pairs,
cluster sizes, the largest clusters) travel in the task's result.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from slimpipe.dedup.results import KeepResult, TopCluster
from slimpipe.dedup.steps.common import (
    CC_DTYPE,
    EXACT,
    NEAR,
    PREPASS_DTYPE,
    REASON_NAMES,
    REMOVED_DTYPE,
    load_remap,
    read_rows,
    task_of,
    to_global,
)
from slimpipe.runtime import TaskContext, Workspace, read_partition, write_partitioned


def lookup_attrs(ws: Workspace, nodes: np.ndarray, remap: np.ndarray) -> np.ndarray:
    """Read-step rows (job source codes) of the given nodes, via each task's table sorted by node."""
    out = np.empty(len(nodes), PREPASS_DTYPE)
    tasks = task_of(nodes)
    for t in np.unique(tasks).tolist():
        sel = tasks == t
        pre = read_rows(ws, t, mmap=True)
        idx = np.searchsorted(pre["node"], nodes[sel])
        out[sel] = pre[np.minimum(idx, len(pre) - 1)] if len(pre) else out[sel]
    if len(nodes) and not np.array_equal(out["node"], nodes):
        raise RuntimeError("internal error: component node missing from the read step's rows")
    out["src"] = to_global(out["src"], out["node"], remap)
    return out


@dataclass(frozen=True)
class ClusterCheck:
    """``--verify`` with ``cluster_check``: each removal is checked against the document kept in its stead.

    A near-duplicate is removed only when its exact Jaccard (``ngram`` ``unit`` shingles hashed with
    ``seed``) with its keeper reaches ``threshold`` (:func:`slimpipe.dedup.keep.check_clusters`); the
    others are kept, or removed as copies of another kept member they do match. ``texts`` names each
    read task's cleaned-texts file.
    """

    threshold: float
    ngram: int
    unit: str
    seed: int
    texts: list[str | None]


@dataclass(frozen=True)
class KeepSpec:
    """What every task of one mode's keep step shares (each task adds its label partition)."""

    mode: str  # global | local
    inputs: str  # the committed list of the components' (node, label) shuffle files
    policy: str  # smallest-id | source-priority | longest
    priority: list[int]  # job source codes, most preferred first (source-priority)
    sources: list[str]  # the job's source names: sources[code]
    ntasks: int  # read tasks: the removed rows are routed to the write task that reads them
    check: ClusterCheck | None = None


def keep_task(ctx: TaskContext, spec: KeepSpec, r: int) -> dict:
    """Keep one document per component of label partition ``r``; with ``spec.check``, verify clusters.

    Returns a :class:`slimpipe.dedup.results.KeepResult` as a dict; its ``saved`` counts the documents
    the cluster check keeps that the components alone would have removed.
    """
    from slimpipe.dedup.keep import choose_keep, policy_order

    ws = ctx.ws
    policy, priority, sources, check = spec.policy, spec.priority, spec.sources, spec.check
    cc_pieces = ws.inputs(spec.inputs)
    remap = load_remap(ws)
    cc = np.unique(read_partition(ws, cc_pieces, r, CC_DTYPE))  # roots can arrive from several partitions
    attrs = lookup_attrs(ws, cc["node"], remap)
    src64 = attrs["src"].astype(np.int64)
    keeper = choose_keep(cc["label"], cc["node"], policy, source=src64, length=attrs["nbytes"],
                         source_priority=priority)
    saved: dict[str, int] = {}
    rounds = 0
    if check is not None and len(cc):
        head, rounds = _check(ws, cc, attrs, keeper, check,
                              policy_order(cc["label"], cc["node"], policy, source=src64, length=attrs["nbytes"],
                                           source_priority=priority))
        new_keeper = cc["node"][head]
        for s_ in attrs["src"][(cc["node"] != keeper) & (new_keeper == cc["node"])].tolist():
            saved[sources[s_]] = saved.get(sources[s_], 0) + 1
        keeper = new_keeper
    removed_mask = cc["node"] != keeper
    kattrs = lookup_attrs(ws, keeper, remap)
    rem = np.empty(int(removed_mask.sum()), REMOVED_DTYPE)
    rem["node"], rem["label"], rem["keeper"] = cc["node"][removed_mask], cc["label"][removed_mask], keeper[removed_mask]
    rem["src"], rem["ksrc"] = attrs["src"][removed_mask], kattrs["src"][removed_mask]
    rem["reason"] = np.where(attrs["xhash"][removed_mask] == kattrs["xhash"][removed_mask], EXACT, NEAR)
    piece = write_partitioned(ws, f"{ctx.step}/removed{r:05d}.shuf", rem, task_of(rem["node"]), spec.ntasks)
    return _summary(cc, keeper, rem, attrs["nbytes"][removed_mask], sources, saved, rounds, piece).to_dict()


def _summary(cc: np.ndarray, keeper: np.ndarray, rem: np.ndarray, rbytes: np.ndarray, sources: list[str],
             saved: dict[str, int], rounds: int, piece) -> KeepResult:
    """The partition's summaries for the report: removals per source and reason, cross-source pairs, cluster
    sizes and the largest clusters. A cluster is a kept document with the copies removed for it: without
    the check, exactly one per component; with it, a component may split (its other kept members are no
    one's duplicates, or head clusters of their own)."""
    kept_u, inv, sizes = np.unique(keeper, return_inverse=True, return_counts=True)
    multi = sizes > 1
    cl_label = cc["label"][np.searchsorted(cc["node"], kept_u)]
    by: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    for s, reason, nb in zip(rem["src"].tolist(), rem["reason"].tolist(), rbytes.tolist(), strict=True):
        k = (sources[s], REASON_NAMES[reason])
        by[k][0] += 1
        by[k][1] += nb
    cross: dict[tuple[str, str], int] = defaultdict(int)
    for s, ks in zip(rem["src"].tolist(), rem["ksrc"].tolist(), strict=True):
        cross[(sources[s], sources[ks])] += 1
    top = []
    for i in np.lexsort((cl_label, -sizes)).tolist()[:8]:
        if not multi[i]:
            break
        members = cc["node"][inv == i]
        top.append(TopCluster(label=int(cl_label[i]), size=int(sizes[i]), keeper=int(kept_u[i]),
                              members=[int(x) for x in members[:6]]))
    return KeepResult(
        removed=_sorted_pairs(by),
        cross=_sorted_pairs(cross),
        cluster_sizes={int(k): int(v) for k, v in zip(*np.unique(sizes[multi], return_counts=True), strict=True)},
        components=int(multi.sum()),
        saved=dict(sorted(saved.items())),
        check_rounds=rounds,
        removed_bytes=int(rbytes.sum()),
        top=top,
        piece=piece,
    )


def _sorted_pairs(d: dict[tuple[str, str], object]) -> dict:
    """In the order of their JSON keys ``"a|b"`` (the order the report's tables are built in)."""
    return dict(sorted(d.items(), key=lambda kv: "|".join(kv[0])))


def _check(ws: Workspace, cc: np.ndarray, attrs: np.ndarray, keeper: np.ndarray, check: ClusterCheck,
           order: np.ndarray) -> tuple[np.ndarray, int]:
    """:func:`check_clusters` on the components holding a near-duplicate removal, by exact Jaccard.

    Exact copies (same cleaned-text hash) are similar without looking. A component of two documents is
    their one edge, which ``--verify`` confirmed (exact Jaccard >= threshold, the same float64 test as
    here) or which joins exact copies: it passes without reading a text. In the larger ones each side's
    text is the cleaned text the read step stored for the first copy of that text in its task (one text
    serves every exact copy), and the first round's pairs (every member against the component's first
    node), and so each later round's, are measured in one compiled call
    (:func:`slimpipe.dedup.jaccard.jaccard_pairs`).
    """
    from slimpipe.dedup.jaccard import jaccard_pairs
    from slimpipe.dedup.keep import check_clusters
    from slimpipe.dedup.steps.verify import cleaned_texts

    keeper_at = np.searchsorted(cc["node"], keeper)
    near = (cc["node"] != keeper) & (attrs["xhash"] != attrs["xhash"][keeper_at])
    labels, sizes = np.unique(cc["label"], return_counts=True)
    size = sizes[np.searchsorted(labels, cc["label"])]
    involved = np.isin(cc["label"], np.unique(cc["label"][near & (size > 2)]))
    head = keeper_at.astype(np.int64)  # exact copies and verified pairs: as the policy chose
    if not involved.any():
        return head, 0
    idx = np.flatnonzero(involved)
    nodes = cc["node"][idx]
    xhash = attrs["xhash"][idx]
    texts: dict[int, str] = {}
    tasks = task_of(nodes)
    for t in np.unique(tasks).tolist():
        for node, clean in cleaned_texts(ws, check.texts[t], nodes[tasks == t]).items():
            texts.setdefault(int(xhash[np.searchsorted(nodes, node)]), clean)
    xh_list = list(texts)
    doc_of = {xh: i for i, xh in enumerate(xh_list)}
    docs = [texts[xh] for xh in xh_list]
    threshold = float(check.threshold)
    known: dict[tuple[int, int], bool] = {}

    def measure(pairs: list[tuple[int, int]]) -> None:
        pairs = [(a, b) for a, b in pairs if a != b and a in doc_of and b in doc_of and (a, b) not in known]
        if pairs:
            j = jaccard_pairs(docs, np.array([doc_of[a] for a, _ in pairs]), np.array([doc_of[b] for _, b in pairs]),
                              check.ngram, check.unit, check.seed)
            known.update(zip(pairs, (j >= threshold).tolist(), strict=True))

    def similar(i: int, j: int) -> bool:
        a, b = int(xhash[i]), int(xhash[j])
        if a == b:
            return True
        if a not in doc_of or b not in doc_of:  # no stored text to check against (not expected): keep it
            return False
        measure([(a, b)])
        return known[(a, b)]

    pos = np.full(len(cc), -1, np.int64)
    pos[idx] = np.arange(len(idx))
    sub_order = pos[order[involved[order]]]
    sub_head, rounds = check_clusters(cc["label"][idx], sub_order, similar,
                                      prefetch=lambda pairs: measure([(int(xhash[i]), int(xhash[j])) for i, j in pairs]))
    head[idx] = idx[sub_head]
    return head, rounds
