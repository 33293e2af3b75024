"""Run one stage of a path-based job as Ray tasks, resumably (``slimpipe evalset``'s build).

New jobs use :class:`slimpipe.runtime.Executor`; this runner shares its one Ray wait loop. A stage is
complete when ``<work>/<name>.done.json`` exists; it holds every task's small result and the stage's
wall time, so a resumed job skips finished stages without touching Ray. Tasks mark their own outputs
(see :mod:`slimpipe.workdir`), so a stage killed half-way redoes only the unfinished tasks.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from slimpipe import storage
from slimpipe.runtime import Executor, Workspace
from slimpipe.workdir import WorkDir


class StageRunner:
    def __init__(self, wd: WorkDir, label: str, progress: bool = True):
        self.wd, self.label, self.progress = wd, label, progress
        self.timings: dict[str, float] = {}
        self._executor = Executor(Workspace(wd.out), label, progress)

    def run(self, name: str, fn: Callable, arglist: list[tuple], unit: str = "tasks",
            num_cpus: float = 1) -> list:
        import ray

        if (done := self.wd.done(name)) is not None:
            self.timings[name] = done.get("seconds", 0.0)
            return done["results"]
        start = time.perf_counter()
        options: dict = {"num_cpus": num_cpus, "max_retries": 2}
        if env := storage.storage_env():
            options["runtime_env"] = {"env_vars": env}
        remote = ray.remote(fn).options(**options)
        results = self._executor.wait([remote.remote(*args) for args in arglist], f"{self.label}: {name}", unit)
        seconds = round(time.perf_counter() - start, 3)
        self.timings[name] = seconds
        self.wd.finish(name, {"results": results, "seconds": seconds})
        return results
