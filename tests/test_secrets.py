"""#19 item 5: a cloud secret never reaches Ray's files, the output folder or the task metadata.

Real jobs on this session's real Ray: a dedup whose OUT is on the moto S3 server and a local one, with a
unique secret planted in ``AWS_SECRET_ACCESS_KEY`` (moto accepts any). Then every file under Ray's
session folder, every file of both outputs and the task events the GCS holds (what the dashboard and
``ray.util.state.list_tasks(detail=True)`` show) are searched for it. Before the fix the storage
environment went into every task's ``runtime_env``, which Ray writes to ``runtime_env_agent.log`` and
keeps in the task metadata.
"""

from __future__ import annotations

import json
import os
import random
import re
import uuid
from pathlib import Path

from slimpipe import storage
from slimpipe.dedup.job import DedupJob
from slimpipe.dedup.params import load_preset
from slimpipe.runtime import executor

WORDS = [f"{a}{b}" for a in ("ka", "lo", "mi", "nu", "pe", "ra", "si") for b in ("", "n", "st", "mp", "sh", "th")]


def _corpus(folder: Path) -> Path:
    rng = random.Random(3)
    docs = [" ".join(rng.choice(WORDS) + str(rng.randrange(500)) for _ in range(120)) for _ in range(12)]
    docs += docs[:3]  # exact copies: the job has something to remove
    folder.mkdir()
    (folder / "c4_sample.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in docs))
    return folder


def _files_holding(secret: bytes, root: Path) -> list[str]:
    hits = []
    for p in root.rglob("*"):
        try:
            if p.is_file() and not p.is_symlink() and secret in p.read_bytes():
                hits.append(str(p))
        except OSError:  # a log rotated or a socket: nothing to read
            continue
    return hits


def _task_metadata() -> str:
    """Every task event the GCS holds for this Ray (the records behind the dashboard and the state API)."""
    import ray

    try:  # the state API when a dashboard runs; this session's private Ray has none
        from ray.util.state import list_tasks

        return repr(list_tasks(detail=True, limit=10_000, raise_on_missing_output=False))
    except Exception:  # noqa: BLE001 - no dashboard: read the same events from the GCS
        events = ray._private.state.state._get_all_task_events()
        return "\n".join(str(e) for e in events)


def test_a_planted_secret_is_in_no_ray_file_no_output_and_no_task_metadata(ray_session, s3_server, tmp_path,
                                                                            monkeypatch) -> None:
    import ray

    secret = f"planted-{uuid.uuid4().hex}"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    src = _corpus(tmp_path / "src")
    params = load_preset("recall")
    local = DedupJob([src], tmp_path / "local", params, progress=False).run()
    remote_out = f"{s3_server['url']}/secrets-{uuid.uuid4().hex[:8]}/out"
    remote = DedupJob([src], remote_out, params, progress=False).run()
    assert remote["total"] == local["total"] and local["total"]["global"]["exact_docs"] == 3

    session = Path(ray._private.worker._global_node.get_session_dir_path())
    assert _files_holding(secret.encode(), session) == []
    assert _files_holding(secret.encode(), tmp_path / "local") == []
    remote_files = storage.list_files(remote_out)
    assert remote_files and not [f for f in remote_files if secret.encode() in storage.read_bytes(f)]
    metadata = _task_metadata()
    assert "_run_task" in metadata  # the job's tasks are there (the check looks at the right records)
    assert secret not in metadata


def test_only_what_the_uris_in_use_need_is_sent_and_a_nodes_own_credentials_win(ray_session, monkeypatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "driver-secret")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "driver-key")
    assert executor.task_env(schemes=[])["env"] == {}  # every path local: nothing at all
    assert not any(k.startswith("AWS_") for k in executor.task_env(schemes=["gs"])["env"])
    sent = executor.task_env(schemes=["s3"])
    assert sent["cluster"] is False  # this session's private Ray: only what changed since it started
    assert sent["env"]["AWS_SECRET_ACCESS_KEY"] == "driver-secret"

    # a driver attached to a cluster sends the settings, and the credentials unless told not to
    monkeypatch.setattr("slimpipe.engine._PRIVATE_ENV", None)
    sent = executor.task_env(schemes=["s3"])
    assert sent["cluster"] is True and sent["env"]["AWS_SECRET_ACCESS_KEY"] == "driver-secret"
    monkeypatch.setenv(executor.FORWARD_CREDENTIALS_ENV, "0")
    sent = executor.task_env(schemes=["s3"])
    assert sent["env"]["AWS_ENDPOINT_URL"] == "http://127.0.0.1:9"
    assert not set(sent["env"]) & set(executor.CREDENTIALS)

    # on a node: the settings are applied, the credentials only where the node has none of its own
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "node-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "node-secret")
    executor.apply_task_env({"env": {"AWS_ENDPOINT_URL": "http://127.0.0.1:10", "AWS_ACCESS_KEY_ID": "k",
                                     "AWS_SECRET_ACCESS_KEY": "s"}, "cluster": True})
    assert (os.environ["AWS_ENDPOINT_URL"], os.environ["AWS_SECRET_ACCESS_KEY"]) == ("http://127.0.0.1:10", "node-secret")


def test_no_task_gets_the_storage_environment_through_runtime_env() -> None:
    pkg = Path(__file__).resolve().parents[1] / "slimpipe"
    found = [str(p) for p in pkg.rglob("*.py") if re.search(r"[\'\"]env_vars[\'\"]", p.read_text())]
    assert found == []
