"""#19.7: `ray job submit`, as the README documents it, runs `slimpipe dedup` on a real Ray head with its job
server (the dashboard of `ray[default]`, in the dev extras), and keeps what a local run keeps.

The head is started by the test (`ray start --head --block` with its own temp folder, on loopback) and
stopped in teardown by the ids of the processes it started. Slow-ish (a head with a dashboard, a job and
a local run: about a minute on 2 busy cores); nothing else exercises the job server.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
import zstandard

from tests.cluster_helpers import free_port, ray_head
from tests.test_engine import RAY, ROOT, _env

WORDS = [f"{a}{b}" for a in ("ka", "lo", "mi", "nu", "pe", "ra", "si") for b in ("", "n", "st", "mp", "sh", "th")]


@pytest.fixture(scope="module")
def head_with_job_server():
    """A Ray head with its dashboard (job server) on 127.0.0.1: yields the job server's http address (``jobs``),
    the head's GCS address (``gcs``) and its Ray temp folder (``tmp``)."""
    pytest.importorskip("psutil")
    pytest.importorskip("aiohttp_cors", reason="the job server needs ray[default] (dev extras)")
    dash = free_port()
    # The job server hands jobs to the head's dashboard agent. Its HTTP port defaults to 52365, which the
    # test session's own private Ray already holds: an agent that cannot bind never registers, and every
    # submission is answered "No available agent to submit job" (what CI saw). Give it a free port.
    args = ["--num-cpus=2", "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
            f"--dashboard-agent-listen-port={free_port()}"]
    with ray_head(args, _env(PYTHONPATH=str(ROOT)), "rj") as (port, ray_tmp):
        yield {"jobs": f"http://127.0.0.1:{dash}", "gcs": f"127.0.0.1:{port}", "tmp": ray_tmp}


def _kept(out: Path) -> dict[str, bytes]:
    files = {p.relative_to(out).as_posix(): p.read_bytes() for p in (out / "kept").rglob("*") if p.is_file()}
    assert files, f"no kept shards under {out}"
    return files


def test_ray_job_submit_runs_dedup_and_keeps_what_a_local_run_keeps(head_with_job_server: dict,
                                                                   tmp_path: Path) -> None:
    rng = random.Random(5)
    docs = [" ".join(rng.choice(WORDS) + str(rng.randrange(500)) for _ in range(150)) for _ in range(20)]
    docs += [d.upper() + "!" for d in docs[:4]]  # copies the dedup removes
    src = tmp_path / "src"
    src.mkdir()
    (src / "c4_sample.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in docs))
    cli = [sys.executable, "-m", "slimpipe.cli"]
    dedup = ["dedup", str(src), "--preset", "recall", "-q"]

    local = subprocess.run([*cli, *dedup, "-o", str(tmp_path / "local")], capture_output=True, text=True, cwd=ROOT,
                           timeout=600, env=_env(PYTHONPATH=str(ROOT)))
    assert local.returncode == 0, local.stderr[-3000:]
    # "Ray runtime started" comes before the head's dashboard agent takes jobs: the job server answers
    # "No available agent to submit job, please try again later" until then (a bounded readiness poll)
    deadline = time.monotonic() + 120
    while True:
        job = subprocess.run([str(RAY), "job", "submit", "--address", head_with_job_server["jobs"], "--",
                              *cli, "-v", *dedup, "-o", str(tmp_path / "job")],
                             capture_output=True, text=True, cwd=ROOT, timeout=600,
                             env=_env(RAY_AUTH_MODE="token", PYTHONPATH=str(ROOT)))
        if "No available agent" not in job.stdout + job.stderr or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
    assert "succeeded" in job.stdout and "ray: attached to the Ray cluster at 127.0.0.1:" in job.stdout, job.stdout
    kept = _kept(tmp_path / "job")
    assert kept == _kept(tmp_path / "local")
    lines = b"".join(zstandard.ZstdDecompressor().decompressobj().decompress(v) for v in kept.values()).splitlines()
    assert len(lines) == 20  # the four copies were removed


def test_a_driver_attached_to_the_cluster_leaks_no_secret(head_with_job_server: dict, s3_server: dict,
                                                         tmp_path: Path) -> None:
    """#19.5 on a cluster, where the credentials do travel to the tasks: a driver with a planted secret
    (moto accepts any) attaches to the head and dedups from and to S3; the secret is in no file of the
    head's Ray temp folder, no output object and no task of `ray.util.state.list_tasks(detail=True)`."""
    import uuid

    from slimpipe import storage

    secret = f"planted-{uuid.uuid4().hex}"
    rng = random.Random(6)
    base = f"{s3_server['url']}/job-{uuid.uuid4().hex[:8]}"
    docs = [" ".join(rng.choice(WORDS) + str(rng.randrange(500)) for _ in range(120)) for _ in range(10)]
    storage.write_bytes_atomic(f"{base}/in/c4_sample.jsonl",
                               "".join(json.dumps({"text": t}) + "\n" for t in docs).encode())
    env = _env(RAY_AUTH_MODE="token", PYTHONPATH=str(ROOT), AWS_SECRET_ACCESS_KEY=secret)
    r = subprocess.run([sys.executable, "-m", "slimpipe.cli", "dedup", f"{base}/in", "-o", f"{base}/out", "-q",
                        "--ray-address", head_with_job_server["gcs"]], capture_output=True, text=True, cwd=ROOT, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    outputs = storage.list_files(f"{base}/out")
    assert outputs and not [f for f in outputs if secret.encode() in storage.read_bytes(f)]
    leaked = [str(p) for p in Path(head_with_job_server["tmp"]).rglob("*") if p.is_file() and not p.is_symlink() and _holds(p, secret)]
    assert leaked == []
    tasks = subprocess.run([sys.executable, "-c", "import sys; from ray.util.state import list_tasks; "
                            "print(repr(list_tasks(address=sys.argv[1], detail=True, limit=10000)))",
                            head_with_job_server["jobs"]], capture_output=True, text=True, timeout=300,
                           env=_env(RAY_AUTH_MODE="token"))
    assert tasks.returncode == 0 and "_run_task" in tasks.stdout, tasks.stderr[-3000:]
    assert secret not in tasks.stdout


def _holds(p: Path, secret: str) -> bool:
    try:
        return secret.encode() in p.read_bytes()
    except OSError:
        return False
