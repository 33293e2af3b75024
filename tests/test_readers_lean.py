"""#21.1: the lean read (native JSON parsing a block at a time, line by line where the native parse cannot be
exact) gives the same documents, rejects and stats as the line-by-line read, whatever the file holds.

The property test reuses the reader property test's random lines (random bytes, random JSON values, deep
nesting, blank lines, lone surrogates) with small blocks, so that block edges, native blocks and refused
blocks all occur; the examples are the cases where pyarrow's parser and CPython's ``json.loads`` differ.
"""

from __future__ import annotations

import gzip
import json

import pyarrow as pa
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_reader_properties import lines

from slimpipe.io import _fastjson, readers


def _both(path, monkeypatch, block: int = 1 << 10, limit: int | None = None):
    monkeypatch.setattr(readers, "_BLOCK_BYTES", block)
    if limit is not None:
        monkeypatch.setattr(readers, "MAX_RECORD_BYTES", limit)
    (f,) = readers.discover_files([path])
    out = []
    for lean in (False, True):
        docs, rejects, stats = [], None, None
        for d, r, s in readers.read_batches(f, max_rows=7, max_bytes=1 << 20, lean=lean):
            if d is not None:
                docs.append(d.select(["line", "source", "text"]) if not lean else d)
            if s is not None:
                rejects, stats = r, s
        table = pa.Table.from_batches(docs, schema=readers.LEAN_SCHEMA)
        out.append((table.to_pylist(), rejects.to_pylist(), stats.to_dict()))
    return out


def _same(path, monkeypatch, **kw) -> tuple:
    (docs, rej, stats), (ldocs, lrej, lstats) = _both(path, monkeypatch, **kw)
    assert ldocs == docs
    assert lrej == rej
    assert lstats == stats
    return docs, rej, stats


def _compress(data: bytes, how: str) -> bytes:
    if how == "zstd":
        return zstandard.ZstdCompressor(level=1).compress(data)
    if how == "gzip":
        return gzip.compress(data, compresslevel=1, mtime=0)
    return data


@settings(max_examples=60, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture])
@given(body=st.lists(lines(), max_size=40), newline=st.sampled_from([b"\n", b"\r\n"]), final=st.booleans(),
       how=st.sampled_from(["plain", "zstd", "gzip"]), cut=st.integers(0, 6), block=st.sampled_from([64, 1 << 10, 1 << 16]))
def test_lean_read_equals_line_read_on_random_files(tmp_path_factory, monkeypatch, body, newline, final, how, cut, block):
    good = [json.dumps({"text": f"doc {i} text"}).encode() for i in range(5)]  # so that some blocks parse natively
    data = newline.join(good + body + good) + (newline if final else b"")
    blob = _compress(data, how)
    if how != "plain" and 0 < cut < len(blob):
        blob = blob[:-cut]  # truncated: the complete lines before the damage count in both reads
    path = tmp_path_factory.mktemp("lean") / {"plain": "c4_x.jsonl", "zstd": "c4_x.jsonl.zst", "gzip": "c4_x.jsonl.gz"}[how]
    path.write_bytes(blob)
    _same(path, monkeypatch, block=block)


CASES = {
    "plain": [b'{"text": "a b", "meta": {"redpajama_set_name": "RedPajamaBook"}}', b'{"text": "c", "source": "arxiv"}'],
    "blank line": [b'{"text": "a"}', b"", b'{"text": "b"}'],
    "whitespace-only line": [b'{"text": "a"}', b"  \t", b'{"text": "b"}'],
    "two objects on a line, and a blank line": [b'{"text": "a"}{"text": "b"}', b""],
    "two objects on a line": [b'{"text": "a"}{"text": "b"}', b'{"text": "c"}'],
    "deep nesting in an ignored field": [b'{"text": "a", "x": ' + b"[" * 3000 + b"]" * 3000 + b"}"],
    "invalid UTF-8 in an ignored field": [b'{"text": "a", "x": "\xff"}'],
    "UTF-8 encoded surrogate": [b'{"text": "a\xed\xa0\x80"}'],
    "escaped lone surrogate": [b'{"text": "a\\ud800"}'],
    "escaped key naming the text": [b'{"text": "a", "te\\u0078t": "b"}'],
    "escaped key naming the source": [b'{"text": "a", "sourc\\u0065": "arxiv"}'],
    "duplicate text": [b'{"text": "a", "text": "b"}'],
    "byte order mark": [b'\xef\xbb\xbf{"text": "a"}'],
    "CommonCrawl shape": [b'{"text": "a", "pred_label": "x", "wiki_prob": 0.5}'],
    "whitespace-only text": [b'{"text": " \\u3000\\t"}', b'{"text": "b"}'],
    "text not a string": [b'{"text": 5}', b'{"text": null}', b"{}", b"[1]", b'"s"'],
    "meta not an object": [b'{"text": "a", "meta": "s"}', b'{"text": "b", "meta": null}'],
    "source not a string": [b'{"text": "a", "meta": {"source": 5}}', b'{"text": "b", "source": true}'],
    "NaN and big numbers": [b'{"text": "a", "x": NaN, "y": 123456789012345678901234567890, "z": 1e400}'],
    "control character": [b'{"text": "a\tb"}'],
    "escaped characters": [b'{"text": "caf\\u00e9 \\ud83d\\ude00 \\"q\\" \\\\ \\n"}'],
    "CR LF": [b'{"text": "a"}\r', b'{"text": "b"}\r'],
    "many shallow brackets": [b'{"text": "a{[", "x": [' + b"[1], {}, " * 600 + b"[1]]}"],
    "no source": [b'{"text": "a"}'],
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_lean_read_equals_line_read_where_the_parsers_differ(tmp_path, monkeypatch, case):
    name = "part-0.jsonl" if case == "no source" else "c4_x.jsonl"
    path = tmp_path / name
    path.write_bytes(b"\n".join(CASES[case]) + b"\n")
    docs, rejects, stats = _same(path, monkeypatch)
    assert stats["read"] == len(CASES[case])


def test_native_parse_takes_plain_blocks_and_refuses_the_others():
    ok = b'{"text": "a b", "meta": {"redpajama_set_name": "RedPajamaBook"}}\n{"text": "c", "source": "arxiv"}'
    text, source, nbytes = _fastjson.parse_block(ok, "c4", False)
    assert text.to_pylist() == ["a b", "c"] and source.to_pylist() == ["book", "arxiv"] and nbytes == 4
    for case in ("escaped characters", "CR LF", "many shallow brackets"):
        assert _fastjson.parse_block(b"\n".join(CASES[case]), "c4", False) is not None, case
    for case in sorted(CASES):
        if case not in ("plain", "escaped characters", "CR LF", "NaN and big numbers", "many shallow brackets"):
            assert _fastjson.parse_block(b"\n".join(CASES[case]), "c4" if case != "no source" else None, False) is None, case


def test_lean_read_of_a_line_longer_than_a_record(tmp_path, monkeypatch):
    path = tmp_path / "c4_x.jsonl"
    path.write_bytes(b'{"text": "a"}\n{"text": "' + b"x" * 5000 + b'"}\n{"text": "b"}\n')
    docs, rejects, stats = _same(path, monkeypatch, block=1 << 10, limit=3000)
    assert stats["reasons"] == {"record too large": 1} and [d["text"] for d in docs] == ["a", "b"]
    _same(path, monkeypatch, block=1 << 16, limit=3000)  # the long line inside one block


def test_lean_read_of_a_range_and_of_parquet(tmp_path, monkeypatch):
    path = tmp_path / "c4_x.jsonl"
    path.write_bytes(b"".join(json.dumps({"text": f"doc {i}"}).encode() + b"\n" for i in range(50)))
    (f,) = readers.discover_files([path])
    for r in readers.split_ranges([f], target_bytes=300):
        got = [d for d, _, _ in readers.read_batches(r, lean=True) if d is not None]
        want = [d.select(["line", "source", "text"]) for d, _, _ in readers.read_batches(r) if d is not None]
        assert pa.Table.from_batches(got).to_pylist() == pa.Table.from_batches(want).to_pylist()
    pq_path = tmp_path / "c4_y.parquet"
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["a", "b"]}), pq_path)
    _same(pq_path, monkeypatch)
