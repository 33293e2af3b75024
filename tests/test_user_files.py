"""Nothing lost (#19): what a command writes, where, and what it never touches.

Output folders (slimpipe/outdir.py), the scratch workspace, temporaries, ``file://`` URIs, symlinked
inputs and object-store commits, each tried the way a careless user (or a failing network) would.
"""

from __future__ import annotations

import io
import json
import uuid
from pathlib import Path

import pytest
import zstandard
from click.testing import CliRunner

from slimpipe import storage
from slimpipe.cli import main


def _text(i: int, topic: str) -> str:
    return f"Document {i} about {topic}: " + " ".join(f"{topic}{(i * 7 + k) % 97}" for k in range(80)) + "."


def _corpus(d: Path, n: int = 12) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "c4_sample.jsonl").write_text("".join(json.dumps({"text": _text(i, "web")}) + "\n" for i in range(n)))
    data = "".join(json.dumps({"text": _text(i, "noise")}) + "\n" for i in range(6)).encode()
    (d / "arxiv_sample.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(data))
    return d


def _run(*args) -> object:
    return CliRunner().invoke(main, [str(a) for a in args])


def _shards(out: Path) -> list[str]:
    return sorted(p.relative_to(out).as_posix() for p in (out / "kept").rglob("*.jsonl.zst"))


# ------------------------------------------------------------------------------------------------
# 10. an object-store write that fails midway publishes nothing under the final name


class _BreaksMidway(io.RawIOBase):
    """A stream of ``size`` bytes whose read fails once ``fail_at`` bytes have been handed out."""

    def __init__(self, size: int, fail_at: int):
        self.size, self.fail_at, self.pos = size, fail_at, 0

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        if self.pos >= self.fail_at:
            raise OSError("connection reset by peer (injected)")
        n = min(len(b), self.size - self.pos, self.fail_at - self.pos)
        b[:n] = b"x" * n
        self.pos += n
        return n


def test_an_upload_that_fails_midway_publishes_nothing(s3_server: dict) -> None:
    base = f"{s3_server['url']}/midway-{uuid.uuid4().hex[:8]}"
    big = 12 << 20  # more than one multipart part: the first parts are on the server when the stream breaks
    for target, size, fail_at in ((f"{base}/kept/part-00000.jsonl.zst", big, 11 << 20),
                                  (f"{base}/manifest.json", 4096, 1000)):
        with pytest.raises(OSError, match="injected"):
            storage.upload(_BreaksMidway(size, fail_at), target)
        assert not storage.exists(target), f"a truncated {target} was published"
    assert storage.list_files(base) == []  # no temporary object left behind either
    # the same path with a whole stream publishes the whole object
    storage.upload(_BreaksMidway(5000, 10_000), f"{base}/manifest.json")
    assert storage.read_bytes(f"{base}/manifest.json") == b"x" * 5000
    # and open_output (spool, then upload) publishes only on a clean exit
    with pytest.raises(RuntimeError), storage.open_output(f"{base}/report.json") as fh:
        fh.write(b"half")
        raise RuntimeError("the writer failed")
    assert not storage.exists(f"{base}/report.json")
    assert storage.list_files(base) == [f"{base}/manifest.json"]
