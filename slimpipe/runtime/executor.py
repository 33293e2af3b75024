"""The step protocol and the one executor that runs steps as Ray tasks.

A **step** is a name, a task function and one argument tuple per task. Each task is called as
``fn(ctx, *args)`` with a :class:`TaskContext` (the workspace, the step, the task's index) and returns a
small JSON-able dict. Its inputs are named in its arguments, which the driver takes from earlier steps'
committed manifests (never from a listing); its outputs are files it commits through the workspace.

The executor runs each step once:

* **resume** — a task whose marker ``<step>/task00042.json`` exists is not run again, and a step whose
  manifest ``<step>.done.json`` exists is skipped without touching Ray. Every task is deterministic,
  so a job killed at any point and run again ends with the same bytes.
* **resources** — each task asks Ray for ``num_cpus`` and ``memory`` bytes (capped to what one node
  has), so Ray never packs more tasks on a node than its memory holds. Tasks lost with their node are
  retried (``max_retries``).
* **environment** — tasks reach the same store as the driver, and no secret is ever written by Ray.
  :func:`remote_task` is the one way to make a Ray task that touches storage; see :func:`task_env`
  for what it forwards and how (a task argument applied inside the task, never ``runtime_env``, whose
  values Ray writes to ``runtime_env_agent.log`` and shows in the task metadata of the dashboard).
* **stats** — seconds per step, and the files and bytes each step left in the workspace.
* **cleanup** — :meth:`Executor.cleanup` deletes the workspace when the job has succeeded, unless the
  user asked to keep intermediates.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from slimpipe import storage
from slimpipe.progress import Progress
from slimpipe.runtime.workspace import Workspace


@dataclass
class TaskContext:
    ws: Workspace
    step: str
    index: int


@dataclass
class Step:
    name: str
    fn: Callable[..., dict]
    args: list[tuple] = field(default_factory=list)
    unit: str = "tasks"
    num_cpus: float = 1
    memory: int = 0  # bytes one task may hold at its peak; 0 = no request


def _run_task(ws: Workspace, step: str, index: int, fn: Callable[..., dict], args: tuple) -> dict:
    marker = ws.path(step, f"task{index:05d}.json")
    if storage.exists(marker):
        return storage.read_json(marker)
    ws.files_written = ws.bytes_written = 0
    result = dict(fn(TaskContext(ws, step, index), *args))
    result["_io"] = {"files": ws.files_written, "bytes": ws.bytes_written}
    data = storage.dumps_json(result)
    storage.write_bytes_atomic(marker, data)
    return json.loads(data)  # the same types whether the task ran now or in an earlier, killed run


class Executor:
    """Runs a job's steps on the current Ray; ``timings`` and ``intermediates`` hold the stats."""

    def __init__(self, ws: Workspace, label: str, progress: bool = True, max_retries: int = 3):
        self.ws, self.label, self.progress, self.max_retries = ws, label, progress, max_retries
        self.timings: dict[str, float] = {}
        self.intermediates: dict[str, dict[str, int]] = {}
        self._memory_cap: int | None = None
        self._checked = False

    def _check_cluster(self) -> None:
        """Warn once when a local workspace meets a multi-node cluster (every node must see the folder)."""
        import ray

        self._checked = True
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        if len(nodes) > 1 and not self.ws.folder.shared:
            print(f"warning: intermediates are in the local folder {self.ws.root} on a {len(nodes)}-node Ray "
                  "cluster: every node must see it (a shared mount); otherwise give -o or --scratch an object "
                  "store URI such as s3://bucket/prefix", file=sys.stderr)

    def _cap(self, memory: int) -> int:
        import ray

        if self._memory_cap is None:
            nodes = [n for n in ray.nodes() if n.get("Alive")]
            per_node = [n.get("Resources", {}).get("memory", 0) for n in nodes]
            self._memory_cap = int(0.8 * min(per_node)) if per_node and min(per_node) > 0 else 0
        return min(memory, self._memory_cap) if self._memory_cap else 0

    def run(self, step: Step) -> list[dict]:
        """Run (or resume, or skip) one step; returns every task's result in task order."""
        if (done := self.ws.done(step.name)) is not None:
            self._record(step.name, done)
            return done["results"]
        if not self._checked:
            self._check_cluster()
        start = time.perf_counter()
        options: dict = {"num_cpus": step.num_cpus, "max_retries": self.max_retries}
        if step.memory and (mem := self._cap(step.memory)):
            options["memory"] = mem
        remote = remote_task(_run_task, **options)
        refs = [remote.remote(self.ws, step.name, i, step.fn, args) for i, args in enumerate(step.args)]
        results = self.wait(refs, f"{self.label}: {step.name}", step.unit)
        manifest = {
            "results": results,
            "seconds": round(time.perf_counter() - start, 3),
            "intermediates": {"files": sum(r["_io"]["files"] for r in results),
                              "bytes": sum(r["_io"]["bytes"] for r in results),
                              "markers": len(results)},
        }
        self.ws.commit(step.name, manifest)
        self._record(step.name, manifest)
        return results

    def wait(self, refs: list, label: str, unit: str = "tasks") -> list:
        """The one Ray wait loop: results in submission order, progress as they finish."""
        import ray

        index = {r: i for i, r in enumerate(refs)}
        results: list = [None] * len(refs)
        with Progress(label, total=len(refs), unit=unit, enabled=self.progress) as bar:
            pending = list(refs)
            while pending:
                ready, pending = ray.wait(pending, num_returns=min(len(pending), 64), timeout=1.0)
                for r in ready:
                    results[index[r]] = ray.get(r)
                if ready:
                    bar.update(len(ready))
        return results

    def _record(self, name: str, manifest: dict) -> None:
        self.timings[name] = manifest.get("seconds", 0.0)
        self.intermediates[name] = dict(manifest.get("intermediates", {}))

    def cleanup(self, keep_intermediates: bool = False) -> None:
        """After success: delete the workspace unless asked to keep it."""
        if not keep_intermediates:
            self.ws.delete()


# ----------------------------------------------------------------------------------------------------
# the storage environment of tasks

# Which variables of slimpipe.storage.ENV_VARS each remote scheme needs (by name prefix).
_FAMILIES = {"s3": ("AWS_",), "s3a": ("AWS_",), "s3n": ("AWS_",), "gs": ("GOOGLE_", "STORAGE_EMULATOR_HOST"),
             "gcs": ("GOOGLE_", "STORAGE_EMULATOR_HOST"), "hdfs": ("HADOOP_", "CLASSPATH"),
             "viewfs": ("HADOOP_", "CLASSPATH")}
# The credentials among them (and what selects them): sent only when allowed, applied only on a node
# that has none of its own. Everything else (endpoint, region, emulator host) is a setting.
CREDENTIALS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE")
# Signs that a node has AWS credentials of its own (its environment, a profile file, a web identity).
_OWN_AWS = ("AWS_ACCESS_KEY_ID", "AWS_PROFILE", "AWS_WEB_IDENTITY_TOKEN_FILE",
            "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI")
FORWARD_CREDENTIALS_ENV = "SLIMPIPE_FORWARD_CREDENTIALS"


def task_env(schemes: Iterable[str] | None = None) -> dict[str, Any]:
    """What the driver sends its tasks so that they reach the same stores: ``{"env": {...}, "cluster": bool}``.

    * Only the variables the remote schemes in use need (``schemes``, default: every remote scheme this
      process has resolved, :func:`slimpipe.storage.schemes_in_use`): nothing when every path is local.
    * On the private Ray this process started, the workers inherited the driver's environment: only what
      changed since it started is sent (normally nothing).
    * On a cluster (``--ray-address``, ``ray job submit``) the settings are sent; the credentials too,
      unless ``SLIMPIPE_FORWARD_CREDENTIALS=0`` (nodes with instance roles or credentials of their own
      then use those), and a node with credentials of its own in its environment keeps them.

    It travels as an ordinary task argument and is applied inside the task (:func:`apply_task_env`):
    Ray writes no argument to its logs or its task metadata, while a ``runtime_env`` would be logged.
    """
    from slimpipe import engine

    used = storage.schemes_in_use() if schemes is None else set(schemes)
    prefixes = tuple(p for s in used for p in _FAMILIES.get(s.lower(), ()))
    env = {k: v for k, v in storage.storage_env().items() if prefixes and k.startswith(prefixes)}
    started_with = engine.private_ray_env()
    if started_with is not None:  # our own Ray: its workers have the environment it started with
        return {"env": {k: v for k, v in env.items() if started_with.get(k) != v}, "cluster": False}
    if os.environ.get(FORWARD_CREDENTIALS_ENV, "1").strip().lower() in ("0", "false", "no", "off"):
        env = {k: v for k, v in env.items() if k not in CREDENTIALS}
    return {"env": env, "cluster": True}


def apply_task_env(sent: dict[str, Any]) -> None:
    """Inside a task: take the driver's storage settings, and its credentials where this node has none."""
    env = dict(sent.get("env") or {})
    if not env:
        return
    if sent.get("cluster") and (any(os.environ.get(k) for k in _OWN_AWS)
                                or os.path.exists(os.path.expanduser("~/.aws/credentials"))):
        env = {k: v for k, v in env.items() if k not in CREDENTIALS}  # the node's own credentials win
    os.environ.update(env)


def _call(sent: dict[str, Any], fn: Callable[..., Any], *args: Any) -> Any:
    apply_task_env(sent)
    return fn(*args)


class RemoteTask:
    """``ray.remote(fn).options(...)`` whose ``.remote(*args)`` also carries :func:`task_env` as an argument."""

    def __init__(self, fn: Callable[..., Any], options: dict[str, Any]):
        import ray

        self.fn = fn
        self.sent = task_env()
        self._remote = ray.remote(_call).options(**{"name": getattr(fn, "__name__", "task"), **options})

    def remote(self, *args: Any) -> Any:
        return self._remote.remote(self.sent, self.fn, *args)


def remote_task(fn: Callable[..., Any], **options: Any) -> RemoteTask:
    """The one way to make a Ray task that reads or writes storage (never ``runtime_env`` env_vars)."""
    return RemoteTask(fn, options)
