"""The columnar write step (#21.1): its output lines, its meta and its shards are byte for byte what the
per-document code made (``json.dumps`` of ``{"text", "meta"}``, ``JsonlZstWriter.write`` one record at a time)."""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import zstandard

from slimpipe.dedup.steps.write import KeptShards, json_lines, kept_lines, kept_meta, spliced_meta
from slimpipe.io import readers
from slimpipe.sources import set_name

# every control character alone and inside text, what json.dumps escapes or not, astral and combining chars
ADVERSARIAL = (
    [chr(c) for c in range(0x80)]
    + ["".join(chr(c) for c in range(0x80)), "", '"', "\\", '\\"', '""\\\\', "a\"b\\c\nd\re\tf\bg\fh\x00i\x1fj\x7f",
       "\u2028\u2029\x85\xa0", "é€𝄞😀\U0010ffff", "\ufeffBOM", "line\r\nnext", "\\u00e9 is not decoded", "/ </script>",
       "tab\t" * 50, "e\u0301 (not NFC)", "\x1b[31mred\x1b[0m", "x" * 5000 + "\x01"]
)


def _old_line(record: dict) -> bytes:
    """What JsonlZstWriter.write made of one record (the per-document code)."""
    try:
        return (json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")
    except UnicodeEncodeError:
        return (json.dumps(record, ensure_ascii=True, separators=(",", ":")) + "\n").encode("utf-8")


def _old_meta(meta: str | None, src: str, doc_id: str) -> dict:
    """The per-document code's meta of a kept document."""
    m = json.loads(meta) if meta else {}
    m = m if isinstance(m, dict) else {"meta": m}
    m["redpajama_set_name"] = set_name(src)
    m["slimpipe_id"] = doc_id
    return m


def _lines(out: np.ndarray, ends: np.ndarray) -> list[bytes]:
    starts = np.concatenate(([0], ends[:-1]))
    return [out[a:b].tobytes() for a, b in zip(starts.tolist(), ends.tolist(), strict=True)]


@pytest.mark.parametrize("typ", [pa.string(), pa.large_string()])
def test_text_escaping_matches_json_dumps(typ) -> None:
    texts = pa.array(ADVERSARIAL, typ)
    rows = np.arange(len(texts))[::-1].copy()  # any order, any subset
    out, ends = json_lines(texts, rows, ["{}"] * rows.size)
    want = [_old_line({"text": ADVERSARIAL[d], "meta": {}}) for d in rows.tolist()]
    assert _lines(out, ends) == want
    # a slice of an Arrow array (its offsets do not start at 0)
    sub = texts.slice(3, 40)
    out, ends = json_lines(sub, np.arange(40), ['{"k":1}'] * 40)
    assert _lines(out, ends) == [_old_line({"text": t, "meta": {"k": 1}}) for t in ADVERSARIAL[3:43]]


def test_replaced_texts_and_whole_lines() -> None:
    texts = pa.array(["e\u0301t\u00e9", "plain", "\u212b\n"])
    nfc = {0: unicodedata.normalize("NFC", "e\u0301t\u00e9").encode(), 2: unicodedata.normalize("NFC", "\u212b\n").encode()}
    whole = np.array([False, True, False])
    out, ends = json_lines(texts, np.arange(3), ["{}", "WHOLE LINE\n", "[]"], nfc, whole)
    assert _lines(out, ends) == [_old_line({"text": "\u00e9t\u00e9", "meta": {}}), b"WHOLE LINE\n",
                                 _old_line({"text": "\u00c5\n", "meta": []})]


META_CASES = [
    None, "", "{}", '{"url": "u", "n": 1.5, "big": 123456789012345678901234567890, "neg": -0.0}',
    '{"redpajama_set_name": "Old", "a": 1}', '{"a": 1, "slimpipe_id": "old", "b": 2}',
    '{"slimpipe_id": 1, "redpajama_set_name": 2}', '[1, 2, {"x": null}]', '"just a string"', "42", "null",
    '{"nested": {"deep": [1, {"é": "ü\\u2028"}], "t": true}, "uni": "日本語 😀", "ctl": "a\\u0000b\\n"}',
    '{"nan": NaN, "inf": Infinity, "x": 1e400}', '{"dup": 1, "dup": 2}',
    '{"lone": "\\udc80"}', '{"\\ud800": "key with a lone surrogate"}',
]


def _reader_meta(meta: str | None) -> str | None:
    """The reader's meta column for a line whose meta is ``meta`` (as the line spells it)."""
    return readers._meta_json({"meta": json.loads(meta)}) if meta and meta != "null" else meta


@pytest.mark.parametrize("meta", META_CASES)
def test_kept_meta_and_lines_match_the_per_document_code(meta) -> None:
    texts = ["plain text", "é and \"quotes\" and \\ and \x01", "𝄞 astral\n"]
    srcs, ids = ["c4", "wikipedia", "odd \"name\" é"], [f"c4/f.jsonl:{i}" for i in range(3)]
    col = _reader_meta(meta)
    old = [_old_meta(col, s, i) for s, i in zip(srcs, ids, strict=True)]
    metas = [kept_meta(col, s, i) for s, i in zip(srcs, ids, strict=True)]
    assert [json.dumps(m) for m in metas] == [json.dumps(m) for m in old]  # same keys in the same order
    out, ends = kept_lines(pa.array(texts, pa.large_string()), np.arange(3), [col] * 3, srcs, ids)
    assert _lines(out, ends) == [_old_line({"text": t, "meta": m}) for t, m in zip(texts, old, strict=True)]


def test_the_meta_splice_is_taken_only_where_it_is_exact() -> None:
    taken = ['{}', '{"url":"u","n":1.5}', '{"nested":{"slimpipe":1},"uni":"日本語"}', '{"nan":NaN,"inf":Infinity}',
             '{"ctl":"a\\u0000\\n"}', '{"in a value":"\\"slimpipe_id\\""}']
    for col in taken:
        got = spliced_meta(col, "c4", "c4/f:1")
        assert got is not None
        assert got == json.dumps(_old_meta(col, "c4", "c4/f:1"), ensure_ascii=False, separators=(",", ":"))
    refused = [None, "", "null", "[1,2]", '"{}"', "42", '{"redpajama_set_name":"Old","a":1}', '{"a":1,"slimpipe_id":"x"}',
               '{"lone":"\\udc80"}', '{"n":{"slimpipe_id":1}}']  # (a nested key too: a substring cannot tell)
    assert [spliced_meta(col, "c4", "c4/f:1") for col in refused] == [None] * len(refused)


def test_a_lone_surrogate_in_meta_escapes_the_whole_line() -> None:
    col = _reader_meta('{"lone": "\\udc80"}')
    out, ends = kept_lines(pa.array(["caf\u00e9 \u2028"]), np.arange(1), [col], ["c4"], ["c4/f:0"], nfc={})
    (line,) = _lines(out, ends)
    assert line == _old_line({"text": "caf\u00e9 \u2028", "meta": _old_meta(col, "c4", "c4/f:0")})
    assert line.isascii() and b"\\u00e9" in line and b"\\udc80" in line


def _read_shards(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*.zst"))}


@pytest.mark.parametrize("shard_bytes", [0, 1, 150, 333, 10_000, 1 << 30, -3, -5])
def test_bulk_lines_roll_shards_where_records_one_by_one_do(tmp_path: Path, shard_bytes: int) -> None:
    rng = np.random.default_rng(abs(shard_bytes))
    docs = [("c4" if rng.random() < 0.7 else "arxiv", "w" * int(rng.integers(1, 120)) + "é\n") for _ in range(60)]
    cols = [readers._meta_json({"meta": {"i": i}}) for i in range(len(docs))]  # the reader's meta column
    metas = [kept_meta(cols[i], s, f"{s}/x:{i}") for i, (s, _) in enumerate(docs)]
    if shard_bytes < 0:  # a shard that holds exactly shard_bytes after some line (-n: the first n c4 lines)
        first = [k for k, (s, _) in enumerate(docs) if s == "c4"][:-shard_bytes]
        shard_bytes = sum(len(_old_line({"text": docs[k][1], "meta": metas[k]})) for k in first)
    one, bulk = KeptShards(str(tmp_path / "one"), shard_bytes), KeptShards(str(tmp_path / "bulk"), shard_bytes)
    w1, w2 = one.open(None, 3), bulk.open(None, 3)
    for (src, text), m in zip(docs, metas, strict=True):
        w1.add(m["slimpipe_id"], src, text, m)
    texts = pa.array([t for _, t in docs], pa.large_string())
    out, ends = kept_lines(texts, np.arange(len(docs)), cols, [s for s, _ in docs], [m["slimpipe_id"] for m in metas])
    nbytes = np.array([len(t.encode()) for _, t in docs], np.int64)
    # runs of one source, each cut again at random points: a shard boundary may fall anywhere in a run
    k = 0
    while k < len(docs):
        e = k + 1
        while e < len(docs) and docs[e][0] == docs[k][0] and rng.random() < 0.8:
            e += 1
        start = int(ends[k - 1]) if k else 0
        w2.add_lines(docs[k][0], out[start:int(ends[e - 1])], ends[k:e] - start, nbytes[k:e])
        k = e
    s1, s2 = w1.close(), w2.close()
    assert s1 == s2  # same shards: path, records, text bytes, uncompressed and compressed bytes, sha256
    f1, f2 = _read_shards(tmp_path / "one"), _read_shards(tmp_path / "bulk")
    assert f1 == f2 and len(f1) == len(s1["shards"])
    if shard_bytes <= 1:
        assert len(f1) == len(docs)  # every document opens a shard of its own
    text = b"".join(zstandard.ZstdDecompressor().decompressobj().decompress(f1[p]) for p in f1 if "/c4/" in p)
    assert [json.loads(x)["text"] for x in text.splitlines(keepends=False)] == [t for s, t in docs if s == "c4"]


def _zstd_file(tmp_path: Path, blob: bytes) -> readers.InputFile:
    path = tmp_path / "c4_x.jsonl.zst"
    path.write_bytes(blob)
    (f,) = readers.discover_files([path])
    return f


def _read(f: readers.InputFile, lean: bool = False) -> tuple[int, readers.FileStats]:
    *docs, (_, _, stats) = readers.read_batches(f, lean=lean)
    return sum(d.num_rows for d, _, _ in docs), stats


@pytest.mark.parametrize("lean", [False, True])
def test_zstd_frames_truncation_and_skippable_frames(tmp_path: Path, lean: bool) -> None:
    data = b"".join(b'{"text": "document %d ' % i + b"x" * (i % 300) + b'"}\n' for i in range(3000))
    c = zstandard.ZstdCompressor(level=1, write_checksum=True)
    first = c.compress(data[:100_000])
    frames = first + c.compress(data[100_000:])
    skippable = b"\x50\x2a\x4d\x18" + (5).to_bytes(4, "little") + b"12345"
    assert _read(_zstd_file(tmp_path, frames), lean)[0] == 3000
    between = first + skippable + c.compress(data[100_000:]) + skippable
    assert _read(_zstd_file(tmp_path, between), lean)[0] == 3000
    for keep in (len(frames) - 1, len(frames) - 4, len(frames) - 5, len(frames) - 100, len(first) + 50, 7):
        n, st = _read(_zstd_file(tmp_path, frames[:keep]), lean)
        assert st.status == "truncated" and n <= 3000, keep
        if keep == len(first) + 50:  # the lines of the first frame count
            assert n == data[:100_000].count(b"\n")
    one = c.compress(data)
    for cut in (4, 5, 6, 9, 40):  # a frame cut inside its header or its first block
        n, st = _read(_zstd_file(tmp_path, one[:cut]), lean)
        assert st.status == "truncated" and n == 0, cut
    n, st = _read(_zstd_file(tmp_path, one + frames[:2]), lean)  # a whole frame, then two bytes of the next
    assert st.status == "truncated" and n == 3000
    n, st = _read(_zstd_file(tmp_path, one + b"garbage!"), lean)
    assert st.status == "unreadable"
    # RLE blocks (a long run of one byte; the block holds the byte once) followed by more frames
    rle = c.compress(b'{"text": "' + b"a" * 400_000 + b'"}\n') + one
    n, st = _read(_zstd_file(tmp_path, rle), lean)
    assert st.status == "ok" and n == 3001
    n, st = _read(_zstd_file(tmp_path, rle[:-3]), lean)
    assert st.status == "truncated"
