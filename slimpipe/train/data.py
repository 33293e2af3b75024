"""What a run reads: the mix, opened once (:class:`Mix`), and a background prefetching loader for the
training steps (:class:`PrefetchLoader`).

A :class:`Mix` is one ``slimpipe mix`` output, resolved once to a local folder (a URI's cached copy) and
then handed to everything that needs its parts: the training set, the per-source evaluation sets, the
tokenizer (for per-document bits per byte and the export) and the manifest (the evaluation set's identity).


The batch of step ``s`` is fully determined by the step (``sampler.indices(s * global_batch, ...)``), so
a thread can read ahead: it gathers this rank's rows from the memory-mapped packed set, converts them to
int64 and pins them (on CUDA) ``depth`` steps ahead, while the GPU computes. The main thread only
copies the pinned tensor to the device (asynchronously). Resuming at step ``s`` simply starts the
thread at ``s``, so the order is identical to an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from slimpipe.mix.packed import TOKENIZER_DIR, PackedDataset, local_mix, open_mix

if TYPE_CHECKING:
    from slimpipe.mix.tokenizer import Tokenizer

MANIFEST = "manifest.json"

_DONE = object()


class PrefetchLoader:
    """Yields ``(step, fetch(step))`` for ``step`` in ``[start, stop)`` as int64 tensors on ``device``, read
    ``depth`` steps ahead by a thread. Errors in the reader thread are raised in the consumer."""

    def __init__(self, fetch: Callable[[int], np.ndarray], *, start: int, stop: int, device: torch.device,
                 depth: int = 2) -> None:
        self.fetch, self.start, self.stop, self.device = fetch, start, stop, device
        self.pin = device.type == "cuda"
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="slimpipe-prefetch", daemon=True)
        self._thread.start()

    def rows(self, step: int) -> torch.Tensor:
        """``fetch(step)`` (this rank's rows of that step) as a CPU int64 tensor, pinned on CUDA."""
        t = torch.from_numpy(np.ascontiguousarray(self.fetch(step), dtype=np.int64))
        return t.pin_memory() if self.pin else t

    def _put(self, item: object) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            for step in range(self.start, self.stop):
                if not self._put((step, self.rows(step))):
                    return
        except BaseException as exc:  # handed to the consumer, which raises it
            self._put(exc)
            return
        self._put(_DONE)

    def __iter__(self) -> Iterator[tuple[int, torch.Tensor]]:
        while True:
            item = self._queue.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            step, rows = item
            yield step, rows.to(self.device, non_blocking=True)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def __enter__(self) -> PrefetchLoader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class Mix:
    """One packed mix: ``root`` (a local folder) read at ``seq_len`` (None: the stored length).

    Open it once with :meth:`open` (which copies a URI's mix to this node's cache); its sets, tokenizer
    and manifest are read on first use and kept. :meth:`at` gives the same mix at another sequence length
    without resolving the location again.
    """

    root: Path
    seq_len: int | None = None
    _sets: tuple[PackedDataset, dict[str, PackedDataset]] | None = field(default=None, repr=False)
    _tokenizer: Any = field(default=None, repr=False)
    _manifest: Any = field(default=False, repr=False)

    @classmethod
    def open(cls, location: str | os.PathLike | Mix, seq_len: int | None = None, *,
             cache_dir: str | os.PathLike | None = None) -> Mix:
        """The mix at ``location`` (a folder, or a URI cached locally by :func:`slimpipe.mix.packed.local_mix`);
        a :class:`Mix` is returned as it is (at ``seq_len`` when given)."""
        if isinstance(location, Mix):
            return location if seq_len is None else location.at(seq_len)
        return cls(Path(local_mix(location, cache_dir)), seq_len)

    def at(self, seq_len: int | None) -> Mix:
        """This mix read at ``seq_len`` (itself when that is already its length)."""
        if seq_len == self.seq_len:
            return self
        return Mix(self.root, seq_len, _tokenizer=self._tokenizer, _manifest=self._manifest)

    def _open_sets(self) -> tuple[PackedDataset, dict[str, PackedDataset]]:
        if self._sets is None:
            self._sets = open_mix(self.root, self.seq_len)
        return self._sets

    @property
    def train(self) -> PackedDataset:
        """The training set (``MIX_DIR/train``)."""
        return self._open_sets()[0]

    @property
    def evals(self) -> dict[str, PackedDataset]:
        """The per-source held-out sets (``MIX_DIR/eval/<source>``), in the canonical source order."""
        return self._open_sets()[1]

    @property
    def tokenizer_dir(self) -> Path:
        return self.root / TOKENIZER_DIR

    def tokenizer(self) -> Tokenizer:
        """The tokenizer the mix was packed with (``MIX_DIR/tokenizer/``); FileNotFoundError/ValueError when
        it is absent or unreadable."""
        if self._tokenizer is None:
            from slimpipe.mix.tokenizer import load_tokenizer

            self._tokenizer = load_tokenizer(self.tokenizer_dir)
        return self._tokenizer

    @property
    def manifest(self) -> dict | None:
        """``MIX_DIR/manifest.json`` (None for a mix written without one, e.g. by :func:`write_mix`)."""
        if self._manifest is False:
            path = self.root / MANIFEST
            self._manifest = json.loads(path.read_text()) if path.is_file() else None
        return self._manifest
