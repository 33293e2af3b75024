"""Property test of the reader (#19, beyond the list): random bytes, random JSON values and random nesting,
plain, zstd or gzip (whole, multi-frame or truncated), sometimes with a decompression bomb appended.

Whatever the file holds: no crash, every line is a document or a counted reject (``read = accepted +
rejected``, and ``read`` is the number of lines when the file reads to its end), and the reader's memory
stays bounded (Python-level peak, tracemalloc) however much the file decompresses to.
"""

from __future__ import annotations

import gzip
import json
import tracemalloc

import zstandard
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from slimpipe.io import readers

LIMIT = 1 << 20  # MAX_RECORD_BYTES for this test: a bomb line is ~24 times longer
BOUND = 32 << 20  # peak Python memory of one read (~16 MiB now); a 24 MiB zstd bomb took 49 MiB before

# every character, lone surrogates included: "\udc80" is valid JSON, invalid UTF-8
chars = st.characters(codec=None, exclude_categories=())
scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(chars, max_size=20)
values = st.recursive(scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(chars, max_size=6), c,
                                                                                    max_size=4), max_leaves=12)
records = st.one_of(
    values,
    st.fixed_dictionaries({"text": st.text(chars, max_size=80) | values},
                          optional={"meta": values, "source": st.text(chars, max_size=12), "url": values}),
)


@st.composite
def lines(draw) -> bytes:
    kind = draw(st.sampled_from(["record", "record", "bytes", "nested", "blank"]))
    if kind == "bytes":
        return draw(st.binary(max_size=120)).replace(b"\n", b" ")
    if kind == "nested":
        depth = draw(st.integers(1, 3000))
        return draw(st.sampled_from([b"[", b'{"text":'])) * depth + draw(st.sampled_from([b"", b"1", b'"x"']))
    if kind == "blank":
        return draw(st.sampled_from([b"", b" ", b"\r", b"\t  "]))
    text = json.dumps(draw(records), ensure_ascii=draw(st.booleans()), allow_nan=True)
    return text.encode("utf-8", "surrogatepass")  # a lone surrogate unescaped: invalid UTF-8 bytes


def _compress(data: bytes, how: str) -> bytes:
    if how == "zstd":
        return zstandard.ZstdCompressor(level=1).compress(data)
    if how == "zstd-frames":  # several frames back to back, as concatenated files are
        half = len(data) // 2
        return b"".join(zstandard.ZstdCompressor(level=1).compress(p) for p in (data[:half], data[half:]))
    if how == "gzip":
        return gzip.compress(data, compresslevel=1, mtime=0)
    return data


_warm: list[bool] = []


def _warm_up(tmp_path_factory) -> None:
    """Read one file before measuring, so that lazy imports (pyarrow's, ~25 MiB) are not counted."""
    if not _warm:
        path = tmp_path_factory.mktemp("warm") / "c4_sample.jsonl"
        path.write_text('{"text": "warm"}\n{"text": 1}\n')
        for _ in readers.read_batches(readers.discover_files([path])[0]):
            pass
        _warm.append(True)


@settings(max_examples=60, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(body=st.lists(lines(), max_size=12), newline=st.sampled_from([b"\n", b"\r\n"]), final=st.booleans(),
       how=st.sampled_from(["plain", "zstd", "zstd-frames", "gzip"]), cut=st.integers(0, 12),
       bomb=st.sampled_from([0, 0, 0, 2 << 20, 24 << 20]), name=st.sampled_from(
           ["c4_sample.jsonl", "c4_sample.jsonl.zst", "c4_sample.jsonl.gz", "c4_sample.parquet"]))
@example(body=[b'{"text": "a b c"}'], newline=b"\n", final=True, how="zstd", cut=0, bomb=24 << 20,
         name="c4_sample.jsonl.zst")
@example(body=[b'{"text": "a b c"}'], newline=b"\n", final=True, how="gzip", cut=0, bomb=24 << 20,
         name="c4_sample.jsonl.gz")
@example(body=[b'{"text": "kept", "meta": {"n": "\\udc80"}}'], newline=b"\n", final=False, how="plain", cut=0,
         bomb=0, name="c4_sample.jsonl")
def test_the_reader_accounts_for_every_line_in_bounded_memory(tmp_path_factory, body, newline, final, how, cut,
                                                              bomb, name) -> None:
    data = newline.join(body) + (newline if final and body else b"")
    if bomb:  # a line of zeros that decompresses from a few KB: one counted "record too large"
        data += b'{"text": "' + bytes(bomb) + newline
    expected = data.count(b"\n") + (0 if not data or data.endswith(b"\n") else 1)
    blob = _compress(data, how)
    truncated = how != "plain" and 0 < cut < len(blob) and cut < 6
    if truncated:
        blob = blob[:-cut]
    path = tmp_path_factory.mktemp("r") / name  # the name need not match the content: it is sniffed
    path.write_bytes(blob)

    old = readers.MAX_RECORD_BYTES
    readers.MAX_RECORD_BYTES = LIMIT
    _warm_up(tmp_path_factory)
    tracemalloc.start()
    try:
        (f,) = readers.discover_files([path])
        items = list(readers.read_batches(f, max_rows=64, max_bytes=1 << 20))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        readers.MAX_RECORD_BYTES = old

    *docs, (none, rejects, stats) = items
    assert none is None and all(d is not None and r is None and s is None for d, r, s in docs)
    accepted = sum(d.num_rows for d, _, _ in docs)
    counted = [x for x in rejects.column("line").to_pylist() if x >= 0]
    assert stats.read == stats.accepted + stats.rejected
    assert stats.accepted == accepted and stats.rejected == len(counted)
    assert stats.status in ("ok", "empty", "truncated", "unreadable")
    if stats.status in ("ok", "empty"):
        assert stats.read == expected, (stats, how)
    else:  # the lines before the damage are still accounted for
        assert stats.read <= expected and stats.error
    if bomb and stats.status == "ok":
        assert "record too large" in stats.reasons
    assert peak < BOUND, (peak, bomb, how)
