"""Source names: RedPajama's seven (canonical short names, SlimPajama set names, aliases) and any other.

One module so that readers, writers, mixes and reports all agree on what a source is called. Any name
is a source: RedPajama's seven keep their short names (``common_crawl``) and SlimPajama set names
(``RedPajamaCommonCrawl``); every other source (``arabic_web``, ``starcoder``) keeps its own name,
lower-cased, everywhere (shards, reports, mixes, per-source evaluation).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

# canonical short name -> SlimPajama's ``meta.redpajama_set_name``
SET_NAMES: dict[str, str] = {
    "common_crawl": "RedPajamaCommonCrawl",
    "c4": "RedPajamaC4",
    "github": "RedPajamaGithub",
    "book": "RedPajamaBook",
    "arxiv": "RedPajamaArXiv",
    "wikipedia": "RedPajamaWikipedia",
    "stackexchange": "RedPajamaStackExchange",
}
SOURCES: tuple[str, ...] = tuple(SET_NAMES)  # RedPajama's seven, in SlimPajama's order
SOURCE_OF_SET_NAME: dict[str, str] = {v: k for k, v in SET_NAMES.items()}

# Aliases seen in file names and in records' ``meta.source`` / top-level ``source``.
_ALIASES: dict[str, str] = {
    "cc": "common_crawl",
    "commoncrawl": "common_crawl",
    "common_crawl": "common_crawl",
    "c4": "c4",
    "github": "github",
    "code": "github",
    "book": "book",
    "books": "book",
    "pg19": "book",
    "books3": "book",
    "arxiv": "arxiv",
    "wikipedia": "wikipedia",
    "wiki": "wikipedia",
    "stackexchange": "stackexchange",
    "stack_exchange": "stackexchange",
    "se": "stackexchange",
}
_ALIASES.update({k.lower(): v for k, v in SOURCE_OF_SET_NAME.items()})

_EXTENSIONS = (".jsonl.zst", ".jsonl.zstd", ".json.zst", ".jsonl.gz", ".json.gz", ".jsonl", ".json", ".parquet",
               ".zst")
_NAME = re.compile(r"^[a-z0-9][a-z0-9_.\-]{0,63}$")
# Tokens that say nothing about a source: shard numbers, CC snapshots, splits, "sample".
_NOISE = re.compile(r"^(\d+|\d{4}-\d{2}|part|shard|chunk|of|sample|head|middle|tail|en|train|test|validation|val)$")
# A shard or part number at the end of a name: "-00003", "_part3", ".shard-7", "-00000-of-01024". Only a
# number after a separator or a part/shard/chunk word: the digits of "fineweb2", "mc4" or "cc100" are the name.
_SHARD_SUFFIX = re.compile(r"(?:(?:(?:^|[_\-.])(?:part|shard|chunk)[_\-.]?\d+|[_\-.]\d+)(?:[_\-.]of[_\-.]\d+)?)+$")
_GENERIC = {"part", "shard", "chunk", "data", "train", "test", "validation", "val", "valid", "sample", "file",
            "output", "input", "docs", "documents", "dataset", "corpus", "example", "records", "text", "jsonl"}


def clean_name(name: str) -> str | None:
    """A user's source name as slimpipe keeps it (lower case, spaces as ``_``), or None if it is no name.

    A name is at most 64 letters, digits, ``_``, ``-`` and ``.``: it becomes a folder name, so a URL
    or a path (``/``, ``:``) is not a name.
    """
    key = re.sub(r"\s+", "_", name.strip().lower())
    return key if _NAME.match(key) and key not in (".", "..") else None


def _known(key: str) -> str | None:
    """One of the seven, when ``key`` (lower case) is an alias, or an alias followed by noise (``cc_2019-30``)."""
    if key in _ALIASES:
        return _ALIASES[key]
    tokens = [t for t in re.split(r"[_\-.\s]+", key) if t]
    if tokens and tokens[0] in _ALIASES and all(_NOISE.match(t) for t in tokens[1:]):
        return _ALIASES[tokens[0]]
    return None


def normalise_source(name: str) -> str | None:
    """Map a source name to the name slimpipe uses: one of the seven for an alias or set name
    (``cc``, ``RedPajamaBook``, ``cc/2019-30/...``), else the cleaned name itself; None for a non-name."""
    if not isinstance(name, str) or not name.strip():
        return None
    if name in SOURCE_OF_SET_NAME:
        return SOURCE_OF_SET_NAME[name]
    key = name.strip().lower()
    known = _known(key)
    if known:
        return known
    if "/" in key:  # CommonCrawl's "cc/2019-30/en_head_0000.json.gz/line1": the head names it
        return _known(key.split("/", 1)[0])
    return clean_name(key)


def set_name(source: str) -> str:
    """The ``meta.redpajama_set_name`` written for ``source``: SlimPajama's for the seven, else its own name."""
    return SET_NAMES.get(source, source)


def sort_sources(names: Iterable[str]) -> list[str]:
    """RedPajama's seven first in SlimPajama's order, then every other source alphabetically."""
    order = {s: i for i, s in enumerate(SOURCES)}
    return sorted(set(names), key=lambda s: (order.get(s, len(order)), s))


def _stem(name: str) -> str:
    name = name.lower()
    for ext in _EXTENSIONS:
        if name.endswith(ext):
            return name[: -len(ext)]
    return name


def _user_name(cand: str) -> str | None:
    """``perturbed_sample`` -> perturbed, ``arabic_web-00003`` -> arabic_web; generic names give None."""
    cand = re.split(r"[_\-.]sample\b", cand, maxsplit=1)[0]
    cand = _SHARD_SUFFIX.sub("", cand)
    name = clean_name(cand) if cand else None
    if name is None or name in _GENERIC or not re.search(r"[a-z]", name):
        return None
    return name


def source_from_filename(path: str | Path) -> str | None:
    """Infer the source from a path below an input root.

    RedPajama's names win anywhere in the path (``cc_2019-30_sample.jsonl.zst``, ``arxiv_0.jsonl``,
    ``common_crawl/2019-30/en_head_0000.json.gz.dedup.classifier.jsonl.zst``, ``RedPajamaC4/part-0.parquet``);
    otherwise the file's own name (the part before ``_sample`` or a shard number), then its folders,
    innermost first. ``part-00001.jsonl`` alone names nothing (None).
    """
    p = Path(path)
    candidates = [_stem(p.name)] + [part.lower() for part in reversed(p.parent.parts)]
    for cand in candidates:
        known = _known(cand)
        if known:
            return known
    for cand in candidates:
        name = _user_name(cand)
        if name:
            return name
    return None


def source_from_record(record: dict) -> str | None:
    """Infer the source from a record: its ``meta.redpajama_set_name``, then ``meta.source``, then
    CommonCrawl's top-level shape (``source: "cc/..."`` or ``pred_label`` + ``wiki_prob``)."""
    meta = record.get("meta")
    if isinstance(meta, dict):
        for key in ("redpajama_set_name", "source"):
            value = meta.get(key)
            found = normalise_source(value) if isinstance(value, str) else None
            if found:
                return found
    src = record.get("source")
    if isinstance(src, str):
        found = _known(src.strip().lower().split("/", 1)[0]) if "/" in src else normalise_source(src)
        if found:
            return found
    if "pred_label" in record and "wiki_prob" in record:
        return "common_crawl"
    return None
