"""Shared fixtures: one real local Ray per test session, and the shared corpus when it is present."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REDPAJAMA_MINI = ROOT.parent / "shared" / "corpus" / "redpajama-mini"
PROVENANCE = ROOT.parent / "shared" / "corpus" / "provenance"


@pytest.fixture(scope="session")
def ray_session():
    """A real local Ray, started once for the whole run (2 CPUs, like CI)."""
    from slimpipe.engine import ensure_ray, shutdown_ray

    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    ensure_ray(num_cpus=2)
    yield
    shutdown_ray()


@pytest.fixture(scope="session")
def live_output(pytestconfig):
    """``with live_output("demo"): ...``: a long fixture's own progress lines (stderr) reach the terminal
    instead of being captured, framed by a start line and the time it took, so a test run never sits
    silent for minutes."""
    capman = pytestconfig.pluginmanager.getplugin("capturemanager")

    @contextlib.contextmanager
    def show(label: str) -> Iterator[None]:
        start = time.monotonic()
        with capman.global_and_fixture_disabled():
            print(f"\n[{label}] building; its progress follows", file=sys.stderr, flush=True)
            yield
            print(f"[{label}] ready in {time.monotonic() - start:.0f}s", file=sys.stderr, flush=True)

    return show


@pytest.fixture(scope="session")
def redpajama_mini() -> Path:
    """``../shared/corpus/redpajama-mini``; tests that need it skip on a user's clone, which has no ``../shared``."""
    if not REDPAJAMA_MINI.is_dir():
        pytest.skip(f"shared corpus not found at {REDPAJAMA_MINI} (only CI and developers have ../shared)")
    return REDPAJAMA_MINI


@pytest.fixture(scope="session")
def provenance_dir() -> Path:
    if not PROVENANCE.is_dir():
        pytest.skip(f"shared provenance not found at {PROVENANCE}")
    return PROVENANCE


# --------------------------------------------------------------------------- S3 server and Ray cluster
S3_BUCKET = "slimpipe-test"
S3_ENV_KEYS = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION",
               "AWS_DEFAULT_REGION", "AWS_EC2_METADATA_DISABLED")


@pytest.fixture(scope="session")
def s3_server():
    """A real S3-compatible server (moto's standalone server) on 127.0.0.1 and a free port, with a bucket.

    Sets the standard AWS environment (endpoint, test credentials, region) for this process and every
    process it starts from now on (slimpipe subprocesses, the nodes of ``ray_cluster``); restores it at
    the end. Yields ``{"endpoint", "bucket", "url"}`` where ``url`` is ``s3://<bucket>``.
    """
    pytest.importorskip("moto.server", reason="moto[server] is in the dev extras")
    boto3 = pytest.importorskip("boto3")
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log record per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()  # returns once the socket is bound and serving
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    saved = {k: os.environ.get(k) for k in S3_ENV_KEYS}
    os.environ.update({
        "AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
    })
    try:
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=S3_BUCKET)
        yield {"endpoint": endpoint, "bucket": S3_BUCKET, "url": f"s3://{S3_BUCKET}"}
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


RAY_CLUSTER_NODE = {"num_cpus": 1, "object_store_memory": 80 << 20, "include_dashboard": False}


@pytest.fixture(scope="module")
def ray_cluster(s3_server):
    """A 3-node Ray cluster on this machine (head + 2 workers, 1 CPU and a small object store each).

    It is a separate cluster from this process's own Ray (``ray_session``): run slimpipe against it in a
    subprocess with ``--ray-address <cluster.address>``. Its nodes start after ``s3_server`` has set the
    AWS environment, so tasks on every node reach the S3 server as a real cluster's nodes would. Yields
    the ``ray.cluster_utils.Cluster``; ``cluster.worker_nodes`` are the removable nodes (add one back
    with ``cluster.add_node(**RAY_CLUSTER_NODE)``). Module-scoped: it is gone before other modules run,
    and Ray's "current cluster" file (which ``ray.init(address="auto")`` reads) is restored.
    """
    from ray._private.utils import get_ray_address_file
    from ray.cluster_utils import Cluster

    address_file = Path(get_ray_address_file(None))
    previous = address_file.read_text() if address_file.exists() else None
    cluster = Cluster(initialize_head=True, head_node_args={**RAY_CLUSTER_NODE, "resources": {"head": 1}})
    try:
        for _ in range(2):
            cluster.add_node(**RAY_CLUSTER_NODE)
        cluster.wait_for_nodes(timeout=120)
        yield cluster
    finally:
        cluster.shutdown()
        if previous is None:
            address_file.unlink(missing_ok=True)
        else:
            address_file.write_text(previous)


@pytest.fixture
def one_torch_thread():
    """Tiny models run fastest on one thread, and far faster than two when other jobs share the cores."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def recipe_mixes(tmp_path_factory) -> dict[str, Path]:
    """The recipes' ``web``/``code``/``other-tok`` mixes and micro preset, built once per test run."""
    from tests.recipes_fixtures import build_mixes

    return build_mixes(tmp_path_factory.mktemp("recipes"))
