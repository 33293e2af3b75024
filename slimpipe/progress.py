"""Minimal progress reporting to stderr: a bar on a terminal, periodic lines in logs and CI."""

from __future__ import annotations

import sys
import time


class Progress:
    """``with Progress("dedup: signatures", total=n) as p: p.update(1)``.

    On a TTY it redraws one line; otherwise it prints a line at most every ``interval`` seconds, so CI
    logs show that long work is moving without drowning in output.
    """

    def __init__(self, label: str, total: int | None = None, unit: str = "items", enabled: bool = True,
                 interval: float = 10.0):
        self.label, self.total, self.unit, self.enabled = label, total, unit, enabled
        self.count = 0
        self.interval = interval
        self._tty = sys.stderr.isatty()
        self._start = self._last = time.monotonic()

    def __enter__(self) -> Progress:
        if self.enabled and not self._tty:
            print(f"[{self.label}] started ({self.total} {self.unit})", file=sys.stderr, flush=True)
        return self

    def update(self, n: int = 1) -> None:
        self.count += n
        if not self.enabled:
            return
        now = time.monotonic()
        if self._tty:
            if now - self._last >= 0.1 or (self.total and self.count >= self.total):
                self._draw(now, end="")
                self._last = now
        elif now - self._last >= self.interval:
            self._draw(now, end="\n")
            self._last = now

    def _draw(self, now: float, end: str) -> None:
        elapsed = now - self._start
        if self.total:
            frac = self.count / self.total
            bar = "#" * int(frac * 30)
            text = f"[{self.label}] |{bar:<30}| {self.count}/{self.total} {self.unit} {elapsed:.1f}s"
        else:
            text = f"[{self.label}] {self.count} {self.unit} {elapsed:.1f}s"
        prefix = "\r" if self._tty else ""
        print(prefix + text, end=end, file=sys.stderr, flush=True)

    def __exit__(self, *_exc) -> None:
        if self.enabled:
            self._draw(time.monotonic(), end="\n")
