"""The dedup job: plan, then the steps of :mod:`slimpipe.dedup.steps` on :class:`slimpipe.runtime.Executor`.

read (the one read) → buckets → (verify) → components → keep → write (the second read) and, beside it,
sample → report (its plots drawn in a thread of the driver while write and sample run).

Steps hand each other typed results (:mod:`slimpipe.dedup.results`): a task returns its result's
``to_dict()`` (the executor's JSON marker, what a resumed job reads back) and the driver reads it with
``from_dict``. Each step's task arguments are its inputs' names and small values (the keep step's shared
ones as a :class:`slimpipe.dedup.steps.keep.KeepSpec`). The report is built from the parameters and a
:class:`slimpipe.dedup.results.DedupResults` (:func:`slimpipe.dedup.report.build_report`): it never sees
the job, and its sample clusters are measured by the ``sample`` step.

Each step is a set of Ray tasks over input ranges or hash partitions, exchanging bounded shuffle files
in the job's workspace (``OUT/_work`` or ``--scratch``; every path may be a URI). No task holds every
document's text, signature or edge, and the driver does no per-document work: it reads manifests and
task results. Every output is committed atomically and every step has a manifest, so a killed job
resumes and ends byte-identical to an uninterrupted one; on success the workspace is deleted unless
``keep_intermediates``.

Node ids are ``task << 40 | line within the task's range``; the catalog turns them back into the
stable ``source/file:line`` ids.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from slimpipe import storage
from slimpipe.dedup.params import DedupParams
from slimpipe.dedup.report import BackgroundPlots, build_report, early_plot_data, write_report
from slimpipe.dedup.results import (
    BucketsResult,
    ComponentsInfo,
    DedupResults,
    FastComponentsResult,
    KeepResult,
    ReadResult,
    SampleCluster,
    SendResult,
    StarFinishResult,
    StarMapResult,
    StarReduceResult,
    VerifyResult,
    WriteResult,
)
from slimpipe.dedup.steps import buckets, components, keep, read, sample, verify, write
from slimpipe.dedup.steps.common import CATALOG, MODES, REMAP
from slimpipe.io.readers import REJECT_SCHEMA, InputFile, discover_files, split_ranges
from slimpipe.io.writers import ShardInfo, write_manifest
from slimpipe.outdir import OutputError
from slimpipe.runtime import Executor, Step, Workspace
from slimpipe.runtime.workspace import remove_temporaries
from slimpipe.sources import sort_sources

RANGE_BYTES = 256 << 20  # a plain .jsonl is cut into ranges of this size, one read task each
PARTITION_INPUT_BYTES = 1 << 30  # input bytes per hash partition (auto --partitions)


@dataclasses.dataclass
class DedupPlan:
    """Inputs, ranges and partition counts; fixed for the life of the job (``plan.json``, which resume checks)."""

    params: dict  # DedupParams.to_dict(): what the tasks get
    files: list[str]  # each input file's relative name
    tasks: list[InputFile]  # the input ranges, one read (and one write) task each, in node order
    task_file: list[int]  # each task's index in ``files``
    partitions: int  # hash partitions of every shuffle
    input_fingerprint: str  # names, sizes and mtimes of the inputs
    version: int = 2

    def to_dict(self) -> dict:
        """The JSON of ``plan.json`` (its SHA-256 is the report's ``plan_sha256``)."""
        return {"version": self.version, "params": self.params, "files": list(self.files),
                "tasks": [dataclasses.asdict(t) for t in self.tasks], "task_file": list(self.task_file),
                "partitions": self.partitions, "input_fingerprint": self.input_fingerprint}


def make_plan(paths: list, params: DedupParams, source: str | None = None, partitions: int | None = None,
              range_bytes: int = RANGE_BYTES) -> DedupPlan:
    """Inputs, ranges and partition counts; fixed for the life of the job (resume checks it).

    Plain ``.jsonl`` files are cut into byte ranges by seeking to each cut and moving to the next line
    start: no pass over the data here (each range's first line number is learnt by its read task).
    """
    files = discover_files(paths, source=source)
    tasks = split_ranges(files, target_bytes=range_bytes, count_lines=False)
    index = {f.path: i for i, f in enumerate(files)}
    total = sum(f.size for f in files)
    # The read step writes ~15% of the compressed input as shuffle rows (band keys, exact hashes), so
    # 1 GB of input per partition gives reducers ~150 MB each: ~1,000 partitions for 1 TB, each reading
    # one slice of every read task's file (one or two ranged reads apiece).
    auto = max(4, math.ceil(total / PARTITION_INPUT_BYTES))
    return DedupPlan(params=params.to_dict(), files=[f.rel for f in files], tasks=list(tasks),
                     task_file=[index[t.path] for t in tasks], partitions=int(partitions or auto),
                     input_fingerprint=_fingerprint(files))


def _fingerprint(files: list[InputFile]) -> str:
    h = hashlib.sha256()
    for f in files:
        try:
            nbytes, mtime = storage.stat(f.path)  # any local name, one that is not UTF-8 too (#19.14)
        except OSError:  # missing, or not a regular file
            nbytes, mtime = -1, 0
        h.update(f"{f.rel}\0{nbytes}\0{int(mtime)}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def plan_sha256(plan: dict) -> str:
    return hashlib.sha256(json.dumps(plan, sort_keys=True).encode()).hexdigest()


def _mb(n: int) -> int:
    return int(n) << 20


class DedupJob:
    """One dedup run: ``DedupJob(paths, out, params).run()`` returns the report dict.

    ``out`` and ``scratch`` may be URIs. ``sink`` receives the kept documents (default: kept shards
    under OUT, see :class:`slimpipe.dedup.steps.write.KeptShards`).
    """

    def __init__(self, paths: list, out: str | Path, params: DedupParams, source: str | None = None,
                 partitions: int | None = None, max_edges_in_memory: int = 50_000_000,
                 shard_bytes: int = 256 << 20, progress: bool = True, range_bytes: int = 256 << 20,
                 scratch: str | None = None, keep_intermediates: bool = False, sink=None):
        self.out = os.fspath(out)
        self.params = params
        self.progress = progress
        self.max_edges_in_memory = max_edges_in_memory
        self.keep_intermediates = keep_intermediates
        storage.check_access(self.out, write=True)
        if scratch:
            storage.check_access(scratch, write=True)
        self.sink = sink if sink is not None else write.KeptShards(self.out, shard_bytes)
        self.ws = Workspace(self.out, scratch)
        self.ex = Executor(self.ws, "dedup", progress)
        self.ex.warm(warm_worker)  # workers import the steps and load their kernels while the driver plans
        self.timings = self.ex.timings
        self.plan = make_plan(paths, params, source, partitions, range_bytes)
        plan = self.plan.to_dict()
        self.plan_sha256 = plan_sha256(plan)
        self.finished: dict | None = None
        plan_path = self.ws.path("plan.json")
        if storage.exists(plan_path):
            if storage.read_json(plan_path) != plan:
                raise OutputError(self._other_job())  # one line on the CLI
        else:
            report_path = storage.join(self.out, "report.json")
            if storage.exists(report_path):
                done = storage.read_json(report_path)
                if done.get("plan_sha256") != self.plan_sha256:
                    raise OutputError(self._other_job())  # one line on the CLI
                self.finished = done  # the same job already finished: nothing to do
            else:
                storage.write_json_atomic(plan_path, plan)

    def _other_job(self) -> str:
        return (f"{self.out} holds a dedup job with other inputs or parameters; "
                "use a new output folder (or delete it) to start over")

    # ------------------------------------------------------------------------------------------------

    def run(self) -> dict:
        if self.finished is not None:
            return self.finished
        params, tasks = self.plan.params, self.plan.tasks
        ntasks, nparts = len(tasks), self.plan.partitions
        biggest = max((t.size if t.end is None else t.end - t.start for t in tasks), default=0)
        pre = [ReadResult.from_dict(r) for r in self.ex.run(Step(
            "read", read.read_task, [(tasks[t], params, nparts) for t in range(ntasks)],
            memory=_mb(384) + 4 * biggest))]
        sources = self._catalog(pre)
        band_rows = sum(r.band_rows for r in pre) + sum(r.docs for r in pre)
        part_mem = _mb(256) + 64 * band_rows // max(1, nparts)
        near = self._buckets(pre, nparts, part_mem)
        checked = self._verify(pre, near) if self.params.verify else None
        cc_info, cc_inputs, kparts = self._components(near, checked, nparts, part_mem)
        keep_results = self._keep(pre, sources, cc_inputs, kparts, part_mem)
        # The plots' numbers are known now: they are drawn while the write and sample steps run.
        plots = BackgroundPlots(early_plot_data(self.params, pre, keep_results))
        written, samples = self._write_and_sample(pre, keep_results[self.params.mode], biggest)
        self._finalise(pre, written)
        self.sink.commit([w.sink for w in written])
        # the steps' timings and intermediates, not the sample's
        timings = {k: v for k, v in self.timings.items() if k != "sample"}
        intermediates = {k: v for k, v in self.ex.intermediates.items() if k != "sample"}
        results = DedupResults(
            files=len(self.plan.files), tasks=ntasks, partitions=nparts, read=pre, buckets=near, verify=checked,
            components=cc_info, keep=keep_results, written=written, samples=samples, timings=timings)
        report = build_report(self.params, results)
        report["intermediates"] = intermediates
        report["plan_sha256"] = self.plan_sha256
        publish_report(self.out, report, plots)
        remove_temporaries(self.out, "dedup")
        self.ex.cleanup(self.keep_intermediates)
        return report

    def _catalog(self, pre: list[ReadResult]) -> list[str]:
        """The job's source names (codes), each task's file and first line; committed for every task.

        Adds each range's first line to the plan's tasks (``first_line``) and returns the source names.
        """
        sources = sort_sources({s for r in pre for s in r.sources})
        code = {s: i for i, s in enumerate(sources)}
        width = max((len(r.sources) for r in pre), default=0) or 1
        remap = np.zeros((len(pre), width), np.int16)
        for t, r in enumerate(pre):
            remap[t, : len(r.sources)] = [code[s] for s in r.sources]
        first = []
        line = {}
        for t, task in enumerate(self.plan.tasks):
            start = line.get(task.path, 0) if task.start else 0
            first.append(start)
            line[task.path] = start + pre[t].lines
        self.plan.tasks = [dataclasses.replace(task, first_line=first[t]) for t, task in enumerate(self.plan.tasks)]
        catalog = {"sources": sources, "task_rel": [t.rel for t in self.plan.tasks], "task_first_line": first,
                   "task_file": self.plan.task_file}
        if not storage.exists(self.ws.path(CATALOG)):
            self.ws.save_array(REMAP, remap)
            self.ws.write_bytes(CATALOG, storage.dumps_json(catalog))
        return sources

    def _buckets(self, pre: list[ReadResult], nparts: int, part_mem: int) -> list[BucketsResult]:
        inputs = self.ws.put_inputs("buckets", {"exact": [r.exact_piece for r in pre],
                                                "bands": [r.band_piece for r in pre]})
        ntasks = len(pre)
        return [BucketsResult.from_dict(b) for b in self.ex.run(Step(
            "buckets", buckets.buckets_task, [(q, inputs, self.params.verify, ntasks) for q in range(nparts)],
            "partitions", memory=part_mem))]

    def _verify(self, pre: list[ReadResult], near: list[BucketsResult]) -> list[VerifyResult]:
        """``--verify``: candidate pairs meet both their texts (send), then the exact Jaccard (check)."""
        ws, ex, ntasks = self.ws, self.ex, len(pre)
        send_in = ws.put_inputs("verify_send", [b.by_task for b in near])
        sent = [SendResult.from_dict(s) for s in ex.run(Step(
            "verify_send", verify.send_task, [(t, send_in, pre[t].texts) for t in range(ntasks)], memory=_mb(512)))]
        check_in = ws.put_inputs("verify", [s.piece for s in sent])
        return [VerifyResult.from_dict(c) for c in ex.run(Step(
            "verify", verify.check_task, [(t, check_in, pre[t].texts, self.plan.params) for t in range(ntasks)],
            memory=_mb(512)))]

    def _components(self, near: list[BucketsResult], checked: list[VerifyResult] | None, nparts: int,
                    part_mem: int) -> tuple[ComponentsInfo, dict[str, str], int]:
        """Both modes' components; returns how they were found, each mode's keep input, and its partitions."""
        files = [b.exact for b in near if b.exact]
        if checked is not None:
            files += [c.edges_file for c in checked if c.edges_file]
            total = sum(b.exact_edges for b in near) + sum(c.confirmed for c in checked)
        else:
            files += [b.near for b in near if b.near]
            total = sum(b.exact_edges for b in near) + sum(b.edges for b in near)
        if total <= self.max_edges_in_memory:
            res = FastComponentsResult.from_dict(self.ex.run(Step(
                "components", components.fast_task, [(files,)], memory=_mb(256) + 64 * total))[0])
            cc_inputs = {m: self.ws.put_inputs(f"keep_{m}", [res.modes[m].piece]) for m in MODES}
            info = {m: {"edges": res.modes[m].edges, "nodes": res.modes[m].nodes} for m in MODES}
            return ComponentsInfo("single-process", total, 1, 0, info), cc_inputs, 1
        rounds, cc_inputs = {}, {}
        for mode in MODES:
            rounds[mode], cc_inputs[mode] = self._distributed_cc(mode, files, nparts, part_mem)
        return ComponentsInfo("distributed", total, nparts, rounds), cc_inputs, nparts

    def _distributed_cc(self, mode: str, files: list[str], nparts: int, mem: int) -> tuple[int, str]:
        """Alternate large-star and small-star shuffles over edge partitions until nothing changes."""
        ex, ws = self.ex, self.ws
        groups = [[f] for f in files]
        for rnd in range(64):
            outs = []
            changed = 0
            for phase in ("L", "S"):
                name = f"cc_{mode}_r{rnd}_{phase}"
                mapped = [StarMapResult.from_dict(m) for m in ex.run(Step(
                    f"{name}map", components.map_task, [(mode, g, nparts, phase) for g in groups], memory=mem))]
                inputs = ws.put_inputs(name, [m.piece for m in mapped])
                reduced = [StarReduceResult.from_dict(r) for r in ex.run(Step(
                    name, components.reduce_task, [(inputs, d, phase) for d in range(nparts)], "partitions",
                    memory=mem))]
                changed += sum(r.changed for r in reduced)
                outs = [r.out for r in reduced if r.out]
                groups = [[o] for o in outs]
            if changed == 0:
                break
        else:
            raise RuntimeError("distributed connected components did not converge in 64 rounds")
        finished = [StarFinishResult.from_dict(f) for f in ex.run(Step(
            f"cc_{mode}_finish", components.finish_task, [(o, nparts) for o in outs], memory=mem))]
        return rnd + 1, ws.put_inputs(f"keep_{mode}", [f.piece for f in finished])

    def _keep(self, pre: list[ReadResult], sources: list[str], cc_inputs: dict[str, str], kparts: int,
              part_mem: int) -> dict[str, list[KeepResult]]:
        """One document per component, for both modes (the report compares them); the job's mode is written."""
        p = self.params
        check = None
        if p.verify and p.cluster_check:  # each removal checked against its keeper
            check = keep.ClusterCheck(threshold=p.threshold, ngram=p.ngram, unit=p.unit, seed=p.seed,
                                      texts=[r.texts for r in pre])
        priority = [sources.index(s) for s in p.source_priority if s in sources]
        out = {}
        for mode in MODES:
            spec = keep.KeepSpec(mode=mode, inputs=cc_inputs[mode], policy=p.keep, priority=priority,
                                 sources=sources, ntasks=len(pre), check=check)
            out[mode] = [KeepResult.from_dict(k) for k in self.ex.run(Step(
                f"keep_{mode}", keep.keep_task, [(spec, r) for r in range(kparts)], "partitions", memory=part_mem))]
        return out

    def _write_and_sample(self, pre: list[ReadResult], kept: list[KeepResult],
                          biggest: int) -> tuple[list[WriteResult], list[SampleCluster]]:
        """The second read (kept documents to the sink, the removed table to OUT) and, beside it, the report's
        sample clusters: one task that re-reads only their input ranges, submitted first so that it runs
        alongside the write tasks instead of after the last one."""
        mode, tasks = self.params.mode, self.plan.tasks  # tasks now with each range's first line
        kept_bytes = sum(v.nbytes - v.short_bytes for r in pre for v in r.by_source.values()) - sum(
            k.removed_bytes for k in kept)
        self.sink.prepare(self.ws, kept_bytes)
        write_in = self.ws.put_inputs(f"write_{mode}", [k.piece for k in kept])
        writing = Step("write", write.write_task, [(tasks[t], write_in, self.sink, self.out) for t in range(len(pre))],
                       memory=_mb(384) + 2 * biggest)
        tops = sample.largest([c for k in kept for c in k.top])
        if not tops:
            return [WriteResult.from_dict(w) for w in self.ex.run(writing)], []
        spec = sample.SampleSpec(clusters=tops, tasks=tasks, params=self.plan.params, files=len(self.plan.files))
        sampled, written = self.ex.run_together(Step("sample", sample.sample_task, [(spec,)]), writing)
        return ([WriteResult.from_dict(w) for w in written],
                [SampleCluster.from_dict(c) for c in sampled[0]["clusters"]])

    def _finalise(self, pre: list[ReadResult], written: list[WriteResult]) -> None:
        if isinstance(self.sink, write.KeptShards):
            shards = [ShardInfo(**s) for w in written for s in w.sink["shards"]]
            write_manifest(self.out, shards, extra={"kind": "slimpipe-dedup", "mode": self.params.mode,
                                                    "params": self.params.to_dict()})
        tables = []
        for t, r in enumerate(pre):
            if r.rejects:
                table = self.ws.load_table(r.rejects)
                first = self.plan.tasks[t].first_line
                if first:  # a range's lines were counted from its own start
                    line = table.column("line")
                    fixed = pc.if_else(pc.greater_equal(line, 0), pc.add(line, first), line)
                    table = table.set_column(table.schema.get_field_index("line"), "line", fixed)
                tables.append(table)
        table = pa.concat_tables(tables) if tables else REJECT_SCHEMA.empty_table()
        with storage.open_output(storage.join(self.out, "rejects.parquet")) as fh:
            pq.write_table(table, fh, compression="zstd")


def publish_report(out: str, report: dict, plots: BackgroundPlots | None = None) -> None:
    """Write report.json, report.md and plots/ under OUT (rendered locally, then uploaded for a URI)."""
    storage.write_tree(out, lambda folder: write_report(folder, report, plots))


def warm_worker() -> None:
    """A dedup worker's start-up, done ahead (:meth:`slimpipe.runtime.Executor.warm`): importing this module
    imports every step's code (pyarrow, numba), and one tiny call of a cached numba kernel pays numba's
    one-off set-up (about half a second of CPU per process); the other kernels then load from the cache in
    milliseconds at their first call."""
    from slimpipe.dedup.minhash import jaccard_exact

    jaccard_exact("warm-up text for the kernels", "warm-up text for the cache", 5)


def run_dedup(paths: list, out: str | Path, params: DedupParams, **kwargs) -> dict:
    """Run (or resume) a dedup job on the current Ray (started locally if needed)."""
    from slimpipe.engine import ensure_ray

    ensure_ray(kwargs.pop("ray_address", None))
    return DedupJob(paths, out, params, **kwargs).run()
