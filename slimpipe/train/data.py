"""A background prefetching loader for the training steps.

The batch of step ``s`` is fully determined by the step (``sampler.indices(s * global_batch, ...)``), so
a thread can read ahead: it gathers this rank's rows from the memory-mapped packed set, converts them to
int64 and pins them (on CUDA) ``depth`` steps ahead, while the GPU computes. The main thread only
copies the pinned tensor to the device (asynchronously). Resuming at step ``s`` simply starts the
thread at ``s``, so the order is identical to an uninterrupted run.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator

import numpy as np
import torch

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
