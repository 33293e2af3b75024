"""Helpers of the S3 and cluster tests: slimpipe as a subprocess (as a user runs it) and byte-level
views of an output folder that may be a local path or a URI (read through slimpipe.storage)."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
JOB_TIMEOUT = 600
# Intermediates: work folders under OUT (deleted on success unless --keep-intermediates), hidden files.
INTERMEDIATE = re.compile(r"(^|/)_(work|scratch|tmp|runtime)(/|$)|(^|/)\.")
REPORTS = {"report.json", "report.md"}
JOB_RECORD = "_slimpipe.json"  # the output folder's claim: job identity, plus the command line and time


def env(**extra: str) -> dict[str, str]:
    """This process's environment (with the S3 endpoint and credentials) for a slimpipe subprocess."""
    e = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_DEDUP_LOGS": "0"}
    e.update(extra)
    return e


def local_ray_env(**extra: str) -> dict[str, str]:
    """A clean single-node run: slimpipe starts its own local Ray, whatever the caller's environment."""
    return env(RAY_ADDRESS="", SLIMPIPE_RAY_ADDRESS="", **extra)


def slimpipe(*args: object) -> list[str]:
    return [sys.executable, "-m", "slimpipe.cli", *map(str, args)]


def run(cmd: list[str], environ: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=environ, capture_output=True, text=True, timeout=JOB_TIMEOUT, cwd=ROOT)


def ok(res: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert res.returncode == 0, f"exit {res.returncode}\n{res.stdout[-3000:]}\n{res.stderr[-6000:]}"
    return res


def unique(s3_server: dict, name: str) -> str:
    """A fresh prefix in the test bucket."""
    return f"{s3_server['url']}/{name}-{uuid.uuid4().hex[:8]}"


def upload(folder: Path, s3_server: dict, prefix: str) -> str:
    """Upload a local folder with the ordinary boto3 client; returns its s3:// URI."""
    import boto3

    client = boto3.client("s3", endpoint_url=s3_server["endpoint"])
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            client.upload_file(str(p), s3_server["bucket"], f"{prefix}/{p.relative_to(folder).as_posix()}")
    return f"{s3_server['url']}/{prefix}"


def files(uri: str) -> dict[str, str]:
    """{path relative to uri: full path} of every file under a URI or local folder."""
    from slimpipe import storage

    base = storage.join(uri, "x")[:-1]
    return {f[len(base):] if f.startswith(base) else f: f for f in storage.list_files(uri)}


def tree(uri: str) -> dict[str, bytes]:
    """Bytes of every product file under OUT: intermediates, timing-bearing reports and the claim left out."""
    from slimpipe import storage

    return {rel: storage.read_bytes(full) for rel, full in sorted(files(uri).items())
            if not INTERMEDIATE.search(rel) and rel.rsplit("/", 1)[-1] not in REPORTS and rel != JOB_RECORD}


def job_identity(uri: str) -> str:
    """The job identity OUT was claimed for (same inputs and options, same identity)."""
    from slimpipe import storage

    return storage.read_json(storage.join(uri, JOB_RECORD))["identity"]


def reports_without_timings(uri: str) -> dict[str, dict]:
    """Every ``report.json`` under OUT (a slimpajama OUT has dedup's too), with its wall-clock timings removed."""
    from slimpipe import storage

    reports = {}
    for rel, full in files(uri).items():
        if rel.rsplit("/", 1)[-1] == "report.json" and not INTERMEDIATE.search(rel):
            report = storage.read_json(full)
            report.pop("timings", None)
            reports[rel] = report
    return reports


def intermediates(uri: str) -> list[str]:
    return [k for k in files(uri) if INTERMEDIATE.search(k)]


@contextlib.contextmanager
def ray_head(ray_args: list[str], environ: dict[str, str], tmp_prefix: str,
             timeout: float = 180) -> Iterator[tuple[int, str]]:
    """``ray start --head --block`` on 127.0.0.1 with its own Ray temp folder (short: Ray's socket paths live
    under it), as another user or a cluster's head would run it. Yields ``(port, temp folder)`` once Ray says
    it started (read from its output: no sleeping); stops exactly the processes it launched, by id, and
    removes the folder. ``ray_args`` are added to the command (resources, dashboard)."""
    import psutil

    port = free_port()
    ray_tmp = tempfile.mkdtemp(prefix=tmp_prefix, dir="/tmp")
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("ray")), "start", "--head", f"--port={port}",
         "--node-ip-address=127.0.0.1", "--block", "--disable-usage-stats", *ray_args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_TMPDIR": ray_tmp})
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    for line in proc.stdout:  # blocks on the child's output
        seen.append(line)
        if "Ray runtime started" in line or time.monotonic() > deadline:
            break
    try:
        if proc.poll() is not None or not any("Ray runtime started" in x for x in seen):
            raise RuntimeError("could not start a Ray head:\n" + "".join(seen[-20:]))
        yield port, ray_tmp
    finally:
        started = psutil.Process(proc.pid).children(recursive=True) if proc.poll() is None else []
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        for child in started:  # only what this `ray start` launched
            try:
                child.kill()
            except psutil.NoSuchProcess:
                pass
        shutil.rmtree(ray_tmp, ignore_errors=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
