"""slimpipe dedup measured per stage, for ``bench_dedup.py``: the driver's memory in each stage, the
intermediates each stage writes (files, bytes), and both projected to 1 TB of input.

* Driver memory: the command runs with progress on (stderr lines ``[dedup: STAGE] started``); a
  sampler records the driver process's RSS every 0.2 s, and each stage gets the peak between its
  start line and the next one. Ray's processes are not the driver; they are in the tree figures.
* Intermediates: the job's own stats (``report.json`` → ``intermediates``: files, bytes and tasks per
  step, counted by the runtime as it commits them), and the committed step manifests on disk from a
  ``--keep-intermediates`` run.
* Projection to 1 TB of input files (compressed, as the plan sizes them): map steps get one task per
  256 MB input range (the plan's default), partition steps one task per 1 GB of input (its auto rule), and every
  step keeps the files per task and bytes per input byte measured here. The small corpus would run its
  connected components in one process; 1 TB takes the distributed path, so the intermediates are
  measured on a second run with ``--max-edges-in-memory 0`` (and ``--keep-intermediates``).
  Driver memory at 1 TB = the stage's measured peak + 5 x its step manifest (the per-task results the
  driver holds, JSON text to Python objects) scaled to the projected task count.
"""

from __future__ import annotations

import math
import re
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from _common import CODE, MB, PYTHON, Measured, TreeSampler, _kill_tree

from slimpipe.dedup import job as dedup_job

TB = 1e12
RANGE_BYTES = dedup_job.RANGE_BYTES  # the dedup plan's input range (one map task each)
PARTITION_BYTES = dedup_job.PARTITION_INPUT_BYTES  # the dedup plan's auto partition size (input bytes)
PY_OBJECTS_PER_JSON_BYTE = 5
STARTED = re.compile(r"^\[(?:[^\]:]+: )?(?P<stage>[^\]]+)\] started")


@dataclass
class StagedRun:
    measured: Measured
    stage_start: dict[str, float] = field(default_factory=dict)  # seconds after launch
    driver_peak: dict[str, int] = field(default_factory=dict)  # bytes
    driver_overall: int = 0


class _DriverSampler(TreeSampler):
    """TreeSampler that also keeps a timeline of the root (driver) process's RSS."""

    def __init__(self, pid: int, t0: float, interval: float = 0.2):
        super().__init__(pid, interval)
        self.t0 = t0
        self.timeline: list[tuple[float, int]] = []

    def sample(self) -> None:
        super().sample()
        try:
            self.timeline.append((time.perf_counter() - self.t0, self.root.memory_info().rss))
        except self._psutil.Error:
            pass


def run_staged(sources: list[Path], out: Path, *args: str, timeout: float = 3600, cwd: Path = CODE) -> StagedRun:
    """``slimpipe dedup SOURCES -o OUT ARGS`` (progress on) in a fresh process with a fresh local Ray
    (in ``cwd``: the checkout whose slimpipe runs, with PYTHONPATH pointing there too)."""
    import os

    if out.exists():
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [str(PYTHON), "-m", "slimpipe.cli", "dedup", *map(str, sources), "-o", str(out), *args]
    env = {**os.environ, "SLIMPIPE_RAY_ADDRESS": "", "RAY_ADDRESS": ""}
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=cwd,
                            start_new_session=True)
    starts: dict[str, float] = {}
    err_lines: list[str] = []

    def read_stderr() -> None:
        for line in proc.stderr:
            err_lines.append(line)
            if (m := STARTED.match(line)) and m["stage"] not in starts:
                starts[m["stage"]] = time.perf_counter() - t0

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    with _DriverSampler(proc.pid, t0) as sampler:
        try:
            out_text = proc.stdout.read()
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_tree(proc.pid)
            proc.wait()
            err_lines.append(f"\ntimed out after {timeout} s")
            out_text = ""
    reader.join(timeout=10)
    m = Measured(proc.returncode, time.perf_counter() - t0, sampler.peaks, out_text, "".join(err_lines))
    run = StagedRun(m, starts, driver_overall=max((r for _, r in sampler.timeline), default=0))
    order = sorted(starts.items(), key=lambda kv: kv[1])
    for i, (stage, start) in enumerate(order):
        end = order[i + 1][1] if i + 1 < len(order) else math.inf
        inside = [r for t, r in sampler.timeline if start <= t < end]
        before = [r for t, r in sampler.timeline if t < start][-1:]  # a stage shorter than one sample
        run.driver_peak[stage] = max(inside or before or [0])
    return run


def supports(option: str) -> bool:
    """Whether ``slimpipe dedup`` has an option (the benchmark runs on older trees too)."""
    res = subprocess.run([str(PYTHON), "-m", "slimpipe.cli", "dedup", "--help"], capture_output=True, text=True,
                         cwd=CODE)
    return option in res.stdout


def manifest_bytes(out: Path) -> dict[str, int]:
    """Size of each committed step manifest ``<step>.done.json`` left by a --keep-intermediates run."""
    work = out / "_work"
    return {p.name[: -len(".done.json")]: p.stat().st_size for p in work.glob("*.done.json")} if work.is_dir() else {}


def listed_intermediates(out: Path) -> dict[str, dict[str, int]]:
    """Files and bytes under OUT/_work by top-level folder (for trees whose report has no stats)."""
    stats: dict[str, dict[str, int]] = {}
    work = out / "_work"
    for p in work.rglob("*") if work.is_dir() else []:
        if p.is_file():
            key = p.relative_to(work).parts[0].split(".")[0]
            s = stats.setdefault(key, {"files": 0, "bytes": 0, "markers": 0})
            s["files"] += 1
            s["bytes"] += p.stat().st_size
    return stats


def projection_rows(basis: dict[str, dict[str, int]], driver: dict[str, int], manifests: dict[str, int],
                    input_bytes: int) -> list[list[str]]:
    """Per step of ``basis`` (the job's intermediates stats): measured tasks/files/bytes/driver MB and
    their 1 TB projections."""
    scale = TB / input_bytes
    t_map = math.ceil(TB / RANGE_BYTES)
    t_part = math.ceil(TB / PARTITION_BYTES)
    first = next(iter(basis.values()), {}).get("markers", 0)  # the read step: one task per input range
    rows = []
    tot = [0, 0, 0.0, 0.0]
    for step, s in basis.items():
        tasks = s.get("markers") or 1
        kind = "map" if tasks == first else "partition"
        tasks_tb = t_map if kind == "map" else t_part
        files_tb = s["files"] / tasks * tasks_tb
        bytes_tb = s["bytes"] * scale
        drv = driver.get(step, 0)
        drv_tb = drv + PY_OBJECTS_PER_JSON_BYTE * manifests.get(step, 0) / tasks * tasks_tb
        tot = [tot[0] + s["files"], tot[1] + s["bytes"], tot[2] + files_tb, tot[3] + bytes_tb]
        rows.append([step, f"{tasks:,}", f"{s['files']:,}", f"{s['bytes'] / MB:,.2f}",
                     f"{drv / MB:,.0f}" if drv else "-", f"{kind}: {tasks_tb:,}", f"{files_tb:,.0f}",
                     f"{bytes_tb / 1e9:,.1f}", f"{drv_tb / MB:,.0f}" if drv else "-"])
    rows.append(["**all steps**", "", f"{tot[0]:,}", f"{tot[1] / MB:,.2f}", "", "", f"{tot[2]:,.0f}",
                 f"{tot[3] / 1e9:,.1f}", ""])
    return rows


PROJECTION_HEADER = ["stage", "tasks", "files", "MB", "driver peak MB", "tasks @1 TB", "files @1 TB",
                     "GB @1 TB", "driver MB @1 TB"]


# ----------------------------------------------------------------------------------- fixed cost (#21.2)
# Ray's own start and stop in a fresh Python process, with the arguments slimpipe.engine gives a private Ray:
# what a `slimpipe dedup` cannot go below, whatever the checkout.
RAY_ONLY = (
    "import os, ray\n"
    "os.environ['RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER'] = '0'\n"
    "ray.init(address='local', include_dashboard=False, num_cpus=os.cpu_count(), _node_ip_address='127.0.0.1',\n"
    "         log_to_driver=False, logging_level=40, object_store_memory=512 << 20)\n"
)


@dataclass
class FixedCostRuns:
    ray: list[float] = field(default_factory=list)  # bare Ray start + stop, seconds
    wall: dict[tuple[str, str], list[float]] = field(default_factory=dict)  # (checkout label, job) -> seconds
    stages: dict[tuple[str, str], list[float]] = field(default_factory=dict)  # sum of the job's step seconds
    cpu: dict[tuple[str, str], list[float]] = field(default_factory=dict)  # CPU s of the reaped tree (not workers)
    ray_cpu: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def _children_cpu() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _dedup_wall(checkout: Path, corpus: Path, out: Path) -> tuple[float, float, float | None, str | None]:
    """Wall seconds of ``slimpipe dedup CORPUS -o OUT --preset slimpajama --quiet`` run from ``checkout``, the CPU
    seconds of the processes it reaps (the driver, Ray's GCS and raylet; not Ray's workers, whom the raylet does
    not reap), the sum of its steps' seconds (report.json), and an error line if it failed."""
    import json
    import os
    import subprocess

    if out.exists():
        shutil.rmtree(out)
    cmd = [str(PYTHON), "-m", "slimpipe.cli", "dedup", str(corpus), "-o", str(out), "--preset", "slimpajama",
           "--quiet"]
    env = {**os.environ, "PYTHONPATH": str(checkout), "SLIMPIPE_RAY_ADDRESS": "", "RAY_ADDRESS": ""}
    t0, c0 = time.perf_counter(), _children_cpu()
    res = subprocess.run(cmd, cwd=checkout, env=env, capture_output=True, text=True)
    wall, cpu = time.perf_counter() - t0, _children_cpu() - c0
    if res.returncode:
        return wall, cpu, None, f"{checkout} on {corpus.name}: exit {res.returncode}: {res.stderr.strip()[-300:]}"
    stages = sum(json.loads((out / "report.json").read_text())["timings"].values())
    return wall, cpu, stages, None


def measure_fixed_cost(checkouts: dict[str, Path], jobs: dict[str, Path], work: Path, reps: int = 3,
                       log=print) -> FixedCostRuns:
    """Interleaved repetitions: bare Ray, then every job from every checkout (after one untimed run of the first
    job from each checkout, so that its compiled-kernel cache is written, as after a user's first run)."""
    import subprocess

    runs = FixedCostRuns()
    first, corpus = next(iter(jobs.items()))
    for label, code in checkouts.items():
        _dedup_wall(code, corpus, work / f"{label}-{first}")
    for rep in range(reps):
        t0, c0 = time.perf_counter(), _children_cpu()
        subprocess.run([str(PYTHON), "-c", RAY_ONLY], capture_output=True, cwd=work)
        runs.ray.append(time.perf_counter() - t0)
        runs.ray_cpu.append(_children_cpu() - c0)
        for job, corpus in jobs.items():
            for label, code in checkouts.items():
                wall, cpu, stages, err = _dedup_wall(code, corpus, work / f"{label}-{job}")
                if err:
                    runs.errors.append(err)
                    continue
                runs.wall.setdefault((label, job), []).append(wall)
                runs.cpu.setdefault((label, job), []).append(cpu)
                runs.stages.setdefault((label, job), []).append(stages)
                log(f"  rep {rep + 1}: {label} {job}: {wall:.1f} s, CPU {cpu:.1f} s (steps {stages:.1f} s); "
                    f"bare Ray {runs.ray[-1]:.1f} s, CPU {runs.ray_cpu[-1]:.1f} s")
    return runs
