"""The typed hand-offs of the mix: one small dataclass per shard or bucket job the driver gives a Ray task
(:meth:`slimpipe.runtime.Executor.map`), and one per result the task gives back.

Stages *tokenize*, *select* and *pack* read fields, never string keys. What a task leaves on disk is
unchanged: the token cache's ``.json`` entries (:class:`SourceTokens`, :class:`HoldoutTokens`) are
written with ``to_dict`` (the keys, order and values the untyped code wrote) and a cached entry is read
back with ``from_dict``, so a cache filled by earlier code is hit the same way.

Pure data: this module imports no stage, no Ray and nothing heavy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

    from slimpipe.io.writers import ShardInfo

# ------------------------------------------------------------------------------------- tokenize


@dataclass(frozen=True)
class TokenizeJob:
    """One input shard to tokenize (:func:`slimpipe.mix.tokenize.tokenize_shard`).

    ``sources`` None is the holdout pass (every document into the one file ``out``); a list is the train
    pass (only those sources, one file per source under ``out_dir/<source>/<flat>.arrow``)."""

    file: str  # the shard to read (a path or a URI)
    path: str  # its path relative to the input root
    flat: str  # its flat file name in the cache
    tokenizer: str  # the spec a worker loads the tokenizer by
    identity: str  # the tokenizer's identity (checked in the worker)
    sources: list[str] | None = None
    out: str | None = None
    out_dir: str | None = None


@dataclass
class SourceTokens:
    """One source of one train shard: its stats and the shard's read status (the cache's ``<shard>.json``).

    ``tokens`` is the cost: tokens + 1 EOS per document."""

    docs: int
    tokens: int
    bytes: int
    empty: int
    holdout_dropped: int
    rejected: int
    status: str
    error: str | None

    def to_dict(self) -> dict[str, Any]:
        return {"docs": self.docs, "tokens": self.tokens, "bytes": self.bytes, "empty": self.empty,
                "holdout_dropped": self.holdout_dropped, "rejected": self.rejected, "status": self.status,
                "error": self.error}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SourceTokens:
        return cls(docs=d["docs"], tokens=d["tokens"], bytes=d["bytes"], empty=d["empty"],
                   holdout_dropped=d["holdout_dropped"], rejected=d["rejected"], status=d["status"], error=d["error"])


@dataclass
class TrainTokens:
    """A train-pass result: the sources this task tokenized (none when the cache held them all)."""

    path: str
    sources: dict[str, SourceTokens] = field(default_factory=dict)


@dataclass
class HoldoutTokens:
    """A holdout-pass result: per-source stats (``docs``, ``tokens``, ``bytes``, ``empty``,
    ``holdout_dropped``) and the shard's read status; ``to_dict`` is the cache's ``<shard>.json``."""

    path: str
    stats: dict[str, dict[str, int]]
    rejected: int
    status: str
    error: str | None

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "stats": self.stats, "rejected": self.rejected, "status": self.status,
                "error": self.error}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> HoldoutTokens:
        return cls(path=d["path"], stats=d["stats"], rejected=d["rejected"], status=d["status"], error=d["error"])


# --------------------------------------------------------------------------------------- select


@dataclass(frozen=True)
class SelectJob:
    """One shard's pieces to choose and write grouped by bucket (:func:`slimpipe.mix.select.select_shard`)."""

    path: str  # relative to the input root
    file: str  # the input shard (read for the texts of a text-format mix)
    key: int  # the shard's seed key
    pass1: dict[str, str]  # source -> its cached token file, in the plan's order
    plan: dict[str, tuple[int, int]]  # source -> (whole epochs, quota of one more)
    seed: int
    buckets: int
    format: str  # "packed" or "text"
    vocab_size: int
    tokenizer: str
    identity: str
    out: str  # the pieces file


@dataclass(frozen=True)
class PieceCounts:
    """One source's pieces chosen from one shard: how many, their tokens (+1 EOS each), how many cut."""

    pieces: int
    tokens: int
    truncated: int


@dataclass
class SelectResult:
    path: str
    buckets: list[int]  # pieces per bucket
    sources: dict[str, PieceCounts]


# ----------------------------------------------------------------------------------------- pack


@dataclass(frozen=True)
class TokenizerInfo:
    """What a packing task needs of the tokenizer (which it does not load)."""

    vocab_size: int
    eos_id: int
    describe: dict[str, Any]


@dataclass(frozen=True)
class PackJob:
    """One shuffle bucket to pack into ``train/part-<bucket>`` (:func:`slimpipe.mix.pack.pack_bucket`)."""

    bucket: int
    files: list[str]  # every shard's pieces file
    seed: int
    seq_len: int
    train: str  # the train set's folder
    tokenizer: TokenizerInfo
    sources: list[str]  # source codes -> names
    meta: dict[str, Any]  # the set's metadata (written into the part)


@dataclass
class PackResult:
    """One packed part: sequences' tokens and documents per source code, and the tail it could not fill
    (ids, per-token bytes, ``(source code, tokens)`` runs); ``part`` None for an empty bucket."""

    bucket: int
    part: str | None
    counts: list[int]
    docs: list[int]
    tail: tuple[np.ndarray, np.ndarray, list[tuple[int, int]]]
    index: dict[str, Any] | None = None


@dataclass(frozen=True)
class TextBucketJob:
    """One shuffle bucket to write as ``train/chunk{bucket+1}/`` text shards (:func:`slimpipe.mix.pack.write_text_bucket`)."""

    bucket: int
    files: list[str]
    seed: int
    root: str  # the mix's output folder
    shard_bytes: int
    sources: list[str]


@dataclass
class TextBucketResult:
    """The shards one bucket wrote, and per shard its per-source stats (``{"path", "sources"}``, as the
    manifest lists them)."""

    shards: list[ShardInfo]
    index: list[dict[str, Any]]
