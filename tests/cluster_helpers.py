"""Helpers of the S3 and cluster tests: slimpipe as a subprocess (as a user runs it) and byte-level
views of an output folder that may be a local path or a URI (read through slimpipe.storage)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
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
