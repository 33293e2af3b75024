"""Small SlimPajama output folders for the mix tests, in exactly the layout ``slimpipe slimpajama`` writes.

The text is real: the embedded sample (``slimpipe sample``), split per source into train / validation /
test, written as ``{split}/chunk{i}/example_{split}_{j}.jsonl.zst`` with ``index.json`` (per shard, per
source docs/bytes/words) and ``manifest.json`` (files with SHA-256).
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from slimpipe import storage
from slimpipe.io.readers import read_all
from slimpipe.io.writers import JsonlZstWriter, ShardInfo, shard_relpath, write_manifest
from slimpipe.sample import FILES, GROUND_TRUTH, write_sample
from slimpipe.sources import SET_NAMES


@dataclass
class SlimPajamaFixture:
    root: Path
    train: dict[str, list[str]] = field(default_factory=dict)  # source -> texts
    validation: dict[str, list[str]] = field(default_factory=dict)
    test: dict[str, list[str]] = field(default_factory=dict)
    contaminated: str | None = None  # a validation text also planted in train


def sample_documents(folder: Path, size: float = 0.25, seed: int = 0) -> list[tuple[str, str, str]]:
    """``(id, source, text)`` of the embedded sample, written under ``folder`` (deterministic).

    The planted duplicates are left out (their ids are in the sample's ground truth), so the documents
    are as free of near-duplicates as a real SlimPajama output.
    """
    write_sample(folder, seed=seed, size=size)
    with open(folder / GROUND_TRUTH, encoding="utf-8") as fh:
        planted = {json.loads(line)["id"] for line in fh if line.strip()}
    docs, _rejects, _stats = read_all([folder / f for f in FILES])
    return [d for d in zip(docs.column("id").to_pylist(), docs.column("source").to_pylist(),
                           docs.column("text").to_pylist(), strict=True) if d[0] not in planted]


def build_slimpajama_dir(root: Path, docs: list[tuple[str, str, str]], *, train_shards: int = 4,
                         holdout_per_source: int = 2, seed: int = 0, contaminate: bool = False,
                         with_index: bool = True) -> SlimPajamaFixture:
    """Split ``docs`` per source into holdout (validation + test) and train, write the SlimPajama layout.

    Each source keeps most of its documents for train; ``holdout_per_source`` go to validation and as
    many to test (fewer for sources with few documents, so every source still has train data).

    Train shards alternate between ``chunk1`` and ``chunk2``. ``contaminate`` plants one validation
    document's exact text into the first train shard (the mix must drop it).
    """
    rng = random.Random(seed)
    by_source: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for doc_id, source, text in docs:
        by_source[source].append((doc_id, text))
    fx = SlimPajamaFixture(root=root)
    split_docs: dict[str, list[tuple[str, str, str]]] = {"train": [], "validation": [], "test": []}
    for source in sorted(by_source):
        items = by_source[source]
        rng.shuffle(items)
        h = holdout_per_source if len(items) > 2 * holdout_per_source + 1 else (1 if len(items) >= 3 else 0)
        v = h if len(items) != 2 else 1  # two documents: one to validation, one to train, none to test
        parts = {"validation": items[:v], "test": items[v : v + h], "train": items[v + h :]}
        for split, part in parts.items():
            split_docs[split] += [(i, source, t) for i, t in part]
            getattr(fx, split)[source] = [t for _, t in part]
    rng.shuffle(split_docs["train"])
    if contaminate and split_docs["validation"]:
        doc_id, source, text = split_docs["validation"][0]
        split_docs["train"].insert(0, (doc_id + "#leak", source, text))
        fx.contaminated = text

    infos: list[ShardInfo] = []
    index: dict[str, list[dict]] = {}
    for split, items in split_docs.items():
        n = train_shards if split == "train" else 1
        buckets: list[list[tuple[str, str, str]]] = [[] for _ in range(n)]
        for k, item in enumerate(items):
            buckets[k % n].append(item)
        entries = []
        for j, bucket in enumerate(buckets):
            chunk, number = (1 + j % 2, j // 2) if split == "train" else (1, 0)
            rel = shard_relpath(split, chunk, number)
            counts: dict[str, dict[str, int]] = {}
            w = JsonlZstWriter(root, rel)
            for doc_id, source, text in bucket:
                w.write({"text": text, "meta": {"redpajama_set_name": SET_NAMES.get(source, source), "slimpipe_id": doc_id}})
                c = counts.setdefault(source, {"docs": 0, "bytes": 0, "words": 0})
                c["docs"] += 1
                c["bytes"] += len(text.encode("utf-8"))
                c["words"] += len(text.split())
            infos.append(w.close())
            entries.append({"path": rel, "sources": counts})
        index[split] = entries
    if with_index:
        storage.write_json_atomic(root / "index.json", {"splits": index})
    write_manifest(root, infos)
    return fx

