"""Keep policies: exactly one survivor per component, chosen deterministically."""

from __future__ import annotations

import numpy as np
import pytest

from slimpipe.dedup.keep import choose_keep, representatives, source_ranks

LABELS = np.array([0, 0, 0, 3, 3, 5])
IDS = np.array([0, 1, 2, 3, 4, 5])


def test_smallest_id_default():
    assert choose_keep(LABELS, IDS).tolist() == [0, 0, 0, 3, 3, 5]
    assert (choose_keep(LABELS, IDS) == IDS).tolist() == [True, False, False, True, False, True]


def test_longest_ties_by_smallest_id():
    length = np.array([10, 50, 50, 7, 9, 1])
    assert choose_keep(LABELS, IDS, "longest", length=length).tolist() == [1, 1, 1, 4, 4, 5]


def test_source_priority_names_and_unlisted_sources():
    source = np.array(["cc", "wikipedia", "book", "cc", "c4", "github"])
    kept = choose_keep(LABELS, IDS, "source-priority", source=source, source_priority=["wikipedia", "c4"])
    assert kept.tolist() == [1, 1, 1, 4, 4, 5]
    # No listed source in a component: smallest id wins.
    kept = choose_keep(LABELS, IDS, "source-priority", source=source, source_priority=["arxiv"])
    assert kept.tolist() == [0, 0, 0, 3, 3, 5]


def test_source_priority_with_integer_sources():
    source = np.array([2, 1, 1, 0, 2, 0])
    kept = choose_keep(LABELS, IDS, "source-priority", source=source, source_priority=[1, 2])
    assert kept.tolist() == [1, 1, 1, 4, 4, 5]
    assert source_ranks(source, [1, 2]).tolist() == [1, 0, 0, 2, 1, 2]


def test_labels_need_not_be_member_ids_and_order_does_not_matter():
    rng = np.random.default_rng(0)
    perm = rng.permutation(IDS.size)
    labels = np.array([70, 70, 70, 12, 12, 99])  # arbitrary component names
    kept = choose_keep(labels[perm], IDS[perm])
    assert kept.tolist() == np.array([0, 0, 0, 3, 3, 5])[perm].tolist()
    comp, rep = representatives(labels, IDS)
    assert comp.tolist() == [12, 70, 99] and rep.tolist() == [3, 0, 5]


@pytest.mark.parametrize("policy", ["smallest-id", "source-priority", "longest"])
def test_random_against_python_reference(policy):
    rng = np.random.default_rng(1)
    n = 5000
    ids = rng.choice(10**9, n, replace=False)
    labels = rng.integers(0, 800, n)
    source = rng.integers(0, 7, n)
    length = rng.integers(0, 50, n)  # many ties
    priority = [4, 0, 6]
    kept = choose_keep(labels, ids, policy, source=source, length=length, source_priority=priority)
    rank = {s: i for i, s in enumerate(priority)}
    for comp in np.unique(labels):
        members = np.flatnonzero(labels == comp)
        if policy == "smallest-id":
            best = min(members, key=lambda i: ids[i])
        elif policy == "longest":
            best = min(members, key=lambda i: (-length[i], ids[i]))
        else:
            best = min(members, key=lambda i: (rank.get(source[i], len(priority)), ids[i]))
        assert (kept[members] == ids[best]).all()
    assert (kept == ids).sum() == np.unique(labels).size  # exactly one kept per component


def test_errors_and_empty():
    with pytest.raises(ValueError):
        choose_keep(LABELS, IDS, "longest")
    with pytest.raises(ValueError):
        choose_keep(LABELS, IDS, "source-priority", source=np.zeros(6))
    with pytest.raises(ValueError):
        choose_keep(LABELS, IDS, "oldest")
    with pytest.raises(ValueError):
        choose_keep(LABELS, IDS[:3])
    empty = np.array([], np.int64)
    assert choose_keep(empty, empty).size == 0
