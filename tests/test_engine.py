"""Ray isolation (#15 item 3, #10 attach): a run starts its own loopback Ray unless told to attach.

A second Ray cluster is started on this machine by the test (``ray start --head`` in a subprocess, stopped
in teardown by the ids of the processes it started), and ``slimpipe`` runs as subprocesses, because the
test session's own Ray already lives in the pytest process.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.cluster_helpers import free_port, ray_head

ROOT = Path(__file__).resolve().parents[1]
RAY = Path(sys.executable).with_name("ray")
LONG = "A sentence long enough to be a document of its own, repeated a few times. " * 4




def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "SLIMPIPE_RAY_ADDRESS")}
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def other_cluster():
    """Another user's Ray on this machine: a head node with one CPU, on loopback, with its own temp folder
    (so `auto` finds this cluster only)."""
    pytest.importorskip("psutil")
    with ray_head(["--num-cpus=1", "--include-dashboard=false"], _env(), "rt", timeout=120) as (port, ray_tmp):
        yield f"127.0.0.1:{port}", ray_tmp


def _inspect(corpus: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "slimpipe.cli", "-v", "inspect", str(corpus), "--json", *args],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)


def _gcs(stderr: str) -> str:
    lines = [x for x in stderr.splitlines() if x.startswith("ray: ")]
    assert lines, stderr[-2000:]
    return lines[0].rsplit("(gcs ", 1)[1].rstrip(")")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("corpus")
    (d / "c4_sample.jsonl").write_text("".join(json.dumps({"text": f"{i} {LONG}"}) + "\n" for i in range(7)))
    return d


def test_a_local_run_never_attaches_to_another_cluster_on_the_machine(other_cluster: tuple, corpus: Path) -> None:
    address, ray_tmp = other_cluster
    r = _inspect(corpus, _env(RAY_TMPDIR=ray_tmp))  # the other cluster is the one `ray.init()` would find
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout)["accepted"] == 7
    gcs = _gcs(r.stderr)
    assert "started a private local Ray" in r.stderr
    assert gcs != address and gcs.startswith("127.0.0.1:")  # its own Ray, on loopback


def test_ray_address_attaches_without_local_resource_arguments(other_cluster: tuple, corpus: Path) -> None:
    address, ray_tmp = other_cluster
    # a `ray job submit` driver inherits RAY_AUTH_MODE=token from the cluster; a user's shell must set it
    for env, args in ((_env(RAY_ADDRESS=address, RAY_AUTH_MODE="token"), ()),
                      (_env(RAY_AUTH_MODE="token"), ("--ray-address", address)),
                      (_env(RAY_AUTH_MODE="token", RAY_TMPDIR=ray_tmp), ("--ray-address", "auto"))):
        r = _inspect(corpus, env, *args)
        assert r.returncode == 0, r.stderr[-3000:]
        assert json.loads(r.stdout)["accepted"] == 7
        assert "attached to the Ray cluster" in r.stderr and _gcs(r.stderr) == address


def test_without_v_ray_start_up_is_silent(corpus: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "slimpipe.cli", "inspect", str(corpus), "--json"],
                       capture_output=True, text=True, env=_env(), cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    for noise in ("Token authentication", "Started a local Ray instance", "ray: "):
        assert noise not in r.stderr, r.stderr


def test_an_unreachable_address_is_one_line(corpus: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "slimpipe.cli", "inspect", str(corpus), "--ray-address",
                        f"127.0.0.1:{free_port()}"], capture_output=True, text=True, env=_env(), cwd=ROOT, timeout=300)
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [f"Error: cannot reach the Ray cluster at {r.args[-1]}: Connection refused"]


def test_the_private_ray_listens_on_loopback_only(ray_session) -> None:
    """Every port of this session's own Ray (GCS, raylet, workers, agents) is bound to 127.0.0.1."""
    psutil = pytest.importorskip("psutil")
    import ray

    ray.get(ray.remote(lambda: 0).remote())  # at least one worker up
    ours = {p.pid for p in psutil.Process().children(recursive=True)}
    listening = [(c.pid, c.laddr.ip, c.laddr.port) for c in psutil.net_connections(kind="inet")
                 if c.status == psutil.CONN_LISTEN and c.pid in ours]
    assert listening, "found no listening socket of this session's Ray"
    assert all(ip in ("127.0.0.1", "::ffff:127.0.0.1") for _, ip, _ in listening), listening


def test_auto_is_only_the_cluster_ray_start_recorded_never_another_private_ray(ray_session, corpus: Path) -> None:
    """#19.7: this session's private Ray runs on the machine, but no `ray start` recorded a cluster in the
    temp folder the run sees: `auto` is refused with one line instead of attaching to the private Ray."""
    empty = tempfile.mkdtemp(prefix="rt", dir="/tmp")
    try:
        r = subprocess.run([sys.executable, "-m", "slimpipe.cli", "inspect", str(corpus), "--ray-address", "auto"],
                           capture_output=True, text=True, cwd=ROOT, timeout=300,
                           env=_env(RAY_TMPDIR=empty, RAY_AUTH_MODE="token"))
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 1 and lines == [
            f"Error: --ray-address auto: no cluster recorded by `ray start` on this machine ({empty}/ray/"
            "ray_current_cluster not found); start one with `ray start --head` or give its address as host:port"], \
            r.stderr[-3000:]
    finally:
        shutil.rmtree(empty, ignore_errors=True)


def test_a_wrong_ray_token_is_one_line(other_cluster: tuple, corpus: Path) -> None:
    """#19.17: a refused token is told in one line, without Ray's raw gcs_client.cc warnings (one per
    second for 20 s before) — the cluster's GCS is asked once, before ray.init."""
    address, _ = other_cluster
    r = subprocess.run([sys.executable, "-m", "slimpipe.cli", "inspect", str(corpus), "--ray-address", address],
                       capture_output=True, text=True, cwd=ROOT, timeout=300,
                       env=_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN="0" * 32))
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [
        f"Error: cannot reach the Ray cluster at {address}: its authentication token is missing or wrong here "
        "(set RAY_AUTH_MODE=token and put the cluster's token in ~/.ray/auth_token or RAY_AUTH_TOKEN)"], r.stderr[-3000:]
