"""Writing the packed token format (described in :mod:`slimpipe.mix.packed`): one stream at a time,
atomically, and the index that makes finished streams the parts of one set."""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from slimpipe.sources import normalise_source

log = logging.getLogger(__name__)

FORMAT = "slimpipe-packed"
VERSION = 1
INDEX = "index.json"
TOKENS = "tokens.bin"
SEQ_BYTES = "seq_bytes.bin"
PIECES = "pieces.json"
TOKENIZER_DIR = "tokenizer"  # MIX_DIR/tokenizer/ (and RUN/model/tokenizer/): the tokenizer's files
BYTES_DTYPE = "<u4"


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits (vocab <= 65536), else uint32; little-endian on disk."""
    return np.dtype("<u2") if vocab_size <= 1 << 16 else np.dtype("<u4")


def train_path(mix_dir: str | Path) -> Path:
    return Path(mix_dir) / "train"


def eval_path(mix_dir: str | Path, source: str) -> Path:
    """``MIX_DIR/eval/<source>`` (RedPajama's seven by their canonical names, any other by its own);
    rejects what cannot be a source name (a path, an empty string)."""
    canonical = normalise_source(source)
    if canonical is None:
        raise ValueError(f"{source!r} is not a source name")
    return Path(mix_dir) / "eval" / canonical


def apportion_bytes(n_bytes: int, n_tokens: int) -> np.ndarray:
    """Spread ``n_bytes`` over ``n_tokens`` as integers that sum exactly to ``n_bytes``."""
    if n_tokens == 0:
        return np.zeros(0, dtype=np.int64)
    cum = (np.arange(1, n_tokens + 1, dtype=np.int64) * n_bytes) // n_tokens
    return np.diff(cum, prepend=0)


class PackedWriter:
    """Streams documents into one packed set; nothing appears at ``path`` until :meth:`finalize`.

    Writes go to a hidden temporary folder next to ``path`` which is renamed into place at the end, so a
    killed job never leaves a half-written set that looks complete. Memory is bounded by ``flush_tokens``.
    Use as a context manager: a clean exit finalizes, an exception discards the temporary folder.
    """

    def __init__(self, path: str | Path, seq_len: int, *, vocab_size: int, eos_id: int,
                 tokenizer: Any = None, meta: dict | None = None, overwrite: bool = False,
                 flush_tokens: int = 1 << 20, warn_empty: bool = True, keep_tail: bool = False) -> None:
        if seq_len < 1:
            raise ValueError("seq_len must be >= 1")
        if not 0 <= eos_id < vocab_size:
            raise ValueError(f"eos_id {eos_id} outside vocab of {vocab_size}")
        self.remote = None  # a URI: written locally, then uploaded; a plain path needs no storage layer (pyarrow)
        if "://" in os.fspath(path):
            from slimpipe import storage

            local = storage.local_path(path)  # file:// is a local folder
            self.remote, path = (None, local) if local is not None else (os.fspath(path).rstrip("/"), path)
        self.path = Path(path) if self.remote is None else self.remote
        if (storage.exists(storage.join(self.remote, INDEX)) if self.remote else self.path.exists()) and not overwrite:
            raise FileExistsError(f"{self.path} exists (pass overwrite=True to replace it)")
        self.seq_len = int(seq_len)
        self.vocab_size = int(vocab_size)
        self.eos_id = int(eos_id)
        self.dtype = token_dtype(vocab_size)
        self.tokenizer = tokenizer.describe() if hasattr(tokenizer, "describe") else (tokenizer or {})
        self.meta = dict(meta or {})
        self.overwrite = overwrite
        self.flush_tokens = int(flush_tokens)
        self.warn_empty = warn_empty
        self.keep_tail = keep_tail  # an evaluation set: the stream's tail is stored, not dropped
        self._pieces: list[tuple[str, int, int, int, int]] = []  # (doc id, start, end, tokens, bytes) per piece
        if self.remote:
            import tempfile

            self._tmp = Path(tempfile.mkdtemp(prefix="slimpipe-packed-"))
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._tmp = self.path.parent / f".{self.path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            self._tmp.mkdir()
        self._tok_f = open(self._tmp / TOKENS, "wb")  # closed in finalize() or abort()
        self._bytes_f = open(self._tmp / SEQ_BYTES, "wb")
        # Pending stream tail, starting at the first input token of the next unwritten sequence.
        self._ids: list[np.ndarray] = [np.array([self.eos_id], dtype=np.int64)]
        self._blen: list[np.ndarray] = [np.zeros(1, dtype=np.int64)]
        self._pending = 1
        self.n_sequences = 0
        self.n_documents = 0
        self.total_bytes = 0  # bytes of every document added
        self.exact_bytes = True
        self._done = False

    def __enter__(self) -> PackedWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.finalize()
        else:
            self.abort()

    def add(self, tokens: Sequence[int] | np.ndarray, n_bytes: int,
            token_bytes: Sequence[int] | np.ndarray | None = None, *, piece: tuple[str, int, int] | None = None
            ) -> None:
        """Append one document (its ids, without EOS) and its UTF-8 byte count.

        ``token_bytes`` (per-id byte lengths summing to ``n_bytes``) makes per-sequence bytes exact;
        without it the document's bytes are apportioned over its tokens. ``piece`` names what the ids
        encode, ``(document id, start, end)`` in characters of that document: an evaluation set records
        every piece in ``pieces.json`` (a set either names all its pieces or none).
        """
        if self._done:
            raise RuntimeError("writer already finalized")
        ids = np.asarray(tokens, dtype=np.int64)
        if ids.ndim != 1:
            raise ValueError("tokens must be one-dimensional")
        if ids.size == 0:
            if n_bytes:
                raise ValueError("a document with bytes but no tokens")
            return
        if ids.min() < 0 or ids.max() >= self.vocab_size:
            raise ValueError(f"token id outside [0, {self.vocab_size})")
        if (piece is None) != (not self._pieces) and self.n_documents:
            raise ValueError("a set names all its pieces or none")
        if piece is not None:
            self._pieces.append((str(piece[0]), int(piece[1]), int(piece[2]), int(ids.size), int(n_bytes)))
        if token_bytes is None:
            blen = apportion_bytes(int(n_bytes), ids.size)
            self.exact_bytes = False
        else:
            blen = np.asarray(token_bytes, dtype=np.int64)
            if blen.shape != ids.shape or int(blen.sum()) != int(n_bytes):
                raise ValueError("token_bytes must have one entry per token and sum to n_bytes")
        self._ids += [ids, np.array([self.eos_id], dtype=np.int64)]
        self._blen += [blen, np.zeros(1, dtype=np.int64)]
        self._pending += ids.size + 1
        self.n_documents += 1
        self.total_bytes += int(n_bytes)
        if self._pending >= self.flush_tokens:
            self._flush()

    def add_raw(self, ids: np.ndarray, token_bytes: np.ndarray, n_documents: int = 0) -> None:
        """Append a stretch of stream as it is (no EOS added): the carried-over tails of other parts."""
        if self._done:
            raise RuntimeError("writer already finalized")
        ids = np.asarray(ids, dtype=np.int64)
        blen = np.asarray(token_bytes, dtype=np.int64)
        if ids.shape != blen.shape or ids.ndim != 1:
            raise ValueError("ids and token_bytes must be one-dimensional and of one length")
        if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
            raise ValueError(f"token id outside [0, {self.vocab_size})")
        self._ids.append(ids)
        self._blen.append(blen)
        self._pending += ids.size
        self.n_documents += n_documents
        self.total_bytes += int(blen.sum())
        if self._pending >= self.flush_tokens:
            self._flush()

    def add_texts(self, texts: Iterable[str], tokenizer: Any,
                  pieces: Iterable[tuple[str, int, int]] | None = None) -> None:
        """Tokenize and append documents; per-token byte lengths are used when the tokenizer's are exact.
        ``pieces``: what each text is (see :meth:`add`)."""
        texts = list(texts)
        labels = list(pieces) if pieces is not None else [None] * len(texts)
        table = getattr(tokenizer, "byte_lengths", None)
        for text, ids, label in zip(texts, tokenizer.encode_batch(texts), labels, strict=True):
            n_bytes = len(text.encode("utf-8"))
            tb = None
            if table is not None and ids:
                tb = table[np.asarray(ids, dtype=np.int64)]
                if int(tb.sum()) != n_bytes:  # e.g. a normaliser changed the text
                    tb = None
            self.add(ids, n_bytes, tb, piece=label)

    def _flush(self) -> None:
        ids = np.concatenate(self._ids)
        blen = np.concatenate(self._blen)
        L = self.seq_len
        m = (ids.size - 1) // L  # full sequences available (each needs L + 1 tokens, sharing one)
        if m > 0:
            ids[: m * L].astype(self.dtype).tofile(self._tok_f)
            seq_bytes = blen[1 : m * L + 1].reshape(m, L).sum(axis=1)
            seq_bytes.astype(BYTES_DTYPE).tofile(self._bytes_f)
            self.n_sequences += m
            ids, blen = ids[m * L :], blen[m * L :]
        self._ids, self._blen, self._pending = [ids], [blen], ids.size

    def finalize(self) -> dict:
        """Write the last shared token and the index, then move the set into place; returns the index."""
        if self._done:
            raise RuntimeError("writer already finalized")
        self._flush()
        tail_ids, tail_bytes = self._ids[0], self._blen[0]
        kept_tokens = kept_bytes = 0
        if self.keep_tail and tail_ids.size > 1:
            # the stream's end after the last full sequence stays in tokens.bin (scored per document,
            # never read as a sequence); with no full sequence the whole stream is that tail
            tail_ids.astype(self.dtype).tofile(self._tok_f)
            kept_tokens, kept_bytes = int(tail_ids.size - 1), int(tail_bytes[1:].sum())
        elif self.n_sequences > 0:
            tail_ids[:1].astype(self.dtype).tofile(self._tok_f)  # the last sequence's final target
        dropped_tokens = int(tail_ids.size - 1) - kept_tokens
        dropped_bytes = int(tail_bytes[1:].sum()) - kept_bytes
        self.dropped = (tail_ids[1:].copy(), tail_bytes[1:].copy())  # what a parallel packer carries over
        self._tok_f.close()
        self._bytes_f.close()
        n = self.n_sequences
        index = {
            "format": FORMAT,
            "version": VERSION,
            "dtype": self.dtype.str,
            "seq_len": self.seq_len,
            "n_sequences": n,
            "n_tokens": (n * self.seq_len + 1 if n else 0) + (kept_tokens + (0 if n else 1) if kept_tokens else 0),
            "vocab_size": self.vocab_size,
            "eos_id": self.eos_id,
            "tokenizer": self.tokenizer,
            "n_documents": self.n_documents,
            "total_bytes": self.total_bytes - dropped_bytes - kept_bytes,  # what the sequences cover
            "dropped_tokens": dropped_tokens,
            "dropped_bytes": dropped_bytes,
            "bytes_exact": self.exact_bytes,
            "files": {"tokens": TOKENS, "seq_bytes": SEQ_BYTES, "seq_bytes_dtype": BYTES_DTYPE},
            "meta": self.meta,
        }
        names = [TOKENS, SEQ_BYTES]
        if self.keep_tail:
            # total_bytes stays what the sequences cover; the tail's tokens and bytes are counted apart
            index.update(tail_tokens=kept_tokens, tail_bytes=kept_bytes)
        if self._pieces:
            index["files"]["pieces"] = PIECES
            index["n_pieces"] = len(self._pieces)
            (self._tmp / PIECES).write_text(json.dumps(pieces_table(self._pieces)) + "\n")
            names.append(PIECES)
        (self._tmp / INDEX).write_text(json.dumps(index, indent=1) + "\n")
        for name in (*names, INDEX):
            with open(self._tmp / name, "rb") as f:
                os.fsync(f.fileno())
        self.index = index
        if self.remote:
            self._upload()
        elif self.path.exists():
            if not self.overwrite:
                self.abort()
                raise FileExistsError(f"{self.path} appeared while writing")
            trash = self.path.parent / f".{self.path.name}.old-{uuid.uuid4().hex[:8]}"
            self.path.rename(trash)
            self._tmp.rename(self.path)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            self._tmp.rename(self.path)
        self._done = True
        if n == 0 and self.warn_empty:
            log.warning("%s: no full sequence of %d tokens (%d tokens dropped)", self.path, self.seq_len,
                        dropped_tokens)
        return index

    def _upload(self) -> None:
        """Object storage: each file is one atomic upload, ``index.json`` (the set's completion mark) last."""
        from slimpipe import storage

        names = [TOKENS, SEQ_BYTES, *([PIECES] if self._pieces else []), INDEX]
        for name in names:
            with open(self._tmp / name, "rb") as src, storage.open_output(storage.join(self.remote, name)) as dst:
                shutil.copyfileobj(src, dst, 8 << 20)
        shutil.rmtree(self._tmp, ignore_errors=True)

    def abort(self) -> None:
        """Discard everything written so far."""
        for f in (self._tok_f, self._bytes_f):
            if not f.closed:
                f.close()
        shutil.rmtree(self._tmp, ignore_errors=True)
        self._done = True


def pieces_table(pieces: Sequence[tuple[str, int, int, int, int]]) -> dict:
    """``pieces.json``: what each document of an evaluation stream is, in stream order.

    ``docs`` lists the source documents once each (first appearance); ``pieces`` holds one row
    ``[doc, start, end, tokens, bytes]`` per document of the stream: the index of its source document in
    ``docs``, the character range of that document it encodes, its token count (without EOS) and its
    UTF-8 bytes. A source document's pieces are one cluster when intervals resample."""
    docs: dict[str, int] = {}
    rows = [[docs.setdefault(d, len(docs)), a, b, t, n] for d, a, b, t, n in pieces]
    return {"format": "slimpipe-pieces", "unit": "characters", "columns": ["doc", "start", "end", "tokens", "bytes"],
            "docs": list(docs), "pieces": rows}


def scored_subset(entries: Iterable[tuple[str, str, int, int]]) -> str:
    """The identity of what was scored: SHA-256 of the sorted ``source\tdocument id\tstart\tend`` lines
    (character ranges), so runs scored on the same pieces of the same documents share it whatever the
    tokenizer, seed or file layout."""
    import hashlib

    h = hashlib.sha256()
    for line in sorted(f"{s}\t{d}\t{a}\t{b}" for s, d, a, b in entries):
        h.update(line.encode("utf-8") + b"\n")
    return h.hexdigest()


def _read_index(path: Path) -> dict:
    index_file = path / INDEX
    if not index_file.is_file():
        raise FileNotFoundError(f"{path}: no {INDEX} (not a packed set, or not finalized)")
    index: dict = json.loads(index_file.read_text())
    if index.get("format") != FORMAT:
        raise ValueError(f"{path}: format {index.get('format')!r}, expected {FORMAT!r}")
    return index


def write_parts_index(path: str | os.PathLike, parts: Sequence[str], *, meta: dict | None = None,
                      indices: Sequence[dict] | None = None) -> dict:
    """Make ``path`` (a folder or URI) a multi-part set of the finished sets ``path/<part>`` (written last:
    it marks the set complete). ``indices`` are the parts' own indexes when the caller has them (else
    they are read). All parts must share seq_len, dtype, vocabulary and tokenizer."""
    from slimpipe import storage

    root = os.fspath(path)
    if indices is None:
        indices = [_read_index(Path(root) / p) for p in parts]
    if not indices:
        raise ValueError("a packed set needs at least one part")
    first = indices[0]
    for p, ix in zip(parts, indices, strict=True):
        for key in ("seq_len", "dtype", "vocab_size", "eos_id"):
            if ix[key] != first[key]:
                raise ValueError(f"{root}/{p}: {key} {ix[key]!r} differs from {first[key]!r}")
        if (ix.get("tokenizer") or {}).get("identity") != (first.get("tokenizer") or {}).get("identity"):
            raise ValueError(f"{root}/{p}: tokenized differently from {root}/{parts[0]}")
    index = {
        "format": FORMAT, "version": VERSION, "dtype": first["dtype"], "seq_len": first["seq_len"],
        "n_sequences": sum(ix["n_sequences"] for ix in indices),
        "n_tokens": sum(ix["n_sequences"] for ix in indices) * first["seq_len"],
        "vocab_size": first["vocab_size"], "eos_id": first["eos_id"], "tokenizer": first.get("tokenizer") or {},
        "n_documents": sum(ix["n_documents"] for ix in indices),
        "total_bytes": sum(ix["total_bytes"] for ix in indices),
        "dropped_tokens": indices[-1]["dropped_tokens"], "dropped_bytes": indices[-1]["dropped_bytes"],
        "bytes_exact": all(ix["bytes_exact"] for ix in indices),
        "parts": [{"path": p, "n_sequences": ix["n_sequences"]} for p, ix in zip(parts, indices, strict=True)],
        "meta": dict(meta or {}),
    }
    storage.write_bytes_atomic(storage.join(root, INDEX), (json.dumps(index, indent=1) + "\n").encode())
    return index
