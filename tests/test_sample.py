"""The embedded sample corpus: deterministic, shaped like RedPajama-1T, and its ground truth is true.

Similarity here is recomputed independently of ``slimpipe.sample.textsim`` (own cleaning, own
hashing), so a bug there cannot hide itself.
"""

from __future__ import annotations

import ast
import hashlib
import io
import json
import re
import string
from pathlib import Path

import numpy as np
import pytest
import zstandard
from click.testing import CliRunner

from slimpipe.sample import FILES, GROUND_TRUTH, MANIFEST, sample_command, write_sample
from slimpipe.sample.harvest import extract_docstrings, harvest
from slimpipe.sources import SOURCES, source_from_filename, source_from_record

EXPECTED_FILES = {
    "arxiv_sample.jsonl.zst", "book_sample.jsonl.zst", "c4_sample.jsonl.zst", "cc_2019-30_sample.jsonl.zst",
    "cc_2020-05_sample.jsonl.zst", "github_sample.jsonl.zst", "stackexchange_sample.jsonl.zst",
    "wikipedia_sample.jsonl.zst",
}
META_KEYS = {  # REFERENCE.md, RedPajama-1T record formats (key order as RedPajama writes them)
    "arxiv": ["timestamp", "yymm", "arxiv_id", "language", "url", "source"],
    "c4": ["timestamp", "url", "language", "source"],
    "github": ["content_hash", "timestamp", "source", "line_count", "max_line_length", "avg_line_length",
               "alnum_prop", "repo_name", "path", "license"],
    "stackexchange": ["language", "url", "timestamp", "source", "question_score"],
    "wikipedia": ["title", "url", "language", "timestamp"],
    "book": ["short_book_title", "publication_date", "url"],
}
CC_KEYS = ["text", "pred_label", "pred_label_prob", "wiki_prob", "source"]


# ------------------------------------------------------------------------------------------------
# independent similarity

_WS = re.compile(r"\s+")


def clean(text: str) -> str:
    """REFERENCE.md: lowercase, remove string.punctuation, collapse whitespace runs, strip."""
    return _WS.sub(" ", "".join(c for c in text.lower() if c not in string.punctuation)).strip()


def grams(text: str) -> set[str]:
    c = clean(text)
    return {c[i : i + 13] for i in range(len(c) - 12)} if len(c) >= 13 else ({c} if c else set())


def exact_jaccard(a: str, b: str) -> float:
    x, y = grams(a), grams(b)
    return len(x & y) / len(x | y) if x or y else 1.0


def signatures(texts: list[str], k: int = 64) -> np.ndarray:
    """MinHash of 13-gram hashes (blake2b of each gram, then k multiply-shift permutations)."""
    rng = np.random.default_rng(12345)
    a = rng.integers(1, 2**62, k, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    b = rng.integers(0, 2**62, k, dtype=np.uint64)
    sigs = np.empty((len(texts), k), np.uint64)
    for n, t in enumerate(texts):
        c = clean(t)
        codes = np.frombuffer(c.encode("utf-32-le"), "<u4").astype(np.uint64)
        if len(codes) < 13:
            codes = np.concatenate([codes, np.full(13 - len(codes), 7, np.uint64)])
        m = len(codes) - 12
        h = np.zeros(m, np.uint64)
        for j in range(13):  # a different polynomial from the generator's
            h = h * np.uint64(1_000_003) + codes[j : j + m] * np.uint64(0x9E3779B1)
        h = np.unique(h)
        sig = np.full(k, np.iinfo(np.uint64).max, np.uint64)
        for s in range(0, len(h), 4096):
            blk = h[s : s + 4096]
            sig = np.minimum(sig, ((blk[None, :] * a[:, None] + b[:, None]) >> np.uint64(20)).min(axis=1))
        sigs[n] = sig
    return sigs


# ------------------------------------------------------------------------------------------------
# fixtures


def read_records(path: Path) -> list[dict]:
    with open(path, "rb") as fh, zstandard.ZstdDecompressor().stream_reader(fh) as raw:
        return [json.loads(line) for line in io.TextIOWrapper(raw, encoding="utf-8")]


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("sample")
    return out, write_sample(out, seed=0, size=1.0)


@pytest.fixture(scope="module")
def records(sample: tuple[Path, dict]) -> dict[str, list[dict]]:
    out, _ = sample
    return {f: read_records(out / f) for f in sorted(EXPECTED_FILES)}


@pytest.fixture(scope="module")
def truth(sample: tuple[Path, dict]) -> list[dict]:
    out, _ = sample
    return [json.loads(line) for line in (out / GROUND_TRUTH).read_text("utf-8").splitlines()]


def _file_digests(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------------------
# determinism


def test_same_seed_gives_identical_bytes_and_another_seed_differs(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    write_sample(a, seed=7, size=0.25)
    write_sample(b, seed=7, size=0.25)
    write_sample(c, seed=8, size=0.25)
    da, db, dc = _file_digests(a), _file_digests(b), _file_digests(c)
    assert set(da) == EXPECTED_FILES | {GROUND_TRUTH, MANIFEST}
    assert da == db
    for name in EXPECTED_FILES | {GROUND_TRUTH}:
        assert da[name] != dc[name], name


def test_cli_writes_the_sample(tmp_path: Path) -> None:
    result = CliRunner().invoke(sample_command, ["-o", str(tmp_path / "s"), "--seed", "3", "--size", "0.1"])
    assert result.exit_code == 0, result.output
    assert "planted duplicates" in result.output
    assert EXPECTED_FILES <= {p.name for p in (tmp_path / "s").iterdir()}
    manifest = json.loads((tmp_path / "s" / MANIFEST).read_text())
    assert manifest["seed"] == 3 and manifest["size"] == 0.1


# ------------------------------------------------------------------------------------------------
# shape and size


def test_files_sources_and_manifest(sample: tuple[Path, dict], records: dict[str, list[dict]]) -> None:
    out, manifest = sample
    assert set(FILES) == EXPECTED_FILES
    assert {source_from_filename(f) for f in EXPECTED_FILES} == set(SOURCES)
    for f, recs in records.items():
        info = manifest["files"][f]
        assert info["docs"] == len(recs) == info["base_docs"] + info["planted_docs"]
        assert info["text_bytes"] == sum(len(r["text"].encode()) for r in recs)
        assert info["zst_bytes"] == (out / f).stat().st_size
    assert manifest["seed"] == 0 and manifest["size"] == 1.0 and manifest["python_version"]


def test_relative_sizes_are_realistic(records: dict[str, list[dict]]) -> None:
    by_source: dict[str, int] = {}
    for f, recs in records.items():
        src = source_from_filename(f)
        by_source[src] = by_source.get(src, 0) + sum(len(r["text"].encode()) for r in recs)
    total = sum(by_source.values())
    assert 3e6 <= total <= 6e6
    others = [s for s in by_source if s not in ("common_crawl", "c4")]
    assert by_source["common_crawl"] > by_source["c4"] > max(by_source[s] for s in others)
    assert by_source["common_crawl"] / total >= 0.35
    for s in others:
        assert 0.03 <= by_source[s] / total <= 0.2, s
    # document lengths per source: books long, SE and Wikipedia short
    median = {f: sorted(len(r["text"]) for r in recs)[len(recs) // 2] for f, recs in records.items()}
    assert median["book_sample.jsonl.zst"] > 30_000
    assert median["arxiv_sample.jsonl.zst"] > 10_000
    assert median["stackexchange_sample.jsonl.zst"] < 2_000 and median["wikipedia_sample.jsonl.zst"] < 5_000


def test_short_documents_give_the_short_filter_work(records: dict[str, list[dict]]) -> None:
    short = {f: sum(len(clean(r["text"])) < 200 for r in recs) / len(recs) for f, recs in records.items()}
    assert 0.01 <= short["c4_sample.jsonl.zst"] <= 0.15
    assert short["book_sample.jsonl.zst"] == 0 and short["arxiv_sample.jsonl.zst"] == 0


def test_record_shapes_follow_redpajama(records: dict[str, list[dict]]) -> None:
    for f, recs in records.items():
        src = source_from_filename(f)
        for r in recs:
            assert isinstance(r["text"], str) and r["text"].strip() and "\x00" not in r["text"]
            found = source_from_record(r)
            assert found in (None, src)
            if src == "common_crawl":
                assert list(r) == CC_KEYS  # no meta key at all
                snapshot = f.split("_")[1]
                assert r["source"].startswith(f"cc/{snapshot}/")
                assert r["pred_label"] in ("__label__cc", "__label__wiki")
                assert r["pred_label_prob"] == pytest.approx(max(r["wiki_prob"], 1 - r["wiki_prob"]), abs=1e-4)
                continue
            assert list(r) == ["text", "meta"]
            meta = r["meta"]
            assert list(meta) == META_KEYS[src], f
            if "source" in meta:
                assert meta["source"] == src
            if src == "github":
                text = r["text"]
                lengths = [len(x) for x in text.splitlines()]
                assert meta["content_hash"] == hashlib.md5(text.encode()).hexdigest()
                assert meta["timestamp"] == ""
                assert meta["line_count"] == len(lengths) and meta["max_line_length"] == max(lengths)
                assert meta["avg_line_length"] == pytest.approx(sum(lengths) / len(lengths))
                assert meta["alnum_prop"] == pytest.approx(sum(c.isalnum() for c in text) / len(text))
            elif src == "stackexchange":
                assert r["text"].startswith("Q: ") and isinstance(meta["question_score"], str)
            elif src == "arxiv":
                assert meta["yymm"] == meta["timestamp"][2:4] + meta["timestamp"][5:7]
                assert "\\section{" in r["text"]
            elif src == "c4":
                assert meta["language"] == "en" and meta["timestamp"].endswith("Z")
            elif src == "book":
                assert isinstance(meta["publication_date"], int)


# ------------------------------------------------------------------------------------------------
# ground truth


def test_ground_truth_matches_what_was_planted(sample: tuple[Path, dict], records: dict[str, list[dict]],
                                               truth: list[dict]) -> None:
    _, manifest = sample
    assert len(truth) == manifest["planted"]["total"] == manifest["totals"]["planted_docs"]
    kinds = {row["kind"] for row in truth}
    assert kinds == {"exact", "near", "cross_source"}
    assert {row["variant"] for row in truth if row["kind"] == "cross_source"} == {"whole", "embedded", "verbatim", "recrawl"}
    ids = [row["id"] for row in truth]
    assert len(ids) == len(set(ids)) and not set(ids) & {row["original_id"] for row in truth}
    by_rate: dict[float, list[float]] = {}
    for row in truth:
        assert row["id"] == f"{source_from_filename(row['file'])}/{row['file']}:{row['line']}"
        assert row["original_id"] == f"{row['original_source']}/{row['original_file']}:{row['original_line']}"
        dup = records[row["file"]][row["line"]]["text"]
        orig = records[row["original_file"]][row["original_line"]]["text"]
        j = exact_jaccard(dup, orig)
        assert row["jaccard"] == pytest.approx(j, abs=1e-6), row["id"]
        short = min(len(clean(dup)), len(clean(orig))) < 200
        assert row["expected_removed"] == (j >= 0.8 and not short)
        if row["kind"] == "exact" or row["variant"] in ("whole", "verbatim"):
            assert dup == orig and row["edit_rate"] == 0.0
        if row["kind"] == "exact":
            assert row["file"] == row["original_file"]
        if row["kind"] == "cross_source":
            assert row["file"] != row["original_file"]
        if row["variant"] == "whole" or row["variant"] == "embedded":
            assert row["original_source"] == "wikipedia" and row["source"] == "common_crawl"
        if row["variant"] == "embedded":
            assert orig in dup and dup != orig and j < 1.0
        if row["variant"] == "recrawl":
            assert dup != orig and j > 0.9
        if row["kind"] == "near":
            target, rate = row["target_edit_rate"], row["edit_rate"]
            assert row["file"] == row["original_file"] and dup != orig and 0 < j < 1
            assert abs(rate - target) <= 0.25 * target + 2 / row["words"], row["id"]
            by_rate.setdefault(target, []).append(j)
    # the C4 copies come from CommonCrawl, and CC pages are copied across the two snapshots
    pairs = {(row["original_file"][:5], row["file"][:5]) for row in truth if row["variant"] == "verbatim"}
    assert ("cc_20", "c4_sa") in pairs and ("cc_20", "cc_20") in pairs
    rates = sorted(by_rate)
    assert rates == [0.01, 0.05, 0.1, 0.3]
    means = [sum(by_rate[r]) / len(by_rate[r]) for r in rates]
    assert means == sorted(means, reverse=True) and means[0] > 0.85 and means[-1] < 0.5
    assert all(j >= 0.8 for j in by_rate[0.01])  # 1% edits are what SlimPajama must remove
    assert all(j < 0.8 for j in by_rate[0.1] + by_rate[0.3])


def test_duplicates_are_shuffled_away_from_their_originals(truth: list[dict], records: dict[str, list[dict]]) -> None:
    same_file = [row for row in truth if row["file"] == row["original_file"]]
    adjacent = sum(abs(row["line"] - row["original_line"]) <= 1 for row in same_file)
    assert adjacent <= max(2, len(same_file) // 5)
    # planted docs are spread over their files, not appended: mean relative position near the middle
    positions = [row["line"] / len(records[row["file"]]) for row in truth]
    assert 0.35 < sum(positions) / len(positions) < 0.65


def test_no_accidental_near_duplicates(records: dict[str, list[dict]], truth: list[dict]) -> None:
    """Every pair of documents with cleaned 13-gram Jaccard >= 0.5 is a planted one (same cluster)."""
    docs = [(f, k) for f in sorted(records) for k in range(len(records[f]))]
    texts = [records[f][k]["text"] for f, k in docs]
    parent: dict[tuple[str, int], tuple[str, int]] = {}

    def find(x: tuple[str, int]) -> tuple[str, int]:
        while parent.get(x, x) != x:
            x = parent[x]
        return x

    for row in truth:
        parent[find((row["file"], row["line"]))] = find((row["original_file"], row["original_line"]))
    sigs = signatures(texts)
    agree = np.zeros((len(docs), len(docs)), np.uint8)
    for p in range(sigs.shape[1]):  # all-pairs MinHash estimate as the blocking step
        col = sigs[:, p]
        agree += col[:, None] == col[None, :]
    ii, jj = np.nonzero(np.triu(agree, 1) >= 0.25 * sigs.shape[1])
    unexplained = []
    for i, j in zip(ii.tolist(), jj.tolist(), strict=True):
        if find(docs[i]) == find(docs[j]):
            continue
        jac = exact_jaccard(texts[i], texts[j])
        if jac >= 0.5:
            unexplained.append((docs[i], docs[j], round(jac, 3)))
    assert not unexplained
    # and the blocking works: every planted pair with J >= 0.5 is among its candidates
    index = {d: n for n, d in enumerate(docs)}
    for row in truth:
        if row["jaccard"] >= 0.5:
            a, b = index[(row["file"], row["line"])], index[(row["original_file"], row["original_line"])]
            assert agree[a, b] >= 0.25 * sigs.shape[1]


# ------------------------------------------------------------------------------------------------
# harvest


def test_docstring_scanner_agrees_with_ast() -> None:
    files = harvest().prose[:60]
    assert files
    for f in files:
        tree = ast.parse(f.text)
        expected = [d for d in [ast.get_docstring(tree)] if d and d.strip()]
        expected += [d for node in ast.walk(tree)
                     if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                     for d in [ast.get_docstring(node)] if d and d.strip()]
        assert sorted(expected) == sorted(i.doc for i in extract_docstrings(f.text)), f.key
