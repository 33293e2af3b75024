"""Scale rehearsal of ``slimpipe dedup``: a generated corpus with planted duplicates and known truth at
0.5, 2 and 8 GB of text, run on the distributed components path, projected to 1 TB on 100 nodes.

    .venv/bin/python benchmarks/bench_dedup_scale.py [--sizes 0.5,2,8] [--code DIR] [--no-append]

Corpus (written once, streamed, cached under ``benchmarks/_work/scale/``; never committed). The pool is
the real text of ``../shared/corpus/redpajama-mini`` with one document per group of measured duplicates
(``provenance/dup_pairs.tsv``, J >= 0.8, groups joined through shared members), minus documents under 300 cleaned characters (the short filter would drop
them) and documents whose non-space characters are < 60% ASCII letters and digits. Variant ``v`` of a
pool document maps its ASCII letters (both cases alike) and digits through a permutation drawn for ``v``
(one ``bytes.translate``: fast, and it keeps the text's word and character statistics while no 13-gram
of the cleaned text is shared between variants). Every variant of every document is a *base*; a
deterministic hash of (variant, document) makes 1 in 7 bases also get an **exact copy** (same text) and 2
in 7 a **near copy**: ``bench_dedup_growth.Perturber`` replaces a share ``rate`` of its words
(``--near-rates``, fixed per document), then the variant's permutation. So about 10% of the documents
are exact and 20% near copies. Copies land in the partner variant's file (variants 2p and 2p+1 swap
copies), shuffled among its lines, so duplicates cross files and input ranges. Files are
``<source>_<variant>.jsonl.zst`` (zstd level 3) and one unit is one source's pair of variants; a size
takes the shortest prefix of units (pair-major, all sources alike) with at least that much text, so the
smaller corpora are prefixes of the larger ones and sizes are approximate (the table prints the real
ones). The truth is one parquet row per document (file, line, family, kind, rate).

Each size runs ``slimpipe dedup --preset slimpajama --max-edges-in-memory 0 --keep-intermediates`` (the
distributed connected components that 1 TB would take) in a fresh process with a fresh local Ray on every
CPU, once (``_dedup_stages.run_staged``: per-stage driver memory from its progress lines). Memory is
sampled from outside every 0.2 s (``_common.TreeSampler``): the driver process, the largest Ray task
process (``ray::*``) and the summed tree. Quality from ``removed/*.parquet`` against the truth:
removal recall = planted families with a member removed as a duplicate (exact and near apart, near by
rate), precision = removed duplicates whose ``duplicate_of`` is in their own planted family. A sample of
near pairs is measured with exact character-13-gram Jaccard (slimpipe's cleaning and
``jaccard_exact``), and the recall the 9 x 13 bands should give at those Jaccards is printed beside it.

Checks: the driver's and the largest task's peak RSS stay flat (largest size / smallest <= 1.25) and
under ``--driver-bound-mb`` / ``--task-bound-mb``; wall time and stage time grow at most linear + 10% in
text bytes. The 1 TB projection (per stage: seconds, intermediates, files, driver memory) scales the
largest size's per-byte figures to 1e12 bytes of input files over ``--nodes`` x ``--node-cores`` cores at
the per-core rate measured here, and names the stage that limits first.

The plan gives 1 GB of input per hash partition but never fewer than 4 partitions, so up to ~4 GB of
input every partition task (buckets, components, keep) sees more rows as the input grows, and the
largest task's memory grows with it until the 1 GB-per-partition cap. ``--partition-mb M`` passes
``--partitions`` = input MB / M at every size, holding the data per partition task fixed as it is at
1 TB, so the flatness check then measures what a task's memory depends on.

``--code DIR`` runs the slimpipe in DIR (PYTHONPATH and working directory), e.g. a clean checkout
``/work/wt-base``; the default is this tree. The commit measured is printed and recorded.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    CODE,
    DEFAULT_CORPUS,
    DEFAULT_PAIRS,
    MB,
    WORK,
    corpus_files,
    iter_lines,
    loadavg,
    machine_line,
    publish,
    table,
)

SCALE = WORK / "scale"
GEN_VERSION = 2
EXACT_SHARE, NEAR_SHARE = 1 / 7, 2 / 7  # of bases: 10% / 20% of all documents
MIN_CLEAN_CHARS = 300
MIN_ALNUM_SHARE = 0.6
GB = 1e9
TB = 1e12
_M32 = 0xFFFFFFFF
_ASCII_ALNUM = re.compile(r"[A-Za-z0-9]")
_SPACE = re.compile(r"\s")


# --------------------------------------------------------------------------- generation
def _u(*keys: int) -> float:
    """A deterministic uniform [0, 1) from integer keys."""
    h = hashlib.blake2b(",".join(map(str, keys)).encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") / 2.0**64


def variant_table(v: int) -> bytes:
    """``bytes.translate`` table of variant ``v``: one permutation of a-z (applied to A-Z alike) and of 0-9."""
    rng = random.Random(1_000_003 * (v + 1))
    low = list("abcdefghijklmnopqrstuvwxyz")
    dig = list("0123456789")
    rng.shuffle(low)
    rng.shuffle(dig)
    src = "abcdefghijklmnopqrstuvwxyz" + "abcdefghijklmnopqrstuvwxyz".upper() + "0123456789"
    dst = "".join(low) + "".join(low).upper() + "".join(dig)
    return bytes.maketrans(src.encode(), dst.encode())


def load_pool(corpus: Path, pairs: Path) -> list[dict]:
    """Pool documents per file: {'file', 'docs': [(text bytes, rest-of-record JSON bytes)]}."""
    from slimpipe.text import clean_for_hash, normalize

    parent: dict[tuple[str, int], tuple[str, int]] = {}

    def find(x: tuple[str, int]) -> tuple[str, int]:
        while parent.setdefault(x, x) != x:
            x = parent[x]
        return x

    if pairs.exists():
        for line in pairs.read_text().splitlines()[1:]:
            f = line.split("\t")
            ra, rb = find((f[0], int(f[1]))), find((f[2], int(f[3])))
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)
    in_pair = {x for x in parent if find(x) != x}  # every member of a measured duplicate group but its first
    pool = []
    for path in corpus_files(corpus):
        docs = []
        for line_no, line in enumerate(iter_lines(path)):
            if (path.name, line_no) in in_pair:
                continue
            rec = json.loads(line)
            text = rec.pop("text")
            nonspace = len(text) - len(_SPACE.findall(text))
            if nonspace == 0 or len(_ASCII_ALNUM.findall(text)) < MIN_ALNUM_SHARE * nonspace:
                continue
            if len(clean_for_hash(normalize(text))) < MIN_CLEAN_CHARS:
                continue
            rest = json.dumps(rec, ensure_ascii=False).encode("utf-8", "surrogatepass")
            docs.append((text, rest))
        pool.append({"file": path.name, "docs": docs})
    return pool


def _line(text: bytes, rest: bytes) -> bytes:
    body = json.dumps(text.decode("utf-8", "surrogatepass"), ensure_ascii=False).encode("utf-8", "surrogatepass")
    tail = b"}" if rest == b"{}" else b", " + rest[1:]
    return b'{"text": ' + body + tail + b"\n"


class Generator:
    """Writes units (one source's pair of variants) on demand; a unit already written is reused."""

    def __init__(self, corpus: Path, pairs: Path, near_rates: list[float]):
        self.corpus, self.pairs, self.near_rates = corpus, pairs, near_rates
        self.dir = SCALE / "corpus"
        self.truth_dir = SCALE / "truth"
        self.params = {"version": GEN_VERSION, "corpus": str(corpus), "near_rates": near_rates,
                       "sources": {f.name: f.stat().st_size for f in corpus_files(corpus)},
                       "pairs": pairs.stat().st_size if pairs.exists() else None,
                       "min_clean_chars": MIN_CLEAN_CHARS, "min_alnum_share": MIN_ALNUM_SHARE}
        self._pool: list[dict] | None = None
        self._perturbers: dict[float, object] = {}
        self._near_cache: dict[tuple[int, int], bytes] = {}

    def pool(self) -> list[dict]:
        if self._pool is None:
            t0 = time.perf_counter()
            self._pool = load_pool(self.corpus, self.pairs)
            n = sum(len(p["docs"]) for p in self._pool)
            mb = sum(len(t.encode("utf-8", "surrogatepass")) for p in self._pool for t, _ in p["docs"]) / MB
            print(f"pool: {n:,} docs, {mb:.1f} MB of text ({time.perf_counter() - t0:.0f} s)", flush=True)
            # texts as UTF-8 bytes from here on (translate works on bytes)
            for p in self._pool:
                p["docs"] = [(t.encode("utf-8", "surrogatepass"), r) for t, r in p["docs"]]
        return self._pool

    def _stamp_ok(self) -> bool:
        stamp = SCALE / "params.json"
        if stamp.exists() and json.loads(stamp.read_text()) == self.params:
            return True
        self.dir.mkdir(parents=True, exist_ok=True)
        self.truth_dir.mkdir(parents=True, exist_ok=True)
        for p in (SCALE / "units").glob("unit_*.json") if (SCALE / "units").is_dir() else []:
            p.unlink()  # our own unit stamps: every unit is rewritten under the new parameters
        (SCALE / "units").mkdir(parents=True, exist_ok=True)
        stamp.write_text(json.dumps(self.params))
        return False

    def near_text(self, fi: int, di: int, text: bytes) -> tuple[bytes, float]:
        from bench_dedup_growth import Perturber

        rate = self.near_rates[int(_u(7, fi, di) * len(self.near_rates))]
        key = (fi, di)
        if key not in self._near_cache:
            pert = self._perturbers.get(rate)
            if pert is None:
                pert = self._perturbers[rate] = Perturber(10_000 + self.near_rates.index(rate), rate)
            near = pert(text.decode("utf-8", "surrogatepass"))
            self._near_cache[key] = near.encode("utf-8", "surrogatepass")
        return self._near_cache[key], rate

    def unit(self, u: int) -> dict:
        """Unit ``u``: pair ``u // nsrc`` of source file ``u % nsrc``; written unless already there."""
        stamp = SCALE / "units" / f"unit_{u:05d}.json"
        if stamp.exists():
            return json.loads(stamp.read_text())
        import pyarrow as pa
        import pyarrow.parquet as pq
        import zstandard

        pool = self.pool()
        fi = u % len(pool)
        pair = u // len(pool)
        src = pool[fi]
        stem = src["file"].replace("_sample.jsonl.zst", "").replace(".jsonl.zst", "")
        variants = (2 * pair, 2 * pair + 1)
        bases: dict[int, list] = {}
        copies: dict[int, list] = {}
        for v in variants:
            tab = variant_table(v)
            bases[v], copies[v] = [], []
            for di, (text, rest) in enumerate(src["docs"]):
                fam = (v << 24) | (fi << 20) | di
                t = text.translate(tab)
                bases[v].append((t, rest, fam, 0, 0.0))
                x = _u(v, fi, di)
                if x < EXACT_SHARE:
                    copies[v].append((t, rest, fam, 1, 0.0))
                elif x < EXACT_SHARE + NEAR_SHARE:
                    near, rate = self.near_text(fi, di, text)
                    copies[v].append((near.translate(tab), rest, fam, 2, rate))
        info = {"unit": u, "files": [], "text_bytes": 0, "docs": 0, "kinds": [0, 0, 0]}
        cctx = zstandard.ZstdCompressor(level=3)
        truth = {"file": [], "line": [], "family": [], "kind": [], "rate": [], "nbytes": []}
        for v, partner in (variants, variants[::-1]):
            rows = bases[v] + copies[partner]
            random.Random(v * 7919 + fi).shuffle(rows)
            name = f"{stem}_{v:05d}.jsonl.zst"
            dst = self.dir / name
            tmp = dst.with_suffix(".tmp")
            with tmp.open("wb") as fh, cctx.stream_writer(fh) as w:
                for line_no, (t, rest, fam, kind, rate) in enumerate(rows):
                    w.write(_line(t, rest))
                    for k, val in (("file", name), ("line", line_no), ("family", fam), ("kind", kind),
                                   ("rate", rate), ("nbytes", len(t))):
                        truth[k].append(val)
                    info["kinds"][kind] += 1
                    info["text_bytes"] += len(t)
            tmp.replace(dst)
            info["files"].append(name)
            info["docs"] += len(rows)
        pq.write_table(pa.table(truth), self.truth_dir / f"unit_{u:05d}.parquet")
        stamp.write_text(json.dumps(info))
        return info

    def units_for(self, text_bytes: float) -> list[dict]:
        """The shortest prefix of units with at least ``text_bytes`` of text (written as needed)."""
        self._stamp_ok()
        out, total, u = [], 0, 0
        while total < text_bytes:
            t0 = time.perf_counter()
            fresh = not (SCALE / "units" / f"unit_{u:05d}.json").exists()
            info = self.unit(u)
            if fresh:
                print(f"  unit {u}: {', '.join(info['files'])}: {info['text_bytes'] / MB:.0f} MB text, "
                      f"{time.perf_counter() - t0:.0f} s (total {(total + info['text_bytes']) / MB:,.0f} MB)",
                      flush=True)
            out.append(info)
            total += info["text_bytes"]
            u += 1
        return out

    def near_jaccard(self, units: list[dict], n: int = 60) -> dict[float, list[float]]:
        """Exact char-13-gram Jaccard (slimpipe's cleaning) of up to ``n`` sampled near copies per rate."""
        from slimpipe.dedup.minhash import jaccard_exact
        from slimpipe.text import clean_for_hash, normalize

        pool = self.pool()
        found: dict[float, list[float]] = {r: [] for r in self.near_rates}
        rng = random.Random(0)
        cands = [(fi, di) for fi, p in enumerate(pool) for di in range(len(p["docs"]))
                 if len(p["docs"][di][0]) < 100_000]
        rng.shuffle(cands)
        for fi, di in cands:
            text = pool[fi]["docs"][di][0]
            near, rate = self.near_text(fi, di, text)
            if len(found[rate]) >= n:
                if all(len(v) >= n for v in found.values()):
                    break
                continue
            a = clean_for_hash(normalize(text.decode("utf-8", "surrogatepass")))
            b = clean_for_hash(normalize(near.decode("utf-8", "surrogatepass")))
            found[rate].append(jaccard_exact(a, b))
        return found


# --------------------------------------------------------------------------- quality
def quality(out: Path, units: list[dict]) -> dict:
    """Removal recall per kind (and per near rate) and precision of the removed duplicates, vs the truth."""
    import pyarrow.parquet as pq

    truth = [pq.read_table(SCALE / "truth" / f"unit_{i['unit']:05d}.parquet").to_pydict() for i in units]
    fam_of: dict[str, int] = {}
    fam_kind: dict[int, tuple[int, float]] = {}
    members: dict[int, int] = {}
    for t in truth:
        for f, ln, fam, kind, rate in zip(t["file"], t["line"], t["family"], t["kind"], t["rate"], strict=True):
            fam_of[f"{f}:{ln}"] = fam
            members[fam] = members.get(fam, 0) + 1
            if kind:
                fam_kind[fam] = (kind, rate)
    rem = pq.read_table(out / "removed", columns=["id", "reason", "duplicate_of"]).to_pydict()
    removed_in: dict[int, int] = {}
    n_dup = ok = unplanted = 0
    reasons: dict[str, int] = {}
    for rid, reason, dup in zip(rem["id"], rem["reason"], rem["duplicate_of"], strict=True):
        reasons[reason] = reasons.get(reason, 0) + 1
        if reason not in ("exact_duplicate", "near_duplicate"):
            continue
        n_dup += 1
        fam = fam_of.get(rid.split("/", 1)[1])
        dfam = fam_of.get(dup.split("/", 1)[1]) if dup else None
        if fam is not None and fam == dfam:
            ok += 1
        if fam is not None:
            removed_in[fam] = removed_in.get(fam, 0) + 1
            if members[fam] == 1:
                unplanted += 1
    by: dict[str, list[int]] = {}
    for fam, (kind, rate) in fam_kind.items():
        done = min(removed_in.get(fam, 0), members[fam] - 1)
        for key in ("all", "exact" if kind == 1 else "near", *([f"near {rate:g}"] if kind == 2 else [])):
            s = by.setdefault(key, [0, 0])
            s[0] += done
            s[1] += members[fam] - 1
    return {"recall": {k: v[0] / v[1] for k, v in by.items() if v[1]}, "need": {k: v[1] for k, v in by.items()},
            "precision": ok / n_dup if n_dup else None, "removed_dups": n_dup, "unplanted": unplanted,
            "reasons": reasons, "docs": len(fam_of)}


def _h(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=12).digest()


def corpus_index(corpus: list[Path], units: list[dict]) -> dict:
    """Text hash -> planted family and counts of the generated corpus, for ``score_kept``."""
    import pyarrow.parquet as pq

    fam_of: dict[tuple[str, int], int] = {}
    size: dict[int, int] = {}
    kind_of: dict[int, int] = {}
    for i in units:
        t = pq.read_table(SCALE / "truth" / f"unit_{i['unit']:05d}.parquet").to_pydict()
        for f, ln, fam, kind in zip(t["file"], t["line"], t["family"], t["kind"], strict=True):
            fam_of[(f, ln)] = fam
            size[fam] = size.get(fam, 0) + 1
            if kind:
                kind_of[fam] = kind
    count: dict[bytes, int] = {}
    fam_of_hash: dict[bytes, int] = {}
    for path in corpus:
        for ln, line in enumerate(iter_lines(path)):
            h = _h(json.loads(line)["text"])
            count[h] = count.get(h, 0) + 1
            fam_of_hash[h] = fam_of[(path.name, ln)]
    return {"size": size, "kind_of": kind_of, "count": count, "fam_of_hash": fam_of_hash}


def score_kept(index: dict, kept: list[Path]) -> dict:
    """Quality of any deduplicator from what it kept: documents matched by a hash of their text.

    Per planted family (a base and its copy), removed = its texts in the corpus minus those kept;
    recall = sum over families of min(removed, size - 1) / sum(size - 1) (exact and near apart);
    precision = that sum / all documents removed (removing both of a pair, or a document with no
    planted copy, counts against it). Works for slimpipe's, data-juicer's and datatrove's outputs alike.
    """
    size, kind_of, count, fam_of_hash = index["size"], index["kind_of"], index["count"], index["fam_of_hash"]
    left = dict(count)
    unmatched = kept_n = 0
    for path in kept:
        for line in iter_lines(path):
            h = _h(json.loads(line)["text"])
            kept_n += 1
            if left.get(h, 0) > 0:
                left[h] -= 1
            else:
                unmatched += 1
    removed_fam: dict[int, int] = {}
    for h, n in left.items():
        if n:
            removed_fam[fam_of_hash[h]] = removed_fam.get(fam_of_hash[h], 0) + n
    done = {1: 0, 2: 0}
    need = {1: 0, 2: 0}
    for fam, kind in kind_of.items():
        done[kind] += min(removed_fam.get(fam, 0), size[fam] - 1)
        need[kind] += size[fam] - 1
    removed = sum(removed_fam.values())
    good = done[1] + done[2]
    return {"docs": sum(count.values()), "kept": kept_n, "removed": removed, "unmatched": unmatched,
            "recall_exact": done[1] / need[1] if need[1] else None,
            "recall_near": done[2] / need[2] if need[2] else None,
            "recall": good / (need[1] + need[2]) if need[1] + need[2] else None,
            "precision": good / removed if removed else None}


def lsh_p(j: float, bands: int = 9, rows: int = 13) -> float:
    return 1 - (1 - j**rows) ** bands


# --------------------------------------------------------------------------- run
def code_commit(code: Path) -> str:
    res = subprocess.run(["git", "-C", str(code), "log", "-1", "--format=%h %s"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(code), "status", "--porcelain", "--", "slimpipe"],
                           capture_output=True, text=True).stdout.strip()
    head = res.stdout.strip()[:90] or "unknown commit"
    return head + (" (+ uncommitted changes under slimpipe/)" if dirty else "")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="0.5,2,8", help="GB of text, comma-separated (default 0.5,2,8)")
    ap.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS, help="real text to grow from")
    ap.add_argument("--pairs", type=Path, default=DEFAULT_PAIRS, help="its measured duplicate pairs (excluded)")
    ap.add_argument("--near-rates", default="0.01,0.02,0.03", help="word-replacement rates of near copies")
    ap.add_argument("--code", type=Path, default=CODE,
                    help="slimpipe checkout to run (default: $SLIMPIPE_BENCH_CODE, else this tree)")
    ap.add_argument("--nodes", type=int, default=100)
    ap.add_argument("--node-cores", type=int, default=64)
    ap.add_argument("--driver-bound-mb", type=float, default=1000.0)
    ap.add_argument("--task-bound-mb", type=float, default=1500.0)
    ap.add_argument("--generate-only", action="store_true", help="write the corpora and stop")
    ap.add_argument("--timeout", type=float, default=5400, help="seconds per slimpipe run (default 5400)")
    ap.add_argument("--partition-mb", type=float, default=None,
                    help="pass --partitions = input MB / this at every size (default: the plan's own count, "
                         "1 GB of input per partition but never fewer than 4, so below ~4 GB of input each "
                         "partition task sees more data as the input grows)")
    ap.add_argument("--no-append", action="store_true", help="do not append to benchmarks/RESULTS.md")
    ap.add_argument("--peers", type=float, metavar="GB",
                    help="instead: run bench_dedup.py (slimpipe, data-juicer, datatrove) on a corpus of GB of text "
                         "grown the same way, and score every side's output against the planted truth")
    ap.add_argument("--peer-args", default="", help="extra options for bench_dedup.py (e.g. '--skip-word')")
    args = ap.parse_args(argv)
    code = args.code.resolve()
    if code != CODE:
        sys.path.insert(0, str(code))
        os.environ["PYTHONPATH"] = os.pathsep.join([str(code), *filter(None, [os.environ.get("PYTHONPATH")])])
    from _dedup_stages import (
        PARTITION_BYTES,
        PROJECTION_HEADER,
        RANGE_BYTES,
        manifest_bytes,
        projection_rows,
        run_staged,
    )

    import slimpipe

    print(f"slimpipe from {Path(slimpipe.__file__).parent} ({code_commit(code)})", flush=True)
    sizes = sorted({float(s) for s in args.sizes.split(",")}) if not args.peers else [args.peers]
    corpus = args.corpus.resolve()
    gen = Generator(corpus, args.pairs.resolve(), [float(r) for r in args.near_rates.split(",")])
    load_start = loadavg()
    plan = {}
    for s in sizes:
        print(f"corpus {s:g} GB ...", flush=True)
        plan[s] = gen.units_for(s * GB)
    jac_cache = SCALE / "near_jaccard.json"
    if args.peers and jac_cache.exists() and json.loads(jac_cache.read_text()).get("params") == gen.params:
        jac = {float(k): v for k, v in json.loads(jac_cache.read_text())["jaccard"].items()}
    elif args.peers:  # the sample needs the pool (minutes on a loaded machine); a scale run caches it
        jac = {r: [] for r in gen.near_rates}
    else:
        jac = gen.near_jaccard(plan[sizes[0]])
        jac_cache.write_text(json.dumps({"params": gen.params, "jaccard": jac}))
    for rate, js in jac.items():
        js.sort()
        if js:
            print(f"near copies at rate {rate:g}: {len(js)} sampled, exact J median {js[len(js) // 2]:.3f}, "
                  f"min {js[0]:.3f}; 9x13 bands find {sum(map(lsh_p, js)) / len(js):.3f} of them in expectation",
                  flush=True)
    if args.generate_only:
        return 0
    if args.peers:
        return peers(gen, args, code, jac)

    cpus = os.cpu_count() or 1
    results = []
    for s in sizes:
        units = plan[s]
        files = [SCALE / "corpus" / f for i in units for f in i["files"]]
        text = sum(i["text_bytes"] for i in units)
        in_bytes = sum(f.stat().st_size for f in files)
        out = SCALE / f"out_{s:g}gb"
        print(f"slimpipe dedup at {s:g} GB ({len(files)} files, {text / MB:,.0f} MB text, {in_bytes / MB:,.0f} MB "
              f"compressed; load {loadavg()}) ...", flush=True)
        t_load = loadavg()
        for attempt in (1, 2):  # a loaded machine can time Ray's own start-up out: one more try
            parts = ("--partitions", str(math.ceil(in_bytes / (args.partition_mb * MB)))) if args.partition_mb else ()
            run = run_staged(files, out, "--preset", "slimpajama", "--max-edges-in-memory", "0",
                             "--keep-intermediates", *parts, timeout=args.timeout, cwd=code)
            m = run.measured
            if m.ok or "cannot start or reach a local Ray" not in m.stderr or attempt == 2:
                break
            print(f"  Ray did not start ({m.error()}); trying again", flush=True)
        print(f"  {m.seconds:.0f} s" if m.ok else f"  failed: {m.error()}", flush=True)
        rep = json.loads((out / "report.json").read_text()) if m.ok else None
        q = quality(out, units) if m.ok else None
        results.append({"size": s, "units": units, "text": text, "in_bytes": in_bytes, "files": len(files),
                        "run": run, "rep": rep, "q": q, "load": f"{t_load} -> {loadavg()}",
                        "manifests": manifest_bytes(out) if m.ok else {}})

    # ---- main table
    rows = []
    for r in results:
        m = r["run"].measured
        if not m.ok:
            rows.append([f"{r['size']:g} GB", f"{r['text'] / MB:,.0f}", f"failed: {m.error()}", *["-"] * 11, r["load"]])
            continue
        p, q, rep = m.peaks, r["q"], r["rep"]
        stage_s = sum(rep["timings"].values())
        rec = q["recall"]
        rows.append([f"{r['size']:g} GB", f"{r['text'] / MB:,.0f}", f"{q['docs']:,}", f"{m.seconds:,.0f}",
                     f"{stage_s:,.0f}", f"{r['text'] / MB / m.seconds / cpus:.2f}", f"{r['text'] / MB / stage_s / cpus:.2f}",
                     f"{r['run'].driver_overall / MB:,.0f}", f"{p.task_rss / MB:,.0f}", f"{p.tree_rss / MB:,.0f}",
                     f"{rec.get('exact', 0):.3f}", f"{rec.get('near', 0):.3f}", fmt3(q["precision"]),
                     f"{q['unplanted']:,}", r["load"]])
    header = ["size", "text MB", "docs", "wall s", "stage s", "MB/s/core", "stage MB/s/core", "driver peak MB", "largest task MB",
              "tree RSS MB", "recall exact", "recall near", "precision", "unplanted removals", "load avg"]
    main_table = table(header, rows, "lrrrrrrrrrrrrrl")

    # ---- per stage: seconds and intermediates at each size
    ok = [r for r in results if r["run"].measured.ok]
    stage_rows = []
    if ok:
        stages = list(ok[-1]["rep"]["timings"])
        groups = _group_stages(stages)
        for g, members in groups.items():
            row = [g]
            for r in ok:
                rep = r["rep"]
                sec = sum(rep["timings"].get(x, 0) for x in members)
                inter = rep.get("intermediates") or {}
                files = sum(inter.get(x, {}).get("files", 0) for x in members)
                nbytes = sum(inter.get(x, {}).get("bytes", 0) for x in members)
                drv = max((r["run"].driver_peak.get(x, 0) for x in members), default=0)
                row.append(f"{sec:,.1f} s / {nbytes / MB:,.1f} MB / {files:,} f / {drv / MB:,.0f} MB")
            stage_rows.append(row)
    stage_table = table(["stage", *(f"{r['size']:g} GB: s / MB / files / driver" for r in ok)], stage_rows,
                        "l" + "r" * len(ok))

    # ---- quality detail
    qrows = []
    rates = [float(x) for x in args.near_rates.split(",")]
    for r in ok:
        q = r["q"]
        qrows.append([f"{r['size']:g} GB", f"{q['need'].get('exact', 0):,}", f"{q['recall'].get('exact', 0):.4f}",
                      *(f"{q['recall'].get(f'near {x:g}', 0):.4f}" for x in rates),
                      f"{q['removed_dups']:,}", fmt3(q["precision"]),
                      ", ".join(f"{k} {v:,}" for k, v in sorted(q["reasons"].items()))])
    expected = {x: (sum(map(lsh_p, jac[x])) / len(jac[x]) if jac[x] else None) for x in rates}
    qrows.append(["expected (9x13 at sampled J)", "", "1.0000", *(fmt3(expected[x]) for x in rates), "", "", ""])
    qtable = table(["size", "exact copies", "recall exact",
                    *(f"recall near r={x:g} (J~{_med(jac[x])})" for x in rates),
                    "removed as dups", "precision", "removed by reason"], qrows)

    # ---- projection to 1 TB
    proj_lines: list[str] = []
    notes: list[str] = []
    checks: list[str] = []
    limit = "-"
    if ok:
        big, small = ok[-1], ok[0]
        rep = big["rep"]
        basis = rep.get("intermediates") or {}
        proj_lines = table(PROJECTION_HEADER, projection_rows(basis, big["run"].driver_peak, big["manifests"],
                                                              big["in_bytes"]), "lrrrrrrrr")
        cores = args.nodes * args.node_cores
        scale_tb = TB / big["in_bytes"]
        groups = _group_stages(list(rep["timings"]))
        trows = []
        worst = ("", 0.0)
        for g, members in groups.items():
            sec = sum(rep["timings"].get(x, 0) for x in members)
            sec_tb = sec * scale_tb * cpus / cores
            nbytes = sum((basis.get(x) or {}).get("bytes", 0) for x in members) * scale_tb
            trows.append([g, f"{sec:,.1f}", f"{sec_tb / 60:,.1f}", f"{nbytes / 1e9 / args.nodes:,.2f}"])
            if sec_tb > worst[1]:
                worst = (g, sec_tb)
        fixed = big["run"].measured.seconds - sum(rep["timings"].values())
        total_tb = sum(float(x[2]) for x in trows) if trows else 0
        trows.append(["**all stages**", f"{sum(rep['timings'].values()):,.1f}", f"{total_tb:,.1f}", ""])
        proj_lines += ["", *table([f"stage ({big['size']:g} GB measured)", "seconds here",
                                   f"minutes @1 TB on {args.nodes} x {args.node_cores} cores",
                                   "intermediate GB per node @1 TB"], trows)]
        limit = worst[0]
        drv_tb = max((float(x[-1].replace(",", "")) for x in projection_rows(
            basis, big["run"].driver_peak, big["manifests"], big["in_bytes"])[:-1] if x[-1] != "-"), default=0)
        notes.append(f"1 TB projection: stage seconds measured at {big['size']:g} GB x (1e12 / {big['in_bytes'] / MB:,.0f} "
                     f"MB of input files) x ({cpus} cores here / {cores:,} cores), i.e. the per-core rate of this "
                     f"machine and perfect scaling (network and object-store spilling not measured); "
                     f"map steps one task per {RANGE_BYTES >> 20} MB of input, partition steps per "
                     f"{PARTITION_BYTES >> 20} MB; fixed cost here {fixed:.0f} s (Ray start, planning, report).")
        # checks
        dr = [r["run"].driver_overall for r in ok]
        tk = [r["run"].measured.peaks.task_rss for r in ok]
        checks.append(f"driver peak {max(dr) / MB:,.0f} MB (bound {args.driver_bound_mb:,.0f}: "
                      f"{'met' if max(dr) <= args.driver_bound_mb * MB else 'NOT met'}), "
                      f"{big['size']:g}/{small['size']:g} GB = {dr[-1] / dr[0]:.2f} "
                      f"({'flat' if dr[-1] <= 1.25 * dr[0] else 'GROWS'})")
        checks.append(f"largest task {max(tk) / MB:,.0f} MB (bound {args.task_bound_mb:,.0f}: "
                      f"{'met' if max(tk) <= args.task_bound_mb * MB else 'NOT met'}), "
                      f"{big['size']:g}/{small['size']:g} GB = {tk[-1] / max(tk[0], 1):.2f} "
                      f"({'flat' if tk[-1] <= 1.25 * tk[0] else 'GROWS'})")
        if big is not small:
            lin = big["text"] / small["text"]
            wall = big["run"].measured.seconds / small["run"].measured.seconds
            st = sum(big["rep"]["timings"].values()) / sum(small["rep"]["timings"].values())
            checks.append(f"time {big['size']:g}/{small['size']:g} GB = {wall:.2f} wall, {st:.2f} stages vs "
                          f"linear {lin:.2f} (goal <= {1.1 * lin:.2f}: {'met' if st <= 1.1 * lin else 'NOT met'} "
                          f"on stages)")
        checks.append(f"1 TB of zstd input (~{big['text'] / big['in_bytes']:.1f} TB of text) on {args.nodes} x "
                      f"{args.node_cores} cores: {total_tb:,.1f} min of stages; "
                      f"limits first: {limit} ({worst[1] / 60:,.1f} min); driver at 1 TB ~{drv_tb:,.0f} MB")
    notes += [
        f"Corpus: {_gen_note(gen, results)}",
        "MB/s/core = text MB / wall seconds / CPUs (Ray's num_cpus = os.cpu_count()). stage s = the job's "
        "stage timings (wall minus Ray start, planning, report and plots).",
        "Driver peak = RSS of the slimpipe process; largest task = the highest RSS of any one Ray worker "
        "(process name ray::*); tree = summed RSS of the whole process tree (shared pages counted per process).",
        "Precision: a removed duplicate counts right when its duplicate_of is in its own planted family; "
        "unplanted removals = removed docs planted with no copy (the pool keeps one doc of each measured "
        "J >= 0.8 group of the real corpus, but weaker natural overlaps remain).",
        "Recall near by rate beside the recall SlimPajama's 9 x 13 bands should give at the sampled exact "
        "Jaccards (P = 1 - (1 - J^13)^9): the preset's LSH, not a defect, bounds it.",
        "One run per size on a shared 2-core machine: timings are noisy; the load average is in each row.",
    ]
    head = [f"Machine: {machine_line()} | load average at start {load_start}, at end {loadavg()}  ",
            f"Code measured: {code} ({code_commit(code)})  ",
            "Run: slimpipe dedup --preset slimpajama --max-edges-in-memory 0 --keep-intermediates"
            + (f" --partitions <input MB / {args.partition_mb:g}> (" + ", ".join(
                f"{r['size']:g} GB: {math.ceil(r['in_bytes'] / (args.partition_mb * MB))}" for r in results) + ")"
               if args.partition_mb else "") + ", one run per size, nice as launched\n"]
    if ok:
        big = ok[-1]
        q = big["q"]
        headline = (f"HEADLINE: {big['size']:g} GB ({big['text'] / GB:.2f} GB text) in "
                    f"{big['run'].measured.seconds:,.0f} s = {big['text'] / MB / big['run'].measured.seconds / cpus:.2f} "
                    f"MB/s/core; recall exact {q['recall'].get('exact', 0):.3f} near {q['recall'].get('near', 0):.3f}, "
                    f"precision {fmt3(q['precision'])}; " + "; ".join(checks))
    else:
        headline = "HEADLINE: no slimpipe run finished"
    publish("bench_dedup_scale", head, [main_table, stage_table, qtable, proj_lines], notes, headline,
            append=not args.no_append)
    return 0


PEER_OUTPUTS = {  # bench_dedup.py's row label (prefix) -> where that side's kept documents are
    "slimpipe dedup": ("dedup/slimpipe/kept", "**/*.jsonl.zst"),
    "data-juicer": ("dedup/datajuicer/out", "**/*"),
    "datatrove 4 stages (char13)": ("dedup/datatrove_char13/kept", "*.jsonl.zst"),
    "datatrove 4 stages (word5)": ("dedup/datatrove_word5/kept", "*.jsonl.zst"),
}


def peers(gen: Generator, args: argparse.Namespace, code: Path, jac: dict[float, list[float]]) -> int:
    """bench_dedup.py on a generated corpus of ``args.peers`` GB, then each side's quality vs the truth."""
    import shlex

    units = gen.units_for(args.peers * GB)
    folder = SCALE / f"peers_{args.peers:g}gb"
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for i in units:
        for name in i["files"]:
            link = folder / name
            if not link.exists():
                os.link(SCALE / "corpus" / name, link)  # hard links: bench_dedup reads one folder
            files.append(link)
    for extra in folder.glob("*.jsonl.zst"):
        if extra not in files:
            extra.unlink()  # our own link from a larger earlier prefix
    cmd = [sys.executable, str(Path(__file__).resolve().parent / "bench_dedup.py"), "--corpus", str(folder),
           *shlex.split(args.peer_args), *(["--no-append"] if args.no_append else [])]
    print("running", " ".join(cmd), flush=True)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env={**os.environ, "SLIMPIPE_BENCH_CODE": str(code)})
    out = []
    for line in proc.stdout:
        print(line, end="", flush=True)
        out.append(line)
    if proc.wait() != 0:
        print(f"bench_dedup.py failed (exit {proc.returncode})")
        return 1
    cells = {}
    for line in out:
        parts = [c.strip() for c in line.strip().strip("|").split("|")]
        for label in PEER_OUTPUTS:
            if line.startswith(f"| {label}") and len(parts) >= 9:
                cells[label] = parts
    rows = []
    sp_wall = None
    index = corpus_index(files, units)
    for label, (sub, pattern) in PEER_OUTPUTS.items():
        c = cells.get(label)
        if c is None:
            continue
        try:
            wall = float(c[2].replace(",", ""))
        except ValueError:
            rows.append([label, c[2], *["-"] * 7])
            continue
        root = WORK / sub
        kept = sorted(p for p in root.glob(pattern) if p.is_file() and not p.name.startswith(("_", "."))
                      and not p.name.endswith((".crc", ".json.tmp"))) if root.exists() else []
        q = score_kept(index, kept)
        if label == "slimpipe dedup":
            sp_wall = wall
        rows.append([label, f"{wall:,.1f}", f"{wall / sp_wall:.1f}x" if sp_wall else "-", c[5],
                     fmt3(q["recall_exact"]), fmt3(q["recall_near"]), fmt3(q["precision"]),
                     f"{q['removed']:,}", f"{q['unmatched']:,}"])
    text = sum(i["text_bytes"] for i in units)
    lines = table(["system", "wall s", "wall / slimpipe", "peak tree PSS MB", "recall exact", "recall near",
                   "precision", "docs removed", "kept docs not in input"], rows)
    notes = [f"Corpus: {len(files)} files, {text / MB:,.0f} MB of text, the first units of the scale rehearsal's "
             f"generated corpus (10% exact, 20% near copies at word-replacement rates {gen.near_rates}; near J "
             + ", ".join(f"r={r:g}: median {_med(js)}" for r, js in jac.items()) + ").",
             "Wall time and PSS from bench_dedup.py's run just above (same run, same cores); quality scored here "
             "from each side's kept documents (text hash) against the planted truth, see score_kept.",
             "The three use the same definition (char 13-grams, 9 x 13 LSH at 0.8) except datatrove word5; "
             "none verifies candidates, so recall of near copies is bounded by the bands."]
    head = [f"Machine: {machine_line()} | load average at end {loadavg()}  ",
            f"Code measured (slimpipe): {code} ({code_commit(code)})\n"]
    got = {r[0]: r for r in rows}
    ratios = [f"{k.split(' ')[0]}{' ' + k.split('(')[1].rstrip(')') if '(' in k else ''} {v[2]}"
              for k, v in got.items() if k != "slimpipe dedup"]
    headline = (f"HEADLINE: peers on {text / MB:,.0f} MB grown: wall vs slimpipe " + ", ".join(ratios)
                + " (goals: data-juicer >= 25x, datatrove >= 20x); quality (recall exact/near, precision): "
                + "; ".join(f"{k.split(' ')[0]}{' ' + k.split('(')[1].rstrip(')') if '(' in k else ''} "
                            f"{v[4]}/{v[5]}, {v[6]}" for k, v in got.items()))
    publish("bench_dedup_scale --peers (quality of bench_dedup's sides)", head, [lines], notes, headline,
            append=not args.no_append)
    return 0


def fmt3(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


def _med(js: list[float]) -> str:
    return f"{sorted(js)[len(js) // 2]:.2f}" if js else "?"


def _group_stages(stages: list[str]) -> dict[str, list[str]]:
    """The connected-components rounds grouped per scope (cc_global_r0_L, ... -> cc_global)."""
    groups: dict[str, list[str]] = {}
    for s in stages:
        g = re.sub(r"_(r\d+_\w+|finish)$", "", s) if s.startswith("cc_") else s
        groups.setdefault(g, []).append(s)
    return groups


def _gen_note(gen: Generator, results: list[dict]) -> str:
    if not results:
        return "-"
    r = results[-1]
    kinds = [sum(i["kinds"][k] for i in r["units"]) for k in range(3)]
    n = sum(kinds)
    return (f"the largest has {n:,} docs in {r['files']} files ({r['in_bytes'] / MB:,.0f} MB zstd-3): "
            f"{kinds[1] / n:.1%} exact copies, {kinds[2] / n:.1%} near copies (rates {gen.near_rates}), "
            f"variants by letter/digit permutation of the real text of {gen.corpus.name}; smaller sizes are "
            "prefixes of the same units.")


if __name__ == "__main__":
    raise SystemExit(main())
