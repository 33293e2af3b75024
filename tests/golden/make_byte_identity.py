"""The byte-identity record of issue #22: what slimpipe's commands write, as sha256 per product file.

The same commands, run as a user runs them (``python -m slimpipe.cli …`` subprocesses, one Ray head shared by
the commands of a group), on the embedded sample (``slimpipe sample``: the sample itself, SlimPajama with
global dedup, the six SlimPajama-DC mixes, a 3-step ``tiny`` training run and its checkpoint) and on
``../shared/corpus/redpajama-mini`` (dedup global and local, SlimPajama). ``tests/test_byte_identity.py``
runs them on this checkout and compares with ``tests/golden/byte_identity.json``.

Write the record from a checkout (the code before a refactor, e.g. a clean worktree of the base commit)::

    python tests/golden/make_byte_identity.py --checkout /work/wt-base [--out tests/golden/byte_identity.json]

The commands run with ``PYTHONPATH=CHECKOUT`` and ``cwd=CHECKOUT``; this script and the venv's Python are the
only things taken from here. What legitimately differs run to run is normalised, never skipped silently:

- left out: the claim ``_slimpipe.json`` (a random claim id and the time) and intermediates (the
  ``INTERMEDIATE`` rule of tests/cluster_helpers.py: ``_work``/``_scratch``/``_tmp``/``_runtime`` and hidden
  files: a checkpoint's ``.metadata`` too, DCP's pickle, which holds a random ``save_id`` and the folder's
  temporary path);
- ``report.json``: hashed as canonical JSON without its wall-clock ``timings`` (as
  ``cluster_helpers.reports_without_timings`` compares them);
- ``report.md``: hashed without its "Stage timings" section (``TIMING_SECTION``);
- ``train_log.jsonl`` without ``step_s``/``tokens_per_s``, ``metrics.json`` without ``throughput``, a mix's
  ``manifest.json`` without ``timings_s``;
- the sample's files are given one fixed modification time (``SAMPLE_MTIME``) once ``slimpipe sample`` has
  written them: dedup fingerprints its inputs by size and mtime into the ``plan_sha256`` of its report;
- ``*.safetensors``: the JSON header with its keys sorted (safetensors writes ``__metadata__`` in a random
  order), then the tensors' bytes as they are;
- every file: the checkout's absolute path is replaced by ``<ROOT>``.

The commands write under one fixed folder, ``WORK`` (/tmp/slimpipe-byte-identity/GROUP), for the record and
for the test alike: slimpipe hashes its inputs' and outputs' paths into plan and cache identities
(``plan_sha256``, a token cache's ``input_id``), so a path cannot be normalised away after the fact. The
folder is locked while a group runs and emptied before (only if a previous run of this script made it).
redpajama-mini's files are copied from where ../shared puts them (``REDPAJAMA_MINI``) into
WORK/redpajama-mini/input with the fixed modification time, so the record holds neither ../shared's location nor
the mtimes it gets each time the corpus is provisioned.

Training bytes depend on the CPU's kernels: the record names torch's version and
``torch.backends.cpu.get_cpu_capability()``, and keeps the losses for a numeric comparison elsewhere.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from cluster_helpers import INTERMEDIATE, JOB_RECORD, free_port, ray_head  # noqa: E402

GOLDEN = HERE / "byte_identity.json"
REDPAJAMA_MINI = ROOT.parent / "shared" / "corpus" / "redpajama-mini"
TIMEOUT = 900
DC_MIXES = ("dc1", "dc2", "dc3", "dc4", "dc5", "dc6")
# report.md's section of wall-clock times: from its heading to the next heading of the same level (or the end)
TIMING_SECTION = re.compile(rb"^## Stage timings.*?(?=^## |\Z)", re.MULTILINE | re.DOTALL)
TIMING_KEYS = {"train_log.jsonl": {"step_s", "tokens_per_s"}, "metrics.json": {"throughput"},
               "manifest.json": {"timings_s"}}
# The sample's files get this modification time once written: dedup's plan fingerprints its inputs by size
# and mtime (its plan_sha256 is in the report), and the sample is written anew by every run.
SAMPLE_MTIME = 1_700_000_000
# Outputs of a training run whose bytes come from the CPU's floating-point kernels.
WORK = Path("/tmp/slimpipe-byte-identity")
MARK = ".made-by-make_byte_identity"
KERNEL_DEPENDENT = re.compile(r"(^|/)(train_log\.jsonl|eval_log\.jsonl|metrics\.json|eval_losses\.npz|"
                              r"[^/]*\.safetensors|[^/]*\.distcp|\.metadata|rng_\d+\.json|trainer\.json)$")


@dataclass(frozen=True)
class Command:
    """One slimpipe command: its name in the record, its arguments ({work}, {rpm} filled in), its output
    folder, and whether it runs on Ray (then it gets ``--ray-address`` of the group's head)."""

    name: str
    group: str  # "sample" or "redpajama-mini"
    args: tuple[str, ...]
    out: str
    ray: bool = True


def commands() -> list[Command]:
    w = "{work}"
    sample = [
        Command("sample", "sample", ("sample", "-o", f"{w}/sample", "--size", "0.1", "-q"), f"{w}/sample", ray=False),
        Command("slimpajama", "sample", ("slimpajama", f"{w}/sample", "-o", f"{w}/sp", "--mode", "global",
                                         "--holdout-fraction", "0.1", "--chunks", "2", "--shard-mb", "4", "-q"),
                f"{w}/sp"),
    ]
    for i, dc in enumerate(DC_MIXES):
        tok = ("--tokenizer", "train", "--vocab-size", "512") if i == 0 else ("--tokenizer", f"{w}/mix-dc1")
        sample.append(Command(f"mix-{dc}", "sample", ("mix", f"{w}/sp", "--config", dc, "--tokens", "100k",
                                                      "-o", f"{w}/mix-{dc}", "--seq-len", "128", "--eval-tokens",
                                                      "8k", *tok, "-q"), f"{w}/mix-{dc}"))
    sample.append(Command("train", "sample", ("train", f"{w}/mix-dc1", "--model", "tiny", "-o", f"{w}/run",
                                              "--max-steps", "3", "--device", "cpu", "--threads", "1", "--seed", "1",
                                              "--eval-interval", "2", "--eval-sequences", "4"), f"{w}/run", ray=False))
    rpm = [
        Command("dedup-global", "redpajama-mini", ("dedup", "{rpm}", "-o", f"{w}/dedup-global", "--mode", "global",
                                                   "-q"), f"{w}/dedup-global"),
        Command("dedup-local", "redpajama-mini", ("dedup", "{rpm}", "-o", f"{w}/dedup-local", "--mode", "local",
                                                  "-q"), f"{w}/dedup-local"),
        Command("slimpajama", "redpajama-mini", ("slimpajama", "{rpm}", "-o", f"{w}/sp", "-q"), f"{w}/sp"),
    ]
    return sample + rpm


GROUPS = ("sample", "redpajama-mini")


# --------------------------------------------------------------------------- normalised hashes
def _replace_paths(data: bytes, checkout: Path) -> bytes:
    for form in {str(checkout), str(checkout.resolve())}:
        data = data.replace(form.encode(), b"<ROOT>")
    return data


def _normalise(rel: str, data: bytes) -> bytes:
    name = rel.rsplit("/", 1)[-1]
    if name.endswith(".safetensors"):
        n = int.from_bytes(data[:8], "little")
        header = json.dumps(json.loads(data[8:8 + n]), sort_keys=True).encode()
        return len(header).to_bytes(8, "little") + header + data[8 + n:]
    if name == "report.json":
        report = json.loads(data)
        report.pop("timings", None)
        return json.dumps(report, sort_keys=True).encode()
    if name == "report.md":
        return TIMING_SECTION.sub(b"", data)
    if name in TIMING_KEYS:
        drop = TIMING_KEYS[name]
        if name.endswith(".jsonl"):
            rows = [json.loads(ln) for ln in data.splitlines() if ln.strip()]
            return b"\n".join(json.dumps({k: v for k, v in r.items() if k not in drop}, sort_keys=True).encode()
                              for r in rows)
        doc = json.loads(data)
        if not drop & doc.keys():
            return data  # e.g. a dedup manifest.json, which has no timings
        return json.dumps({k: v for k, v in doc.items() if k not in drop}, sort_keys=True).encode()
    return data


def product_files(out: Path) -> Iterator[tuple[str, Path]]:
    """(relative path, path) of every product file under a local OUT, sorted."""
    for p in sorted(out.rglob("*")):
        rel = p.relative_to(out).as_posix()
        if not p.is_file() or rel == JOB_RECORD:
            continue
        if INTERMEDIATE.search(rel):
            continue
        yield rel, p


def hashes(out: Path, checkout: Path) -> dict[str, str]:
    """{relative path: sha256 of the normalised bytes} of OUT's product files."""
    return {rel: hashlib.sha256(_normalise(rel, _replace_paths(p.read_bytes(), checkout))).hexdigest()
            for rel, p in product_files(out)}


def losses(run: Path) -> dict:
    """The training run's losses: every logged step's, and the final evaluation's per source."""
    train = [json.loads(ln)["loss"] for ln in (run / "train_log.jsonl").read_text().splitlines() if ln.strip()]
    final = [json.loads(ln) for ln in (run / "eval_log.jsonl").read_text().splitlines() if ln.strip()][-1]
    return {"train": train, "eval": {s: v["loss"] for s, v in sorted(final["sources"].items())}}


# --------------------------------------------------------------------------- running
def machine() -> dict:
    import platform

    import torch

    return {"torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "python": platform.python_version(), "machine": platform.machine()}


def _env(checkout: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(checkout), "RAY_DEDUP_LOGS": "0", "RAY_ADDRESS": "",
            "SLIMPIPE_RAY_ADDRESS": "", "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0", "RAY_AUTH_MODE": "token"}


def _start_head(stack: contextlib.ExitStack, environ: dict[str, str], log, tries: int = 3) -> str:
    """A Ray head for the group's commands (2 CPUs, like CI), stopped when ``stack`` closes; its address.
    A head that times out starting (Ray's own limit, reached on an overloaded machine) is tried again."""
    for attempt in range(1, tries + 1):
        try:
            port, _ = stack.enter_context(ray_head(["--num-cpus=2", "--include-dashboard=false",
                                                    f"--dashboard-agent-listen-port={free_port()}"], environ, "bi"))
            return f"127.0.0.1:{port}"
        except RuntimeError as exc:
            if attempt == tries:
                raise
            log(f"Ray head did not start (try {attempt} of {tries}): {str(exc).splitlines()[-1]}")
    raise AssertionError("unreachable")


@contextlib.contextmanager
def work_folder(group: str) -> Iterator[Path]:
    """WORK/GROUP, empty, held under a lock (another run waits); left in place afterwards for inspection."""
    import fcntl
    import shutil

    WORK.mkdir(parents=True, exist_ok=True)
    with open(WORK / f".{group}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        work = WORK / group
        if work.exists():
            if not (work / MARK).exists():
                raise RuntimeError(f"{work} exists and was not made by {Path(__file__).name}: remove it yourself")
            shutil.rmtree(work)
        work.mkdir()
        (work / MARK).write_text("")
        yield work


def run_group(group: str, checkout: Path, rpm: Path = REDPAJAMA_MINI, log=print) -> dict[str, dict]:
    """Run the group's commands from CHECKOUT in ``work_folder(group)``; {command: {"args", "files",
    "seconds"[, "losses"]}}, or {"args", "seconds", "error"} for a command that failed (the commands after
    it still run where they can)."""
    with work_folder(group) as work:
        return _run_group(group, checkout, work, rpm, log)


def _fixed_copy(src: Path, dest: Path) -> Path:
    """A copy of SRC's files in DEST with one fixed modification time (``SAMPLE_MTIME``): dedup's plan
    fingerprints its inputs by path, size and mtime, and ../shared's files get a new mtime whenever the
    corpus is provisioned again, so the record is made and checked on this copy (in WORK, never in the project)."""
    import shutil

    dest.mkdir()
    for p in sorted(src.iterdir()):
        if p.is_file():
            shutil.copyfile(p, dest / p.name)
            os.utime(dest / p.name, (SAMPLE_MTIME, SAMPLE_MTIME))
    os.utime(dest, (SAMPLE_MTIME, SAMPLE_MTIME))
    return dest


def _run_group(group: str, checkout: Path, work: Path, rpm: Path, log) -> dict[str, dict]:
    environ = _env(checkout)
    todo = [c for c in commands() if c.group == group]
    if any("{rpm}" in a for c in todo for a in c.args):
        rpm = _fixed_copy(rpm, work / "input")
    results: dict[str, dict] = {}
    with contextlib.ExitStack() as stack:
        address = _start_head(stack, environ, log) if any(c.ray for c in todo) else None
        for c in todo:
            args = [a.format(work=work, rpm=rpm) for a in c.args]
            out = Path(c.out.format(work=work))
            cmd = [sys.executable, "-m", "slimpipe.cli", *args] + (["--ray-address", address] if c.ray else [])
            t0 = time.monotonic()
            res = subprocess.run(cmd, env=environ, cwd=checkout, capture_output=True, text=True, timeout=TIMEOUT)
            seconds = round(time.monotonic() - t0, 1)
            record = {"args": list(c.args), "seconds": seconds}
            if res.returncode != 0:
                record["error"] = f"exit {res.returncode}: {res.stderr[-3000:]}"
            else:
                if c.name == "sample":
                    for p in out.rglob("*"):
                        os.utime(p, (SAMPLE_MTIME, SAMPLE_MTIME), follow_symlinks=False)
                record["files"] = hashes(out, checkout)
                if c.name == "train":
                    record["losses"] = losses(out)
            results[c.name] = record
            log(f"[{group}] {c.name}: {'failed' if 'error' in record else len(record['files'])} "
                f"{'' if 'error' in record else 'files '}in {seconds}s")
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkout", type=Path, required=True, help="the checkout whose commands are recorded")
    ap.add_argument("--out", type=Path, default=GOLDEN, help=f"record to write (default {GOLDEN})")
    ap.add_argument("--groups", default=",".join(GROUPS), help="which groups to run (sample,redpajama-mini)")
    ap.add_argument("--update", action="store_true",
                    help="keep the other groups of an existing --out (made from the same commit and machine)")
    a = ap.parse_args()
    checkout = a.checkout.resolve()
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=checkout, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=checkout,
                           capture_output=True, text=True).stdout.strip()
    record = {"checkout": {"commit": commit, "clean": not dirty}, "machine": machine(), "groups": {}}
    if a.update and a.out.exists():
        old = json.loads(a.out.read_text())
        if (old["checkout"], old["machine"]) != (record["checkout"], record["machine"]):
            sys.exit(f"--update: {a.out} was made from {old['checkout']} on {old['machine']}, not from this")
        record["groups"] = old["groups"]
    for group in a.groups.split(","):
        record["groups"][group] = run_group(group, checkout)
        a.out.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")  # after each group
    failed = [f"{g}/{c}" for g, r in record["groups"].items() for c, v in r.items() if "error" in v]
    print(f"wrote {a.out} (commit {commit[:9]}{'' if not dirty else ', DIRTY'}); outputs in {WORK}")
    if failed:
        sys.exit(f"failed: {failed}")


if __name__ == "__main__":
    main()
