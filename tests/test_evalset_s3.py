"""``slimpipe evalset`` with its inputs and its output on a real S3-compatible server (moto's standalone
server on loopback): the set lands in the bucket, the intermediates are gone, and nothing is written
to a local folder named after the URI (``s3:/bucket/...``) in the current directory."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner
from cluster_helpers import upload

from slimpipe.evalset.build import load_manifest, read_eval_documents
from slimpipe.evalset.command import evalset_command
from slimpipe.sample import write_sample

ARGS = ["--eval-seq-len", "128", "--eval-min-seqs", "8", "--eval-seed", "7", "--quiet"]


def _keys(s3_server: dict, prefix: str) -> dict[str, bytes]:
    """Every object under ``prefix`` in the test bucket, read with the ordinary boto3 client."""
    import boto3

    client = boto3.client("s3", endpoint_url=s3_server["endpoint"])
    out: dict[str, bytes] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=s3_server["bucket"], Prefix=prefix + "/"):
        for obj in page.get("Contents", []):
            rel = obj["Key"][len(prefix) + 1:]
            out[rel] = client.get_object(Bucket=s3_server["bucket"], Key=obj["Key"])["Body"].read()
    return out


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("evals3sample")
    write_sample(d, seed=0, size=0.3)
    return d


def test_evalset_writes_to_the_bucket_not_to_a_local_s3_folder(sample, s3_server, ray_session, tmp_path,
                                                                monkeypatch) -> None:
    name = f"evalset-{uuid.uuid4().hex[:8]}"
    src = upload(sample, s3_server, f"{name}/sample")
    out = f"{s3_server['url']}/{name}/EVAL"
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    res = CliRunner().invoke(evalset_command, [src, "-o", out, *ARGS], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert f"{out}/manifest.json" in res.output
    assert list(cwd.iterdir()) == [], "a local folder was written for the s3:// output"

    objects = _keys(s3_server, f"{name}/EVAL")
    manifest = json.loads(objects["manifest.json"])
    assert manifest["format"] == "slimpipe-evalset" and len(manifest["eval_set"]) == 64
    assert objects["report.md"].startswith(b"# Evaluation set")
    assert not [k for k in objects if k.startswith("_work/")], "intermediates left in the bucket after success"
    shards = [f for v in manifest["sources"].values() for f in v["files"]]
    assert shards and all(f in objects and f.endswith(".jsonl.zst") for f in shards)
    assert set(manifest["sources"]) >= {"arxiv", "c4", "common_crawl"}

    # read back through slimpipe: the same documents the manifest counts; the same draw from the local copy
    docs = read_eval_documents(out)
    assert len(docs) == sum(v["docs"] for v in manifest["sources"].values()) > 0
    assert load_manifest(out)["eval_set"] == manifest["eval_set"]
    local = tmp_path / "local"
    res = CliRunner().invoke(evalset_command, [str(sample), "-o", str(local), *ARGS], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    local_docs = read_eval_documents(local)
    assert sorted(t for *_, t in local_docs) == sorted(t for *_, t in docs)

    # a second run of the same command finds the finished set and leaves it as it is
    res = CliRunner().invoke(evalset_command, [src, "-o", out, *ARGS], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert _keys(s3_server, f"{name}/EVAL")["manifest.json"] == objects["manifest.json"]
    assert list(cwd.iterdir()) == []


def test_reused_eval_set_is_copied_between_uris(sample, s3_server, ray_session, tmp_path, monkeypatch) -> None:
    """``slimpajama --eval-set EVAL -o s3://…``'s first step: the set is copied to OUT/eval in the bucket."""
    from slimpipe.dedup.params import load_preset
    from slimpipe.evalset.build import EvalSetOptions, build_eval_set
    from slimpipe.evalset.decontaminate import prepare_eval_set

    monkeypatch.chdir(tmp_path)
    name = f"evalreuse-{uuid.uuid4().hex[:8]}"
    local = tmp_path / "EVAL"
    m = build_eval_set([sample], local, EvalSetOptions(seed=7, min_seqs=8, seq_len=128), progress=False)
    (local / "_slimpipe.json").write_text("{}")  # the claim of the evalset folder is not part of the set
    out = f"{s3_server['url']}/{name}/OUT"
    decon = prepare_eval_set([], out, load_preset("slimpajama"), reuse=local)
    assert decon.eval_set == m["eval_set"]
    objects = _keys(s3_server, f"{name}/OUT")
    assert json.loads(objects["eval/manifest.json"])["eval_set"] == m["eval_set"]
    assert "eval/_slimpipe.json" not in objects
    assert {f"eval/{f}" for v in m["sources"].values() for f in v["files"]} <= set(objects)
    # from the bucket to another place in the bucket, and again (already there: nothing to do)
    out2 = f"{s3_server['url']}/{name}/OUT2"
    assert prepare_eval_set([], out2, load_preset("slimpajama"), reuse=f"{out}/eval").eval_set == m["eval_set"]
    assert prepare_eval_set([], out2, load_preset("slimpajama"), reuse=f"{out}/eval").eval_set == m["eval_set"]
    assert not (tmp_path / "s3:").exists()
