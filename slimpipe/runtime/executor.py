"""The step protocol and the one executor: the only place in slimpipe that submits and awaits Ray tasks.

Nothing outside :mod:`slimpipe.runtime` and :mod:`slimpipe.engine` (which starts or attaches Ray) calls
``ray.remote``, ``ray.put``, ``ray.get``, ``ray.wait`` or ``ray.cancel``. Every caller goes through an
:class:`Executor`, in one of two shapes:

* **steps of a job with a workspace** — ``Executor(ws, "dedup").run(Step(...))``: a step is a name, a
  task function and one argument tuple per task. Each task is called as ``fn(ctx, *args)`` with a
  :class:`TaskContext` (the workspace, the step, the task's index) and returns a small JSON-able dict.
  Its inputs are named in its arguments, which the driver takes from earlier steps' committed manifests
  (never from a listing); its outputs are files it commits through the workspace.
* **tasks with no workspace** (mix, propose's proxies, the input scan) — ``Executor(label="mix",
  progress=...)`` built without a workspace: :meth:`Executor.map` runs ``fn(job, *args)`` once per job,
  :meth:`Executor.call` runs one remote call and returns its value. Such callers keep their own resume
  (the token cache, a proxy's checkpoints) and pass it in as ``cached``.

What the executor gives both:

* **one loop** (:meth:`Executor._drive`) — tasks are submitted in job order with at most ``window`` in
  flight (``map``: about 2 per CPU; a step: every task at once unless its ``window`` says otherwise), and
  results come back in job order whatever order they finish in, with a progress line (label, unit).
  ``cached[i]`` (not None) skips job ``i``; ``stop(results)``, asked after every batch of completions,
  may end the run early: tasks in flight are cancelled and given up to a minute to wind down (their
  results stay ``None``). A task's failure cancels what is in flight and is raised, unless ``on_error``
  turns it into a result.
* **steps side by side** — :meth:`Executor.run_together` runs steps that do not depend on each other as one
  set of tasks (each committed as a step), so no CPU idles at the end of the first.
* **warm workers** — :meth:`Executor.warm` starts a job's worker set-up (imports, compiled kernels) on every
  CPU while the driver plans; Ray keeps those workers for every later step of the job.
* **resources per call** — ``num_cpus``, ``num_gpus``, ``memory`` bytes (capped to what one node has,
  so Ray never packs more tasks on a node than its memory holds) and ``max_retries`` for tasks lost with
  their node.
* **shared inputs** — :meth:`Executor.share` puts one large read-only object in Ray's object store once;
  passed as a top-level task argument (an item of ``args`` or of a step's argument tuple) every task
  receives the object itself, fetched once per node.
* **resume** (steps) — a task whose marker ``<step>/task00042.json`` exists is not run again, and a step
  whose manifest ``<step>.done.json`` exists is skipped without touching Ray. Every task is
  deterministic, so a job killed at any point and run again ends with the same bytes.
* **environment** — tasks reach the same store as the driver, and no secret is ever written by Ray.
  :func:`remote_task` is the one way to make a Ray task; see :func:`task_env` for what it forwards and
  how (a task argument applied inside the task, never ``runtime_env``, whose values Ray writes to
  ``runtime_env_agent.log`` and shows in the task metadata of the dashboard).
* **stats** (steps) — seconds per step, and the files and bytes each step left in the workspace.
* **cleanup** (steps) — :meth:`Executor.cleanup` deletes the workspace when the job has succeeded, unless
  the user asked to keep intermediates.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from slimpipe import storage
from slimpipe.progress import Progress
from slimpipe.runtime.workspace import Workspace

# How long tasks cancelled by an early stop may take to wind down before the caller goes on (and, say,
# cleans the folder they write into).
WIND_DOWN_S = 60.0


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
    window: int = 0  # tasks in flight at once; 0 = every task (Ray's resource requests bound what runs)


def _run_task(ws: Workspace, step: str, index: int, fn: Callable[..., dict], *args: Any) -> dict:
    marker = ws.path(step, f"task{index:05d}.json")
    if storage.exists(marker):
        return storage.read_json(marker)
    ws.files_written = ws.bytes_written = 0
    result = dict(fn(TaskContext(ws, step, index), *args))
    result["_io"] = {"files": ws.files_written, "bytes": ws.bytes_written}
    data = storage.dumps_json(result)
    storage.write_bytes_atomic(marker, data)
    return json.loads(data)  # the same types whether the task ran now or in an earlier, killed run


def _warm(fn: Callable[[], Any]) -> None:
    try:
        fn()
    except Exception:  # noqa: BLE001 - a warm-up only saves time; the task that needs it says what failed
        pass


def _cancel(refs: list) -> None:
    """Cancel the tasks of REFS that have not finished. A task that has finished is left alone: Ray 2.60's
    core worker can abort the whole driver process (``Check failed: it != submissible_tasks_.end() Tried to
    complete task that was not pending``) when a cancel meets the reply of a task finishing at that moment,
    which a full test run hit when two tasks of one map failed together; asking first narrows that window
    to the time between the two calls."""
    import ray

    if not refs:
        return
    _, running = ray.wait(refs, num_returns=len(refs), timeout=0, fetch_local=False)
    for ref in running:
        ray.cancel(ref, force=False)


class Executor:
    """Submits and awaits slimpipe's Ray tasks (see the module's docstring); Ray must be started
    (:func:`slimpipe.engine.ensure_ray`).

    With a workspace it runs a job's steps (:meth:`run`); ``timings`` and ``intermediates`` hold their
    stats. Without one (``Executor(label="mix")``) it runs plain tasks (:meth:`map`, :meth:`call`).
    """

    def __init__(self, ws: Workspace | None = None, label: str = "", progress: bool = True, max_retries: int = 3):
        self.ws, self.label, self.progress, self.max_retries = ws, label, progress, max_retries
        self.timings: dict[str, float] = {}
        self.intermediates: dict[str, dict[str, int]] = {}
        self._memory_cap: int | None = None
        self._checked = False
        self._warming: list = []

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

    def _options(self, num_cpus: float, num_gpus: float, memory: int, max_retries: int | None) -> dict[str, Any]:
        """Ray options of one kind of task: its resource requests and retries."""
        options: dict[str, Any] = {"num_cpus": num_cpus,
                                   "max_retries": self.max_retries if max_retries is None else max_retries}
        if num_gpus:
            options["num_gpus"] = num_gpus
        if memory and (mem := self._cap(memory)):
            options["memory"] = mem
        return options

    # ------------------------------------------------------------------------------------ steps

    def run(self, step: Step) -> list[dict]:
        """Run (or resume, or skip) one step; returns every task's result in task order."""
        return self.run_together(step)[0]

    def run_together(self, *steps: Step) -> list[list[dict]]:
        """Run (or resume, or skip) steps that do not depend on each other as one set of tasks, submitted in
        the order given (put a long single task first): Ray keeps every CPU busy across their boundary
        instead of idling at the end of the first. Returns each step's results, in task order; each step
        is committed (its manifest, its seconds from the start to its last task) and recorded in the order
        given."""
        if self.ws is None:
            raise ValueError("Executor.run needs a workspace: Executor(ws, label)")
        out: list[list[dict] | None] = [None] * len(steps)
        todo = []
        for k, step in enumerate(steps):
            if (done := self.ws.done(step.name)) is not None:
                out[k] = done["results"]
                self._record(step.name, done)
            else:
                todo.append(k)
        if not todo:
            return out  # type: ignore[return-value]
        if not self._checked:
            self._check_cluster()
        start = time.perf_counter()
        ws = self.ws
        jobs = [(k, i) for k in todo for i in range(len(steps[k].args))]  # (step, task) in submission order
        remotes = {k: remote_task(_run_task, **self._options(steps[k].num_cpus, 0, steps[k].memory, None))
                   for k in todo}
        left = {k: len(steps[k].args) for k in todo}
        ended = {k: start for k in todo}

        def submit(j: int):
            k, i = jobs[j]
            return remotes[k].remote(ws, steps[k].name, i, steps[k].fn, *steps[k].args[i])

        def arrived(j: int) -> None:
            k = jobs[j][0]
            left[k] -= 1
            if not left[k]:
                ended[k] = time.perf_counter()

        # every step's window (0 = all of its tasks) adds up; a single step keeps its own
        window = 0 if all(steps[k].window == 0 for k in todo) else sum(
            steps[k].window or len(steps[k].args) for k in todo)
        main = max(todo, key=lambda k: len(steps[k].args))  # the progress line is the biggest step's
        flat = self._drive(len(jobs), submit, window=window, label=self._label(steps[main].name),
                           unit=steps[main].unit, arrived=arrived)
        for k in todo:
            results = [r for (s, _), r in zip(jobs, flat, strict=True) if s == k]
            manifest = {
                "results": results,
                "seconds": round(ended[k] - start, 3),
                "intermediates": {"files": sum(r["_io"]["files"] for r in results),
                                  "bytes": sum(r["_io"]["bytes"] for r in results),
                                  "markers": len(results)},
            }
            self.ws.commit(steps[k].name, manifest)
            self._record(steps[k].name, manifest)
            out[k] = results
        return out  # type: ignore[return-value]

    # ------------------------------------------------------------------------------- plain tasks

    def map(self, fn: Callable[..., Any], jobs: Sequence[Any], args: Sequence[Any] = (), *,
            cached: Sequence[Any] | None = None, stop: Callable[[list], bool] | None = None,
            window: int | None = None, label: str | None = None, unit: str = "tasks", num_cpus: float = 1,
            num_gpus: float = 0, memory: int = 0, max_retries: int | None = None,
            on_error: Callable[[int, Exception], Any] | None = None) -> list:
        """``fn(job, *args)`` as one Ray task per job; the results in job order.

        ``window``: tasks in flight at once (default about 2 per CPU of the cluster). ``cached[i]`` not
        None skips job ``i`` (its result is ``cached[i]``). ``stop(results)`` is asked before the first
        submission and after every batch of completions; when it says True, tasks in flight are cancelled,
        allowed to wind down, and their results are ``None``. ``on_error(i, exc)``, if given, makes job
        ``i``'s failure its result instead of raising. Share large read-only ``args`` with :meth:`share`.
        """
        if window is None:
            from slimpipe.engine import available_cpus

            window = max(2, 2 * available_cpus())
        remote = remote_task(fn, **self._options(num_cpus, num_gpus, memory, max_retries))
        return self._drive(len(jobs), lambda i: remote.remote(jobs[i], *args), cached=cached, stop=stop,
                           window=max(1, window), label=label or self.label, unit=unit, on_error=on_error)

    def call(self, fn: Callable[..., Any], *args: Any, num_cpus: float = 1, num_gpus: float = 0, memory: int = 0,
             max_retries: int | None = None) -> Any:
        """Run ``fn(*args)`` as one Ray task (where the data is, with these resources) and return its value."""
        remote = remote_task(fn, **self._options(num_cpus, num_gpus, memory, max_retries))
        return self._drive(1, lambda _: remote.remote(*args), label=self.label, show=False)[0]

    def warm(self, fn: Callable[[], Any], most: int = 256) -> None:
        """Start ``fn()`` as one task per CPU of the cluster (at most ``most``) and return at once, so that
        worker processes import what a job's tasks need and load their compiled kernels while the driver is
        still planning; the job's first tasks then find them warm (Ray reuses its workers across steps).
        Best effort: nothing waits for these tasks and a failure in one is ignored (the task that needs the
        module or kernel reports it). Does nothing without a started Ray."""
        import ray

        if not ray.is_initialized():
            return
        from slimpipe.engine import available_cpus

        remote = remote_task(_warm, num_cpus=1, max_retries=0)
        self._warming = [remote.remote(fn) for _ in range(max(1, min(most, available_cpus())))]

    @staticmethod
    def share(obj: Any) -> Any:
        """Put one large read-only object in Ray's object store once (``ray.put``); the handle, passed as a
        top-level task argument, reaches every task as the object itself."""
        import ray

        return ray.put(obj)

    # ---------------------------------------------------------------------------------- the loop

    def _drive(self, n: int, submit: Callable[[int], Any], *, cached: Sequence[Any] | None = None,
               stop: Callable[[list], bool] | None = None, window: int = 0, label: str, unit: str = "tasks",
               on_error: Callable[[int, Exception], Any] | None = None, show: bool = True,
               arrived: Callable[[int], None] | None = None) -> list:
        """The one Ray loop: ``submit(i)`` (an object ref) for every job ``i`` not in ``cached``, in job order,
        at most ``window`` in flight (0: all); results in job order. See :meth:`map` for ``stop``/``on_error``;
        ``arrived(i)`` is told as job ``i``'s result comes in."""
        import ray

        results: list = list(cached) if cached is not None else [None] * n
        if len(results) != n:
            raise ValueError(f"{len(results)} cached results for {n} jobs")
        todo = [i for i in range(n) if results[i] is None]
        limit = window if window > 0 else max(1, len(todo))
        pending: dict[Any, int] = {}
        with Progress(label, total=n, unit=unit, enabled=self.progress and show) as bar:
            bar.update(n - len(todo))
            if stop is not None and stop(results):
                return results
            nxt = 0
            try:
                while nxt < len(todo) or pending:
                    while nxt < len(todo) and len(pending) < limit:
                        pending[submit(todo[nxt])] = todo[nxt]
                        nxt += 1
                    refs = list(pending)
                    if nxt < len(todo):  # a place in the window frees: refill at once (with every task done by then)
                        ready, _ = ray.wait(refs, num_returns=1, timeout=1.0)
                        if ready:
                            ready = set(ready) | set(ray.wait(refs, num_returns=len(refs), timeout=0)[0])
                    else:  # everything is submitted: collect in batches (one wait per ~64 tasks, not per task)
                        ready, _ = ray.wait(refs, num_returns=min(len(refs), 64), timeout=1.0)
                    for ref in sorted(ready, key=pending.__getitem__):
                        i = pending.pop(ref)
                        try:
                            results[i] = ray.get(ref)
                        except Exception as exc:
                            if on_error is None:
                                raise
                            results[i] = on_error(i, exc)
                        if arrived is not None:
                            arrived(i)
                        bar.update(1)
                    if stop is not None and stop(results):
                        _cancel(list(pending))
                        if pending:  # let cancelled tasks wind down before the caller cleans their folder
                            ray.wait(list(pending), num_returns=len(pending), timeout=WIND_DOWN_S)
                        pending.clear()
                        return results
            finally:
                _cancel(list(pending))  # a failure (or Ctrl-C): nothing keeps running for a result no one reads
        return results

    def _label(self, name: str) -> str:
        return f"{self.label}: {name}" if self.label else name

    def _record(self, name: str, manifest: dict) -> None:
        self.timings[name] = manifest.get("seconds", 0.0)
        self.intermediates[name] = dict(manifest.get("intermediates", {}))

    def cleanup(self, keep_intermediates: bool = False) -> None:
        """After success: delete the workspace unless asked to keep it."""
        if self.ws is not None and not keep_intermediates:
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
