"""The per-source token cache: each source's documents are tokenized once per tokenizer and input, and
every mix (``slimpipe mix``, ``slimpipe propose``'s proxies) draws from the same files.

Layout under the cache root (``SLIMPAJAMA_DIR/_cache/tokens`` unless ``--token-cache`` says otherwise)::

    <tokenizer id>/<input id>/holdout/<shard>.arrow          every held-out document (all sources)
                                     <shard>.json           its stats; <shard>.hashes.npy: text hashes
    <tokenizer id>/<input id>/train-<holdout id>/<source>/<shard>.arrow   one source of one train shard
                                                 <source>/<shard>.json    its stats

The tokenizer id is the tokenizer's identity (a hash of its files), the input id a hash of the input's
``manifest.json`` / ``index.json`` / location, and the holdout id a hash of the held-out text hashes
(train documents identical to a held-out one are dropped while tokenizing). A file is published by
rename after it is complete, and its ``.json`` after it, so a reader never sees a partial entry and two
builds sharing the cache at once at worst tokenize a shard twice. A mix needing a source the cache lacks
tokenizes just that source of just the shards it reads.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slimpipe import storage

CACHE_DIR = ("_cache", "tokens")


def default_cache_root(slimpajama_dir: str | Path) -> str:
    return storage.join(slimpajama_dir, *CACHE_DIR)


@dataclass
class TokenCache:
    """Where one (tokenizer, input) pair keeps its tokenized shards, and how often it was hit."""

    root: str  # a path or a URI
    tokenizer_id: str
    input_id: str
    hits: int = 0  # (shard, source) entries found
    tokenized: int = 0  # (shard, source) entries written by this build
    holdout_hits: int = 0
    holdout_tokenized: int = 0

    @property
    def base(self) -> str:
        return storage.join(self.root, self.tokenizer_id[:16], self.input_id)

    def holdout_dir(self) -> str:
        return storage.join(self.base, "holdout")

    def train_dir(self, holdout_id: str) -> str:
        return storage.join(self.base, f"train-{holdout_id[:16]}")

    @staticmethod
    def load(result_json: str, data: str, *extra: str) -> dict[str, Any] | None:
        """A complete entry's stats, or None (missing, or any of its files absent or unreadable).
        The ``.json`` is published after the data files, so its presence is checked first."""
        try:
            if not (storage.exists(result_json) and storage.exists(data) and all(storage.exists(p) for p in extra)):
                return None
            return json.loads(storage.read_bytes(result_json))
        except (OSError, ValueError):
            return None

    def describe(self) -> dict[str, Any]:
        return {"path": self.base, "tokenizer_id": self.tokenizer_id[:16], "input_id": self.input_id,
                "train_entries_hit": self.hits, "train_entries_tokenized": self.tokenized,
                "holdout_shards_hit": self.holdout_hits, "holdout_shards_tokenized": self.holdout_tokenized}
