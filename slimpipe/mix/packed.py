"""The packed token format: what ``slimpipe mix`` writes and ``slimpipe train`` reads.

A *set* is one folder::

    index.json      format, dtype, seq_len, n_sequences, vocab_size, eos_id, tokenizer identity, totals
    tokens.bin      one contiguous stream of token ids, little-endian uint16 (vocab <= 65536) or uint32
    seq_bytes.bin   little-endian uint32, one per sequence: UTF-8 bytes of the text its targets cover

A mix is ``MIX_DIR/train/`` (the training set) plus ``MIX_DIR/eval/<source>/`` (one held-out set per
source, canonical names from :mod:`slimpipe.sources`), and optionally ``MIX_DIR/tokenizer/`` (the files
of the tokenizer, see :meth:`slimpipe.mix.tokenizer.Tokenizer.save`).

The stream is ``EOS doc1 EOS doc2 EOS ...``: EOS between documents, and one leading EOS so the first
document is predicted from a boundary like every other.  Sequence ``i`` is ``stream[i*L : i*L + L + 1]``
(``L + 1`` tokens: inputs ``[:-1]``, targets ``[1:]``); consecutive sequences share one token, so every
token after the first is a target exactly once and the file holds ``n*L + 1`` ids.  The ``seq_bytes``
of a sequence is the UTF-8 byte count of its ``L`` targets (EOS counts 0 bytes), so summed NLL over a
set of sequences divided by their byte count is the exact bits per byte, for any subset.  Per-sequence
byte counts live in a binary side file, not the JSON, because a 330B-token mix has ~10^8 sequences.

Byte counts come from the tokenizer's per-id byte lengths when those are exact (byte-level BPE);
otherwise a document's byte count is spread over its tokens (integer apportionment), which keeps every
document's and every set's total exact and per-sequence counts within one document's rounding.

Tokens that do not fill a last full sequence are dropped (recorded as ``dropped_tokens``) in a training
set. An evaluation set (``eval/<source>``, ``test/<source>``) keeps them: ``tokens.bin`` then holds the
whole stream, ``n_sequences`` full sequences and after them a tail of ``tail_tokens`` ids (``tail_bytes``
bytes) that no sequence reads but per-document scoring does, so every document is scored whole. Its
``pieces.json`` (:func:`~slimpipe.mix.packed_writer.pieces_table`) says what each document of the stream
is: a character range of one evaluation document, with its token and byte counts.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from slimpipe.mix.packed_writer import (  # noqa: F401  (the format's names, re-exported)
    BYTES_DTYPE,
    FORMAT,
    INDEX,
    PIECES,
    SEQ_BYTES,
    TOKENIZER_DIR,
    TOKENS,
    VERSION,
    PackedWriter,
    _read_index,
    apportion_bytes,
    eval_path,
    pieces_table,
    scored_subset,
    token_dtype,
    train_path,
    write_parts_index,
)
from slimpipe.sources import SOURCES

log = logging.getLogger(__name__)


class _Part:
    """The memory-mapped files of one packed stream (a single-stream set, or one part of a multi-part one)."""

    def __init__(self, path: Path, index: dict) -> None:
        files = index.get("files", {})
        dtype = np.dtype(index["dtype"])
        self.n_stored = int(index["n_sequences"])
        n_tokens = int(index["n_tokens"])
        tok_file = path / files.get("tokens", TOKENS)
        bytes_file = path / files.get("seq_bytes", SEQ_BYTES)
        expect = n_tokens * dtype.itemsize
        if tok_file.stat().st_size != expect:
            raise ValueError(f"{tok_file}: {tok_file.stat().st_size} bytes, index says {expect}")
        # np.memmap cannot map an empty file; an empty set is a zero-length array.
        self.tokens = (np.memmap(tok_file, dtype=dtype, mode="r", shape=(n_tokens,)) if n_tokens
                       else np.zeros(0, dtype=dtype))
        bdt = np.dtype(files.get("seq_bytes_dtype", BYTES_DTYPE))
        self.seq_bytes = (np.memmap(bytes_file, dtype=bdt, mode="r", shape=(self.n_stored,)) if self.n_stored
                          else np.zeros(0, dtype=bdt))


class PackedDataset:
    """Memory-mapped reader of one packed set; ``ds[i]`` is ``seq_len + 1`` token ids (int64).

    A set is one stream, or (``slimpipe mix``'s training set, packed in parallel) several *parts*, each
    its own stream in a subfolder listed by the set's ``index.json``; sequences never cross parts and
    are numbered part after part.

    ``seq_len`` may be smaller than the stored length if it divides it: each stored sequence is then
    read as ``stored // seq_len`` shorter ones (the stream is contiguous, so nothing is copied and
    byte counts stay exact over whole stored sequences).
    """

    def __init__(self, path: str | Path, seq_len: int | None = None) -> None:
        self.path = Path(path)
        self.index: dict = _read_index(self.path)
        self.stored_seq_len = int(self.index["seq_len"])
        self.seq_len = int(seq_len or self.stored_seq_len)
        if self.seq_len > self.stored_seq_len or self.stored_seq_len % self.seq_len:
            raise ValueError(f"seq_len {self.seq_len} must divide the stored seq_len {self.stored_seq_len}")
        self.group = self.stored_seq_len // self.seq_len
        self.vocab_size = int(self.index["vocab_size"])
        self.eos_id = int(self.index["eos_id"])
        self.tokenizer: dict = self.index.get("tokenizer") or {}
        if "parts" in self.index:
            self._parts = []
            for item in self.index["parts"]:
                sub = self.path / item["path"]
                part_index = _read_index(sub)
                if int(part_index["seq_len"]) != self.stored_seq_len or part_index["dtype"] != self.index["dtype"]:
                    raise ValueError(f"{sub}: part differs from its set ({self.path}) in seq_len or dtype")
                self._parts.append(_Part(sub, part_index))
        else:
            self._parts = [_Part(self.path, self.index)]
        counts = np.array([p.n_stored for p in self._parts], dtype=np.int64)
        self._starts = np.concatenate([[0], np.cumsum(counts)])
        self.n_stored = int(self._starts[-1])
        if self.n_stored != int(self.index["n_sequences"]):
            raise ValueError(f"{self.path}: parts hold {self.n_stored} sequences, index says {self.index['n_sequences']}")
        self._seq_bytes: np.ndarray | None = None
        self._pieces: dict | None = None

    @property
    def pieces(self) -> dict | None:
        """An evaluation set's ``pieces.json`` as arrays (``docs``: document ids; per piece ``doc`` (index
        into ``docs``), ``start``, ``end`` (characters), ``tokens``, ``bytes``), or None for a set without."""
        name = self.index.get("files", {}).get("pieces")
        if not name:
            return None
        if self._pieces is None:
            t = json.loads((self.path / name).read_text())
            rows = np.asarray(t["pieces"], dtype=np.int64).reshape(-1, 5)
            self._pieces = {"docs": [str(d) for d in t["docs"]], "doc": rows[:, 0], "start": rows[:, 1],
                            "end": rows[:, 2], "tokens": rows[:, 3], "bytes": rows[:, 4]}
        return self._pieces

    def piece_spans(self) -> np.ndarray:
        """``(n_pieces, 2)`` [start, end) stream positions of each piece's tokens (``EOS p1 EOS p2 ... EOS``)."""
        p = self.pieces
        if p is None:
            raise ValueError(f"{self.path}: no {PIECES}")
        lens = p["tokens"]
        starts = 1 + np.concatenate([[0], np.cumsum(lens + 1)[:-1]]).astype(np.int64)
        expect = int(lens.sum() + lens.size + 1) if lens.size else 0
        if expect != int(self.tokens.size):
            raise ValueError(f"{self.path}: {PIECES} accounts for {expect} tokens, the stream holds {self.tokens.size}")
        return np.stack([starts, starts + lens], axis=1)

    @property
    def n_parts(self) -> int:
        return len(self._parts)

    @property
    def tokens(self) -> np.ndarray:
        """The token stream (a memory map for a one-stream set; the parts concatenated, a copy, otherwise)."""
        if len(self._parts) == 1:
            return self._parts[0].tokens
        return np.concatenate([p.tokens for p in self._parts])

    @property
    def seq_bytes(self) -> np.ndarray:
        """UTF-8 bytes covered by each stored sequence's targets, in sequence order."""
        if len(self._parts) == 1:
            return self._parts[0].seq_bytes
        if self._seq_bytes is None:
            self._seq_bytes = np.concatenate([p.seq_bytes for p in self._parts])
        return self._seq_bytes

    def __len__(self) -> int:
        return self.n_stored * self.group

    def __getitem__(self, i: int) -> np.ndarray:
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(i)
        return self.get_batch(np.array([i]))[0]

    def get_batch(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """Rows ``indices`` as an int64 array ``(len(indices), seq_len + 1)``."""
        idx = np.asarray(indices, dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError("batch index out of range")
        s, k = np.divmod(idx, self.group)
        window = np.arange(self.seq_len + 1)
        if len(self._parts) == 1:
            offsets = s * self.stored_seq_len + k * self.seq_len
            return np.asarray(self._parts[0].tokens[offsets[:, None] + window], dtype=np.int64)
        out = np.empty((idx.size, self.seq_len + 1), dtype=np.int64)
        part = np.searchsorted(self._starts, s, side="right") - 1
        for p in np.unique(part).tolist():
            m = part == p
            offsets = (s[m] - self._starts[p]) * self.stored_seq_len + k[m] * self.seq_len
            out[m] = self._parts[p].tokens[offsets[:, None] + window]
        return out

    @property
    def total_bytes(self) -> int:
        """UTF-8 bytes covered by all targets of the set."""
        return int(self.seq_bytes.sum(dtype=np.int64))

    def prefix_bytes(self, n: int) -> int:
        """Bytes covered by the targets of the first ``n`` sequences (``n`` a multiple of ``group``)."""
        if n % self.group:
            raise ValueError(f"byte counts are per stored sequence: n must be a multiple of {self.group}")
        return int(self.seq_bytes[: n // self.group].sum(dtype=np.int64))

    def epoch_order(self, seed: int, epoch: int) -> np.ndarray:
        """A permutation of ``range(len(self))`` that depends only on (seed, epoch)."""
        rng = np.random.default_rng([int(seed), int(epoch), 0x5EED])
        dtype = np.int32 if len(self) < 2**31 else np.int64
        return rng.permutation(np.arange(len(self), dtype=dtype))

    def __repr__(self) -> str:
        return (f"PackedDataset({str(self.path)!r}, sequences={len(self)}, seq_len={self.seq_len}, "
                f"vocab={self.vocab_size}, tokenizer={self.tokenizer.get('name')!r}, parts={self.n_parts})")


class ShuffledSampler:
    """Maps a global sample position (sequences consumed since step 0) to a dataset index.

    Epoch ``e`` visits every sequence once in ``epoch_order(seed, e)``; the position alone is the
    whole data state, which is why a checkpoint only needs to record it.
    """

    def __init__(self, dataset: PackedDataset, seed: int) -> None:
        if len(dataset) == 0:
            raise ValueError(f"{dataset.path}: empty training set")
        self.dataset = dataset
        self.seed = seed
        self._epoch = -1
        self._order: np.ndarray | None = None

    def indices(self, start: int, count: int) -> np.ndarray:
        n = len(self.dataset)
        out = np.empty(count, dtype=np.int64)
        pos = start
        filled = 0
        while filled < count:
            epoch, off = divmod(pos, n)
            if epoch != self._epoch:
                self._order, self._epoch = self.dataset.epoch_order(self.seed, epoch), epoch
            take = min(count - filled, n - off)
            out[filled : filled + take] = self._order[off : off + take]
            filled += take
            pos += take
        return out


def default_mix_cache() -> Path:
    """Where mixes read from a URI are kept on local disk: ``$SLIMPIPE_CACHE/mixes`` or
    ``~/.cache/slimpipe/mixes``."""
    base = os.environ.get("SLIMPIPE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "slimpipe")
    return Path(base) / "mixes"


def local_mix(mix_dir: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> Path:
    """A local folder holding the mix at ``mix_dir``: the folder itself for a path or ``file://`` URI; for
    ``s3://``, ``gs://``, ``hdfs://``... a copy under ``cache_dir`` (default :func:`default_mix_cache`),
    one folder per URI, so the trainer can memory-map it.

    Only files missing locally, or of another size, are downloaded, each atomically (several ranks may
    ask at once); ``manifest.json`` (the mark of a finished mix) comes last. A URI without one fails
    with one line naming it.
    """
    import hashlib

    if "://" not in os.fspath(mix_dir):  # a plain path needs no storage layer (bench_gpu.py runs without pyarrow)
        return Path(mix_dir)
    from slimpipe import storage

    if (local := storage.local_path(mix_dir)) is not None:  # file://
        return Path(local)
    uri = os.fspath(mix_dir).rstrip("/")
    manifest = storage.join(uri, "manifest.json")
    try:
        if not storage.exists(manifest):
            raise FileNotFoundError(f"{uri}: no manifest.json (not a finished `slimpipe mix` output)")
        files = [f for f in storage.list_files(uri) if not f[len(uri) + 1 :].startswith((".work/", "."))]
    except OSError as exc:
        raise FileNotFoundError(f"{uri}: cannot read the mix ({type(exc).__name__}: {exc})") from None
    dest = Path(cache_dir or default_mix_cache()) / hashlib.sha256(uri.encode()).hexdigest()[:16]
    files.sort(key=lambda f: f == manifest)  # the manifest last
    for f in files:
        target = dest / f[len(uri) + 1 :]
        if target.is_file() and target.stat().st_size == storage.size(f):
            continue
        with storage.open_input(f) as src, storage.open_output(target) as out:  # several ranks may ask at once
            shutil.copyfileobj(src, out, 8 << 20)
    (dest / ".slimpipe-source-uri").write_text(uri + "\n")
    log.info("mix %s cached at %s", uri, dest)
    return dest


def open_mix(mix_dir: str | os.PathLike, seq_len: int | None = None, *, cache_dir: str | os.PathLike | None = None
             ) -> tuple[PackedDataset, dict[str, PackedDataset]]:
    """The training set and the per-source eval sets of a mix (a path or a URI, see :func:`local_mix`),
    checked to share one tokenizer."""
    root = local_mix(mix_dir, cache_dir)
    train = PackedDataset(train_path(root), seq_len)
    evals: dict[str, PackedDataset] = {}
    eval_root = root / "eval"
    if eval_root.is_dir():
        names = sorted(p.name for p in eval_root.iterdir() if (p / INDEX).is_file())
        names.sort(key=lambda n: (SOURCES.index(n) if n in SOURCES else len(SOURCES), n))
        for name in names:
            evals[name] = PackedDataset(eval_root / name, seq_len)
    for name, ds in evals.items():
        if ds.vocab_size != train.vocab_size or ds.eos_id != train.eos_id or (
            ds.tokenizer.get("identity") != train.tokenizer.get("identity")
        ):
            raise ValueError(f"eval set {name!r} was tokenized differently from {train.path}")
    return train, evals


def write_mix(mix_dir: str | Path, train_texts: Iterable[str], eval_texts: dict[str, Iterable[str]],
              tokenizer: Any, seq_len: int, *, overwrite: bool = False, meta: dict | None = None,
              batch: int = 256) -> dict[str, dict]:
    """Pack in-memory texts into a complete mix (``train/``, ``eval/<source>/``, ``tokenizer/``).

    The mix stage streams far larger inputs through :class:`PackedWriter` itself; this is the small-data
    path (tests, benchmarks, examples). Each evaluation text is one piece, named ``<i>`` (its position),
    ``[0, len(text))``, and the sets keep their tail, so every text is scored whole. Returns each set's index.
    """
    root = Path(mix_dir)
    common = {"vocab_size": tokenizer.vocab_size, "eos_id": tokenizer.eos_id, "tokenizer": tokenizer,
              "overwrite": overwrite}
    targets = [("train", train_path(root), train_texts)]
    targets += [(f"eval/{s}", eval_path(root, s), texts) for s, texts in eval_texts.items()]
    indices = {}
    for name, path, texts in targets:
        is_eval = name != "train"
        with PackedWriter(path, seq_len, meta={**(meta or {}), "set": name}, keep_tail=is_eval, **common) as w:
            chunk: list[str] = []
            done = 0
            for text in [*texts, None]:
                if text is not None:
                    chunk.append(text)
                if chunk and (len(chunk) >= batch or text is None):
                    labels = [(str(done + i), 0, len(t)) for i, t in enumerate(chunk)] if is_eval else None
                    w.add_texts(chunk, tokenizer, labels)
                    done += len(chunk)
                    chunk = []
        indices[name] = json.loads((path / INDEX).read_text())
    if hasattr(tokenizer, "save"):
        tokenizer.save(root / TOKENIZER_DIR)
    return indices
