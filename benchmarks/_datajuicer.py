"""data-juicer's Ray MinHash deduplicator (``ray_bts_minhash_deduplicator``, py-data-juicer 1.6.1) as a
measured peer of ``bench_dedup.py``.

It runs in its own virtualenv, ``benchmarks/_venvs/data-juicer``, created on first use (a large
install: datasets, streamlit, ...; ``import data_juicer`` also needs ``aiohttp``, which it does not
declare). Its Ray is pinned to the version slimpipe runs on, so both sides get the same Ray.

It is driven the way its users drive it: ``dj-process --config CFG.yaml`` with ``executor_type: ray``
on a local Ray (``ray_address: local``, all CPUs of the machine, as slimpipe's local Ray).

Definition, set to SlimPajama's (what slimpipe's preset and datatrove's char13 run use):
``tokenization: character``, ``window_size: 13``, ``lowercase: true``, ASCII punctuation
(``string.punctuation``, SlimPajama's set) removed through ``ignore_pattern``, 128 permutations,
``num_bands: 9``, ``num_rows_per_band: 13``. It has no NFC step, no whitespace collapse and no
short-document filter, so its removal count differs.

Input: data-juicer's Ray reader infers one Arrow schema per file and later fails when the files'
``meta`` structs disagree (RedPajama's sources each have their own; a timestamp that is a string in
one file and a date in another stops it while reading back its own intermediates). So the benchmark
gives it a copy of the corpus with ``meta`` (and CommonCrawl's top-level fields) encoded as one JSON
string: the same documents, the same text bytes, ``.jsonl.zst`` like the original. The copy is made
before the measured run. It also needs a 256 MB JSON block size (``read_options``): books and arXiv
records are larger than Arrow's 1 MB default block.
"""

from __future__ import annotations

import importlib.metadata
import io
import json
import re
import shutil
import string
import subprocess
import sys
from pathlib import Path

from _common import HERE, Measured, install_error, iter_lines, run_measured

DJ_VENV = HERE / "_venvs" / "data-juicer"
DJ_VERSION = "1.6.1"
_FAILED: list[str] = []


def _ray_pin() -> str:
    try:
        return f"ray[data]=={importlib.metadata.version('ray')}"
    except importlib.metadata.PackageNotFoundError:
        return "ray[data]>=2.51"


def ensure_datajuicer_venv() -> tuple[Path | None, str]:
    """The data-juicer virtualenv's python, or (None, reason). Created on first use, then reused."""
    py = DJ_VENV / "bin" / "python"
    if _FAILED:
        return None, _FAILED[0]
    probe = [str(py), "-c", "import data_juicer, ray, aiohttp; "
             "from data_juicer.ops.deduplicator.ray_bts_minhash_deduplicator import RayBTSMinhashDeduplicator; "
             "print(data_juicer.__version__)"]
    ok = py.exists() and subprocess.run(probe, capture_output=True, text=True).stdout.strip() == DJ_VERSION
    if not ok:
        packages = (f"py-data-juicer=={DJ_VERSION}", "aiohttp", _ray_pin(), "pandas<3")
        print(f"creating {DJ_VENV} (pip install {' '.join(packages)}; a large install) ...", flush=True)
        try:
            subprocess.run([sys.executable, "-m", "venv", str(DJ_VENV)], check=True, capture_output=True)
            subprocess.run([str(py), "-m", "pip", "install", "-q", *packages], check=True, capture_output=True,
                           timeout=1800)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
            _FAILED.append(f"could not install data-juicer: {install_error(exc)}")
            return None, _FAILED[0]
        res = subprocess.run(probe, capture_output=True, text=True)
        if res.returncode != 0:
            _FAILED.append(f"data-juicer does not import: {(res.stderr.strip().splitlines() or ['?'])[-1][:160]}")
            return None, _FAILED[0]
    return py, ""


def prepare_input(files: list[Path], dest: Path) -> tuple[Path, int]:
    """A copy of the corpus data-juicer's Ray reader can load: ``{"text", "meta": "<json>"}`` per line.

    Returns (folder, documents). Reused only when made from the same files (paths, sizes, mtimes).
    """
    import zstandard

    stamp = dest / "_docs.json"
    source = [[str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns] for f in files]
    if stamp.exists():
        made = json.loads(stamp.read_text())
        if made.get("source") == source:
            return dest, made["docs"]
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    docs = 0
    for f in files:
        with (dest / f.name).open("wb") as raw, zstandard.ZstdCompressor(level=3).stream_writer(raw) as zw:
            out = io.TextIOWrapper(zw, encoding="utf-8", write_through=True)
            for line in iter_lines(f):
                rec = json.loads(line)
                text = rec.pop("text")
                out.write(json.dumps({"text": text, "meta": json.dumps(rec, ensure_ascii=False)},
                                     ensure_ascii=False) + "\n")
                docs += 1
            out.flush()
    stamp.write_text(json.dumps({"docs": docs, "source": source}))
    return dest, docs


def punctuation_pattern() -> str:
    """SlimPajama's punctuation (Python's ``string.punctuation``) as one regex character class."""
    return "[" + re.escape(string.punctuation) + "]"


def config_yaml(dataset: Path, export: Path, work: Path, cpus: int) -> str:
    """data-juicer's job config: one op, ray_bts_minhash_deduplicator, set to SlimPajama's definition."""
    pat = punctuation_pattern().replace("'", "''")  # YAML single-quoted scalar
    return f"""project_name: bench_dedup
executor_type: ray
ray_address: local
dataset_path: {dataset}
export_path: {export}
work_dir: {work}
text_keys: text
np: {cpus}
read_options:
  block_size: 268435456
open_tracer: false
open_monitor: false
event_logging:
  enabled: false
process:
  - ray_bts_minhash_deduplicator:
      tokenization: character
      window_size: 13
      lowercase: true
      ignore_pattern: '{pat}'
      num_permutations: 128
      jaccard_threshold: 0.8
      num_bands: 9
      num_rows_per_band: 13
"""


def run_datajuicer(py: Path, dataset: Path, work: Path, cpus: int, timeout: float = 3600) -> tuple[Measured, dict]:
    """``dj-process --config`` in a fresh process (its own local Ray); returns the measurement and
    {"kept": documents exported, "phases": {minhash, merge, filter seconds from its log}}."""
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    export = work / "out" / "result.jsonl"
    cfg = work / "config.yaml"
    cfg.write_text(config_yaml(dataset, export, work / "dj_work", cpus), encoding="utf-8")
    m = run_measured([str(py.parent / "dj-process"), "--config", str(cfg)], timeout=timeout,
                     env={"RAY_ADDRESS": "", "PYTHONWARNINGS": "ignore"})
    info: dict = {"phases": {}}
    for name in ("MinHash", "merge", "filter"):
        hit = re.findall(rf"{name} time = ([0-9.]+)", m.stdout + m.stderr)
        if hit:
            info["phases"][name.lower()] = float(hit[-1])
    if m.ok:
        # Ray mode exports a folder named like export_path holding one .json (JSON lines) per block
        outs = sorted(p for p in export.rglob("*") if p.is_file()) if export.is_dir() else [export]
        info["kept"] = sum(1 for f in outs for _ in iter_lines(f))
    (work / "dj.log").write_text(m.stdout + "\n" + m.stderr, encoding="utf-8")
    return m, info
