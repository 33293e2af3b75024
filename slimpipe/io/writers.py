"""SlimPajama shard writers: ``{split}/chunk{i}/example_{split}_{j}.jsonl.zst``, zstd level 3.

Each shard is written under a temporary name in the same folder and renamed into place only when it is
complete, so a killed job never leaves a partial shard under a final name (readers, ``ls`` and resumes
see either nothing or the whole shard). The manifest lists every shard with records, bytes and SHA-256.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from slimpipe import storage
from slimpipe.sources import set_name

ZSTD_LEVEL = 3
MANIFEST = "manifest.json"


def shard_relpath(split: str, chunk: int, index: int) -> str:
    """SlimPajama's layout, e.g. ``train/chunk1/example_train_0.jsonl.zst``."""
    return f"{split}/chunk{chunk}/example_{split}_{index}.jsonl.zst"


def slimpajama_record(text: str, source: str) -> dict:
    """SlimPajama's output record: the text and only ``meta.redpajama_set_name``."""
    return {"text": text, "meta": {"redpajama_set_name": set_name(source)}}


@dataclass
class ShardInfo:
    path: str  # relative to the output root
    records: int
    text_bytes: int  # UTF-8 bytes of the texts
    uncompressed_bytes: int
    compressed_bytes: int
    sha256: str  # of the compressed file

    def to_dict(self) -> dict:
        return asdict(self)



class JsonlZstWriter:
    """One ``.jsonl.zst`` file written atomically; ``close()`` publishes it, ``abort()`` discards it."""

    def __init__(self, root: str | Path, relpath: str, level: int = ZSTD_LEVEL):
        import zstandard

        self.root, self.relpath = root, relpath
        self.final = storage.join(root, relpath)  # a path or a URI
        self._out = storage.open_output(self.final)  # atomic: temp + fsync + rename, or one upload
        self._raw = self._out.__enter__()
        self._sha = hashlib.sha256()
        self._hashing = _HashingFile(self._raw, self._sha)
        # Fixed parameters and no content size/checksum variance: same input -> same bytes.
        cctx = zstandard.ZstdCompressor(level=level, write_checksum=True)
        self._z = cctx.stream_writer(self._hashing, closefd=False)
        self.records = self.text_bytes = self.uncompressed = 0
        self._closed = False

    def write(self, record: dict) -> None:
        try:
            line = (json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate in meta ("\udc80" is valid JSON): written escaped
            line = (json.dumps(record, ensure_ascii=True, separators=(",", ":")) + "\n").encode("utf-8")
        self._z.write(line)
        self.records += 1
        self.uncompressed += len(line)
        text = record.get("text")
        if isinstance(text, str):
            self.text_bytes += len(text.encode("utf-8"))

    def write_lines(self, lines: bytes | memoryview, records: int, text_bytes: int) -> None:
        """Many ready-made JSON lines at once (each ending in a newline), as :meth:`write` would have made
        them: ``records`` lines holding ``text_bytes`` UTF-8 bytes of text. The compressed bytes are the same
        however the input is cut (zstd's stream is the same for any cut without a flush)."""
        self._z.write(lines)
        self.records += records
        self.uncompressed += len(lines)
        self.text_bytes += text_bytes

    def close(self) -> ShardInfo:
        import zstandard

        if self._closed:
            raise RuntimeError("writer already closed")
        self._z.flush(zstandard.FLUSH_FRAME)
        self._z.close()
        self._closed = True
        self._out.__exit__(None, None, None)  # publishes the file
        return ShardInfo(
            path=self.relpath,
            records=self.records,
            text_bytes=self.text_bytes,
            uncompressed_bytes=self.uncompressed,
            compressed_bytes=self._hashing.count,
            sha256=self._sha.hexdigest(),
        )

    def abort(self) -> None:
        if not self._closed:
            self._closed = True
            exc = RuntimeError("shard writer aborted")
            self._out.__exit__(RuntimeError, exc, None)  # discards the temporary file or spool

    def __enter__(self) -> JsonlZstWriter:
        return self

    def __exit__(self, exc_type, *_exc) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class _HashingFile:
    """A write-only file wrapper that hashes and counts what passes through."""

    def __init__(self, raw, sha):
        self.raw, self.sha, self.count = raw, sha, 0

    def write(self, data) -> int:
        self.sha.update(data)
        self.count += len(data)
        return self.raw.write(data)

    def flush(self) -> None:
        self.raw.flush()


class ShardWriter:
    """Rolls records into numbered shards of one split and chunk, each published atomically.

    ``max_records``/``max_bytes`` bound a shard; SlimPajama's shards hold a few hundred MB each.
    """

    def __init__(self, root: str | Path, split: str = "train", chunk: int = 0, first_index: int = 0,
                 max_records: int | None = None, max_bytes: int = 256 << 20, level: int = ZSTD_LEVEL):
        self.root, self.split, self.chunk = root, split, chunk  # a path or a URI
        self.index = first_index
        self.max_records, self.max_bytes, self.level = max_records, max_bytes, level
        self._cur: JsonlZstWriter | None = None
        self.shards: list[ShardInfo] = []

    def write(self, record: dict) -> None:
        if self._cur is None:
            self._cur = JsonlZstWriter(self.root, shard_relpath(self.split, self.chunk, self.index), self.level)
        self._cur.write(record)
        full = self._cur.uncompressed >= self.max_bytes or (
            self.max_records is not None and self._cur.records >= self.max_records
        )
        if full:
            self._roll()

    def write_all(self, records: Iterable[dict]) -> None:
        for r in records:
            self.write(r)

    def _roll(self) -> None:
        if self._cur is not None:
            self.shards.append(self._cur.close())
            self._cur = None
            self.index += 1

    def close(self) -> list[ShardInfo]:
        self._roll()
        return self.shards

    def abort(self) -> None:
        if self._cur is not None:
            self._cur.abort()
            self._cur = None

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, *_exc) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_manifest(root: str | Path, shards: Iterable[ShardInfo], extra: dict | None = None) -> dict:
    """Write ``manifest.json``: every shard (sorted by path) with totals; returns the manifest."""
    items = sorted((s.to_dict() for s in shards), key=lambda d: _natural_key(d["path"]))
    manifest = {
        "format": "slimpajama-jsonl-zst",
        "zstd_level": ZSTD_LEVEL,
        "files": items,
        "totals": {
            "files": len(items),
            "records": sum(d["records"] for d in items),
            "text_bytes": sum(d["text_bytes"] for d in items),
            "compressed_bytes": sum(d["compressed_bytes"] for d in items),
        },
    }
    if extra:
        manifest.update(extra)
    storage.write_json_atomic(storage.join(root, MANIFEST), manifest)
    return manifest


def _natural_key(path: str) -> list:
    import re

    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path)]


def verify_manifest(root: str | Path) -> list[str]:
    """Problems found comparing the files on disk with ``manifest.json`` (empty list = all good)."""
    root = Path(root)
    manifest = json.loads((root / MANIFEST).read_text())
    problems = []
    for item in manifest["files"]:
        p = root / item["path"]
        if not p.is_file():
            problems.append(f"missing: {item['path']}")
            continue
        h = hashlib.sha256()
        with open(p, "rb") as fh:
            for block in iter(lambda fh=fh: fh.read(1 << 20), b""):
                h.update(block)
        if h.hexdigest() != item["sha256"]:
            problems.append(f"checksum mismatch: {item['path']}")
    return problems
