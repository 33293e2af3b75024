"""slimpipe where users run it: a real 3-node Ray cluster (``ray.cluster_utils.Cluster``, head + 2
workers) attached with ``--ray-address``, and OUT on a real S3-compatible server (moto's standalone
server on loopback). A worker node is removed while each job runs; the job still finishes and its
output is byte-identical to a clean single-node run. Storage URIs that cannot be used fail before any
work with one line naming the URI and the cause.

Every slimpipe command runs in a subprocess, as a user would run it; the cluster and the S3 server are
the session fixtures of conftest.py.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from cluster_helpers import (
    JOB_TIMEOUT,
    ROOT,
    env,
    files,
    intermediates,
    job_identity,
    local_ray_env,
    ok,
    reports_without_timings,
    run,
    slimpipe,
    tree,
    unique,
    upload,
)
from conftest import RAY_CLUSTER_NODE

SAMPLE_SIZE = "0.25"  # ~340 documents, 1.3 MB of text, 45 planted duplicates


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def _auth_required(endpoint: str) -> Iterator[None]:
    """Make the moto server check credentials (the test's keys are unknown to it), then stop checking."""
    import urllib.request

    def reset(count: bytes) -> None:
        req = urllib.request.Request(f"{endpoint}/moto-api/reset-auth", data=count, method="POST",
                                     headers={"Content-Type": "text/plain"})  # not a form: the body is read raw
        with urllib.request.urlopen(req, timeout=30) as resp:
            assert resp.status == 200

    reset(b"0")
    try:
        yield
    finally:
        reset(b"inf")


def _run_losing_a_node(cluster, cmd: list[str], environ: dict[str, str], started: Callable[[], bool],
                       log: Path) -> tuple[int, str]:
    """Run ``cmd`` on the cluster; once ``started()`` (a committed first-stage output), remove a worker node.

    The node is removed while the job is still running (asserted), then a fresh node takes its place
    after the job ends so the next test has three nodes again. Returns (exit code, output).
    """
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, env=environ, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
                                start_new_session=True)
        try:
            deadline = time.monotonic() + JOB_TIMEOUT
            while proc.poll() is None and not started() and time.monotonic() < deadline:
                time.sleep(0.05)  # polling the job's committed outputs in S3
            assert proc.poll() is None, "the job ended before a node could be removed:\n" + log.read_text()[-3000:]
            assert started(), "the job made no progress in time:\n" + log.read_text()[-3000:]
            victim = sorted(cluster.worker_nodes, key=lambda n: n.unique_id)[0]
            cluster.remove_node(victim)
            assert proc.poll() is None, "the job ended while its node was being removed"
            rc = proc.wait(timeout=JOB_TIMEOUT)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, 9)
                proc.wait()
            cluster.add_node(**RAY_CLUSTER_NODE)
            cluster.wait_for_nodes(timeout=120)
    return rc, log.read_text()


def _first_stage_committed(*roots: str) -> Callable[[], bool]:
    """True once the job has committed an output of its first step under one of ``roots`` (OUT, or the
    --scratch URI), seen through S3 listings."""
    from slimpipe import storage

    def check() -> bool:
        for root in roots:
            try:
                names = storage.list_files(root)
            except Exception:  # noqa: BLE001 - the job may be creating it right now
                continue
            if any(_is_stage_commit(n[len(root):]) for n in names):
                return True
        return False

    return check


def _is_stage_commit(rel: str) -> bool:
    """A committed output of the job's first step: a task marker of ``read`` (or its step manifest),
    which the runtime writes atomically once that task's outputs are all committed. The workspace is
    ``OUT/_work`` or ``SCRATCH/slimpipe-<key>``."""
    return bool(re.search(r"(^|/)(_work|slimpipe-[0-9a-f]+)/(.+/)?read(/task\d+\.json|\.done\.json)$", rel))


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def sample(tmp_path_factory, s3_server) -> tuple[Path, str]:
    """The embedded sample written by ``slimpipe sample``, locally and uploaded to the S3 server."""
    d = tmp_path_factory.mktemp("cluster-sample")
    ok(run(slimpipe("sample", "-o", d, "--size", SAMPLE_SIZE, "-q"), env()))
    return d, upload(d, s3_server, f"inputs-{uuid.uuid4().hex[:8]}/sample")


# --------------------------------------------------------------------------- tests
def test_cluster_has_three_nodes(ray_cluster) -> None:
    alive = [n for n in ray_cluster.global_state.node_table() if n["Alive"]]
    assert len(alive) == 3 and len(ray_cluster.worker_nodes) == 2
    assert sum(n["Resources"].get("CPU", 0) for n in alive) == 3


def test_dedup_on_cluster_survives_losing_a_node(ray_cluster, s3_server, sample, tmp_path) -> None:
    """``slimpipe dedup s3://… -o s3://… --ray-address`` loses a worker node mid-job and still ends with
    the bytes of a clean single-node run (inputs read from S3)."""
    _, sample_uri = sample
    ref, out = unique(s3_server, "dedup-ref"), unique(s3_server, "dedup-cluster")
    args = ("dedup", sample_uri, "--preset", "recall", "--quiet")
    ok(run(slimpipe(*args, "-o", ref), local_ray_env()))
    rc, log = _run_losing_a_node(ray_cluster, slimpipe(*args, "-o", out, "--ray-address", ray_cluster.address),
                                 env(), _first_stage_committed(out), tmp_path / "dedup.log")
    assert rc == 0, log[-6000:]
    ref_tree, out_tree = tree(ref), tree(out)
    assert any(k.startswith("kept/") for k in ref_tree), sorted(ref_tree)
    assert out_tree.keys() == ref_tree.keys()
    assert not (differ := sorted(k for k in ref_tree if out_tree[k] != ref_tree[k])), f"bytes differ: {differ}"
    assert reports_without_timings(out) == reports_without_timings(ref)
    assert job_identity(out) == job_identity(ref)
    assert not intermediates(out), "intermediates left after success"


def test_slimpajama_on_cluster_survives_losing_a_node(ray_cluster, s3_server, sample, tmp_path) -> None:
    """``slimpipe slimpajama LOCAL_DIR -o s3://… --scratch s3://… --ray-address`` loses a worker node
    mid-job and still ends with the bytes of a clean single-node run (inputs read from a local folder
    every node sees; intermediates in their own S3 prefix, empty again after success)."""
    sample_dir, _ = sample
    ref, out, scratch = (unique(s3_server, x) for x in ("sp-ref", "sp-cluster", "sp-scratch"))
    args = ("slimpajama", sample_dir, "--preset", "recall", "--holdout-fraction", "0.05", "--chunks", "3",
            "--shard-records", "100", "--quiet")
    ok(run(slimpipe(*args, "-o", ref), local_ray_env()))
    cmd = slimpipe(*args, "-o", out, "--scratch", scratch, "--ray-address", ray_cluster.address)
    rc, log = _run_losing_a_node(ray_cluster, cmd, env(), _first_stage_committed(out, scratch),
                                 tmp_path / "slimpajama.log")
    assert rc == 0, log[-6000:]
    ref_tree, out_tree = tree(ref), tree(out)
    for split in ("train", "validation", "test"):
        assert any(k.startswith(f"{split}/") and k.endswith(".jsonl.zst") for k in ref_tree), split
    assert "manifest.json" in ref_tree
    assert out_tree.keys() == ref_tree.keys()
    assert not (differ := sorted(k for k in ref_tree if out_tree[k] != ref_tree[k])), f"bytes differ: {differ}"
    assert reports_without_timings(out) == reports_without_timings(ref)
    assert job_identity(out) == job_identity(ref)
    assert not intermediates(out), "intermediates left after success"
    assert files(scratch) == {}, "the scratch prefix still holds intermediates after success"


def _fails_before_any_work(args: tuple, uri: str, **environ: str) -> str:
    """Run slimpipe with a private Ray temp folder; it must fail with exactly one error line naming
    ``uri``, no traceback, and without having started Ray (nothing appears in that folder)."""
    ray_tmp = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))  # short: Ray's socket paths live under it
    try:
        res = run(slimpipe(*args), local_ray_env(RAY_TMPDIR=str(ray_tmp), **environ))
        text = res.stdout + res.stderr
        assert res.returncode != 0, text[-3000:]
        assert "Traceback" not in text, text[-3000:]
        assert not any(ray_tmp.iterdir()), f"Ray was started before storage was checked: {sorted(ray_tmp.rglob('*'))[:5]}"
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    errors = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(errors) == 1 and errors[0].startswith("Error:"), res.stderr[-3000:]
    assert uri in errors[0], errors[0]
    return errors[0]


def test_unusable_storage_uris_fail_before_any_work_with_one_line(s3_server, sample) -> None:
    sample_dir, sample_uri = sample
    # a bucket that does not exist, as OUT
    out = f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/out"
    line = _fails_before_any_work(("dedup", sample_dir, "-o", out, "--quiet"), out)
    assert re.search(r"not found|no such bucket|does not exist|cannot write", line, re.I), line
    # an unreachable endpoint, for the inputs
    out_local = f"{sample_dir}-never-written"
    line = _fails_before_any_work(("dedup", sample_uri, "-o", out_local, "--quiet"), sample_uri,
                                  AWS_ENDPOINT_URL=f"http://127.0.0.1:{_free_port()}")
    assert not Path(out_local).exists(), "OUT was created although the inputs were unreachable"
    # unauthenticated: the server rejects the test's credentials
    out = unique(s3_server, "unauth")
    with _auth_required(s3_server["endpoint"]):
        line = _fails_before_any_work(("dedup", sample_uri, "-o", out, "--quiet"), sample_uri)
    assert re.search(r"denied|access key|credential|forbidden|403", line, re.I), line
    assert files(out) == {}
