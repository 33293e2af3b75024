"""The SlimPajama pipeline on the embedded sample: ground truth removed, global vs local, split and
decontamination, seed semantics, output formats, accounting and resume after kill -9."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import zstandard

from slimpipe.dedup.params import load_preset
from slimpipe.io.readers import read_all
from slimpipe.pipeline.job import PipelineOptions, SlimPajamaJob
from slimpipe.sample import GROUND_TRUTH, write_sample

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> tuple[Path, list[dict]]:
    d = tmp_path_factory.mktemp("sample")
    write_sample(d, seed=0)
    truth = [json.loads(line) for line in (d / GROUND_TRUTH).read_text().splitlines()]
    return d, truth


def _run(src: Path, out: Path, mode: str = "global", **opts) -> dict:
    params = load_preset("recall").with_overrides(mode=mode)
    options = PipelineOptions(**{"holdout_fraction": 0.05, "chunks": 3, "shard_records": 200, **opts})
    return SlimPajamaJob([src], out, params, options, progress=False).run()


def _docs(out: Path) -> dict[str, list[tuple[str, str]]]:
    """(id, text) per split, in file order."""
    result = {}
    for split in ("train", "validation", "test"):
        docs, rejects, _ = read_all([out / split])
        assert rejects.num_rows == 0
        ids = [json.loads(m)["slimpipe_id"] for m in docs.column("meta").to_pylist()]
        result[split] = list(zip(ids, docs.column("text").to_pylist(), strict=True))
    return result


@pytest.fixture(scope="module")
def global_run(sample, tmp_path_factory, ray_session) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("global")
    return out, _run(sample[0], out)


def test_planted_duplicates_removed_as_ground_truth_says(sample, global_run):
    _, truth = sample
    out, _ = global_run
    present = {i for split in _docs(out).values() for i, _ in split}
    must = [t for t in truth if t["expected_removed"] and
            (t["kind"] in ("exact", "cross_source") or (t["target_edit_rate"] or 0) <= 0.05)]
    assert len(must) > 30
    for t in must:  # of each pair, one document is gone (which one depends on the keep policy)
        assert not (t["id"] in present and t["original_id"] in present), t
    exact_all = [t for t in truth if t["kind"] == "exact"]
    assert all(t["expected_removed"] for t in exact_all)
    # far-apart pairs (30% of words edited) are both kept
    far = [t for t in truth if t["kind"] == "near" and t["jaccard"] < 0.5]
    assert far and all(t["id"] in present and t["original_id"] in present for t in far)


def test_layout_manifest_index_and_accounting(global_run):
    out, report = global_run
    assert (out / "train" / "chunk1" / "example_train_0.jsonl.zst").is_file()
    assert (out / "validation" / "chunk1").is_dir() and (out / "test").is_dir()
    manifest = json.loads((out / "manifest.json").read_text())
    paths = {f["path"] for f in manifest["files"]}
    assert all(p.split("/")[0] in ("train", "validation", "test") for p in paths)
    index = json.loads((out / "index.json").read_text())
    assert {e["path"] for s in index["splits"].values() for e in s} == paths
    docs = _docs(out)
    for split, entries in index["splits"].items():
        assert sum(c["docs"] for e in entries for c in e["sources"].values()) == len(docs[split])
    t = report["total"]
    assert t["lines_read"] == 1204 == (t["train"]["docs"] + t["validation"]["docs"] + t["test"]["docs"] + t["short_docs"]
                                       + t["exact_duplicates"] + t["near_duplicates"] + t["decontaminated_docs"] + t["rejected"])
    assert all(s["accounting_ok"] for s in report["sources"].values())
    assert 0 < t["validation"]["docs"] + t["test"]["docs"] < 0.15 * t["train"]["docs"]
    md = (out / "report.md").read_text()
    assert "SlimPajama share" in md and "whitespace" in md


def test_no_train_text_equals_a_holdout_text(global_run):
    docs = _docs(global_run[0])
    holdout = {hashlib.sha256(t.encode()).digest() for s in ("validation", "test") for _, t in docs[s]}
    assert holdout and not any(hashlib.sha256(t.encode()).digest() in holdout for _, t in docs["train"])


def test_output_reads_with_zstd_and_jq(global_run):
    out, _ = global_run
    shard = out / "train" / "chunk1" / "example_train_0.jsonl.zst"
    if not (shutil_which("zstd") and shutil_which("jq")):
        pytest.skip("zstd and jq command-line tools not installed")
    res = subprocess.run(f"zstd -dc {shard} | jq -c '[.meta.redpajama_set_name, (.text | length)]'",
                         shell=True, capture_output=True, text=True, check=True)
    rows = [json.loads(x) for x in res.stdout.splitlines()]
    assert len(rows) == 200 and all(r[0].startswith("RedPajama") and r[1] > 0 for r in rows)
    raw = zstandard.ZstdDecompressor().stream_reader(open(shard, "rb")).read().decode()
    first = json.loads(raw.splitlines()[0])
    assert set(first) == {"text", "meta"} and set(first["meta"]) == {"redpajama_set_name", "slimpipe_id"}


def shutil_which(name: str) -> str | None:
    import shutil

    return shutil.which(name)


def test_local_mode_keeps_cross_source_copies_and_decontaminates(sample, tmp_path, ray_session):
    src, truth = sample
    report = _run(src, tmp_path / "local", mode="local", holdout_fraction=0.3)
    docs = _docs(tmp_path / "local")
    present = {i for split in docs.values() for i, _ in split}
    cross = [t for t in truth if t["kind"] == "cross_source" and t["source"] != t["original_source"]]
    assert cross and all(t["id"] in present or t["original_id"] in present for t in cross)
    kept_both = [t for t in cross if t["id"] in present and t["original_id"] in present]
    # verbatim copies that landed on both sides of the split were removed from train, not from the holdout
    verbatim = [t for t in cross if t["variant"] == "verbatim"]
    assert len(kept_both) + report["total"]["decontaminated_docs"] >= len(verbatim)
    assert report["total"]["decontaminated_docs"] > 0
    holdout = {hashlib.sha256(t.encode()).digest() for s in ("validation", "test") for _, t in docs[s]}
    assert not any(hashlib.sha256(t.encode()).digest() in holdout for _, t in docs["train"])


def test_seed_changes_order_and_nothing_else(sample, global_run, tmp_path, ray_session):
    out_a, _ = global_run
    out_b = tmp_path / "seed7"
    _run(sample[0], out_b, seed=7)
    a, b = _docs(out_a), _docs(out_b)
    for split in a:
        assert sorted(a[split]) == sorted(b[split])
    assert [i for i, _ in a["train"]] != [i for i, _ in b["train"]]
    # and the same seed gives the same bytes
    out_c = tmp_path / "seed42"
    _run(sample[0], out_c)
    assert (out_c / "manifest.json").read_bytes() == (out_a / "manifest.json").read_bytes()


def test_kill_minus_9_then_resume_is_byte_identical(sample, global_run, tmp_path):
    out_ref, _ = global_run
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "slimpipe.cli", "slimpajama", str(sample[0]), "-o", str(out), "--preset", "recall",
           "--holdout-fraction", "0.05", "--chunks", "3", "--shard-records", "200", "--quiet",
           "--no-eval-set"]  # the reference run (global_run) has no evaluation set either
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    marker = out / "_work" / "scatter.done.json"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None and not marker.exists():
        time.sleep(0.005)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    subprocess.run(cmd, check=True, env=env, capture_output=True)
    for split in ("train", "validation", "test"):
        for p in sorted((out_ref / split).rglob("*.jsonl.zst")):
            assert (out / p.relative_to(out_ref)).read_bytes() == p.read_bytes()
    for name in ("manifest.json", "index.json"):
        assert (out / name).read_bytes() == (out_ref / name).read_bytes()


def test_output_and_scratch_on_s3_give_the_local_bytes(sample, global_run, s3_server, ray_session):
    """OUT and --scratch as s3:// URIs on a real S3-compatible server: the same shards, manifest and index
    as the local run, one copy of the corpus (no dedup/kept), and no intermediates left anywhere."""
    import uuid

    from slimpipe import storage

    out_ref, _ = global_run
    base = f"{s3_server['url']}/sp-{uuid.uuid4().hex[:8]}"
    out, scratch = storage.join(base, "out"), storage.join(base, "scratch")
    params = load_preset("recall").with_overrides(mode="global")
    options = PipelineOptions(holdout_fraction=0.05, chunks=3, shard_records=200)
    report = SlimPajamaJob([sample[0]], out, params, options, progress=False, scratch=scratch).run()
    assert report["intermediates"]["scatter"]["files"] > 0
    files = {f[len(out) + 1:] for f in storage.list_files(out)}
    ref = {p.relative_to(out_ref).as_posix() for p in out_ref.rglob("*") if p.is_file()}
    shards = sorted(f for f in ref if f.endswith(".jsonl.zst"))
    assert shards and set(shards) <= files
    for rel in [*shards, "manifest.json", "index.json"]:
        assert storage.read_bytes(storage.join(out, rel)) == (out_ref / rel).read_bytes(), rel
    assert not [f for f in files if f.startswith(("_work", "dedup/kept", "dedup/_work"))]
    assert storage.list_files(scratch) == []
