"""Shared helpers of the dedup benchmarks: corpus reading, process-tree memory sampling, machine facts,
the ``RESULTS.md`` appender, running ``slimpipe dedup`` as a measured subprocess, and the datatrove
virtualenv (the same ``benchmarks/_venvs/datatrove`` that ``bench_signatures.py`` creates).

Memory is measured from outside: a thread samples the whole process tree of the measured command
(the command, its children and theirs, so Ray's GCS, raylet and workers, or datatrove's worker pool,
are included) every 0.2 s with psutil. It records the peak of the summed RSS, the peak RSS of the largest
single process, and the peak of the summed PSS (proportional set size, from
``/proc/<pid>/smaps_rollup``), which counts pages shared between processes (libraries, Ray's object
store) once instead of once per process. Processes that live less than one sampling period can be missed.
"""

from __future__ import annotations

import datetime as _dt
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEFAULT_CORPUS = ROOT.parent / "shared" / "corpus" / "redpajama-mini"
DEFAULT_PAIRS = ROOT.parent / "shared" / "corpus" / "provenance" / "dup_pairs.tsv"
WORK = HERE / "_work"
RESULTS = HERE / "RESULTS.md"
PYTHON = ROOT / ".venv" / "bin" / "python"
DT_VENV = HERE / "_venvs" / "datatrove"
# bench_signatures.py installs these; the end-to-end run also needs the readers'/writers' io extras.
DT_PACKAGES = ("datatrove", "xxhash<4", "regex", "tokenizers")
DT_IO_PACKAGES = ("orjson", "zstandard")
MB = 1e6


# Run inside datatrove's own virtualenv by bench_signatures and bench_dedup: tokenizers that make its
# n-gram shingles character n-grams (SlimPajama's) or plain whitespace words (spaCy is its default).
DT_TOKENIZERS = r'''
from datatrove.utils.word_tokenizers import WordTokenizer


class CharTokenizer(WordTokenizer):
    """Characters as tokens, so datatrove's n-gram shingles are character n-grams."""
    def word_tokenize(self, text): return list(text)
    def sent_tokenize(self, text): return [text]
    def span_tokenize(self, text): return [(0, len(text))]


class SpaceTokenizer(WordTokenizer):
    """Whitespace words (fallback when spaCy, datatrove's English tokenizer, is not installed)."""
    def word_tokenize(self, text): return text.split()
    def sent_tokenize(self, text): return [text]
    def span_tokenize(self, text): return [(0, len(text))]
'''

# The slimpipe checkout the benchmarks import and run (default: this tree). SLIMPIPE_BENCH_CODE=/path/to/checkout
# measures another one (e.g. a clean checkout of an older commit) with this tree's benchmarks and virtualenv.
CODE = Path(os.environ.get("SLIMPIPE_BENCH_CODE") or ROOT).resolve()
if CODE != ROOT and os.environ.get("PYTHONPATH", "").split(os.pathsep)[0] != str(CODE):
    os.environ["PYTHONPATH"] = os.pathsep.join([str(CODE), *filter(None, [os.environ.get("PYTHONPATH")])])
for _p in (ROOT, CODE):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))


# --------------------------------------------------------------------------- machine facts
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def loadavg() -> str:
    """Other processes skew timings; the load average is recorded with every result."""
    try:
        return "/".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def machine_line() -> str:
    return (f"{platform.node()} | {platform.processor() or platform.machine()} | {cpu_model()} | "
            f"os.cpu_count()={os.cpu_count()} | python {platform.python_version()}")


def now() -> str:
    return _dt.datetime.now().isoformat(timespec="seconds")


def append_results(title: str, body: list[str]) -> Path:
    """Append one dated section to benchmarks/RESULTS.md in a single write (other benchmarks append too)."""
    header = "" if RESULTS.exists() else "# Benchmark results\n\nEach benchmark appends a dated section.\n"
    text = "\n".join([header, f"\n## {title} — {now()}\n", *body, ""])
    with RESULTS.open("a", encoding="utf-8") as fh:
        fh.write(text)
    return RESULTS


def publish(name: str, head: list[str], sections: list[list[str]], notes: list[str], headline: str,
            append: bool = True) -> None:
    """Print a benchmark's tables, notes and headline (last), and append the same to RESULTS.md."""
    body: list[str] = []
    for sec in sections:
        body += [*sec, ""]
    body += [*(f"- {n}" for n in notes), ""]
    print()
    print("\n".join(body))
    print(headline)
    if append:
        print(f"appended to {append_results(name, [*head, *body, f'**{headline}**'])}")


# --------------------------------------------------------------------------- corpus
def corpus_files(corpus: Path) -> list[Path]:
    files = sorted(corpus.glob("*.jsonl.zst"))
    if not files:
        raise SystemExit(f"no *.jsonl.zst files under {corpus}")
    return files


def iter_lines(path: Path) -> Iterator[str]:
    """Lines of a ``.jsonl.zst`` (or plain ``.jsonl``) file, streamed."""
    if path.name.endswith(".zst"):
        import zstandard

        with path.open("rb") as fh:
            yield from io.TextIOWrapper(zstandard.ZstdDecompressor().stream_reader(fh), encoding="utf-8")
    else:
        with path.open(encoding="utf-8") as fh:
            yield from fh


def iter_texts(path: Path) -> Iterator[tuple[int, str]]:
    """(0-based line, text) of every record of a file."""
    for line_no, line in enumerate(iter_lines(path)):
        yield line_no, json.loads(line)["text"]


def corpus_text_mb(corpus: Path) -> float:
    return sum(len(t.encode("utf-8", "surrogatepass")) for f in corpus_files(corpus) for _, t in iter_texts(f)) / MB


# --------------------------------------------------------------------------- process-tree memory
def _pss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as fh:
            for line in fh:
                if line.startswith(b"Pss:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


_RAY_AGENTS = ("ray::DashboardA", "ray::RuntimeEnv")  # Ray's own per-node agents (process names cut at 15)


@dataclass
class TreePeaks:
    tree_rss: int = 0  # peak of the summed RSS over the tree (bytes)
    single_rss: int = 0  # peak RSS of the largest single process
    single_name: str = ""
    tree_pss: int = 0  # peak of the summed PSS
    max_procs: int = 0
    samples: int = 0
    task_rss: int = 0  # peak RSS of the largest Ray task/actor process (name ray::*, Ray's agents aside)
    task_name: str = ""
    names: set[str] = field(default_factory=set)


class TreeSampler:
    """Samples a process and all its descendants every ``interval`` seconds in a background thread."""

    def __init__(self, pid: int, interval: float = 0.2, pss: bool = True):
        import psutil

        self._psutil = psutil
        self.root = psutil.Process(pid)
        self.interval = interval
        self.pss = pss
        self.peaks = TreePeaks()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> TreeSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def sample(self) -> None:
        psutil = self._psutil
        try:
            procs = [self.root, *self.root.children(recursive=True)]
        except psutil.Error:
            return
        total = pss = 0
        n = 0
        p = self.peaks
        for proc in procs:
            try:
                rss = proc.memory_info().rss
                name = proc.name()
            except psutil.Error:
                continue
            n += 1
            total += rss
            if self.pss:
                pss += _pss_bytes(proc.pid)
            p.names.add(name)
            if name.startswith("ray::") and not name.startswith(_RAY_AGENTS) and rss > p.task_rss:
                p.task_rss, p.task_name = rss, name
            if rss > p.single_rss:
                p.single_rss, p.single_name = rss, name
        p.samples += 1
        p.tree_rss = max(p.tree_rss, total)
        p.tree_pss = max(p.tree_pss, pss)
        p.max_procs = max(p.max_procs, n)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)


@dataclass
class Measured:
    rc: int
    seconds: float
    peaks: TreePeaks
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.rc == 0

    def error(self) -> str:
        lines = (self.stderr.strip() or self.stdout.strip()).splitlines()
        return f"exit {self.rc}: {lines[-1][:200] if lines else '?'}"


def run_measured(cmd: list[str], *, env: dict | None = None, cwd: Path | None = None,
                 timeout: float | None = None, interval: float = 0.2) -> Measured:
    """Run ``cmd``; return its exit code, wall seconds and the memory peaks of its process tree."""
    full_env = {**os.environ, **(env or {})}
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=full_env,
                            cwd=cwd, start_new_session=True)
    with TreeSampler(proc.pid, interval) as sampler:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_tree(proc.pid)
            out, err = proc.communicate()
            err += f"\ntimed out after {timeout} s"
    seconds = time.perf_counter() - t0
    return Measured(proc.returncode, seconds, sampler.peaks, out, err)


def _kill_tree(pid: int) -> None:
    """Kill the measured command and its descendants (only the tree we started)."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [*root.children(recursive=True), root]
    except psutil.Error:
        return
    for p in procs:
        try:
            p.kill()
        except psutil.Error:
            pass


# --------------------------------------------------------------------------- slimpipe
def slimpipe_dedup(sources: list[Path], out: Path, *args: str, timeout: float | None = 3600) -> Measured:
    """``slimpipe dedup SOURCES -o OUT ARGS --quiet`` in a fresh process (so a fresh local Ray)."""
    if out.exists():
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [str(PYTHON), "-m", "slimpipe.cli", "dedup", *map(str, sources), "-o", str(out), *args, "--quiet"]
    # RAY_AUTH_MODE etc. are left to the user's environment; only the address is cleared so a local Ray starts.
    env = {"SLIMPIPE_RAY_ADDRESS": "", "RAY_ADDRESS": ""}
    return run_measured(cmd, env=env, cwd=CODE, timeout=timeout)


def slimpipe_report(out: Path) -> dict:
    return json.loads((out / "report.json").read_text())


# --------------------------------------------------------------------------- datatrove virtualenv
_DT_FAILED: list[str] = []


def _pip(py: Path, packages: tuple[str, ...]) -> None:
    subprocess.run([str(py), "-m", "pip", "install", "-q", *packages], check=True, capture_output=True, timeout=900)


def install_error(exc: BaseException) -> str:
    """The last line of a failed install's stderr (or the exception), for a one-line reason."""
    err = getattr(exc, "stderr", b"") or b""
    err = err.decode(errors="replace") if isinstance(err, bytes) else str(err)
    return (err.strip().splitlines() or [str(exc)])[-1][:160]


def ensure_datatrove_venv(extra: tuple[str, ...] = DT_IO_PACKAGES) -> tuple[Path | None, str]:
    """The datatrove virtualenv's python, or (None, reason).

    Same path and base packages as ``bench_signatures.py`` (datatrove pins ``xxhash<4``, which clashes
    with ours); created on first use, otherwise reused, with ``extra`` packages added when missing.
    """
    py = DT_VENV / "bin" / "python"
    if _DT_FAILED:
        return None, _DT_FAILED[0]
    base_check = [str(py), "-c", "import datatrove.pipeline.dedup.minhash, xxhash, regex"]
    try:
        if not (py.exists() and subprocess.run(base_check, capture_output=True).returncode == 0):
            print(f"creating {DT_VENV} (pip install {' '.join(DT_PACKAGES)}) ...", flush=True)
            subprocess.run([sys.executable, "-m", "venv", str(DT_VENV)], check=True, capture_output=True)
            _pip(py, DT_PACKAGES)
        missing = [m for m in extra
                   if subprocess.run([str(py), "-c", f"import {m}"], capture_output=True).returncode != 0]
        if missing:
            print(f"adding {' '.join(missing)} to {DT_VENV} ...", flush=True)
            _pip(py, tuple(missing))
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
        _DT_FAILED.append(f"could not install datatrove: {install_error(exc)}")
        return None, _DT_FAILED[0]
    probe = subprocess.run(base_check, capture_output=True, text=True)
    if probe.returncode != 0:
        _DT_FAILED.append(f"datatrove does not import: {(probe.stderr.strip().splitlines() or ['?'])[-1][:160]}")
        return None, _DT_FAILED[0]
    return py, ""


def try_install(py: Path, packages: tuple[str, ...]) -> bool:
    """pip install optional packages into a virtualenv; False (and a message) when that fails."""
    print(f"adding {' '.join(packages)} to {py.parent.parent} ...", flush=True)
    try:
        _pip(py, packages)
        return True
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
        print(f"could not install {' '.join(packages)}: {exc}", flush=True)
        return False


def has_module(py: Path, module: str) -> bool:
    return subprocess.run([str(py), "-c", f"import {module}"], capture_output=True).returncode == 0


# --------------------------------------------------------------------------- formatting
def fmt(x: float | None, spec: str = ".1f") -> str:
    return "-" if x is None else format(x, spec)


def table(header: list[str], rows: list[list[str]], align: str | None = None) -> list[str]:
    """A Markdown table (prints readably in a terminal too)."""
    align = align or "l" + "r" * (len(header) - 1)
    sep = ["---:" if a == "r" else "---" for a in align]
    return ["| " + " | ".join(header) + " |", "|" + "|".join(sep) + "|",
            *("| " + " | ".join(r) + " |" for r in rows)]
