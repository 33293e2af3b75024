"""Issue #21.2, small jobs start fast: what the fixed cost of a ``slimpipe dedup`` rests on.

No timing here (``benchmarks/bench_dedup.py --fixed-cost`` measures it): the dedup driver and its workers
import no heavy library, numba's compiled kernels load from the cache in a new process, two independent steps
run as one set of tasks with both committed, worker warm-up tasks run (and a failing one harms nothing), Ray
starts while the driver's modules load, and the report's plots drawn early are the report's plots.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from slimpipe import storage
from slimpipe.runtime import Executor, Step, Workspace
from tests.test_dedup_job import _run, corpus  # noqa: F401 - the module's corpus fixture

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "matplotlib", "sklearn", "transformers", "lm_eval", "tensorflow")


def _python(code: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout.strip().splitlines()[-1]


def test_dedup_driver_and_worker_start_import_no_heavy_library() -> None:
    """The dedup driver's modules, and a worker's warm-up (every step's code and a numba kernel), leave torch,
    matplotlib (imported by the report only) and the like unimported: seconds of start-up on every worker."""
    code = ("import json, sys\nimport slimpipe.dedup.job as job\njob.warm_worker()\n"
            f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))")
    assert json.loads(_python(code)) == []


def test_numba_kernels_load_from_the_cache_in_a_new_process() -> None:
    """The kernels are ``@njit(cache=True)``: a second process loads what the worker warm-up uses from the cache
    (no compilation)."""
    code = ("import json\nfrom numba.core.dispatcher import Dispatcher\n"
            "from slimpipe.dedup import components, minhash\nfrom slimpipe.dedup.job import warm_worker\n"
            "from slimpipe.text import normalize\nwarm_worker()\n"
            "ks = [k for m in (minhash, normalize, components) for k in vars(m).values() if isinstance(k, Dispatcher)]\n"
            "print(json.dumps([sum(sum(k.stats.cache_hits.values()) for k in ks),\n"
            "                  sum(sum(k.stats.cache_misses.values()) for k in ks)]))")
    _python(code)  # writes the cache if this checkout has none yet
    hits, misses = json.loads(_python(code))
    assert hits >= 1 and misses == 0, f"cache hits {hits}, misses {misses}: a kernel was compiled again"


def _double(ctx, x: int) -> dict:
    ctx.ws.save_array(f"double/{ctx.index}.npy", np.array([2 * x]))
    return {"y": 2 * x}


def _negate(ctx, x: int) -> dict:
    return {"y": -x}


def test_run_together_commits_each_step_like_run(tmp_path: Path, ray_session) -> None:
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import tests/
    ws = Workspace(tmp_path / "out")
    ex = Executor(ws, "t", progress=False)
    one = Step("negate", _negate, [(7,)])
    many = Step("double", _double, [(i,) for i in range(5)])
    neg, dbl = ex.run_together(one, many)
    assert [r["y"] for r in neg] == [-7] and [r["y"] for r in dbl] == [0, 2, 4, 6, 8]
    assert list(ex.timings) == ["negate", "double"]  # recorded in the order given
    assert ex.intermediates["double"]["files"] == 5 and ex.intermediates["negate"]["files"] == 0
    for name in ("negate", "double"):
        assert ws.done(name) is not None
    # committed steps are skipped; a step with its manifest gone runs again (the other is left alone)
    storage.delete_file(ws.manifest_path("double"))
    storage.delete_file(ws.path("double", "task00002.json"))
    again = Executor(ws, "t", progress=False).run_together(one, many)
    assert [[r["y"] for r in rs] for rs in again] == [[-7], [0, 2, 4, 6, 8]]
    assert ex.run(one) == neg  # run(step) is run_together(step)


def _touch(folder: str) -> None:
    Path(folder, f"warm-{os.getpid()}").write_text("warm")


def _fail() -> None:
    raise RuntimeError("a warm-up that fails")


def test_warm_runs_on_the_workers_and_a_failure_is_harmless(tmp_path: Path, ray_session) -> None:
    import functools

    import ray
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ex = Executor(label="t", progress=False)
    ex.warm(functools.partial(_touch, str(tmp_path)))
    refs = list(ex._warming)
    assert len(refs) == 2  # one per CPU of the test's Ray
    assert ray.get(refs, timeout=120) == [None, None]
    assert list(tmp_path.glob("warm-*"))
    ex.warm(_fail)
    assert ray.get(list(ex._warming), timeout=120) == [None, None]


def test_ensure_ray_runs_preload_and_raises_its_error(ray_session) -> None:
    from slimpipe.engine import ensure_ray

    seen = []
    ensure_ray(preload=lambda: seen.append("loaded"))
    assert seen == ["loaded"]

    def broken() -> None:
        raise ImportError("no such module")

    with pytest.raises(ImportError, match="no such module"):
        ensure_ray(preload=broken)


def test_plots_drawn_early_are_the_reports_plots(corpus, tmp_path, ray_session) -> None:  # noqa: F811
    """The plots are drawn from the read and keep steps while the write step runs: those numbers are the final
    report's (else the plots would be drawn again), the PNGs are the ones the report alone gives, and a report
    with another number gets its own plots."""
    from slimpipe.dedup import results as R
    from slimpipe.dedup.params import load_preset
    from slimpipe.dedup.report import BackgroundPlots, early_plot_data, plot_data, render_plots

    src, _ = corpus
    out = tmp_path / "out"
    report = _run(src, out, keep_intermediates=True)
    work = out / "_work"
    read = [R.ReadResult.from_dict(r) for r in json.loads((work / "read.done.json").read_text())["results"]]
    keep = {m: [R.KeepResult.from_dict(r) for r in json.loads((work / f"keep_{m}.done.json").read_text())["results"]]
            for m in ("global", "local")}
    early = early_plot_data(load_preset("slimpajama"), read, keep)
    assert early == plot_data(report)
    pngs = BackgroundPlots(early).pngs_for(report)
    assert pngs is not None and pngs == render_plots(plot_data(report))
    assert {p.name: p.read_bytes() for p in (out / "plots").glob("*.png")} == pngs
    other = json.loads(json.dumps(report))
    first = next(iter(other["sources"]))
    other["sources"][first][other["mode"]]["kept_bytes"] += 1
    assert BackgroundPlots(early).pngs_for(other) is None
