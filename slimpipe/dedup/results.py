"""The typed hand-offs of the dedup job: one small dataclass per step result, and the bundle the report reads.

A task of :mod:`slimpipe.dedup.steps` builds its result here and returns ``result.to_dict()``: the
executor (:mod:`slimpipe.runtime.executor`) keeps a JSON marker per task and a manifest per step, and
a resumed job reads them back. The driver turns each dict into its dataclass with ``from_dict``, so
the job and the report read fields, never string keys. The JSON layout is the one the untyped code
wrote (keys, order and values), so a job started by that code resumes from its markers; a marker
that lacks a field this code needs is refused with :class:`MarkerError`, naming the step to rerun.

Pure data: this module imports no step, no Ray and nothing heavy, so the report can import it alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from slimpipe.io.readers import FileStats
from slimpipe.outdir import OutputError

Piece = dict | None  # one map task's shuffle file (see slimpipe.runtime.shuffle), None when it is empty
PRIVATE = ("_io",)  # what the executor adds to every task's result


class MarkerError(OutputError):
    """A task marker or step manifest that this code cannot read (written by other code): one line on the CLI."""


def _need(d: dict, kind: str, *keys: str) -> None:
    missing = [k for k in keys if k not in d]
    if missing:
        raise MarkerError(f"a {kind} result in the job's workspace lacks {', '.join(missing)}: it was written by "
                          "other slimpipe code; delete the output folder (or its _work) and run again")


class _Flat:
    """A step result whose JSON is its fields, by name and in field order; ``kind`` names the step in a
    :class:`MarkerError`."""

    kind: ClassVar[str]

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}  # type: ignore[arg-type]

    @classmethod
    def from_dict(cls, d: dict) -> Any:
        names = [f.name for f in fields(cls)]  # type: ignore[arg-type]
        _need(d, cls.kind, *names)
        return cls(**{n: d[n] for n in names})


def _pairs(d: dict[str, Any]) -> dict[tuple[str, str], Any]:
    """``{"a|b": v}`` (the JSON form) → ``{("a", "b"): v}``; source names never hold ``|``."""
    return {tuple(k.split("|", 1)): v for k, v in d.items()}  # type: ignore[misc]


def _unpairs(d: dict[tuple[str, str], Any]) -> dict[str, Any]:
    return {f"{a}|{b}": v for (a, b), v in d.items()}


@dataclass(frozen=True)
class SourceCounts:
    """One source's documents and bytes read by one task, and how many of them were short."""

    docs: int
    nbytes: int
    short_docs: int
    short_bytes: int

    def to_list(self) -> list[int]:
        return [self.docs, self.nbytes, self.short_docs, self.short_bytes]


@dataclass
class ReadResult:
    """:func:`slimpipe.dedup.steps.read.read_task`: one input range read, signed and shuffled."""

    stats: FileStats
    lines: int  # lines in the range (the next range of the same file starts after them)
    docs: int
    short: int
    by_source: dict[str, SourceCounts]
    sources: list[str]  # the task's own source codes: sources[code]
    signed: int
    clean_chars: int
    band_rows: int
    exact_piece: Piece  # exact-hash rows, partitioned by key
    band_piece: Piece  # band-key rows, partitioned by key
    texts: str | None  # with --verify: the cleaned texts file of the signed documents
    rejects: str | None  # the rejected lines' table, when there are any

    def to_dict(self) -> dict:
        return {"stats": self.stats.to_dict(), "lines": self.lines, "docs": self.docs, "short": self.short,
                "by_source": {k: v.to_list() for k, v in self.by_source.items()}, "sources": list(self.sources),
                "signed": self.signed, "clean_chars": self.clean_chars, "band_rows": self.band_rows,
                "pieces": {"exact": self.exact_piece, "bands": self.band_piece}, "texts": self.texts,
                "rejects": self.rejects}

    @classmethod
    def from_dict(cls, d: dict) -> ReadResult:
        _need(d, "read", "stats", "lines", "docs", "short", "by_source", "sources", "band_rows", "pieces", "texts",
              "rejects")
        return cls(FileStats(**d["stats"]), d["lines"], d["docs"], d["short"],
                   {k: SourceCounts(*v) for k, v in d["by_source"].items()}, list(d["sources"]), d.get("signed", 0),
                   d.get("clean_chars", 0), d["band_rows"], d["pieces"]["exact"], d["pieces"]["bands"], d["texts"],
                   d["rejects"])


@dataclass
class BucketsResult(_Flat):
    """:func:`slimpipe.dedup.steps.buckets.buckets_task`: one hash partition's exact and candidate edges."""

    kind: ClassVar[str] = "buckets"

    exact_rows: int
    exact_edges: int
    band_rows: int
    edges: int  # candidate (near) edges
    exact: str | None  # the exact edges' file
    near: str | None  # without --verify: the candidate edges' file
    by_task: Piece  # with --verify: the candidate edges routed by the task that read their first document


@dataclass
class SendResult(_Flat):
    """:func:`slimpipe.dedup.steps.verify.send_task`: candidate pairs with their first text, routed on."""

    kind: ClassVar[str] = "verify_send"

    edges: int
    piece: Piece


@dataclass
class VerifyResult(_Flat):
    """:func:`slimpipe.dedup.steps.verify.check_task`: candidate pairs checked by exact Jaccard."""

    kind: ClassVar[str] = "verify"

    candidates: int
    confirmed: int
    dropped: int
    j_hist: list[int]  # 20 bins over [0, 1]
    edges_file: str | None  # the confirmed edges


@dataclass
class ModeComponents(_Flat):
    """One mode's share of the single-process components task."""

    kind: ClassVar[str] = "components"

    edges: int
    nodes: int
    piece: Piece  # (node, label) rows for the keep step


@dataclass
class FastComponentsResult:
    """:func:`slimpipe.dedup.steps.components.fast_task`: union-find of every edge, per mode."""

    modes: dict[str, ModeComponents]

    def to_dict(self) -> dict:
        return {m: c.to_dict() for m, c in self.modes.items()}

    @classmethod
    def from_dict(cls, d: dict) -> FastComponentsResult:
        return cls({m: ModeComponents.from_dict(v) for m, v in d.items() if m not in PRIVATE})


@dataclass
class StarMapResult(_Flat):
    """:func:`slimpipe.dedup.steps.components.map_task`: edges routed for one star half-round."""

    kind: ClassVar[str] = "components map"

    rows: int
    piece: Piece


@dataclass
class StarReduceResult(_Flat):
    """:func:`slimpipe.dedup.steps.components.reduce_task`: one partition's large- or small-star step."""

    kind: ClassVar[str] = "components reduce"

    changed: int
    edges: int
    out: str | None


@dataclass
class StarFinishResult(_Flat):
    """:func:`slimpipe.dedup.steps.components.finish_task`: converged stars as (node, label) rows."""

    kind: ClassVar[str] = "components finish"

    nodes: int
    piece: Piece


@dataclass
class ComponentsInfo:
    """How the components were found (the report's ``components``): the path taken and its size."""

    path: str  # "single-process" | "distributed"
    edges: int
    partitions: int
    rounds: int | dict[str, int]  # 0 on the single-process path; per mode when distributed
    modes: dict[str, dict[str, int]] = field(default_factory=dict)  # single-process: edges and nodes per mode

    def to_dict(self) -> dict:
        return {"path": self.path, "edges": self.edges, "partitions": self.partitions, "rounds": self.rounds,
                **self.modes}


@dataclass
class TopCluster:
    """One of a keep task's largest clusters (node ids), for the report's samples."""

    label: int
    size: int
    keeper: int
    members: list[int]  # the first few members, the keeper among them

    def to_dict(self) -> dict:
        return {"label": self.label, "size": self.size, "keeper": self.keeper, "members": list(self.members)}


@dataclass
class KeepResult:
    """:func:`slimpipe.dedup.steps.keep.keep_task`: one label partition's decisions, summarised."""

    removed: dict[tuple[str, str], list[int]]  # (source, reason) → [documents, bytes]
    cross: dict[tuple[str, str], int]  # (removed document's source, kept document's source) → documents
    cluster_sizes: dict[int, int]  # cluster size → clusters
    components: int
    saved: dict[str, int]  # with the cluster check: documents kept that components alone would remove
    check_rounds: int
    removed_bytes: int
    top: list[TopCluster]
    piece: Piece  # the removed rows, routed by the task that read them (the write step's input)

    def to_dict(self) -> dict:
        return {"removed": _unpairs(self.removed), "cross": _unpairs(self.cross),
                "cluster_sizes": {str(k): v for k, v in self.cluster_sizes.items()}, "components": self.components,
                "saved": dict(self.saved), "check_rounds": self.check_rounds, "removed_bytes": self.removed_bytes,
                "top": [c.to_dict() for c in self.top], "piece": self.piece}

    @classmethod
    def from_dict(cls, d: dict) -> KeepResult:
        _need(d, "keep", "removed", "cross", "cluster_sizes", "removed_bytes", "top", "piece")
        return cls(_pairs(d["removed"]), _pairs(d["cross"]), {int(k): v for k, v in d["cluster_sizes"].items()},
                   d.get("components", 0), dict(d.get("saved", {})), int(d.get("check_rounds", 0)),
                   d["removed_bytes"], [TopCluster(c["label"], c["size"], c["keeper"], list(c["members"]))
                                        for c in d["top"]], d["piece"])


@dataclass
class WriteResult:
    """:func:`slimpipe.dedup.steps.write.write_task`: one input range written again, kept documents to the sink."""

    kept: dict[str, list[int]]  # source → [documents, bytes] written to the sink
    removed_file: str | None  # OUT's removed/part-*.parquet of this range
    sink: dict[str, Any]  # what the sink's writer returned on close (its own fields, e.g. KeptShards' shards)

    def to_dict(self) -> dict:
        return {**self.sink, "kept": dict(self.kept), "removed_file": self.removed_file}

    @classmethod
    def from_dict(cls, d: dict) -> WriteResult:
        _need(d, "write", "kept", "removed_file")
        sink = {k: v for k, v in d.items() if k not in ("kept", "removed_file", *PRIVATE)}
        return cls(dict(d["kept"]), d["removed_file"], sink)


@dataclass
class SampleMember:
    id: str
    estimated_jaccard: float
    exact_jaccard: float
    excerpt: str


@dataclass
class SampleCluster:
    """One of the report's sample clusters: its kept document and each member's similarity to it."""

    cluster: int
    size: int
    keeper: str
    keeper_excerpt: str
    members: list[SampleMember]
    files: int

    def to_dict(self) -> dict:
        return {"cluster": self.cluster, "size": self.size, "keeper": self.keeper,
                "keeper_excerpt": self.keeper_excerpt, "members": [vars(m).copy() for m in self.members],
                "files": self.files}

    @classmethod
    def from_dict(cls, d: dict) -> SampleCluster:
        return cls(d["cluster"], d["size"], d["keeper"], d["keeper_excerpt"],
                   [SampleMember(**m) for m in d["members"]], d["files"])


@dataclass
class DedupResults:
    """Everything the report needs from one run: each step's results and the plan's sizes, passed explicitly."""

    files: int  # input files in the plan
    tasks: int  # read tasks (input ranges)
    partitions: int  # hash partitions
    read: list[ReadResult]
    buckets: list[BucketsResult]
    verify: list[VerifyResult] | None  # None without --verify
    components: ComponentsInfo
    keep: dict[str, list[KeepResult]]  # per mode, global and local
    written: list[WriteResult]
    samples: list[SampleCluster]
    timings: dict[str, float]
