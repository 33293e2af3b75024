"""RedPajama readers and SlimPajama writers: formats, source naming, bad input, layout, atomicity."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from slimpipe.io.readers import InputError, discover_files, read_all, read_batches, split_ranges
from slimpipe.io.writers import ShardWriter, shard_relpath, slimpajama_record, verify_manifest, write_manifest
from slimpipe.sources import SET_NAMES, source_from_filename, source_from_record

LONG = "The quick brown fox jumps over the lazy dog near the riverbank. " * 5


def _records(n: int, source_meta: str = "arxiv") -> list[dict]:
    return [{"text": f"doc {i}: {LONG}", "meta": {"source": source_meta, "i": i}} for i in range(n)]


def _write_jsonl(path: Path, records: list, zst: bool = False) -> Path:
    data = b"".join((json.dumps(r) + "\n").encode() for r in records)
    path.write_bytes(zstandard.ZstdCompressor(level=3).compress(data) if zst else data)
    return path


@pytest.mark.parametrize(
    "name, source",
    [
        ("arxiv_sample.jsonl", "arxiv"),
        ("book_sample.jsonl", "book"),
        ("c4_sample.jsonl", "c4"),
        ("cc_2019-30_sample.jsonl.zst", "common_crawl"),
        ("cc_2023-06_sample.jsonl", "common_crawl"),
        ("github_sample.jsonl", "github"),
        ("stackexchange_sample.jsonl.zst", "stackexchange"),
        ("wikipedia_sample.jsonl", "wikipedia"),
        ("RedPajamaC4/part-0.parquet", "c4"),
        ("common_crawl/2019-30/en_head_0000.json.gz.dedup.classifier.jsonl.zst", "common_crawl"),
        ("part-00001.jsonl", None),
    ],
)
def test_source_from_filename(name: str, source: str | None) -> None:
    assert source_from_filename(name) == source


def test_source_from_record() -> None:
    assert source_from_record({"text": "x", "meta": {"redpajama_set_name": "RedPajamaBook"}}) == "book"
    assert source_from_record({"text": "x", "meta": {"source": "stackexchange"}}) == "stackexchange"
    assert source_from_record({"text": "x", "source": "cc/2019-30/a.html", "pred_label": "__label__cc"}) == "common_crawl"
    assert source_from_record({"text": "x", "meta": {"title": "T"}}) is None


@pytest.mark.parametrize("fmt", ["jsonl", "jsonl.zst", "parquet"])
def test_round_trip_each_format(tmp_path: Path, fmt: str) -> None:
    recs = _records(50)
    if fmt == "parquet":
        path = tmp_path / "arxiv_sample.parquet"
        table = pa.Table.from_pylist([{"text": r["text"], "meta": json.dumps(r["meta"])} for r in recs])
        pq.write_table(table, path, row_group_size=16)
    else:
        path = _write_jsonl(tmp_path / f"arxiv_sample.{fmt}", recs, zst=fmt.endswith("zst"))
    docs, rejects, stats = read_all([path])
    assert docs.num_rows == 50 and rejects.num_rows == 0
    assert docs.column("text").to_pylist() == [r["text"] for r in recs]
    assert docs.column("source").to_pylist() == ["arxiv"] * 50
    assert docs.column("id").to_pylist()[3] == f"arxiv/{path.name}:3"
    assert docs.column("nbytes").to_pylist()[0] == len(recs[0]["text"].encode())
    assert stats[0].read == stats[0].accepted == 50


def test_source_from_records_and_common_crawl_shape(tmp_path: Path) -> None:
    sp = [{"text": LONG, "meta": {"redpajama_set_name": SET_NAMES[s]}} for s in ("github", "wikipedia")]
    cc = {"text": LONG, "pred_label": "__label__cc", "pred_label_prob": 0.6, "wiki_prob": 0.4, "source": "cc/2019-30/x"}
    path = _write_jsonl(tmp_path / "example_train_0.jsonl", sp + [cc])
    docs, rejects, _ = read_all([path])
    assert docs.column("source").to_pylist() == ["github", "wikipedia", "common_crawl"]
    cc_meta = json.loads(docs.column("meta").to_pylist()[2])
    assert cc_meta["source"] == "cc/2019-30/x" and "text" not in cc_meta
    assert rejects.num_rows == 0


def test_folder_input_uses_relative_paths_in_ids(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    _write_jsonl(tmp_path / "a" / "github_sample.jsonl", [{"text": LONG}] * 2)
    _write_jsonl(tmp_path / "b" / "github_sample.jsonl", [{"text": LONG}] * 3)
    docs, _, _ = read_all([tmp_path])
    ids = docs.column("id").to_pylist()
    assert len(ids) == len(set(ids)) == 5
    assert ids[0] == "github/a/github_sample.jsonl:0"


def test_bad_records_are_rejected_with_reasons_and_counts_add_up(tmp_path: Path) -> None:
    good = json.dumps({"text": LONG}).encode()
    lines = [
        good,
        b'{"text": "unterminated',
        b'{"text": "bad \xff\xfe utf8"}',
        json.dumps({"meta": {}}).encode(),
        json.dumps({"text": ""}).encode(),
        json.dumps({"text": "   \n "}).encode(),
        json.dumps({"text": 42}).encode(),
        json.dumps({"text": None}).encode(),
        b"[1, 2, 3]",
        b"",
        b'{"text": "lone \\ud800 surrogate"}',
        good,
    ]
    path = tmp_path / "c4_sample.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    docs, rejects, stats = read_all([path])
    reasons = dict(zip(rejects.column("line").to_pylist(), rejects.column("reason").to_pylist(), strict=True))
    assert docs.column("line").to_pylist() == [0, 11]
    assert reasons[1].startswith("malformed JSON")
    assert reasons[2].startswith("invalid UTF-8")
    assert reasons[3] == "missing text"
    assert reasons[4] == reasons[5] == "empty text"
    assert reasons[6] == "text is int, not a string"
    assert reasons[7] == "text is NoneType, not a string"
    assert "not an object" in reasons[8]
    assert reasons[9] == "blank line"
    assert "surrogate" in reasons[10]
    (s,) = stats
    assert s.read == 12 == s.accepted + s.rejected and s.rejected == 10
    assert s.status == "ok"
    assert rejects.column("file").to_pylist() == ["c4_sample.jsonl"] * 10


def test_records_without_any_source_are_rejected_not_dropped(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "part-0.jsonl", [{"text": LONG}, {"text": LONG, "meta": {"source": "github"}}])
    docs, rejects, stats = read_all([path])
    assert docs.column("source").to_pylist() == ["github"]
    assert "cannot infer source" in rejects.column("reason")[0].as_py()
    assert stats[0].read == 2


def test_truncated_zstd_keeps_complete_lines_and_reports_truncation(tmp_path: Path) -> None:
    import random

    rng = random.Random(0)
    words = [f"w{rng.randrange(10**6)}" for _ in range(200_000)]
    recs = [{"text": " ".join(words[i * 500 : (i + 1) * 500])} for i in range(400)]
    full = _write_jsonl(tmp_path / "full.jsonl.zst", recs, zst=True)
    data = full.read_bytes()
    path = tmp_path / "arxiv_sample.jsonl.zst"
    path.write_bytes(data[: len(data) * 2 // 3])
    docs, rejects, stats = read_all([path])
    (s,) = stats
    assert s.status == "truncated"
    assert 0 < docs.num_rows < 400
    # the partial last line is a counted reject, and the file-level truncation is reported too
    assert s.read == s.accepted + s.rejected
    assert any(r.startswith("truncated") for r in rejects.column("reason").to_pylist())


def test_empty_file_and_unreadable_files(tmp_path: Path) -> None:
    (tmp_path / "c4_sample.jsonl").write_bytes(b"")
    (tmp_path / "github_sample.jsonl.zst").write_bytes(b"\x28\xb5\x2f\xfd then not zstd at all")
    (tmp_path / "book_sample.parquet").write_bytes(b"PAR1 garbage")
    gone = tmp_path / "wikipedia_sample.jsonl"
    _write_jsonl(gone, _records(1))
    files = discover_files([tmp_path])
    gone.unlink()  # disappears between listing and reading
    by_file = {}
    for f in files:
        for _, rej, st in read_batches(f):
            if st is not None:
                by_file[st.file] = (st, rej)
    assert by_file["c4_sample.jsonl"][0].status == "empty"
    for name in ("github_sample.jsonl.zst", "book_sample.parquet", "wikipedia_sample.jsonl"):
        st, rej = by_file[name]
        assert st.status == "unreadable", name
        assert st.error
        assert rej.column("line").to_pylist() == [-1]
        assert rej.column("reason")[0].as_py().startswith("unreadable")


def test_discover_errors_name_the_path(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="input not found: .*nope"):
        discover_files([tmp_path / "nope"])
    with pytest.raises(InputError, match="no .jsonl"):
        discover_files([tmp_path])
    (tmp_path / "x.csv").write_text("a,b")
    with pytest.raises(InputError, match="unsupported file type"):
        discover_files([tmp_path / "x.csv"])
    _write_jsonl(tmp_path / "c4_sample.jsonl", _records(1))
    with pytest.raises(InputError, match="not a source name"):
        discover_files([tmp_path], source="https://example.com/x")
    assert {f.source for f in discover_files([tmp_path], source="Klingon")} == {"klingon"}


def test_byte_ranges_give_the_same_documents_and_ids(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "github_sample.jsonl", _records(300))
    whole, _, _ = read_all([path])
    ranges = split_ranges(discover_files([path]), target_bytes=4096)
    assert len(ranges) > 5
    parts = [d for f in ranges for d, _, _ in read_batches(f) if d is not None]
    split = pa.Table.from_batches(parts)
    assert split.column("id").to_pylist() == whole.column("id").to_pylist()
    assert split.column("text").to_pylist() == whole.column("text").to_pylist()


def test_scan_counts_per_source(tmp_path: Path, ray_session) -> None:
    from slimpipe.io.scan import scan

    _write_jsonl(tmp_path / "arxiv_sample.jsonl", _records(7))
    (tmp_path / "c4_sample.jsonl").write_text('{"text": 1}\n' + json.dumps({"text": LONG}) + "\n")
    result = scan([tmp_path], progress=False)
    assert result["sources"]["arxiv"]["docs"] == 7 and result["sources"]["c4"]["docs"] == 1
    assert result["read"] == 9 == result["accepted"] + result["rejected"]


def test_writer_layout_manifest_and_readback(tmp_path: Path) -> None:
    with ShardWriter(tmp_path, split="train", chunk=1, max_records=10) as w:
        for i in range(25):
            w.write(slimpajama_record(f"text {i} {LONG}", "wikipedia"))
    manifest = write_manifest(tmp_path, w.shards)
    assert [f["path"] for f in manifest["files"]] == [shard_relpath("train", 1, j) for j in range(3)]
    assert manifest["files"][0]["path"] == "train/chunk1/example_train_0.jsonl.zst"
    assert manifest["totals"]["records"] == 25
    assert verify_manifest(tmp_path) == []
    raw = zstandard.ZstdDecompressor().stream_reader(open(tmp_path / "train/chunk1/example_train_2.jsonl.zst", "rb")).read()
    lines = [json.loads(x) for x in raw.decode().splitlines()]
    assert lines[0] == {"text": f"text 20 {LONG}", "meta": {"redpajama_set_name": "RedPajamaWikipedia"}}
    docs, _, _ = read_all([tmp_path / "train"])
    assert docs.num_rows == 25 and set(docs.column("source").to_pylist()) == {"wikipedia"}
    (tmp_path / "train/chunk1/example_train_1.jsonl.zst").write_bytes(b"tampered")
    assert verify_manifest(tmp_path) == ["checksum mismatch: train/chunk1/example_train_1.jsonl.zst"]


def test_writer_output_is_deterministic(tmp_path: Path) -> None:
    manifests = []
    for d in ("a", "b"):
        with ShardWriter(tmp_path / d, max_records=7) as w:
            for i in range(20):
                w.write(slimpajama_record(f"{i} {LONG}", "book"))
        manifests.append(write_manifest(tmp_path / d, w.shards))
    assert manifests[0] == manifests[1] and len(manifests[0]["files"]) == 3


def test_killed_write_leaves_no_partial_shard(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import os, sys
        from slimpipe.io.writers import ShardWriter, slimpajama_record
        w = ShardWriter({str(tmp_path)!r}, max_records=1000)
        for i in range(1500):
            w.write(slimpajama_record("x" * 2000 + str(i), "github"))
        # the first shard is published; the second is mid-write
        print("ready", flush=True)
        sys.stdin.read()
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert proc.stdout.readline().strip() == b"ready"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    chunk = tmp_path / "train" / "chunk0"
    finals = sorted(p.name for p in chunk.iterdir() if not p.name.startswith("."))
    assert finals == ["example_train_0.jsonl.zst"]  # the complete shard only
    docs, rejects, stats = read_all([chunk])
    assert docs.num_rows == 1000 and rejects.num_rows == 0 and stats[0].status == "ok"
    assert any(p.name.endswith(".tmp") for p in chunk.iterdir())  # the partial one stayed temporary


README_COUNTS = {
    "arxiv_sample.jsonl.zst": 134,
    "book_sample.jsonl.zst": 85,
    "c4_sample.jsonl.zst": 388,
    "cc_2019-30_sample.jsonl.zst": 457,
    "cc_2020-05_sample.jsonl.zst": 469,
    "github_sample.jsonl.zst": 920,
    "stackexchange_sample.jsonl.zst": 1763,
    "wikipedia_sample.jsonl.zst": 22001,
}


def test_reads_all_of_redpajama_mini(redpajama_mini: Path, ray_session) -> None:
    """Every file of the shared corpus, counts per file and per source as its README states."""
    import re

    from slimpipe.io.scan import scan

    readme = (redpajama_mini / "README.md").read_text()
    for name, n in README_COUNTS.items():  # the README's table, so a corpus change fails loudly here
        assert re.search(rf"\| {re.escape(name)} \| {n:,} \|", readme), name
    result = scan([redpajama_mini], progress=False)
    assert {f["file"]: f["accepted"] for f in result["files"] if f["status"] != "skipped"} == README_COUNTS
    assert [(f["file"], f["status"]) for f in result["files"] if f["status"] == "skipped"] == [("README.md", "skipped")]
    assert result["rejected"] == 0 and result["read"] == 26217
    src = result["sources"]
    assert src["common_crawl"]["docs"] == 457 + 469 and src["wikipedia"]["docs"] == 22001
    assert abs(src["book"]["bytes"] / 1e6 - 44.82) < 0.01


def test_folders_skip_underscore_and_dot_entries(tmp_path: Path) -> None:
    _write_jsonl(tmp_path / "c4_sample.jsonl", _records(2))
    (tmp_path / "_meta").mkdir()
    _write_jsonl(tmp_path / "_meta" / "ground_truth.jsonl", [{"id": "x"}])
    _write_jsonl(tmp_path / ".c4_sample.jsonl.tmp.jsonl", _records(1))
    (tmp_path / "manifest.json").write_text("{}")
    files = discover_files([tmp_path])
    assert [f.rel for f in files if not f.skip] == ["c4_sample.jsonl"]
    # a file that is not data is not read, and says so
    assert [(f.rel, f.skip) for f in files if f.skip] == [("manifest.json", "not a data file (.jsonl, "
                                                          ".jsonl.zst, .jsonl.gz, .parquet)")]
    # named explicitly, a file is read whatever its name
    assert [f.rel for f in discover_files([tmp_path / "_meta" / "ground_truth.jsonl"])] == ["ground_truth.jsonl"]


def test_parent_folders_above_the_root_do_not_name_the_source(tmp_path: Path) -> None:
    """/data/c4-runs/ says nothing about the files under it; a record's set name beats a file name."""
    root = tmp_path / "c4-runs" / "books"
    (root / "train").mkdir(parents=True)
    recs = [{"text": LONG, "meta": {"redpajama_set_name": "RedPajamaGithub"}},
            {"text": LONG, "meta": {"redpajama_set_name": "RedPajamaWikipedia"}}]
    _write_jsonl(root / "train" / "example_train_0.jsonl", recs)
    docs, _, _ = read_all([root])
    assert docs.column("source").to_pylist() == ["github", "wikipedia"]
    _write_jsonl(tmp_path / "arxiv_sample.jsonl", recs)
    docs, _, _ = read_all([tmp_path / "arxiv_sample.jsonl"])
    assert docs.column("source").to_pylist() == ["github", "wikipedia"]
    docs, _, _ = read_all([tmp_path / "arxiv_sample.jsonl"], source="book")
    assert docs.column("source").to_pylist() == ["book", "book"]


# ------------------------------------------------------------------------------------------------
# awkward inputs (#15 item 1, #10 bad input, #10 item 4)


def test_symlinked_files_and_folders_are_followed_and_a_loop_is_named(tmp_path: Path) -> None:
    data = tmp_path / "elsewhere" / "wiki_dump"
    data.mkdir(parents=True)
    _write_jsonl(data / "wikipedia_sample.jsonl", [{"text": LONG}] * 5)
    _write_jsonl(tmp_path / "elsewhere" / "c4_sample.jsonl", [{"text": LONG}] * 2)
    root = tmp_path / "sources"
    root.mkdir()
    _write_jsonl(root / "arxiv_sample.jsonl", [{"text": LONG}] * 3)
    (root / "wiki").symlink_to(data, target_is_directory=True)  # a symlinked data folder
    (root / "c4_sample.jsonl").symlink_to(tmp_path / "elsewhere" / "c4_sample.jsonl")  # a symlinked file
    (root / "wiki" / "again").symlink_to(root, target_is_directory=True)  # a loop back to the root
    (root / "gone.jsonl").symlink_to(tmp_path / "nowhere.jsonl")  # a broken link
    docs, rejects, stats = read_all([root])
    by_source = {s: docs.column("source").to_pylist().count(s) for s in set(docs.column("source").to_pylist())}
    assert by_source == {"arxiv": 3, "c4": 2, "wikipedia": 5}
    assert "wikipedia/wiki/wikipedia_sample.jsonl:0" in docs.column("id").to_pylist()
    status = {s.file: (s.status, s.error) for s in stats}
    assert status["wiki/again"][0] == "skipped" and "symlink loop" in status["wiki/again"][1]
    assert status["gone.jsonl"][0] == "unreadable" and "broken symlink" in status["gone.jsonl"][1]
    assert sorted(r for r in rejects.column("file").to_pylist()) == ["gone.jsonl", "wiki/again"]


def test_compression_comes_from_magic_bytes_not_the_name(tmp_path: Path) -> None:
    import gzip

    recs = [{"text": LONG}] * 4
    _write_jsonl(tmp_path / "c4_sample.jsonl.zst", recs)  # plain text named .zst
    _write_jsonl(tmp_path / "github_sample.jsonl", recs, zst=True)  # zstd named .jsonl
    (tmp_path / "book_sample.jsonl.zst").write_bytes(gzip.compress(b"".join((json.dumps(r) + "\n").encode()
                                                                            for r in recs)))
    pq.write_table(pa.Table.from_pylist(recs), tmp_path / "arxiv_sample.jsonl")  # parquet named .jsonl
    docs, rejects, stats = read_all([tmp_path])
    assert rejects.num_rows == 0, rejects.to_pylist()
    assert {s.file: s.accepted for s in stats} == {"c4_sample.jsonl.zst": 4, "github_sample.jsonl": 4,
                                                   "book_sample.jsonl.zst": 4, "arxiv_sample.jsonl": 4}
    # a truncated gzip stream keeps its complete lines and says it is truncated
    whole = gzip.compress(b"".join((json.dumps({"text": f"{i} {LONG}"}) + "\n").encode() for i in range(300)))
    cut = tmp_path / "cut" / "c4_sample.jsonl.gz"
    cut.parent.mkdir()
    cut.write_bytes(whole[: len(whole) // 2])
    docs, rejects, (s,) = read_all([cut])
    assert s.status == "truncated" and 0 < docs.num_rows < 300 and s.read == s.accepted + s.rejected
    # a zstd file named .jsonl is not cut into byte ranges as if it were plain text
    big = split_ranges(discover_files([tmp_path / "github_sample.jsonl"]), target_bytes=16)
    assert len(big) == 1


def test_a_record_nested_10000_deep_is_one_counted_reject(tmp_path: Path) -> None:
    deep = '{"text": "x", "meta": ' + "[" * 10_000 + "]" * 10_000 + "}"
    lines = [json.dumps({"text": LONG}), deep, json.dumps({"text": LONG})]
    path = tmp_path / "c4_sample.jsonl.zst"
    path.write_bytes(zstandard.ZstdCompressor().compress(("\n".join(lines) + "\n").encode()))
    docs, rejects, (s,) = read_all([path])
    assert docs.column("line").to_pylist() == [0, 2]
    assert rejects.column("line").to_pylist() == [1]
    assert "nested too deeply" in rejects.column("reason")[0].as_py()
    assert s.status == "ok" and s.read == 3 and s.rejected == 1


def test_a_huge_record_is_one_counted_reject_and_not_held(tmp_path: Path, monkeypatch) -> None:
    from slimpipe.io import readers

    monkeypatch.setattr(readers, "MAX_RECORD_BYTES", 100_000)
    huge = json.dumps({"text": "y" * 3_000_000})  # 30x the limit, across several read chunks
    lines = [json.dumps({"text": LONG}), huge, json.dumps({"text": LONG}), huge]
    for zst in (False, True):
        path = _write_jsonl(tmp_path / f"c4_sample_{zst}.jsonl", [], zst=False)
        data = ("\n".join(lines)).encode()  # no newline at the end: the last line is huge too
        path.write_bytes(zstandard.ZstdCompressor().compress(data) if zst else data)
        docs, rejects, (s,) = read_all([path])
        assert docs.column("line").to_pylist() == [0, 2]
        assert rejects.column("line").to_pylist() == [1, 3]
        assert all(r.startswith("record too large: 3,000,012 bytes") for r in rejects.column("reason").to_pylist())
        assert s.read == 4 and s.rejected == 2 and s.status == "ok"


@pytest.mark.parametrize(
    "name, source",
    [
        ("perturbed_sample.jsonl.zst", "perturbed"),
        ("arabic_web.jsonl", "arabic_web"),
        ("starcoder/part-00003.parquet", "starcoder"),
        ("Arabic_Web-00012.jsonl.gz", "arabic_web"),
        ("code_search_net.jsonl", "code_search_net"),  # not github although it starts with an alias
        ("cc_news_sample.jsonl", "cc_news"),
        ("data/part-00001.jsonl", None),
    ],
)
def test_any_file_name_names_a_source(name: str, source: str | None) -> None:
    assert source_from_filename(name) == source


def test_any_source_name_is_kept_everywhere_it_is_read(tmp_path: Path) -> None:
    _write_jsonl(tmp_path / "perturbed_sample.jsonl.zst", [{"text": LONG}] * 2, zst=True)
    _write_jsonl(tmp_path / "part-0.jsonl", [
        {"text": LONG, "meta": {"redpajama_set_name": "arabic_web"}},  # a SlimPajama shard of a user source
        {"text": LONG, "meta": {"source": "StarCoder"}},
        {"text": LONG, "meta": {"source": "https://example.com/page"}},  # a URL names nothing
        {"text": LONG, "source": "cc/2019-30/en_head_0000.json.gz/line7", "pred_label": "x", "wiki_prob": 0.1},
    ])
    docs, rejects, _ = read_all([tmp_path])
    assert docs.column("source").to_pylist() == ["arabic_web", "starcoder", "common_crawl",
                                                 "perturbed", "perturbed"]
    assert rejects.column("line").to_pylist() == [2]
    assert "cannot infer source" in rejects.column("reason")[0].as_py()
    # RedPajama's seven keep their set names; every other source writes its own
    from slimpipe.sources import normalise_source, set_name, sort_sources

    assert set_name("book") == "RedPajamaBook" and set_name("arabic_web") == "arabic_web"
    assert normalise_source("RedPajamaBook") == "book" and normalise_source("arabic_web") == "arabic_web"
    assert sort_sources(["zulu", "arxiv", "common_crawl", "alpha"]) == ["common_crawl", "arxiv", "alpha", "zulu"]


@pytest.mark.parametrize(
    "name, source",
    [
        ("fineweb2.jsonl", "fineweb2"),  # a digit that is part of the name stays (#19.12)
        ("fineweb2/part-00001.jsonl", "fineweb2"),
        ("fineweb2_00003.jsonl.zst", "fineweb2"),
        ("mc4.jsonl.zst", "mc4"),
        ("cc100.jsonl", "cc100"),  # not common_crawl: cc100 is its own corpus
        ("cc100-part-7.jsonl", "cc100"),
        ("oscar-2301.parquet", "oscar"),  # a separated number is a shard number
        ("starcoder.shard3.jsonl", "starcoder"),
        ("part3.jsonl", None),
        ("web_part3.jsonl", "web"),
        ("c4-train.00000-of-01024.jsonl", "c4"),
    ],
)
def test_digits_that_belong_to_a_name_are_kept(name: str, source: str | None) -> None:
    assert source_from_filename(name) == source


def test_fineweb2_is_not_merged_with_fineweb(tmp_path: Path) -> None:
    _write_jsonl(tmp_path / "fineweb.jsonl", [{"text": LONG}])
    _write_jsonl(tmp_path / "fineweb2.jsonl", [{"text": LONG}])
    docs, _, _ = read_all([tmp_path])
    assert sorted(docs.column("source").to_pylist()) == ["fineweb", "fineweb2"]


def test_a_lone_surrogate_in_meta_is_escaped_not_a_crash(tmp_path: Path) -> None:
    # JSON allows "\udc80"; UTF-8 does not. The text is rejected (counted); a meta value is kept escaped (#19.13).
    path = tmp_path / "c4_sample.jsonl"
    path.write_text(json.dumps({"text": LONG, "meta": {"n": "\udc80", "ok": "é"}}) + "\n"
                    + json.dumps({"text": LONG, "meta": {"\ud800key": 1}}) + "\n"
                    + json.dumps({"text": LONG, "url": "x\udfff"}) + "\n")  # CC shape: top-level fields are meta
    docs, rejects, (s,) = read_all([path])
    assert s.read == 3 == s.accepted + s.rejected and s.status == "ok"
    metas = [json.loads(m) for m in docs.column("meta").to_pylist()]
    assert metas[0] == {"n": "\udc80", "ok": "é"} and metas[1] == {"\ud800key": 1} and metas[2] == {"url": "x\udfff"}


def test_a_file_name_that_is_not_utf8_is_read_under_an_escaped_name(tmp_path: Path) -> None:
    # os.listdir gives such a name with surrogate escapes; it must not reach Arrow or a hash as is (#19.14).
    raw = os.path.join(os.fsencode(tmp_path), b"caf\xe9_sample.jsonl")
    with open(raw, "wb") as fh:
        fh.write((json.dumps({"text": LONG, "meta": {"source": "arxiv"}}) + "\n{bad\n").encode())
    (f,) = discover_files([tmp_path])
    assert f.rel == "caf\\xe9_sample.jsonl"
    docs, rejects, (s,) = read_all([tmp_path])
    assert s.read == 2 and s.accepted == 1 and s.rejected == 1
    assert docs.column("id").to_pylist() == ["arxiv/caf\\xe9_sample.jsonl:0"]
    assert rejects.column("file").to_pylist() == ["caf\\xe9_sample.jsonl"]
    from slimpipe.dedup.job import _fingerprint

    assert len(_fingerprint([f])) == 64
    # named on the command line, too
    (g,) = discover_files([os.fsdecode(raw)])
    assert g.rel == "caf\\xe9_sample.jsonl" and os.path.exists(g.path)


def test_a_fifo_named_on_the_command_line_is_named_and_skipped(tmp_path: Path) -> None:
    # opening a FIFO to sniff its format blocks until a writer comes: never open one (#19.15)
    fifo = tmp_path / "c4_sample.jsonl"
    os.mkfifo(fifo)
    good = _write_jsonl(tmp_path / "arxiv_sample.jsonl", _records(2))
    code = textwrap.dedent(f"""
        from slimpipe.io.readers import read_all
        docs, rejects, stats = read_all([{str(fifo)!r}, {str(good)!r}])
        print(docs.num_rows, sorted((s.file, s.status, s.error) for s in stats))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=20)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("2 ") and "('c4_sample.jsonl', 'skipped', 'not a regular file" in out.stdout


def _bomb(path: Path, nbytes: int, gz: bool) -> Path:
    """A small file that decompresses to ``nbytes`` of one JSON line that never ends (zeros)."""
    import zlib

    zero = bytes(1 << 20)
    with open(path, "wb") as fh:
        if gz:
            z = zlib.compressobj(1, wbits=31)
            fh.write(z.compress(b'{"text": "'))
            for _ in range(nbytes >> 20):
                fh.write(z.compress(zero))
            fh.write(z.flush())
        else:
            w = zstandard.ZstdCompressor(level=1).stream_writer(fh, closefd=False)
            w.write(b'{"text": "')
            for _ in range(nbytes >> 20):
                w.write(zero)
            w.flush(zstandard.FLUSH_FRAME)
    return path


def test_a_decompression_bomb_is_read_in_bounded_memory(tmp_path: Path) -> None:
    # 384 MiB of zeros in a 12 KB zstd file (and a 1.7 MB gzip one): each decompressed block was held whole,
    # so the reader's peak memory grew with the bomb (#19.8). Read in a fresh process to measure its peak RSS.
    # The record limit is lowered to 8 MiB so the test is quick; the line is one counted reject either way.
    zst = _bomb(tmp_path / "c4_bomb.jsonl.zst", 384 << 20, gz=False)
    gz = _bomb(tmp_path / "c4_bomb.jsonl.gz", 384 << 20, gz=True)
    assert zst.stat().st_size < 64_000 and gz.stat().st_size < 4_000_000
    code = textwrap.dedent(f"""
        import json, resource
        from slimpipe.io import readers
        readers.MAX_RECORD_BYTES = 8 << 20
        out = []
        for p in ({str(zst)!r}, {str(gz)!r}):
            (f,) = readers.discover_files([p])
            for _, _, s in readers.read_batches(f):
                if s is not None:
                    out.append(s.to_dict())
        # VmHWM: this process's own peak. ru_maxrss also keeps the peak of the forked parent (pytest) before exec.
        try:
            with open("/proc/self/status") as fh:
                peak_kb = next(int(x.split()[1]) for x in fh if x.startswith("VmHWM:"))
        except OSError:
            peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(json.dumps({{"stats": out, "peak_mb": peak_kb / 1024}}))
    """)
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    for s in result["stats"]:
        assert s["status"] == "ok" and s["read"] == 1 == s["rejected"], s
        assert s["reasons"] == {"record too large": 1}
    # Python, pyarrow and zstandard take ~90 MB; the bounded reader adds tens of MB. The old one held 384 MB+.
    assert result["peak_mb"] < 300, result["peak_mb"]


def test_inspect_and_dedup_read_a_surrogate_meta_and_a_non_utf8_name(tmp_path: Path, ray_session) -> None:
    # #19.13 and #19.14 end to end: both crashed the whole job (UnicodeEncodeError), now the files are read
    from click.testing import CliRunner

    from slimpipe.cli import main

    src = tmp_path / "s"
    src.mkdir()
    with open(os.path.join(os.fsencode(src), b"caf\xe9_sample.jsonl"), "wb") as fh:
        for i in range(3):
            fh.write((json.dumps({"text": f"{i} {'alpha beta gamma ' * (i + 1) * 9}", "meta": {"source": "arxiv"}})
                      + "\n").encode())
    _write_jsonl(src / "c4_sample.jsonl", [{"text": " ".join(f"c4w{i * 100 + k}" for k in range(60)),
                                            "meta": {"n": "\udc80"}} for i in range(2)])
    res = CliRunner().invoke(main, ["inspect", str(src), "--json"])
    assert res.exit_code == 0, res.output
    got = json.loads(res.output[res.output.index("{"):])
    assert got["read"] == 5 == got["accepted"] and {f["file"] for f in got["files"]} == {
        "c4_sample.jsonl", "caf\\xe9_sample.jsonl"}
    res = CliRunner().invoke(main, ["dedup", str(src), "-o", str(tmp_path / "out"), "--quiet"])
    assert res.exit_code == 0, res.output
    assert "5 docs in" in res.output
    (shard,) = (tmp_path / "out" / "kept" / "c4").glob("*.jsonl.zst")
    lines = zstandard.ZstdDecompressor().decompress(shard.read_bytes(), max_output_size=1 << 20).splitlines()
    assert [json.loads(x)["meta"]["n"] for x in lines] == ["\udc80", "\udc80"]  # kept as it came, escaped


def test_a_source_named_on_the_command_line_that_is_not_utf8_is_one_clear_line(tmp_path: Path) -> None:
    # Ray names its driver by the command line and cannot encode such bytes: say so, and what to do (#19.14)
    folder = os.path.join(os.fsencode(tmp_path), b"d\xe9")
    os.mkdir(folder)
    _write_jsonl(Path(os.fsdecode(folder)) / "c4_sample.jsonl", _records(1))
    r = subprocess.run([sys.executable, "-c", "from slimpipe.cli import main; main()", "inspect", folder],
                       capture_output=True, text=True, timeout=300)
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert r.returncode != 0 and len(lines) == 1, r.stderr
    assert "d\\xe9' on the command line is not valid UTF-8" in lines[0] and "folder above it" in lines[0]


def test_rejects_listed_per_file_are_capped_and_every_one_is_counted(tmp_path: Path, monkeypatch) -> None:
    # a 33 KB zstd of newlines is 10^9 blank lines: listing each reject held them all in memory (#19.8)
    from slimpipe.io import readers

    monkeypatch.setattr(readers, "MAX_REJECT_ROWS", 5)
    path = tmp_path / "c4_sample.jsonl.zst"
    path.write_bytes(zstandard.ZstdCompressor().compress(b"\n" * 12 + json.dumps({"text": LONG}).encode() + b"\n{x\n"))
    docs, rejects, (s,) = read_all([path])
    assert docs.num_rows == 1 and s.read == 14 == s.accepted + s.rejected and s.rejected == 13
    assert s.reasons == {"blank line": 12, "malformed JSON": 1}
    assert rejects.column("line").to_pylist() == [0, 1, 2, 3, 4, -1]
    assert rejects.column("reason")[5].as_py().startswith("not listed: 8 more rejected lines")
