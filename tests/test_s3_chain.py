"""The whole chain against a real S3-compatible server (moto's standalone server on loopback), at tiny
size: ``slimpipe slimpajama s3://… -o s3://…`` → ``mix`` → ``train`` → ``compare``, every input and
output an ``s3://`` URI, each command a subprocess as a user runs it."""

from __future__ import annotations

import math
import uuid

from cluster_helpers import ROOT, env, files, intermediates, local_ray_env, ok, run, slimpipe, upload


def test_slimpajama_mix_train_compare_on_s3(s3_server, tmp_path) -> None:
    from slimpipe import storage

    name = f"chain-{uuid.uuid4().hex[:8]}"
    base = f"{s3_server['url']}/{name}"
    sample = tmp_path / "sample"
    ok(run(slimpipe("sample", "-o", sample, "--size", "0.25", "-q"), env()))
    src = upload(sample, s3_server, f"{name}/sample")
    sp, mix, train_run, report = (f"{base}/{x}" for x in ("slimpajama", "mix", "run", "report"))
    local = local_ray_env()

    ok(run(slimpipe("slimpajama", src, "-o", sp, "--holdout-fraction", "0.1", "--chunks", "2", "--shard-mb", "4",
                    "--quiet"), local))
    sp_files = files(sp)
    assert any(k.startswith("train/") and k.endswith(".jsonl.zst") for k in sp_files), sorted(sp_files)
    assert "manifest.json" in sp_files
    assert "eval/manifest.json" in sp_files, "the evaluation set is not in the bucket"
    assert not intermediates(sp), "intermediates left in OUT after success"
    stray = ROOT / "s3:"  # the commands run in ROOT: an s3:// path taken for a local one lands here
    assert not stray.exists(), f"a local folder {stray} was written for an s3:// output"

    ok(run(slimpipe("mix", sp, "--config", "common_crawl=2,c4=1,stackexchange=1", "--tokens", "40k", "-o", mix, "--tokenizer", "train",
                    "--vocab-size", "512", "--bpe-sample", "1M", "--seq-len", "64", "--eval-tokens", "8k",
                    "--quiet"), local))
    mix_manifest = storage.read_json(f"{mix}/manifest.json")
    assert mix_manifest, "mix manifest is empty"
    assert not intermediates(mix), "intermediates left in the mix folder after success"

    ok(run(slimpipe("train", mix, "--model", "tiny", "-o", train_run, "--max-steps", "6", "--eval-interval", "3",
                    "--eval-sequences", "16", "--device", "cpu", "--threads", "1"), local))
    metrics = storage.read_json(f"{train_run}/metrics.json")
    sources = metrics["eval"]["sources"]
    assert sources and all(math.isfinite(s["bpb"]) and s["bpb"] > 0 for s in sources.values())
    assert math.isfinite(metrics["eval"]["total"]["bpb"])
    if "eval_set" in mix_manifest:  # the evaluation set's identity travels from the mix into the run
        assert metrics.get("eval_set") == mix_manifest["eval_set"]

    ok(run(slimpipe("compare", train_run, "-o", report), local))
    rep = storage.read_json(f"{report}/report.json")
    assert len(rep["rows"]) == 1
    (row,) = rep["rows"].values()
    shown = metrics.get("eval_docs") if "sources" in (metrics.get("eval_docs") or {}) else metrics["eval"]
    assert row["bpb"]["total"]["values"] == [shown["total"]["bpb"]]  # compare ranks on the run's own figure
    assert storage.read_bytes(f"{report}/report.md").startswith(b"# ")
    assert not stray.exists(), f"a local folder {stray} was written for an s3:// output"
