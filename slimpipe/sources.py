"""The seven RedPajama sources: canonical short names, SlimPajama set names, and file-name inference.

One table so that readers, writers, mixes and reports all agree on what a source is called.
"""

from __future__ import annotations

import re
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
SOURCES: tuple[str, ...] = tuple(SET_NAMES)
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

_EXTENSIONS = (".jsonl.zst", ".jsonl.zstd", ".json.zst", ".jsonl", ".json", ".parquet", ".zst")


def normalise_source(name: str) -> str | None:
    """Map any spelling of a source (alias, set name, ``cc/2019-30/...``) to its canonical name."""
    if not name:
        return None
    if name in SOURCE_OF_SET_NAME:
        return SOURCE_OF_SET_NAME[name]
    key = name.strip().lower()
    if key in _ALIASES:
        return _ALIASES[key]
    head = re.split(r"[/_\-.]", key, maxsplit=1)[0]
    return _ALIASES.get(head)


def source_from_filename(path: str | Path) -> str | None:
    """Infer the source from a file name such as ``cc_2019-30_sample.jsonl.zst`` or ``arxiv_0.jsonl``.

    Parent folder names are tried too (``github/part-0.parquet``), innermost first.
    """
    p = Path(path)
    name = p.name.lower()
    for ext in _EXTENSIONS:
        if name.endswith(ext):
            name = name[: -len(ext)]
            break
    candidates = [name] + [part.lower() for part in reversed(p.parent.parts)]
    set_names = {k.lower(): v for k, v in SOURCE_OF_SET_NAME.items()}
    for cand in candidates:
        if cand in set_names:
            return set_names[cand]
        if cand in _ALIASES:
            return _ALIASES[cand]
        for token in re.split(r"[_\-.\s]+", cand):
            if token in _ALIASES:
                return _ALIASES[token]
    return None


def source_from_record(record: dict) -> str | None:
    """Infer the source from a record: SlimPajama's set name, RedPajama's ``meta.source``, CC's top-level ``source``."""
    meta = record.get("meta")
    if isinstance(meta, dict):
        set_name = meta.get("redpajama_set_name")
        if isinstance(set_name, str) and set_name in SOURCE_OF_SET_NAME:
            return SOURCE_OF_SET_NAME[set_name]
        src = meta.get("source")
        if isinstance(src, str):
            found = normalise_source(src)
            if found:
                return found
    src = record.get("source")
    if isinstance(src, str):
        found = normalise_source(src)
        if found:
            return found
    if "pred_label" in record and "wiki_prob" in record:
        return "common_crawl"
    return None
