"""Run one stage of a job as Ray tasks, resumably.

A stage is complete when ``<work>/<name>.done.json`` exists; it holds every task's small result and the
stage's wall time, so a resumed job skips finished stages without touching Ray. Tasks themselves mark
their own outputs (see :mod:`slimpipe.workdir`), so a stage killed half-way redoes only the
unfinished tasks.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from slimpipe.progress import Progress
from slimpipe.workdir import WorkDir


class StageRunner:
    def __init__(self, wd: WorkDir, label: str, progress: bool = True):
        self.wd, self.label, self.progress = wd, label, progress
        self.timings: dict[str, float] = {}

    def run(self, name: str, fn: Callable, arglist: list[tuple], unit: str = "tasks",
            num_cpus: float = 1) -> list:
        import ray

        if (done := self.wd.done(name)) is not None:
            self.timings[name] = done.get("seconds", 0.0)
            return done["results"]
        start = time.perf_counter()
        remote = ray.remote(num_cpus=num_cpus, max_retries=2)(fn)
        refs = [remote.remote(*args) for args in arglist]
        index = {r: i for i, r in enumerate(refs)}
        results: list = [None] * len(refs)
        with Progress(f"{self.label}: {name}", total=len(refs), unit=unit, enabled=self.progress) as bar:
            pending = list(refs)
            while pending:
                ready, pending = ray.wait(pending, num_returns=1)
                results[index[ready[0]]] = ray.get(ready[0])
                bar.update(1)
        seconds = round(time.perf_counter() - start, 3)
        self.timings[name] = seconds
        self.wd.finish(name, {"results": results, "seconds": seconds})
        return results
