"""RedPajama-style readers: ``.jsonl``, ``.jsonl.zst`` and ``.parquet``, files or folders, streaming.

Every line of every file is accounted for: it becomes a document or a reject (file, line, reason), so
``read = accepted + rejected`` always holds. A file that cannot be read at all produces one file-level
reject (``line = -1``) and a :class:`FileStats` with ``status = "unreadable"``; the job goes on and the
caller reports it loudly. Nothing here holds a whole file in memory.

Documents come out as Arrow record batches (:data:`DOC_SCHEMA`), so Ray Data and Ray tasks can consume
them in parallel, one task per file or per byte range of a plain ``.jsonl`` file.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from slimpipe import storage
from slimpipe.sources import normalise_source, source_from_filename, source_from_record

DOC_SCHEMA = pa.schema(
    [
        ("id", pa.string()),  # "source/file:line", stable across runs
        ("source", pa.string()),  # source name (slimpipe.sources: one of the seven, or the data's own)
        ("file", pa.string()),  # path relative to the input root it was found under
        ("line", pa.int64()),  # 0-based line (jsonl) or row (parquet)
        ("text", pa.large_string()),
        ("meta", pa.string()),  # JSON of the record's meta (CC: its top-level fields but text)
        ("nbytes", pa.int64()),  # UTF-8 bytes of text
    ]
)
# What the lean read gives (``read_batches(..., lean=True)``): what the dedup read step needs, no more.
LEAN_SCHEMA = pa.schema([("line", pa.int64()), ("source", pa.string()), ("text", pa.large_string())])
REJECT_SCHEMA = pa.schema(
    [
        ("file", pa.string()),
        ("line", pa.int64()),  # -1 for a file-level problem
        ("source", pa.string()),
        ("reason", pa.string()),
        ("excerpt", pa.string()),  # the first bytes of the bad line, for a human
    ]
)

SUPPORTED_SUFFIXES = (".jsonl", ".jsonl.zst", ".jsonl.zstd", ".json.zst", ".jsonl.gz", ".json.gz", ".parquet")
_READ_CHUNK = 1 << 20
# zstd is decompressed by a stream reader asked for at most this much output per call, so one call's output
# stays bounded whatever the file holds (a 33 KB "zstd bomb" of 1 GB is read in bounded pieces, never held
# whole); it reads _READ_CHUNK of compressed input at a time. (It replaced a decompressobj fed 256 bytes at a
# time, the bound there: 1.6-1.75x the CPU speed on the scale corpus, ~360 -> ~640 MB/s.)
_ZSTD_OUT = 1 << 20
_ZSTD_MAGIC = 0xFD2FB528
_EXCERPT = 160
# The lean read parses blocks of about this many decompressed bytes natively; a line longer than _LEAN_CARRY
# sends the rest of the input line by line.
_BLOCK_BYTES = 8 << 20
_LEAN_CARRY = 64 << 20
MAX_RECORD_BYTES = 256 << 20  # a longer line is one counted reject, skipped without holding it in memory
# Rejects listed (file, line, reason, excerpt) per file or range; beyond, each is still counted (stats,
# reasons) and one last row says how many more there were: a file of 10^9 bad lines (a 33 KB zstd of
# newlines) must not hold 10^9 rows in memory.
MAX_REJECT_ROWS = 100_000
# A file's content is recognised by its first bytes, whatever its name says.
_MAGIC = ((b"\x28\xb5\x2f\xfd", "jsonl.zst"), (b"PAR1", "parquet"), (b"\x1f\x8b", "jsonl.gz"))


class InputError(ValueError):
    """An input path that cannot be used at all (missing, empty folder, unsupported file)."""


@dataclass(frozen=True)
class InputFile:
    """One file to read, or one byte range of a plain ``.jsonl`` file."""

    path: str  # absolute path
    rel: str  # name used in ids: path relative to the root it was found under
    source: str | None  # inferred from the name; None means "from each record"
    fmt: str  # "jsonl" | "jsonl.zst" | "parquet"
    start: int = 0  # byte offset (jsonl) or first row group (parquet)
    end: int | None = None  # exclusive byte offset / row group; None = to the end
    first_line: int = 0  # line number of the first line in the range
    forced: bool = False  # source given by the user (--source): it beats anything a record says
    skip: str | None = None  # why this entry is not read (broken symlink, symlink loop, not a data file)

    @property
    def size(self) -> int:
        try:
            return storage.size(self.path)
        except OSError:
            return 0


@dataclass
class FileStats:
    """What reading one file (or range) produced; ``read == accepted + rejected`` by construction."""

    file: str
    source: str | None
    status: str = "ok"  # ok | empty | truncated | unreadable | skipped
    read: int = 0
    accepted: int = 0
    rejected: int = 0
    text_bytes: int = 0
    error: str | None = None
    reasons: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def file_format(path: str | Path) -> str | None:
    """The format a file's name promises (None: not a data file); :func:`sniff_format` has the last word."""
    name = str(path).lower()
    if name.endswith(".parquet"):
        return "parquet"
    if name.endswith((".jsonl.zst", ".jsonl.zstd", ".json.zst")):
        return "jsonl.zst"
    if name.endswith((".jsonl.gz", ".json.gz")):
        return "jsonl.gz"
    if name.endswith(".jsonl"):
        return "jsonl"
    return None


def sniff_format(path: str, fallback: str) -> str:
    """The format from a file's first bytes (zstd ``28 B5 2F FD``, Parquet ``PAR1``, gzip ``1F 8B``), else
    plain JSON lines; ``fallback`` (the name's) for an empty or unopenable file, whose error comes later."""
    try:
        with storage.open_input(path) as fh:
            head = fh.read(4)
    except OSError:
        return fallback
    if not head:
        return fallback
    return next((fmt for magic, fmt in _MAGIC if head.startswith(magic)), "jsonl")


def discover_files(paths: list[str | Path], source: str | None = None) -> list[InputFile]:
    """Expand files and folders (recursively, following symlinks) into a sorted, de-duplicated list.

    Inside folders, names starting with ``.`` or ``_`` are skipped (temporary files, ``_work``,
    ``_meta`` sidecars, ``_SUCCESS``), as Spark and Hadoop tools do; a file named explicitly is always read.
    Every other entry that is not read comes back with ``skip`` set to the reason (a broken symlink, a
    symlink loop, a file that is not ``.jsonl``/``.jsonl.zst``/``.parquet``), so reading it yields a
    ``skipped`` or ``unreadable`` :class:`FileStats` that every report names.
    Raises :class:`InputError` naming the path when a path is missing or a folder holds no data file:
    that is a user mistake worth stopping for, unlike a bad record.
    """
    forced = None
    if source is not None:
        forced = normalise_source(source)
        if forced is None:
            raise InputError(f"--source {source!r} is not a source name (letters, digits, _ - . only)")
    found: dict[str, InputFile] = {}
    for raw in paths:
        local = storage.local_path(raw)  # file:///p is /p; a plain path stays as given
        if local is None:  # a store: listed (no symlinks to follow, no FIFOs to skip)
            _discover_remote(os.fspath(raw), forced, found)
            continue
        p = Path(local)
        if not p.exists():
            why = "broken symlink" if p.is_symlink() else "input not found"
            raise InputError(f"{why}: {p}")
        if p.is_dir():
            entries = list(_walk(p, p, {os.path.realpath(p)}, set()))
            if not any(skip is None for _, _, skip in entries):
                raise InputError(f"no .jsonl, .jsonl.zst or .parquet files under {p}")
            for f, rel, skip in entries:
                key = str(f) if skip else str(f.resolve())
                found.setdefault(key, _input_file(f, rel, forced, skip))
        else:
            if file_format(p) is None:
                raise InputError(f"unsupported file type: {_display(str(p))} (expected {', '.join(SUPPORTED_SUFFIXES)})")
            # A FIFO, socket or device named on the command line is named and skipped, as inside folders:
            # opening a FIFO to sniff its format would block until some writer comes.
            skip = None if stat.S_ISREG(p.stat().st_mode) else "not a regular file"
            found.setdefault(str(p if skip else p.resolve()), _input_file(p, p.name, forced, skip))
    return sorted(found.values(), key=lambda f: (f.rel, f.path))


def _discover_remote(uri: str, forced: str | None, found: dict[str, InputFile]) -> None:
    """:func:`discover_files` for a URI (``s3://``, ``gs://``...): a file, or every data file under a prefix.

    An unreachable or unauthenticated store raises :class:`slimpipe.storage.StorageError` (one line).
    """
    uri = uri.rstrip("/")
    storage.check_access(uri)
    name = uri.rsplit("/", 1)[-1]
    if not storage.is_dir(uri):
        if file_format(uri) is None:
            raise InputError(f"unsupported file type: {uri} (expected {', '.join(SUPPORTED_SUFFIXES)})")
        found.setdefault(uri, InputFile(path=uri, rel=name, source=forced or source_from_filename(name),
                                        fmt=file_format(uri) or "", forced=forced is not None))
        return
    n = 0
    for f in storage.list_files(uri):
        rel = f[len(uri) + 1:]
        if any(part.startswith((".", "_")) for part in rel.split("/")):
            continue
        if file_format(f) is None:
            found.setdefault(f, InputFile(path=f, rel=rel, source=forced, fmt="", forced=forced is not None,
                                          skip="not a data file (.jsonl, .jsonl.zst, .jsonl.gz, .parquet)"))
            continue
        n += 1
        found.setdefault(f, InputFile(path=f, rel=rel, source=forced or source_from_filename(rel),
                                      fmt=file_format(f) or "", forced=forced is not None))
    if not n:
        raise InputError(f"no .jsonl, .jsonl.zst or .parquet files under {uri}")


def _walk(d: Path, root: Path, chain: set[str], seen: set[str]) -> Iterator[tuple[Path, str, str | None]]:
    """(path, path below root, skip reason or None) for every entry under ``d``, symlinks followed.

    ``chain`` holds the real paths of the folders from the root down to ``d``: a symlink back into it is a
    loop, named and not followed. ``seen`` folders (reached twice through symlinks) are walked once.
    """
    try:
        entries = sorted(os.scandir(d), key=lambda e: e.name)
    except OSError as exc:
        yield d, d.relative_to(root).as_posix(), f"unreadable folder: {exc.strerror or exc}"
        return
    for e in entries:
        if e.name.startswith((".", "_")):
            continue
        path = Path(e.path)
        rel = path.relative_to(root).as_posix()
        try:
            st = os.stat(path)  # follows symlinks
        except OSError as exc:
            target = os.readlink(path) if path.is_symlink() else ""
            why = "symlink loop" if exc.errno == errno.ELOOP else "broken symlink" if target else "unreadable"
            yield path, rel, f"{why}: {rel}" + (f" -> {target}" if target else "") + f" ({exc.strerror})"
            continue
        if stat.S_ISDIR(st.st_mode):
            real = os.path.realpath(path)
            if real in chain:
                yield path, rel, f"symlink loop: {rel} -> {os.readlink(path) if path.is_symlink() else real} " \
                                 "(a folder that contains itself, not followed)"
            elif real not in seen:
                seen.add(real)
                yield from _walk(path, root, chain | {real}, seen)
        elif not stat.S_ISREG(st.st_mode):
            yield path, rel, "not a regular file"
        elif file_format(path) is None:
            yield path, rel, "not a data file (.jsonl, .jsonl.zst, .jsonl.gz, .parquet)"
        else:
            yield path, rel, None


def _display(name: str) -> str:
    """``name`` as valid Unicode: bytes of a file name that is not UTF-8 (which Python keeps as lone
    surrogates) become ``\\xNN`` escapes, so the name can go into ids, Arrow tables, JSON and hashes."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _input_file(path: Path, rel: str, forced: str | None, skip: str | None = None) -> InputFile:
    # Only the part of the path below the input root names the source: a parent such as
    # /data/c4-runs/ says nothing about the files under it. ``path`` stays the real name (to open it);
    # ``rel``, which names the file everywhere else, is escaped when the name is not UTF-8.
    rel = _display(rel)
    if skip:
        skip = _display(skip)
        return InputFile(path=str(path), rel=rel, source=forced, fmt="", forced=forced is not None, skip=skip)
    return InputFile(path=str(path.resolve()), rel=rel, source=forced or source_from_filename(rel),
                     fmt=file_format(path) or "", forced=forced is not None)


def split_ranges(files: list[InputFile], target_bytes: int = 256 << 20, count_lines: bool = True) -> list[InputFile]:
    """Split large plain-``.jsonl`` files into byte ranges aligned to lines, for more read parallelism.

    Compressed files cannot be split without decompressing, so they stay one task each. Line numbers of
    each range are found by counting newlines up to its start (a fast scan), so ids stay the same as an
    unsplit read. With ``count_lines=False`` there is no scan, only one seek per cut: every range
    starts at ``first_line = 0`` and the caller sets the real value once the ranges have been read
    (the dedup job learns each range's line count from its read task).
    """
    out: list[InputFile] = []
    for f in files:
        size = f.size
        if f.fmt != "jsonl" or f.skip or size <= target_bytes or sniff_format(f.path, f.fmt) != "jsonl":
            out.append(f)
            continue
        with storage.open_input(f.path) as fh:
            start, line = 0, 0
            while start < size:
                cut = min(start + target_bytes, size)
                if cut < size:
                    fh.seek(cut)
                    fh.readline()  # move to the next line start
                    cut = fh.tell()
                out.append(InputFile(f.path, f.rel, f.source, f.fmt, start, cut, line, f.forced))
                if not count_lines:
                    start = cut
                    continue
                fh.seek(start)
                remaining, lines = cut - start, 0
                while remaining > 0:
                    block = fh.read(min(_READ_CHUNK, remaining))
                    if not block:
                        break
                    lines += block.count(b"\n")
                    remaining -= len(block)
                line += lines
                start = cut
    return out


class TruncatedInput(Exception):
    """The compressed stream ended in the middle of a frame."""


class _TooLong(bytes):
    """Stands for a line longer than :data:`MAX_RECORD_BYTES`: its first bytes, and its length."""

    size: int = 0


def _raw_lines(f: InputFile, fmt: str) -> Iterator[bytes]:
    """Yield the raw lines (without newline) of a jsonl, jsonl.zst or jsonl.gz file or range.

    A zstd stream is decompressed frame by frame so that a truncated last frame is *detected*
    (``TruncatedInput`` after the complete lines), not silently taken as the end of the file. A line
    longer than :data:`MAX_RECORD_BYTES` is not held in memory: it comes out as a :class:`_TooLong`.
    """
    with storage.open_input(f.path) as fh:
        yield from _split_lines(_chunks(fh, f, fmt))


def _chunks(fh, f: InputFile, fmt: str) -> Iterator[bytes]:
    """The decompressed bytes of a jsonl, jsonl.zst or jsonl.gz file (or of a plain file's range) in chunks."""
    if fmt == "jsonl.zst":
        return _zstd_chunks(fh)
    if fmt == "jsonl.gz":
        return _gzip_chunks(fh)
    return _plain_chunks(fh, f.start, f.end)


def _split_lines(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """The lines (without newline) of a stream of chunks; a line over :data:`MAX_RECORD_BYTES` as a :class:`_TooLong`."""
    limit = MAX_RECORD_BYTES
    pending: list[bytes] = []
    plen = 0
    for chunk in chunks:
        if not chunk:
            continue
        parts = chunk.split(b"\n") if b"\n" in chunk else [chunk]  # no copy of a chunk inside a long line
        for i, part in enumerate(parts):
            if plen + len(part) <= limit:
                pending.append(part)
            elif plen < _EXCERPT:  # the line is too long: keep only what its excerpt shows
                pending.append(part[: _EXCERPT - plen])
            plen += len(part)
            if i == len(parts) - 1:
                break  # the last part continues in the next chunk
            yield _line(pending, plen, limit)
            pending, plen = [], 0
    if plen:
        yield _line(pending, plen, limit)


def _line(pieces: list[bytes], n: int, limit: int) -> bytes:
    if n <= limit:
        return b"".join(pieces)
    head = b""
    for piece in pieces:  # the excerpt only: joining a line over the limit would copy it whole
        head += piece[: _EXCERPT - len(head)]
        if len(head) >= _EXCERPT:
            break
    out = _TooLong(head)
    out.size = n
    return out


def _gzip_chunks(fh) -> Iterator[bytes]:
    import zlib

    dobj = None  # the gzip member being decompressed; several members may follow each other
    while True:
        block = fh.read(_READ_CHUNK)
        if not block:
            break
        while True:
            if dobj is None:
                dobj = zlib.decompressobj(wbits=31)
            out = dobj.decompress(block, _READ_CHUNK)  # bounded: the rest waits in unconsumed_tail
            if out:
                yield out
            block, dobj = (dobj.unused_data, None) if dobj.eof else (dobj.unconsumed_tail, dobj)
            # a full output may leave more inside zlib with no input left: ask again (with b"") until it is short
            if not block and (dobj is None or len(out) < _READ_CHUNK):
                break
    if dobj is not None:
        raise TruncatedInput("compressed stream ends in the middle of a gzip member (truncated file?)")


def _plain_chunks(fh, start: int, end: int | None) -> Iterator[bytes]:
    fh.seek(start)
    remaining = None if end is None else end - start
    while remaining is None or remaining > 0:
        block = fh.read(_READ_CHUNK if remaining is None else min(_READ_CHUNK, remaining))
        if not block:
            return
        if remaining is not None:
            remaining -= len(block)
        yield block


def _zstd_chunks(fh) -> Iterator[bytes]:
    """The decompressed bytes of a zstd stream (any number of frames), at most _ZSTD_OUT per chunk;
    :class:`TruncatedInput` after the last complete bytes when the stream stops inside a frame."""
    import zstandard

    frames = _ZstdFrames(fh)
    reader = zstandard.ZstdDecompressor().stream_reader(frames, read_size=_READ_CHUNK, read_across_frames=True)
    while True:
        out = reader.read(_ZSTD_OUT)
        if not out:
            break
        yield out
    if frames.ended_in_frame():  # the stream reader ends quietly on a cut frame
        raise TruncatedInput("compressed stream ends in the middle of a zstd frame (truncated file?)")


class _ZstdFrames:
    """Reads compressed zstd bytes for the decompressor and follows the frame and block headers that pass
    (sizes only, one header per block of up to 128 KiB), so that the end of the input is known to be a frame's
    end or not. Bytes that are not a frame stop the following: the decompressor reports them."""

    def __init__(self, fh):
        self.fh = fh
        self.skip = 0  # bytes of block content, header fields or a skippable frame still to pass over
        self.head = b""  # the bytes so far of the header being read
        self.need = 4  # the length of the header being read
        self.state = "magic"  # magic | skippable | descriptor | block | checksum | lost
        self.checksum = False

    def read(self, n: int = -1) -> bytes:
        data = self.fh.read(n)
        i, end = 0, len(data)
        while i < end and self.state != "lost":
            if self.skip:
                k = min(self.skip, end - i)
                self.skip -= k
                i += k
                continue
            k = min(self.need - len(self.head), end - i)
            self.head += data[i:i + k]
            i += k
            if len(self.head) == self.need:
                self._header(self.head)
        return data

    def _header(self, h: bytes) -> None:
        self.head = b""
        v = int.from_bytes(h, "little")
        if self.state == "magic":
            if v == _ZSTD_MAGIC:
                self.state, self.need = "descriptor", 1
            elif v & 0xFFFFFFF0 == 0x184D2A50:
                self.state, self.need = "skippable", 4
            else:
                self.state = "lost"
        elif self.state == "skippable":
            self.skip, self.state, self.need = v, "magic", 4
        elif self.state == "descriptor":  # then window descriptor, dictionary id and content size fields
            single = (v >> 5) & 1
            self.checksum = bool((v >> 2) & 1)
            self.skip = (1 - single) + (0, 1, 2, 4)[v & 3] + (single, 2, 4, 8)[v >> 6]
            self.state, self.need = "block", 3
        elif self.state == "block":
            kind = (v >> 1) & 3
            if kind == 3:  # reserved: not a valid frame
                self.state = "lost"
                return
            self.skip = 1 if kind == 1 else v >> 3  # an RLE block holds one byte
            if v & 1:  # the frame's last block
                self.state, self.need = ("checksum", 4) if self.checksum else ("magic", 4)
        else:  # checksum
            self.state, self.need = "magic", 4

    def ended_in_frame(self) -> bool:
        """True when the bytes read so far stop inside a frame (or a skippable frame)."""
        return self.state != "lost" and (self.skip > 0 or bool(self.head) or self.state != "magic")


def _excerpt(raw: bytes) -> str:
    return raw[:_EXCERPT].decode("utf-8", errors="replace")


def _check_record(obj, file_source: str | None, forced: bool = False) -> tuple[str | None, str | None, str | None]:
    """Return (text, source, reason); reason is None when the record is accepted.

    Source precedence: ``--source``; the record's own ``meta.redpajama_set_name`` (explicit, per
    record: a SlimPajama shard mixes sources); its ``meta.source`` or CommonCrawl's top-level shape; the
    file name. Any name is accepted (:mod:`slimpipe.sources`).
    """
    if not isinstance(obj, dict):
        return None, file_source, f"record is a JSON {type(obj).__name__}, not an object"
    if "text" not in obj:
        return None, file_source, "missing text"
    text = obj["text"]
    if not isinstance(text, str):
        return None, file_source, f"text is {type(text).__name__}, not a string"
    if not text.strip():
        return None, file_source, "empty text"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return None, file_source, "text holds a lone surrogate (not encodable as UTF-8)"
    # Any name is a source: what the record says (its set name, then meta.source or CommonCrawl's shape)
    # comes before the file's name, which now names almost any file.
    source = file_source if forced else (source_from_record(obj) or file_source)
    if source is None:
        return None, None, "cannot infer source from file name or record (name the file after its source, or pass --source)"
    return text, source, None


def _meta_json(obj: dict) -> str:
    meta = obj.get("meta")
    if meta is None:  # CommonCrawl's top-level shape: keep every field but the text
        meta = {k: v for k, v in obj.items() if k != "text"}
    try:
        out = json.dumps(meta, ensure_ascii=False, separators=(",", ":"), sort_keys=False)
    except (TypeError, ValueError):
        return json.dumps(str(meta))
    try:
        out.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate ("\udc80" is valid JSON): keep it escaped, as it came
        out = json.dumps(meta, ensure_ascii=True, separators=(",", ":"), sort_keys=False)
    return out


class _BatchBuilder:
    """Accumulates documents and rejects column-wise and cuts Arrow batches of a bounded size."""

    def __init__(self, f: InputFile, stats: FileStats, max_rows: int, max_bytes: int):
        self.f, self.stats = f, stats
        self.max_rows, self.max_bytes = max_rows, max_bytes
        self._reset()
        self.rejects: dict[str, list] = {k: [] for k in REJECT_SCHEMA.names}
        self.unlisted = 0  # counted rejects beyond MAX_REJECT_ROWS

    def _reset(self) -> None:
        self.cols: dict[str, list] = {k: [] for k in DOC_SCHEMA.names}
        self.bytes = 0

    def accept(self, line: int, text: str, source: str, meta: str) -> pa.RecordBatch | None:
        nbytes = len(text.encode("utf-8"))
        c = self.cols
        c["id"].append(f"{source}/{self.f.rel}:{line}")
        c["source"].append(source)
        c["file"].append(self.f.rel)
        c["line"].append(line)
        c["text"].append(text)
        c["meta"].append(meta)
        c["nbytes"].append(nbytes)
        self.bytes += nbytes
        self.stats.read += 1
        self.stats.accepted += 1
        self.stats.text_bytes += nbytes
        if len(c["id"]) >= self.max_rows or self.bytes >= self.max_bytes:
            return self.flush()
        return None

    def reject(self, line: int, source: str | None, reason: str, raw: bytes = b"", count: bool = True) -> None:
        if count:
            self.stats.read += 1
            self.stats.rejected += 1
        key = reason.split(":")[0]
        self.stats.reasons[key] = self.stats.reasons.get(key, 0) + 1
        if count and len(self.rejects["line"]) >= MAX_REJECT_ROWS:
            self.unlisted += 1
            return
        r = self.rejects
        r["file"].append(self.f.rel)
        r["line"].append(line)
        r["source"].append(source)
        r["reason"].append(reason)
        r["excerpt"].append(_excerpt(raw))

    def flush(self) -> pa.RecordBatch | None:
        if not self.cols["id"]:
            return None
        batch = pa.RecordBatch.from_pydict(self.cols, schema=DOC_SCHEMA)
        self._reset()
        return batch

    def reject_batch(self) -> pa.RecordBatch:
        if self.unlisted:
            for k, v in (("file", self.f.rel), ("line", -1), ("source", self.f.source), ("excerpt", ""),
                         ("reason", f"not listed: {self.unlisted:,} more rejected lines (the first "
                                    f"{MAX_REJECT_ROWS:,} are listed; every one is counted in the stats)")):
                self.rejects[k].append(v)
            self.unlisted = 0
        return pa.RecordBatch.from_pydict(self.rejects, schema=REJECT_SCHEMA)


def read_batches(
    f: InputFile, max_rows: int = 4096, max_bytes: int = 64 << 20, lean: bool = False
) -> Iterator[tuple[pa.RecordBatch | None, pa.RecordBatch | None, FileStats | None]]:
    """Stream one input as ``(docs, None, None)`` items, ending with ``(None, rejects, stats)``.

    The last item always comes, even for an unreadable file, so a caller can account for every file.
    ``lean=True`` gives :data:`LEAN_SCHEMA` batches (line, source, text) with the same documents, rejects and
    stats: JSON lines are parsed natively a block at a time (a block the native parse cannot take exactly
    is read line by line); batches then hold up to one block's documents, whatever ``max_rows``.
    """
    stats = FileStats(file=f.rel, source=f.source)
    b = _BatchBuilder(f, stats, max_rows, max_bytes)
    if f.skip:
        bad = f.skip.startswith(("broken", "unreadable"))
        stats.status, stats.error = ("unreadable" if bad else "skipped"), f.skip
        b.reject(-1, f.source, f"{stats.status}: {f.skip}", count=False)
        yield None, b.reject_batch(), stats
        return
    try:
        fmt = sniff_format(f.path, f.fmt) if f.start == 0 else f.fmt
        if fmt == "parquet":
            gen = _parquet_records(f, b)
        elif lean:
            gen = _jsonl_lean(f, b, fmt)
        else:
            gen = _jsonl_records(f, b, fmt)
        for batch in gen:
            yield (_lean(batch) if lean and batch.num_columns != len(LEAN_SCHEMA) else batch), None, None
    except TruncatedInput as exc:
        stats.status = "truncated"
        stats.error = str(exc)
        b.reject(-1, f.source, f"truncated: {exc}", count=False)
    except OSError as exc:
        stats.status = "unreadable"
        stats.error = f"{type(exc).__name__}: {exc}"
        b.reject(-1, f.source, f"unreadable: {stats.error}", count=False)
    except Exception as exc:  # e.g. zstd or parquet format errors: the file, not one record, is bad
        stats.status = "unreadable"
        stats.error = f"{type(exc).__name__}: {exc}"
        b.reject(-1, f.source, f"unreadable: {stats.error}", count=False)
    last = b.flush()
    if last is not None:
        yield (_lean(last) if lean else last), None, None
    if stats.status == "ok" and stats.read == 0:
        stats.status = "empty"
    yield None, b.reject_batch(), stats


def _jsonl_records(f: InputFile, b: _BatchBuilder, fmt: str) -> Iterator[pa.RecordBatch]:
    line = f.first_line - 1
    for raw in _raw_lines(f, fmt):
        line += 1
        out = _one_line(f, b, line, raw)
        if out is not None:
            yield out


def _one_line(f: InputFile, b: _BatchBuilder, line: int, raw: bytes) -> pa.RecordBatch | None:
    """One raw line (without its newline) becomes a document or a reject; a full batch comes back."""
    if isinstance(raw, _TooLong):
        b.reject(line, f.source, f"record too large: {raw.size:,} bytes (limit {MAX_RECORD_BYTES:,})", raw)
        return None
    if raw.endswith(b"\r"):
        raw = raw[:-1]
    if not raw.strip():
        b.reject(line, f.source, "blank line", raw)
        return None
    try:
        s = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        b.reject(line, f.source, f"invalid UTF-8: byte {exc.start}", raw)
        return None
    try:
        obj = json.loads(s)
        text, source, reason = _check_record(obj, f.source, f.forced)
        meta = _meta_json(obj) if reason is None else ""
    except ValueError as exc:
        b.reject(line, f.source, f"malformed JSON: {getattr(exc, 'msg', exc)} at column {getattr(exc, 'colno', '?')}",
                 raw)
        return None
    except RecursionError:
        b.reject(line, f.source, "malformed JSON: nested too deeply", raw)
        return None
    if reason is not None:
        b.reject(line, source, reason, raw)
        return None
    return b.accept(line, text, source, meta)


def _lean(batch: pa.RecordBatch) -> pa.RecordBatch:
    return pa.RecordBatch.from_arrays([batch.column(n) for n in LEAN_SCHEMA.names], schema=LEAN_SCHEMA)


def _jsonl_lean(f: InputFile, b: _BatchBuilder, fmt: str) -> Iterator[pa.RecordBatch]:
    """:func:`_jsonl_records` for the lean read: blocks of complete lines parsed natively
    (:func:`slimpipe.io._fastjson.parse_block`), a block the native parse refuses taken line by line, so
    documents, rejects (line, reason) and stats are the same as line by line. Lean batches come out in line order."""
    from slimpipe.io._fastjson import parse_block

    line = f.first_line
    with storage.open_input(f.path) as fh:
        chunks = _chunks(fh, f, fmt)
        held: list[bytes] = []
        size = 0
        ended = False
        failed: Exception | None = None
        while not ended:
            try:
                chunk = next(chunks, None)
            except Exception as exc:  # truncated or corrupt: the complete lines before it still count, as line by line
                chunk, failed = None, exc
            if chunk is None:
                ended = True
            else:
                held.append(chunk)
                size += len(chunk)
                if size < _BLOCK_BYTES:
                    continue
            data = b"".join(held)
            if failed is not None:
                data = data[: data.rfind(b"\n") + 1]  # a line the failure cut short is not a line
            cut = data.rfind(b"\n") if not ended else len(data) - 1 if data.endswith(b"\n") else len(data)
            if cut < 0:  # no line ends in the block yet
                if size > min(_LEAN_CARRY, MAX_RECORD_BYTES):  # one very long line: the rest goes line by line
                    yield from _lines_of(f, b, line, _chain_lines(data, chunks))
                    break
                held = [data]
                continue
            if ended and not data:
                break
            block, rest = data[:cut], data[cut + 1:]
            held, size = [rest], len(rest)
            # (a block longer than a record may be holds a line that is too long: line by line, as before)
            parsed = parse_block(block, f.source, f.forced) if len(block) <= MAX_RECORD_BYTES else None
            nlines = block.count(b"\n") + 1
            if parsed is None:
                yield from _lines_of(f, b, line, map(_too_long, block.split(b"\n")))
            else:
                last = b.flush()
                if last is not None:
                    yield _lean(last)
                text, source, nbytes = parsed
                st = b.stats
                st.read += nlines
                st.accepted += nlines
                st.text_bytes += nbytes
                lines = pa.array(np.arange(line, line + nlines, dtype=np.int64))
                yield pa.RecordBatch.from_arrays([lines, source, text], schema=LEAN_SCHEMA)
            line += nlines
            if ended:
                break
        if failed is not None:
            raise failed


def _chain_lines(head: bytes, chunks: Iterator[bytes]) -> Iterator[bytes]:
    """The raw lines of ``head`` followed by the rest of ``chunks``, as :func:`_raw_lines` cuts them."""
    import itertools

    return _split_lines(itertools.chain([head], chunks))


def _too_long(raw: bytes) -> bytes:
    """A line over :data:`MAX_RECORD_BYTES` becomes the :class:`_TooLong` that :func:`_split_lines` makes of it."""
    if len(raw) <= MAX_RECORD_BYTES:
        return raw
    out = _TooLong(raw[:_EXCERPT])
    out.size = len(raw)
    return out


def _lines_of(f: InputFile, b: _BatchBuilder, line: int, raws: Iterator[bytes]) -> Iterator[pa.RecordBatch]:
    for raw in raws:
        out = _one_line(f, b, line, raw)
        line += 1
        if out is not None:
            yield _lean(out)


def _parquet_records(f: InputFile, b: _BatchBuilder) -> Iterator[pa.RecordBatch]:
    import pyarrow.parquet as pq

    # A local name that is not UTF-8 cannot go to Arrow as a path: open it here (#19.14).
    local = storage.local_path(f.path) is not None and f.path == _display(f.path)
    pf = pq.ParquetFile(f.path if local else storage.open_input(f.path))
    groups = list(range(pf.num_row_groups))[f.start : f.end]
    row = sum(pf.metadata.row_group(i).num_rows for i in range(f.start))
    for batch in pf.iter_batches(batch_size=1024, row_groups=groups):
        for obj in batch.to_pylist():
            text, source, reason = _check_record(obj, f.source, f.forced)
            if reason is not None:
                b.reject(row, source, reason, json.dumps(obj, default=str)[:_EXCERPT].encode())
            else:
                out = b.accept(row, text, source, _meta_json(obj))
                if out is not None:
                    yield out
            row += 1


def iter_columns(f: InputFile, names: tuple[str, ...]) -> Iterator[tuple]:
    """The chosen :data:`DOC_SCHEMA` columns of every accepted document, one tuple each, streamed.

    For stages that re-read their input row by row; rejects and stats are dropped here (the first
    pass already counted them).
    """
    for docs, _, _ in read_batches(f):
        if docs is not None:
            yield from zip(*(docs.column(n).to_pylist() for n in names), strict=True)


def read_all(paths: list[str | Path], source: str | None = None) -> tuple[pa.Table, pa.Table, list[FileStats]]:
    """Read everything into memory in this process. For tests and small inputs only."""
    docs, rejects, stats = [], [], []
    for f in discover_files(paths, source=source):
        for d, r, s in read_batches(f):
            if d is not None:
                docs.append(d)
            if r is not None:
                rejects.append(r)
            if s is not None:
                stats.append(s)
    return (
        pa.Table.from_batches(docs, schema=DOC_SCHEMA),
        pa.Table.from_batches(rejects, schema=REJECT_SCHEMA),
        stats,
    )
