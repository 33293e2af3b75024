"""The dedup job end to end on a real local Ray: accounting, global vs local, verify, distributed path,
keep policies, and resume after kill -9."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import zstandard

from slimpipe.dedup.job import DedupJob
from slimpipe.dedup.params import load_preset
from slimpipe.io.readers import read_all

ROOT = Path(__file__).resolve().parents[1]
VOCAB = [f"{a}{b}" for a in ("ka", "lo", "mi", "nu", "pe", "ra", "si", "tu", "vo", "we", "xi", "yo")
         for b in ("", "n", "r", "st", "mp", "lk", "sh", "th", "ng", "x")] * 3


def _text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(VOCAB) + str(rng.randrange(1000)) for _ in range(words))


def _edit(rng: random.Random, text: str, rate: float) -> str:
    words = text.split()
    for i in rng.sample(range(len(words)), max(1, int(rate * len(words)))):
        words[i] = rng.choice(VOCAB) + str(rng.randrange(1000))
    return " ".join(words)


def _write(path: Path, records: list[dict]) -> None:
    data = "".join(json.dumps(r) + "\n" for r in records).encode()
    path.write_bytes(zstandard.ZstdCompressor(level=3).compress(data))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, dict]:
    """Three sources with planted duplicates; returns the folder and what was planted (ids)."""
    rng = random.Random(7)
    d = tmp_path_factory.mktemp("corpus")
    wiki = [{"text": _text(rng, 300), "meta": {"title": f"t{i}"}} for i in range(60)]
    c4 = [{"text": _text(rng, 200), "meta": {"source": "c4"}} for i in range(60)]
    cc = [{"text": _text(rng, 250), "pred_label": "__label__cc", "wiki_prob": 0.1, "source": "cc/x"} for _ in range(60)]
    planted = {"exact": [], "near": [], "cross": [], "short": [], "negative": []}
    # exact copy within wikipedia (punctuation/case differences only: identical after cleaning)
    wiki.append({"text": wiki[3]["text"].upper() + "!!", "meta": {"title": "copy"}})
    planted["exact"].append(("wikipedia/wikipedia_sample.jsonl.zst:60", "wikipedia/wikipedia_sample.jsonl.zst:3"))
    # near copies at 2% word edits within c4
    for i in range(5):
        c4.append({"text": _edit(rng, c4[i]["text"], 0.02), "meta": {"source": "c4"}})
        planted["near"].append((f"c4/c4_sample.jsonl.zst:{60 + i}", f"c4/c4_sample.jsonl.zst:{i}"))
    # cross-source: a wikipedia page inside common crawl, a cc page inside c4
    cc.append({"text": wiki[10]["text"], "pred_label": "__label__wiki", "wiki_prob": 0.9, "source": "cc/y"})
    planted["cross"].append(("common_crawl/cc_2019-30_sample.jsonl.zst:60", "wikipedia/wikipedia_sample.jsonl.zst:10"))
    c4.append({"text": cc[5]["text"], "meta": {"source": "c4"}})
    planted["cross"].append(("c4/c4_sample.jsonl.zst:65", "common_crawl/cc_2019-30_sample.jsonl.zst:5"))
    # short docs
    wiki.append({"text": "too short to keep", "meta": {}})
    planted["short"].append("wikipedia/wikipedia_sample.jsonl.zst:61")
    # hard negatives: 30% of words edited, well below J = 0.8, must never be removed
    for i in range(10):
        wiki.append({"text": _edit(rng, wiki[20 + i]["text"], 0.3), "meta": {}})
        planted["negative"].append(f"wikipedia/wikipedia_sample.jsonl.zst:{62 + i}")
    _write(d / "wikipedia_sample.jsonl.zst", wiki)
    _write(d / "c4_sample.jsonl.zst", c4)
    _write(d / "cc_2019-30_sample.jsonl.zst", cc)
    (d / "stackexchange_sample.jsonl").write_text('{"text": 5}\nnot json\n')
    return d, planted


def _removed(out: Path) -> dict[str, dict]:
    rows = {}
    for p in sorted((out / "removed").glob("*.parquet")):
        for r in pq.read_table(p).to_pylist():
            rows[r["id"]] = r
    return rows


def _run(corpus_dir: Path, out: Path, **over) -> dict:
    kw = {k: over.pop(k) for k in ("partitions", "max_edges_in_memory", "keep_intermediates") if k in over}
    params = load_preset(over.pop("preset", "slimpajama")).with_overrides(**over)
    return DedupJob([corpus_dir], out, params, progress=False, **kw).run()


def test_global_dedup_removes_planted_duplicates_and_accounts_for_everything(corpus, tmp_path, ray_session):
    src, planted = corpus
    report = _run(src, tmp_path / "g", preset="recall")
    removed = _removed(tmp_path / "g")
    for dup, orig in planted["exact"]:
        assert removed[dup]["reason"] == "exact_duplicate" and removed[dup]["duplicate_of"] == orig
    for dup, orig in planted["near"]:
        assert removed[dup]["reason"] == "near_duplicate" and removed[dup]["duplicate_of"] == orig
    for a, b in planted["cross"]:
        # smallest id = first file (c4 < cc_2019-30 < wikipedia by name), first line
        first, second = sorted((a, b), key=lambda x: (x.split("/", 1)[1].split(":")[0], int(x.rsplit(":", 1)[1])))
        assert first not in removed
        assert removed[second]["reason"] == "exact_duplicate" and removed[second]["duplicate_of"] == first
    assert removed[planted["short"][0]]["reason"] == "short"
    t = report["total"]
    assert t["docs_in"] == 72 + 66 + 61  # all accepted docs
    assert not set(planted["negative"]) & set(removed)
    assert t["docs_in"] == t["kept_docs"] + t["short_docs"] + t["global"]["exact_docs"] + t["global"]["near_docs"]
    assert t["rejected"] == 2
    assert len(removed) == t["short_docs"] + t["global"]["exact_docs"] + t["global"]["near_docs"] == 1 + 3 + 5
    # the kept shards hold exactly the kept documents, with SlimPajama's set name
    docs, rejects, _ = read_all([tmp_path / "g" / "kept"])
    assert docs.num_rows == t["kept_docs"] and rejects.num_rows == 0
    ids = {json.loads(m)["slimpipe_id"] for m in docs.column("meta").to_pylist()}
    assert not ids & set(removed)
    assert json.loads(docs.column("meta")[0].as_py())["redpajama_set_name"].startswith("RedPajama")
    rejects = pq.read_table(tmp_path / "g" / "rejects.parquet")
    assert sorted(rejects.column("reason").to_pylist())[0].startswith("malformed JSON")
    # the report shows both modes from one pass: local would keep the two cross-source copies
    assert report["sources"]["common_crawl"]["global_removes_on_top_docs"] == 1
    assert report["sources"]["wikipedia"]["global_removes_on_top_docs"] == 1
    assert report["sources"]["c4"]["global_removes_on_top_docs"] == 0
    assert report["cross_source_duplicates"] == {"common_crawl": {"c4": 1}, "wikipedia": {"common_crawl": 1}}
    assert report["verify"]["candidates"] >= 5
    for name in ("report.md", "report.json", "manifest.json", "plots/per_source.png", "plots/cross_source.png"):
        assert (tmp_path / "g" / name).is_file(), name
    assert not (tmp_path / "g" / "_work").exists()  # intermediates are deleted after success
    files, nbytes = report["intermediates"]["read"]["files"], report["intermediates"]["read"]["bytes"]
    assert files >= 3 and nbytes > 0  # per-step intermediates are recorded
    md = (tmp_path / "g" / "report.md").read_text()
    assert "Global vs local" in md and "byte duplication rate" in md


def test_local_mode_keeps_cross_source_copies(corpus, tmp_path, ray_session):
    src, planted = corpus
    report = _run(src, tmp_path / "l", mode="local", keep_intermediates=True)
    assert (tmp_path / "l" / "_work" / "read.done.json").is_file()
    removed = _removed(tmp_path / "l")
    for a, b in planted["cross"]:
        assert a not in removed and b not in removed
    for dup, _ in planted["exact"]:
        assert dup in removed
    assert report["total"]["local"]["kept_docs"] == report["total"]["kept_docs"]


def test_verify_drops_false_positives(corpus, tmp_path, ray_session):
    src, _ = corpus
    # 64 bands x 1 row: almost every pair sharing any vocabulary becomes a candidate
    report = _run(src, tmp_path / "v", num_perm=64, bands=64, rows=1, verify=True)
    v = report["verify"]
    assert v["false_positives_dropped"] >= 10
    assert report["total"]["global"]["near_docs"] == 5
    unverified = _run(src, tmp_path / "nv", num_perm=64, bands=64, rows=1, verify=False)
    assert unverified["total"]["global"]["near_docs"] >= 15  # the hard negatives, wrongly removed


def test_distributed_components_match_single_process(corpus, tmp_path, ray_session):
    src, _ = corpus
    fast = _run(src, tmp_path / "fast", preset="recall")
    dist = _run(src, tmp_path / "dist", preset="recall", partitions=3, max_edges_in_memory=0)
    assert dist["components"]["path"] == "distributed" and fast["components"]["path"] == "single-process"
    assert _removed(tmp_path / "fast") == _removed(tmp_path / "dist")
    assert fast["total"] == dist["total"]


@pytest.mark.parametrize("keep", ["longest", "source-priority"])
def test_keep_policies(corpus, tmp_path, ray_session, keep):
    src, _ = corpus
    over = {"keep": keep}
    if keep == "source-priority":
        over["source_priority"] = ("wikipedia", "c4", "common_crawl")
    _run(src, tmp_path / keep, **over)
    removed = _removed(tmp_path / keep)
    if keep == "source-priority":
        # by smallest id the CC copy of the wikipedia page would be kept; wikipedia now wins
        assert removed["common_crawl/cc_2019-30_sample.jsonl.zst:60"]["duplicate_of"] == "wikipedia/wikipedia_sample.jsonl.zst:10"
    else:
        # the upper-cased copy with "!!" is longer in bytes than the original
        assert removed["wikipedia/wikipedia_sample.jsonl.zst:3"]["duplicate_of"] == "wikipedia/wikipedia_sample.jsonl.zst:60"


def test_resume_refuses_a_different_job(corpus, tmp_path, ray_session):
    src, _ = corpus
    _run(src, tmp_path / "r")
    with pytest.raises(RuntimeError, match="other inputs or parameters"):
        _run(src, tmp_path / "r", threshold=0.7)


def _tree(root: Path) -> dict[str, bytes]:
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        # _slimpipe.json: the output folder's claim (which command, when): differs between runs by design
        if p.is_file() and not rel.startswith("_work") and rel not in ("report.json", "report.md", "_slimpipe.json"):
            out[rel] = p.read_bytes()
    return out


def _report_without_timings(root: Path) -> dict:
    r = json.loads((root / "report.json").read_text())
    r.pop("timings")
    return r


def test_kill_minus_9_then_resume_is_byte_identical(corpus, tmp_path):
    """A dedup CLI run killed with SIGKILL twice (at a stage boundary, then in the middle of the write
    stage) and run a third time ends with the same bytes as an uninterrupted run."""
    src, _ = corpus
    ref, out = tmp_path / "ref", tmp_path / "out"
    cmd = [sys.executable, "-m", "slimpipe.cli", "dedup", str(src), "-o", "{}", "--preset", "recall", "--quiet"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run([c.replace("{}", str(ref)) for c in cmd], check=True, env=env, capture_output=True)
    work = out / "_work"
    for reached in (lambda: (work / "read.done.json").exists(),
                    lambda: (work / "write").is_dir() and any((work / "write").iterdir())):
        proc = subprocess.Popen([c.replace("{}", str(out)) for c in cmd], env=env, start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None and not reached():
            time.sleep(0.005)
        assert proc.poll() is None, "the run finished before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (out / "report.json").exists()
    subprocess.run([c.replace("{}", str(out)) for c in cmd], check=True, env=env, capture_output=True)
    assert _tree(out) == _tree(ref)
    assert _report_without_timings(out) == _report_without_timings(ref)


def test_verify_keeps_true_pairs_behind_a_false_positive_bucket_head(tmp_path, ray_session):
    """M (smallest id) shares the only bucket with X and Y but is not a duplicate of either; X ~ Y is.
    Verification drops M's star edges; the pair must survive through its own candidate edge."""
    from slimpipe.dedup.minhash import band_keys, jaccard_exact, signatures
    from slimpipe.text.normalize import clean_for_hash

    p = load_preset("slimpajama").with_overrides(num_perm=1, bands=1, rows=1, verify=True)
    words = [f"w{i}" for i in range(5000)]
    for seed in range(20000):
        rng = random.Random(seed)
        x = " ".join(rng.choice(words) for _ in range(120))
        y = x + " extra tail words here"
        m = x + " " + " ".join(rng.choice(words) for _ in range(120))
        cl = [clean_for_hash(t) for t in (m, x, y)]
        k = band_keys(signatures(cl, p), 1, 1)[:, 0]
        if k[0] == k[1] == k[2] and jaccard_exact(cl[0], cl[1]) < 0.8 and jaccard_exact(cl[0], cl[2]) < 0.8:
            break
    else:
        pytest.skip("no such triple found")
    assert jaccard_exact(cl[1], cl[2]) >= 0.8
    src = tmp_path / "in"
    src.mkdir()
    _write(src / "github_sample.jsonl.zst", [{"text": t, "meta": {}} for t in (m, x, y)])
    report = DedupJob([src], tmp_path / "out", p, progress=False).run()
    assert report["verify"]["false_positives_dropped"] >= 1
    assert report["total"]["global"]["near_docs"] == 1
    assert set(_removed(tmp_path / "out")) == {"github/github_sample.jsonl.zst:2"}


def test_dedup_with_inputs_and_output_on_s3_matches_a_local_run(corpus, tmp_path, s3_server, ray_session):
    """SOURCES and OUT as s3:// URIs on a real S3-compatible server: the same bytes as a local run, and no
    intermediates left behind (the workspace lived under OUT on the object store)."""
    import uuid

    from slimpipe import storage

    src, _ = corpus
    base = f"{s3_server['url']}/dedup-{uuid.uuid4().hex[:8]}"
    for f in sorted(src.iterdir()):
        storage.write_bytes_atomic(storage.join(base, "in", f.name), f.read_bytes())
    params = load_preset("recall")
    local = DedupJob([src], tmp_path / "local", params, progress=False).run()
    remote = DedupJob([storage.join(base, "in")], storage.join(base, "out"), params, progress=False,
                      partitions=3).run()
    assert remote["total"] == local["total"]
    out = storage.join(base, "out")
    remote_files = {f[len(out) + 1:]: storage.read_bytes(f) for f in storage.list_files(out)}
    assert not [k for k in remote_files if k.startswith("_work")]
    local_files = {k: v for k, v in _tree(tmp_path / "local").items()}
    for rel in ("manifest.json", "rejects.parquet"):
        assert remote_files[rel] == local_files[rel]
    kept = sorted(k for k in local_files if k.startswith(("kept/", "removed/")))
    assert kept and all(remote_files[k] == local_files[k] for k in kept)
    assert {"report.json", "report.md", "plots/per_source.png"} <= set(remote_files)


def test_byte_ranges_of_plain_jsonl_keep_ids_and_results(corpus, tmp_path, ray_session):
    """A plain .jsonl cut into byte ranges (by seeking, no line counting in the driver) gives the same
    stable ids, removals, kept documents and reject line numbers as the whole file read by one task."""
    import zstandard as zstd

    src, _ = corpus
    plain = tmp_path / "plain"
    plain.mkdir()
    for f in sorted(src.glob("*.jsonl.zst")):
        text = zstd.ZstdDecompressor().stream_reader(f.open("rb")).read().decode()
        lines = text.splitlines()
        lines.insert(len(lines) - 3, "{broken json")  # a reject late in the file: its line number must hold
        (plain / f.name.removesuffix(".zst")).write_text("\n".join(lines) + "\n")
    params = load_preset("recall")
    whole = DedupJob([plain], tmp_path / "whole", params, progress=False).run()
    split = DedupJob([plain], tmp_path / "split", params, progress=False, range_bytes=16 << 10).run()
    assert split["inputs"]["tasks"] > 3 * whole["inputs"]["tasks"]
    assert split["total"] == whole["total"]
    assert _removed(tmp_path / "split") == _removed(tmp_path / "whole")

    def kept_ids(out: Path) -> list[str]:
        docs, _, _ = read_all([out / "kept"])
        return sorted(json.loads(m)["slimpipe_id"] for m in docs.column("meta").to_pylist())

    assert kept_ids(tmp_path / "split") == kept_ids(tmp_path / "whole")
    rej = [pq.read_table(tmp_path / d / "rejects.parquet").sort_by([("file", "ascending"), ("line", "ascending")])
           for d in ("whole", "split")]
    assert rej[0].select(["file", "line", "reason"]).equals(rej[1].select(["file", "line", "reason"]))
    assert rej[0].num_rows >= 3


def test_step_manifests_parse_into_typed_results_and_back(corpus, tmp_path, ray_session):
    """Every task result the executor committed (the JSON a resumed job reads back, in the layout the untyped
    code wrote) becomes its step's dataclass and returns to the same JSON: verify, the distributed
    components and the sample step included."""
    from slimpipe.dedup import results as R

    src, _ = corpus
    out = tmp_path / "out"
    _run(src, out, preset="recall", max_edges_in_memory=0, partitions=2, keep_intermediates=True)
    kinds = {"read": R.ReadResult, "buckets": R.BucketsResult, "verify_send": R.SendResult,
             "verify": R.VerifyResult, "keep_global": R.KeepResult, "keep_local": R.KeepResult,
             "write": R.WriteResult}
    seen = set()
    for manifest in sorted((out / "_work").glob("*.done.json")):
        step = manifest.name[: -len(".done.json")]
        kind = kinds.get(step)
        if kind is None and step.startswith("cc_"):
            kind = (R.StarFinishResult if step.endswith("_finish") else R.StarMapResult if step.endswith("map")
                    else R.StarReduceResult)
        if step == "sample":
            for c in json.loads(manifest.read_text())["results"][0]["clusters"]:
                assert R.SampleCluster.from_dict(c).to_dict() == c
            seen.add(step)
            continue
        assert kind is not None, f"no result type for step {step}"
        for r in json.loads(manifest.read_text())["results"]:
            plain = {k: v for k, v in r.items() if k != "_io"}
            assert kind.from_dict(r).to_dict() == plain, step
            assert list(kind.from_dict(r).to_dict()) == list(plain), step  # the same key order
        seen.add(step)
    assert {"read", "buckets", "verify_send", "verify", "keep_global", "keep_local", "write", "sample"} <= seen
    assert any(s.startswith("cc_global_r0_") for s in seen)
