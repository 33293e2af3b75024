"""Assemble the sample: allocate real text to sources, screen out natural near-duplicates, plant
known duplicates, shuffle, and write the files, the ground truth and the manifest.

Determinism: every random choice comes from ``random.Random(f"slimpipe.sample:{seed}:{purpose}")``
(string seeds are hashed with SHA-512, so they do not depend on ``PYTHONHASHSEED``), every input list
is sorted, timestamps are drawn from that RNG, and zstd runs at a fixed level without threads. The
same seed on the same Python installation therefore gives byte-identical files.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import os
import random
import sys
from collections import defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path

import zstandard

from slimpipe import storage

from ..sources import source_from_filename
from . import plant as P
from .harvest import Harvest, PyFile, TextFile, harvest
from .render import MIRRORS, Doc, Renderer
from .textsim import jaccard, lsh_probability, near_duplicate_pairs

FORMAT_VERSION = 1
ZSTD_LEVEL = 3
# Sidecars live in _meta/, which folder readers skip, so `slimpipe dedup DIR` reads only the data files.
GROUND_TRUTH = "_meta/ground_truth.jsonl"
MANIFEST = "_meta/sample_manifest.json"
SCREEN_THRESHOLD = 0.5  # base documents are kept pairwise below this cleaned 13-gram Jaccard
SLIMPAJAMA_THRESHOLD = 0.8
SHORT_CHARS = 200  # SlimPajama's short-document filter (cleaned characters)

# file -> text bytes at size=1.0. Shares follow RedPajama's order (CC > C4 > GitHub > ArXiv > Books >
# Wikipedia > StackExchange) but are flattened so that the small sources still hold enough documents.
TARGETS: dict[str, int] = {
    P.ARXIV: 300_000, P.BOOK: 280_000, P.C4: 640_000, P.CC19: 820_000, P.CC20: 820_000,
    P.GITHUB: 420_000, P.SE: 210_000, P.WIKI: 250_000,
}
FILES: tuple[str, ...] = tuple(sorted(TARGETS))
# chance that a document under SHORT_CHARS cleaned characters is kept, so the short filter has
# something to do in about the proportions SlimPajama reports (C4 most, books and arXiv none)
SHORT_KEEP = {P.C4: 0.6, P.CC19: 0.3, P.CC20: 0.3, P.SE: 0.03, P.WIKI: 0.3, P.GITHUB: 0.3, P.ARXIV: 0.0, P.BOOK: 0.0}
CC_CODE_SHARE = 0.15  # CommonCrawl has code pages too: ~15% of its bytes are "view source" pages
CC_CODE_MAX, GITHUB_MAX = 40_000, 30_000  # characters; larger files would crowd out the rest
PLANT_MAX = 40_000  # originals of planted copies stay below this (books and arXiv excepted)
_EDITED = {"2019-30": (dt.date(2018, 1, 1), dt.date(2019, 7, 1)), "2020-05": (dt.date(2018, 6, 1), dt.date(2020, 1, 15))}


def _rng(seed: int, purpose: str) -> random.Random:
    return random.Random(f"slimpipe.sample:{seed}:{purpose}")


def _bytes(doc: Doc) -> int:
    return len(doc.text.encode("utf-8"))


# --------------------------------------------------------------------------------------------------
# allocation


class _Allocator:
    """Hands each piece of real text to at most one base document, source by source."""

    def __init__(self, h: Harvest, r: Renderer, rng: random.Random, size: float) -> None:
        self.h, self.r, self.rng, self.size = h, r, rng, size
        self.used: set[str] = set()
        self.docs: dict[str, list[Doc]] = {f: [] for f in FILES}
        self.nbytes: dict[str, int] = dict.fromkeys(FILES, 0)
        self.target = {f: int(t * size) for f, t in TARGETS.items()}

    def full(self, file: str, share: float = 1.0) -> bool:
        return self.nbytes[file] >= self.target[file] * share

    def add(self, file: str, key: str, docs: Iterable[Doc]) -> None:
        """Keep a unit's documents until the file is full (the rest of that unit is simply unused)."""
        self.used.add(key)
        for d in docs:
            if self.full(file):
                return
            if len(d.cleaned) < SHORT_CHARS and self.rng.random() >= SHORT_KEEP[file]:
                continue
            self.docs[file].append(d)
            self.nbytes[file] += _bytes(d)

    def fill(self, file: str, candidates: list, render: Callable[[object], list[Doc]], share: float = 1.0) -> None:
        for cand in candidates:
            if self.full(file, share):
                return
            if cand.key in self.used:
                continue
            docs = render(cand)
            if docs:
                self.add(file, cand.key, docs)

    def shuffled(self, items: Iterable) -> list:
        out = list(items)
        self.rng.shuffle(out)
        return out

    def run(self) -> dict[str, list[Doc]]:
        h, r = self.h, self.r
        prose = list(h.prose)
        # books: whole packages of docstrings, and IDLE's history
        groups: dict[tuple[str, str], list[PyFile]] = defaultdict(list)
        for f in prose:
            if f.package:
                groups[(f.project, f.package)].append(f)
        book_max = int(min(180_000, max(20_000, 0.6 * self.target[P.BOOK])))
        cands: list = [k for k in sorted(groups) if sum(f.doc_chars for f in groups[k]) >= 25_000]
        cands += list(h.books)
        for cand in self.shuffled(cands):
            if self.full(P.BOOK):
                break
            if isinstance(cand, TextFile):
                if cand.key not in self.used:
                    self.add(P.BOOK, cand.key, [r.text_book(P.BOOK, cand)])
                continue
            files = [f for f in groups[cand] if f.key not in self.used]
            if sum(f.doc_chars for f in files) < 20_000:
                continue
            doc, used = r.package_book(P.BOOK, cand[1], files, book_max)
            self.docs[P.BOOK].append(doc)
            self.nbytes[P.BOOK] += _bytes(doc)
            self.used.update(f.key for f in used)
        # arXiv: the modules with the most documentation, typeset as LaTeX
        arxiv_max = int(min(50_000, max(8_000, self.target[P.ARXIV] / 5)))
        self.fill(P.ARXIV, self.shuffled(f for f in prose if f.doc_chars >= 8_000),
                  lambda f: r.arxiv_papers(P.ARXIV, f, arxiv_max))
        # Wikipedia: an article per small or medium module
        self.fill(P.WIKI, self.shuffled(f for f in prose if 600 <= f.doc_chars <= 15_000),
                  lambda f: r.wiki_articles(P.WIKI, f, 6_000))
        # StackExchange: help topics and per-function threads
        se_cands = self.shuffled(list(h.topics) + [f for f in prose if f.doc_chars <= 20_000])

        def se(c: object) -> list[Doc]:
            if isinstance(c, TextFile):
                return [r.se_topic_thread(P.SE, c)]
            return r.se_module_threads(P.SE, c, 3_000)  # type: ignore[arg-type]

        self.fill(P.SE, se_cands, se)

        # C4 and CommonCrawl: doc-site pages of what is left
        def c4(c: object) -> list[Doc]:
            if isinstance(c, TextFile):
                return r.c4_text_pages(P.C4, c, 4_000)
            return r.c4_module_pages(P.C4, c, 4_000)  # type: ignore[arg-type]

        self.fill(P.C4, self.shuffled(list(h.topics) + list(h.texts) + prose), c4)
        code = self.shuffled(h.code)
        for file, snap in ((P.CC19, "2019-30"), (P.CC20, "2020-05")):
            def page(c: object, file: str = file, snap: str = snap) -> list[Doc]:
                if isinstance(c, TextFile):
                    if c.key.startswith("topic:"):
                        return [r.cc_topic_page(file, snap, c)]
                    return [r.cc_text_page(file, snap, c)]
                return r.cc_doc_pages(file, snap, c, 12_000)  # type: ignore[arg-type]

            def code_page(f: PyFile, file: str = file, snap: str = snap) -> list[Doc]:
                return [r.cc_code_page(file, snap, f)] if len(f.text) <= CC_CODE_MAX else []

            self.fill(file, code, code_page, CC_CODE_SHARE)
            self.fill(file, self.shuffled(list(h.topics) + list(h.texts) + prose), page)
            self.fill(file, code, code_page)  # only if the prose ran out (large --size)
        # GitHub: whole source files
        self.fill(P.GITHUB, code, lambda f: [r.github_file(P.GITHUB, f)] if len(f.text) <= GITHUB_MAX else [])
        return self.docs


# --------------------------------------------------------------------------------------------------
# planting


def _slug(title: str) -> str:
    return title.replace(" ", "_")


class _Planter:
    """Applies the plan to the screened base documents and records the truth about every copy."""

    _FORKS = ("pyfork", "cpython-mirror", "py-backports", "legacy-python", "python-vendored")
    _WIKI_MIRRORS = ("en.m.wikipedia.org", "www.wikiwand.com", "wiki2.org", "en.wikibrief.org")

    def __init__(self, base: dict[str, list[Doc]], r: Renderer, rng: random.Random) -> None:
        self.base, self.r, self.rng = base, r, rng
        self.taken: set[int] = set()
        self.planted: dict[str, list[Doc]] = {f: [] for f in FILES}
        self.truth: list[tuple[Doc, Doc, dict]] = []  # (duplicate, original, facts)
        self.shortfall: list[str] = []

    def _eligible(self, plan: P.Plan) -> list[Doc]:
        out = []
        for d in self.base[plan.src]:
            if id(d) in self.taken:
                continue
            c = d.cleaned
            if plan.kind == "near" and (len(c) < 1_000 or len(c.split()) < 200):
                continue
            if len(c) < (1_500 if plan.variant == "embedded" else 400):
                continue
            if len(d.text) > PLANT_MAX and plan.src not in (P.BOOK, P.ARXIV):
                continue
            if plan.variant == "recrawl" and "footer" not in d.extra:
                continue
            out.append(d)
        return out

    def _cc_source(self, orig: Doc, snapshot: str, host: str | None = None) -> str:
        path = orig.extra.get("path") or orig.record["source"].split("/", 3)[3]
        return f"cc/{snapshot}/{host or orig.extra.get('host', 'docs.python.org')}/{path}"

    def _recast(self, orig: Doc, dst: str, text: str, same_place: bool) -> dict:
        """The duplicate's record: same shape as its file's records; meta that depends on text is redone."""
        rec = copy.deepcopy(orig.record)
        rec["text"] = text
        if dst in (P.CC19, P.CC20):
            snap = dst.split("_")[1]
            host = None if same_place else self.rng.choice(MIRRORS)
            return self.r.cc_record(text, self._cc_source(orig, snap, host))
        if dst == P.GITHUB:  # a fork: same path, another owner; statistics follow the text
            f = orig.extra["pyfile"]
            fork = f"{self.rng.choice(self._FORKS)}/{rec['meta']['repo_name'].split('/')[1]}"
            return self.r.github_record(f, repo=fork, text=text)
        if dst == P.ARXIV and not same_place:  # a second submission of the same text
            return self.r.arxiv_record(text)
        if dst == P.SE and not same_place:
            new = self.r.se_record("", [])
            new["text"] = text
            return new
        if dst == P.C4 and not same_place:
            url = rec["meta"]["url"].replace("https://", f"https://{self.rng.choice(MIRRORS)}/", 1)
            rec["meta"]["url"] = url
        return rec

    def _add(self, dst: str, dup_record: dict, orig: Doc, facts: dict) -> None:
        dup = Doc(dst, dup_record, orig.origin + f"#{facts['kind']}")
        self.planted[dst].append(dup)
        self.truth.append((dup, orig, facts))

    def run(self, plan: list[P.Plan]) -> None:
        for p in plan:
            pool = self._eligible(p)
            if len(pool) < p.count:
                self.shortfall.append(f"{p.kind}/{p.variant} {p.src}->{p.dst}: wanted {p.count}, had {len(pool)}")
            for orig in self.rng.sample(pool, min(p.count, len(pool))):
                self.taken.add(id(orig))
                for _ in range(p.copies):
                    self._plant_one(p, orig)

    def _plant_one(self, p: P.Plan, orig: Doc) -> None:
        facts = {"kind": p.kind, "variant": p.variant, "target_edit_rate": p.rate, "edit_rate": None}
        if p.kind == "exact":
            facts["edit_rate"] = 0.0
            self._add(p.dst, self._recast(orig, p.dst, orig.text, same_place=False), orig, facts)
        elif p.kind == "near":
            text, edits, words = P.edit_words(orig.text, p.rate or 0.0, self.rng)
            facts.update(edit_rate=round(edits / words, 6) if words else 0.0, edits=edits, words=words)
            self._add(p.dst, self._recast(orig, p.dst, text, same_place=False), orig, facts)
        elif p.variant in ("whole", "embedded"):  # a Wikipedia page inside CommonCrawl
            title = orig.record["meta"]["title"]
            snap = p.dst.split("_")[1]
            if p.variant == "whole":
                text, host = orig.text, "en.wikipedia.org"
                facts["edit_rate"] = 0.0
            else:
                day = f"{self.r.date(*_EDITED[snap]):%d %B %Y}"
                text, host = P.embed_wiki(orig.text, title, day), self.rng.choice(self._WIKI_MIRRORS)
                facts["added_chars"] = len(text) - len(orig.text)
            self._add(p.dst, self.r.cc_record(text, f"cc/{snap}/{host}/wiki/{_slug(title)}"), orig, facts)
        elif p.variant == "verbatim":
            facts["edit_rate"] = 0.0
            if p.dst == P.C4:  # C4 is cleaned CommonCrawl: the page text as CC has it
                rec = self.r.c4_record(orig.text, orig.extra.get("url", "https://docs.python.org/"))
            else:  # the same page in a later snapshot
                rec = self.r.cc_record(orig.text, self._cc_source(orig, p.dst.split("_")[1]))
            self._add(p.dst, rec, orig, facts)
        elif p.variant == "recrawl":  # same page re-crawled: only the footer's date changed
            snap = p.dst.split("_")[1]
            new_footer, _ = self.r.footer(snap, orig.extra["owner"], after=orig.extra["footer_date"])
            text = orig.text.replace(orig.extra["footer"], new_footer)
            self._add(p.dst, self.r.cc_record(text, self._cc_source(orig, snap)), orig, facts)
        else:  # pragma: no cover - the plan only names the variants above
            raise ValueError(p.variant)


# --------------------------------------------------------------------------------------------------
# the whole job


def _screen(docs: dict[str, list[Doc]]) -> tuple[dict[str, list[Doc]], list[dict]]:
    """Drop the later document of every natural pair at or above SCREEN_THRESHOLD (ids are not final yet)."""
    flat = [d for f in FILES for d in docs[f]]
    dropped: set[int] = set()
    notes = []
    for i, j, jac in near_duplicate_pairs([d.cleaned for d in flat], SCREEN_THRESHOLD, cleaned=True):
        if i in dropped or j in dropped:
            continue
        dropped.add(j)
        notes.append({"dropped": flat[j].origin, "file": flat[j].file, "kept": flat[i].origin,
                      "kept_file": flat[i].file, "jaccard": round(jac, 4)})
    keep = {id(d) for k, d in enumerate(flat) if k not in dropped}
    return {f: [d for d in docs[f] if id(d) in keep] for f in FILES}, notes


def _doc_id(file: str, line: int) -> str:
    return f"{source_from_filename(file)}/{file}:{line}"


def write_sample(out_dir: str | os.PathLike, seed: int = 0, size: float = 1.0,
                 progress: Callable[[str], None] | None = None) -> dict:
    """Write the sample corpus, ``_meta/ground_truth.jsonl`` and ``_meta/sample_manifest.json``; return the manifest.

    ``size`` scales the text volume (1.0 is about 4 MB of text) and the number of planted duplicates.
    """
    if size <= 0:
        raise ValueError("size must be positive")
    say = progress or (lambda _msg: None)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    say(f"harvesting text from the Python {sys.version.split()[0]} installation")
    h = harvest()
    r = Renderer(_rng(seed, "render"), tuple(sys.version_info[:3]))  # type: ignore[arg-type]
    say(f"  {len(h.code)} code files, {len(h.prose)} documented modules, {len(h.topics)} help topics")
    base = _Allocator(h, r, _rng(seed, "allocate"), size).run()
    say(f"allocated {sum(map(len, base.values()))} base documents; screening for natural near-duplicates")
    base, dropped = _screen(base)
    say(f"  dropped {len(dropped)} natural near-duplicates (Jaccard >= {SCREEN_THRESHOLD})")
    planter = _Planter(base, r, _rng(seed, "plant"))
    planter.run(P.scaled(P.default_plan(), size))
    say(f"planted {len(planter.truth)} duplicates")
    for note in planter.shortfall:
        say(f"  warning: too few eligible originals for {note}")

    shuffler = _rng(seed, "shuffle")
    lines: dict[int, tuple[str, int]] = {}
    final: dict[str, list[Doc]] = {}
    for f in FILES:
        docs = base[f] + planter.planted[f]
        shuffler.shuffle(docs)
        final[f] = docs
        for k, d in enumerate(docs):
            lines[id(d)] = (f, k)

    truth_rows = []
    for dup, orig, facts in planter.truth:
        (df, dl), (of, ol) = lines[id(dup)], lines[id(orig)]
        jac = jaccard(dup.text, orig.text)
        short = min(len(dup.cleaned), len(orig.cleaned)) < SHORT_CHARS
        truth_rows.append({
            "id": _doc_id(df, dl), "file": df, "line": dl, "source": source_from_filename(df),
            "original_id": _doc_id(of, ol), "original_file": of, "original_line": ol,
            "original_source": source_from_filename(of),
            "kind": facts["kind"], "variant": facts["variant"],
            "target_edit_rate": facts["target_edit_rate"], "edit_rate": facts["edit_rate"],
            "jaccard": round(jac, 6), "expected_removed": bool(jac >= SLIMPAJAMA_THRESHOLD and not short),
            "lsh_probability": round(lsh_probability(jac), 6),
            **{k: facts[k] for k in ("edits", "words", "added_chars") if k in facts},
        })
    truth_rows.sort(key=lambda row: (row["file"], row["line"]))

    files_info = {}
    cctx = zstandard.ZstdCompressor(level=ZSTD_LEVEL, threads=0)
    for f in FILES:
        payload = "".join(json.dumps(d.record, ensure_ascii=False) + "\n" for d in final[f]).encode("utf-8")
        packed = cctx.compress(payload)
        storage.write_bytes_atomic(out / f, packed)
        text_bytes = sum(_bytes(d) for d in final[f])
        files_info[f] = {
            "source": source_from_filename(f), "docs": len(final[f]), "base_docs": len(base[f]),
            "planted_docs": len(planter.planted[f]),
            "short_docs": sum(len(d.cleaned) < SHORT_CHARS for d in final[f]),
            "text_bytes": text_bytes, "target_text_bytes": int(TARGETS[f] * size),
            "jsonl_bytes": len(payload), "zst_bytes": len(packed),
        }
        say(f"wrote {f}: {len(final[f])} docs, {text_bytes / 1e6:.2f} MB text, {len(packed) / 1e6:.2f} MB zst")
        if len(base[f]) and sum(_bytes(d) for d in base[f]) < 0.9 * TARGETS[f] * size:
            say(f"  warning: {f} is short of its target: this installation has too little unused text for --size {size}")
    storage.write_bytes_atomic(out / GROUND_TRUTH,
                  "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in truth_rows).encode("utf-8"))

    by_kind: dict[str, int] = defaultdict(int)
    for row in truth_rows:
        by_kind[row["kind"]] += 1
    manifest = {
        "generator": "slimpipe.sample", "format_version": FORMAT_VERSION, "seed": seed, "size": size,
        "python_version": sys.version, "zstd_level": ZSTD_LEVEL,
        "id_format": "<source>/<file>:<line> (line is 0-based)",
        "files": files_info,
        "totals": {k: sum(v[k] for v in files_info.values())
                   for k in ("docs", "base_docs", "planted_docs", "short_docs", "text_bytes", "jsonl_bytes", "zst_bytes")},
        "ground_truth": GROUND_TRUTH,
        "planted": {"total": len(truth_rows), **{k: by_kind[k] for k in ("exact", "near", "cross_source")},
                    "expected_removed": sum(row["expected_removed"] for row in truth_rows)},
        "plan_shortfall": planter.shortfall,
        "screen": {"threshold": SCREEN_THRESHOLD, "dropped_natural_near_duplicates": dropped},
    }
    storage.write_bytes_atomic(out / MANIFEST, (json.dumps(manifest, indent=1, ensure_ascii=False) + "\n").encode("utf-8"))
    say(f"wrote {GROUND_TRUTH} ({len(truth_rows)} planted duplicates) and {MANIFEST} to {out}")
    return manifest
