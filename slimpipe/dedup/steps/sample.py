"""The report's sample clusters: the largest clusters, each member's estimated and exact Jaccard to its keeper.

One task, run on the executor after the write step: it reads again only the input ranges holding a
sampled document (the driver never touches documents) and returns a few
:class:`slimpipe.dedup.results.SampleCluster` as dicts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from slimpipe.dedup.params import DedupParams
from slimpipe.dedup.results import SampleCluster, SampleMember, TopCluster
from slimpipe.dedup.steps.common import NODE_SHIFT
from slimpipe.io.readers import InputFile, iter_columns
from slimpipe.runtime import TaskContext
from slimpipe.text.normalize import clean_for_hash, normalize


@dataclass(frozen=True)
class SampleSpec:
    """The clusters to show and what the task needs to find their documents again."""

    clusters: list[TopCluster]
    tasks: list[InputFile]  # the plan's input ranges, each with its first line
    params: dict  # DedupParams.to_dict(): the shingles and permutations to measure with
    files: int  # input files of the job (shown with each sample)


def largest(tops: list[TopCluster], n: int = 5) -> list[TopCluster]:
    """The ``n`` largest clusters over every keep task (ties: smaller label first)."""
    return sorted(tops, key=lambda c: (-c.size, c.label))[:n]


def sample_task(ctx: TaskContext, spec: SampleSpec) -> dict:
    """``{"clusters": [SampleCluster.to_dict(), ...]}``, skipping a cluster whose input could not be re-read."""
    from slimpipe.dedup.minhash import estimate_jaccard, jaccard_exact, signatures

    p = DedupParams.from_dict(spec.params)
    texts = sample_texts(spec.tasks, sorted({x for c in spec.clusters for x in [c.keeper, *c.members]}))
    out = []
    for c in spec.clusters:
        if c.keeper not in texts or any(m not in texts for m in c.members):
            continue  # an input that could not be re-read: the sample shows the clusters it can
        kt = texts[c.keeper]
        members = []
        for m in c.members:
            if m == c.keeper:
                continue
            mt = texts[m]
            sig = signatures([kt["clean"], mt["clean"]], p)
            members.append(SampleMember(
                id=mt["id"], estimated_jaccard=round(float(estimate_jaccard(sig[0], sig[1])), 4),
                exact_jaccard=round(float(jaccard_exact(kt["clean"], mt["clean"], p.ngram, p.unit)), 4),
                excerpt=mt["excerpt"]))
        out.append(SampleCluster(cluster=c.label, size=c.size, keeper=kt["id"], keeper_excerpt=kt["excerpt"],
                                 members=members, files=spec.files).to_dict())
    return {"clusters": out}


def sample_texts(tasks: list[InputFile], nodes: list[int]) -> dict[int, dict[str, str]]:
    """Id, cleaned text and excerpt of a few documents, reading only the ranges that hold them."""
    want = np.asarray(nodes, np.int64)
    owner = want >> NODE_SHIFT
    out: dict[int, dict[str, str]] = {}
    for t in np.unique(owner).tolist():
        f = tasks[t]
        need = set(want[owner == t].tolist())
        for line, src, text in iter_columns(f, ("line", "source", "text")):
            node = (t << NODE_SHIFT) | (line - f.first_line)
            if node in need:
                text = normalize(text)
                out[node] = {"id": f"{src}/{f.rel}:{line}", "clean": clean_for_hash(text),
                             "excerpt": " ".join(text[:120].split())}
                need.discard(node)
                if not need:  # every sampled document of this range found: read no further
                    break
    return out
